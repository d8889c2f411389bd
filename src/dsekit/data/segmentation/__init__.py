"""Semantic-segmentation benchmarks as ``(image, mask)`` datasets, read from their standard layouts.

Readers for the four benchmarks used to measure dense quality (PASCAL VOC 2012, ADE20K,
COCO-Stuff 171 / 27, Cityscapes), a generic ``folder`` layout and the built-in scenes, all with
one interface: a ``torch.utils.data.Dataset`` of ``(image (3, S, S) float, mask (S, S) int64)``
with ``num_classes``, ``ignore_index`` (255) and ``class_names``. torchvision's readers
(``VOCSegmentation``, ``Cityscapes``) list the files where their layout fits.

Labels are mapped to ``0 .. num_classes-1`` (plus ignore) by a lookup table when a mask is read;
a value the table does not accept raises a ``ValueError`` naming the file and the values. Missing
roots and wrong layouts raise ``DatasetNotFoundError`` (a ``FileNotFoundError``) whose message
shows the expected tree. ``get_dataset(name, root, split, ...)`` builds any of them by name.

Images and masks are resized and cropped together with ``torchvision.transforms.v2`` (masks with
nearest-neighbour interpolation): ``EvalTransform`` (default: shorter side to S, centre crop S,
ImageNet normalisation) and ``TrainTransform`` (seeded random resized crop and flip).

The package holds one module per reader (``voc``, ``ade20k``, ``cocostuff``, ``cityscapes``,
``folder``, ``scenes``), the shared base class and helpers (``base``), the transforms
(``transforms``) and the registry (``registry``); this module re-exports the public API.
"""

# not in __all__: attributes of the old module, kept
from ..images import IMAGENET_MEAN as IMAGENET_MEAN
from ..images import IMAGENET_STD as IMAGENET_STD
from .ade20k import ADE20K_CLASSES, ADE20KDataset, ade20k_label_map
from .base import IGNORE_INDEX, DatasetNotFoundError, SegmentationDataset, identity_label_map, map_labels, read_mask
from .cityscapes import CITYSCAPES_CLASSES, CityscapesDataset, cityscapes_label_map
from .cocostuff import (
    COCOSTUFF27_CLASSES,
    COCOSTUFF_CLASSES,
    COCOSTUFF_FINE_NAMES,
    COCOSTUFF_UNUSED_IDS,
    COCOStuffDataset,
    cocostuff_coarse_ids,
    cocostuff_label_map,
)
from .folder import FolderDataset
from .registry import DATASETS, DatasetSpec, dataset_spec, default_train_split, get_dataset
from .scenes import ScenesSegmentation
from .transforms import EvalTransform, TrainTransform
from .voc import VOC_CLASSES, VOCDataset, voc_label_map

__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "COCOSTUFF27_CLASSES",
    "COCOSTUFF_CLASSES",
    "COCOSTUFF_FINE_NAMES",
    "COCOSTUFF_UNUSED_IDS",
    "DATASETS",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "ADE20KDataset",
    "COCOStuffDataset",
    "CityscapesDataset",
    "DatasetNotFoundError",
    "DatasetSpec",
    "EvalTransform",
    "FolderDataset",
    "ScenesSegmentation",
    "SegmentationDataset",
    "TrainTransform",
    "VOCDataset",
    "ade20k_label_map",
    "cityscapes_label_map",
    "cocostuff_coarse_ids",
    "cocostuff_label_map",
    "dataset_spec",
    "default_train_split",
    "get_dataset",
    "identity_label_map",
    "map_labels",
    "read_mask",
    "voc_label_map",
]
