"""The generic ``folder`` reader (``FolderDataset``): any ``images/`` + ``masks/`` tree."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..images import IMAGE_EXTENSIONS
from .base import (
    COMMON_ARGS,
    IGNORE_INDEX,
    SegmentationDataset,
    identity_label_map,
    layout_error,
    missing_error,
    pair_paths,
    scan_tree,
    strip_known_ext,
)
from .transforms import is_int

__all__ = ["FOLDER_VAL_FRACTION", "FolderDataset"]


class FolderDataset(SegmentationDataset):
    __doc__ = (
        """Any ``images/`` + ``masks/`` tree with matching relative paths (extension aside); mask
    pixel = class id. The class count comes from ``classes.txt`` (line k = name of class k), or
    ``num_classes``, or else from the masks themselves (the largest value other than
    ``ignore_index``, plus one, over every mask of the folder; classes named ``class_k``).
    ``split=None`` / ``"all"`` takes every pair; another split reads
    ``ImageSets/Segmentation/<split>.txt``, and without such lists ``"train"`` and ``"val"`` are
    a deterministic split by file name: a sample is in ``val`` when the first 8 hex digits of
    ``sha256(<name>)`` read as a fraction of 2**32 fall below :data:`FOLDER_VAL_FRACTION` (0.2),
    whatever the order of the files on disk. ``record()`` says where the classes and the split
    came from. The layout ``write_scenes`` writes is one.
    """
        + COMMON_ARGS
        + """
        num_classes: class count (required without classes.txt; must agree with it otherwise).
        ignore_index: label value that is ignored (default 255; must not be a class id)."""
    )

    name = "folder"
    title = "folder dataset"
    LAYOUT = """\
ROOT/
  images/<name>.{jpg,png,...}         any depth; <name> = path relative to images/, extension aside
  masks/<name>.png                    same <name>; pixel = class id 0..K-1, ignore_index (255) = ignore
  classes.txt                         optional: line k = name of class k (else num_classes, else inferred)
  ImageSets/Segmentation/<split>.txt  optional: one <name> per line (without: train/val split by name hash)
"""
    _MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")

    def __init__(
        self,
        root,
        split: str | None = None,
        *,
        num_classes: int | None = None,
        ignore_index: int = IGNORE_INDEX,
        class_names: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        if not is_int(ignore_index) or ignore_index < 0:
            raise ValueError(f"ignore_index must be a non-negative integer, got {ignore_index!r}")
        self.ignore_index = int(ignore_index)
        split = "all" if split is None else split
        super().__init__(root, split, **kwargs)
        base = self._check_root()
        image_dir, mask_dir = base / "images", base / "masks"
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise layout_error(self.title, f"{d} is missing", self.LAYOUT)
        images = scan_tree(image_dir, IMAGE_EXTENSIONS)
        masks = scan_tree(mask_dir, self._MASK_EXTENSIONS)
        self.class_source = (
            "classes.txt"
            if (base / "classes.txt").is_file() and class_names is None
            else ("class_names" if class_names is not None else "num_classes" if num_classes is not None else "masks")
        )
        if self.class_source == "masks":
            num_classes = _classes_in_masks(masks.values(), self.ignore_index, self.title)
        self.class_names = self._classes(base, num_classes, class_names)
        self.num_classes = len(self.class_names)
        if self.ignore_index < self.num_classes:
            raise ValueError(
                f"ignore_index={self.ignore_index} is a class id (num_classes={self.num_classes}); "
                "pick a value >= num_classes"
            )
        self.label_map = identity_label_map(self.num_classes, self.ignore_index)
        lst = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        self.split_source = (
            "all"
            if split == "all"
            else str(lst)
            if lst.is_file()
            else (f"sha256(name) < {FOLDER_VAL_FRACTION} of 2**32 -> val" if split in ("train", "val") else "missing")
        )
        if split == "all" or self.split_source.startswith("sha256"):
            ids = sorted(images)
            unmatched = sorted(set(masks) - set(images))
            if unmatched:
                raise missing_error("image(s) for masks", unmatched, image_dir, self.title)
            if split != "all":
                ids = [i for i in ids if (_name_fraction(i) < FOLDER_VAL_FRACTION) == (split == "val")]
        else:
            if not lst.is_file():
                raise layout_error(self.title, f"split {split!r} needs {lst} (or use split='all')", self.LAYOUT)
            ids = [ln.split("#", 1)[0].strip().strip("/") for ln in lst.read_text().splitlines()]
            ids = [strip_known_ext(i, images) for i in ids if i]
        img_names = {k: str(v.relative_to(image_dir)) for k, v in images.items()}
        mask_names = {k: str(v.relative_to(mask_dir)) for k, v in masks.items()}
        self._set_samples(ids, pair_paths(ids, img_names, mask_names, image_dir, mask_dir, self.title))

    def _classes(self, base: Path, num_classes: int | None, names: Sequence[str] | None) -> tuple[str, ...]:
        if num_classes is not None and (not is_int(num_classes) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        path = base / "classes.txt"
        if names is None and path.is_file():
            names = [ln.strip() for ln in path.read_text().splitlines()]
            while names and not names[-1]:
                names.pop()
            if not names:
                raise ValueError(f"{path} lists no classes")
            if num_classes is not None and num_classes != len(names):
                raise ValueError(f"num_classes={num_classes} but {path} lists {len(names)} classes")
        if names is not None:
            names = tuple(str(n) for n in names)
            if num_classes is not None and num_classes != len(names):
                raise ValueError(f"num_classes={num_classes} but class_names holds {len(names)} names")
            return names
        if num_classes is None:
            raise layout_error(self.title, f"no {path}: pass num_classes", self.LAYOUT)
        return tuple(f"class_{k}" for k in range(num_classes))

    def record(self) -> dict:
        return {
            **super().record(),
            "class_names": list(self.class_names),
            "classes_from": self.class_source,
            "split_from": self.split_source,
        }


#: share of a ``folder`` dataset without split lists that goes to ``val`` (chosen by name hash)
FOLDER_VAL_FRACTION = 0.2


def _name_fraction(name: str) -> float:
    """A number in [0, 1) fixed by ``name`` alone (the first 32 bits of its SHA-256)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 2**32


def _classes_in_masks(paths: Any, ignore_index: int, title: str) -> int:
    """Largest label value other than ``ignore_index`` over the masks, plus one."""
    from PIL import Image

    top = -1
    for p in paths:
        try:
            with Image.open(p) as im:
                values = np.unique(np.asarray(im))
        except Exception as exc:  # noqa: BLE001 - name the file, whatever the decoder says
            raise ValueError(f"{p}: cannot read the mask to infer the classes ({type(exc).__name__}: {exc})") from None
        values = values[values != ignore_index]
        if values.size:
            if values.min() < 0:
                raise ValueError(f"{p}: negative label values {values[values < 0][:5].tolist()}")
            top = max(top, int(values.max()))
    if top < 0:
        raise ValueError(f"{title}: no labelled pixel in any mask (every value is ignore_index={ignore_index})")
    return top + 1
