"""The built-in scenes as a ``torch.utils.data.Dataset`` of ``(image, mask)`` pairs (``SceneDataset``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .config import IGNORE_INDEX, SceneConfig
from .generate import generate_scenes

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SceneDataset"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

try:  # torch is a dependency of the package, but keep the numpy generator importable without it
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _TorchDataset = object  # type: ignore[assignment,misc]


class SceneDataset(_TorchDataset):
    """The built-in scenes as a ``torch.utils.data.Dataset`` of ``(image, mask)`` pairs.

    All scenes are generated once at construction (``n * S * S * 4`` bytes).

    Without ``transform`` an item is ``(image float32 (3, S, S) ImageNet-normalised,
    mask int64 (S, S))``. With ``transform``, it is called as ``transform(image, mask)`` on
    ``torchvision.tv_tensors.Image`` (uint8, (3, S, S)) and ``tv_tensors.Mask`` (int64, (S, S)),
    so joint ``torchvision.transforms.v2`` pipelines work, and its result is returned.
    """

    def __init__(
        self,
        split: str = "train",
        n: int = 1000,
        image_size: int | None = None,
        seed: int = 0,
        transform: Callable | None = None,
        config: SceneConfig | None = None,
    ) -> None:
        self.scenes = generate_scenes(n, split, image_size=image_size, seed=seed, config=config)
        self.split = split
        self.transform = transform
        self.classes = self.scenes.class_names
        self.num_classes = self.scenes.num_classes
        self.ignore_index = IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int):
        import torch

        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} scenes")
        image = torch.from_numpy(self.scenes.images[index]).permute(2, 0, 1).contiguous()
        mask = torch.from_numpy(self.scenes.masks[index].astype(np.int64))
        if self.transform is not None:
            from torchvision import tv_tensors

            return self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (image.float() / 255.0 - mean) / std, mask
