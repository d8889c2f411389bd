"""Joint image/mask transforms of the segmentation readers: ``EvalTransform`` and ``TrainTransform``.

Both work on ``torchvision.transforms.v2`` tensors (masks with nearest-neighbour interpolation)
and finish with ``finish_sample`` (uint8 image -> normalised float, mask -> int64). The small
argument check ``is_int`` and the seed-stream tag ``STREAM_TAG`` live here because every other
module of the package builds on this one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..images import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "STREAM_TAG",
    "EvalTransform",
    "TrainTransform",
    "finish_sample",
    "is_int",
]

#: keeps the seeded streams of this package (train-transform draws, ``max_samples`` subsets)
#: apart from other uses of the same seed
STREAM_TAG = 0x5E6DA7


def is_int(v) -> bool:
    """True for a Python or numpy integer that is not a ``bool``."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


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


def finish_sample(image, mask, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
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
        if not is_int(self.image_size) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        if self.resize is not None and (not is_int(self.resize) or self.resize < self.image_size):
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
        return finish_sample(image, mask, self.mean, self.std)


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
        if not is_int(self.image_size) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        lo, hi = (float(v) for v in self.scale)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        rlo, rhi = (float(v) for v in self.ratio)
        if not 0 < rlo <= rhi:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {self.ratio}")
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"hflip must be a probability in [0, 1], got {self.hflip}")
        if not is_int(self.seed) or self.seed < 0:
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
        if not is_int(epoch) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch, self._gen, self._gen_key = int(epoch), None, None

    def _generator(self) -> torch.Generator:
        info = torch.utils.data.get_worker_info()
        wid = -1 if info is None else int(info.id)
        key = (os.getpid(), wid)
        if self._gen_key != key:
            entropy = [STREAM_TAG, int(self.seed), int(self.epoch), wid + 1]
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
        return finish_sample(image, mask, self.mean, self.std)


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    try:
        return InterpolationMode(name)
    except ValueError:
        raise ValueError(f"interpolation must be one of {[m.value for m in InterpolationMode]}, got {name!r}") from None
