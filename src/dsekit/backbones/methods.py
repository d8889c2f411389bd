"""The built-in method table: one declarative :class:`MethodAdapter` per supported SSL method.

Each entry gives the method's default timm architecture (and the kwargs that make it match the
official network), its branches (where each network lives in the checkpoint, which keys are heads
or projectors, how names map to timm's) and its official file names. Importing this module
registers them all into :mod:`dsekit.backbones.registry` (``dsekit.backbones`` imports it);
:func:`dsekit.backbones.register` adds more.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from typing import Any

from torch import Tensor, nn

from dsekit.backbones.dinov2 import dinov2_architecture, dinov2_remap, discover_dinov2
from dsekit.backbones.dinov3 import dinov3_architecture, dinov3_remap, discover_dinov3
from dsekit.backbones.dinov3_vit import ARCH
from dsekit.backbones.hf import MODEL_TYPES, build_hf_backbone, discover_hf, hf_architecture, hf_remap
from dsekit.backbones.registry import ANY_FILE, BranchSpec, MethodAdapter, Remap, StateDict, register

__all__: list[str] = []


# ---- remaps -------------------------------------------------------------------------------------


def _swin_remap(state_dict: StateDict, model: nn.Module | None) -> StateDict:
    """Original Swin layout (EsViT) -> timm: downsampling moves from the end of stage i to the start
    of stage i+1; non-persistent buffers and bias tables of another window size are handled by timm."""
    try:
        from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn
    except ImportError:  # pragma: no cover - timm is a dependency
        SwinTransformer = None  # type: ignore[assignment,misc]
    if SwinTransformer is not None and isinstance(model, SwinTransformer):
        return dict(checkpoint_filter_fn(state_dict, model))
    if "layers.0.downsample.reduction.weight" not in state_dict:
        return dict(state_dict)
    shift = re.compile(r"^layers\.(\d+)\.downsample\.")
    out: StateDict = {}
    for k, v in state_dict.items():
        k = shift.sub(lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", k)
        out[k] = v
    return out


class _FilterModel:
    """The model as timm's ConvNeXt checkpoint filter sees it while it maps one tensor: the filter
    reshapes 2-D weights to the model's shape; a weight the model lacks, or holds with another number
    of elements, keeps its own shape (the loader then names the mismatch instead of a failed reshape)."""

    def __init__(self, tensor: Tensor, target: Mapping[str, Tensor]) -> None:
        """``tensor``: the weight being mapped; ``target``: the model's state dict (may be empty)."""
        self.tensor, self.target = tensor, target

    def state_dict(self) -> _FilterModel:
        """Itself: the filter only looks weights up by their timm name."""
        return self

    def __getitem__(self, key: str) -> Tensor:
        """The model's weight ``key`` where it fits the tensor being mapped, else that tensor."""
        t = self.target.get(key)
        return t if t is not None and t.numel() == self.tensor.numel() else self.tensor


def _official_convnext_remap(state_dict: StateDict, model: nn.Module | None, *, norm_first: bool = False) -> StateDict:
    """Official ConvNeXt names (``downsample_layers.*``, ``stages.i.j.*``, ``norm.*``) -> timm's, by
    timm's own filter (``timm.models.convnext.checkpoint_filter_fn``); other layouts pass unchanged.

    timm puts the final norm in ``head.norm`` (applied after pooling); where the model applies it
    before pooling instead (``head_norm_first=True``: ``norm_pre``, VICRegL's order) it goes there.
    Without a model, ``norm_first`` says which.
    """
    if "downsample_layers.0.0.weight" not in state_dict:
        return dict(state_dict)
    from timm.models.convnext import checkpoint_filter_fn

    target = model.state_dict() if model is not None else {}
    out: StateDict = {}
    for k, v in state_dict.items():  # one tensor at a time: a mismatched model fails in the loader, with names
        out.update(checkpoint_filter_fn({k: v}, _FilterModel(v, target)))
    if ("norm_pre.weight" in target) if model is not None else norm_first:
        out = {("norm_pre." + k[len("head.norm.") :] if k.startswith("head.norm.") else k): v for k, v in out.items()}
    return out


def timm_family_filter(state_dict: StateDict, model: nn.Module | None) -> StateDict:
    """Weights for ``model``: as they are when their names are the model's (timm's layout), else
    through the ``checkpoint_filter_fn`` of the model's timm module (the family's official
    layouts: DINOv2, EVA, CLIP, ...). Without a model or a filter: unchanged."""
    if model is None:
        return dict(state_dict)
    import importlib

    expected = set(model.state_dict())
    if set(state_dict) <= expected:
        return dict(state_dict)
    module = importlib.import_module(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None:
        return dict(state_dict)
    return dict(filter_fn(dict(state_dict), model))


# ---- built-in methods -----------------------------------------------------------------------------

_DINO_FILES = ("checkpoint{epoch}.pth",)
_MOCO_FILES = ("checkpoint_{epoch}.pth.tar",)
_HEAD = r"^head\."
_FC = r"^fc\."
_TEACHER_STUDENT_ALIASES = {"momentum": "teacher", "target": "teacher", "ema": "teacher", "online": "student"}


def _dino_family(
    name: str, title: str, drop: tuple[str, ...], source: str, notes: str = "", **kwargs: Any
) -> MethodAdapter:
    branches = {
        b: BranchSpec(container=(b,), strip=("backbone.",), drop=drop, description=f"the {b} network")
        for b in ("teacher", "student")
    }
    return MethodAdapter(
        name=name,
        title=title,
        arch=kwargs.pop("arch", "vit_small_patch16_224"),
        branches=branches,
        default_branch="teacher",
        file_patterns=_DINO_FILES,
        aliases=_TEACHER_STUDENT_ALIASES,
        source=source,
        notes=notes,
        **kwargs,
    )


def _resnet_encoder_adapter(
    name: str,
    title: str,
    branches: Mapping[str, tuple[str | tuple[str, ...] | None, str]],
    default_branch: str,
    *,
    container: tuple[str | None, ...],
    file_patterns: tuple[str, ...],
    drop: tuple[str, ...] = (),
    rename: tuple[tuple[str, str], ...] = (),
    aliases: Mapping[str, str] | None = None,
    source: str = "",
    notes: str = "",
    run_files: tuple[str, ...] = (),
    remap: Remap | None = None,
    family_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> MethodAdapter:
    specs = {
        b: BranchSpec(container=container, select=sel, drop=drop, rename=rename, description=desc)
        for b, (sel, desc) in branches.items()
    }
    return MethodAdapter(
        name=name,
        title=title,
        arch="resnet50",
        branches=specs,
        default_branch=default_branch,
        file_patterns=file_patterns,
        aliases=aliases or {},
        source=source,
        notes=notes,
        run_files=run_files,
        remap=remap,
        family_kwargs=family_kwargs or {},
    )


def _register_builtins() -> None:
    register(
        _dino_family(
            "dino",
            "DINO",
            drop=(_HEAD,),
            source="https://github.com/facebookresearch/dino",
            notes="teacher = teacher.state_dict() of the multi-crop wrapper (backbone.* + head.*); "
            "student is DDP-wrapped (module.backbone.*).",
        )
    )
    register(
        _dino_family(
            "ibot",
            "iBOT",
            drop=(_HEAD, r"^masked_embed$"),
            source="https://github.com/bytedance/ibot",
            notes="the backbone's masked_embed (mask token) is dropped.",
        )
    )
    register(
        _dino_family(
            "mugs",
            "Mugs",
            drop=(_HEAD, r"^(instance_head|local_group_head|group_head)\.", r"^relation_blocks\."),
            source="https://github.com/sail-sg/mugs",
            notes="instance / local-group / group heads and the backbone's relation blocks are dropped.",
        )
    )
    register(
        _dino_family(
            "esvit",
            "EsViT",
            drop=(_HEAD, r"^head_dense\.", r"(^|\.)relative_position_index$", r"(^|\.)attn_mask$"),
            arch="swin_tiny_patch4_window7_224",
            arch_kwargs={"norm_layer": partial(nn.LayerNorm, eps=1e-6)},
            remap=_swin_remap,
            source="https://github.com/microsoft/esvit",
            notes="original Swin layout (downsample at the end of each stage) mapped to timm's; "
            "EsViT's Swin uses LayerNorm eps=1e-6; heads head.* and head_dense.* are attached to the "
            "Swin model itself.",
        )
    )
    register(
        MethodAdapter(
            name="mocov3",
            title="MoCo v3",
            arch="vit_small_patch16_224",
            arch_kwargs={"num_heads": 12},
            branches={
                "momentum": BranchSpec(
                    ("state_dict",), select="momentum_encoder.", drop=(_HEAD, _FC), description="momentum encoder"
                ),
                "base": BranchSpec(
                    ("state_dict",), select="base_encoder.", drop=(_HEAD, _FC), description="base encoder"
                ),
            },
            default_branch="momentum",
            file_patterns=_MOCO_FILES,
            aliases={
                "teacher": "momentum",
                "target": "momentum",
                "key": "momentum",
                "student": "base",
                "online": "base",
                "query": "base",
            },
            source="https://github.com/facebookresearch/moco-v3",
            notes="MoCo v3's ViT-S/16 has 12 heads; the encoder's head.* (ViT) or fc.* (ResNet) is the "
            "projector; module.predictor.* belongs to the base branch and is dropped.",
        )
    )
    register(
        MethodAdapter(
            name="mae",
            title="MAE",
            arch="vit_small_patch16_224",
            branches={
                "encoder": BranchSpec(("model",), drop=(r"^decoder_", r"^mask_token$"), description="the MAE encoder")
            },
            default_branch="encoder",
            file_patterns=("checkpoint-{epoch}.pth",),
            source="https://github.com/facebookresearch/mae",
            notes="decoder_* and mask_token dropped; pos_embed (fixed sin-cos, with the class slot) is kept.",
        )
    )
    register(
        MethodAdapter(
            name="ijepa",
            title="I-JEPA",
            arch="vit_base_patch16_224",
            arch_kwargs={"class_token": False, "global_pool": "avg", "fc_norm": False},
            branches={
                "encoder": BranchSpec(("encoder",), description="context encoder (as the DSE paper)"),
                "target": BranchSpec(("target_encoder",), description="EMA target encoder"),
            },
            default_branch="encoder",
            file_patterns=("{tag}-ep{epoch}.pth.tar",),
            aliases={
                "context": "encoder",
                "student": "encoder",
                "target_encoder": "target",
                "teacher": "target",
                "momentum": "target",
                "ema": "target",
            },
            source="https://github.com/facebookresearch/ijepa",
            notes="no class token; pos_embed is (1, N, d) fixed sin-cos and is resampled if the grid "
            "differs. Official release: ViT-H/14 (use arch='vit_huge_patch14_gap_224'); the DSE paper "
            "uses ViT-B/16 with 12 heads.",
        )
    )
    register(
        _resnet_encoder_adapter(
            "swav",
            "SwAV",
            {"model": (None, "the ResNet trunk")},
            "model",
            container=("state_dict", None),
            file_patterns=("ckp-{epoch}.pth",),
            drop=(r"^projection_head\.", r"^prototypes\."),
            source="https://github.com/facebookresearch/swav",
            notes="ckp-{epoch}.pth is a copy of checkpoint.pth.tar (0-based epoch in the name).",
        )
    )
    register(
        _resnet_encoder_adapter(
            "densecl",
            "DenseCL",
            {
                "query": (("backbone.", "encoder_q.0."), "query encoder"),
                "key": ("encoder_k.0.", "momentum key encoder"),
            },
            "query",
            container=("state_dict",),
            file_patterns=("epoch_{epoch}.pth",),
            aliases={
                "encoder": "query",
                "student": "query",
                "online": "query",
                "momentum": "key",
                "teacher": "key",
                "target": "key",
            },
            source="https://github.com/WXinlong/DenseCL",
            notes="mmcv checkpoint; backbone.* is the query trunk (also stored as encoder_q.0.*); necks, "
            "queues and the key encoder are dropped.",
        )
    )
    register(
        _resnet_encoder_adapter(
            "simsiam",
            "SimSiam",
            {"encoder": ("encoder.", "the encoder")},
            "encoder",
            container=("state_dict",),
            file_patterns=_MOCO_FILES,
            drop=(_FC,),
            source="https://github.com/facebookresearch/simsiam",
            notes="encoder.fc.* is the projector; predictor.* dropped.",
        )
    )
    register(
        _resnet_encoder_adapter(
            "mec",
            "MEC",
            {
                "encoder": ("encoder.", "the online encoder (as the DSE paper)"),
                "teacher": ("teacher.", "the EMA teacher"),
            },
            "encoder",
            container=("state_dict",),
            file_patterns=_MOCO_FILES,
            drop=(_FC,),
            aliases={"student": "encoder", "online": "encoder", "momentum": "teacher", "target": "teacher"},
            source="https://github.com/xinliu20/MEC",
            notes="encoder.fc.* / teacher.fc.* are projectors; predictor.* dropped.",
        )
    )
    register(
        _resnet_encoder_adapter(
            "resa",
            "ReSA",
            {
                "encoder": ("encoder.", "the online encoder (as the DSE paper)"),
                "momentum": ("momentum_encoder.", "the momentum encoder"),
            },
            "encoder",
            container=("state_dict",),
            file_patterns=_MOCO_FILES,
            drop=(_FC,),
            aliases={"student": "encoder", "online": "encoder", "teacher": "momentum", "target": "momentum"},
            source="https://github.com/winci-ai/resa",
            run_files=("checkpoint.pth.tar",),
            notes="projector / momentum_projector / predictor dropped; the official script keeps only "
            "checkpoint.pth.tar, per-epoch files follow the SimSiam pattern.",
        )
    )
    byol_rename = (
        (r"^encoder\.0\.", "conv1."),
        (r"^encoder\.1\.", "bn1."),
        (r"^encoder\.4\.", "layer1."),
        (r"^encoder\.5\.", "layer2."),
        (r"^encoder\.6\.", "layer3."),
        (r"^encoder\.7\.", "layer4."),
    )
    register(
        _resnet_encoder_adapter(
            "byol",
            "BYOL",
            {
                "target": ("target_network.", "the target (EMA) network (as the DSE paper)"),
                "online": ("online_network.", "the online network"),
            },
            "target",
            container=("model",),
            file_patterns=("resnet{depth}_{epoch}.pth.tar",),
            drop=(r"^projetion\.", r"^projection\."),
            rename=byol_rename,
            aliases={"teacher": "target", "momentum": "target", "ema": "target", "student": "online"},
            source="https://github.com/yaox12/BYOL-PyTorch",
            notes="encoder = nn.Sequential(*resnet.children()[:-1]): indices 0,1,4..7 -> conv1, bn1, "
            "layer1..4; the projector is spelled 'projetion' in that release.",
        )
    )
    register(
        _resnet_encoder_adapter(
            "vicreg",
            "VICReg",
            {"backbone": ("backbone.", "the ResNet backbone")},
            "backbone",
            container=("model",),
            file_patterns=("model_{epoch}.pth",),
            source="https://github.com/facebookresearch/vicreg",
            run_files=("model.pth",),
            notes="projector dropped; the official script writes model.pth each epoch (no epoch in name).",
        )
    )
    register(
        _resnet_encoder_adapter(
            "vicregl",
            "VICRegL",
            {"backbone": ("backbone.", "the backbone (ResNet or ConvNeXt)")},
            "backbone",
            container=("model",),
            file_patterns=("model_{epoch}.pth",),
            source="https://github.com/facebookresearch/VICRegL",
            run_files=("model.pth",),
            remap=partial(_official_convnext_remap, norm_first=True),
            family_kwargs={"convnext_": {"ls_init_value": None, "head_norm_first": True}},
            notes="projector, maps_projector and classifier dropped. ConvNeXt (VICRegL's default, e.g. "
            "arch='convnext_small'): official names mapped by timm's filter; built without layer scale "
            "(layer_scale_init_value=0: no gamma) and with the final LayerNorm before pooling "
            "(head_norm_first), so that the last stage is read after it, as VICRegL's dense maps.",
        )
    )
    register(
        _resnet_encoder_adapter(
            "barlowtwins",
            "Barlow Twins",
            {"backbone": ("backbone.", "the ResNet backbone")},
            "backbone",
            container=("model",),
            file_patterns=("checkpoint_{epoch}.pth",),
            drop=(_FC,),
            source="https://github.com/facebookresearch/barlowtwins",
            run_files=("checkpoint.pth",),
            notes="projector and bn dropped; the official script writes checkpoint.pth each epoch.",
        )
    )
    register(
        MethodAdapter(
            name="dinov2",
            title="DINOv2",
            arch="vit_large_patch14_dinov2",
            branches={
                "teacher": BranchSpec(
                    ("teacher", "model"),
                    select=("backbone.", "teacher.backbone."),
                    description="the teacher backbone (teacher_checkpoint.pth; teacher.* of a periodic file)",
                ),
                "student": BranchSpec(("model",), select="student.backbone.", description="the student backbone"),
            },
            default_branch="teacher",
            file_patterns=("eval/training_{step}/teacher_checkpoint.pth", "model_{step}.rank_0.pth"),
            aliases=_TEACHER_STUDENT_ALIASES,
            remap=dinov2_remap,
            unit="step",
            discover=discover_dinov2,
            infer_arch=dinov2_architecture,
            arch_from_checkpoint=True,
            source="https://github.com/facebookresearch/dinov2",
            notes="teacher_checkpoint.pth = {'teacher': backbone.*, dino_head.*, ibot_head.*}; release files "
            "dinov2_vit*14[_reg4]_pretrain.pth; block chunks flattened; official names mapped by timm's "
            "checkpoint_filter_fn, the position embedding interpolated as the official code does.",
        )
    )
    register(
        MethodAdapter(
            name="dinov3",
            title="DINOv3",
            arch=ARCH,
            branches={
                "teacher": BranchSpec(
                    ("teacher", "model"),
                    select=("backbone.", "teacher.backbone."),
                    description="the teacher (EMA) backbone",
                ),
                "student": BranchSpec(("model",), select="student.backbone.", description="the student backbone"),
                "gram": BranchSpec(
                    ("model",), select="gram_teacher.backbone.", description="the Gram teacher backbone"
                ),
            },
            default_branch="teacher",
            file_patterns=(
                "eval/training_{step}/teacher_checkpoint.pth",
                "eval/training_{step}/sharded_teacher_checkpoint/",
                "ckpt/{step}/",
                "ckpt/{step}_keep/",
            ),
            aliases={**_TEACHER_STUDENT_ALIASES, "gram_teacher": "gram"},
            remap=dinov3_remap,
            unit="step",
            discover=discover_dinov3,
            infer_arch=dinov3_architecture,
            arch_from_checkpoint=True,
            source="https://github.com/facebookresearch/dinov3",
            notes="teacher_checkpoint.pth = {'teacher': backbone.*, dino_head.*, ibot_head.*}; ckpt/<iter>/ are "
            "torch.distributed.checkpoint folders (model.student/teacher/gram_teacher.*); release files "
            "dinov3_vit*16_pretrain_<data>-<hash>.pth; read into dsekit's DINOv3 ViT (official names and "
            "numerics: stored RoPE periods, bf16 RoPE of training builds, masked key bias).",
        )
    )
    register(
        MethodAdapter(
            name="hf",
            title="Hugging Face",
            arch="hf",
            branches={"model": BranchSpec(("weights",), description="the base model of a transformers folder")},
            default_branch="model",
            file_patterns=("checkpoint-{step}/",),
            remap=hf_remap,
            unit="step",
            discover=discover_hf,
            infer_arch=hf_architecture,
            builder=build_hf_backbone,
            source="https://github.com/huggingface/transformers",
            notes="config.json + model.safetensors / pytorch_model.bin; the network built from config.json "
            f"(model types {', '.join(MODEL_TYPES)}), task heads dropped; Trainer runs: checkpoint-<step>/.",
        )
    )
    register(
        MethodAdapter(
            name="timm",
            title="timm",
            arch="",  # no default: --arch names the model
            branches={
                "model": BranchSpec(
                    (None, "state_dict", "model", "module", "state_dict_ema", "model_ema"),
                    description="a timm model's state dict, or its family's official layout",
                )
            },
            default_branch="model",
            file_patterns=(ANY_FILE,),
            remap=timm_family_filter,
            source="https://github.com/huggingface/pytorch-image-models",
            notes="--arch names the timm model; weights in timm's layout load as they are, others go through "
            "the checkpoint_filter_fn of the architecture's timm module (e.g. official DINOv2, EVA-02 layouts).",
        )
    )
    register(
        MethodAdapter(
            name="generic",
            title="Generic state dict",
            arch="vit_small_patch16_224",
            branches={
                "model": BranchSpec(
                    (None, "state_dict", "model", "module"),
                    description="a plain state dict (optionally under state_dict / model / module)",
                )
            },
            default_branch="model",
            file_patterns=(ANY_FILE,),
            notes="use prefix= to select a sub-module (e.g. 'backbone.'); the epoch is the last number "
            "in the file name.",
        )
    )


_register_builtins()
