"""The method-adapter registry: what an adapter says about one method's checkpoints, and where adapters are kept.

:class:`BranchSpec` and :class:`MethodAdapter` describe, for one method's official release, the
default timm architecture, which entry of the checkpoint holds the weights (per branch), which
prefixes to remove, which keys are not part of the backbone and how official names map to timm
names; :func:`register`, :func:`get_adapter` and :func:`list_methods` keep and look them up. The
errors and the warning raised while reading and loading checkpoints live here too, so every
checkpoint module can use them. The built-in methods are registered by :mod:`dsekit.backbones.methods`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

__all__ = [
    "ANY_FILE",
    "INIT_EPOCH",
    "BranchSpec",
    "CheckpointError",
    "CheckpointKeyError",
    "MethodAdapter",
    "PartialLoadWarning",
    "Remap",
    "StateDict",
    "UnsafeCheckpointError",
    "get_adapter",
    "list_methods",
    "register",
]

#: backbone weights by (timm) parameter name
StateDict = dict[str, Tensor]
#: an adapter's extra mapping ``(state_dict, model | None) -> state_dict`` (see :attr:`MethodAdapter.remap`)
Remap = Callable[[StateDict, "nn.Module | None"], StateDict]


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
        arch: default timm architecture ("": none, the user names it).
        branches: branch name -> :class:`BranchSpec`.
        default_branch: the branch read when none is asked for (as the DSE paper did).
        file_patterns: official file names with ``{epoch}`` (and other ``{field}`` placeholders).
        arch_kwargs: timm kwargs that make ``arch`` match the method's network (used with ``arch``).
        aliases: other names accepted for branches (``teacher``, ``student``, ``momentum``, ...).
        remap: optional function ``(state_dict, model | None) -> state_dict`` run after ``rename``;
            one with a ``source`` keyword also gets the checkpoint's path (or None).
        source: the official code release.
        notes: free-form remarks.
        run_files: the file names the official script overwrites each epoch (one-file runs, e.g.
            VICReg's ``model.pth``); copies kept per epoch are discovered under sub-folders or with
            a suffix, their epoch read from the path or from the checkpoint's ``epoch`` field.
        family_kwargs: timm kwargs for every architecture of a family, by name prefix (e.g.
            VICRegL's ``{"convnext_": {"ls_init_value": None, ...}}``), whatever ``arch`` is; see
            :meth:`kwargs_for`.
        unit: what the number in a checkpoint's name counts: ``"epoch"`` or ``"step"`` (runs that
            count iterations: DINOv2, DINOv3, Hugging Face ``Trainer``); it names the column of
            ``dse.csv`` / ``probe.csv`` and the axes of the figures.
        discover: optional ``(run_dir, adapter) -> [(path, step)]`` replacing the file-pattern
            discovery (checks of a run's layout, folders as checkpoints); it may call
            :func:`dsekit.backbones.discovery.pattern_checkpoints`.
        infer_arch: optional ``(state_dict, checkpoint, source) -> (arch, kwargs) | None``: the
            timm architecture of this method's mapped weights (``--method auto`` and runs scanned
            without ``--arch``); ``checkpoint`` is the object read from ``source``, the path.
        arch_from_checkpoint: build the backbone the first checkpoint describes when no ``--arch``
            is given (the method has no single default network), instead of ``arch``.
        builder: optional ``(path, model_kwargs, image_size, *, load, allow_partial) -> nn.Module``
            building the backbone that checkpoint ``path`` describes when it is not a timm model
            (Hugging Face folders), with its weights when ``load`` (then the checkpoint is read by
            the builder, not by :func:`adapt_state_dict`); the module has timm's
            ``forward_intermediates``.
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
    family_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    unit: str = "epoch"
    discover: Callable[[Path, MethodAdapter], list[tuple[Path, int | None]]] | None = None
    infer_arch: Callable[[StateDict, Any, Path], tuple[str, dict[str, Any]] | None] | None = None
    arch_from_checkpoint: bool = False
    builder: Callable[..., nn.Module] | None = None

    def __post_init__(self) -> None:
        if self.unit not in ("epoch", "step"):
            raise ValueError(f"adapter {self.name!r}: unit must be 'epoch' or 'step', got {self.unit!r}")
        if self.default_branch not in self.branches:
            raise ValueError(
                f"adapter {self.name!r}: default_branch {self.default_branch!r} is not one of {sorted(self.branches)}"
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
            raise ValueError(f"method {self.name!r} has no branch {branch!r}; choose one of: {', '.join(names)}")
        return key, self.branches[key]

    def family_kwargs_for(self, arch: str) -> dict[str, Any]:
        """The ``family_kwargs`` of the families whose prefix ``arch`` starts with."""
        out: dict[str, Any] = {}
        for prefix, kwargs in self.family_kwargs.items():
            if arch.startswith(prefix):
                out.update(kwargs)
        return out

    def kwargs_for(self, arch: str) -> dict[str, Any]:
        """The timm kwargs this method's network needs when built as ``arch``: its family's
        (:meth:`family_kwargs_for`), then ``arch_kwargs`` when ``arch`` is the default one."""
        out = self.family_kwargs_for(arch)
        if arch == self.arch:
            out.update(self.arch_kwargs)
        return out

    @property
    def file_regexes(self) -> tuple[re.Pattern[str], ...]:
        """The compiled ``file_patterns`` (``{epoch}`` / ``{step}`` -> digits), matched against the
        file name, or for a pattern with ``/`` against the path below the run folder (a pattern
        ending in ``/`` names a folder that is one checkpoint)."""
        return tuple(_template_regex(t) for t in self.file_patterns)

    def describe(self) -> dict[str, Any]:
        """A plain-dict summary (for tables and ``run.json``)."""
        name, spec = self.branch_spec()
        return {
            "method": self.name,
            "title": self.title,
            "arch": self.arch or "(given by --arch)",
            "arch_kwargs": {k: repr(v) if callable(v) else v for k, v in self.arch_kwargs.items()},
            "family_kwargs": {f: dict(kw) for f, kw in self.family_kwargs.items()},
            "default_branch": name,
            "branches": sorted(self.branches),
            "container": [c if c is not None else "<root>" for c in spec.container],
            "select": spec.select,
            "strip": list(spec.strip),
            "drop": list(spec.drop),
            "file_patterns": list(self.file_patterns),
            "unit": self.unit,
            "source": self.source,
        }


class PartialLoadWarning(UserWarning):
    """A checkpoint loaded with ``allow_partial=True`` did not fit the model: keys were missing,
    unexpected or of another shape (scan and probe mark such results as partial)."""


#: the file pattern of methods that read any checkpoint file (``generic``, ``timm``): the epoch is
#: the last number in its name
ANY_FILE = "*{epoch}*"

#: epoch given to a run's initial weights (``{epoch}`` of the official pattern spelt ``init`` or
#: ``_init``: ``checkpoint_init.pth`` for DINO, ``checkpoint_init.pth.tar`` for MoCo v3), sorted first
INIT_EPOCH = -1


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", template.rstrip("/"))
    out = []
    for part in parts:
        if part in ("{epoch}", "{step}"):
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
