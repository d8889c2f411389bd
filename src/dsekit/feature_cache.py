"""A memory-bounded array store: arrays in RAM up to a bound and in ``numpy.memmap`` spill
files beyond it, with the spill folders of killed processes cleaned up."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FeatureCache", "remove_stale_spills", "spill_prefix"]


def spill_prefix() -> str:
    """The name prefix of this machine's spill folders (``spill-<host>-``; a shared file system keeps
    other machines' folders apart)."""
    host = "".join(ch if ch.isalnum() else "_" for ch in socket.gethostname())
    return f"spill-{host}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_spills(parent: str | os.PathLike) -> list[Path]:
    """Remove the spill folders in ``parent`` left by processes of this machine that no longer run
    (a probe killed while spilling); returns what was removed. Folders of live processes and of
    other machines (a shared file system) are kept."""
    removed = []
    prefix = spill_prefix()
    for d in Path(parent).glob(f"{prefix}*"):
        pid = d.name[len(prefix) :].split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


class FeatureCache:
    """Arrays kept in RAM up to ``memory_bytes`` in total and in ``numpy.memmap`` files beyond.

    ``allocate`` places an array in RAM when it fits in what is left of the bound, else on disk
    in ``directory`` (created on first use, removed by :meth:`close`; folders left there by killed
    processes are removed when a new one is made). ``in_memory_bytes`` never
    exceeds ``memory_bytes``; ``peak_in_memory_bytes`` records the largest value it reached.
    """

    def __init__(self, memory_bytes: int, directory: str | os.PathLike | None = None) -> None:
        if memory_bytes < 0:
            raise ValueError(f"memory_bytes must be >= 0, got {memory_bytes}")
        self.memory_bytes = int(memory_bytes)
        self._parent = Path(directory) if directory is not None else None
        self._dir: Path | None = None
        self._arrays: dict[str, tuple[np.ndarray, bool]] = {}
        self.in_memory_bytes = 0
        self.on_disk_bytes = 0
        self.peak_in_memory_bytes = 0

    def allocate(self, name: str, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """A new (uninitialised) array ``name``; an earlier array of that name is released."""
        self.release(name)
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self.in_memory_bytes + nbytes <= self.memory_bytes:
            arr = np.empty(tuple(shape), dtype=dtype)
            self.in_memory_bytes += nbytes
            self.peak_in_memory_bytes = max(self.peak_in_memory_bytes, self.in_memory_bytes)
            self._arrays[name] = (arr, False)
            return arr
        if self._dir is None:
            parent = self._parent if self._parent is not None else Path(tempfile.gettempdir())
            parent.mkdir(parents=True, exist_ok=True)
            remove_stale_spills(parent)
            self._dir = Path(tempfile.mkdtemp(prefix=f"{spill_prefix()}{os.getpid()}-", dir=parent))
        path = self._dir / f"{name}.{dtype.name}.mmap"
        arr = np.memmap(path, dtype=dtype, mode="w+", shape=tuple(shape)) if nbytes else np.empty(tuple(shape), dtype)
        self.on_disk_bytes += nbytes
        self._arrays[name] = (arr, True)
        return arr

    def is_spilled(self, name: str) -> bool:
        return self._arrays[name][1]

    def release(self, name: str) -> None:
        if name not in self._arrays:
            return
        arr, spilled = self._arrays.pop(name)
        if spilled:
            self.on_disk_bytes -= arr.nbytes
            if isinstance(arr, np.memmap):
                filename = arr.filename
                assert filename is not None  # the cache's memmaps are always opened on a file
                arr._mmap.close()  # type: ignore[attr-defined]
                Path(filename).unlink(missing_ok=True)
        else:
            self.in_memory_bytes -= arr.nbytes

    def stats(self) -> dict[str, int]:
        return {
            "memory_bound_bytes": self.memory_bytes,
            "in_memory_bytes": self.in_memory_bytes,
            "peak_in_memory_bytes": self.peak_in_memory_bytes,
            "on_disk_bytes": self.on_disk_bytes,
        }

    def close(self) -> None:
        for name in list(self._arrays):
            try:
                self.release(name)
            except (OSError, ValueError, BufferError):
                self._arrays.pop(name, None)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
