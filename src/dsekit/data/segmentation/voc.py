"""The PASCAL VOC 2012 reader (``VOCDataset``), its class names and label map."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .base import (
    COMMON_ARGS,
    SegmentationDataset,
    identity_label_map,
    layout_error,
    pair_paths,
    read_list,
    scan_dir,
)

__all__ = ["VOC_CLASSES", "VOCDataset", "voc_label_map"]

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def voc_label_map() -> np.ndarray:
    """PASCAL VOC: 0..20 are classes, 255 (object borders, difficult) is ignored; the values are the
    palette indices of ``SegmentationClass`` PNGs (their colours do not matter) or the grey values
    of ``SegmentationClassAug`` PNGs."""
    return identity_label_map(len(VOC_CLASSES))


class VOCDataset(SegmentationDataset):
    __doc__ = (
        """PASCAL VOC 2012 segmentation: 21 classes (background + 20), 255 ignored.

    Splits ``train`` (1464), ``val`` (1449), ``trainval`` from ``SegmentationClass/`` and
    ``train_aug`` (alias ``trainaug``; 10582 with the usual SBD list) from
    ``SegmentationClassAug/``. Ids of ``train_aug`` that are also in ``val.txt`` are dropped with
    a warning. Where the root holds ``VOCdevkit/VOC2012``, ``torchvision.datasets.VOCSegmentation``
    lists the ``train``/``val``/``trainval`` files; it knows neither ``SegmentationClassAug`` nor
    other roots, and masks are read here (palette indices, never colours) so that their values
    are checked.
    """
        + COMMON_ARGS
    )

    name = "voc"
    title = "PASCAL VOC 2012"
    num_classes = len(VOC_CLASSES)
    class_names = VOC_CLASSES
    SPLITS = ("train", "val", "trainval", "train_aug")
    LAYOUT = """\
ROOT/
  VOCdevkit/
    VOC2012/                          (ROOT may also be VOCdevkit/ or VOC2012/ itself)
      JPEGImages/<id>.jpg
      SegmentationClass/<id>.png      palette ("P") PNG: the palette index is the label, 0..20 = classes,
                                      255 = ignore (border); the palette colours are not used
      ImageSets/
        Segmentation/{train,val,trainval}.txt    one <id> per line
        SegmentationAug/train_aug.txt            optional: SBD-augmented train list (split "train_aug");
                                                 lines "<id>" or "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
      SegmentationClassAug/<id>.png   optional: masks of "train_aug" (grey "L" PNG, same labels)
"""
    _AUG_LISTS = (("SegmentationAug", "train_aug.txt"), ("Segmentation", "train_aug.txt"))

    def __init__(self, root, split: str = "train", **kwargs) -> None:
        super().__init__(root, split, **kwargs)
        self.label_map = voc_label_map()
        split = self._check_split(split, {"trainaug": "train_aug"})
        self.split = split
        voc = self.find_root(self._check_root())
        if split == "train_aug":
            ids, image_dir, mask_dir = self._aug_ids(voc), voc / "JPEGImages", voc / "SegmentationClassAug"
        else:
            ids, image_dir, mask_dir = self._ids(voc, split), voc / "JPEGImages", voc / "SegmentationClass"
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise layout_error(self.title, f"{d} is missing", self.LAYOUT)
        images, masks = scan_dir(image_dir, (".jpg", ".jpeg")), scan_dir(mask_dir, (".png",))
        self._set_samples(ids, pair_paths(ids, images, masks, image_dir, mask_dir, self.title))

    @classmethod
    def find_root(cls, root: Path) -> Path:
        """The ``VOC2012`` directory: ``root``, ``root/VOC2012`` or ``root/VOCdevkit/VOC2012``."""
        tried = [root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"]
        for cand in tried:
            if (cand / "JPEGImages").is_dir():
                return cand
        raise layout_error(cls.title, f"no JPEGImages/ in any of {', '.join(str(t) for t in tried)}", cls.LAYOUT)

    @classmethod
    def aug_list(cls, voc: Path) -> Path | None:
        for sub, name in cls._AUG_LISTS:
            if (voc / "ImageSets" / sub / name).is_file():
                return voc / "ImageSets" / sub / name
        return None

    def _ids(self, voc: Path, split: str) -> list[str]:
        lst = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not lst.is_file():
            raise layout_error(self.title, f"split list {lst} is missing", self.LAYOUT)
        if voc.name == "VOC2012" and voc.parent.name == "VOCdevkit":
            from torchvision.datasets import VOCSegmentation

            tv = VOCSegmentation(str(voc.parent.parent), year="2012", image_set=split)
            return [Path(p).stem for p in tv.images]
        return read_list(lst)

    def _aug_ids(self, voc: Path) -> list[str]:
        lst = self.aug_list(voc)
        if lst is None:
            where = " or ".join(str(voc / "ImageSets" / s / n) for s, n in self._AUG_LISTS)
            raise layout_error(self.title, f"split 'train_aug' needs {where}", self.LAYOUT)
        ids = read_list(lst)
        val = voc / "ImageSets" / "Segmentation" / "val.txt"
        if val.is_file():
            val_ids = set(read_list(val))
            overlap = [i for i in ids if i in val_ids]
            if overlap:
                warnings.warn(
                    f"{lst}: dropped {len(overlap)} id(s) that are also in {val} (e.g. {overlap[0]})",
                    UserWarning,
                    stacklevel=3,
                )
                ids = [i for i in ids if i not in val_ids]
        return ids
