"""``--method auto``: which method, branch and architecture a checkpoint file holds.

Every registered adapter (``generic`` aside) is tried on the file's contents with its default
branch; each one that yields backbone weights gives a candidate, whose timm architecture is read
off the weights' names and shapes (ViT: patch size, width, depth, class token; ResNet: block type
and depth; ConvNeXt, as VICRegL maps it: blocks and widths, layer scale, where the final norm
sits). Candidates that yield the very same backbone (the DINO family shares one layout, so
do the ResNet encoders saved under ``state_dict``) are one answer: the one whose official file
name matches is named, else the first registered. Different backbones from one file are
ambiguous: :class:`CheckpointError` lists them, to be settled with ``--method``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dsekit.backbones.checkpoints import AdaptedStateDict, adapt_state_dict
from dsekit.backbones.discovery import epoch_from_filename
from dsekit.backbones.extract import create_backbone
from dsekit.backbones.reading import read_checkpoint
from dsekit.backbones.registry import ANY_FILE, CheckpointError, get_adapter, list_methods

__all__ = ["Detection", "detect_checkpoint", "infer_architecture"]

#: standard ViT widths -> (timm size name, heads)
_VIT_SIZES = {192: ("tiny", 3), 384: ("small", 6), 768: ("base", 12), 1024: ("large", 16)}
#: blocks in ResNet stages 1..4 -> depth (basic blocks for 18/34, bottlenecks from 50 on)
_RESNET_DEPTHS: dict[tuple[int, ...], int] = {
    (2, 2, 2, 2): 18,
    (3, 4, 6, 3): 34,
    (3, 4, 23, 3): 101,
    (3, 8, 36, 3): 152,
}
#: ConvNeXt (blocks per stage, widths) -> timm name
_CONVNEXT_SIZES: dict[tuple[tuple[int, ...], tuple[int, ...]], str] = {
    ((3, 3, 9, 3), (96, 192, 384, 768)): "convnext_tiny",
    ((3, 3, 27, 3), (96, 192, 384, 768)): "convnext_small",
    ((3, 3, 27, 3), (128, 256, 512, 1024)): "convnext_base",
    ((3, 3, 27, 3), (192, 384, 768, 1536)): "convnext_large",
    ((3, 3, 27, 3), (256, 512, 1024, 2048)): "convnext_xlarge",
}


@dataclass(frozen=True)
class Detection:
    """What :func:`detect_checkpoint` found."""

    method: str
    branch: str
    arch: str
    model_kwargs: dict[str, Any]
    layout: str
    same_backbone_as: list[str] = field(default_factory=list)  #: other methods that read the same weights

    def describe(self) -> str:
        if self.method == "hf":
            return f"{get_adapter(self.method).title} model folder, model type {self.arch.removeprefix('hf:')}"
        kw = "".join(f", {k}={v}" for k, v in self.model_kwargs.items())
        same = f" (same backbone as {', '.join(self.same_backbone_as)})" if self.same_backbone_as else ""
        return f"{get_adapter(self.method).title} ({self.layout}, {self.branch}), {self.arch}{kw}{same}"


def infer_architecture(state_dict: Mapping[str, Tensor], adapter: Any = None) -> tuple[str, dict[str, Any]] | None:
    """The timm architecture and kwargs of timm-named backbone weights; None when not recognised.

    ``adapter``: the method's adapter, whose ``arch_kwargs`` apply when the architecture found
    is its default one (e.g. MoCo v3's 12 heads), and whose default architecture is taken for
    Swin weights (their window and size are not in the names).
    """
    kw: dict[str, Any] = {}
    if "layers.0.blocks.0.attn.qkv.weight" in state_dict:  # Swin: depths, width, heads and window from the shapes
        if adapter is None or "swin" not in adapter.arch:
            return None
        stages = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"layers\.(\d+)\.", k)))
        depths = tuple(
            1 + max(int(m.group(1)) for k in state_dict if (m := re.match(rf"layers\.{i}\.blocks\.(\d+)\.", k)))
            for i in range(stages)
        )
        tables = [state_dict[f"layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(stages)]
        window = (int(round(float(tables[0].shape[0]) ** 0.5)) + 1) // 2
        kw = {
            **adapter.arch_kwargs,
            "depths": depths,
            "embed_dim": int(state_dict["patch_embed.proj.weight"].shape[0]),
            "num_heads": tuple(int(t.shape[1]) for t in tables),
            "window_size": window,
        }
        return adapter.arch, kw
    pe = state_dict.get("patch_embed.proj.weight")
    if pe is not None and pe.ndim == 4:
        width, patch = int(pe.shape[0]), int(pe.shape[-1])
        depth = 1 + max((int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
        size, heads = _VIT_SIZES.get(width, ("small", None))
        name = f"vit_{size}_patch{patch if patch in (8, 14, 16, 32) else 16}_224"
        if patch not in (8, 14, 16, 32):
            kw["patch_size"] = patch
        if width not in _VIT_SIZES:
            kw["embed_dim"] = width
            kw.setdefault("num_heads", max(1, width // 64))
        if depth != (24 if size == "large" else 12):
            kw["depth"] = depth
        if "cls_token" not in state_dict:
            kw.setdefault("class_token", False)
            kw.setdefault("global_pool", "avg")
        if adapter is not None and name == adapter.arch:
            kw = {**adapter.arch_kwargs, **kw}
        if heads is not None and kw.get("num_heads") == heads:
            kw.pop("num_heads")
        return name, kw
    if "stem.0.weight" in state_dict and "stages.0.blocks.0.conv_dw.weight" in state_dict:
        return _convnext_architecture(state_dict)
    if "conv1.weight" in state_dict and "layer4.0.conv1.weight" in state_dict:
        blocks = tuple(
            1 + max(int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{s}\.(\d+)\.", k)))
            for s in range(1, 5)
        )
        bottleneck = "layer1.0.conv3.weight" in state_dict
        resnet_depth = 50 if bottleneck and blocks == (3, 4, 6, 3) else _RESNET_DEPTHS.get(blocks)
        if resnet_depth is None or (resnet_depth in (18, 34)) == bottleneck:  # a non-standard ResNet: its layers given
            resnet_depth = 50 if bottleneck else 18
            kw["layers"] = blocks
        if bottleneck and int(state_dict["layer1.0.conv1.weight"].shape[0]) != 64:
            kw["base_width"] = int(state_dict["layer1.0.conv1.weight"].shape[0])
        return f"resnet{resnet_depth}", kw
    return None


def _convnext_architecture(state_dict: Mapping[str, Tensor]) -> tuple[str, dict[str, Any]] | None:
    """A timm ConvNeXt's name and kwargs from its timm-named weights: blocks and widths per stage,
    layer scale (``gamma``) or none, final norm before pooling (``norm_pre``) or after."""
    stages = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"stages\.(\d+)\.", k)))
    if stages != 4 or any(f"stages.{i}.blocks.0.conv_dw.weight" not in state_dict for i in range(4)):
        return None
    depths = tuple(
        1 + max(int(m.group(1)) for k in state_dict if (m := re.match(rf"stages\.{i}\.blocks\.(\d+)\.", k)))
        for i in range(4)
    )
    dims = tuple(int(state_dict[f"stages.{i}.blocks.0.conv_dw.weight"].shape[0]) for i in range(4))
    name = _CONVNEXT_SIZES.get((depths, dims))
    kw: dict[str, Any] = {} if name else {"depths": depths, "dims": dims}
    if "stages.0.blocks.0.gamma" not in state_dict:
        kw["ls_init_value"] = None
    if "norm_pre.weight" in state_dict:
        kw["head_norm_first"] = True
    return name or "convnext_tiny", kw


def _fits(adapted: AdaptedStateDict, arch: tuple[str, dict[str, Any]], models: dict[str, set[str] | None]) -> bool:
    """Whether the weights are exactly the backbone's (no key missing or left over)."""
    key = arch[0] + repr(sorted(arch[1].items(), key=lambda kv: kv[0]))
    if key not in models:
        try:
            with torch.device("meta"):  # the names alone: no memory for the weights
                models[key] = set(create_backbone(arch[0], init_weights=False, **arch[1]).state_dict())
        except (ValueError, TypeError, RuntimeError, AssertionError):
            models[key] = None
    expected = models[key]
    if expected is None:
        return False
    have = set(adapted.state_dict)
    return not (have - expected) and not {k for k in expected - have if not k.endswith("num_batches_tracked")}


def _fingerprint(adapted: AdaptedStateDict) -> str:
    h = hashlib.sha256()
    for k in sorted(adapted.state_dict):
        v = adapted.state_dict[k]
        h.update(f"{k}:{tuple(v.shape)}:{float(v.float().sum()) if v.numel() else 0.0}".encode())
    return h.hexdigest()


def _candidates(path: Path, methods: Sequence[str] | None) -> list[str]:
    """The methods whose layout ``path`` may hold: a Hugging Face folder is read by the methods
    that build their network (``hf``), a DCP folder by those with folder patterns, a file by
    the others (those that read any file, ``generic`` and ``timm``, need ``--arch``)."""
    names = list(methods) if methods is not None else list_methods()
    adapters = [get_adapter(n) for n in names]
    if path.is_dir() and (path / "config.json").is_file():
        return [a.name for a in adapters if a.builder is not None]
    if path.is_dir():
        return [a.name for a in adapters if any(t.endswith("/") for t in a.file_patterns)]
    return [a.name for a in adapters if a.builder is None and (methods is not None or ANY_FILE not in a.file_patterns)]


def detect_checkpoint(
    path: str | Path, *, trust_checkpoints: bool = False, methods: Sequence[str] | None = None
) -> Detection:
    """The method, branch and architecture of the checkpoint at ``path`` (see the module docstring).

    ``methods``: the methods to try (default: every registered one that reads without
    ``--arch``); one method gives the architecture its checkpoint describes.

    Raises:
        CheckpointError: nothing fits (pass ``--method``), or the file reads as different
            backbones under different methods (the message lists them).
    """
    path = Path(path)
    obj = read_checkpoint(path, trust_checkpoints=trust_checkpoints, map_location="cpu")
    found: list[tuple[str, AdaptedStateDict, str, dict[str, Any], bool]] = []
    models: dict[str, set[str] | None] = {}
    errors: list[str] = []
    for name in _candidates(path, methods):
        adapter = get_adapter(name)
        try:
            adapted = adapt_state_dict(obj, adapter, source=path)
        except CheckpointError as err:
            errors.append(str(err))
            continue
        arch = (
            adapter.infer_arch(adapted.state_dict, obj, path)
            if adapter.infer_arch is not None
            else infer_architecture(adapted.state_dict, adapter)
        )
        if arch is not None and (adapter.builder is not None or _fits(adapted, arch, models)):
            found.append((name, adapted, arch[0], arch[1], epoch_from_filename(path, adapter) is not None))
    if not found:
        if methods is not None and len(methods) == 1 and errors:
            raise CheckpointError(errors[0], path)
        raise CheckpointError(
            f"checkpoint {path}: no method's layout fits it with a known architecture; pass --method "
            f"(one of {', '.join(list_methods())}) and --arch",
            path,
        )
    trained = [f for f in found if f[1].layout == "training checkpoint"] or found  # a wrapper is stronger evidence
    groups: dict[str, list[tuple[str, AdaptedStateDict, str, dict[str, Any], bool]]] = {}
    for f in trained:
        groups.setdefault(_fingerprint(f[1]) + f[2] + repr(sorted(f[3].items())), []).append(f)
    if len(groups) > 1:
        listed = "; ".join(f"{f[0]} ({f[1].branch}, {f[2]})" for g in groups.values() for f in g)
        raise CheckpointError(
            f"checkpoint {path} reads as different backbones under different methods: {listed}; pass --method", path
        )
    (group,) = groups.values()
    best = max(group, key=lambda f: f[4])  # the official file name decides, else the first registered
    return Detection(
        best[0], best[1].branch, best[2], best[3], best[1].layout, [f[0] for f in group if f[0] != best[0]]
    )
