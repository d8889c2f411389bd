"""Official checkpoint formats -> timm backbones: one test per method, plus safety and discovery.

Each method test builds a checkpoint the way that method's release saves it (top-level entries,
DDP ``module.`` prefixes, wrappers, heads / projectors / predictors / decoders, the other branch and
training state), from randomly initialised networks, saves it under the official file name, loads it
with ``load_backbone`` and checks the patch features equal the original network's exactly.
"""

from __future__ import annotations

import argparse
import copy
import functools
import pickle
import re
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet

from dsekit.backbones import (
    BranchSpec,
    CheckpointError,
    CheckpointKeyError,
    FeatureExtractor,
    MethodAdapter,
    UnsafeCheckpointError,
    create_backbone,
    discover_checkpoints,
    epoch_from_filename,
    get_adapter,
    list_methods,
    load_backbone,
    load_state_dict_for,
    read_checkpoint,
    register,
)

from _weights import randomize

ALL_METHODS = {
    "dino",
    "ibot",
    "mugs",
    "mocov3",
    "mae",
    "ijepa",
    "esvit",
    "swav",
    "densecl",
    "simsiam",
    "mec",
    "resa",
    "byol",
    "vicreg",
    "vicregl",
    "barlowtwins",
    "generic",
    "dinov2",
    "dinov3",
    "hf",
    "timm",
}
#: methods whose layouts (folders, runs counted in steps, their own reference forwards) have tests of their own
TESTED_ELSEWHERE = {
    "dinov2": "test_dinov.py",
    "dinov3": "test_dinov.py",
    "hf": "test_hf.py",
    "timm": "test_timm_method.py",
}

# tiny versions of the default architectures (same layouts and key names)
VIT_KW = {"img_size": 32, "depth": 2}
IJEPA_KW = {"img_size": 32, "depth": 1}
SWIN_KW = {"img_size": 64, "window_size": 2, "embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 3, 4)}
RESNET_KW = {"layers": (1, 1, 1, 1), "base_width": 16}  # ResNet-50 names, narrower


# --------------------------------------------------------------------------------------------------
# helpers: random networks and their reference features
# --------------------------------------------------------------------------------------------------


def _vit(seed: int, **kw: object) -> nn.Module:
    return randomize(create_backbone("vit_small_patch16_224", init_weights=False, **{**VIT_KW, **kw}), seed)


def _ijepa_vit(seed: int) -> nn.Module:
    model = create_backbone(
        "vit_base_patch16_224",
        init_weights=False,
        class_token=False,
        global_pool="avg",
        fc_norm=False,
        **IJEPA_KW,
    )
    return randomize(model, seed)


def _swin(seed: int) -> nn.Module:
    model = create_backbone(
        "swin_tiny_patch4_window7_224",
        init_weights=False,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        **SWIN_KW,
    )
    return randomize(model, seed)


def _tv_resnet(seed: int) -> ResNet:
    """A torchvision ResNet-50 layout (1 block per stage, narrower), as the CNN methods' releases build."""
    return randomize(ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=16), seed)


def _tv_features(net: ResNet, x: Tensor) -> Tensor:
    with torch.no_grad():
        y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        y = net.layer4(net.layer3(net.layer2(net.layer1(y))))
    return y.flatten(2).transpose(1, 2)


def _timm_features(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return FeatureExtractor(model)(x)


def _sd(module: nn.Module, prefix: str = "") -> dict[str, Tensor]:
    return {prefix + k: v.clone() for k, v in module.state_dict().items()}


def _mlp(*dims: int, bn: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            if bn:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.GELU())
    return randomize(nn.Sequential(*layers), 99)


def _dino_head(dim: int, prefix: str) -> dict[str, Tensor]:
    """DINOHead: mlp + weight-normed last layer."""
    head = {f"{prefix}mlp.{k}": v for k, v in _mlp(dim, 32, 32, 16).state_dict().items()}
    head[f"{prefix}last_layer.weight_g"] = torch.ones(64, 1)
    head[f"{prefix}last_layer.weight_v"] = torch.randn(64, 16)
    return head


def _optimizer_state() -> dict:
    return {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}


def _args(**kw: object) -> argparse.Namespace:
    base = {
        "arch": "vit_small",
        "patch_size": 16,
        "epochs": 100,
        "lr": 5e-4,
        "output_dir": "/runs/x",
        "global_crops_scale": (0.4, 1.0),
        "local_crops_scale": (0.05, 0.4),
        "use_fp16": True,
    }
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models run fastest (and steadiest on a busy 2-core machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
X64 = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))


# --------------------------------------------------------------------------------------------------
# one builder per method: (file name, checkpoint, {branch: reference features}, load kwargs, input)
# --------------------------------------------------------------------------------------------------

Built = tuple[str, dict, dict[str | None, Tensor], dict, Tensor]


def _dino_like(
    extra_backbone: Callable[[int], dict[str, Tensor]],
    heads: Callable[[str], dict[str, Tensor]],
    loss_key: str,
    extra: dict | None = None,
) -> Built:
    teacher, student = _vit(10), _vit(11)
    emb = teacher.embed_dim
    ckpt = {
        # the teacher is not DDP-wrapped for ViTs; the student is
        "teacher": {**_sd(teacher, "backbone."), **extra_backbone(emb), **heads("")},
        "student": {
            **_sd(student, "module.backbone."),
            **{f"module.{k}": v for k, v in {**extra_backbone(emb), **heads("")}.items()},
        },
        "optimizer": _optimizer_state(),
        "epoch": 101,
        "args": _args(),
        loss_key: {"center": torch.zeros(1, 64)},
        "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 10},
        **(extra or {}),
    }
    refs = {None: _timm_features(teacher, X32), "student": _timm_features(student, X32)}
    return "checkpoint0100.pth", ckpt, refs, {"model_kwargs": VIT_KW}, X32


def build_dino() -> Built:
    return _dino_like(lambda d: {}, lambda p: _dino_head(384, p + "head."), "dino_loss")


def build_ibot() -> Built:
    def heads(p: str) -> dict[str, Tensor]:
        h = _dino_head(384, p + "head.")
        h[p + "head.last_layer2.weight_g"] = torch.ones(32, 1)
        h[p + "head.last_layer2.weight_v"] = torch.randn(32, 16)
        return h

    return _dino_like(lambda d: {"backbone.masked_embed": torch.randn(1, d)}, heads, "ibot_loss")


def build_mugs() -> Built:
    def relation(d: int) -> dict[str, Tensor]:
        blk = _vit(12).blocks[0]
        return {f"backbone.relation_blocks.0.{k}": v for k, v in blk.state_dict().items()}

    def heads(p: str) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for name in ("instance_head", "local_group_head"):
            out.update({f"{p}{name}.projector.{k}": v for k, v in _mlp(384, 32, 16).state_dict().items()})
        out.update({f"{p}group_head.projector.{k}": v for k, v in _mlp(384, 32, 16).state_dict().items()})
        out[f"{p}group_head.last_layer.weight_g"] = torch.ones(64, 1)
        out[f"{p}group_head.last_layer.weight_v"] = torch.randn(64, 16)
        return out

    mem = {
        "block.queue_q": torch.randn(8, 384),
        "block.queue_k": torch.randn(8, 384),
        "block.queue_v": torch.randn(8, 384),
        "block.queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    extra = {"student_mem": mem, "teacher_mem": dict(mem), "group_loss": {"center": torch.zeros(1, 64)}}
    return _dino_like(relation, heads, "instance_loss", extra=extra)


def _to_original_swin(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm Swin names -> original Swin / EsViT layout (downsampling at the end of a stage, persistent
    relative_position_index buffers)."""
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        if m:
            k = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        out[k] = v
        if k.endswith("attn.relative_position_bias_table"):
            index = k.replace("relative_position_bias_table", "relative_position_index")
            out[index] = torch.zeros(4, 4, dtype=torch.long)
    return out


def build_esvit() -> Built:
    teacher, student = _swin(20), _swin(21)
    t_sd, s_sd = _to_original_swin(_sd(teacher)), _to_original_swin(_sd(student))
    assert "layers.0.downsample.reduction.weight" in t_sd
    assert not any(k.startswith("layers.3.downsample") for k in t_sd)
    dim = teacher.num_features
    ckpt = {
        "teacher": {**t_sd, **_dino_head(dim, "head."), **_dino_head(dim, "head_dense.")},
        "student": {
            f"module.{k}": v for k, v in {**s_sd, **_dino_head(dim, "head."), **_dino_head(dim, "head_dense.")}.items()
        },
        "optimizer": _optimizer_state(),
        "epoch": 101,
        "args": _args(arch="swin_tiny", cfg="experiments/imagenet/swin/swin_tiny_patch4_window7_224.yaml"),
        "dino_loss": {"center": torch.zeros(1, 64), "center_grid": torch.zeros(1, 64)},
    }
    refs = {None: _timm_features(teacher, X64), "student": _timm_features(student, X64)}
    return "checkpoint0100.pth", ckpt, refs, {"model_kwargs": SWIN_KW}, X64


def build_mocov3() -> Built:
    base, momentum = _vit(30, num_heads=12), _vit(31, num_heads=12)

    def with_projector(model: nn.Module, prefix: str) -> dict[str, Tensor]:
        proj = {f"{prefix}head.{k}": v for k, v in _mlp(384, 32, 16, bn=True).state_dict().items()}
        return {**_sd(model, prefix), **proj}

    state = {
        **with_projector(base, "module.base_encoder."),
        **with_projector(momentum, "module.momentum_encoder."),
        **{f"module.predictor.{k}": v for k, v in _mlp(16, 32, 16, bn=True).state_dict().items()},
    }
    ckpt = {
        "epoch": 100,
        "arch": "vit_small",
        "state_dict": state,
        "optimizer": _optimizer_state(),
        "scaler": {"scale": 1024.0, "growth_factor": 2.0},
    }
    refs = {None: _timm_features(momentum, X32), "base": _timm_features(base, X32)}
    return "checkpoint_0099.pth.tar", ckpt, refs, {"model_kwargs": VIT_KW}, X32


def build_mae() -> Built:
    enc = _vit(40)
    dec = _vit(41, embed_dim=64, num_heads=2, depth=1)
    model = {
        **_sd(enc),
        "mask_token": torch.randn(1, 1, 64),
        "decoder_embed.weight": torch.randn(64, 384),
        "decoder_embed.bias": torch.randn(64),
        "decoder_pos_embed": torch.randn(1, 5, 64),
        **{f"decoder_blocks.0.{k}": v for k, v in dec.blocks[0].state_dict().items()},
        "decoder_norm.weight": torch.ones(64),
        "decoder_norm.bias": torch.zeros(64),
        "decoder_pred.weight": torch.randn(768, 64),
        "decoder_pred.bias": torch.zeros(768),
    }
    ckpt = {
        "model": model,
        "optimizer": _optimizer_state(),
        "epoch": 100,
        "scaler": {"scale": 65536.0},
        "args": _args(model="mae_vit_small_patch16", mask_ratio=0.75),
    }
    return "checkpoint-100.pth", ckpt, {None: _timm_features(enc, X32)}, {"model_kwargs": VIT_KW}, X32


def build_ijepa() -> Built:
    enc, target = _ijepa_vit(50), _ijepa_vit(51)
    assert "cls_token" not in enc.state_dict() and enc.state_dict()["pos_embed"].shape[1] == 4
    pred = {f"module.predictor_blocks.0.{k}": v for k, v in _vit(52, depth=1).blocks[0].state_dict().items()}
    pred.update(
        {
            "module.predictor_embed.weight": torch.randn(384, 768),
            "module.mask_token": torch.randn(1, 1, 384),
            "module.predictor_pos_embed": torch.randn(1, 4, 384),
            "module.predictor_proj.weight": torch.randn(768, 384),
        }
    )
    ckpt = {
        "encoder": _sd(enc, "module."),
        "predictor": pred,
        "target_encoder": _sd(target, "module."),
        "opt": _optimizer_state(),
        "scaler": None,
        "epoch": 100,
        "loss": 0.1234,
        "batch_size": 128,
        "world_size": 16,
        "lr": 0.001,
    }
    refs = {None: _timm_features(enc, X32), "target": _timm_features(target, X32)}
    return "ijepa-ep100.pth.tar", ckpt, refs, {"model_kwargs": IJEPA_KW}, X32


def build_swav() -> Built:
    net = _tv_resnet(60)
    net.fc = nn.Identity()
    state = {
        **_sd(net, "module."),
        **{f"module.projection_head.{k}": v for k, v in _mlp(2048, 32, 16, bn=True).state_dict().items()},
        "module.prototypes.weight": torch.randn(30, 16),
    }
    ckpt = {
        "epoch": 100,
        "state_dict": state,
        "optimizer": _optimizer_state(),
        "amp": {"loss_scaler0": {"loss_scale": 1.0}},
    }
    return "ckp-99.pth", ckpt, {None: _tv_features(net, X64)}, {"model_kwargs": RESNET_KW}, X64


def build_densecl() -> Built:
    query, key = _tv_resnet(70), _tv_resnet(71)
    query.fc, key.fc = nn.Identity(), nn.Identity()
    neck = {f"mlp.{k}": v for k, v in _mlp(2048, 32, 16).state_dict().items()}
    state = {
        "queue": torch.randn(16, 32),
        "queue_ptr": torch.zeros(1, dtype=torch.long),
        "queue2": torch.randn(16, 32),
        "queue2_ptr": torch.zeros(1, dtype=torch.long),
        **_sd(query, "encoder_q.0."),
        **{f"encoder_q.1.{k}": v for k, v in neck.items()},
        **_sd(key, "encoder_k.0."),
        **{f"encoder_k.1.{k}": v for k, v in neck.items()},
        **_sd(query, "backbone."),  # the same module registered twice (self.backbone = encoder_q[0])
    }
    ckpt = {
        "meta": {"mmcv_version": "0.6.2", "time": "Mon Jan  4 10:00:00 2021", "epoch": 200, "iter": 1000},
        "state_dict": state,
        "optimizer": _optimizer_state(),
    }
    refs = {None: _tv_features(query, X64), "key": _tv_features(key, X64)}
    return "epoch_200.pth", ckpt, refs, {"model_kwargs": RESNET_KW}, X64


def _simsiam_encoder(seed: int) -> ResNet:
    net = _tv_resnet(seed)
    net.fc = randomize(
        nn.Sequential(
            nn.Linear(2048, 32, bias=False),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Linear(32, 16),
            nn.BatchNorm1d(16, affine=False),
        ),
        seed + 1,
    )
    return net


def build_simsiam() -> Built:
    enc = _simsiam_encoder(80)
    state = {
        **_sd(enc, "module.encoder."),
        **{f"module.predictor.{k}": v for k, v in _mlp(16, 8, 16, bn=True).state_dict().items()},
    }
    ckpt = {"epoch": 100, "arch": "resnet50", "state_dict": state, "optimizer": _optimizer_state()}
    return "checkpoint_0099.pth.tar", ckpt, {None: _tv_features(enc, X64)}, {"model_kwargs": RESNET_KW}, X64


def build_mec() -> Built:
    enc, teacher = _simsiam_encoder(90), _simsiam_encoder(92)
    state = {
        **_sd(enc, "module.encoder."),
        **_sd(teacher, "module.teacher."),
        **{f"module.predictor.{k}": v for k, v in _mlp(16, 8, 16, bn=True).state_dict().items()},
    }
    ckpt = {"epoch": 100, "arch": "resnet50", "state_dict": state, "optimizer": _optimizer_state()}
    refs = {None: _tv_features(enc, X64), "teacher": _tv_features(teacher, X64)}
    return "checkpoint_0099.pth.tar", ckpt, refs, {"model_kwargs": RESNET_KW}, X64


def build_resa() -> Built:
    enc, mom = _tv_resnet(100), _tv_resnet(101)
    enc.fc, mom.fc = nn.Identity(), nn.Identity()
    proj = _mlp(2048, 32, 16, bn=True).state_dict()
    state = {
        **_sd(enc, "module.encoder."),
        **_sd(mom, "module.momentum_encoder."),
        **{f"module.projector.{k}": v for k, v in proj.items()},
        **{f"module.momentum_projector.{k}": v for k, v in proj.items()},
        **{f"module.predictor.{k}": v for k, v in _mlp(16, 8, 16, bn=True).state_dict().items()},
    }
    ckpt = {"epoch": 100, "state_dict": state, "optimizer": _optimizer_state()}
    refs = {None: _tv_features(enc, X64), "momentum": _tv_features(mom, X64)}
    return "checkpoint_0100.pth.tar", ckpt, refs, {"model_kwargs": RESNET_KW}, X64


def build_byol() -> Built:
    class EncoderWithProjection(nn.Module):  # encoder = resnet children without fc, as that release
        def __init__(self, seed: int) -> None:
            super().__init__()
            self.resnet = _tv_resnet(seed)
            self.encoder = nn.Sequential(*list(self.resnet.children())[:-1])
            self.projetion = _mlp(2048, 32, 16, bn=True)

    online, target = EncoderWithProjection(110), EncoderWithProjection(111)
    state = {
        **{f"module.online_network.{k}": v for k, v in online.state_dict().items() if not k.startswith("resnet.")},
        **{f"module.target_network.{k}": v for k, v in target.state_dict().items() if not k.startswith("resnet.")},
        **{f"module.predictor.predictor.{k}": v for k, v in _mlp(16, 32, 16, bn=True).state_dict().items()},
    }
    assert "module.target_network.encoder.4.0.conv1.weight" in state
    ckpt = {
        "config": {"model": {"base_momentum": 0.99, "backbone": {"type": "resnet50"}}},
        "epoch": 100,
        "steps": 5000,
        "model": state,
        "optimizer": _optimizer_state(),
        "amp": {},
    }
    refs = {None: _tv_features(target.resnet, X64), "online": _tv_features(online.resnet, X64)}
    return "resnet50_100.pth.tar", ckpt, refs, {"model_kwargs": RESNET_KW}, X64


def _backbone_projector(seed: int, extra: dict[str, Tensor]) -> tuple[dict[str, Tensor], ResNet]:
    net = _tv_resnet(seed)
    net.fc = nn.Identity()
    proj = {f"module.projector.{k}": v for k, v in _mlp(2048, 32, 16, bn=True).state_dict().items()}
    return {**_sd(net, "module.backbone."), **proj, **extra}, net


def build_vicreg() -> Built:
    state, net = _backbone_projector(120, {})
    ckpt = {"epoch": 100, "model": state, "optimizer": _optimizer_state()}
    return "model_100.pth", ckpt, {None: _tv_features(net, X64)}, {"model_kwargs": RESNET_KW}, X64


def build_vicregl() -> Built:
    maps = {f"module.maps_projector.{k}": v for k, v in _mlp(2048, 16, 8, bn=True).state_dict().items()}
    maps.update({"module.classifier.weight": torch.randn(10, 2048), "module.classifier.bias": torch.zeros(10)})
    state, net = _backbone_projector(130, maps)
    ckpt = {"epoch": 100, "model": state, "optimizer": _optimizer_state()}
    return "model_100.pth", ckpt, {None: _tv_features(net, X64)}, {"model_kwargs": RESNET_KW}, X64


def build_barlowtwins() -> Built:
    extra = {
        "module.bn.running_mean": torch.zeros(16),
        "module.bn.running_var": torch.ones(16),
        "module.bn.num_batches_tracked": torch.tensor(5),
    }
    state, net = _backbone_projector(140, extra)
    ckpt = {"epoch": 100, "model": state, "optimizer": _optimizer_state()}
    return "checkpoint_100.pth", ckpt, {None: _tv_features(net, X64)}, {"model_kwargs": RESNET_KW}, X64


def build_generic() -> Built:
    model = _vit(150)
    return "weights_7.pth", _sd(model), {None: _timm_features(model, X32)}, {"model_kwargs": VIT_KW}, X32


BUILDERS: dict[str, Callable[[], Built]] = {
    "dino": build_dino,
    "ibot": build_ibot,
    "mugs": build_mugs,
    "esvit": build_esvit,
    "mocov3": build_mocov3,
    "mae": build_mae,
    "ijepa": build_ijepa,
    "swav": build_swav,
    "densecl": build_densecl,
    "simsiam": build_simsiam,
    "mec": build_mec,
    "resa": build_resa,
    "byol": build_byol,
    "vicreg": build_vicreg,
    "vicregl": build_vicregl,
    "barlowtwins": build_barlowtwins,
    "generic": build_generic,
}


@functools.cache
def _built(method: str) -> Built:
    return BUILDERS[method]()


def build(method: str) -> Built:
    """The method's checkpoint (built once per session; a deep copy, so tests may modify it)."""
    name, ckpt, refs, load_kw, x = _built(method)
    return name, copy.deepcopy(ckpt), refs, load_kw, x


def _save(tmp_path: Path, name: str, obj: object) -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


# --------------------------------------------------------------------------------------------------
# per-method round trips
# --------------------------------------------------------------------------------------------------


def test_every_method_is_registered_and_tested() -> None:
    assert set(list_methods()) == ALL_METHODS
    assert set(BUILDERS) | set(TESTED_ELSEWHERE) == ALL_METHODS
    here = Path(__file__).parent
    assert all((here / f).is_file() for f in TESTED_ELSEWHERE.values())


@pytest.mark.parametrize("method", sorted(BUILDERS))
def test_official_checkpoint_gives_original_features(method: str, tmp_path: Path) -> None:
    name, ckpt, refs, load_kw, x = build(method)
    path = _save(tmp_path, name, ckpt)
    assert epoch_from_filename(path, method) is not None

    model = load_backbone(path, method, **load_kw)
    assert not model.training
    got = _timm_features(model, x)
    assert torch.equal(got, refs[None]), f"{method}: default branch features differ"

    for branch, ref in refs.items():
        if branch is None:
            continue
        other = load_backbone(path, method, branch=branch, **load_kw)
        feats = _timm_features(other, x)
        assert torch.equal(feats, ref), f"{method}: branch {branch} features differ"
        assert not torch.equal(feats, refs[None])  # the two branches really are different networks


@pytest.mark.parametrize("method", ["dino", "mae", "esvit", "mugs", "ibot"])
def test_namespace_args_load_without_trust_and_without_global_allowlisting(method: str, tmp_path: Path) -> None:
    name, ckpt, _, _, _ = build(method)
    path = _save(tmp_path, name, ckpt)
    with pytest.raises(pickle.UnpicklingError):  # plain weights-only loading refuses the Namespace
        torch.load(path, weights_only=True)
    obj = read_checkpoint(path)
    assert isinstance(obj["args"], argparse.Namespace)
    with pytest.raises(pickle.UnpicklingError):  # the allow-list did not leak into global state
        torch.load(path, weights_only=True)


def test_load_state_dict_for_returns_timm_names(tmp_path: Path) -> None:
    name, ckpt, _, _, _ = build("byol")
    sd = load_state_dict_for(_save(tmp_path, name, ckpt), "byol")
    reference = create_backbone("resnet50", **RESNET_KW).state_dict()
    assert set(sd) == set(reference)


def test_mocov3_default_arch_has_twelve_heads(tmp_path: Path) -> None:
    name, ckpt, refs, _, x = build("mocov3")
    path = _save(tmp_path, name, ckpt)
    six_heads = create_backbone("vit_small_patch16_224", **VIT_KW)  # timm's ViT-S/16 has 6 heads
    loaded = load_backbone(path, "mocov3", six_heads)
    assert not torch.allclose(_timm_features(loaded, x), refs[None], atol=1e-4)


def test_esvit_uses_layernorm_eps_1e6(tmp_path: Path) -> None:
    name, ckpt, refs, _, x = build("esvit")
    path = _save(tmp_path, name, ckpt)
    plain = create_backbone("swin_tiny_patch4_window7_224", **SWIN_KW)  # eps 1e-5
    loaded = load_backbone(path, "esvit", plain)
    assert not torch.equal(_timm_features(loaded, x), refs[None])


def test_generic_with_prefix_and_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = _vit(160)
    ref = _timm_features(model, X32)
    lightning = {
        "state_dict": {**_sd(model, "backbone."), "projection_head.layer.weight": torch.randn(4, 384)},
        "epoch": 3,
        "global_step": 300,
    }
    path = _save(tmp_path, "epoch=3-step=300.ckpt", lightning)
    assert epoch_from_filename(path, "generic") == 300
    loaded = load_backbone(path, "generic", "vit_small_patch16_224", prefix="backbone.", model_kwargs=VIT_KW)
    assert torch.equal(_timm_features(loaded, X32), ref)

    st = tmp_path / "weights_12.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    loaded = load_backbone(st, "generic", "vit_small_patch16_224", model_kwargs=VIT_KW)
    assert torch.equal(_timm_features(loaded, X32), ref)


def test_pos_embed_is_resampled_to_another_image_size(tmp_path: Path) -> None:
    name, ckpt, _, _, _ = build("dino")
    path = _save(tmp_path, name, ckpt)
    model = load_backbone(path, "dino", img_size=64, model_kwargs={"depth": 2})
    assert model.pos_embed.shape == (1, 1 + 16, 384)
    assert _timm_features(model, torch.randn(1, 3, 64, 64)).shape == (1, 16, 384)
    # the class-token position is carried over unchanged
    assert torch.equal(model.pos_embed[:, 0], ckpt["teacher"]["backbone.pos_embed"][:, 0])


def test_img_size_is_ignored_by_cnns(tmp_path: Path) -> None:
    name, ckpt, refs, load_kw, x = build("swav")
    model = load_backbone(_save(tmp_path, name, ckpt), "swav", img_size=64, **load_kw)
    assert torch.equal(_timm_features(model, x), refs[None])


def test_densecl_without_duplicated_backbone_entry(tmp_path: Path) -> None:
    name, ckpt, refs, load_kw, x = build("densecl")
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("backbone.")}
    model = load_backbone(_save(tmp_path, name, ckpt), "densecl", **load_kw)
    assert torch.equal(_timm_features(model, x), refs[None])


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------


def test_unknown_method_lists_known_methods() -> None:
    with pytest.raises(ValueError, match="unknown method 'simclr'") as err:
        get_adapter("simclr")
    for m in ALL_METHODS:
        assert m in str(err.value)


def test_method_names_are_forgiving() -> None:
    assert get_adapter("MoCo-v3").name == "mocov3"
    assert get_adapter("barlow_twins").name == "barlowtwins"
    assert get_adapter("I-JEPA").name == "ijepa"


def test_unknown_branch_lists_branches(tmp_path: Path) -> None:
    name, ckpt, _, load_kw, _ = build("dino")
    path = _save(tmp_path, name, ckpt)
    with pytest.raises(ValueError, match="no branch 'decoder'.*student.*teacher"):
        load_backbone(path, "dino", branch="decoder", **load_kw)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "text"])
def test_corrupt_checkpoint_raises_checkpoint_error_naming_file(damage: str, tmp_path: Path) -> None:
    name, ckpt, _, load_kw, _ = build("dino")
    path = _save(tmp_path, name, ckpt)
    data = path.read_bytes()
    content = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "garbage": bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()),
        "text": b"this is not a checkpoint\n",
    }[damage]
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_backbone(path, "dino", **load_kw)
    assert str(path) in str(err.value)
    assert err.value.path == path
    assert not isinstance(err.value, UnsafeCheckpointError)
    assert "trust" not in str(err.value)
    with pytest.raises(CheckpointError):  # full unpickling does not rescue a broken file
        load_backbone(path, "dino", trust_checkpoints=True, **load_kw)


class CustomTrainingState:
    """A user class stored in a checkpoint: loading it needs full unpickling."""

    def __init__(self) -> None:
        self.best = 0.5


def test_custom_class_needs_trust_checkpoints(tmp_path: Path) -> None:
    name, ckpt, refs, load_kw, x = build("dino")
    ckpt["extra_state"] = CustomTrainingState()
    path = _save(tmp_path, name, ckpt)
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoints") as err:
        load_backbone(path, "dino", **load_kw)
    assert str(path) in str(err.value)
    assert any("CustomTrainingState" in g for g in err.value.globals)
    assert isinstance(err.value, CheckpointError) and isinstance(err.value, ValueError)

    model = load_backbone(path, "dino", trust_checkpoints=True, **load_kw)
    assert torch.equal(_timm_features(model, x), refs[None])


class _RunsCode:
    """A hostile object: unpickling it would call a function (never executed here)."""

    def __reduce__(self):
        import os

        return (os.getpid, ())


def test_hostile_pickle_is_refused_with_the_trust_hint_through_the_cli(tmp_path: Path, capsys) -> None:
    """torch words this refusal 'unsupported GLOBAL posix...': it must read as a trust question, not corruption."""
    from dsekit.cli import main

    name, ckpt, _, _, _ = build("dino")
    ckpt["extra_state"] = _RunsCode()
    run = tmp_path / "run"
    run.mkdir()
    path = _save(run, name, ckpt)
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoints") as err:
        read_checkpoint(path)
    assert any("getpid" in g for g in err.value.globals) and "corrupt" not in str(err.value)
    main(
        [
            "scan",
            str(run),
            "--method",
            "dino",
            "--num-images",
            "8",
            "--intervals",
            "0",
            "--quiet",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr()
    assert "--trust-checkpoints" in out.out + out.err and "truncated" not in out.out + out.err


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    name, ckpt, _, load_kw, _ = build("dino")
    del ckpt["teacher"]["backbone.blocks.1.mlp.fc2.weight"]
    ckpt["teacher"]["backbone.extra_adapter.weight"] = torch.randn(3, 3)
    path = _save(tmp_path, name, ckpt)
    with pytest.raises(CheckpointKeyError) as err:
        load_backbone(path, "dino", **load_kw)
    msg = str(err.value)
    assert "blocks.1.mlp.fc2.weight" in msg and "extra_adapter.weight" in msg
    assert "--allow-partial" in msg and str(path) in msg
    assert err.value.missing == ("blocks.1.mlp.fc2.weight",)
    assert err.value.unexpected == ("extra_adapter.weight",)


def test_allow_partial_warns_and_loads_the_rest(tmp_path: Path) -> None:
    name, ckpt, _, load_kw, _ = build("dino")
    expected_patch = ckpt["teacher"]["backbone.patch_embed.proj.weight"].clone()
    del ckpt["teacher"]["backbone.blocks.1.mlp.fc2.weight"]
    path = _save(tmp_path, name, ckpt)
    with pytest.warns(UserWarning, match=r"missing keys \(1\): blocks\.1\.mlp\.fc2\.weight"):
        model = load_backbone(path, "dino", allow_partial=True, **load_kw)
    assert torch.equal(model.patch_embed.proj.weight, expected_patch)


def test_shape_mismatch_is_reported(tmp_path: Path) -> None:
    name, ckpt, _, _, _ = build("dino")
    path = _save(tmp_path, name, ckpt)
    with pytest.raises(CheckpointKeyError, match="shape mismatches"):
        load_backbone(path, "dino", "vit_base_patch16_224", model_kwargs=VIT_KW)


def test_wrong_method_names_the_expected_entry(tmp_path: Path) -> None:
    name, ckpt, _, _, _ = build("mocov3")
    path = _save(tmp_path, name, ckpt)
    with pytest.raises(CheckpointError, match=r"DINO.*'teacher'.*state_dict"):
        load_backbone(path, "dino", model_kwargs=VIT_KW)
    with pytest.raises(CheckpointError, match="no weights under 'backbone.'"):
        load_backbone(path, "generic", prefix="backbone.", model_kwargs=VIT_KW)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_backbone(tmp_path / "nothing.pth", "dino")


def test_register_custom_method(tmp_path: Path) -> None:
    adapter = MethodAdapter(
        name="mymethod_test",
        title="Mine",
        arch="vit_small_patch16_224",
        branches={"ema": BranchSpec(("ema_model",), select="net.", drop=(r"^proj\.",))},
        default_branch="ema",
        file_patterns=("snap-{epoch}.pt",),
    )
    register(adapter)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register(adapter)
        model = _vit(170)
        ckpt = {"ema_model": {**_sd(model, "module.net."), "module.proj.weight": torch.randn(2, 2)}}
        path = _save(tmp_path, "snap-5.pt", ckpt)
        assert discover_checkpoints(tmp_path, "mymethod_test") == [(path, 5)]
        loaded = load_backbone(path, "mymethod_test", model_kwargs=VIT_KW)
        assert torch.equal(_timm_features(loaded, X32), _timm_features(model, X32))
    finally:
        from dsekit.backbones import registry

        registry._REGISTRY.pop("mymethodtest", None)


# --------------------------------------------------------------------------------------------------
# file names and discovery
# --------------------------------------------------------------------------------------------------

EPOCH_CASES = [
    ("dino", "checkpoint0100.pth", 100),
    ("ibot", "checkpoint0300.pth", 300),
    ("mugs", "checkpoint0020.pth", 20),
    ("esvit", "checkpoint0010.pth", 10),
    ("mocov3", "checkpoint_0100.pth.tar", 100),
    ("simsiam", "checkpoint_0099.pth.tar", 99),
    ("mec", "checkpoint_0001.pth.tar", 1),
    ("resa", "checkpoint_0200.pth.tar", 200),
    ("mae", "checkpoint-100.pth", 100),
    ("mae", "checkpoint-1599.pth", 1599),
    ("ijepa", "ijepa-ep100.pth.tar", 100),
    ("ijepa", "jepa-ep300.pth.tar", 300),
    ("swav", "ckp-100.pth", 100),
    ("densecl", "epoch_100.pth", 100),
    ("byol", "resnet50_100.pth.tar", 100),
    ("vicreg", "model_100.pth", 100),
    ("vicregl", "model_25.pth", 25),
    ("barlowtwins", "checkpoint_100.pth", 100),
    ("generic", "step-000123.ckpt", 123),
    ("generic", "weights_7.safetensors", 7),
    ("generic", "model.e5.pt", 5),
    ("dino", "/runs/exp42/checkpoint0100.pth", 100),
    ("dino", "checkpoint12000.pth", 12000),
]
NO_EPOCH_CASES = [
    ("dino", "checkpoint.pth"),
    ("dino", "checkpoint_0100.pth.tar"),
    ("mocov3", "checkpoint0100.pth"),
    ("mae", "checkpoint0100.pth"),
    ("ijepa", "jepa-latest.pth.tar"),
    ("swav", "checkpoint.pth.tar"),
    ("barlowtwins", "checkpoint.pth"),
    ("vicreg", "model.pth"),
    ("byol", "checkpoint_0100.pth.tar"),
    ("generic", "notes.txt"),
    ("generic", "final.pth"),
    ("densecl", "latest.pth"),
]


@pytest.mark.parametrize(("method", "name", "epoch"), EPOCH_CASES)
def test_epoch_from_filename(method: str, name: str, epoch: int) -> None:
    assert epoch_from_filename(name, method) == epoch


@pytest.mark.parametrize(("method", "name"), NO_EPOCH_CASES)
def test_epoch_from_filename_no_match(method: str, name: str) -> None:
    assert epoch_from_filename(name, method) is None


def test_discover_sorts_by_epoch_and_ignores_other_files(tmp_path: Path) -> None:
    for n in (
        "checkpoint0100.pth",
        "checkpoint0010.pth",
        "checkpoint0002.pth",
        "checkpoint.pth",
        "log.txt",
        "checkpoint_0050.pth.tar",
    ):
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "checkpoint0500.pth").mkdir()  # a folder, not a checkpoint
    found = discover_checkpoints(tmp_path, "dino")
    assert [(p.name, e) for p, e in found] == [
        ("checkpoint0002.pth", 2),
        ("checkpoint0010.pth", 10),
        ("checkpoint0100.pth", 100),
    ]
    assert [e for _, e in discover_checkpoints(tmp_path, "mocov3")] == [50]


def test_discover_with_glob(tmp_path: Path) -> None:
    sub = tmp_path / "ckpts"
    sub.mkdir()
    for n in ("snapshot_e20.pth", "snapshot_e3.pth", "checkpoint.pth", "checkpoint0007.pth"):
        (sub / n).write_bytes(b"x")
    found = discover_checkpoints(tmp_path, "dino", glob="**/*.pth")
    assert [(p.name, e) for p, e in found] == [
        ("snapshot_e3.pth", 3),
        ("checkpoint0007.pth", 7),
        ("snapshot_e20.pth", 20),
        ("checkpoint.pth", None),
    ]


def test_discover_errors_name_folder_and_patterns(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        discover_checkpoints(missing, "dino")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty") as err:
        discover_checkpoints(empty, "dino")
    assert str(empty) in str(err.value) and "checkpoint{epoch}.pth" in str(err.value)

    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoint.pth").write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as err:
        discover_checkpoints(other, "mae")
    assert str(other) in str(err.value) and "checkpoint-{epoch}.pth" in str(err.value)
    assert "--glob" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"glob '\*\.tar'"):
        discover_checkpoints(other, "mae", glob="*.tar")

    a_file = tmp_path / "file.pth"
    a_file.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="file.pth"):
        discover_checkpoints(a_file, "dino")


def test_discover_rejects_unknown_method(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known methods"):
        discover_checkpoints(tmp_path, "unknown")


def test_adapter_descriptions_are_complete() -> None:
    for name in list_methods():
        d = get_adapter(name).describe()
        assert d["arch"] and d["file_patterns"] and d["default_branch"] in d["branches"]
    assert get_adapter("dino").describe()["default_branch"] == "teacher"
    assert get_adapter("mocov3").describe()["default_branch"] == "momentum"
    assert get_adapter("ijepa").describe()["container"] == ["encoder"]


def test_no_warnings_on_clean_load(tmp_path: Path) -> None:
    name, ckpt, _, load_kw, _ = build("vicreg")
    path = _save(tmp_path, name, ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_backbone(path, "vicreg", **load_kw)


def test_mocov3_resnet_projector_fc_is_dropped(tmp_path: Path) -> None:
    """MoCo v3 with a ResNet: the projector replaces the encoder's fc (fc.0 … fc.8), the predictor is apart."""
    import timm

    enc = timm.create_model("resnet18", num_classes=0)
    proj = torch.nn.Sequential(
        torch.nn.Linear(512, 64, bias=False),
        torch.nn.BatchNorm1d(64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 32, bias=False),
        torch.nn.BatchNorm1d(32, affine=False),
    )
    sd = {}
    for branch in ("base_encoder", "momentum_encoder"):
        sd.update({f"module.{branch}.{k}": v for k, v in enc.state_dict().items()})
        sd.update({f"module.{branch}.fc.{k}": v for k, v in proj.state_dict().items()})
    sd["module.predictor.0.weight"] = torch.randn(64, 32)
    path = tmp_path / "checkpoint_0099.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet50", "state_dict": sd, "optimizer": {}}, path)
    model = load_backbone(path, "mocov3", "resnet18")
    for k, v in enc.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.parametrize(
    "method, arch, kwargs, wrap",
    [
        ("dino", "vit_small_patch16_224", {"depth": 1}, lambda sd: sd),  # dino_deitsmall16_pretrain.pth
        ("ibot", "vit_small_patch16_224", {"depth": 1}, lambda sd: {"state_dict": sd}),  # checkpoint_teacher.pth
        ("densecl", "resnet18", {}, lambda sd: {"state_dict": sd, "author": "DenseCL"}),
        ("vicreg", "resnet18", {}, lambda sd: sd),  # resnet50.pth
        ("barlowtwins", "resnet18", {}, lambda sd: sd),  # resnet50.pth
    ],
)
def test_released_weight_files_load_under_their_method(method, arch, kwargs, wrap, tmp_path: Path) -> None:
    from dsekit.backbones import create_backbone
    from dsekit.backbones.checkpoints import adapt_state_dict

    ref = create_backbone(arch, img_size=32, **kwargs)
    path = _save(tmp_path, "released.pth", wrap(ref.state_dict()))
    layout: list[str] = []
    model = load_backbone(path, method, arch, img_size=32, model_kwargs=kwargs, layout=layout)
    assert layout == ["release file"]
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # the method's own training checkpoint still reads as one
    _, ckpt, _, _, _ = build(method)
    assert adapt_state_dict(ckpt, method).layout == "training checkpoint"


def test_release_file_through_the_cli_says_which_layout_was_read(tmp_path: Path, capsys) -> None:
    from dsekit.backbones import create_backbone
    from dsekit.cli import main

    run = tmp_path / "run"
    run.mkdir()
    torch.save(
        create_backbone("vit_small_patch16_224", img_size=32, depth=1).state_dict(),
        run / "dino_deitsmall16_pretrain.pth",
    )
    rc = main(
        [
            "scan",
            str(run),
            "--method",
            "dino",
            "--glob",
            "*.pth",
            "--model-kwarg",
            "depth=1",
            "--image-size",
            "32",
            "--num-images",
            "8",
            "--global-clusters",
            "4",
            "--images-per-group",
            "4",
            "--intervals",
            "0",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "read as: release file" in out.out + out.err
    run_json = __import__("json").loads((tmp_path / "out" / "run.json").read_text())
    assert run_json["checkpoints"][0]["layout"] == "release file"


def test_one_file_runs_copied_per_epoch_are_discovered(tmp_path: Path) -> None:
    """VICReg writes model.pth every epoch; copies kept per epoch in sub-folders or with suffixes."""
    import warnings as _w

    _, ckpt, _, _, _ = build("vicreg")
    run = tmp_path / "run"
    for rel, epoch in (("ep10/model.pth", 10), ("model.pth.20", 20), ("model-ep30.pth", 30), ("later/model.pth", 40)):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        torch.save({**ckpt, "epoch": epoch}, run / rel)
    (run / "latest").mkdir()
    torch.save({**ckpt, "epoch": 40}, run / "latest" / "model.pth")  # no number in the path: the stored epoch
    with _w.catch_warnings(record=True) as caught:
        _w.simplefilter("always")
        found = discover_checkpoints(run, "vicreg")
    by_name = {p.relative_to(run).as_posix(): e for p, e in found}
    # epochs from the path where it has one, else from the checkpoint's own epoch field
    assert by_name == {
        "ep10/model.pth": 10,
        "model.pth.20": 20,
        "model-ep30.pth": 30,
        "later/model.pth": 40,
        "latest/model.pth": 40,
    }
    dup = [str(w.message) for w in caught if "claim epoch 40" in str(w.message)]
    assert len(dup) == 1 and "later/model.pth" in dup[0] and "latest/model.pth" in dup[0]


def test_same_epoch_in_two_spellings_is_warned_about(tmp_path: Path) -> None:
    _, ckpt, _, _, _ = build("dino")
    for name in ("checkpoint02.pth", "checkpoint0002.pth"):
        torch.save(ckpt, tmp_path / name)
    with pytest.warns(UserWarning, match=r"2 checkpoints claim epoch 2: .*checkpoint0002\.pth.*checkpoint02\.pth"):
        found = discover_checkpoints(tmp_path, "dino")
    assert [e for _, e in found] == [2, 2]


def test_method_auto_through_the_cli(tmp_path: Path, capsys) -> None:
    """MoCo v3 (12-head ViT, momentum branch) detected from the keys and shapes, and said."""
    from dsekit.cli import main

    name, ckpt, _, load_kw, _ = build("mocov3")
    run = tmp_path / "run"
    run.mkdir()
    _save(run, name, ckpt)
    rc = main(
        [
            "scan",
            str(run),
            "--method",
            "auto",
            "--image-size",
            "32",
            "--num-images",
            "8",
            "--global-clusters",
            "4",
            "--images-per-group",
            "4",
            "--intervals",
            "0",
            "--quiet",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    said = " ".join((out.out + out.err).split())  # the console wraps long lines
    assert f"{name} reads as MoCo v3 (training checkpoint, momentum), vit_small_patch16_224" in said
    run_json = __import__("json").loads((tmp_path / "out" / "run.json").read_text())
    assert run_json["settings"]["method"] == "mocov3" and run_json["settings"]["model_kwargs"] == {"depth": 2}


def test_method_auto_fails_with_the_candidates_when_ambiguous(tmp_path: Path, capsys) -> None:
    """A ReSA checkpoint also reads as MoCo v3 (momentum encoder): different backbones, so no guess."""
    from dsekit.cli import main

    name, ckpt, _, _, _ = build("resa")
    run = tmp_path / "run"
    run.mkdir()
    _save(run, name, ckpt)
    rc = main(["scan", str(run), "--method", "auto", "--quiet", "--out", str(tmp_path / "out")])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "reads as different backbones" in err and "resa (encoder" in err and "mocov3 (momentum" in err
    assert "pass --method" in err


# --------------------------------------------------------------------------------------------------
# VICRegL with ConvNeXt (its default architecture): official names, no layer scale, final norm
# --------------------------------------------------------------------------------------------------

CONVNEXT_DEPTHS, CONVNEXT_DIMS = (1, 1, 2, 1), (8, 16, 24, 32)
CONVNEXT_KW = {"depths": list(CONVNEXT_DEPTHS), "dims": list(CONVNEXT_DIMS)}  # as --model-kwarg gives them


class _OfficialLayerNorm(nn.Module):
    """VICRegL convnext.py's LayerNorm: weight / bias, channels-first in the stem and the downsampling."""

    def __init__(self, dim: int, channels_first: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.channels_first = channels_first

    def forward(self, x: Tensor) -> Tensor:
        if not self.channels_first:
            return torch.nn.functional.layer_norm(x, x.shape[-1:], self.weight, self.bias, 1e-6)
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - mean) / torch.sqrt(var + 1e-6)) + self.bias[:, None, None]


class _OfficialBlock(nn.Module):
    """dwconv -> (N,H,W,C) norm -> pwconv1 -> GELU -> pwconv2 -> [gamma] -> residual, as VICRegL's Block."""

    def __init__(self, dim: int, layer_scale: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = _OfficialLayerNorm(dim, channels_first=False)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim)) if layer_scale > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))))
        if self.gamma is not None:
            y = self.gamma * y
        return x + y.permute(0, 3, 1, 2)


class _OfficialConvNeXt(nn.Module):
    """The module tree of VICRegL's convnext.py (its state-dict keys exactly), tiny; no classifier."""

    def __init__(self, layer_scale: float = 0.0) -> None:
        super().__init__()
        d = CONVNEXT_DIMS
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, d[0], kernel_size=4, stride=4), _OfficialLayerNorm(d[0], True))]
            + [
                nn.Sequential(_OfficialLayerNorm(d[i], True), nn.Conv2d(d[i], d[i + 1], kernel_size=2, stride=2))
                for i in range(3)
            ]
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*[_OfficialBlock(d[i], layer_scale) for _ in range(CONVNEXT_DEPTHS[i])]) for i in range(4)
        )
        self.norm = nn.LayerNorm(d[-1], eps=1e-6)  # the final norm

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(dense maps (B, h*w, C) after the final norm, their mean): VICRegL's forward_features."""
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
        maps = self.norm(x.flatten(2, 3).permute(0, 2, 1))
        return maps, maps.mean(dim=1)


def _official_vicregl_convnext(seed: int, layer_scale: float = 0.0) -> tuple[nn.Module, dict]:
    """(the backbone, the state dict VICRegL's utils.checkpoint writes: DDP-wrapped VICRegL with a ConvNeXt
    backbone, LayerNorm projectors and the online classifier)."""

    class VICRegL(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = _OfficialConvNeXt(layer_scale)
            dim = CONVNEXT_DIMS[-1]
            self.maps_projector = nn.Sequential(
                nn.Linear(dim, 16), nn.LayerNorm(16), nn.ReLU(True), nn.Linear(16, 8, bias=False)
            )
            self.projector = nn.Sequential(
                nn.Linear(dim, 16), nn.LayerNorm(16), nn.ReLU(True), nn.Linear(16, 8, bias=False)
            )
            self.classifier = nn.Linear(dim, 10)

    class DDP(nn.Module):
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    net = randomize(VICRegL(), seed)
    return net.backbone, DDP(net).state_dict()


@functools.cache
def _vicregl_convnext_files() -> tuple[nn.Module, dict, dict[str, Tensor]]:
    """(official backbone, training checkpoint, release file) of a random VICRegL ConvNeXt."""
    backbone, state = _official_vicregl_convnext(160)
    ckpt = {"epoch": 3, "model": state, "optimizer": _optimizer_state()}
    return backbone, ckpt, {k: v.clone() for k, v in backbone.state_dict().items()}


def _relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_official_convnext_key_names_are_what_vicregl_writes() -> None:
    _, ckpt, release = _vicregl_convnext_files()
    assert {
        "downsample_layers.0.0.weight",
        "downsample_layers.3.0.bias",
        "stages.2.1.dwconv.weight",
        "stages.3.0.pwconv2.weight",
        "norm.weight",
    } <= set(release)
    assert not any("gamma" in k or k.startswith("head.") for k in release)  # layer_scale_init_value=0, no head
    assert {"module.backbone.norm.bias", "module.maps_projector.3.weight", "module.classifier.weight"} <= set(
        ckpt["model"]
    )


@pytest.mark.parametrize(
    "layout, name", [("training checkpoint, backbone", "model.pth"), ("release file", "convnext_small_alpha0.9.pth")]
)
def test_vicregl_convnext_loads_strictly_with_the_official_dense_features(
    layout: str, name: str, tmp_path: Path
) -> None:
    official, ckpt, release = _vicregl_convnext_files()
    path = _save(tmp_path, name, ckpt if name == "model.pth" else release)
    seen: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # strict: nothing missing, unexpected or partial
        model = load_backbone(path, "vicregl", "convnext_tiny", model_kwargs=CONVNEXT_KW, img_size=64, layout=seen)
    assert seen == [layout]
    sd = model.state_dict()
    assert not any("gamma" in k for k in sd)  # built without layer scale, as VICRegL trains it
    for timm_key, official_key in [
        ("stem.0.weight", "downsample_layers.0.0.weight"),
        ("stem.1.bias", "downsample_layers.0.1.bias"),
        ("stages.1.downsample.0.weight", "downsample_layers.1.0.weight"),
        ("stages.3.downsample.1.weight", "downsample_layers.3.1.weight"),
        ("stages.2.blocks.1.conv_dw.weight", "stages.2.1.dwconv.weight"),
        ("stages.2.blocks.1.norm.weight", "stages.2.1.norm.weight"),
        ("stages.0.blocks.0.mlp.fc1.weight", "stages.0.0.pwconv1.weight"),
        ("stages.3.blocks.0.mlp.fc2.bias", "stages.3.0.pwconv2.bias"),
        ("norm_pre.weight", "norm.weight"),
        ("norm_pre.bias", "norm.bias"),
    ]:
        assert torch.equal(sd[timm_key], release[official_key]), timm_key
    got = _timm_features(model, X64)
    with torch.no_grad():
        ref, pooled = official(X64)
    assert got.shape == ref.shape == (2, 4, CONVNEXT_DIMS[-1])
    assert _relative(got, ref) < 1e-5
    with torch.no_grad():  # the pooled representation follows VICRegL's order too: norm, then mean
        assert _relative(model.forward_head(model.forward_features(X64), pre_logits=True), pooled) < 1e-5
        raw = FeatureExtractor(model, norm=False)(X64)  # the last stage before the final norm
    assert _relative(raw, ref) > 0.1


def test_vicregl_convnext_into_a_backbone_built_without_its_settings(tmp_path: Path) -> None:
    """scan and probe build the backbone once from --arch / --model-kwarg (sweep.build_model) and load every
    checkpoint into it: the ConvNeXt family's settings (no layer scale, norm before pooling) still apply."""
    from dsekit.backbones import load_backbone_as
    from dsekit.sweep import RunSettings, build_model

    official, ckpt, _ = _vicregl_convnext_files()
    path = _save(tmp_path, "model.pth", ckpt)
    cfg = RunSettings(
        run_dir=str(tmp_path), method="vicregl", arch="convnext_tiny", model_kwargs=CONVNEXT_KW, image_size=64
    )
    built = build_model(cfg)
    partial_msgs: list[str] = []
    model = load_backbone_as(cfg, path, built, partial=partial_msgs)
    assert not partial_msgs
    with torch.no_grad():
        ref, _ = official(X64)
    assert _relative(_timm_features(model, X64), ref) < 1e-5
    # the next checkpoint goes into the same replacement; one that has them already is loaded into as it is
    assert load_backbone_as(cfg, path, built) is model
    assert load_backbone_as(cfg, path, model) is model
    # the other methods' ConvNeXt is timm's: layer scale, final norm after pooling (not applied to the maps)
    plain = create_backbone("convnext_tiny", init_weights=False, **CONVNEXT_KW)
    assert get_adapter("vicreg").family_kwargs_for("convnext_tiny") == {}
    assert any("gamma" in k for k in plain.state_dict()) and "head.norm.weight" in plain.state_dict()


def test_vicregl_convnext_through_the_cli(tmp_path: Path, capsys) -> None:
    """`dsekit scan RUN --method vicregl --arch convnext_tiny`: two per-epoch copies of model.pth, both strict."""
    from dsekit.cli import main

    _, ckpt, _ = _vicregl_convnext_files()
    run = tmp_path / "run"
    for epoch in (1, 2):
        (run / f"ep{epoch}").mkdir(parents=True)
        torch.save({**ckpt, "epoch": epoch}, run / f"ep{epoch}" / "model.pth")
    rc = main(
        [
            "scan",
            str(run),
            "--method",
            "vicregl",
            "--arch",
            "convnext_tiny",
            "--model-kwarg",
            "depths=[1,1,2,1]",
            "--model-kwarg",
            "dims=[8,16,24,32]",
            "--image-size",
            "64",
            "--num-images",
            "8",
            "--global-clusters",
            "4",
            "--images-per-group",
            "4",
            "--intervals",
            "0",
            "--quiet",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    rows = (tmp_path / "out" / "dse.csv").read_text().splitlines()
    assert len(rows) == 3 and "partial" not in "".join(rows)
    run_json = __import__("json").loads((tmp_path / "out" / "run.json").read_text())
    assert [c["layout"] for c in run_json["checkpoints"]] == ["training checkpoint, backbone"] * 2


def test_method_auto_detects_vicregl_convnext(tmp_path: Path, capsys) -> None:
    from dsekit.backbones.detect import detect_checkpoint
    from dsekit.cli import main

    official, ckpt, release = _vicregl_convnext_files()
    kw = {"depths": CONVNEXT_DEPTHS, "dims": CONVNEXT_DIMS, "ls_init_value": None, "head_norm_first": True}
    for name, obj, layout in (
        ("model.pth", ckpt, "training checkpoint"),
        ("convnext_small_alpha0.9.pth", release, "release file"),
    ):
        det = detect_checkpoint(_save(tmp_path, name, obj))
        assert (det.method, det.branch, det.arch, det.model_kwargs, det.layout) == (
            "vicregl",
            "backbone",
            "convnext_tiny",
            kw,
            layout,
        )

    run = tmp_path / "run"
    run.mkdir()
    _save(run, "model.pth", ckpt)
    rc = main(
        [
            "scan",
            str(run),
            "--method",
            "auto",
            "--glob",
            "model.pth",
            "--image-size",
            "64",
            "--num-images",
            "8",
            "--global-clusters",
            "4",
            "--images-per-group",
            "4",
            "--intervals",
            "0",
            "--quiet",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    said = " ".join((out.out + out.err).split())
    assert "model.pth reads as VICRegL (training checkpoint, backbone), convnext_tiny" in said
    assert "ls_init_value=None, head_norm_first=True" in said
    settings = __import__("json").loads((tmp_path / "out" / "run.json").read_text())["settings"]
    assert settings["method"] == "vicregl" and settings["arch"] == "convnext_tiny"


def test_convnext_standard_sizes_are_named() -> None:
    from dsekit.backbones.detect import infer_architecture

    def timm_keys(depths: tuple[int, ...], dims: tuple[int, ...], gamma: bool) -> dict[str, Tensor]:
        sd = {"stem.0.weight": torch.empty(dims[0], 3, 4, 4), "norm_pre.weight": torch.empty(dims[-1])}
        for i, (n, d) in enumerate(zip(depths, dims, strict=True)):
            for j in range(n):
                sd[f"stages.{i}.blocks.{j}.conv_dw.weight"] = torch.empty(d, 1, 7, 7)
                if gamma:
                    sd[f"stages.{i}.blocks.{j}.gamma"] = torch.empty(d)
        return sd

    small = timm_keys((3, 3, 27, 3), (96, 192, 384, 768), gamma=False)
    assert infer_architecture(small) == ("convnext_small", {"ls_init_value": None, "head_norm_first": True})
    base = timm_keys((3, 3, 27, 3), (128, 256, 512, 1024), gamma=True)
    assert infer_architecture(base) == ("convnext_base", {"head_norm_first": True})


def test_vicregl_convnext_failed_loads_name_the_keys(tmp_path: Path) -> None:
    _, ckpt, _ = _vicregl_convnext_files()
    path = _save(tmp_path, "model.pth", ckpt)
    # the default architecture (a ResNet) for a ConvNeXt checkpoint: the keys, and what to check
    with pytest.raises(CheckpointKeyError) as err:
        load_backbone(path, "vicregl", model_kwargs=RESNET_KW)
    msg = str(err.value)
    assert "missing keys" in msg and "conv1.weight" in msg and "unexpected keys" in msg and "stem.0.weight" in msg
    assert "Check the method / arch / branch" in msg
    # a ConvNeXt of other widths: the mismatched shapes are listed (no failed reshape inside the mapping)
    with pytest.raises(CheckpointKeyError) as err:
        load_backbone(path, "vicregl", "convnext_tiny", model_kwargs={**CONVNEXT_KW, "dims": [8, 16, 24, 40]})
    assert "shape mismatches" in str(err.value) and "stages.3.blocks.0.mlp.fc1.weight (128, 32)" in str(err.value)


def test_vicregl_convnext_trained_with_layer_scale(tmp_path: Path) -> None:
    """--layer-scale-init-value > 0 keeps gamma: the missing setting is named; ls_init_value loads it."""
    from dsekit.backbones.detect import detect_checkpoint

    official, state = _official_vicregl_convnext(170, layer_scale=0.5)
    path = _save(tmp_path, "model.pth", {"epoch": 1, "model": state})
    with pytest.raises(CheckpointKeyError, match=r"unexpected keys .*stages\.0\.blocks\.0\.gamma"):
        load_backbone(path, "vicregl", "convnext_tiny", model_kwargs=CONVNEXT_KW)
    model = load_backbone(path, "vicregl", "convnext_tiny", model_kwargs={**CONVNEXT_KW, "ls_init_value": 1e-6})
    assert torch.equal(model.state_dict()["stages.2.blocks.1.gamma"], official.state_dict()["stages.2.1.gamma"])
    with torch.no_grad():
        ref, _ = official(X64)
    assert _relative(_timm_features(model, X64), ref) < 1e-5
    assert "ls_init_value" not in detect_checkpoint(path).model_kwargs
