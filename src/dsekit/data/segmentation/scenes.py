"""The built-in scenes as a segmentation dataset (``ScenesSegmentation``): nothing read from disk."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .. import scenes as scene_data
from .base import SegmentationDataset

__all__ = ["ScenesSegmentation"]


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
        self.scenes = scene_data.SceneDataset(split, n=int(count), image_size=image_size, seed=self.seed, config=config)
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

    @property
    def image_labels(self) -> list[int]:
        """Each scene's image-level label: the value 0..9 of its largest digit."""
        return [int(v) for v in self.scenes.scenes.image_labels()]

    image_label_names = tuple(str(d) for d in range(10))  #: names of the image-level labels

    def texture_labels(self) -> tuple[list[int], list[str]]:
        """Each scene's dominant texture (the texture class covering most of its pixels) and the
        texture names: another image-level label of the scenes."""
        masks = self.scenes.scenes.masks
        textures = len(self.scenes.scenes.config.textures)
        counts = np.stack([(masks == c).reshape(len(masks), -1).sum(axis=1) for c in range(textures)], axis=1)
        return [int(v) for v in counts.argmax(axis=1)], list(self.class_names[:textures])

    def record(self) -> dict:
        return {**super().record(), "scenes": self.scenes.scenes.settings()}
