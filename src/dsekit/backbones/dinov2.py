"""DINOv2 (facebookresearch/dinov2) checkpoints -> timm ``vit_*_dinov2`` backbones, read as the
official model code reads them.

What is read:

* training runs: ``eval/training_<iter>/teacher_checkpoint.pth`` (``{"teacher": {backbone.*,
  dino_head.*, ibot_head.*}}``, written every ``eval_period_iterations``) and the periodic
  ``model_<iter:07d>.rank_0.pth`` / ``model_final.rank_0.pth`` of a single-rank run
  (``{"model": {student.*, teacher.*, ...}, "optimizer", "iteration"}``). A run saved by several
  FSDP ranks holds only flat shards in those files: :func:`discover_dinov2` refuses them and names
  the teacher checkpoints instead;
* release files ``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`` (a flat state dict: 518-px position
  embedding, ``mask_token``, register tokens, LayerScale, SwiGLU ``w12`` / ``w3`` for ViT-g);
* the ``block_chunks`` layout ``blocks.<chunk>.<i>.*`` (global block indices), flattened.

Official names become timm's through timm's own filter
(``timm.models.vision_transformer.checkpoint_filter_fn``: registers, the class position folded
into the class token of register models, ``w12`` / ``w3``). The position embedding is then
interpolated **as the official ``interpolate_pos_encoding`` does** for the model's input size
(:func:`official_pos_embed`): bicubic, with ``scale_factor = (n + offset) / M`` when the offset is
non-zero and without antialiasing for the models that train that way. timm's own resampling
(``size=``, antialiased) differs from it by up to 3 in a unit-variance embedding at 224 px.
Offset and antialiasing are the run's (``config.yaml`` beside the checkpoints:
``student.interpolate_offset`` / ``student.interpolate_antialias``, DINOv2's defaults 0.1 and
false), else those of the release files (registers: 0.0 and true; none: 0.1 and false).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsekit.backbones.discovery import pattern_checkpoints, stored_epoch
from dsekit.backbones.extract import create_backbone
from dsekit.backbones.reading import run_config
from dsekit.backbones.registry import CheckpointError, MethodAdapter, StateDict

__all__ = [
    "discover_dinov2",
    "dinov2_architecture",
    "dinov2_remap",
    "official_pos_embed",
    "run_interpolation",
    "unchunk_blocks",
]

#: ViT widths of DINOv2's networks -> timm size name
_SIZES = {384: "small", 768: "base", 1024: "large", 1536: "giant"}
_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")
_RANK_FILE = re.compile(r"^model_(\d{7}|final)\.rank_(\d+)\.pth$")


# --------------------------------------------------------------------------------------------------
# Pure tensor helpers
# --------------------------------------------------------------------------------------------------


def unchunk_blocks(state_dict: Mapping[str, Tensor]) -> StateDict:
    """``blocks.<chunk>.<i>.*`` (DINOv2's ``block_chunks > 0``; ``i`` is the global block index)
    -> ``blocks.<i>.*``; other keys unchanged."""
    return {_CHUNKED.sub(r"blocks.\1.", k): v for k, v in state_dict.items()}


def official_pos_embed(
    pos_embed: Tensor, grid: tuple[int, int], *, offset: float, antialias: bool, class_slot: bool = True
) -> Tensor:
    """DINOv2's ``interpolate_pos_encoding`` for an input of ``grid = (rows, cols)`` patches.

    Args:
        pos_embed: ``(1, [1 +] M*M, d)``, the stored embedding (class position first if ``class_slot``).
        grid: patch rows and columns of the input.
        offset: ``interpolate_offset``; non-zero: ``scale_factor = ((rows + offset) / M,
            (cols + offset) / M)``, zero: ``size = grid``.
        antialias: ``interpolate_antialias``.

    Returns:
        ``(1, [1 +] rows*cols, d)``: the stored embedding itself when the patch count is the same
        and the grid square (the official early return), else the bicubic interpolation in float32,
        cast back to the embedding's dtype.
    """
    n_prefix = 1 if class_slot else 0
    n = pos_embed.shape[1] - n_prefix
    rows, cols = grid
    if n == rows * cols and rows == cols:
        return pos_embed
    M = int(math.sqrt(n))
    if M * M != n:
        raise ValueError(f"pos_embed: {n} patch positions are not a square grid")
    dim = pos_embed.shape[-1]
    patch = pos_embed[:, n_prefix:].float().reshape(1, M, M, dim).permute(0, 3, 1, 2)
    kwargs: dict[str, Any] = (
        {"scale_factor": (float(rows + offset) / M, float(cols + offset) / M)} if offset else {"size": (rows, cols)}
    )
    patch = F.interpolate(patch, mode="bicubic", antialias=antialias, **kwargs)
    if tuple(patch.shape[-2:]) != (rows, cols):
        raise ValueError(f"pos_embed: interpolation gave a {tuple(patch.shape[-2:])} grid, expected {grid}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat([pos_embed[:, :n_prefix].float(), patch], dim=1).to(pos_embed.dtype)


# --------------------------------------------------------------------------------------------------
# Run settings
# --------------------------------------------------------------------------------------------------


def run_interpolation(source: Path | None, registers: bool) -> tuple[float, bool]:
    """``(interpolate_offset, interpolate_antialias)`` of the checkpoint at ``source``: the run's
    ``config.yaml`` when it has a ``student`` section (:func:`dsekit.backbones.reading.run_config`),
    else the release files' settings."""
    cfg = run_config(source)
    if cfg is not None:
        offset = cfg.get("interpolate_offset", 0.1)
        return float(offset if offset is not None else 0.0), bool(cfg.get("interpolate_antialias", False))
    return (0.0, True) if registers else (0.1, False)


# --------------------------------------------------------------------------------------------------
# The adapter's pieces
# --------------------------------------------------------------------------------------------------


def _reject_other_layouts(state_dict: Mapping[str, Tensor], source: Path | None) -> None:
    where = f"checkpoint {source}" if source is not None else "checkpoint"
    if "storage_tokens" in state_dict or any(k.startswith("rope_embed.") for k in state_dict):
        raise CheckpointError(
            f"{where} is a DINOv3 network (storage tokens, RoPE position encoding), not DINOv2: use --method dinov3",
            source,
        )
    if any(k.endswith("_flat_param") for k in state_dict):
        raise CheckpointError(
            f"{where} holds FSDP flat-parameter shards of a run saved by several ranks; score the run's "
            "eval/training_<iter>/teacher_checkpoint.pth files instead",
            source,
        )


def dinov2_remap(state_dict: StateDict, model: nn.Module | None, source: Path | None = None) -> StateDict:
    """Official DINOv2 backbone names -> timm's (see the module docstring); the position
    embedding interpolated the official way for ``model``'s grid (without a model, for the
    trained grid: no interpolation)."""
    _reject_other_layouts(state_dict, source)
    sd = unchunk_blocks(state_dict)
    if "mask_token" not in sd or "pos_embed" not in sd:
        return sd  # timm's layout already
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    registers = "register_tokens" in sd
    stored = sd["pos_embed"]
    target = model if model is not None else _meta_model(sd)
    # the filter pops keys of the dict it is given; the target is timm's DINOv2 ViT (create_backbone's)
    out = dict(checkpoint_filter_fn(dict(sd), cast(VisionTransformer, target)))
    grid = getattr(getattr(target, "patch_embed", None), "grid_size", None)
    if model is not None and grid is not None and getattr(model, "pos_embed", None) is not None:
        offset, antialias = run_interpolation(source, registers)
        pe = official_pos_embed(stored, tuple(grid), offset=offset, antialias=antialias)
        out["pos_embed"] = pe[:, 1:] if registers else pe  # register models: no class slot (folded above)
    return out


def _meta_model(sd: Mapping[str, Tensor]) -> nn.Module:
    """The timm model the weights describe, on the meta device (no memory): the filter reads
    only its shapes."""
    arch = _official_architecture(sd)
    if arch is None:
        raise CheckpointError("not a DINOv2 backbone: no patch embedding or no blocks")
    n = sd["pos_embed"].shape[1] - 1
    side = int(math.sqrt(n)) * int(sd["patch_embed.proj.weight"].shape[-1])
    with torch.device("meta"):
        return create_backbone(arch[0], img_size=side, init_weights=False, **arch[1])


def _official_architecture(sd: Mapping[str, Tensor]) -> tuple[str, dict[str, Any]] | None:
    """The timm architecture of DINOv2 weights in official or timm naming."""
    pe = sd.get("patch_embed.proj.weight")
    blocks = [int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))]
    if pe is None or pe.ndim != 4 or not blocks:
        return None
    width, patch, depth = int(pe.shape[0]), int(pe.shape[-1]), 1 + max(blocks)
    regs = sd.get("register_tokens", sd.get("reg_token"))
    n_reg = 0 if regs is None else int(regs.shape[1])
    size = _SIZES.get(width, "small")
    kw: dict[str, Any] = {}
    name = f"vit_{size}_patch14{'_reg4' if n_reg else ''}_dinov2"
    if patch != 14:
        kw["patch_size"] = patch
    if width not in _SIZES:
        kw.update(embed_dim=width, num_heads=max(1, width // 64))
    if depth != {"small": 12, "base": 12, "large": 24, "giant": 40}[size]:
        kw["depth"] = depth
    if n_reg not in (0, 4):
        kw["reg_tokens"] = n_reg
    if "blocks.0.ls1.gamma" not in sd:
        kw["init_values"] = None
    fc1 = sd.get("blocks.0.mlp.w12.weight", sd.get("blocks.0.mlp.fc1.weight"))
    swiglu = "blocks.0.mlp.w12.weight" in sd or (
        fc1 is not None
        and "blocks.0.mlp.fc2.weight" in sd
        and sd["blocks.0.mlp.fc2.weight"].shape[1] * 2 == fc1.shape[0]
    )
    if fc1 is not None and swiglu:
        if size != "giant" or int(fc1.shape[0]) != 8192 or width != 1536:
            kw.update(mlp_ratio=(int(fc1.shape[0]) + 0.5) / width, mlp_layer="swiglu_packed", act_layer="silu")
    elif fc1 is not None:
        if size == "giant":
            kw.update(mlp_layer="mlp", act_layer="gelu")
        if int(fc1.shape[0]) != 4 * width:
            kw["mlp_ratio"] = int(fc1.shape[0]) / width
    return name, kw


def dinov2_architecture(
    state_dict: Mapping[str, Tensor], checkpoint: Any = None, source: Path | None = None
) -> tuple[str, dict[str, Any]] | None:
    """The timm ``vit_*_dinov2`` architecture (and the kwargs that differ from it) of DINOv2
    backbone weights, official or timm-named (``--method auto`` and runs without ``--arch``)."""
    return _official_architecture(state_dict)


def discover_dinov2(root: Path, adapter: MethodAdapter) -> list[tuple[Path, int | None]]:
    """A DINOv2 run's checkpoints: the teacher checkpoints and the periodic files of rank 0
    (``model_final.rank_0.pth`` at its stored iteration). Periodic files of a run saved by
    several ranks are shards: skipped beside teacher checkpoints, an error without them."""
    found = pattern_checkpoints(root, adapter)
    ranks = {int(m.group(2)) for p in root.iterdir() if (m := _RANK_FILE.match(p.name))}
    final = root / "model_final.rank_0.pth"
    if final.is_file():
        found.append((final, stored_epoch(final)))
    if max(ranks, default=0) == 0:
        return found
    teachers = [(p, s) for p, s in found if p.name == "teacher_checkpoint.pth"]
    if not teachers:
        raise CheckpointError(
            f"run {root} was saved by {len(ranks)} FSDP ranks: each model_<iter>.rank_<r>.pth holds one rank's "
            "flat shard, not the network; score its eval/training_<iter>/teacher_checkpoint.pth files "
            "(written every evaluation.eval_period_iterations), none of which is in this folder",
            root,
        )
    import warnings

    warnings.warn(
        f"run {root}: the model_<iter>.rank_<r>.pth files of its {len(ranks)} FSDP ranks are shards and are skipped; "
        f"scoring its {len(teachers)} teacher checkpoint(s)",
        stacklevel=3,
    )
    return teachers
