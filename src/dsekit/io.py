"""Array files: reading dense feature arrays (``.npy``, ``.npz``, ``.pt``/``.pth``,
``.safetensors``), the sparse per-image confusion tables and the per-image k-NN correctness of
``dsekit probe``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import sparse

from .runtime import atomic_path

__all__ = [
    "load_array",
    "FEATURE_SUFFIXES",
    "read_confusion_table",
    "read_knn_table",
    "write_confusion_table",
    "write_knn_table",
]

FEATURE_SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".safetensors")


def _pick(mapping: dict[str, Any], path: Path, key: str | None) -> Any:
    if key is not None:
        if key not in mapping:
            raise ValueError(f"{path}: no array named {key!r}; it holds {sorted(mapping)}")
        return mapping[key]
    if len(mapping) == 1:
        return next(iter(mapping.values()))
    if "features" in mapping:
        return mapping["features"]
    raise ValueError(f"{path}: holds several arrays {sorted(mapping)}; expected one array or one named 'features'")


def load_array(path: str | Path, key: str | None = None) -> np.ndarray | torch.Tensor:
    """Load one array from ``path``.

    ``.npz``, ``.pt`` and ``.safetensors`` files may hold several arrays: the one named
    ``key``, else the only one, else the one named ``features`` is returned. ``.pt`` files
    are read with ``torch.load(weights_only=True)`` (plain tensors and containers only).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return np.asarray(_pick(dict(data), path, key))
        if suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = _pick(obj, path, key)
            if not isinstance(obj, (torch.Tensor, np.ndarray)):
                raise ValueError(f"{path}: expected a tensor, got {type(obj).__name__}")
            return obj
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return _pick(load_file(str(path)), path, key)
    except ValueError as exc:
        if str(path) in str(exc):  # ours: already names the file
            raise
        raise ValueError(f"{path}: could not be read as {suffix} ({exc})") from exc
    except Exception as exc:  # corrupt or truncated files
        raise ValueError(f"{path}: could not be read as {suffix} ({type(exc).__name__}: {exc})") from exc
    raise ValueError(f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(FEATURE_SUFFIXES)}")


def write_confusion_table(path: Path, names: Sequence[str], confusions: Sequence[Sequence[Any]]) -> None:
    """Checkpoints' per-head, per-image confusions (sparse ``(n, C*C)`` matrices, ``confusions[t][h]``)
    in one sparse table, written atomically: arrays ``checkpoint, head, image, cell, count``
    (``cell = truth * C + prediction``), ``shape = (heads, n, C*C)`` and the checkpoint names. Also the format of the
    per-checkpoint cache files."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("checkpoint", "head", "image", "cell", "count")}
    shape = np.zeros(3, np.int64)
    for t, heads in enumerate(confusions):
        for h, m in enumerate(heads):
            coo = m.tocoo()
            shape = np.array([len(heads), *coo.shape], np.int64)
            for k, v in (
                ("checkpoint", np.full(coo.nnz, t)),
                ("head", np.full(coo.nnz, h)),
                ("image", coo.row),
                ("cell", coo.col),
                ("count", coo.data),
            ):
                cols[k].append(np.asarray(v))
    arrays = {k: (np.concatenate(v) if v else np.zeros(0)).astype(np.int64) for k, v in cols.items()}
    with atomic_path(path, ".tmp.npz") as tmp:
        np.savez(
            tmp,
            checkpoint=arrays["checkpoint"],
            head=arrays["head"],
            image=arrays["image"],
            cell=arrays["cell"],
            count=arrays["count"],
            shape=shape,
            checkpoints=np.array(list(names), dtype=str),
        )


def read_confusion_table(path: str | os.PathLike) -> tuple[list[str], list[list[Any]]]:
    """The checkpoints of a ``probe_<dataset>_confusion.npz`` and their per-head sparse (n, C*C) matrices."""
    with np.load(path, allow_pickle=False) as z:
        names = [str(c) for c in z["checkpoints"]]
        H, n, cc = (int(v) for v in z["shape"])
        t, h, i, c, v = (z[k] for k in ("checkpoint", "head", "image", "cell", "count"))
    out = []
    for k in range(len(names)):
        sel_t = t == k
        out.append(
            [
                sparse.csr_matrix((v[sel_t & (h == j)], (i[sel_t & (h == j)], c[sel_t & (h == j)])), shape=(n, cc))
                for j in range(H)
            ]
        )
    return names, out


def write_knn_table(path: Path, names: Sequence[str], correct: Sequence[Sequence[int]]) -> None:
    """Checkpoints' per-image k-NN correctness (``correct[t][i]``: 1 when image ``i`` got its
    label), written atomically: arrays ``correct`` (T, n) uint8 and ``checkpoints``."""
    with atomic_path(path, ".tmp.npz") as tmp:
        np.savez(
            tmp,
            correct=np.asarray(correct, dtype=np.uint8).reshape(len(names), -1),
            checkpoints=np.array(list(names), dtype=str),
        )


def read_knn_table(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """The checkpoints of a ``probe_<dataset>_knn.npz`` and their (T, n) correctness."""
    with np.load(path, allow_pickle=False) as z:
        return [str(c) for c in z["checkpoints"]], np.asarray(z["correct"], dtype=bool)
