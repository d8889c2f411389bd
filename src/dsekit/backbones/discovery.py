"""Checkpoint discovery: the checkpoints of one run and the epoch or step each holds, from the
method's official names.

:func:`discover_checkpoints` lists a run's checkpoints sorted by epoch (or step);
:func:`epoch_from_filename` reads the number off a path with the method's official pattern(s)
(:attr:`MethodAdapter.file_patterns`: file names such as ``checkpoint{epoch}.pth``, paths below the
run folder such as ``eval/training_{step}/teacher_checkpoint.pth``, and folders that are one
checkpoint such as ``ckpt/{step}/``); :func:`checkpoint_label` names a checkpoint in tables and
file names when its own name says nothing (``training_12499/teacher_checkpoint.pth``).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from dsekit.backbones.reading import read_checkpoint
from dsekit.backbones.registry import ANY_FILE, INIT_EPOCH, CheckpointError, MethodAdapter, get_adapter

__all__ = [
    "CHECKPOINT_EXTENSIONS",
    "checkpoint_label",
    "discover_checkpoints",
    "epoch_from_filename",
    "is_checkpoint_folder",
    "pattern_checkpoints",
    "stored_epoch",
]

#: File extensions considered checkpoints by the ``generic`` method and by ``--glob`` discovery.
CHECKPOINT_EXTENSIONS: tuple[str, ...] = (".pth", ".pt", ".tar", ".ckpt", ".bin", ".safetensors")


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
    if ANY_FILE in adapter.file_patterns:
        if not _is_checkpoint_file(name):
            return None
        m = _LAST_INT.search(_strip_extensions(name))
        return int(m.group(1)) if m else None
    parts = Path(path).parts
    for template, regex in zip(adapter.file_patterns, adapter.file_regexes, strict=True):
        depth = template.rstrip("/").count("/") + 1
        m = regex.fullmatch("/".join(parts[-depth:]))
        if m:
            e = m.group("epoch")
            return INIT_EPOCH if e.endswith("init") else int(e)
    return None


def checkpoint_label(path: str | Path) -> str:
    """A checkpoint's name for tables, messages and cache files: its file or folder name, with the
    folder above it when the name alone says nothing (no digit, as ``teacher_checkpoint.pth``, or
    digits only, as DCP's ``ckpt/1250``): ``training_12499/teacher_checkpoint.pth``."""
    p = Path(path)
    name = p.name
    if (not any(ch.isdigit() for ch in name) or re.fullmatch(r"\d+(_keep)?", name)) and p.parent.name:
        return f"{p.parent.name}/{name}"
    return name


def discover_checkpoints(
    run_dir: str | Path,
    method: str | MethodAdapter,
    glob: str | None = None,
) -> list[tuple[Path, int | None]]:
    """Checkpoints of one run, as ``(path, epoch)`` sorted by epoch or step (then path).

    Without ``glob`` the checkpoints the method's official pattern(s) name are returned (files
    directly in ``run_dir``, paths below it, checkpoint folders; see :func:`pattern_checkpoints`),
    or what the method's own ``discover`` finds. With ``glob`` (relative to ``run_dir``, ``**``
    allowed) every matching file or checkpoint folder (a ``config.json`` or a
    ``torch.distributed.checkpoint`` ``.metadata`` in it) is returned; its number comes from the
    official pattern, else from the last number in the name, else ``None`` (sorted last).

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
    tried = ""
    if glob is not None:
        try:
            candidates = sorted(p for p in root.glob(glob) if p.is_file() or is_checkpoint_folder(p))
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
        tried = _tried(adapter)
        found = adapter.discover(root, adapter) if adapter.discover is not None else pattern_checkpoints(root, adapter)
    _warn_duplicate_epochs(found)

    if not found:
        n_files = sum(1 for p in root.iterdir())
        what = (
            f"the folder is empty (looked for the {tried})"
            if n_files == 0
            else f"none of its {n_files} entries matches the {tried}"
        )
        raise FileNotFoundError(
            f"no checkpoints found in {root}: {what}; pass glob= (CLI: --glob) to choose the files explicitly"
        )
    found.sort(key=lambda pe: (pe[1] is None, pe[1] if pe[1] is not None else 0, str(pe[0])))
    return found


def is_checkpoint_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding one checkpoint: a Hugging Face model folder
    (``config.json``) or a ``torch.distributed.checkpoint`` folder (``.metadata``)."""
    return path.is_dir() and ((path / "config.json").is_file() or (path / ".metadata").is_file())


def _tried(adapter: MethodAdapter) -> str:
    tried = f"{adapter.title} pattern(s) " + ", ".join(repr(t) for t in adapter.file_patterns)
    if adapter.run_files:
        tried += " and copies of " + ", ".join(repr(f) for f in adapter.run_files) + " (any sub-folder or suffix)"
    return tried


def pattern_checkpoints(root: Path, adapter: MethodAdapter) -> list[tuple[Path, int | None]]:
    """The checkpoints of ``root`` that the adapter's official patterns name: files directly in
    ``root`` for a file-name pattern, paths below it for a pattern with ``/`` (a folder for one
    ending in ``/``), then copies of its one-file runs' files; unsorted."""
    found: list[tuple[Path, int | None]] = []
    flat = [t for t in adapter.file_patterns if "/" not in t]
    if flat:
        for p in sorted(root.iterdir()):
            if p.is_file():
                epoch = epoch_from_filename(p, adapter)
                if epoch is not None:
                    found.append((p, epoch))
    for template, regex in zip(adapter.file_patterns, adapter.file_regexes, strict=True):
        if "/" not in template:
            continue
        folder = template.endswith("/")
        pattern = re.sub(r"\{\w+\}", "*", template.rstrip("/"))
        for p in sorted(root.glob(pattern)):
            m = regex.fullmatch(p.relative_to(root).as_posix())
            if m and (p.is_dir() if folder else p.is_file()):
                e = m.group("epoch")
                found.append((p, INIT_EPOCH if e.endswith("init") else int(e)))
    if adapter.run_files:
        seen = {p for p, _ in found}
        found += [pe for pe in _run_file_copies(root, adapter.run_files) if pe[0] not in seen]
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
                if (
                    f == name
                    or f.startswith(name + ".")
                    or f.startswith(name + "-")
                    or f.startswith(name + "_")
                    or (f.startswith(stem) and f.endswith(ext) and len(f) > len(name) and f[len(stem)] in "._-")
                ):
                    rel = (rel_dir / f).as_posix().replace(name, "").replace(stem, "")
                    m = _LAST_INT.search(rel)
                    path = Path(dirpath) / f
                    out.append((path, int(m.group(1)) if m else stored_epoch(path)))
                    break
    return out


def _split_checkpoint_name(name: str) -> tuple[str, str]:
    stem = _strip_extensions(name)
    return stem, name[len(stem) :]


def stored_epoch(path: Path) -> int | None:
    """The ``epoch`` (else ``iteration``) field of a checkpoint (None when unreadable or absent)."""
    try:
        obj = read_checkpoint(path, map_location="cpu")
    except (CheckpointError, OSError):
        return None
    epoch = next((obj[k] for k in ("epoch", "iteration") if k in obj), None) if isinstance(obj, Mapping) else None
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
