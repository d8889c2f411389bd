"""DINOv2 and DINOv3 checkpoints in their official layouts, from random weights with the official
key names and shapes: teacher checkpoints, periodic files, torch.distributed.checkpoint folders,
release files (registers / storage tokens, chunked blocks, SwiGLU, masked key bias), read
strictly and compared with an independent forward of the official semantics
(:mod:`_reference_vit`) to 1e-4 relative, at the trained size and at others."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch

from dsekit.backbones import CheckpointError, FeatureExtractor, discover_checkpoints, load_backbone
from dsekit.backbones.detect import detect_checkpoint
from dsekit.backbones.dinov2 import official_pos_embed, unchunk_blocks
from dsekit.backbones.dinov3_vit import rope_periods

from _reference_vit import dinov2_patch_tokens, dinov3_patch_tokens

DIM, HEADS = 64, 2  #: DINOv3 networks here (head width 32, read off the RoPE periods)
V2_DIM, V2_HEADS = 128, 2  #: DINOv2 networks here (head width 64, as every DINOv2 network has)


def _rand(g: torch.Generator, *shape: int, scale: float = 0.05) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


def dinov2_sd(
    seed: int = 0,
    *,
    depth: int = 2,
    patch: int = 14,
    grid: int = 4,
    regs: int = 0,
    swiglu: bool = False,
    chunks: int = 0,
) -> dict[str, torch.Tensor]:
    """An official DINOv2 backbone state dict (``DinoVisionTransformer`` names), random weights."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "cls_token": _rand(g, 1, 1, V2_DIM, scale=1.0),
        "pos_embed": _rand(g, 1, 1 + grid * grid, V2_DIM, scale=1.0),
        "mask_token": torch.zeros(1, V2_DIM),
        "patch_embed.proj.weight": _rand(g, V2_DIM, 3, patch, patch),
        "patch_embed.proj.bias": _rand(g, V2_DIM),
        "norm.weight": 1 + _rand(g, V2_DIM),
        "norm.bias": _rand(g, V2_DIM),
    }
    if regs:
        sd["register_tokens"] = _rand(g, 1, regs, V2_DIM, scale=1.0)
    hidden = 4 * V2_DIM
    for i in range(depth):
        c = f"{i // max(1, depth // chunks)}." if chunks else ""
        b = f"blocks.{c}{i}."
        sd.update(
            {
                b + "norm1.weight": 1 + _rand(g, V2_DIM),
                b + "norm1.bias": _rand(g, V2_DIM),
                b + "attn.qkv.weight": _rand(g, 3 * V2_DIM, V2_DIM, scale=0.2),
                b + "attn.qkv.bias": _rand(g, 3 * V2_DIM),
                b + "attn.proj.weight": _rand(g, V2_DIM, V2_DIM, scale=0.2),
                b + "attn.proj.bias": _rand(g, V2_DIM),
                b + "ls1.gamma": 0.5 + _rand(g, V2_DIM),
                b + "ls2.gamma": 0.5 + _rand(g, V2_DIM),
                b + "norm2.weight": 1 + _rand(g, V2_DIM),
                b + "norm2.bias": _rand(g, V2_DIM),
            }
        )
        if swiglu:
            h = (int(hidden * 2 / 3) + 7) // 8 * 8
            sd.update(
                {
                    b + "mlp.w12.weight": _rand(g, 2 * h, V2_DIM, scale=0.2),
                    b + "mlp.w12.bias": _rand(g, 2 * h),
                    b + "mlp.w3.weight": _rand(g, V2_DIM, h, scale=0.2),
                    b + "mlp.w3.bias": _rand(g, V2_DIM),
                }
            )
        else:
            sd.update(
                {
                    b + "mlp.fc1.weight": _rand(g, hidden, V2_DIM, scale=0.2),
                    b + "mlp.fc1.bias": _rand(g, hidden),
                    b + "mlp.fc2.weight": _rand(g, V2_DIM, hidden, scale=0.2),
                    b + "mlp.fc2.bias": _rand(g, V2_DIM),
                }
            )
    return sd


def dinov3_sd(
    seed: int = 0,
    *,
    depth: int = 2,
    storage: int = 4,
    mask_k_bias: bool = True,
    swiglu: bool = False,
    periods_dtype: torch.dtype = torch.bfloat16,
) -> dict[str, torch.Tensor]:
    """An official DINOv3 backbone state dict (names of ``dinov3.models.vision_transformer``)."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "cls_token": _rand(g, 1, 1, DIM, scale=1.0),
        "mask_token": torch.zeros(1, DIM),
        "patch_embed.proj.weight": _rand(g, DIM, 3, 16, 16),
        "patch_embed.proj.bias": _rand(g, DIM),
        "rope_embed.periods": rope_periods(DIM // HEADS, base=100.0, dtype=periods_dtype),
        "norm.weight": 1 + _rand(g, DIM),
        "norm.bias": _rand(g, DIM),
    }
    if storage:
        sd["storage_tokens"] = _rand(g, 1, storage, DIM, scale=1.0)
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update(
            {
                b + "norm1.weight": 1 + _rand(g, DIM),
                b + "norm1.bias": _rand(g, DIM),
                b + "attn.qkv.weight": _rand(g, 3 * DIM, DIM, scale=0.3),
                b + "attn.qkv.bias": _rand(g, 3 * DIM, scale=0.5),
                b + "attn.proj.weight": _rand(g, DIM, DIM, scale=0.2),
                b + "attn.proj.bias": _rand(g, DIM),
                b + "ls1.gamma": 0.5 + _rand(g, DIM),
                b + "ls2.gamma": 0.5 + _rand(g, DIM),
                b + "norm2.weight": 1 + _rand(g, DIM),
                b + "norm2.bias": _rand(g, DIM),
            }
        )
        if mask_k_bias:
            sd[b + "attn.qkv.bias_mask"] = torch.cat([torch.ones(DIM), torch.zeros(DIM), torch.ones(DIM)])
        if swiglu:
            h = 96
            sd.update({b + f"mlp.{w}.weight": _rand(g, h, DIM, scale=0.2) for w in ("w1", "w2")})
            sd.update({b + f"mlp.{w}.bias": _rand(g, h) for w in ("w1", "w2")})
            sd.update({b + "mlp.w3.weight": _rand(g, DIM, h, scale=0.2), b + "mlp.w3.bias": _rand(g, DIM)})
        else:
            sd.update(
                {
                    b + "mlp.fc1.weight": _rand(g, 4 * DIM, DIM, scale=0.2),
                    b + "mlp.fc1.bias": _rand(g, 4 * DIM),
                    b + "mlp.fc2.weight": _rand(g, DIM, 4 * DIM, scale=0.2),
                    b + "mlp.fc2.bias": _rand(g, DIM),
                }
            )
    return sd


def _head(prefix: str, g: torch.Generator, dim: int = DIM) -> dict[str, torch.Tensor]:
    """A DINOHead: mlp + the old weight-normed last layer (weight_g / weight_v)."""
    return {
        f"{prefix}mlp.0.weight": _rand(g, 32, dim),
        f"{prefix}mlp.0.bias": _rand(g, 32),
        f"{prefix}mlp.2.weight": _rand(g, 16, 32),
        f"{prefix}mlp.2.bias": _rand(g, 16),
        f"{prefix}last_layer.weight_g": torch.ones(50, 1),
        f"{prefix}last_layer.weight_v": _rand(g, 50, 16),
    }


def _teacher(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return {
        "teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, **_head("dino_head.", g), **_head("ibot_head.", g)}
    }


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


def _features(path: Path, method: str, size: int) -> torch.Tensor:
    model = load_backbone(path, method, img_size=size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return FeatureExtractor(model)(x), x


# ---------------------------------------------------------------------------------------------- DINOv2


@pytest.mark.parametrize("size", [56, 84, 112])
@pytest.mark.parametrize("case", ["plain", "registers", "swiglu", "chunked"])
def test_dinov2_release_file_equals_the_official_forward(tmp_path, case, size):
    """Release file (flat state dict, the trained 56-px grid here standing for 518 px): features
    equal the official forward at the trained size and at other sizes, the official
    position-embedding interpolation included (registers: offset 0, antialiased; else 0.1, not)."""
    kw = {"plain": {}, "registers": {"regs": 4}, "swiglu": {"swiglu": True}, "chunked": {"chunks": 2, "depth": 4}}[case]
    sd = dinov2_sd(**kw)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    got, x = _features(path, "dinov2", size)
    reg = "regs" in kw
    ref = dinov2_patch_tokens(unchunk_blocks(sd), x, V2_HEADS, offset=0.0 if reg else 0.1, antialias=reg)
    assert got.shape == ref.shape
    assert _rel(got, ref) < 1e-4


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_518px_release_layout_at_224(tmp_path, registers):
    """The release files' own grid: a 518-px (37 x 37) position embedding read at 224 px (16 x 16)."""
    sd = dinov2_sd(depth=1, grid=37, regs=registers)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(sd, path)
    got, x = _features(path, "dinov2", 224)
    ref = dinov2_patch_tokens(sd, x, V2_HEADS, offset=0.0 if registers else 0.1, antialias=bool(registers))
    assert got.shape == (2, 256, V2_DIM) and _rel(got, ref) < 1e-4


@pytest.mark.parametrize("layout", ["dinov2 release", "dinov2 periodic", "dinov3 release", "dinov3 teacher"])
def test_auto_reads_each_layout(tmp_path, layout):
    if layout == "dinov2 release":
        torch.save(dinov2_sd(regs=4), tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    elif layout == "dinov2 periodic":
        torch.save(
            {"model": {f"teacher.backbone.{k}": v for k, v in dinov2_sd().items()}, "optimizer": {}, "iteration": 9},
            tmp_path / "model_0000009.rank_0.pth",
        )
    elif layout == "dinov3 release":
        torch.save(dinov3_sd(), tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth")
    else:
        (tmp_path / "eval" / "training_9").mkdir(parents=True)
        torch.save(_teacher(dinov3_sd()), tmp_path / "eval" / "training_9" / "teacher_checkpoint.pth")
    from dsekit.scan import ScanConfig
    from dsekit.sweep import resolve_auto

    cfg = resolve_auto(ScanConfig(str(tmp_path), "auto"))
    assert cfg.method == layout.split()[0]
    assert cfg.model_kwargs or cfg.arch


@pytest.mark.parametrize("case", ["dinov3 under dinov2", "no metadata", "fsdp shards"])
def test_bad_layouts_get_one_line_at_the_command_line(tmp_path, capsys, case):
    from dsekit.cli import main

    method = "dinov2"
    if case == "dinov3 under dinov2":
        (tmp_path / "eval" / "training_9").mkdir(parents=True)
        torch.save(_teacher(dinov3_sd()), tmp_path / "eval" / "training_9" / "teacher_checkpoint.pth")
        expected = "--method dinov3"
    elif case == "no metadata":
        _dcp(tmp_path / "ckpt" / "99", dinov3_sd(), 99)
        (tmp_path / "ckpt" / "99" / ".metadata").unlink()
        method, expected = "dinov3", "without its .metadata"
    else:
        for r in (0, 1):
            torch.save({"model": {}, "iteration": 3749}, tmp_path / f"model_0003749.rank_{r}.pth")
        expected = "teacher_checkpoint.pth"
    code = main(["scan", str(tmp_path), "--method", method, "--image-size", "64", "--num-images", "4", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0] and str(tmp_path) in err[0]


def test_timm_resampling_differs_from_the_official_interpolation():
    """Why dsekit interpolates itself: timm's resampling (size=, antialiased) is not DINOv2's."""
    from timm.layers import resample_abs_pos_embed

    pe = torch.randn(1, 1 + 37 * 37, 32, generator=torch.Generator().manual_seed(0))
    ours = official_pos_embed(pe, (16, 16), offset=0.1, antialias=False)
    theirs = resample_abs_pos_embed(pe, new_size=[16, 16], num_prefix_tokens=1)
    assert (ours - theirs).abs().max() > 0.1
    torch.testing.assert_close(ours[:, 0], pe[:, 0])
    assert official_pos_embed(pe, (37, 37), offset=0.1, antialias=False) is pe  # the official early return


def test_dinov2_training_run_teacher_checkpoints_by_step(tmp_path):
    """eval/training_<iter>/teacher_checkpoint.pth with heads, chunked blocks and the run's
    config.yaml (its interpolation settings win): discovered by step, read strictly."""
    (tmp_path / "config.yaml").write_text("student:\n  interpolate_offset: 0.0\n  interpolate_antialias: true\n")
    sds = {}
    for step in (12499, 24999):
        sds[step] = dinov2_sd(step, regs=4, chunks=2, depth=4)
        d = tmp_path / "eval" / f"training_{step}"
        d.mkdir(parents=True)
        torch.save(_teacher(sds[step]), d / "teacher_checkpoint.pth")
    found = discover_checkpoints(tmp_path, "dinov2")
    assert [s for _, s in found] == [12499, 24999]
    for path, step in found:
        got, x = _features(path, "dinov2", 84)
        ref = dinov2_patch_tokens(unchunk_blocks(sds[step]), x, V2_HEADS, offset=0.0, antialias=True)
        assert _rel(got, ref) < 1e-4
    det = detect_checkpoint(found[0][0])
    assert (det.method, det.layout, det.arch) == ("dinov2", "training checkpoint", "vit_small_patch14_reg4_dinov2")


def test_dinov2_periodic_file_of_a_single_rank_run(tmp_path):
    """model_<iter:07d>.rank_0.pth = {model: {student.*, teacher.*, loss centres}, optimizer,
    iteration}: teacher and student branches, the step from the name (model_final: stored)."""
    teacher, student = dinov2_sd(1), dinov2_sd(2)
    model = {
        **{f"teacher.backbone.{k}": v for k, v in teacher.items()},
        **{f"student.backbone.{k}": v for k, v in student.items()},
        "dino_loss.center": torch.zeros(1, 50),
    }
    torch.save(
        {"model": model, "optimizer": {"state": {}, "param_groups": []}, "iteration": 3749},
        tmp_path / "model_0003749.rank_0.pth",
    )
    torch.save({"model": model, "optimizer": {}, "iteration": 4999}, tmp_path / "model_final.rank_0.pth")
    assert [s for _, s in discover_checkpoints(tmp_path, "dinov2")] == [3749, 4999]
    x = torch.randn(1, 3, 56, 56)
    for branch, sd in (("teacher", teacher), ("student", student)):
        model_ = load_backbone(tmp_path / "model_0003749.rank_0.pth", "dinov2", branch=branch, img_size=56)
        with torch.no_grad():
            got = FeatureExtractor(model_)(x)
        assert _rel(got, dinov2_patch_tokens(sd, x, V2_HEADS)) < 1e-4


def test_dinov2_multi_rank_run_names_the_teacher_checkpoints(tmp_path):
    for r in (0, 1):
        torch.save({"model": {}, "iteration": 3749}, tmp_path / f"model_0003749.rank_{r}.pth")
    with pytest.raises(CheckpointError, match="2 FSDP ranks.*teacher_checkpoint.pth"):
        discover_checkpoints(tmp_path, "dinov2")
    d = tmp_path / "eval" / "training_12499"
    d.mkdir(parents=True)
    torch.save(_teacher(dinov2_sd()), d / "teacher_checkpoint.pth")
    with pytest.warns(UserWarning, match="shards and are skipped"):
        assert [s for _, s in discover_checkpoints(tmp_path, "dinov2")] == [12499]


def test_a_dinov3_file_under_dinov2_says_which_method(tmp_path):
    path = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    torch.save(dinov3_sd(), path)
    with pytest.raises(CheckpointError, match="DINOv3.*--method dinov3"):
        load_backbone(path, "dinov2", img_size=64)


# ---------------------------------------------------------------------------------------------- DINOv3


@pytest.mark.parametrize("size", [64, 96])
@pytest.mark.parametrize("case", ["release", "swiglu", "no_storage"])
def test_dinov3_release_file_equals_the_official_forward(tmp_path, case, size):
    """Release files: stored (bfloat16-rounded) RoPE periods, float32 RoPE, storage tokens, the
    masked key bias, LayerNorm eps 1e-5."""
    kw = {"release": {}, "swiglu": {"swiglu": True}, "no_storage": {"storage": 0}}[case]
    sd = dinov3_sd(**kw)
    path = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    torch.save(sd, path)
    got, x = _features(path, "dinov3", size)
    ref = dinov3_patch_tokens(sd, x, HEADS, rope_dtype=torch.float32, eps=1e-5)
    assert _rel(got, ref) < 1e-4


def test_dinov3_training_teacher_uses_bfloat16_rope_and_the_run_config(tmp_path):
    """A teacher checkpoint of a training run is read as DINOv3's training build reads it: RoPE in
    bfloat16, the key bias unmasked (mask_k_bias false), the norm of the run's config.yaml."""
    (tmp_path / "config.yaml").write_text("student:\n  norm_layer: layernorm\n")
    sd = dinov3_sd(3, storage=0, mask_k_bias=False)
    d = tmp_path / "eval" / "training_1249"
    d.mkdir(parents=True)
    torch.save(_teacher(sd), d / "teacher_checkpoint.pth")
    ((path, step),) = discover_checkpoints(tmp_path, "dinov3")
    assert step == 1249
    got, x = _features(path, "dinov3", 64)
    ref = dinov3_patch_tokens(sd, x, HEADS, rope_dtype=torch.bfloat16, eps=1e-6)
    assert _rel(got, ref) < 1e-4
    wrong = dinov3_patch_tokens(sd, x, HEADS, rope_dtype=torch.float32, eps=1e-6)
    assert _rel(got, wrong) > 1e-4  # the precision matters: a float32 RoPE is measurably different


def _dcp(folder: Path, sd: dict[str, torch.Tensor], iteration: int) -> None:
    import torch.distributed.checkpoint as dcp

    model = {
        **{f"teacher.backbone.{k}": v for k, v in sd.items()},
        **{f"student.backbone.{k}": v + 1 for k, v in sd.items() if v.is_floating_point()},
        "dino_loss.center": torch.zeros(1, 50),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(
            {"iteration": iteration, "model": model, "optimizer": {"state": {"0": {"exp_avg": torch.zeros(3)}}}},
            storage_writer=dcp.FileSystemWriter(str(folder)),
            no_dist=True,
        )


def test_dinov3_dcp_folders_read_on_one_process(tmp_path):
    """ckpt/<iter>/ written by torch.distributed.checkpoint, its hard-linked ckpt/<iter>_keep/
    copy counted once, a teacher checkpoint of the same step preferred; strict reading."""
    sd = dinov3_sd(4, mask_k_bias=False, storage=0)
    _dcp(tmp_path / "ckpt" / "3749", sd, 3749)
    _dcp(tmp_path / "ckpt" / "3749_keep", sd, 3749)
    _dcp(tmp_path / "ckpt" / "7499_keep", dinov3_sd(5, mask_k_bias=False, storage=0), 7499)
    found = discover_checkpoints(tmp_path, "dinov3")
    assert [(p.relative_to(tmp_path).as_posix(), s) for p, s in found] == [
        ("ckpt/3749", 3749),
        ("ckpt/7499_keep", 7499),
    ]
    got, x = _features(found[0][0], "dinov3", 64)
    assert _rel(got, dinov3_patch_tokens(sd, x, HEADS, rope_dtype=torch.bfloat16, eps=1e-6)) < 1e-4
    det = detect_checkpoint(found[0][0])
    assert det.method == "dinov3" and det.model_kwargs["rope_dtype"] == "bf16"
    student = load_backbone(found[0][0], "dinov3", branch="student", img_size=64)
    assert torch.equal(student.cls_token, sd["cls_token"] + 1)


def test_a_dcp_folder_without_metadata_is_named(tmp_path):
    sd = dinov3_sd()
    _dcp(tmp_path / "ckpt" / "99", sd, 99)
    (tmp_path / "ckpt" / "99" / ".metadata").unlink()
    with pytest.raises(
        CheckpointError, match=r"ckpt/99 is a torch.distributed.checkpoint folder without its .metadata"
    ):
        load_backbone(tmp_path / "ckpt" / "99", "dinov3", img_size=64)


def test_a_dinov2_file_under_dinov3_says_which_method(tmp_path):
    path = tmp_path / "x.pth"
    torch.save(dinov2_sd(), path)
    with pytest.raises(CheckpointError, match="--method dinov2"):
        load_backbone(path, "dinov3", img_size=56)


def test_dinov3_layers_read_from_one_pass(tmp_path):
    """Every block of the official network, after the final norm, from one forward pass."""
    sd = dinov3_sd(6, depth=3)
    path = tmp_path / "dinov3.pth"
    torch.save(sd, path)
    model = load_backbone(path, "dinov3", img_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = FeatureExtractor(model, layers=[2, 0, 1])(x)
    for b, f in zip([2, 0, 1], feats, strict=True):
        assert _rel(f, dinov3_patch_tokens(sd, x, HEADS, block=b)) < 1e-4


# ---------------------------------------------------------------------------------------------- the official code


OFFICIAL = os.environ.get("DSEKIT_OFFICIAL_CODE")  # a folder holding the dinov2/ and dinov3/ packages


@pytest.mark.skipif(
    not OFFICIAL, reason="set DSEKIT_OFFICIAL_CODE to a folder with the official dinov2/ and dinov3/ packages"
)
def test_against_the_official_packages(tmp_path):
    """With the official packages importable: dsekit's features equal theirs bit for bit
    (checked on release-layout state dicts of random weights, at sizes other than trained)."""
    import sys
    from functools import partial

    os.environ.setdefault("XFORMERS_DISABLED", "1")
    sys.path.insert(0, str(OFFICIAL))
    from dinov2.layers import MemEffAttention, NestedTensorBlock
    from dinov2.models.vision_transformer import DinoVisionTransformer as V2
    from dinov3.models.vision_transformer import DinoVisionTransformer as V3

    for reg, aa, off in ((0, False, 0.1), (4, True, 0.0)):
        m = V2(
            img_size=56,
            patch_size=14,
            embed_dim=V2_DIM,
            depth=2,
            num_heads=V2_HEADS,
            init_values=1.0,
            block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
            num_register_tokens=reg,
            block_chunks=0,
            interpolate_antialias=aa,
            interpolate_offset=off,
        ).eval()
        m.load_state_dict({k: v for k, v in dinov2_sd(regs=reg).items()})
        torch.save(m.state_dict(), tmp_path / "v2.pth")
        got, x = _features(tmp_path / "v2.pth", "dinov2", 84)
        with torch.no_grad():
            assert torch.equal(got, m.forward_features(x)["x_norm_patchtokens"])
    m = V3(
        img_size=64,
        patch_size=16,
        embed_dim=DIM,
        depth=2,
        num_heads=HEADS,
        layerscale_init=1e-5,
        norm_layer="layernormbf16",
        n_storage_tokens=4,
        mask_k_bias=True,
        pos_embed_rope_dtype="fp32",
    ).eval()
    m.load_state_dict(dinov3_sd())
    torch.save(m.state_dict(), tmp_path / "v3.pth")
    got, x = _features(tmp_path / "v3.pth", "dinov3", 96)
    with torch.no_grad():
        assert torch.equal(got, m.forward_features(x)["x_norm_patchtokens"])


def test_reference_rope_periods_are_the_official_formula():
    p = rope_periods(32, base=100.0)
    assert math.isclose(float(p[0]), 1.0) and math.isclose(float(p[-1]), 100 ** (2 * 7 / 16), rel_tol=1e-6)
    assert (
        json.dumps([round(float(v), 4) for v in rope_periods(16, min_period=1.0, max_period=8.0)])
        == "[1.0, 2.0, 4.0, 8.0]"
    )
