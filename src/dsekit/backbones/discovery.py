"""Checkpoint discovery: the files of one run and the epoch each holds, from the method's file names.

:func:`discover_checkpoints` lists a run's checkpoints sorted by epoch; :func:`epoch_from_filename`
reads the epoch off a file name with the method's official pattern(s) (:attr:`MethodAdapter.file_patterns`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from dsekit.backbones.reading import read_checkpoint
from dsekit.backbones.registry import INIT_EPOCH, CheckpointError, MethodAdapter, get_adapter

__all__ = ["CHECKPOINT_EXTENSIONS", "discover_checkpoints", "epoch_from_filename"]

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

