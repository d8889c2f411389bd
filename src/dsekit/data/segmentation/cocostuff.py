"""The COCO-Stuff 164k reader (``COCOStuffDataset``, 171 or 27 classes), its class tables and
label maps."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .base import (
    COMMON_ARGS,
    IGNORE_INDEX,
    SegmentationDataset,
    layout_error,
    missing_error,
    pair_paths,
    read_list,
    scan_dir,
)

__all__ = [
    "COCOSTUFF27_CLASSES",
    "COCOSTUFF_CLASSES",
    "COCOSTUFF_FINE_NAMES",
    "COCOSTUFF_SUPERCATEGORIES",
    "COCOSTUFF_UNUSED_IDS",
    "COCOStuffDataset",
    "cocostuff_coarse_ids",
    "cocostuff_label_map",
]

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
#: ``(supercategory, fine names)`` pairs; ``COCOSTUFF27_CLASSES`` lists the supercategories
COCOSTUFF_SUPERCATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
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
COCOSTUFF27_CLASSES: tuple[str, ...] = tuple(name for name, _ in COCOSTUFF_SUPERCATEGORIES)


@functools.lru_cache(maxsize=1)
def cocostuff_coarse_ids() -> np.ndarray:
    """(182,) int64: the coarse (27-class) id of every fine COCO-Stuff id, from the hierarchy."""
    parent = {fine: c for c, (_, members) in enumerate(COCOSTUFF_SUPERCATEGORIES) for fine in members}
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


class COCOStuffDataset(SegmentationDataset):
    __doc__ = (
        """COCO-Stuff 164k: 171 classes (the used ids of the 182-id maps, renumbered 0..170), or with
    ``coarse=True`` the 27 supercategories of the COCO-Stuff hierarchy (12 thing + 15 stuff, in
    the coarse id order of the unsupervised-segmentation benchmarks); 255 ignored.

    Splits ``train`` / ``train2017`` (118k) and ``val`` / ``val2017`` (5k). Samples are the maps
    in ``stuffthingmaps_trainval2017/<split>/`` (or ``annotations/<split>/``, where the official
    set-up unzips them); each needs its ``<id>.jpg``. ``image_list``: a text file of image ids
    (one per line) restricting the split (e.g. a curated subset). Read here: torchvision's
    ``CocoDetection`` reads the COCO-style JSON files, not these PNG maps.
    """
        + COMMON_ARGS
        + """
        coarse: the 27-class labels instead of 171.
        image_list: optional file of ids to keep."""
    )

    name = "cocostuff"
    title = "COCO-Stuff"
    num_classes = len(COCOSTUFF_CLASSES)
    class_names = COCOSTUFF_CLASSES
    SPLITS = ("train2017", "val2017")
    #: where the maps may be under ROOT: the zip's name, or ``annotations/`` of the official set-up
    MAP_DIRS = ("stuffthingmaps_trainval2017", "annotations")
    _CONVERTED = "_labelTrainIds"  # mmsegmentation's renumbered copies, written beside the maps
    LAYOUT = """\
ROOT/
  stuffthingmaps_trainval2017/        (ROOT may also be this folder; images are then looked for beside it)
    train2017/<id>.png                grey PNG: 0..181 = COCO-Stuff label id - 1 (171 used), 255 = unlabeled
    val2017/<id>.png
  annotations/{train2017,val2017}/    or the same maps here (the official set-up: unzip ... -d annotations/;
                                      <id>_labelTrainIds.png files beside them are skipped)
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
        if base.name == self.MAP_DIRS[0]:
            base = base.parent
        map_dirs = [base / d for d in self.MAP_DIRS]
        if not any(d.is_dir() for d in map_dirs):
            raise layout_error(self.title, f"{' or '.join(map(str, map_dirs))} is missing", self.LAYOUT)
        mask_dir = next((d / sub for d in map_dirs if (d / sub).is_dir()), map_dirs[0] / sub)
        tried = [base / "images" / sub, base / sub]
        image_dir = next((d for d in tried if d.is_dir()), None)
        if not mask_dir.is_dir() or image_dir is None:
            missing = mask_dir if not mask_dir.is_dir() else " and ".join(map(str, tried))
            raise layout_error(self.title, f"{missing} is missing", self.LAYOUT)
        masks = {k: v for k, v in scan_dir(mask_dir, (".png",)).items() if not k.endswith(self._CONVERTED)}
        ids = sorted(masks)
        if image_list is not None:
            path = Path(image_list)
            if not path.is_file():
                raise FileNotFoundError(f"image_list {path} does not exist")
            keep = set(read_list(path))
            ids = [i for i in ids if i in keep]
            unknown = sorted(keep - set(masks))
            if unknown:
                raise missing_error("mask(s) of image_list ids", unknown, mask_dir, self.title)
        images = scan_dir(image_dir, (".jpg", ".jpeg", ".png"))
        self._set_samples(ids, pair_paths(ids, images, masks, image_dir, mask_dir, self.title))

    @property
    def label_spec(self) -> str:
        return "the 171 used ids of 0..181, and 255"
