"""The registry of segmentation datasets by name: ``DATASETS``, ``dataset_spec``, ``get_dataset``
and ``default_train_split``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from .. import scenes as scene_data
from .ade20k import ADE20K_CLASSES, ADE20KDataset
from .base import IGNORE_INDEX, SegmentationDataset
from .cityscapes import CITYSCAPES_CLASSES, CityscapesDataset
from .cocostuff import COCOSTUFF27_CLASSES, COCOSTUFF_CLASSES, COCOStuffDataset
from .folder import FolderDataset
from .scenes import ScenesSegmentation
from .voc import VOC_CLASSES, VOCDataset

__all__ = ["DATASETS", "DatasetSpec", "dataset_spec", "default_train_split", "get_dataset"]


@dataclass(frozen=True)
class DatasetSpec:
    """What ``get_dataset`` knows about a dataset name."""

    name: str
    cls: type[SegmentationDataset]
    description: str
    num_classes: int | None  # None: decided by the data (``folder``)
    class_names: tuple[str, ...] | None
    splits: tuple[str, ...]
    ignore_index: int = IGNORE_INDEX
    needs_root: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> str:
        return self.cls.LAYOUT


DATASETS: dict[str, DatasetSpec] = {
    "voc": DatasetSpec("voc", VOCDataset, "PASCAL VOC 2012, 21 classes", 21, VOC_CLASSES,
                       ("train", "val", "trainval", "train_aug")),
    "ade20k": DatasetSpec("ade20k", ADE20KDataset, "ADE20K SceneParsing, 150 classes", 150, ADE20K_CLASSES,
                          ("train", "val")),
    "cocostuff": DatasetSpec("cocostuff", COCOStuffDataset, "COCO-Stuff 164k, 171 classes", 171, COCOSTUFF_CLASSES,
                             ("train", "val")),
    "cocostuff27": DatasetSpec("cocostuff27", COCOStuffDataset, "COCO-Stuff 164k, 27 coarse classes", 27,
                               COCOSTUFF27_CLASSES, ("train", "val"), options={"coarse": True}),
    "cityscapes": DatasetSpec("cityscapes", CityscapesDataset, "Cityscapes fine, 19 classes", 19, CITYSCAPES_CLASSES,
                              ("train", "val")),
    "folder": DatasetSpec("folder", FolderDataset, "images/ + masks/ tree, classes.txt or num_classes", None, None,
                          ("all", "<any list in ImageSets/Segmentation>")),
    "scenes": DatasetSpec("scenes", ScenesSegmentation, "built-in digit-on-texture scenes, 15 classes",
                          scene_data.NUM_CLASSES, tuple(scene_data.class_names()), ("train", "val"), needs_root=False),
}  # fmt: skip

_ALIASES = {  # keys without "-", "_" or spaces
    "pascalvoc": "voc", "voc2012": "voc", "pascal": "voc", "ade": "ade20k", "ade20k150": "ade20k",
    "cocostuff171": "cocostuff", "cocostuff164k": "cocostuff", "cityscape": "cityscapes",
    "scene": "scenes", "builtin": "scenes",
}  # fmt: skip


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry of ``name`` (case-insensitive; ``-`` and ``_`` alike; common aliases)."""
    key = "".join(ch for ch in str(name).lower() if ch not in "-_ ")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[key]


def get_dataset(
    name: str, root: str | os.PathLike | None = None, split: str | None = None, **kwargs
) -> SegmentationDataset:
    """Build a segmentation dataset by name.

    Args:
        name: one of ``DATASETS`` (``voc``, ``ade20k``, ``cocostuff``, ``cocostuff27``,
            ``cityscapes``, ``folder``, ``scenes``) or an alias.
        root: the dataset directory (None for ``scenes``).
        split: e.g. ``"train"`` / ``"val"``; None: ``"train"``, or for ``folder`` every pair
            (``"all"``).
        **kwargs: ``image_size``, ``resize``, ``transform``, ``max_samples``, ``seed`` and the
            dataset's own options (``num_classes`` for ``folder``, ``label_type`` for
            ``cityscapes``, ``image_list`` for COCO-Stuff, ``n`` for ``scenes``).
    """
    spec = dataset_spec(name)
    if spec.name == "folder":
        # the "folder" entry's class is FolderDataset, whose split may be None
        return cast("type[FolderDataset]", spec.cls)(root, split, **kwargs)
    return spec.cls(root, "train" if split is None else split, **{**spec.options, **kwargs})


def default_train_split(name: str, root: str | os.PathLike | None = None) -> str:
    """The split to train a probe on: ``train_aug`` for VOC when its SBD list is present,
    ``train`` otherwise (a ``folder`` without split lists: its name-hash split)."""
    spec = dataset_spec(name)
    if spec.name == "voc" and root is not None:
        try:
            voc = VOCDataset.find_root(Path(root))
        except FileNotFoundError:
            return "train"
        has_aug = VOCDataset.aug_list(voc) is not None and (voc / "SegmentationClassAug").is_dir()
        return "train_aug" if has_aug else "train"
    return "train"
