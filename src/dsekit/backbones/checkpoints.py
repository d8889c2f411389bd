"""Official self-supervised checkpoints -> timm backbones: one registry of method adapters.

Each :class:`MethodAdapter` states, for one method's official release, the default timm architecture,
which entry of the checkpoint holds the weights (per branch: teacher / student, momentum / base, ...),
which prefixes to remove, which keys are not part of the backbone (heads, projectors, predictors,
decoders, mask tokens), how the official names map to timm names, and the file-name pattern from
which the epoch is read. ``dsekit.backbones.list_methods()`` lists them; :func:`register` adds more.

Loading is safe by default: ``torch.load(weights_only=True)`` with only plain training-setting types
allow-listed (``argparse.Namespace`` as DINO / MAE / iBOT / Mugs / EsViT store their arguments, and
``pathlib`` paths). Anything else that needs full unpickling fails with an error naming the opt-in
``trust_checkpoints=True`` (CLI ``--trust-checkpoints``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import pickle
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dsekit.backbones.extract import create_backbone

__all__ = [
    "BranchSpec",
    "CheckpointError",
    "CheckpointKeyError",
    "UnsafeCheckpointError",
    "AdaptedStateDict",
    "MethodAdapter",
    "SAFE_GLOBALS",
    "adapt_state_dict",
    "discover_checkpoints",
    "epoch_from_filename",
    "get_adapter",
    "list_methods",
    "load_backbone",
    "load_backbone_as",
    "load_into",
    "load_state_dict_for",
    "read_checkpoint",
    "register",
]

StateDict = dict[str, Tensor]
Remap = Callable[[StateDict, "nn.Module | None"], StateDict]

#: Types that official checkpoints store next to the weights and that are harmless to rebuild.
SAFE_GLOBALS: tuple[type, ...] = (
    argparse.Namespace,
    pathlib.PosixPath,
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
)

#: File extensions considered checkpoints by the ``generic`` method and by ``--glob`` discovery.
CHECKPOINT_EXTENSIONS: tuple[str, ...] = (".pth", ".pt", ".tar", ".ckpt", ".bin", ".safetensors")

_TRUST_HINT = "pass trust_checkpoints=True (CLI: --trust-checkpoints) only if you trust its source"


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class CheckpointError(ValueError):
    """A checkpoint could not be read or turned into backbone weights; ``path`` names the file."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint needs full unpickling (arbitrary code); opt in with ``trust_checkpoints=True``."""

    def __init__(self, message: str, path: str | Path | None = None, globals_: Iterable[str] = ()) -> None:
        super().__init__(message, path)
        self.globals = tuple(globals_)


class CheckpointKeyError(CheckpointError):
    """Backbone keys are missing, unexpected, or of the wrong shape after mapping."""

    def __init__(
        self,
        message: str,
        path: str | Path | None = None,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        mismatched: Iterable[str] = (),
    ) -> None:
        super().__init__(message, path)
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.mismatched = tuple(mismatched)


# --------------------------------------------------------------------------------------------------
# Adapter specification
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BranchSpec:
    """Where one network (e.g. the teacher) lives inside a checkpoint and how to map it to timm.

    The mapping is applied in this order:

    1. ``container``: candidate top-level keys holding the state dict, tried in order; ``None`` means
       the checkpoint itself is the state dict.
    2. A leading ``module.`` (DistributedDataParallel) is removed from every key.
    3. ``select``: keep only keys under this sub-module prefix and remove it (e.g. ``momentum_encoder.``);
       keys outside it belong to other branches / heads and are dropped. A tuple lists alternatives:
       the first prefix that some key has is used.
    4. ``strip``: further prefixes removed where present (e.g. DINO's multi-crop wrapper ``backbone.``).
    5. ``drop``: regular expressions of keys that are not part of the backbone (heads, projectors, ...).
    6. ``rename``: regular-expression substitutions from the official names to timm's.
    """

    container: tuple[str | None, ...]
    select: str | tuple[str, ...] | None = None
    strip: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    description: str = ""


@dataclass(frozen=True, eq=False)
class MethodAdapter:
    """How to read one method's official checkpoints (see :class:`BranchSpec` for the key mapping).

    Attributes:
        name: registry key (lower case).
        title: display name.
        arch: default timm architecture.
        branches: branch name -> :class:`BranchSpec`.
        default_branch: the branch read when none is asked for (as the DSE paper did).
        file_patterns: official file names with ``{epoch}`` (and other ``{field}`` placeholders).
        arch_kwargs: timm kwargs that make ``arch`` match the method's network (used with ``arch``).
        aliases: other names accepted for branches (``teacher``, ``student``, ``momentum``, ...).
        remap: optional function ``(state_dict, model | None) -> state_dict`` run after ``rename``.
        source: the official code release.
        notes: free-form remarks.
        run_files: the file names the official script overwrites each epoch (one-file runs, e.g.
            VICReg's ``model.pth``); copies kept per epoch are discovered under sub-folders or with
            a suffix, their epoch read from the path or from the checkpoint's ``epoch`` field.
    """

    name: str
    title: str
    arch: str
    branches: Mapping[str, BranchSpec]
    default_branch: str
    file_patterns: tuple[str, ...]
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    remap: Remap | None = None
    source: str = ""
    notes: str = ""
    run_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.default_branch not in self.branches:
            raise ValueError(
                f"adapter {self.name!r}: default_branch {self.default_branch!r} is not one of "
                f"{sorted(self.branches)}"
            )
        for alias, target in self.aliases.items():
            if target not in self.branches:
                raise ValueError(f"adapter {self.name!r}: alias {alias!r} points to unknown branch {target!r}")

    def branch_spec(self, branch: str | None = None) -> tuple[str, BranchSpec]:
        """Resolve ``branch`` (a name or alias; ``None``: the default) to ``(name, spec)``."""
        if branch is None:
            return self.default_branch, self.branches[self.default_branch]
        key = branch.lower().replace("-", "_")
        key = self.aliases.get(key, key)
        if key not in self.branches:
            names = sorted(set(self.branches) | set(self.aliases))
            raise ValueError(
                f"method {self.name!r} has no branch {branch!r}; choose one of: {', '.join(names)}"
            )
        return key, self.branches[key]

    @property
    def file_regexes(self) -> tuple[re.Pattern[str], ...]:
        """The compiled ``file_patterns`` (``{epoch}`` -> digits), matched against the file name."""
        return tuple(_template_regex(t) for t in self.file_patterns)

    def describe(self) -> dict[str, Any]:
        """A plain-dict summary (for tables and ``run.json``)."""
        name, spec = self.branch_spec()
        return {
            "method": self.name,
            "title": self.title,
            "arch": self.arch,
            "arch_kwargs": {k: repr(v) if callable(v) else v for k, v in self.arch_kwargs.items()},
            "default_branch": name,
            "branches": sorted(self.branches),
            "container": [c if c is not None else "<root>" for c in spec.container],
            "select": spec.select,
            "strip": list(spec.strip),
            "drop": list(spec.drop),
            "file_patterns": list(self.file_patterns),
            "source": self.source,
        }


class PartialLoadWarning(UserWarning):
    """A checkpoint loaded with ``allow_partial=True`` did not fit the model: keys were missing,
    unexpected or of another shape (scan and probe mark such results as partial)."""


#: epoch given to a run's initial weights (``{epoch}`` of the official pattern spelt ``init`` or
#: ``_init``: ``checkpoint_init.pth`` for DINO, ``checkpoint_init.pth.tar`` for MoCo v3), sorted first
INIT_EPOCH = -1


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", template)
    out = []
    for part in parts:
        if part == "{epoch}":
            out.append(r"(?P<epoch>\d+|_?init)")
        elif part.startswith("{") and part.endswith("}"):
            out.append(rf"(?P<{part[1:-1]}>.+?)")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, MethodAdapter] = {}


def _normalize(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


def register(adapter: MethodAdapter, *, overwrite: bool = False) -> MethodAdapter:
    """Add ``adapter`` to the registry (under ``adapter.name``)."""
    key = _normalize(adapter.name)
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"method {adapter.name!r} is already registered (pass overwrite=True)")
    _REGISTRY[key] = adapter
    return adapter


def list_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(a.name for a in _REGISTRY.values())


def get_adapter(method: str | MethodAdapter) -> MethodAdapter:
    """The adapter for ``method`` (case, ``-`` and ``_`` ignored); unknown names raise ``ValueError``."""
    if isinstance(method, MethodAdapter):
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    adapter = _REGISTRY.get(_normalize(method))
    if adapter is None:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(list_methods())}")
    return adapter


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
            aliases={"teacher": "momentum", "target": "momentum", "key": "momentum", "student": "base",
                     "online": "base", "query": "base"},
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
                "encoder": BranchSpec(
                    ("model",), drop=(r"^decoder_", r"^mask_token$"), description="the MAE encoder"
                )
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
            aliases={"context": "encoder", "student": "encoder", "target_encoder": "target",
                     "teacher": "target", "momentum": "target", "ema": "target"},
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
            {"query": (("backbone.", "encoder_q.0."), "query encoder"),
             "key": ("encoder_k.0.", "momentum key encoder")},
            "query",
            container=("state_dict",),
            file_patterns=("epoch_{epoch}.pth",),
            aliases={"encoder": "query", "student": "query", "online": "query", "momentum": "key",
                     "teacher": "key", "target": "key"},
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
            {"encoder": ("encoder.", "the online encoder (as the DSE paper)"),
             "teacher": ("teacher.", "the EMA teacher")},
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
            {"encoder": ("encoder.", "the online encoder (as the DSE paper)"),
             "momentum": ("momentum_encoder.", "the momentum encoder")},
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
            {"target": ("target_network.", "the target (EMA) network (as the DSE paper)"),
             "online": ("online_network.", "the online network")},
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
            {"backbone": ("backbone.", "the ResNet backbone")},
            "backbone",
            container=("model",),
            file_patterns=("model_{epoch}.pth",),
            source="https://github.com/facebookresearch/VICRegL",
            run_files=("model.pth",),
            notes="projector, maps_projector and classifier dropped.",
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
            file_patterns=("*{epoch}*",),
            notes="use prefix= to select a sub-module (e.g. 'backbone.'); the epoch is the last number "
            "in the file name.",
        )
    )


_register_builtins()


# --------------------------------------------------------------------------------------------------
# File names and discovery
# --------------------------------------------------------------------------------------------------

_LAST_INT = re.compile(r"(\d+)(?!.*\d)")


def _strip_extensions(name: str) -> str:
    stem = name
    while True:
        suffix = Path(stem).suffix.lower()
        if suffix and suffix in CHECKPOINT_EXTENSIONS:
            stem = stem[: -len(suffix)]
        else:
            return stem


def _is_checkpoint_file(name: str) -> bool:
    return any(name.lower().endswith(ext) for ext in CHECKPOINT_EXTENSIONS)


def epoch_from_filename(path: str | Path, method: str | MethodAdapter) -> int | None:
    """The epoch in ``path``'s file name per ``method``'s official pattern(s); ``None`` if none matches.

    Examples: ``checkpoint0100.pth`` (DINO, iBOT, Mugs, EsViT), ``checkpoint_0100.pth.tar`` (MoCo v3,
    SimSiam, MEC, ReSA), ``checkpoint-100.pth`` (MAE), ``ijepa-ep100.pth.tar`` (I-JEPA),
    ``ckp-100.pth`` (SwAV), ``epoch_100.pth`` (DenseCL), ``resnet50_100.pth.tar`` (BYOL),
    ``model_100.pth`` (VICReg, VICRegL), ``checkpoint_100.pth`` (Barlow Twins); ``generic``: the last
    number in any checkpoint file name. The pattern with ``init`` (or ``_init``) for the epoch,
    e.g. ``checkpoint_init.pth`` (DINO), names a run's initial weights: :data:`INIT_EPOCH`.
    """
    adapter = get_adapter(method)
    name = Path(path).name
    if adapter.name == "generic":
        if not _is_checkpoint_file(name):
            return None
        m = _LAST_INT.search(_strip_extensions(name))
        return int(m.group(1)) if m else None
    for regex in adapter.file_regexes:
        m = regex.fullmatch(name)
        if m:
            e = m.group("epoch")
            return INIT_EPOCH if e.endswith("init") else int(e)
    return None


def discover_checkpoints(
    run_dir: str | Path,
    method: str | MethodAdapter,
    glob: str | None = None,
) -> list[tuple[Path, int | None]]:
    """Checkpoints of one run, as ``(path, epoch)`` sorted by epoch (then name).

    Without ``glob`` the files directly in ``run_dir`` whose names match the method's official
    pattern(s) are returned. With ``glob`` (relative to ``run_dir``, ``**`` allowed) every matching
    file is returned; its epoch comes from the official pattern, else from the last number in the
    name, else ``None`` (sorted last).

    Raises:
        FileNotFoundError: ``run_dir`` does not exist, or no checkpoint was found (the message names
            the folder and the patterns tried).
        NotADirectoryError: ``run_dir`` is a file.
    """
    adapter = get_adapter(method)
    root = Path(run_dir)
    if not root.exists():
        raise FileNotFoundError(f"checkpoint folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"checkpoint folder {root} is not a directory")

    found: list[tuple[Path, int | None]] = []
    if glob is not None:
        try:
            candidates = sorted(p for p in root.glob(glob) if p.is_file())
        except (ValueError, NotImplementedError) as err:
            raise ValueError(f"invalid glob {glob!r} for folder {root}: {err}") from err
        for p in candidates:
            epoch = epoch_from_filename(p, adapter)
            if epoch is None:
                m = _LAST_INT.search(_strip_extensions(p.name))
                epoch = int(m.group(1)) if m else None
            found.append((p, epoch))
        tried = f"glob {glob!r}"
    else:
        for p in sorted(root.iterdir()):
            if p.is_file():
                epoch = epoch_from_filename(p, adapter)
                if epoch is not None:
                    found.append((p, epoch))
        tried = f"{adapter.title} file pattern(s) " + ", ".join(repr(t) for t in adapter.file_patterns)
        if adapter.run_files:
            seen = {p for p, _ in found}
            found += [pe for pe in _run_file_copies(root, adapter.run_files) if pe[0] not in seen]
            tried += " and copies of " + ", ".join(repr(f) for f in adapter.run_files) + " (any sub-folder or suffix)"
    _warn_duplicate_epochs(found)

    if not found:
        n_files = sum(1 for p in root.iterdir())
        what = (f"the folder is empty (looked for the {tried})" if n_files == 0
                else f"none of its {n_files} entries matches the {tried}")
        raise FileNotFoundError(
            f"no checkpoints found in {root}: {what}; "
            "pass glob= (CLI: --glob) to choose the files explicitly"
        )
    found.sort(key=lambda pe: (pe[1] is None, pe[1] if pe[1] is not None else 0, pe[0].name))
    return found


def _run_file_copies(root: Path, names: tuple[str, ...], max_depth: int = 3) -> list[tuple[Path, int | None]]:
    """Copies of a one-file run's checkpoint: ``NAME`` in ``root`` or a sub-folder (``ep10/model.pth``)
    or ``NAME`` with a suffix or infix (``model.pth.10``, ``model-ep10.pth``). The epoch is the last
    number of the path below ``root`` outside ``NAME``, else the checkpoint's ``epoch`` field."""
    out: list[tuple[Path, int | None]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if len(rel_dir.parts) >= max_depth:
            dirnames[:] = []
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            for name in names:
                stem, ext = _split_checkpoint_name(name)
                if f == name or f.startswith(name + ".") or f.startswith(name + "-") or f.startswith(name + "_") or (
                    f.startswith(stem) and f.endswith(ext) and len(f) > len(name) and f[len(stem)] in "._-"
                ):
                    rel = (rel_dir / f).as_posix().replace(name, "").replace(stem, "")
                    m = _LAST_INT.search(rel)
                    path = Path(dirpath) / f
                    out.append((path, int(m.group(1)) if m else _stored_epoch(path)))
                    break
    return out


def _split_checkpoint_name(name: str) -> tuple[str, str]:
    stem = _strip_extensions(name)
    return stem, name[len(stem):]


def _stored_epoch(path: Path) -> int | None:
    """The ``epoch`` field of a checkpoint (None when unreadable or absent)."""
    try:
        obj = read_checkpoint(path, map_location="cpu")
    except (CheckpointError, OSError):
        return None
    epoch = obj.get("epoch") if isinstance(obj, Mapping) else None
    if isinstance(epoch, Tensor) and epoch.numel() == 1:
        epoch = epoch.item()
    return int(epoch) if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def _warn_duplicate_epochs(found: list[tuple[Path, int | None]]) -> None:
    by_epoch: dict[int, list[Path]] = {}
    for p, e in found:
        if e is not None:
            by_epoch.setdefault(e, []).append(p)
    for e, paths in sorted(by_epoch.items()):
        if len(paths) > 1:
            warnings.warn(
                f"{len(paths)} checkpoints claim epoch {e}: {', '.join(str(p) for p in paths)}; both are scored",
                stacklevel=3,
            )


# --------------------------------------------------------------------------------------------------
# Reading (I/O)
# --------------------------------------------------------------------------------------------------


def _unsafe_globals(path: Path, message: str) -> list[str]:
    names: list[str] = []
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - best effort only (legacy formats are not supported by it)
        names = []
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in SAFE_GLOBALS}
    names = [n for n in names if n not in allowed]
    if not names:
        names = re.findall(r"GLOBAL ([\w\.]+)", message)
    return sorted(set(names))


def _allow_safe_globals() -> Any:
    """Context allow-listing :data:`SAFE_GLOBALS` for weights-only loading (torch >= 2.5)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is not None:
        return safe_globals(list(SAFE_GLOBALS))
    add = getattr(torch.serialization, "add_safe_globals", None)  # torch 2.4: process-wide only
    if add is not None:
        add(list(SAFE_GLOBALS))
    return nullcontext()


def read_checkpoint(
    path: str | Path,
    *,
    trust_checkpoints: bool = False,
    map_location: str | torch.device | None = "cpu",
) -> Any:
    """Load a checkpoint file safely and return the stored object.

    ``.safetensors`` files are read with safetensors. Everything else goes through
    ``torch.load(weights_only=True)`` with :data:`SAFE_GLOBALS` allow-listed; with
    ``trust_checkpoints=True`` full unpickling is used instead (arbitrary code: trusted files only).

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: it stores other Python objects (message names ``--trust-checkpoints``).
        CheckpointError: it is truncated, corrupt or not a checkpoint.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a directory, expected a file", p)
    if p.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {p}: the file is empty", p)

    if p.name.lower().endswith(".safetensors"):
        try:
            from safetensors.torch import load_file

            device = "cpu" if map_location is None else str(map_location)
            return load_file(str(p), device=device)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"cannot read checkpoint {p}: corrupt safetensors file ({err})", p) from err

    if trust_checkpoints:
        try:
            return torch.load(p, map_location=map_location, weights_only=False)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(
                f"cannot read checkpoint {p} with full unpickling: the file is truncated or corrupt, or "
                f"refers to code that cannot be imported ({_short(err)})",
                p,
            ) from err

    try:
        with _allow_safe_globals():
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        msg = str(err)
        if "unsupported global" in msg.lower() or "not an allowed global" in msg:  # torch words it both ways
            names = _unsafe_globals(p, msg)
            listed = ", ".join(names) if names else "unknown types"
            raise UnsafeCheckpointError(
                f"checkpoint {p} stores Python objects that need full unpickling ({listed}), which can "
                f"run arbitrary code; {_TRUST_HINT}",
                p,
                names,
            ) from None
        raise CheckpointError(
            f"cannot read checkpoint {p}: the file is truncated, corrupt or not a PyTorch checkpoint "
            f"({_short(err)})",
            p,
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError/EOFError/KeyError/... on bad files
        raise CheckpointError(
            f"cannot read checkpoint {p}: the file is truncated or corrupt ({_short(err)})", p
        ) from err


def _short(err: BaseException, limit: int = 200) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()
    first = text[0] if text else type(err).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------
# Mapping (pure)
# --------------------------------------------------------------------------------------------------


@dataclass
class AdaptedStateDict:
    """Backbone weights in timm naming plus what was left out.

    Attributes:
        state_dict: timm-named tensors.
        method, branch: what was read.
        container: the checkpoint key that held the weights (``None``: the checkpoint itself).
        dropped: original keys (after ``module.`` removal) not part of the backbone.
        layout: ``"training checkpoint"`` (the method's training state) or ``"release file"``
            (the backbone weights a method publishes, e.g. DINO's ``dino_deitsmall16_pretrain.pth``).
    """

    state_dict: StateDict
    method: str
    branch: str
    container: str | None
    dropped: list[str] = field(default_factory=list)
    layout: str = "training checkpoint"  #: or "release file": the backbone alone, without the training wrapper


def _is_tensor_mapping(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and sum(isinstance(v, Tensor) for v in obj.values()) >= max(1, len(obj) // 2)
    )


def _top_keys(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:15]]
        more = f", ... ({len(obj)} in all)" if len(obj) > 15 else ""
        return "[" + ", ".join(keys) + more + "]"
    return f"a {type(obj).__name__}"


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def _prefixes(keys: Iterable[str], depth: int = 2) -> list[str]:
    seen: dict[str, None] = {}
    for k in keys:
        parts = k.split(".")
        seen[".".join(parts[: min(depth, len(parts) - 1)]) + "."] = None
    return list(seen)[:12]


def adapt_state_dict(
    checkpoint: Any,
    method: str | MethodAdapter,
    *,
    branch: str | None = None,
    prefix: str | None = None,
    model: nn.Module | None = None,
    source: str | Path = "<checkpoint>",
) -> AdaptedStateDict:
    """Turn a loaded checkpoint object into timm-named backbone weights (no I/O).

    Args:
        checkpoint: what :func:`read_checkpoint` returned (a dict, or an ``nn.Module``).
        method: a registered method name.
        branch: which network (e.g. ``'teacher'``/``'student'``, ``'momentum'``/``'base'``); default:
            the method's default.
        prefix: sub-module prefix to keep and remove, replacing the branch's own ``select``
            (e.g. ``'backbone.'`` for a Lightning / lightly checkpoint with the ``generic`` method).
        model: the target model, for remaps that depend on it (Swin bias tables).
        source: file name used in error messages.
    """
    adapter = get_adapter(method)
    branch_name, spec = adapter.branch_spec(branch)
    try:
        return _adapt(checkpoint, adapter, branch_name, spec, prefix, model, source, release=False)
    except CheckpointError as err:
        if prefix is not None or adapter.name == "generic":
            raise
        try:  # the method's released backbone weights: no training wrapper, no branch
            return _adapt(checkpoint, adapter, branch_name, _release_spec(spec), None, model, source, release=True)
        except CheckpointError:
            raise err from None


#: where released weight files keep the backbone (DINO, VICReg, Barlow Twins: the file itself;
#: iBOT, DenseCL: ``state_dict``; MAE: ``model``)
_RELEASE_CONTAINERS: tuple[str | None, ...] = (None, "state_dict", "model", "teacher")


def _release_spec(spec: BranchSpec) -> BranchSpec:
    """The branch's mapping for a release file: the backbone alone, under any usual container,
    with the wrappers' prefixes stripped where present; heads dropped as in training checkpoints."""
    selects = spec.select if isinstance(spec.select, tuple) else (spec.select,) if spec.select else ()
    return BranchSpec(
        container=_RELEASE_CONTAINERS,
        strip=(*spec.strip, *selects, "backbone.", "encoder."),
        drop=spec.drop,
        rename=spec.rename,
        description=f"release file ({spec.description})",
    )


def _adapt(
    checkpoint: Any,
    adapter: MethodAdapter,
    branch_name: str,
    spec: BranchSpec,
    prefix: str | None,
    model: nn.Module | None,
    source: str | Path,
    *,
    release: bool,
) -> AdaptedStateDict:
    src = str(source)
    obj = checkpoint.state_dict() if isinstance(checkpoint, nn.Module) else checkpoint
    state: Mapping[str, Any] | None = None
    used: str | None = None
    for key in spec.container:
        if key is None:
            if _is_tensor_mapping(obj):
                state, used = obj, None
                break
        elif isinstance(obj, Mapping) and key in obj:
            cand = obj[key]
            cand = cand.state_dict() if isinstance(cand, nn.Module) else cand
            if _is_tensor_mapping(cand):
                state, used = cand, key
                break
    if state is None:
        wanted = ", ".join("<the checkpoint itself>" if k is None else repr(k) for k in spec.container)
        raise CheckpointError(
            f"checkpoint {src} does not look like a {adapter.title} checkpoint ({branch_name} branch): "
            f"expected the weights under {wanted}, found {_top_keys(obj)}",
            source if isinstance(source, Path) else None,
        )

    tensors = {_strip_module(k): v for k, v in state.items() if isinstance(v, Tensor)}
    dropped: list[str] = []

    candidates: tuple[str, ...]
    if prefix is not None:
        sel = _strip_module(prefix)
        candidates = (sel if not sel or sel.endswith(".") else sel + ".",) if sel else ()
    elif isinstance(spec.select, str):
        candidates = (spec.select,)
    else:
        candidates = tuple(spec.select or ())
    if candidates:
        select = next((c for c in candidates if any(k.startswith(c) for k in tensors)), None)
        if select is None:
            wanted_prefix = " or ".join(repr(c) for c in candidates)
            raise CheckpointError(
                f"checkpoint {src}: no weights under {wanted_prefix} in {used or 'the state dict'} "
                f"({adapter.title}, {branch_name} branch); key prefixes found: {_prefixes(tensors)}",
                source if isinstance(source, Path) else None,
            )
        dropped.extend(k for k in tensors if not k.startswith(select))
        tensors = {k[len(select) :]: v for k, v in tensors.items() if k.startswith(select)}

    if spec.strip:
        stripped: StateDict = {}
        for k, v in tensors.items():
            for s in spec.strip:
                if k.startswith(s):
                    k = k[len(s) :]
                    break
            stripped[k] = v
        tensors = stripped

    if spec.drop:
        drop_re = [re.compile(d) for d in spec.drop]
        kept2: StateDict = {}
        for k, v in tensors.items():
            if any(r.search(k) for r in drop_re):
                dropped.append(k)
            else:
                kept2[k] = v
        tensors = kept2

    if spec.rename:
        rules = [(re.compile(a), b) for a, b in spec.rename]
        renamed: StateDict = {}
        for k, v in tensors.items():
            for r, repl in rules:
                k = r.sub(repl, k)
            renamed[k] = v
        tensors = renamed

    if adapter.remap is not None:
        tensors = adapter.remap(tensors, model)

    if not tensors:
        raise CheckpointError(
            f"checkpoint {src}: nothing is left of the {adapter.title} backbone after dropping "
            f"{len(dropped)} non-backbone keys",
            source if isinstance(source, Path) else None,
        )
    if release and model is not None:  # a release file must be this backbone, not any tensor mapping
        expected = set(model.state_dict())
        if not expected & set(tensors):
            raise CheckpointError(f"checkpoint {src}: no key of the backbone", source if isinstance(source, Path) else None)
    layout = "release file" if release else "training checkpoint"
    return AdaptedStateDict(tensors, adapter.name, branch_name, used, dropped, layout)


def load_state_dict_for(
    path: str | Path,
    method: str | MethodAdapter,
    *,
    branch: str | None = None,
    prefix: str | None = None,
    trust_checkpoints: bool = False,
    map_location: str | torch.device | None = "cpu",
    model: nn.Module | None = None,
) -> StateDict:
    """Read ``path`` and return its backbone weights in timm naming (see :func:`adapt_state_dict`)."""
    obj = read_checkpoint(path, trust_checkpoints=trust_checkpoints, map_location=map_location)
    return adapt_state_dict(obj, method, branch=branch, prefix=prefix, model=model, source=Path(path)).state_dict


# --------------------------------------------------------------------------------------------------
# Loading into a model
# --------------------------------------------------------------------------------------------------


def _fit_pos_embed(state_dict: StateDict, model: nn.Module) -> None:
    pe = state_dict.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if not isinstance(pe, Tensor) or not isinstance(target, Tensor) or pe.shape == target.shape:
        return
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if pe.ndim != 3 or target.ndim != 3 or grid is None or pe.shape[-1] != target.shape[-1]:
        return
    from timm.layers import resample_abs_pos_embed

    n_prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 0))
    try:
        state_dict["pos_embed"] = resample_abs_pos_embed(pe, new_size=list(grid), num_prefix_tokens=n_prefix)
    except Exception:  # noqa: BLE001 - leave the mismatch to be reported with the others
        return


def _listing(title: str, keys: list[str], limit: int = 25) -> str:
    shown = ", ".join(keys[:limit])
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return f"{title} ({len(keys)}): {shown}{more}"


def load_into(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    allow_partial: bool = False,
    source: str | Path = "<checkpoint>",
) -> nn.Module:
    """Copy ``state_dict`` into ``model``; missing / unexpected / mis-shaped keys are an error.

    With ``allow_partial=True`` they become a warning and the matching keys are loaded. Missing
    ``num_batches_tracked`` counters (older checkpoints) are not an error.
    """
    sd = dict(state_dict)
    _fit_pos_embed(sd, model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sd
        if k in expected and sd[k].shape != expected[k].shape
    ]
    problems = [
        _listing(t, ks)
        for t, ks in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        if ks
    ]
    if problems:
        msg = (
            f"checkpoint {source} does not fit {type(model).__name__}: " + "; ".join(problems)
            + ". Check the method / arch / branch, or pass allow_partial=True (CLI: --allow-partial)"
        )
        if not allow_partial:
            raise CheckpointKeyError(
                msg, source if isinstance(source, Path) else None, missing, unexpected, mismatched
            )
        warnings.warn(msg, PartialLoadWarning, stacklevel=2)
        bad = {m.split(" ", 1)[0] for m in mismatched}
        sd = {k: v for k, v in sd.items() if k in expected and k not in bad}
    model.load_state_dict(sd, strict=False)
    return model.eval()


def load_backbone(
    path: str | Path,
    method: str | MethodAdapter,
    arch: str | nn.Module | None = None,
    *,
    branch: str | None = None,
    prefix: str | None = None,
    allow_partial: bool = False,
    trust_checkpoints: bool = False,
    map_location: str | torch.device | None = "cpu",
    model_kwargs: Mapping[str, Any] | None = None,
    img_size: int | tuple[int, int] | None = None,
    layout: list[str] | None = None,
) -> nn.Module:
    """Build the backbone and load one official checkpoint into it; returns the model in eval mode.

    A training checkpoint of the method (its official training state) and the backbone weights
    the method releases (e.g. DINO's ``dino_deitsmall16_pretrain.pth``, iBOT's
    ``checkpoint_teacher.pth``, DenseCL's ``{'state_dict', 'author'}``, VICReg's and Barlow
    Twins' ``resnet50.pth``) are both read; ``layout``, a list, receives which one it was.

    Args:
        path: checkpoint file.
        method: one of :func:`list_methods` (e.g. ``'dino'``, ``'mocov3'``, ``'generic'``).
        arch: timm architecture (default: the method's), or a ready ``nn.Module`` to load into. The
            method's ``arch_kwargs`` (e.g. MoCo v3's 12 heads, I-JEPA's missing class token) apply when
            ``arch`` is ``None`` or the method's default arch.
        branch: which network to read (default: teacher / momentum / target as the DSE paper).
        prefix: sub-module prefix to keep (mostly for ``generic``).
        allow_partial: turn missing / unexpected keys into a warning.
        trust_checkpoints: allow full unpickling (trusted files only).
        map_location: passed to ``torch.load``.
        model_kwargs: extra timm kwargs (e.g. ``depth=6``), overriding ``arch_kwargs``.
        img_size: input size for size-bound architectures (ViT, Swin); ignored by CNNs. A ViT's
            position embedding is resampled to it.

    Raises:
        FileNotFoundError, CheckpointError (UnsafeCheckpointError, CheckpointKeyError), ValueError.
    """
    adapter = get_adapter(method)
    if isinstance(arch, nn.Module):
        model = arch
    else:
        name = arch or adapter.arch
        kwargs: dict[str, Any] = dict(adapter.arch_kwargs) if name == adapter.arch else {}
        kwargs.update(model_kwargs or {})
        if "img_size" in kwargs:
            img_size = kwargs.pop("img_size") if img_size is None else img_size
            kwargs.pop("img_size", None)
        model = create_backbone(name, img_size=img_size, init_weights=False, **kwargs)
    obj = read_checkpoint(path, trust_checkpoints=trust_checkpoints, map_location=map_location)
    adapted = adapt_state_dict(obj, adapter, branch=branch, prefix=prefix, model=model, source=Path(path))
    if layout is not None:
        layout.append(adapted.layout if adapted.layout != "training checkpoint" else f"training checkpoint, {adapted.branch}")
    return load_into(model, adapted.state_dict, allow_partial=allow_partial, source=Path(path))


def load_backbone_as(
    settings: Any,
    path: str | Path,
    model: nn.Module | None = None,
    *,
    partial: list[str] | None = None,
    layout: list[str] | None = None,
) -> nn.Module:
    """:func:`load_backbone` with the checkpoint settings of a scan or probe configuration.

    ``settings`` has the attributes ``method``, ``arch``, ``branch``, ``prefix``,
    ``allow_partial``, ``trust_checkpoints``, ``model_kwargs`` and ``image_size`` (as
    :class:`dsekit.scan.ScanConfig` and :class:`dsekit.probe.ProbeConfig`); ``model``, a
    backbone of the right architecture to load into again (every weight is overwritten, as
    loading is strict), saves rebuilding it for each checkpoint. ``partial``: a list that
    receives the :class:`PartialLoadWarning` message when the checkpoint did not fit (only with
    ``allow_partial``); the warning is still shown.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PartialLoadWarning)
        model = load_backbone(
            path,
            settings.method,
            model if model is not None else settings.arch,
            branch=settings.branch,
            prefix=settings.prefix,
            allow_partial=settings.allow_partial,
            trust_checkpoints=settings.trust_checkpoints,
            model_kwargs=settings.model_kwargs,
            img_size=settings.image_size,
            layout=layout,
        )
    for w in caught:
        if partial is not None and issubclass(w.category, PartialLoadWarning):
            partial.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model
