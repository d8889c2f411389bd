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
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from . import scenes as _scenes
from .images import IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD

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

IGNORE_INDEX = 255
_STREAM_TAG = 0x5E6DA7  # keeps the subset stream apart from other uses of the same seed
_SHOW = 5  # file names / values listed in an error

# ----------------------------------------------------------------------------------------------
# class tables
# ----------------------------------------------------------------------------------------------
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

# ADE20K SceneParsing (ADEChallengeData2016): mask value k in 1..150 is class k-1 here.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip

# COCO-Stuff 164k (stuffthingmaps_trainval2017): pixel value v in 0..181 is COCO category id v+1;
# 0..90 are things (80 used), 91..181 stuff (91), 255 unlabeled.
COCOSTUFF_FINE_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat",
    "backpack", "umbrella", "shoe", "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
    "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window",
    "desk", "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush",
    # stuff
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

# COCO category ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 and 91 are not annotated in COCO 2017.
COCOSTUFF_UNUSED_IDS: tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCOSTUFF_CLASSES: tuple[str, ...] = tuple(
    n for i, n in enumerate(COCOSTUFF_FINE_NAMES) if i not in COCOSTUFF_UNUSED_IDS
)

# The COCO-Stuff category hierarchy: 12 thing and 15 stuff supercategories. Their order here is
# the coarse id order of the 27-class benchmark of unsupervised segmentation (PiCIE, STEGO).
_COCOSTUFF_SUPERCATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("electronic", ("tv", "laptop", "mouse", "remote", "keyboard", "cell phone")),
    ("appliance", ("microwave", "oven", "toaster", "sink", "refrigerator", "blender")),
    ("food-things", ("banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
                     "pizza", "donut", "cake")),
    ("furniture-things", ("chair", "couch", "potted plant", "bed", "mirror", "dining table",
                          "window", "desk", "toilet", "door")),
    ("indoor", ("book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
                "hair brush")),
    ("kitchen", ("bottle", "plate", "wine glass", "cup", "fork", "knife", "spoon", "bowl")),
    ("accessory", ("hat", "backpack", "umbrella", "shoe", "eye glasses", "handbag", "tie",
                   "suitcase")),
    ("animal", ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
                "giraffe")),
    ("outdoor", ("traffic light", "fire hydrant", "street sign", "stop sign", "parking meter",
                 "bench")),
    ("person", ("person",)),
    ("sports", ("frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
                "baseball glove", "skateboard", "surfboard", "tennis racket")),
    ("vehicle", ("bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat")),
    ("ceiling", ("ceiling-other", "ceiling-tile")),
    ("floor", ("carpet", "floor-marble", "floor-other", "floor-stone", "floor-tile",
               "floor-wood")),
    ("food-stuff", ("food-other", "fruit", "salad", "vegetable")),
    ("furniture-stuff", ("cabinet", "counter", "cupboard", "desk-stuff", "door-stuff",
                         "furniture-other", "light", "mirror-stuff", "shelf", "stairs", "table")),
    ("raw-material", ("cardboard", "metal", "paper", "plastic")),
    ("textile", ("banner", "blanket", "cloth", "clothes", "curtain", "mat", "napkin", "pillow",
                 "rug", "textile-other", "towel")),
    ("wall", ("wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone",
              "wall-tile", "wall-wood")),
    ("window", ("window-blind", "window-other")),
    ("building", ("bridge", "building-other", "house", "roof", "skyscraper", "tent")),
    ("ground", ("dirt", "gravel", "ground-other", "mud", "pavement", "platform", "playingfield",
                "railroad", "road", "sand", "snow")),
    ("plant", ("branch", "bush", "flower", "grass", "leaves", "moss", "plant-other", "straw",
               "tree")),
    ("sky", ("clouds", "sky-other")),
    ("solid", ("hill", "mountain", "rock", "solid-other", "stone", "wood")),
    ("structural", ("cage", "fence", "net", "railing", "structural-other")),
    ("water", ("fog", "river", "sea", "water-other", "waterdrops")),
)  # fmt: skip
COCOSTUFF27_CLASSES: tuple[str, ...] = tuple(name for name, _ in _COCOSTUFF_SUPERCATEGORIES)


def _cityscapes_table() -> list:
    from torchvision.datasets import Cityscapes

    return list(Cityscapes.classes)


CITYSCAPES_CLASSES: tuple[str, ...] = tuple(
    c.name for c in sorted((c for c in _cityscapes_table() if 0 <= c.train_id < 255), key=lambda c: c.train_id)
)


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


def voc_label_map() -> np.ndarray:
    """PASCAL VOC: 0..20 are classes, 255 (object borders, difficult) is ignored."""
    return identity_label_map(len(VOC_CLASSES))


def ade20k_label_map() -> np.ndarray:
    """ADE20K: 0 (other / unlabeled) -> 255, k in 1..150 -> k - 1."""
    lut = np.full(256, -1, dtype=np.int64)
    lut[0] = IGNORE_INDEX
    lut[1 : len(ADE20K_CLASSES) + 1] = np.arange(len(ADE20K_CLASSES))
    return lut


@functools.lru_cache(maxsize=1)
def cocostuff_coarse_ids() -> np.ndarray:
    """(182,) int64: the coarse (27-class) id of every fine COCO-Stuff id, from the hierarchy."""
    parent = {fine: c for c, (_, members) in enumerate(_COCOSTUFF_SUPERCATEGORIES) for fine in members}
    out = np.array([parent[name] for name in COCOSTUFF_FINE_NAMES], dtype=np.int64)
    out.setflags(write=False)
    return out


def cocostuff_label_map(coarse: bool = False) -> np.ndarray:
    """COCO-Stuff: the 171 used ids of 0..181 -> 0..170 (or their 27 coarse ids), 255 ignored.

    Ids unused in COCO 2017 (``COCOSTUFF_UNUSED_IDS``) never occur in the released maps and are
    rejected like any other out-of-range value.
    """
    lut = np.full(256, -1, dtype=np.int64)
    used = np.setdiff1d(np.arange(len(COCOSTUFF_FINE_NAMES)), COCOSTUFF_UNUSED_IDS)
    lut[used] = cocostuff_coarse_ids()[used] if coarse else np.arange(used.size)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def cityscapes_label_map(train_ids: bool = False) -> np.ndarray:
    """Cityscapes ``labelIds`` (0..33) -> the 19 train ids (others 255); ``train_ids=True`` for
    ``labelTrainIds`` files (0..18 and 255 pass through)."""
    if train_ids:
        return identity_label_map(len(CITYSCAPES_CLASSES))
    lut = np.full(256, -1, dtype=np.int64)
    for c in _cityscapes_table():
        if c.id >= 0:
            lut[c.id] = c.train_id if 0 <= c.train_id < 255 else IGNORE_INDEX
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
# transforms (joint on image and mask; masks use nearest-neighbour interpolation)
# ----------------------------------------------------------------------------------------------
def _check_norm(mean, std) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together (or both None for no normalisation)")
    if mean is None:
        return None, None
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std must hold 3 values with std > 0, got {mean}, {std}")
    return mean, std


def _finish(image, mask, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 image -> float ``(x / 255 - mean) / std``; both returned as plain tensors."""
    from torchvision.transforms.v2 import functional as F

    image = F.to_dtype(image, torch.float32, scale=True)
    if mean is not None:
        image = F.normalize(image, list(mean), list(std))
    return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()


@dataclass
class EvalTransform:
    """Deterministic probe transform: shorter side to ``resize`` (default ``image_size``), centre
    crop ``image_size``, ImageNet normalisation.

    Called as ``t(image, mask)`` on ``tv_tensors.Image`` uint8 (3, H, W) and ``tv_tensors.Mask``
    int64 (H, W); returns ``(float (3, S, S), int64 (S, S))``.
    """

    image_size: int = 224
    resize: int | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD

    def __post_init__(self) -> None:
        if not _is_int(self.image_size) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        if self.resize is not None and (not _is_int(self.resize) or self.resize < self.image_size):
            raise ValueError(f"resize must be an integer >= image_size={self.image_size}, got {self.resize!r}")
        _interp(self.interpolation)
        self.mean, self.std = _check_norm(self.mean, self.std)

    def __call__(self, image, mask) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms.v2 import functional as F

        S = int(self.image_size)
        size = [int(self.resize or S)]
        image = F.resize(image, size, interpolation=_interp(self.interpolation), antialias=True)
        mask = F.resize(mask, size, interpolation=_interp("nearest"))
        image, mask = F.center_crop(image, [S, S]), F.center_crop(mask, [S, S])
        return _finish(image, mask, self.mean, self.std)


@dataclass
class TrainTransform:
    """Seeded augmentation for training a probe head: random resized crop (area fraction in
    ``scale``, aspect ratio in ``ratio``) to ``image_size``, horizontal flip with probability
    ``hflip``, normalisation.

    Draws come from a private ``torch.Generator`` seeded with ``(seed, epoch, worker id)`` (one
    stream per DataLoader worker, created lazily in that process), never from the global RNG.
    Call ``set_epoch(e)`` before each epoch: workers that are not persistent start from a fresh
    copy of the transform every epoch and would otherwise repeat the same crops.
    """

    image_size: int = 224
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    interpolation: str = "bilinear"
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    seed: int = 0
    epoch: int = 0
    _gen: Any = field(default=None, init=False, repr=False, compare=False)
    _gen_key: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _is_int(self.image_size) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        lo, hi = (float(v) for v in self.scale)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        rlo, rhi = (float(v) for v in self.ratio)
        if not 0 < rlo <= rhi:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {self.ratio}")
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"hflip must be a probability in [0, 1], got {self.hflip}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        _interp(self.interpolation)
        self.scale, self.ratio = (lo, hi), (rlo, rhi)
        self.mean, self.std = _check_norm(self.mean, self.std)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_gen"] = state["_gen_key"] = None  # each process starts its own stream
        return state

    def set_epoch(self, epoch: int) -> None:
        """Restart the streams for ``epoch`` (reproducible: the same epoch gives the same draws)."""
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch, self._gen, self._gen_key = int(epoch), None, None

    def _generator(self) -> torch.Generator:
        info = torch.utils.data.get_worker_info()
        wid = -1 if info is None else int(info.id)
        key = (os.getpid(), wid)
        if self._gen_key != key:
            entropy = [_STREAM_TAG, int(self.seed), int(self.epoch), wid + 1]
            seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
            self._gen, self._gen_key = torch.Generator().manual_seed(seed), key
        return self._gen

    def crop_params(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of the next random crop of an image of ``height x width``."""
        g = self._generator()
        area = height * width
        log_r = torch.log(torch.tensor(self.ratio, dtype=torch.float64))
        for _ in range(10):
            u = torch.rand(2, generator=g, dtype=torch.float64)
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * float(u[0]))
            aspect = float(torch.exp(log_r[0] + (log_r[1] - log_r[0]) * u[1]))
            w = int(round((target * aspect) ** 0.5))
            h = int(round((target / aspect) ** 0.5))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=g))
                left = int(torch.randint(0, width - w + 1, (1,), generator=g))
                return top, left, h, w
        # fall back to the largest centred crop with an aspect ratio inside ``ratio``
        aspect = min(max(width / height, self.ratio[0]), self.ratio[1])
        w, h = (width, int(round(width / aspect))) if width / height < aspect else (int(round(height * aspect)), height)
        w, h = min(w, width), min(h, height)
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image, mask) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms.v2 import functional as F

        H, W = image.shape[-2:]
        top, left, h, w = self.crop_params(int(H), int(W))
        S = [int(self.image_size)] * 2
        image = F.resized_crop(image, top, left, h, w, S, interpolation=_interp(self.interpolation), antialias=True)
        mask = F.resized_crop(mask, top, left, h, w, S, interpolation=_interp("nearest"))
        if float(torch.rand(1, generator=self._generator())) < self.hflip:
            image, mask = F.horizontal_flip(image), F.horizontal_flip(mask)
        return _finish(image, mask, self.mean, self.std)


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    try:
        return InterpolationMode(name)
    except ValueError:
        raise ValueError(
            f"interpolation must be one of {[m.value for m in InterpolationMode]}, got {name!r}"
        ) from None


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# ----------------------------------------------------------------------------------------------
# errors and file discovery
# ----------------------------------------------------------------------------------------------
class DatasetNotFoundError(FileNotFoundError):
    """A dataset root is missing or does not hold the expected layout (the message shows it)."""


def _layout_error(title: str, problem: str, layout: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(f"{title}: {problem}\nExpected layout (ROOT = the root given):\n{layout.rstrip()}")


def _scan(directory: Path, suffixes: Sequence[str]) -> dict[str, str]:
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


def _scan_tree(directory: Path, suffixes: Sequence[str]) -> dict[str, Path]:
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


def _read_list(path: Path) -> list[str]:
    """Ids of a split list: one per line; a line of paths (``/JPEGImages/x.jpg /Seg.../x.png``)
    gives the stem of its first path. Blank lines and ``#`` comments are skipped."""
    ids = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            first = line.split()[0]
            ids.append(Path(first).stem if ("/" in first or "." in Path(first).name) else first)
    return ids


def _strip_known_ext(name: str, known: Mapping[str, Any]) -> str:
    """``name`` without an image/mask extension when that makes it a known key."""
    if name not in known and "." in name.rsplit("/", 1)[-1]:
        stem = name[: name.rfind(".")]
        if stem in known:
            return stem
    return name


def _missing_error(kind: str, missing: Sequence[str], where: Path, title: str) -> FileNotFoundError:
    shown = ", ".join(missing[:_SHOW]) + (f" and {len(missing) - _SHOW} more" if len(missing) > _SHOW else "")
    return FileNotFoundError(f"{title}: {len(missing)} {kind} missing in {where}: {shown}")


def _pair(
    ids: Sequence[str], images: Mapping[str, str], masks: Mapping[str, str], image_dir: Path, mask_dir: Path, title: str
) -> list[tuple[Path, Path]]:
    """Image and mask paths for ``ids``; every id must have both."""
    miss_img = [i for i in ids if i not in images]
    if miss_img:
        raise _missing_error("image(s)", miss_img, image_dir, title)
    miss_mask = [i for i in ids if i not in masks]
    if miss_mask:
        raise _missing_error("mask(s)", miss_mask, mask_dir, title)
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

    name: ClassVar[str] = ""
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
        if max_samples is not None and (not _is_int(max_samples) or max_samples < 1):
            raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}")
        if not _is_int(seed) or seed < 0:
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
            raise _layout_error(self.title, f"split {self.split!r} under {self.root} holds no samples", self.LAYOUT)
        keep = _subset(len(samples), self.max_samples, self.seed)
        self.available = len(samples)
        self.samples = [samples[i] for i in keep]
        self.ids = [ids[i] for i in keep]

    def _check_root(self) -> Path:
        if self.root is None:
            raise _layout_error(self.title, "no root given", self.LAYOUT)
        if not self.root.exists():
            raise _layout_error(self.title, f"root {self.root} does not exist", self.LAYOUT)
        if not self.root.is_dir():
            raise _layout_error(self.title, f"root {self.root} is not a directory", self.LAYOUT)
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
        return _finish(image, mask, IMAGENET_MEAN, IMAGENET_STD)

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
    rng = np.random.default_rng([_STREAM_TAG, int(seed)])
    return sorted(rng.permutation(n)[:max_samples].tolist())


_COMMON_ARGS = """
    Args:
        root: the dataset directory (see the layout above).
        split: which split.
        image_size: side S of the default eval transform; None for the native size.
        resize: shorter side before the centre crop (default: S).
        transform: joint ``transform(Image, Mask)`` replacing the default.
        max_samples: keep a deterministic subset of this size.
        seed: subset seed."""


class VOCDataset(SegmentationDataset):
    __doc__ = (
        """PASCAL VOC 2012 segmentation: 21 classes (background + 20), 255 ignored.

    Splits ``train`` (1464), ``val`` (1449), ``trainval`` from ``SegmentationClass/`` and
    ``train_aug`` (alias ``trainaug``; 10582 with the usual SBD list) from
    ``SegmentationClassAug/``. Ids of ``train_aug`` that are also in ``val.txt`` are dropped with
    a warning. Where the root holds ``VOCdevkit/VOC2012``, ``torchvision.datasets.VOCSegmentation``
    lists the ``train``/``val``/``trainval`` files.
    """
        + _COMMON_ARGS
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
      SegmentationClass/<id>.png      palette PNG: 0..20 = classes, 255 = ignore
      ImageSets/
        Segmentation/{train,val,trainval}.txt    one <id> per line
        SegmentationAug/train_aug.txt            optional: SBD-augmented train list (split "train_aug");
                                                 lines "<id>" or "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
      SegmentationClassAug/<id>.png   optional: masks of "train_aug" (grey PNG, same labels)
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
                raise _layout_error(self.title, f"{d} is missing", self.LAYOUT)
        images, masks = _scan(image_dir, (".jpg", ".jpeg")), _scan(mask_dir, (".png",))
        self._set_samples(ids, _pair(ids, images, masks, image_dir, mask_dir, self.title))

    @classmethod
    def find_root(cls, root: Path) -> Path:
        """The ``VOC2012`` directory: ``root``, ``root/VOC2012`` or ``root/VOCdevkit/VOC2012``."""
        tried = [root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"]
        for cand in tried:
            if (cand / "JPEGImages").is_dir():
                return cand
        raise _layout_error(
            cls.title, f"no JPEGImages/ in any of {', '.join(str(t) for t in tried)}", cls.LAYOUT
        )

    @classmethod
    def aug_list(cls, voc: Path) -> Path | None:
        for sub, name in cls._AUG_LISTS:
            if (voc / "ImageSets" / sub / name).is_file():
                return voc / "ImageSets" / sub / name
        return None

    def _ids(self, voc: Path, split: str) -> list[str]:
        lst = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not lst.is_file():
            raise _layout_error(self.title, f"split list {lst} is missing", self.LAYOUT)
        if voc.name == "VOC2012" and voc.parent.name == "VOCdevkit":
            from torchvision.datasets import VOCSegmentation

            tv = VOCSegmentation(str(voc.parent.parent), year="2012", image_set=split)
            return [Path(p).stem for p in tv.images]
        return _read_list(lst)

    def _aug_ids(self, voc: Path) -> list[str]:
        lst = self.aug_list(voc)
        if lst is None:
            where = " or ".join(str(voc / "ImageSets" / s / n) for s, n in self._AUG_LISTS)
            raise _layout_error(self.title, f"split 'train_aug' needs {where}", self.LAYOUT)
        ids = _read_list(lst)
        val = voc / "ImageSets" / "Segmentation" / "val.txt"
        if val.is_file():
            val_ids = set(_read_list(val))
            overlap = [i for i in ids if i in val_ids]
            if overlap:
                warnings.warn(
                    f"{lst}: dropped {len(overlap)} id(s) that are also in {val} (e.g. {overlap[0]})",
                    UserWarning,
                    stacklevel=3,
                )
                ids = [i for i in ids if i not in val_ids]
        return ids


class ADE20KDataset(SegmentationDataset):
    __doc__ = (
        """ADE20K SceneParsing (``ADEChallengeData2016``): 150 classes; mask value 0 ("other") is
    ignored (-> 255) and k in 1..150 becomes class k - 1.

    Splits ``train`` / ``training`` (20210 images) and ``val`` / ``validation`` (2000).
    """
        + _COMMON_ARGS
    )

    name = "ade20k"
    title = "ADE20K"
    num_classes = len(ADE20K_CLASSES)
    class_names = ADE20K_CLASSES
    SPLITS = ("training", "validation")
    LAYOUT = """\
ROOT/
  ADEChallengeData2016/               (ROOT may also be ADEChallengeData2016/ itself)
    images/
      training/ADE_train_<n>.jpg
      validation/ADE_val_<n>.jpg
    annotations/
      training/ADE_train_<n>.png      grey PNG: 0 = other (ignored), 1..150 = classes
      validation/ADE_val_<n>.png
"""

    def __init__(self, root, split: str = "train", **kwargs) -> None:
        super().__init__(root, split, **kwargs)
        self.label_map = ade20k_label_map()
        sub = self._check_split(split, {"train": "training", "val": "validation"})
        base = self._check_root()
        tried = [base, base / "ADEChallengeData2016"]
        base = next((c for c in tried if (c / "images").is_dir() and (c / "annotations").is_dir()), None)
        if base is None:
            raise _layout_error(
                self.title, f"no images/ and annotations/ in {' or '.join(map(str, tried))}", self.LAYOUT
            )
        image_dir, mask_dir = base / "images" / sub, base / "annotations" / sub
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise _layout_error(self.title, f"{d} is missing", self.LAYOUT)
        images = _scan(image_dir, (".jpg", ".jpeg", ".png"))
        ids = sorted(images)
        self._set_samples(ids, _pair(ids, images, _scan(mask_dir, (".png",)), image_dir, mask_dir, self.title))

    @property
    def label_spec(self) -> str:
        return "0 (ignored) and 1..150"


class COCOStuffDataset(SegmentationDataset):
    __doc__ = (
        """COCO-Stuff 164k: 171 classes (the used ids of the 182-id maps, renumbered 0..170), or with
    ``coarse=True`` the 27 supercategories of the COCO-Stuff hierarchy (12 thing + 15 stuff, in
    the coarse id order of the unsupervised-segmentation benchmarks); 255 ignored.

    Splits ``train`` / ``train2017`` (118k) and ``val`` / ``val2017`` (5k). Samples are the maps
    in ``stuffthingmaps_trainval2017/<split>/``; each needs its ``<id>.jpg``. ``image_list``: a
    text file of image ids (one per line) restricting the split (e.g. a curated subset).
    """
        + _COMMON_ARGS
        + """
        coarse: the 27-class labels instead of 171.
        image_list: optional file of ids to keep."""
    )

    name = "cocostuff"
    title = "COCO-Stuff"
    num_classes = len(COCOSTUFF_CLASSES)
    class_names = COCOSTUFF_CLASSES
    SPLITS = ("train2017", "val2017")
    LAYOUT = """\
ROOT/
  stuffthingmaps_trainval2017/        (ROOT may also be this folder; images are then looked for beside it)
    train2017/<id>.png                grey PNG: 0..181 = COCO category id - 1, 255 = unlabeled
    val2017/<id>.png
  images/                             (or train2017/ and val2017/ directly in ROOT)
    train2017/<id>.jpg
    val2017/<id>.jpg
"""

    def __init__(self, root, split: str = "train", *, coarse: bool = False, image_list=None, **kwargs) -> None:
        if coarse:
            self.name, self.num_classes, self.class_names = "cocostuff27", len(COCOSTUFF27_CLASSES), COCOSTUFF27_CLASSES
        super().__init__(root, split, **kwargs)
        self.coarse = bool(coarse)
        self.label_map = cocostuff_label_map(coarse=self.coarse)
        sub = self._check_split(split, {"train": "train2017", "val": "val2017"})
        base = self._check_root()
        if base.name == "stuffthingmaps_trainval2017":
            base = base.parent
        mask_dir = base / "stuffthingmaps_trainval2017" / sub
        if not mask_dir.parent.is_dir():
            raise _layout_error(self.title, f"{mask_dir.parent} is missing", self.LAYOUT)
        tried = [base / "images" / sub, base / sub]
        image_dir = next((d for d in tried if d.is_dir()), None)
        if not mask_dir.is_dir() or image_dir is None:
            missing = mask_dir if not mask_dir.is_dir() else " and ".join(map(str, tried))
            raise _layout_error(self.title, f"{missing} is missing", self.LAYOUT)
        masks = _scan(mask_dir, (".png",))
        ids = sorted(masks)
        if image_list is not None:
            path = Path(image_list)
            if not path.is_file():
                raise FileNotFoundError(f"image_list {path} does not exist")
            keep = set(_read_list(path))
            ids = [i for i in ids if i in keep]
            unknown = sorted(keep - set(masks))
            if unknown:
                raise _missing_error("mask(s) of image_list ids", unknown, mask_dir, self.title)
        images = _scan(image_dir, (".jpg", ".jpeg", ".png"))
        self._set_samples(ids, _pair(ids, images, masks, image_dir, mask_dir, self.title))

    @property
    def label_spec(self) -> str:
        return "the 171 used ids of 0..181, and 255"


class CityscapesDataset(SegmentationDataset):
    __doc__ = (
        """Cityscapes (fine annotations): the 19 train ids, 255 ignored.

    Splits ``train`` (2975) and ``val`` (500). ``torchvision.datasets.Cityscapes`` lists the
    files. Labels come from ``*_gtFine_labelTrainIds.png`` when every one of the split exists
    (``label_type="auto"``), else from ``*_gtFine_labelIds.png`` mapped to train ids.
    """
        + _COMMON_ARGS
        + """
        label_type: ``"auto"``, ``"labelIds"`` or ``"labelTrainIds"``."""
    )

    name = "cityscapes"
    title = "Cityscapes"
    num_classes = len(CITYSCAPES_CLASSES)
    class_names = CITYSCAPES_CLASSES
    SPLITS = ("train", "val")
    LAYOUT = """\
ROOT/
  leftImg8bit/
    {train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/
    {train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        0..33 (mapped to the 19 train ids)
    {train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   optional: 0..18, 255 = ignore
"""
    _SUFFIX = {"labelIds": "_gtFine_labelIds.png", "labelTrainIds": "_gtFine_labelTrainIds.png"}

    def __init__(self, root, split: str = "train", *, label_type: str = "auto", **kwargs) -> None:
        super().__init__(root, split, **kwargs)
        if label_type not in ("auto", "labelIds", "labelTrainIds"):
            raise ValueError(f"label_type must be 'auto', 'labelIds' or 'labelTrainIds', got {label_type!r}")
        split = self._check_split(split)
        base = self._check_root()
        for d in (base / "leftImg8bit" / split, base / "gtFine" / split):
            if not d.is_dir():
                raise _layout_error(self.title, f"{d} is missing", self.LAYOUT)
        from torchvision.datasets import Cityscapes

        tv = Cityscapes(str(base), split=split, mode="fine", target_type="semantic")
        images = sorted(Path(p) for p in tv.images if p.endswith("_leftImg8bit.png"))
        mask_dir = base / "gtFine" / split
        ids = [f"{p.parent.name}/{p.name[: -len('_leftImg8bit.png')]}" for p in images]
        have = {
            t: [(mask_dir / (i + suffix)).is_file() for i in ids] for t, suffix in self._SUFFIX.items()
        }
        if label_type == "auto":
            label_type = "labelTrainIds" if ids and all(have["labelTrainIds"]) else "labelIds"
        missing = [i + self._SUFFIX[label_type] for i, ok in zip(ids, have[label_type]) if not ok]
        if missing:
            raise _missing_error(f"{label_type} mask(s)", missing, mask_dir, self.title)
        self.label_type = label_type
        self.label_map = cityscapes_label_map(train_ids=label_type == "labelTrainIds")
        self._set_samples(ids, [(p, mask_dir / (i + self._SUFFIX[label_type])) for p, i in zip(images, ids)])

    @property
    def label_spec(self) -> str:
        return "labelIds 0..33" if self.label_type == "labelIds" else "train ids 0..18 and 255"


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
        + _COMMON_ARGS
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
        if not _is_int(ignore_index) or ignore_index < 0:
            raise ValueError(f"ignore_index must be a non-negative integer, got {ignore_index!r}")
        self.ignore_index = int(ignore_index)
        split = "all" if split is None else split
        super().__init__(root, split, **kwargs)
        base = self._check_root()
        image_dir, mask_dir = base / "images", base / "masks"
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise _layout_error(self.title, f"{d} is missing", self.LAYOUT)
        images = _scan_tree(image_dir, IMAGE_EXTENSIONS)
        masks = _scan_tree(mask_dir, self._MASK_EXTENSIONS)
        self.class_source = "classes.txt" if (base / "classes.txt").is_file() and class_names is None else (
            "class_names" if class_names is not None else "num_classes" if num_classes is not None else "masks"
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
        self.split_source = "all" if split == "all" else str(lst) if lst.is_file() else (
            f"sha256(name) < {FOLDER_VAL_FRACTION} of 2**32 -> val" if split in ("train", "val") else "missing"
        )
        if split == "all" or self.split_source.startswith("sha256"):
            ids = sorted(images)
            unmatched = sorted(set(masks) - set(images))
            if unmatched:
                raise _missing_error("image(s) for masks", unmatched, image_dir, self.title)
            if split != "all":
                ids = [i for i in ids if (_name_fraction(i) < FOLDER_VAL_FRACTION) == (split == "val")]
        else:
            if not lst.is_file():
                raise _layout_error(
                    self.title, f"split {split!r} needs {lst} (or use split='all')", self.LAYOUT
                )
            ids = [ln.split("#", 1)[0].strip().strip("/") for ln in lst.read_text().splitlines()]
            ids = [_strip_known_ext(i, images) for i in ids if i]
        img_names = {k: str(v.relative_to(image_dir)) for k, v in images.items()}
        mask_names = {k: str(v.relative_to(mask_dir)) for k, v in masks.items()}
        self._set_samples(ids, _pair(ids, img_names, mask_names, image_dir, mask_dir, self.title))

    def _classes(self, base: Path, num_classes: int | None, names: Sequence[str] | None) -> tuple[str, ...]:
        if num_classes is not None and (not _is_int(num_classes) or num_classes < 1):
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
            raise _layout_error(self.title, f"no {path}: pass num_classes", self.LAYOUT)
        return tuple(f"class_{k}" for k in range(num_classes))

    def record(self) -> dict:
        return {
            **super().record(), "class_names": list(self.class_names), "classes_from": self.class_source,
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


class ScenesSegmentation(SegmentationDataset):
    """The built-in scenes (``dsekit.data.scenes.SceneDataset``): nothing is read from disk.

    ``n`` scenes (default ``max_samples`` or 1000) of ``split`` (``train`` / ``val``, disjoint)
    are generated at ``image_size`` (default 224), so the eval transform does no resampling.
    """

    name = "scenes"
    title = "built-in scenes"
    SPLITS = ("train", "val")
    LAYOUT = "(none: the scenes are generated in memory; root must be None)\n"

    def __init__(
        self,
        root=None,
        split: str = "train",
        *,
        n: int | None = None,
        image_size: int | None = 224,
        resize: int | None = None,
        transform: Callable | None = None,
        max_samples: int | None = None,
        seed: int = 0,
        config=None,
    ) -> None:
        if root is not None:
            raise ValueError(f"the built-in scenes need no root, got root={root!r}")
        super().__init__(
            None, split, image_size=image_size, resize=resize, transform=transform, max_samples=max_samples, seed=seed
        )
        self._check_split(split)
        count = n if n is not None else (max_samples if max_samples is not None else 1000)
        if max_samples is not None:
            count = min(count, max_samples)
        self.scenes = _scenes.SceneDataset(split, n=int(count), image_size=image_size, seed=self.seed, config=config)
        self.num_classes = self.scenes.num_classes
        self.class_names = tuple(self.scenes.classes)
        self.ignore_index = self.scenes.ignore_index
        self.ids = [f"{split}_{i:05d}" for i in range(len(self.scenes))]
        self.available = len(self.scenes)

    def __len__(self) -> int:
        return len(self.scenes)

    def read(self, index: int):
        from torchvision import tv_tensors

        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} scenes")
        image = torch.from_numpy(self.scenes.scenes.images[index]).permute(2, 0, 1).contiguous()
        mask = torch.from_numpy(self.scenes.scenes.masks[index].astype(np.int64))
        return tv_tensors.Image(image), tv_tensors.Mask(mask)

    def record(self) -> dict:
        return {**super().record(), "scenes": self.scenes.scenes.settings()}


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------
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
                          _scenes.NUM_CLASSES, tuple(_scenes.class_names()), ("train", "val"), needs_root=False),
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
        return spec.cls(root, split, **kwargs)
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
