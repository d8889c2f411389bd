"""Official self-supervised checkpoints -> timm backbones: the loader.

Each :class:`MethodAdapter` (:mod:`dsekit.backbones.registry`; the built-in ones in
:mod:`dsekit.backbones.methods`) states, for one method's official release, the default timm
architecture, which entry of the checkpoint holds the weights (per branch: teacher / student,
momentum / base, ...), which prefixes to remove, which keys are not part of the backbone (heads,
projectors, predictors, decoders, mask tokens), how the official names map to timm names, and the
file-name pattern from which the epoch is read. This module applies an adapter's branch spec to a
checkpoint (:func:`adapt_state_dict`) and loads the result into a timm backbone
(:func:`load_into`, :func:`load_backbone`, :func:`load_backbone_as`). It also re-exports the
registry (:func:`register`, :func:`get_adapter`, :func:`list_methods`), safe reading
(:func:`read_checkpoint`, :mod:`dsekit.backbones.reading`) and discovery
(:func:`discover_checkpoints`, :mod:`dsekit.backbones.discovery`), as it did before they had
modules of their own.

Loading is safe by default: ``torch.load(weights_only=True)`` with only plain training-setting types
allow-listed (``argparse.Namespace`` as DINO / MAE / iBOT / Mugs / EsViT store their arguments, and
``pathlib`` paths). Anything else that needs full unpickling fails with an error naming the opt-in
``trust_checkpoints=True`` (CLI ``--trust-checkpoints``).
"""

from __future__ import annotations

import inspect
import re
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from dsekit.backbones.discovery import (
    CHECKPOINT_EXTENSIONS,  # noqa: F401 - still importable from here
    discover_checkpoints,
    epoch_from_filename,
)
from dsekit.backbones.extract import backbone_recipe, create_backbone, meta_tensors
from dsekit.backbones.reading import SAFE_GLOBALS, LazyStateDict, read_checkpoint
from dsekit.backbones.registry import (
    ANY_FILE,
    INIT_EPOCH,  # noqa: F401 - still importable from here
    BranchSpec,
    CheckpointError,
    CheckpointKeyError,
    MethodAdapter,
    PartialLoadWarning,
    Remap,
    StateDict,
    UnsafeCheckpointError,
    get_adapter,
    list_methods,
    register,
)

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
    "with_family_kwargs",
]


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


class _LayoutMismatch(CheckpointError):
    """The weights are not where the branch spec looks for them (container or prefix)."""


def _is_tensor_mapping(obj: Any) -> bool:
    if isinstance(obj, LazyStateDict):
        return len(obj) > 0
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and sum(isinstance(v, Tensor) for v in obj.values()) >= max(1, len(obj) // 2)
    )


def _tensor_keys(state: Mapping[str, Any]) -> list[str]:
    """The keys of ``state`` that hold tensors (a lazy state dict's keys all do, unread)."""
    if isinstance(state, LazyStateDict):
        return list(state)
    return [k for k, v in state.items() if isinstance(v, Tensor)]


def _materialize(state: Mapping[str, Any], keys: list[str]) -> dict[str, Tensor]:
    """The tensors ``keys`` of ``state``, a lazy state dict's read in one pass."""
    if isinstance(state, LazyStateDict):
        return state.load(keys)
    return {k: state[k] for k in keys}


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
        if prefix is not None or ANY_FILE in adapter.file_patterns:
            raise
        try:  # the method's released backbone weights: no training wrapper, no branch
            return _adapt(checkpoint, adapter, branch_name, _release_spec(spec), None, model, source, release=True)
        except CheckpointError as release_err:
            # the layout's own verdict (the method's remap refused the weights it found) says more
            # than "the training wrapper is not there"
            if isinstance(err, _LayoutMismatch) and not isinstance(release_err, _LayoutMismatch):
                raise release_err from None
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
        raise _LayoutMismatch(
            f"checkpoint {src} does not look like a {adapter.title} checkpoint ({branch_name} branch): "
            f"expected the weights under {wanted}, found {_top_keys(obj)}",
            source if isinstance(source, Path) else None,
        )

    # names first: only the tensors kept are read (a lazy checkpoint reads no others)
    names = {_strip_module(k): k for k in _tensor_keys(state)}
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
        select = next((c for c in candidates if any(k.startswith(c) for k in names)), None)
        if select is None:
            wanted_prefix = " or ".join(repr(c) for c in candidates)
            raise _LayoutMismatch(
                f"checkpoint {src}: no weights under {wanted_prefix} in {used or 'the state dict'} "
                f"({adapter.title}, {branch_name} branch); key prefixes found: {_prefixes(names)}",
                source if isinstance(source, Path) else None,
            )
        dropped.extend(k for k in names if not k.startswith(select))
        names = {k[len(select) :]: o for k, o in names.items() if k.startswith(select)}

    if spec.strip:
        stripped: dict[str, str] = {}
        for k, o in names.items():
            for s in spec.strip:
                if k.startswith(s):
                    k = k[len(s) :]
                    break
            stripped[k] = o
        names = stripped

    if spec.drop:
        drop_re = [re.compile(d) for d in spec.drop]
        kept: dict[str, str] = {}
        for k, o in names.items():
            if any(r.search(k) for r in drop_re):
                dropped.append(k)
            else:
                kept[k] = o
        names = kept

    if spec.rename:
        rules = [(re.compile(a), b) for a, b in spec.rename]
        renamed: dict[str, str] = {}
        for k, o in names.items():
            for r, repl in rules:
                k = r.sub(repl, k)
            renamed[k] = o
        names = renamed

    values = _materialize(state, list(names.values()))
    tensors: StateDict = {k: values[o] for k, o in names.items()}

    if adapter.remap is not None:
        tensors = _call_remap(adapter.remap, tensors, model, source if isinstance(source, Path) else None)

    if not tensors:
        raise CheckpointError(
            f"checkpoint {src}: nothing is left of the {adapter.title} backbone after dropping "
            f"{len(dropped)} non-backbone keys",
            source if isinstance(source, Path) else None,
        )
    if release and model is not None:  # a release file must be this backbone, not any tensor mapping
        expected = set(model.state_dict())
        if not expected & set(tensors):
            raise _LayoutMismatch(
                f"checkpoint {src}: no key of the backbone", source if isinstance(source, Path) else None
            )
    layout = "release file" if release else "training checkpoint"
    return AdaptedStateDict(tensors, adapter.name, branch_name, used, dropped, layout)


def _call_remap(remap: Remap, tensors: StateDict, model: nn.Module | None, source: Path | None) -> StateDict:
    """``remap(tensors, model)``, with ``source=`` (the checkpoint's path) for remaps that take it."""
    try:
        takes_source = "source" in inspect.signature(remap).parameters
    except (TypeError, ValueError):
        takes_source = False
    if takes_source:  # its signature has a source parameter, beyond Remap's two
        return cast("Callable[..., StateDict]", remap)(tensors, model, source=source)
    return remap(tensors, model)


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
    obj = read_checkpoint(path, trust_checkpoints=trust_checkpoints, map_location=map_location, lazy=True)
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
    assign: bool = False,
) -> nn.Module:
    """Load ``state_dict`` into ``model``; missing / unexpected / mis-shaped keys are an error.

    With ``allow_partial=True`` they become a warning and the matching keys are loaded. Missing
    ``num_batches_tracked`` counters (older checkpoints) are not an error.

    ``assign=True``: the tensors *become* the model's parameters and buffers instead of being
    copied into them (cast to the dtype of the tensor each replaces, and moved to its device):
    a memory-mapped checkpoint is then never copied, its pages are read from disk as the model
    uses them. A model built ``empty`` (:func:`create_backbone`; parameters on the meta device)
    is always loaded so; every one of its meta tensors must be in ``state_dict`` (else
    ``ValueError``: :func:`load_backbone` builds the model with weights in that case).
    """
    sd = _fitted(model, state_dict, allow_partial, source)
    return _put(model, sd, assign=assign, source=source)


def _fitted(
    model: nn.Module, state_dict: Mapping[str, Tensor], allow_partial: bool, source: str | Path
) -> dict[str, Tensor]:
    """``state_dict`` checked against ``model`` (raises :class:`CheckpointKeyError`, or with
    ``allow_partial`` warns and keeps the keys that fit); the position embedding resampled."""
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
            f"checkpoint {source} does not fit {type(model).__name__}: "
            + "; ".join(problems)
            + ". Check the method / arch / branch, or pass allow_partial=True (CLI: --allow-partial)"
        )
        if not allow_partial:
            raise CheckpointKeyError(msg, source if isinstance(source, Path) else None, missing, unexpected, mismatched)
        warnings.warn(msg, PartialLoadWarning, stacklevel=3)
        bad = {m.split(" ", 1)[0] for m in mismatched}
        sd = {k: v for k, v in sd.items() if k in expected and k not in bad}
    return sd


def _put(model: nn.Module, sd: dict[str, Tensor], *, assign: bool, source: str | Path) -> nn.Module:
    """Copy (or with ``assign``, or into an ``empty`` model: assign) the fitted ``sd``."""
    empty = meta_tensors(model)
    if empty:
        left = [n for n in empty if n not in sd]
        if left:
            raise ValueError(
                f"{type(model).__name__} was built without weights, and checkpoint {source} does not give "
                + _listing("these", left)
                + "; build it with weights (create_backbone without empty=True) to load it partially"
            )
        assign = True
    if assign:
        expected = model.state_dict()
        sd = {k: _like(v, expected[k]) for k, v in sd.items()}
    model.load_state_dict(sd, strict=False, assign=assign)
    return model.eval()


def _like(t: Tensor, ref: Tensor) -> Tensor:
    """``t`` with ``ref``'s floating dtype and (unless ``ref`` is on the meta device) its device;
    ``t`` itself when both match (no copy)."""
    dtype = ref.dtype if t.is_floating_point() and ref.is_floating_point() else None
    return t.to(device=None if ref.is_meta else ref.device, dtype=dtype)


def _with_weights(model: nn.Module) -> nn.Module:
    """The architecture of an ``empty`` model built again with (PyTorch's default) weights."""
    recipe = backbone_recipe(model)
    if recipe is None:
        raise ValueError(f"{type(model).__name__} has parameters on the meta device and no recipe to build it again")
    return create_backbone(recipe["arch"], img_size=recipe["img_size"], init_weights=False, **recipe["kwargs"])


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
    assign: bool = False,
) -> nn.Module:
    """Build the backbone and load one official checkpoint into it; returns the model in eval mode.

    Memory: the checkpoint is memory-mapped (torch's zip format; safetensors are read lazily;
    a file the method's training overwrites each epoch, ``run_files`` such as VICReg's
    ``model.pth``, is read whole) and the backbone is built without weights
    (``create_backbone(..., empty=True)``); the backbone's tensors become its parameters, the
    other tensors of the file (heads, the student, the optimizer's state) are never read. A
    model the file does not fill (a partial load; Swin, whose attention masks are computed on
    its parameters' device when it is built) is built with weights and the tensors copied in.

    A training checkpoint of the method (its official training state) and the backbone weights
    the method releases (e.g. DINO's ``dino_deitsmall16_pretrain.pth``, iBOT's
    ``checkpoint_teacher.pth``, DenseCL's ``{'state_dict', 'author'}``, VICReg's and Barlow
    Twins' ``resnet50.pth``) are both read; ``layout``, a list, receives which one it was.

    Args:
        path: checkpoint file.
        method: one of :func:`list_methods` (e.g. ``'dino'``, ``'mocov3'``, ``'generic'``).
        arch: timm architecture (default: the method's), or a ready ``nn.Module`` to load into. The
            method's ``arch_kwargs`` (e.g. MoCo v3's 12 heads, I-JEPA's missing class token) apply when
            ``arch`` is ``None`` or the method's default arch; its ``family_kwargs`` (VICRegL's ConvNeXt:
            no layer scale, final norm before pooling) to any arch of the family. A ready module
            built by :func:`create_backbone` without the family kwargs is built again with them
            (the returned model is then a new one).
        branch: which network to read (default: teacher / momentum / target as the DSE paper).
        prefix: sub-module prefix to keep (mostly for ``generic``).
        allow_partial: turn missing / unexpected keys into a warning.
        trust_checkpoints: allow full unpickling (trusted files only).
        map_location: passed to ``torch.load``.
        model_kwargs: extra timm kwargs (e.g. ``depth=6``), overriding ``arch_kwargs``.
        img_size: input size for size-bound architectures (ViT, Swin); ignored by CNNs. A ViT's
            position embedding is resampled to it.
        layout: a list that receives what the file was (``"release file"``, ``"training
            checkpoint, teacher"``, ...).
        assign: for a ready ``arch`` module, replace its tensors by the checkpoint's instead of
            copying into them (see :func:`load_into`; a model built ``empty`` is always loaded so,
            and a model built here is built ``empty``).

    Raises:
        FileNotFoundError, CheckpointError (UnsafeCheckpointError, CheckpointKeyError), ValueError.
    """
    adapter = get_adapter(method)
    if adapter.builder is not None:  # the network and its weights come from the checkpoint folder itself
        if layout is not None:
            layout.append("model folder")
        return adapter.builder(Path(path), dict(model_kwargs or {}), img_size, load=True, allow_partial=allow_partial)
    # a file the official script overwrites each epoch is read whole: a page of it mapped while a
    # running training truncates it would end the process (SIGBUS); the others are mapped
    mmap = Path(path).name not in adapter.run_files
    obj = read_checkpoint(path, trust_checkpoints=trust_checkpoints, map_location=map_location, lazy=True, mmap=mmap)
    if isinstance(arch, nn.Module):
        model = with_family_kwargs(arch, adapter)
    else:
        name, kwargs = _architecture(obj, adapter, arch, model_kwargs, branch, prefix, Path(path))
        if "img_size" in kwargs:
            img_size = kwargs.pop("img_size") if img_size is None else img_size
            kwargs.pop("img_size", None)
        model = create_backbone(name, img_size=img_size, empty=True, **kwargs)
    adapted = adapt_state_dict(obj, adapter, branch=branch, prefix=prefix, model=model, source=Path(path))
    if layout is not None:
        layout.append(
            adapted.layout if adapted.layout != "training checkpoint" else f"training checkpoint, {adapted.branch}"
        )
    sd = _fitted(model, adapted.state_dict, allow_partial, Path(path))
    if any(n not in sd for n in meta_tensors(model)):  # weights the file does not give: built with weights
        model = _with_weights(model)
    return _put(model, sd, assign=assign, source=Path(path))


def _architecture(
    obj: Any,
    adapter: MethodAdapter,
    arch: str | None,
    model_kwargs: Mapping[str, Any] | None,
    branch: str | None,
    prefix: str | None,
    source: Path,
) -> tuple[str, dict[str, Any]]:
    """The timm architecture and kwargs to build for checkpoint ``obj``: ``arch`` with the method's
    kwargs, or for a method whose network the checkpoint describes (``arch_from_checkpoint``)
    and no ``arch``, the one its weights' names and shapes say (``model_kwargs`` win)."""
    if arch is None and adapter.arch_from_checkpoint and adapter.infer_arch is not None:
        adapted = adapt_state_dict(obj, adapter, branch=branch, prefix=prefix, model=None, source=source)
        found = adapter.infer_arch(adapted.state_dict, obj, source)
        if found is None:
            raise CheckpointError(
                f"checkpoint {source}: the {adapter.title} backbone's architecture cannot be read off its "
                "weights; pass --arch",
                source,
            )
        return found[0], {**found[1], **(model_kwargs or {})}
    name = arch or adapter.arch
    if not name:
        raise ValueError(f"method {adapter.name!r} needs arch: the name of the timm model the checkpoint holds")
    kwargs: dict[str, Any] = adapter.kwargs_for(name)
    kwargs.update(model_kwargs or {})
    return name, kwargs


#: backbones built again by :func:`with_family_kwargs`, by the module they replace and the method
_REBUILT: weakref.WeakKeyDictionary[nn.Module, dict[str, nn.Module]] = weakref.WeakKeyDictionary()


def with_family_kwargs(model: nn.Module, adapter: MethodAdapter) -> nn.Module:
    """``model``, or the same architecture built again with the method's ``family_kwargs`` that
    :func:`create_backbone` was not given (kwargs it was given win); other modules as they are.

    The new backbone is built once per ``model`` and method: a backbone loaded into again for
    each checkpoint (scan, probe) is replaced by the same one each time."""
    recipe = backbone_recipe(model)
    if recipe is None:
        return model
    wanted = {k: v for k, v in adapter.family_kwargs_for(recipe["arch"]).items() if k not in recipe["kwargs"]}
    if not wanted:
        return model
    rebuilt = _REBUILT.setdefault(model, {})
    if adapter.name not in rebuilt:
        rebuilt[adapter.name] = create_backbone(
            recipe["arch"],
            img_size=recipe["img_size"],
            init_weights=recipe["init_weights"],
            empty=recipe.get("empty", False),
            **{**wanted, **recipe["kwargs"]},
        )
    return rebuilt[adapter.name]


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
    backbone of the right architecture to load into again (every weight is replaced, as loading
    is strict: the checkpoint's tensors become its parameters), saves rebuilding it for each
    checkpoint (unless it lacks the method's ``family_kwargs``: see :func:`load_backbone`).
    ``partial``: a list that receives the :class:`PartialLoadWarning` message when the
    checkpoint did not fit (only with ``allow_partial``); the warning is still shown.
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
            assign=True,
        )
    for w in caught:
        if partial is not None and issubclass(w.category, PartialLoadWarning):
            partial.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model
