"""What a training run's names mean, without importing the trainer: the methods, the training
precisions and the architecture presets (the command line shows them in its help)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["METHODS", "PRESETS", "TRAIN_PRECISIONS", "ArchPreset", "DEMO_REGULARIZE_BETA"]

METHODS = ("dino", "mocov3")
#: the precisions training allows (``fp32``, or ``bf16`` autocast)
TRAIN_PRECISIONS = ("fp32", "bf16")
#: β of the DSE regulariser in ``dsekit demo --regularize``
DEMO_REGULARIZE_BETA = 0.1


# --------------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchPreset:
    """A named small architecture: a timm model name plus kwargs and the training image size."""

    arch: str
    model_kwargs: Mapping[str, Any]
    image_size: int
    description: str = ""


PRESETS: dict[str, ArchPreset] = {
    "vit_tiny_scenes": ArchPreset(
        "vit_tiny_patch16_224",
        {"patch_size": 8, "embed_dim": 192, "depth": 4, "num_heads": 3},
        64,
        "ViT-Ti width (192, 3 heads), 4 blocks, 8-pixel patches at 64x64: an 8x8 patch grid; trains on a laptop CPU",
    ),
}
