"""The public generation API of the built-in scenes: ``generate_scenes`` (``Scenes`` with their
metadata) and ``make_scenes`` (plain arrays)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .config import SPLIT_CODE, SceneConfig, check_split, resolve_config, scene_settings
from .render import num_threads, render_chunk, scene_params
from .sources import digit_images, digit_split_indices, texture_bank

__all__ = ["Scenes", "check_n_seed", "generate_scenes", "make_scenes"]

_STREAM_TAG = 0x5CE7E5  # keeps the scene streams apart from other uses of the same seed
_CHUNK = 32  # scenes per vectorised chunk


# ----------------------------------------------------------------------------------------------
# public generation API
# ----------------------------------------------------------------------------------------------
@dataclass
class Scenes:
    """A generated set of scenes and the metadata needed to audit it.

    Attributes:
        images: (n, S, S, 3) uint8 RGB.
        masks: (n, S, S) uint8 class ids (``IGNORE_INDEX`` on digit rims when enabled).
        digit_indices: (n, Dmax) int64 indices into ``load_digits()`` (-1 = none).
        digit_labels: (n, Dmax) int64 digit values 0..9 (-1 = none).
        digit_boxes: (n, Dmax, 4) int64 ``y0, x0, y1, x1`` in scene pixels (-1 = none).
        texture_ids: (n, Rmax) int64 texture class ids of the background regions (-1 = none).
        texture_boxes: (n, Rmax, 4) int64 ``y0, x0, y1, x1`` crop of the texture photo (-1 = none).
    """

    images: np.ndarray
    masks: np.ndarray
    split: str
    seed: int
    config: SceneConfig
    digit_indices: np.ndarray
    digit_labels: np.ndarray
    digit_boxes: np.ndarray
    texture_ids: np.ndarray
    texture_boxes: np.ndarray
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def settings(self) -> dict:
        return scene_settings(self.split, len(self), seed=self.seed, config=self.config)

    def image_labels(self) -> np.ndarray:
        """(n,) the value 0..9 of each scene's largest digit: the scene's image-level label."""
        area = (self.digit_boxes[..., 2] - self.digit_boxes[..., 0]) * (
            self.digit_boxes[..., 3] - self.digit_boxes[..., 1]
        )
        area = np.where(self.digit_labels >= 0, area, -1)
        return self.digit_labels[np.arange(len(self)), area.argmax(axis=1)]


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([_STREAM_TAG, seed, SPLIT_CODE[split], index])


def check_n_seed(n: int, seed: int) -> None:
    """Raise ``ValueError`` unless ``n`` and ``seed`` are non-negative integers (not bools)."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def generate_scenes(
    n: int,
    split: str = "train",
    *,
    image_size: int | None = None,
    seed: int = 0,
    config: SceneConfig | None = None,
    start: int = 0,
) -> Scenes:
    """Generate scenes ``start .. start+n-1`` of ``split`` with their metadata.

    Args:
        n: number of scenes.
        split: ``"train"`` or ``"val"`` (disjoint digits and texture regions).
        image_size: side S of the square scenes (overrides ``config.image_size``).
        seed: non-negative integer; scene ``i`` depends only on ``(seed, split, i, config)``.
        config: generator settings (defaults: ``SceneConfig()``).
        start: index of the first scene (for lazy or sharded generation).
    """
    check_split(split)
    check_n_seed(n, seed)
    check_n_seed(start, 0)
    config = resolve_config(config, image_size)
    S = config.image_size
    _, _, heights, widths = texture_bank(config.textures)
    pool = digit_split_indices(split)
    params = [
        scene_params(_scene_rng(int(seed), split, start + i), config, split, heights, widths, pool) for i in range(n)
    ]
    images = np.empty((n, S, S, 3), dtype=np.uint8)
    masks = np.empty((n, S, S), dtype=np.uint8)

    def render(c: int) -> None:
        render_chunk(params[c : c + _CHUNK], config, images[c : c + _CHUNK], masks[c : c + _CHUNK])

    starts = range(0, n, _CHUNK)
    workers = min(len(starts), num_threads())
    if workers > 1:  # numpy releases the GIL in the heavy gathers: chunks render in parallel
        with ThreadPoolExecutor(max_workers=workers) as ex:
            list(ex.map(render, starts))
    else:
        for c in starts:
            render(c)

    Dmax = config.digits_per_scene[1]
    Rmax = config.regions_per_scene[1]
    digit_indices = np.full((n, Dmax), -1, dtype=np.int64)
    digit_boxes = np.full((n, Dmax, 4), -1, dtype=np.int64)
    texture_ids = np.full((n, Rmax), -1, dtype=np.int64)
    texture_boxes = np.full((n, Rmax, 4), -1, dtype=np.int64)
    for i, p in enumerate(params):
        D, R = len(p.digit_ids), len(p.textures)
        digit_indices[i, :D] = p.digit_ids
        digit_boxes[i, :D] = np.concatenate([p.digit_pos, p.digit_pos + p.digit_sizes[:, None]], axis=1)
        texture_ids[i, :R] = p.textures
        texture_boxes[i, :R] = p.boxes
    _, all_labels = digit_images()
    digit_labels = np.where(digit_indices >= 0, all_labels[np.maximum(digit_indices, 0)], -1)
    return Scenes(
        images=images,
        masks=masks,
        split=split,
        seed=int(seed),
        config=config,
        digit_indices=digit_indices,
        digit_labels=digit_labels,
        digit_boxes=digit_boxes,
        texture_ids=texture_ids,
        texture_boxes=texture_boxes,
        class_names=config.class_names(),
    )


def make_scenes(
    n: int,
    split: str = "train",
    image_size: int | None = None,
    seed: int = 0,
    config: SceneConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scenes as arrays: images (n, S, S, 3) uint8 and masks (n, S, S) uint8."""
    scenes = generate_scenes(n, split, image_size=image_size, seed=seed, config=config)
    return scenes.images, scenes.masks
