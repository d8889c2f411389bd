"""The shared core of the segmentation readers: the ``SegmentationDataset`` base class, label
maps and mask reading, ``DatasetNotFoundError`` and the file-discovery helpers the readers use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from ..images import IMAGENET_MEAN, IMAGENET_STD
from .transforms import STREAM_TAG, EvalTransform, finish_sample, is_int

__all__ = [
    "COMMON_ARGS",
    "IGNORE_INDEX",
    "DatasetNotFoundError",
    "SegmentationDataset",
    "identity_label_map",
    "layout_error",
    "map_labels",
    "missing_error",
    "pair_paths",
    "read_list",
    "read_mask",
    "scan_dir",
    "scan_tree",
    "strip_known_ext",
]

IGNORE_INDEX = 255
_SHOW = 5  # file names / values listed in an error


# ----------------------------------------------------------------------------------------------
# label maps (pure numpy): lut[raw value] = class id, ignore index, or -1 for "not allowed"
# ----------------------------------------------------------------------------------------------
def identity_label_map(num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Values ``0..num_classes-1`` and ``ignore_index`` map to themselves; others are invalid."""
    size = max(256, num_classes, ignore_index + 1)
    lut = np.full(size, -1, dtype=np.int64)
    lut[:num_classes] = np.arange(num_classes)
    lut[ignore_index] = ignore_index
    return lut


def map_labels(raw: np.ndarray, lut: np.ndarray, source: str | os.PathLike = "mask", expected: str = "") -> np.ndarray:
    """Map raw mask values (H, W) through ``lut`` to int64 class ids (H, W).

    Raises:
        ValueError: some value has no entry (``lut < 0`` or beyond the table); the message names
            ``source`` and the offending values.
    """
    raw = np.asarray(raw)
    if raw.dtype == np.uint8 and lut.size >= 256:
        out = lut[raw]
    else:
        r = raw.astype(np.int64, copy=False)
        inside = (r >= 0) & (r < lut.size)
        out = np.where(inside, lut[np.clip(r, 0, lut.size - 1)], -1)
    bad = out < 0
    if bad.any():
        values = np.unique(raw[bad])
        shown = ", ".join(str(v) for v in values[:10].tolist()) + (" ..." if values.size > 10 else "")
        raise ValueError(
            f"{source}: label value(s) {shown} outside the valid range"
            + (f" ({expected})" if expected else "")
            + f" in {int(bad.sum())} pixel(s)"
        )
    return out


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A label PNG as an integer array (H, W): palette indices, grey values or 16-bit values.

    Raises:
        ValueError: the file is a colour image whose channels differ (not class ids).
    """
    from PIL import Image

    with Image.open(path) as im:
        mode = im.mode
        if mode in ("P", "L", "1"):
            return np.array(im, dtype=np.uint8)
        if mode.startswith("I"):
            return np.array(im).astype(np.int64)
        if mode == "LA":
            return np.array(im.getchannel(0), dtype=np.uint8)
        if mode in ("RGB", "RGBA"):
            arr = np.array(im)
            if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
                return np.ascontiguousarray(arr[..., 0])
    raise ValueError(
        f"mask {path} is a {mode} colour image; expected single-channel class ids "
        "(a palette or greyscale PNG whose pixel values are the labels)"
    )


def _read_image(path: Path) -> torch.Tensor:
    """RGB uint8 tensor (3, H, W)."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.array(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------------------------
# errors and file discovery
# ----------------------------------------------------------------------------------------------
class DatasetNotFoundError(FileNotFoundError):
    """A dataset root is missing or does not hold the expected layout (the message shows it)."""


def layout_error(title: str, problem: str, layout: str) -> DatasetNotFoundError:
    """A ``DatasetNotFoundError`` for ``title``: the ``problem``, then the expected ``layout``."""
    return DatasetNotFoundError(f"{title}: {problem}\nExpected layout (ROOT = the root given):\n{layout.rstrip()}")


def scan_dir(directory: Path, suffixes: Sequence[str]) -> dict[str, str]:
    """``{stem: file name}`` of the files in ``directory`` (not recursive) with one of ``suffixes``."""
    suffixes = tuple(s.lower() for s in suffixes)
    out: dict[str, str] = {}
    with os.scandir(directory) as it:
        for e in it:
            name = e.name
            if not name.startswith(".") and name.lower().endswith(suffixes) and e.is_file():
                stem = name[: name.rfind(".")]
                if stem in out:
                    raise ValueError(f"{directory} holds two files for {stem!r}: {out[stem]} and {name}")
                out[stem] = name
    return out


def scan_tree(directory: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """``{relative path without extension (POSIX): path}`` of matching files under ``directory``."""
    suffixes = tuple(s.lower() for s in suffixes)
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(directory)
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(suffixes):
                key = (rel / f[: f.rfind(".")]).as_posix()
                if key in out:
                    raise ValueError(f"{directory} holds two files for {key!r}: {out[key].name} and {f}")
                out[key] = Path(dirpath) / f
    return out


def read_list(path: Path) -> list[str]:
    """Ids of a split list: one per line; a line of paths (``/JPEGImages/x.jpg /Seg.../x.png``)
    gives the stem of its first path. Blank lines and ``#`` comments are skipped."""
    ids = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            first = line.split()[0]
            ids.append(Path(first).stem if ("/" in first or "." in Path(first).name) else first)
    return ids


def strip_known_ext(name: str, known: Mapping[str, Any]) -> str:
    """``name`` without an image/mask extension when that makes it a known key."""
    if name not in known and "." in name.rsplit("/", 1)[-1]:
        stem = name[: name.rfind(".")]
        if stem in known:
            return stem
    return name


def missing_error(kind: str, missing: Sequence[str], where: Path, title: str) -> FileNotFoundError:
    """A ``FileNotFoundError`` for ``title`` counting the ``missing`` files of ``kind`` in
    ``where`` (the first few named)."""
    shown = ", ".join(missing[:_SHOW]) + (f" and {len(missing) - _SHOW} more" if len(missing) > _SHOW else "")
    return FileNotFoundError(f"{title}: {len(missing)} {kind} missing in {where}: {shown}")


def pair_paths(
    ids: Sequence[str], images: Mapping[str, str], masks: Mapping[str, str], image_dir: Path, mask_dir: Path, title: str
) -> list[tuple[Path, Path]]:
    """Image and mask paths for ``ids``; every id must have both."""
    miss_img = [i for i in ids if i not in images]
    if miss_img:
        raise missing_error("image(s)", miss_img, image_dir, title)
    miss_mask = [i for i in ids if i not in masks]
    if miss_mask:
        raise missing_error("mask(s)", miss_mask, mask_dir, title)
    return [(image_dir / images[i], mask_dir / masks[i]) for i in ids]


# ----------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------
class SegmentationDataset(Dataset):
    """``(image, mask)`` pairs with ``num_classes``, ``ignore_index`` and ``class_names``.

    An item is ``(image float32 (3, S, S), mask int64 (S, S))`` after the default
    ``EvalTransform(image_size, resize)``; with ``image_size=None`` the image is only normalised
    (native size). A custom ``transform`` is called as ``transform(image, mask)`` on
    ``tv_tensors.Image`` (uint8, (3, H, W)) and ``tv_tensors.Mask`` (int64, (H, W), labels
    already mapped to ``0..num_classes-1`` / ``ignore_index``) and its result returned.

    ``max_samples`` keeps a deterministic subset (a seeded permutation's first ``max_samples``,
    in file order; a smaller subset is contained in a larger one drawn with the same seed).

    Attributes:
        samples: ``(image path, mask path)`` per item, in order.
        ids: sample identifiers (file stems, or relative paths for ``folder``).
    """

    name: str = ""  # a class default; COCOStuffDataset(coarse=True) sets its own per instance
    title: ClassVar[str] = ""
    LAYOUT: ClassVar[str] = ""
    SPLITS: ClassVar[tuple[str, ...]] = ()
    num_classes: int
    ignore_index: int = IGNORE_INDEX
    class_names: tuple[str, ...] = ()

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str,
        *,
        image_size: int | None = 224,
        resize: int | None = None,
        transform: Callable | None = None,
        max_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        if max_samples is not None and (not is_int(max_samples) or max_samples < 1):
            raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}")
        if not is_int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if transform is None and image_size is not None:
            transform = EvalTransform(image_size=image_size, resize=resize)
        elif transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.root = None if root is None else Path(root)
        self.split = split
        self.image_size = image_size
        self.transform = transform
        self.max_samples = max_samples
        self.seed = int(seed)
        self.samples: list[tuple[Path, Path]] = []
        self.ids: list[str] = []
        self.available = 0
        self.label_map: np.ndarray | None = None  # set by file-based subclasses

    # subclasses call this once the full file list of the split is known
    def _set_samples(self, ids: Sequence[str], samples: Sequence[tuple[Path, Path]]) -> None:
        if not samples:
            raise layout_error(self.title, f"split {self.split!r} under {self.root} holds no samples", self.LAYOUT)
        keep = _subset(len(samples), self.max_samples, self.seed)
        self.available = len(samples)
        self.samples = [samples[i] for i in keep]
        self.ids = [ids[i] for i in keep]

    def _check_root(self) -> Path:
        if self.root is None:
            raise layout_error(self.title, "no root given", self.LAYOUT)
        if not self.root.exists():
            raise layout_error(self.title, f"root {self.root} does not exist", self.LAYOUT)
        if not self.root.is_dir():
            raise layout_error(self.title, f"root {self.root} is not a directory", self.LAYOUT)
        return self.root

    def _check_split(self, split: str, aliases: Mapping[str, str] | None = None) -> str:
        split = (aliases or {}).get(split, split)
        if split not in self.SPLITS:
            raise ValueError(f"{self.title}: split must be one of {self.SPLITS}, got {self.split!r}")
        return split

    @property
    def label_spec(self) -> str:
        """What the label map accepts, for error messages."""
        return f"0..{self.num_classes - 1} and {self.ignore_index} (ignore)"

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int):
        """The untransformed item: ``(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))``
        with labels mapped (and checked)."""
        from torchvision import tv_tensors

        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image_path, mask_path = self.samples[index]
        image = _read_image(image_path)
        assert self.label_map is not None, f"{type(self).__name__} reads files but set no label_map"
        mask = map_labels(read_mask(mask_path), self.label_map, mask_path, self.label_spec)
        if tuple(image.shape[-2:]) != mask.shape:
            raise ValueError(
                f"image {image_path} is {tuple(image.shape[-2:])} (H, W) but its mask {mask_path} is {mask.shape}"
            )
        return tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(mask))

    def __getitem__(self, index: int):
        image, mask = self.read(index)
        if self.transform is not None:
            return self.transform(image, mask)
        return finish_sample(image, mask, IMAGENET_MEAN, IMAGENET_STD)

    def record(self) -> dict:
        """JSON-able description for run records (no pixel data)."""
        return {
            "dataset": self.name,
            "root": None if self.root is None else str(self.root.resolve()),
            "split": self.split,
            "num_samples": len(self),
            "available": self.available,
            "max_samples": self.max_samples,
            "seed": self.seed,
            "num_classes": int(self.num_classes),
            "ignore_index": int(self.ignore_index),
            "transform": repr(self.transform),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
            f"num_classes={self.num_classes})"
        )


def _subset(n: int, max_samples: int | None, seed: int) -> list[int]:
    if max_samples is None or max_samples >= n:
        return list(range(n))
    rng = np.random.default_rng([STREAM_TAG, int(seed)])
    return sorted(rng.permutation(n)[:max_samples].tolist())


#: the ``Args:`` section shared by the readers' docstrings
COMMON_ARGS = """
    Args:
        root: the dataset directory (see the layout above).
        split: which split.
        image_size: side S of the default eval transform; None for the native size.
        resize: shorter side before the centre crop (default: S).
        transform: joint ``transform(Image, Mask)`` replacing the default.
        max_samples: keep a deterministic subset of this size.
        seed: subset seed."""
