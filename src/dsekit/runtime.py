"""Run-time helpers every command shares, written once: atomic writes, file identity, the
device, the precision, the process group, the output folder and the library versions.

Nothing here knows about DSE, checkpoints or datasets; every module above may import it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import platform
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__

__all__ = [
    "PRECISIONS",
    "atomic_path",
    "barrier",
    "dist_context",
    "ensure_writable",
    "file_identity",
    "file_signature",
    "file_name_part",
    "library_versions",
    "link_or_copy",
    "process_group",
    "resolve_device",
    "resolve_precision",
    "write_csv_atomic",
    "write_json_atomic",
    "write_text_atomic",
    "write_torch_atomic",
]

#: autocast dtype of each precision name (``fp32``: no autocast)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends
    without an error, removed otherwise (a reader never sees a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` (synced to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())


def write_csv_atomic(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` (dicts; missing keys empty, extra keys ignored) under ``columns``, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_torch_atomic(path: Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same content as ``src``: a hard link where the filesystem allows, else a copy."""
    with atomic_path(dst) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def ensure_writable(folder: Path, option: str = "--out") -> None:
    """Create ``folder`` and check that files can be written in it; ``ValueError`` naming the folder
    and ``option`` otherwise (a read-only, shared run folder is common)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"cannot write to the output folder {folder} ({err.strerror or err}); pass {option} to write elsewhere"
        ) from None


# --------------------------------------------------------------------------- identities and versions


#: files of a checkpoint folder that hold no weights (a Hugging Face ``Trainer``'s training state)
_TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng_state", "training_args")


def file_identity(path: Path, chunk: int = 1 << 22) -> str:
    """Identity of a file: SHA-256 of its name, size and whole content (about 1 GB/s, so a few
    tenths of a second for a ViT-S checkpoint; a change anywhere in the file counts).

    A folder that is one checkpoint (a Hugging Face model folder, a ``torch.distributed.checkpoint``
    folder) is identified by the names, sizes and contents of its files, the training state of a
    ``Trainer`` folder (optimizer, scheduler, RNG states) left out."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith(_TRAINING_STATE))
        h.update(f"{path.name}/".encode())
    else:
        files = [path]
    for file in files:
        name = file.relative_to(path).as_posix() if file != path else path.name
        h.update(f"{name}:{file.stat().st_size}".encode())
        with open(file, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def file_name_part(text: str) -> str:
    """``text`` as part of a file name: every character but letters, digits, ``-``, ``_`` and
    ``.`` replaced by ``_`` (a dataset or checkpoint name in the names of the files written for
    it; the writer and the reader of a file both call this)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def file_signature(path: Path) -> tuple[tuple[str, int, int, int], ...]:
    """What changes when a file (or a checkpoint folder's files) is written: each file's name,
    size, modification time (ns) and inode, without reading it. Compared before and after a
    checkpoint is scored, it tells a file rewritten meanwhile (a run saving in place)."""
    path = Path(path)
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:  # removed meanwhile: that is a change too
            out.append((str(f), -1, -1, -1))
            continue
        out.append((str(f), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def library_versions() -> dict[str, str]:
    """Versions of dsekit, Python, the platform and the libraries a result depends on."""
    import timm  # heavy, and only needed here: imported when a run is recorded
    import torchvision

    return {
        "dsekit": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
    }


# --------------------------------------------------------------------------- device, precision, processes


def resolve_device(name: str | None) -> torch.device:
    """The torch device named ``name`` (None: CUDA when available); ``ValueError`` for a name torch
    does not know or a CUDA device on a machine without CUDA. Under ``torchrun`` a bare ``cuda``
    is this process's ``LOCAL_RANK`` device."""
    if name is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError):
            raise ValueError(f"device: {name!r} is not a torch device; use e.g. cpu, cuda, cuda:1, mps") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {name!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def resolve_precision(name: str, allowed: Sequence[str] = tuple(PRECISIONS)) -> torch.dtype | None:
    """The autocast dtype of precision ``name`` (None for fp32); ``ValueError`` naming ``allowed`` otherwise."""
    if name not in allowed or name not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(allowed)}, got {name!r}")
    return PRECISIONS[name]


def dist_context(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call initialised the process group): gloo on CPU, NCCL on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


def barrier(world: int) -> None:
    """Wait for every process (a no-op in a single process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[tuple[int, int]]:
    """``(rank, world)`` for the block; a process group this call had to create is destroyed after it."""
    rank, world, owns = dist_context(device)
    try:
        yield rank, world
    finally:
        if owns:
            import torch.distributed as dist

            dist.destroy_process_group()
