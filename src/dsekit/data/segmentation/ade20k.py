"""The ADE20K SceneParsing reader (``ADE20KDataset``), its class names and label map."""

from __future__ import annotations

import numpy as np

from .base import COMMON_ARGS, IGNORE_INDEX, SegmentationDataset, layout_error, pair_paths, scan_dir

__all__ = ["ADE20K_CLASSES", "ADE20KDataset", "ade20k_label_map"]

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


def ade20k_label_map() -> np.ndarray:
    """ADE20K: 0 (other / unlabeled) -> 255, k in 1..150 -> k - 1."""
    lut = np.full(256, -1, dtype=np.int64)
    lut[0] = IGNORE_INDEX
    lut[1 : len(ADE20K_CLASSES) + 1] = np.arange(len(ADE20K_CLASSES))
    return lut


class ADE20KDataset(SegmentationDataset):
    __doc__ = (
        """ADE20K SceneParsing (``ADEChallengeData2016``): 150 classes; mask value 0 ("other") is
    ignored (-> 255) and k in 1..150 becomes class k - 1.

    Splits ``train`` / ``training`` (20210 images) and ``val`` / ``validation`` (2000). Read here:
    torchvision has no ADE20K reader.
    """
        + COMMON_ARGS
    )

    name = "ade20k"
    title = "ADE20K"
    num_classes = len(ADE20K_CLASSES)
    class_names = ADE20K_CLASSES
    SPLITS = ("training", "validation")
    LAYOUT = """\
ROOT/
  ADEChallengeData2016/               (ROOT may also be ADEChallengeData2016/ itself)
    objectInfo150.txt, sceneCategories.txt   (not read)
    images/
      training/ADE_train_<n>.jpg
      validation/ADE_val_<n>.jpg
    annotations/
      training/ADE_train_<n>.png      grey ("L") PNG: 0 = other (ignored), 1..150 = classes 0..149
      validation/ADE_val_<n>.png
"""

    def __init__(self, root, split: str = "train", **kwargs) -> None:
        super().__init__(root, split, **kwargs)
        self.label_map = ade20k_label_map()
        sub = self._check_split(split, {"train": "training", "val": "validation"})
        base = self._check_root()
        tried = [base, base / "ADEChallengeData2016"]
        found = next((c for c in tried if (c / "images").is_dir() and (c / "annotations").is_dir()), None)
        if found is None:
            raise layout_error(
                self.title, f"no images/ and annotations/ in {' or '.join(map(str, tried))}", self.LAYOUT
            )
        base = found
        image_dir, mask_dir = base / "images" / sub, base / "annotations" / sub
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise layout_error(self.title, f"{d} is missing", self.LAYOUT)
        images = scan_dir(image_dir, (".jpg", ".jpeg", ".png"))
        ids = sorted(images)
        self._set_samples(ids, pair_paths(ids, images, scan_dir(mask_dir, (".png",)), image_dir, mask_dir, self.title))

    @property
    def label_spec(self) -> str:
        return "0 (ignored) and 1..150"
