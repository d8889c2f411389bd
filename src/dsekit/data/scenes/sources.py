"""The source images of the scenes, bundled in installed packages and decoded once per process:
the scikit-image texture photos and scikit-learn's handwritten digits, and the fixed parts of
them that each split uses."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .config import TEXTURES, check_split

__all__ = [
    "digit_images",
    "digit_split_indices",
    "half_bounds",
    "texture_bank",
    "texture_photo",
    "texture_split_bounds",
]


def _skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).resolve().parent / "data"


@functools.cache
def texture_photo(name: str) -> np.ndarray:
    """The texture photo ``name`` as an (H, W, 3) uint8 array, read from the skimage package."""
    from PIL import Image

    path = _skimage_data_dir() / TEXTURES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"texture photo {path} is missing: the installed scikit-image does not bundle "
            f"{TEXTURES[name]!r} (reinstall scikit-image)"
        )
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    arr = np.ascontiguousarray(arr)
    arr.setflags(write=False)
    return arr


@functools.cache
def texture_bank(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All photos as one flat array of packed pixels ``r | g << 8 | b << 16`` (P,) uint32,
    with per-texture offsets, heights and widths."""
    photos = [texture_photo(n) for n in names]
    heights = np.array([p.shape[0] for p in photos], dtype=np.int64)
    widths = np.array([p.shape[1] for p in photos], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(heights * widths)[:-1]]).astype(np.int64)
    flat = np.concatenate([p.reshape(-1, 3) for p in photos], axis=0).astype(np.uint32)
    bank = flat[:, 0] | (flat[:, 1] << 8) | (flat[:, 2] << 16)
    bank.setflags(write=False)
    return bank, offsets, heights, widths


@functools.lru_cache(maxsize=1)
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits: images (1797, 8, 8) float32 in [0, 1], labels (1797,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    labels = d.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def digit_split_indices(split: str) -> np.ndarray:
    """Indices into ``load_digits()`` used by ``split``.

    A fixed, seed-independent, class-stratified split: within each class, every fifth instance
    (by order of appearance) goes to ``val``, the others to ``train``.
    """
    check_split(split)
    _, labels = digit_images()
    rank = np.zeros_like(labels)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(idx.size)
    is_val = rank % 5 == 4
    return np.flatnonzero(is_val if split == "val" else ~is_val)


def texture_split_bounds(name: str, split: str) -> tuple[int, int, int, int]:
    """The part ``(y0, x0, y1, x1)`` (half-open) of texture photo ``name`` used by ``split``.

    ``train`` uses the left half of every photo and ``val`` the right half.
    """
    check_split(split)
    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; known textures: {sorted(TEXTURES)}")
    h, w = texture_photo(name).shape[:2]
    return half_bounds(h, w, split)


def half_bounds(h: int, w: int, split: str) -> tuple[int, int, int, int]:
    """The half-open box ``(y0, x0, y1, x1)`` of an ``h x w`` photo used by ``split``: the left
    half for ``train``, the right half for ``val``."""
    half = w // 2
    return (0, 0, h, half) if split == "train" else (0, half, h, w)
