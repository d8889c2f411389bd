"""DINOv3 (facebookresearch/dinov3) checkpoints -> :class:`dsekit.backbones.dinov3_vit.DINOv3ViT`.

What is read:

* training runs: ``eval/training_<iter>/teacher_checkpoint.pth`` (``{"teacher": {backbone.*,
  dino_head.*, ibot_head.*}}``), ``eval/training_<iter>/sharded_teacher_checkpoint/`` (with
  ``train.sharded_eval_checkpoint``) and the periodic ``torch.distributed.checkpoint`` folders
  ``ckpt/<iter>/`` and their hard-linked copies ``ckpt/<iter>_keep/`` (``model.student.*``,
  ``model.teacher.*``, ``model.gram_teacher.*``, ``optimizer.*``, ``iteration``), read with
  torch's DCP reader on one process, the backbone's tensors alone. One step found in several of
  these places is scored once, from the first in that order;
* release files ``dinov3_vit*16*_pretrain_<data>-<hash>.pth`` (flat state dicts: RoPE periods,
  storage tokens, LayerScale, the masked key bias ``bias_mask``).

The network's settings are read off the weights (width, depth, heads from the RoPE periods,
patch size, storage tokens, FFN type and width, LayerScale, biases, masked key bias, extra
norms) and, for what the weights do not hold, from the run's ``config.yaml`` (``student``:
``norm_layer``, ``pos_embed_rope_normalize_coords``), else DINOv3's defaults for the layout:
networks built for training compute RoPE in bfloat16 with ``layernorm`` (eps 1e-6), the released
ones in float32 with ``layernormbf16`` (eps 1e-5), as ``dinov3.hub`` builds them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from dsekit.backbones.dinov3_vit import ARCH
from dsekit.backbones.discovery import pattern_checkpoints
from dsekit.backbones.reading import run_config
from dsekit.backbones.registry import CheckpointError, MethodAdapter, StateDict

__all__ = ["dinov3_architecture", "dinov3_remap", "discover_dinov3"]

#: top-level entries of the checkpoints a training run writes (teacher checkpoints, DCP folders)
_TRAINING_CONTAINERS = ("teacher", "model")


def dinov3_remap(state_dict: StateDict, model: nn.Module | None, source: Path | None = None) -> StateDict:
    """DINOv3 weights keep their official names (:class:`DINOv3ViT` uses them); other networks'
    layouts are refused with the method to use."""
    where = f"checkpoint {source}" if source is not None else "checkpoint"
    if "pos_embed" in state_dict and "rope_embed.periods" not in state_dict:
        raise CheckpointError(
            f"{where} is a network with a learnt position embedding (DINOv2's layout), not DINOv3's RoPE: "
            "use --method dinov2",
            source,
        )
    if any(k.endswith("_flat_param") for k in state_dict):
        raise CheckpointError(f"{where} holds FSDP flat-parameter shards; score a full checkpoint", source)
    return dict(state_dict)


def _is_training(checkpoint: Any) -> bool:
    return isinstance(checkpoint, Mapping) and any(k in checkpoint for k in _TRAINING_CONTAINERS)


def dinov3_architecture(
    state_dict: Mapping[str, Tensor], checkpoint: Any = None, source: Path | None = None
) -> tuple[str, dict[str, Any]] | None:
    """``("dsekit_dinov3_vit", kwargs)`` for DINOv3 backbone weights (see the module docstring);
    None when they are not a DINOv3 ViT."""
    pe = state_dict.get("patch_embed.proj.weight")
    periods = state_dict.get("rope_embed.periods")
    blocks = [int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))]
    if pe is None or pe.ndim != 4 or periods is None or not blocks:
        return None
    dim, patch = int(pe.shape[0]), int(pe.shape[-1])
    head_dim = 4 * int(periods.numel())
    if head_dim == 0 or dim % head_dim:
        return None
    b0 = "blocks.0."
    swiglu = f"{b0}mlp.w1.weight" in state_dict
    hidden = int(state_dict[f"{b0}mlp.{'w1' if swiglu else 'fc1'}.weight"].shape[0])
    training = _is_training(checkpoint)
    cfg = run_config(source) or {}
    norm = (
        "rmsnorm"
        if "norm.bias" not in state_dict
        else cfg.get("norm_layer", "layernorm" if training else "layernormbf16")
    )
    storage = state_dict.get("storage_tokens")
    kw: dict[str, Any] = {
        "embed_dim": dim,
        "depth": 1 + max(blocks),
        "num_heads": dim // head_dim,
        "patch_size": patch,
        "ffn_layer": "swiglu" if swiglu else "mlp",
        "ffn_hidden": hidden,
        "n_storage_tokens": 0 if storage is None else int(storage.shape[1]),
        "layerscale": 1e-5 if f"{b0}ls1.gamma" in state_dict else None,
        "norm_layer": "rmsnorm" if norm == "rmsnorm" else ("layernormbf16" if norm == "layernormbf16" else "layernorm"),
        "qkv_bias": f"{b0}attn.qkv.bias" in state_dict,
        "proj_bias": f"{b0}attn.proj.bias" in state_dict,
        "ffn_bias": f"{b0}mlp.{'w1' if swiglu else 'fc1'}.bias" in state_dict,
        "mask_k_bias": f"{b0}attn.qkv.bias_mask" in state_dict,
        "untie_cls_and_patch_norms": "cls_norm.weight" in state_dict,
        "untie_global_and_local_cls_norm": "local_cls_norm.weight" in state_dict,
        "rope_normalize_coords": cfg.get("pos_embed_rope_normalize_coords", "separate"),
        "rope_dtype": "bf16" if training else "fp32",
    }
    return ARCH, kw


#: where one step's teacher can be found, most direct first
_PATTERNS = (
    "eval/training_{step}/teacher_checkpoint.pth",
    "eval/training_{step}/sharded_teacher_checkpoint/",
    "ckpt/{step}/",
    "ckpt/{step}_keep/",
)


def discover_dinov3(root: Path, adapter: MethodAdapter) -> list[tuple[Path, int | None]]:
    """A DINOv3 run's checkpoints (its file patterns, release files in the folder itself), each
    step once: from the first of :data:`_PATTERNS` that holds it."""
    found = pattern_checkpoints(root, adapter)
    rank = {t: i for i, t in enumerate(adapter.file_patterns)}

    def order(p: Path) -> int:
        rel = p.relative_to(root).as_posix()
        for template, regex in zip(adapter.file_patterns, adapter.file_regexes, strict=True):
            if regex.fullmatch(rel):
                return rank[template]
        return len(rank)

    best: dict[int | None, tuple[Path, int | None]] = {}
    for p, step in sorted(found, key=lambda ps: order(ps[0])):
        best.setdefault(step, (p, step))
    return list(best.values())
