"""Synthetic dense features with known cluster structure (examples, tests, benchmarks)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["clustered_features"]


def clustered_features(
    images: int,
    patches: int = 196,
    dim: int = 384,
    *,
    classes: int = 24,
    classes_per_image: int = 4,
    noise: float = 0.35,
    image_shift: float = 0.3,
    seed: int = 0,
    return_labels: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Dense features ``(images, patches, dim)`` made of semantic classes.

    Orthonormal class centres are shared by all images; each image shows
    ``classes_per_image`` of them, every patch belongs to one, with a per-image shift of
    each class centre (``image_shift``) and isotropic noise (``noise``), both relative to
    the unit distance between centres. With ``return_labels`` the ``(images, patches)``
    class of every patch is returned too.
    """
    if classes > dim:
        raise ValueError(f"classes: at most dim={dim} orthonormal centres, got {classes}")
    if not 1 <= classes_per_image <= classes:
        raise ValueError(f"classes_per_image: expected 1..{classes}, got {classes_per_image}")
    g = torch.Generator().manual_seed(seed)
    centres = torch.linalg.qr(torch.randn(dim, classes, generator=g))[0].T  # (C, dim)
    shown = torch.rand(images, classes, generator=g).argsort(1)[:, :classes_per_image]  # (B, p)
    which = torch.randint(0, classes_per_image, (images, patches), generator=g)
    labels = shown.gather(1, which)  # (B, N)
    shift = image_shift * torch.randn(images, classes, dim, generator=g) / dim**0.5
    rows = torch.arange(images).unsqueeze(1)
    z = centres[labels] + shift[rows, labels] + noise * torch.randn(images, patches, dim, generator=g) / dim**0.5
    return (z, labels) if return_labels else z
