"""The training images of a run and the method's augmented views of them (lightly transforms)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from ..data.images import load_image_sample
from .config import ResolvedConfig

__all__ = ["ViewsDataset", "load_images", "view_transform"]

#: a PIL image -> its list of augmented views
_Views = Callable[[Any], list[Tensor]]


class ViewsDataset(torch.utils.data.Dataset):
    """Images held as uint8 ``(n, S, S, 3)``; an item is ``transform(PIL image)`` (a list of views)."""

    def __init__(self, images: np.ndarray, transform: Callable[[Any], list[Tensor]]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> list[Tensor]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index]))


def load_images(run: ResolvedConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """The training images as uint8 ``(n, S, S, 3)`` and their provenance record."""
    cfg = run.cfg
    if cfg.images is not None and not Path(cfg.images).exists():
        raise FileNotFoundError(f"images: folder {cfg.images} does not exist")
    sample = load_image_sample(
        cfg.images,
        cfg.num_images,
        cfg.seed,
        run.image_size,
        mean=None,
        std=None,
        dtype=torch.float32,
        scenes=cfg.scenes,
    )
    if len(sample) < cfg.batch_size:
        raise ValueError(
            f"batch_size: {cfg.batch_size} is larger than the {len(sample)} readable images in {sample.source}"
        )
    arr = sample.images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return np.ascontiguousarray(arr.numpy()), sample.record()


def view_transform(run: ResolvedConfig) -> Callable[[Any], list[Tensor]]:
    """The method's lightly views; blur sigmas scale with the image size (``(0.1, 2.0)`` at 224)."""
    scale = run.image_size / 224
    sigmas = (0.1 * scale, 2.0 * scale)
    cfg = run.cfg
    if cfg.method == "dino":
        from lightly.transforms import DINOTransform

        extra: dict[str, Any] = {}
        if cfg.crop_min_scale is not None:
            extra["global_crop_scale"] = (cfg.crop_min_scale, 1.0)
        if cfg.cj_strength is not None:
            extra["cj_strength"] = cfg.cj_strength
        dino = DINOTransform(
            global_crop_size=run.image_size,
            local_crop_size=run.local_crop_size,
            n_local_views=cfg.local_crops,
            sigmas=sigmas,
            **extra,
        )
        return cast(_Views, dino)  # lightly types the views as tensors or images; each of its views ends in ToTensor
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    extra = {}
    if cfg.crop_min_scale is not None:
        extra["min_scale"] = cfg.crop_min_scale
    if cfg.cj_strength is not None:
        extra["cj_strength"] = cfg.cj_strength
    # MoCo v3 uses BYOL's asymmetric augmentations (blur 1.0 / 0.1, solarisation 0 / 0.2)
    byol = BYOLTransform(
        BYOLView1Transform(input_size=run.image_size, sigmas=sigmas, **extra),
        BYOLView2Transform(input_size=run.image_size, sigmas=sigmas, **extra),
    )
    return cast(_Views, byol)  # as above: both views end in ToTensor
