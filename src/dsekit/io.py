"""Reading dense feature arrays from disk: ``.npy``, ``.npz``, ``.pt``/``.pth``, ``.safetensors``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["load_array", "FEATURE_SUFFIXES"]

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
    raise ValueError(
        f"{path}: holds several arrays {sorted(mapping)}; expected one array or one named 'features'"
    )


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
