"""Settings of the scene generator: ``SceneConfig``, the texture list, split names, class names
and the JSON-able description of a generated set (``scene_settings``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "RIM_BAND",
    "SPLITS",
    "SPLIT_CODE",
    "TEXTURES",
    "SceneConfig",
    "check_split",
    "class_names",
    "num_classes",
    "resolve_config",
    "scene_settings",
]

IGNORE_INDEX = 255
SPLITS = ("train", "val")
#: split name -> the code that separates the splits' random streams
SPLIT_CODE = {"train": 0, "val": 1}
#: version of the generator's output, written into ``scene_settings`` and ``scenes.json``
FORMAT_VERSION = 1
#: half-width of a digit's anti-aliased rim (in intensity units); ``digit_threshold`` must keep
#: the whole rim inside (0, 1)
RIM_BAND = 0.08

# name -> file inside the scikit-image package's ``data`` directory (bundled in the wheel)
TEXTURES: dict[str, str] = {
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "tissue": "ihc.png",
    "stars": "hubble_deep_field.jpg",
}

NUM_CLASSES = len(TEXTURES) + 10


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneConfig:
    """Settings of the scene generator.

    Ranges are inclusive ``(low, high)``. Sizes given as fractions are relative to the side of
    the output image (for digits) or of the available half of a texture photo (for crops).
    Every background region gets its own colour jitter: ``v * contrast * tint_c + brightness``
    with ``contrast`` in ``1 +- contrast_jitter``, per-channel ``tint_c`` in ``1 +- tint_jitter``
    and ``brightness`` in ``+- brightness_jitter`` (0..255 scale).

    A digit covers the pixels where its upscaled 8x8 image reaches ``digit_threshold`` of its
    peak (lower: thicker strokes, 0.5 by default). ``merge_digits`` labels every digit with one
    ``digit`` class (``T`` classes of texture + 1) instead of one class per digit value.
    """

    image_size: int = 224
    textures: tuple[str, ...] = tuple(TEXTURES)
    regions_per_scene: tuple[int, int] = (2, 3)
    digits_per_scene: tuple[int, int] = (2, 4)
    digit_size: tuple[float, float] = (0.22, 0.40)
    texture_crop: tuple[float, float] = (0.6, 1.0)
    brightness_jitter: float = 20.0
    contrast_jitter: float = 0.2
    tint_jitter: float = 0.08
    ignore_border: bool = True
    digit_threshold: float = 0.5
    merge_digits: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "textures", tuple(self.textures))
        object.__setattr__(self, "regions_per_scene", tuple(int(v) for v in self.regions_per_scene))
        object.__setattr__(self, "digits_per_scene", tuple(int(v) for v in self.digits_per_scene))
        object.__setattr__(self, "digit_size", tuple(float(v) for v in self.digit_size))
        object.__setattr__(self, "texture_crop", tuple(float(v) for v in self.texture_crop))
        if not isinstance(self.image_size, (int, np.integer)) or self.image_size < 16:
            raise ValueError(f"image_size must be an integer >= 16, got {self.image_size!r}")
        unknown = [t for t in self.textures if t not in TEXTURES]
        if unknown:
            raise ValueError(f"unknown texture(s) {unknown}; known textures: {sorted(TEXTURES)}")
        if len(set(self.textures)) != len(self.textures) or not self.textures:
            raise ValueError(f"textures must be distinct and non-empty, got {self.textures}")
        lo, hi = self.regions_per_scene
        if not (1 <= lo <= hi <= len(self.textures)):
            raise ValueError(
                f"regions_per_scene must satisfy 1 <= low <= high <= len(textures)="
                f"{len(self.textures)}, got {self.regions_per_scene}"
            )
        lo, hi = self.digits_per_scene
        if not (1 <= lo <= hi <= 16):
            raise ValueError(f"digits_per_scene must satisfy 1 <= low <= high <= 16, got {self.digits_per_scene}")
        size_lo, size_hi = self.digit_size
        if not (0.0 < size_lo <= size_hi <= 1.0) or round(size_lo * self.image_size) < 4:
            raise ValueError(
                f"digit_size must satisfy 0 < low <= high <= 1 with low * image_size >= 4, got {self.digit_size}"
            )
        crop_lo, crop_hi = self.texture_crop
        if not (0.0 < crop_lo <= crop_hi <= 1.0):
            raise ValueError(f"texture_crop must satisfy 0 < low <= high <= 1, got {self.texture_crop}")
        if not (RIM_BAND < self.digit_threshold <= 1.0 - RIM_BAND):
            raise ValueError(f"digit_threshold must be in ({RIM_BAND}, {1 - RIM_BAND}], got {self.digit_threshold}")
        if self.brightness_jitter < 0 or not (0 <= self.contrast_jitter < 1) or not (0 <= self.tint_jitter < 1):
            raise ValueError(
                "brightness_jitter must be >= 0 and contrast_jitter, tint_jitter in [0, 1), got "
                f"{self.brightness_jitter}, {self.contrast_jitter}, {self.tint_jitter}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.textures) + (1 if self.merge_digits else 10)

    def class_names(self) -> list[str]:
        return list(self.textures) + (["digit"] if self.merge_digits else [f"digit_{d}" for d in range(10)])


def resolve_config(config: SceneConfig | None, image_size: int | None) -> SceneConfig:
    """``config`` (default ``SceneConfig()``), checked, with ``image_size`` applied when given."""
    config = SceneConfig() if config is None else config
    if not isinstance(config, SceneConfig):
        raise TypeError(f"config must be a SceneConfig, got {type(config).__name__}")
    if image_size is not None and image_size != config.image_size:
        config = SceneConfig(**{**asdict(config), "image_size": image_size})
    return config


def class_names(config: SceneConfig | None = None) -> list[str]:
    """Class names indexed by class id: the textures, then ``digit_0 .. digit_9`` (or ``digit``)."""
    return resolve_config(config, None).class_names()


def num_classes(config: SceneConfig | None = None) -> int:
    """Number of classes (textures + 10 digits, or + 1 merged), not counting ``IGNORE_INDEX``."""
    return resolve_config(config, None).num_classes


def scene_settings(
    split: str, n: int, *, image_size: int | None = None, seed: int = 0, config: SceneConfig | None = None
) -> dict:
    """A JSON-able description of a generated set (for run records and hashes)."""
    config = resolve_config(config, image_size)
    return {
        "source": "dsekit.data.scenes",
        "format_version": FORMAT_VERSION,
        "split": split,
        "n": int(n),
        "seed": int(seed),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
    }


def check_split(split: str) -> None:
    """Raise ``ValueError`` unless ``split`` is one of ``SPLITS``."""
    if split not in SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
