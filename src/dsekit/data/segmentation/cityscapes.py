"""The Cityscapes reader (``CityscapesDataset``, 19 train ids), its class names and label map."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import (
    COMMON_ARGS,
    IGNORE_INDEX,
    SegmentationDataset,
    identity_label_map,
    layout_error,
    missing_error,
)

__all__ = ["CITYSCAPES_CLASSES", "CityscapesDataset", "cityscapes_label_map"]


def _cityscapes_table() -> list:
    from torchvision.datasets import Cityscapes

    return list(Cityscapes.classes)


CITYSCAPES_CLASSES: tuple[str, ...] = tuple(
    c.name for c in sorted((c for c in _cityscapes_table() if 0 <= c.train_id < 255), key=lambda c: c.train_id)
)


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


class CityscapesDataset(SegmentationDataset):
    __doc__ = (
        """Cityscapes (fine annotations): the 19 train ids, 255 ignored.

    Splits ``train`` (2975) and ``val`` (500). ``torchvision.datasets.Cityscapes`` lists the
    files and its ``classes`` table gives the train ids; masks are read here, as its reader
    returns raw ``labelIds`` without that mapping. Labels come from ``*_gtFine_labelTrainIds.png``
    when every one of the split exists (``label_type="auto"``), else from
    ``*_gtFine_labelIds.png`` mapped to train ids.
    """
        + COMMON_ARGS
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
    {train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        grey PNG: 0..33 (mapped to the 19 train ids,
                                                                         the other ids to 255)
    {train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   optional (cityscapesScripts): 0..18, 255 = ignore
    (the _gtFine_color.png, _gtFine_instanceIds.png and _gtFine_polygons.json files are not read)
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
                raise layout_error(self.title, f"{d} is missing", self.LAYOUT)
        from torchvision.datasets import Cityscapes

        tv = Cityscapes(str(base), split=split, mode="fine", target_type="semantic")
        images = sorted(Path(p) for p in tv.images if p.endswith("_leftImg8bit.png"))
        mask_dir = base / "gtFine" / split
        ids = [f"{p.parent.name}/{p.name[: -len('_leftImg8bit.png')]}" for p in images]
        have = {t: [(mask_dir / (i + suffix)).is_file() for i in ids] for t, suffix in self._SUFFIX.items()}
        if label_type == "auto":
            label_type = "labelTrainIds" if ids and all(have["labelTrainIds"]) else "labelIds"
        missing = [i + self._SUFFIX[label_type] for i, ok in zip(ids, have[label_type], strict=True) if not ok]
        if missing:
            raise missing_error(f"{label_type} mask(s)", missing, mask_dir, self.title)
        self.label_type = label_type
        self.label_map = cityscapes_label_map(train_ids=label_type == "labelTrainIds")
        self._set_samples(
            ids, [(p, mask_dir / (i + self._SUFFIX[label_type])) for p, i in zip(images, ids, strict=True)]
        )

    @property
    def label_spec(self) -> str:
        return "labelIds 0..33" if self.label_type == "labelIds" else "train ids 0..18 and 255"
