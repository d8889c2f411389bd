"""Built-in dense data: handwritten digits on texture photographs, with per-pixel masks.

Every scene is made from real images that ship inside installed packages, so nothing is
downloaded:

* backgrounds are texture photographs bundled in the scikit-image wheel (``brick``, ``grass``,
  ``gravel``, ``ihc`` and ``hubble_deep_field`` from ``skimage/data/``), read straight from the
  package directory;
* foreground objects are the 1797 handwritten digits of scikit-learn's ``load_digits`` (8x8,
  10 classes), upscaled, thresholded into shape masks and painted in a colour that contrasts
  with the background under them.

A scene's background is split into 2-3 regions by a randomly warped Voronoi partition (smooth
boundaries); each region shows a crop of a different texture photo. Class ids:

* ``0 .. T-1``: background textures (``T = len(config.textures)``, 5 by default),
* ``T .. T+9``: digits ``0 .. 9`` (``T``: every digit, with ``SceneConfig(merge_digits=True)``),
* ``IGNORE_INDEX`` (255): the thin anti-aliased rim of each digit (optional).

Train and validation splits are disjoint by construction: they draw from disjoint digit
instances (a fixed, seed-independent, class-stratified 80/20 split of ``load_digits``) and from
disjoint halves of every texture photo (left half for ``train``, right half for ``val``).

Generation is deterministic: scene ``i`` of a split depends only on ``(seed, split, i)`` and
the config, so ``make_scenes(10)`` is a prefix of ``make_scenes(1000)``. Pixel work is
vectorised over chunks of scenes; the decoded photos are cached once per process.
"""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "SPLITS",
    "TEXTURES",
    "SceneConfig",
    "Scenes",
    "SceneDataset",
    "SceneWriteResult",
    "class_names",
    "num_classes",
    "digit_split_indices",
    "texture_split_bounds",
    "generate_scenes",
    "make_scenes",
    "write_scenes",
    "read_scenes",
    "scene_settings",
]

IGNORE_INDEX = 255
SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 0, "val": 1}
_STREAM_TAG = 0x5CE7E5  # keeps the scene streams apart from other uses of the same seed
_FORMAT_VERSION = 1
_CHUNK = 32  # scenes per vectorised chunk

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
        lo, hi = self.digit_size
        if not (0.0 < lo <= hi <= 1.0) or round(lo * self.image_size) < 4:
            raise ValueError(
                f"digit_size must satisfy 0 < low <= high <= 1 with low * image_size >= 4, got {self.digit_size}"
            )
        lo, hi = self.texture_crop
        if not (0.0 < lo <= hi <= 1.0):
            raise ValueError(f"texture_crop must satisfy 0 < low <= high <= 1, got {self.texture_crop}")
        if not (_BAND < self.digit_threshold <= 1.0 - _BAND):
            raise ValueError(f"digit_threshold must be in ({_BAND}, {1 - _BAND}], got {self.digit_threshold}")
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


def _resolve_config(config: SceneConfig | None, image_size: int | None) -> SceneConfig:
    config = SceneConfig() if config is None else config
    if not isinstance(config, SceneConfig):
        raise TypeError(f"config must be a SceneConfig, got {type(config).__name__}")
    if image_size is not None and image_size != config.image_size:
        config = SceneConfig(**{**asdict(config), "image_size": image_size})
    return config


def class_names(config: SceneConfig | None = None) -> list[str]:
    """Class names indexed by class id: the textures, then ``digit_0 .. digit_9`` (or ``digit``)."""
    return _resolve_config(config, None).class_names()


def num_classes(config: SceneConfig | None = None) -> int:
    """Number of classes (textures + 10 digits, or + 1 merged), not counting ``IGNORE_INDEX``."""
    return _resolve_config(config, None).num_classes


def scene_settings(
    split: str, n: int, *, image_size: int | None = None, seed: int = 0, config: SceneConfig | None = None
) -> dict:
    """A JSON-able description of a generated set (for run records and hashes)."""
    config = _resolve_config(config, image_size)
    return {
        "source": "dsekit.data.scenes",
        "format_version": _FORMAT_VERSION,
        "split": split,
        "n": int(n),
        "seed": int(seed),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
    }


# ----------------------------------------------------------------------------------------------
# source images (bundled in installed packages, decoded once per process)
# ----------------------------------------------------------------------------------------------
def _skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).resolve().parent / "data"


@functools.lru_cache(maxsize=None)
def _texture_photo(name: str) -> np.ndarray:
    """The texture photo ``name`` as an (H, W, 3) uint8 array, read from the skimage package."""
    from PIL import Image

    path = _skimage_data_dir() / TEXTURES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"texture photo {path} is missing: the installed scikit-image does not bundle "
            f"{TEXTURES[name]!r} (reinstall scikit-image)"
        )
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    arr = np.ascontiguousarray(arr)
    arr.setflags(write=False)
    return arr


@functools.lru_cache(maxsize=None)
def _texture_bank(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All photos as one flat array of packed pixels ``r | g << 8 | b << 16`` (P,) uint32,
    with per-texture offsets, heights and widths."""
    photos = [_texture_photo(n) for n in names]
    heights = np.array([p.shape[0] for p in photos], dtype=np.int64)
    widths = np.array([p.shape[1] for p in photos], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(heights * widths)[:-1]]).astype(np.int64)
    flat = np.concatenate([p.reshape(-1, 3) for p in photos], axis=0).astype(np.uint32)
    bank = flat[:, 0] | (flat[:, 1] << 8) | (flat[:, 2] << 16)
    bank.setflags(write=False)
    return bank, offsets, heights, widths


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits: images (1797, 8, 8) float32 in [0, 1], labels (1797,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    labels = d.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def digit_split_indices(split: str) -> np.ndarray:
    """Indices into ``load_digits()`` used by ``split``.

    A fixed, seed-independent, class-stratified split: within each class, every fifth instance
    (by order of appearance) goes to ``val``, the others to ``train``.
    """
    _check_split(split)
    _, labels = _digits()
    rank = np.zeros_like(labels)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(idx.size)
    is_val = rank % 5 == 4
    return np.flatnonzero(is_val if split == "val" else ~is_val)


def texture_split_bounds(name: str, split: str) -> tuple[int, int, int, int]:
    """The part ``(y0, x0, y1, x1)`` (half-open) of texture photo ``name`` used by ``split``.

    ``train`` uses the left half of every photo and ``val`` the right half.
    """
    _check_split(split)
    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; known textures: {sorted(TEXTURES)}")
    h, w = _texture_photo(name).shape[:2]
    return _half_bounds(h, w, split)


def _check_split(split: str) -> None:
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# ----------------------------------------------------------------------------------------------
# per-scene parameters (one private generator per scene)
# ----------------------------------------------------------------------------------------------
@dataclass
class _SceneParams:
    seeds: np.ndarray  # (R, 2) Voronoi sites in [0, 1]^2 (y, x)
    warp: np.ndarray  # (2, 2, 4) per warped axis, per sinusoid: amplitude, fy, fx, phase
    textures: np.ndarray  # (R,) texture index into config.textures
    boxes: np.ndarray  # (R, 4) y0, x0, y1, x1 in photo pixels
    flips: np.ndarray  # (R, 2) bool (vertical, horizontal)
    gains: np.ndarray  # (R, 3) per-channel gain
    biases: np.ndarray  # (R,) additive brightness
    digit_ids: np.ndarray  # (D,) indices into load_digits
    digit_sizes: np.ndarray  # (D,) side in pixels
    digit_pos: np.ndarray  # (D, 2) top-left (y, x)
    digit_colours: np.ndarray  # (D, 2, 3) dark and bright candidate colours


def _scene_params(
    rng: np.random.Generator, config: SceneConfig, split: str, heights: np.ndarray, widths: np.ndarray, pool: np.ndarray
) -> _SceneParams:
    S = config.image_size
    T = len(config.textures)
    R = int(rng.integers(config.regions_per_scene[0], config.regions_per_scene[1] + 1))
    # Voronoi sites spread around the centre so that every region has a fair share of the image
    theta0 = rng.uniform(0, 2 * np.pi)
    radius = rng.uniform(0.2, 0.4)
    ang = theta0 + 2 * np.pi * np.arange(R) / R + rng.uniform(-0.3, 0.3, size=R)
    seeds = 0.5 + radius * np.stack([np.sin(ang), np.cos(ang)], axis=1)
    if R == 1:
        seeds = np.array([[0.5, 0.5]])
    warp = np.zeros((2, 2, 4))
    warp[..., 0] = rng.uniform(0.03, 0.12, size=(2, 2))
    warp[..., 1:3] = rng.uniform(-2.0, 2.0, size=(2, 2, 2))
    warp[..., 3] = rng.uniform(0, 2 * np.pi, size=(2, 2))

    tex = rng.choice(T, size=R, replace=False)
    boxes = np.zeros((R, 4), dtype=np.int64)
    for r, t in enumerate(tex):
        y0b, x0b, y1b, x1b = _half_bounds(int(heights[t]), int(widths[t]), split)
        avail = min(y1b - y0b, x1b - x0b)
        side = max(8, int(rng.uniform(*config.texture_crop) * avail))
        y0 = y0b + int(rng.integers(0, y1b - y0b - side + 1))
        x0 = x0b + int(rng.integers(0, x1b - x0b - side + 1))
        boxes[r] = (y0, x0, y0 + side, x0 + side)
    flips = rng.random((R, 2)) < 0.5
    contrast = 1.0 + rng.uniform(-config.contrast_jitter, config.contrast_jitter, size=(R, 1))
    tint = 1.0 + rng.uniform(-config.tint_jitter, config.tint_jitter, size=(R, 3))
    gains = contrast * tint
    biases = rng.uniform(-config.brightness_jitter, config.brightness_jitter, size=R)

    D = int(rng.integers(config.digits_per_scene[0], config.digits_per_scene[1] + 1))
    digit_ids = pool[rng.choice(pool.size, size=D, replace=False)]
    lo, hi = config.digit_size
    sizes = np.clip(np.round(rng.uniform(lo, hi, size=D) * S), 4, S).astype(np.int64)
    pos = np.zeros((D, 2), dtype=np.int64)
    placed: list[tuple[int, int, int]] = []
    for d in range(D):
        s = int(sizes[d])
        cand = rng.integers(0, S - s + 1, size=(12, 2))
        choice = cand[-1]
        for c in cand:  # first candidate that barely overlaps the digits already placed
            if all(_overlap(c[0], c[1], s, py, px, ps) <= 0.1 * min(s, ps) ** 2 for py, px, ps in placed):
                choice = c
                break
        pos[d] = choice
        placed.append((int(choice[0]), int(choice[1]), s))
    dark = rng.uniform(0, 70, size=(D, 3))
    bright = rng.uniform(185, 255, size=(D, 3))
    colours = np.stack([dark, bright], axis=1)
    return _SceneParams(seeds, warp, tex, boxes, flips, gains, biases, digit_ids, sizes, pos, colours)


def _half_bounds(h: int, w: int, split: str) -> tuple[int, int, int, int]:
    half = w // 2
    return (0, 0, h, half) if split == "train" else (0, half, h, w)


def _overlap(y0: int, x0: int, s0: int, y1: int, x1: int, s1: int) -> int:
    dy = min(y0 + s0, y1 + s1) - max(y0, y1)
    dx = min(x0 + s0, x1 + s1) - max(x0, x1)
    return max(dy, 0) * max(dx, 0)


# ----------------------------------------------------------------------------------------------
# pixel synthesis (vectorised over a chunk of scenes)
# ----------------------------------------------------------------------------------------------
def _region_maps(params: Sequence[_SceneParams], S: int, R: int) -> np.ndarray:
    """Warped-Voronoi region index per pixel, (m, S, S) int32.

    The nearest site of the warped position ``w(a, b)`` maximises ``<w, s_r> - |s_r|^2 / 2``;
    with a sinusoidal warp this score is a low-rank bilinear form in (row, column), so all
    scores come out of one batched matrix product ``P_r (S, 11) @ Q (11, S)``.
    """
    m = len(params)
    g = (np.arange(S, dtype=np.float64) + 0.5) / S
    seeds = np.zeros((m, R, 2))
    const = np.full((m, R), 1e6)  # absent regions never win
    warp = np.zeros((m, 2, 2, 4))
    for i, p in enumerate(params):
        seeds[i, : len(p.seeds)] = p.seeds
        const[i, : len(p.seeds)] = 0.5 * (p.seeds**2).sum(1)
        warp[i] = p.warp
    ones = np.ones((m, S))
    left, right = [], []  # left factors along rows (m, S, .), right factors along columns (m, ., S)
    for axis in range(2):  # warped y, then warped x
        lf = [np.broadcast_to(g, (m, S)) if axis == 0 else ones]
        rf = [ones if axis == 0 else np.broadcast_to(g, (m, S))]
        for term in range(2):
            amp, fy, fx, ph = (warp[:, axis, term, j, None] for j in range(4))
            alpha = 2 * np.pi * fy * g + ph
            beta = 2 * np.pi * fx * g
            lf += [amp * np.sin(alpha), amp * np.cos(alpha)]
            rf += [np.cos(beta), np.sin(beta)]
        left.append(np.stack(lf, axis=-1))  # (m, S, 5)
        right.append(np.stack(rf, axis=1))  # (m, 5, S)
    P = np.concatenate(
        [
            seeds[:, :, 0, None, None] * left[0][:, None],
            seeds[:, :, 1, None, None] * left[1][:, None],
            -const[:, :, None, None] * np.ones((1, 1, S, 1)),
        ],
        axis=-1,
    ).astype(np.float32)  # (m, R, S, 11)
    Q = np.concatenate([right[0], right[1], ones[:, None]], axis=1).astype(np.float32)  # (m, 11, S)
    scores = np.matmul(P, Q[:, None])  # (m, R, S, S)
    best = scores[:, 0].copy()
    region = np.zeros((m, S, S), dtype=np.int32)
    for r in range(1, R):  # argmax over regions, cheaper than a strided reduction
        better = scores[:, r] > best
        region[better] = r
        np.maximum(best, scores[:, r], out=best)
    return region


def _num_threads() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _render_chunk(
    params: Sequence[_SceneParams], config: SceneConfig, images: np.ndarray, masks: np.ndarray
) -> None:
    """Render a chunk of scenes into images (m, S, S, 3) uint8 and masks (m, S, S) uint8."""
    S = config.image_size
    m = len(params)
    R = max(len(p.textures) for p in params)
    bank, offsets, _, widths = _texture_bank(config.textures)
    region = _region_maps(params, S, R)  # (m, S, S)

    # Per (scene, region) tables; every pixel then looks up its row k = scene * R + region.
    # Source pixel = row_tab[k, a] + col_tab[k, b] (nearest-neighbour sampling of the crop,
    # flips folded in); colour jitter is a per-(k, channel) lookup table on uint8 values.
    rows = np.zeros((m, R, S), dtype=np.int32)
    cols = np.zeros((m, R, S), dtype=np.int32)
    lut = np.zeros((3, m, R, 256), dtype=np.uint8)
    cls = np.zeros((m, R), dtype=np.uint8)
    ar = np.arange(S)
    v = np.arange(256, dtype=np.float64)
    for i, p in enumerate(params):
        for r, t in enumerate(p.textures):
            y0, x0, y1, _ = (int(b) for b in p.boxes[r])
            side = y1 - y0
            a = ar[::-1] if p.flips[r, 0] else ar
            b = ar[::-1] if p.flips[r, 1] else ar
            rows[i, r] = offsets[t] + (y0 + (a * side) // S) * widths[t]
            cols[i, r] = x0 + (b * side) // S
            lut[:, i, r] = np.clip(p.gains[r][:, None] * v + p.biases[r] + 0.5, 0, 255).astype(np.uint8)
            cls[i, r] = t
    k = (np.arange(m, dtype=np.int32)[:, None, None] * R + region).reshape(m, S * S)
    kS = k * S
    src = rows.reshape(-1)[kS + np.repeat(ar.astype(np.int32), S)]
    src += cols.reshape(-1)[kS + np.tile(ar.astype(np.int32), S)]
    packed = bank[src]  # (m, S*S) packed RGB
    k256 = k * 256
    for c in range(3):
        chan = ((packed >> (8 * c)) & 255).astype(np.int32)
        chan += k256
        images[..., c] = lut[c].reshape(-1)[chan].reshape(m, S, S)
    masks[...] = cls.reshape(-1)[k].reshape(m, S, S)

    T = len(config.textures)
    for i, p in enumerate(params):
        for d in range(len(p.digit_ids)):
            _paint_digit(images[i], masks[i], p, d, T, config)


@functools.lru_cache(maxsize=1)
def _padded_digits() -> np.ndarray:
    """The digits zero-padded to (1797, 10, 10), so upscaled strokes fade out at the edges."""
    images, _ = _digits()
    return np.pad(images, ((0, 0), (1, 1), (1, 1)))


@functools.lru_cache(maxsize=512)
def _upsample_matrix(size: int) -> np.ndarray:
    """Bilinear interpolation matrix (size, 10) from a zero-padded 8x8 digit (10x10)."""
    pos = (np.arange(size) + 0.5) * 10.0 / size - 0.5
    pos = np.clip(pos, 0, 9)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, 9)
    w = (pos - lo).astype(np.float32)
    mat = np.zeros((size, 10), dtype=np.float32)
    mat[np.arange(size), lo] += 1 - w
    mat[np.arange(size), hi] += w
    return mat


_THRESHOLD = 0.5  # of the digit's peak intensity: inside the digit
_BAND = 0.08  # half-width of the anti-aliased rim (in intensity units)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _paint_digit(
    image: np.ndarray, mask: np.ndarray, p: _SceneParams, d: int, T: int, config: SceneConfig
) -> None:
    """Paint digit ``d`` of scene ``p`` into ``image`` (S, S, 3) and ``mask`` (S, S) in place."""
    s = int(p.digit_sizes[d])
    py, px = (int(v) for v in p.digit_pos[d])
    k = int(p.digit_ids[d])
    mat = _upsample_matrix(s)
    v = mat @ _padded_digits()[k] @ mat.T  # (s, s) bilinear upscaling
    v *= 1.0 / max(float(v.max()), 1e-6)
    alpha = np.clip((v - (config.digit_threshold - _BAND)) * (0.5 / _BAND), 0.0, 1.0)
    bg = image[py : py + s, px : px + s].astype(np.float32)
    lum = float((bg @ _LUMA).mean())
    colour = p.digit_colours[d, 0 if lum > 110 else 1].astype(np.float32)  # contrast with the background
    fill = 0.8 * colour + 0.2 * bg  # a little of the texture shows through
    out = bg + alpha[..., None] * (fill - bg)
    image[py : py + s, px : px + s] = (out + 0.5).astype(np.uint8)
    mpatch = mask[py : py + s, px : px + s]
    mpatch[alpha >= 0.5] = T if config.merge_digits else T + int(_digits()[1][k])
    if config.ignore_border:
        mpatch[(alpha > 0) & (alpha < 1)] = IGNORE_INDEX


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


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([_STREAM_TAG, seed, _SPLIT_CODE[split], index])


def _check_n_seed(n: int, seed: int) -> None:
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
    _check_split(split)
    _check_n_seed(n, seed)
    _check_n_seed(start, 0)
    config = _resolve_config(config, image_size)
    S = config.image_size
    _, _, heights, widths = _texture_bank(config.textures)
    pool = digit_split_indices(split)
    params = [
        _scene_params(_scene_rng(int(seed), split, start + i), config, split, heights, widths, pool) for i in range(n)
    ]
    images = np.empty((n, S, S, 3), dtype=np.uint8)
    masks = np.empty((n, S, S), dtype=np.uint8)

    def render(c: int) -> None:
        _render_chunk(params[c : c + _CHUNK], config, images[c : c + _CHUNK], masks[c : c + _CHUNK])

    starts = range(0, n, _CHUNK)
    workers = min(len(starts), _num_threads())
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
    _, all_labels = _digits()
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


# ----------------------------------------------------------------------------------------------
# torch dataset
# ----------------------------------------------------------------------------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

try:  # torch is a dependency of the package, but keep the numpy generator importable without it
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _TorchDataset = object  # type: ignore[assignment,misc]


class SceneDataset(_TorchDataset):  # type: ignore[misc,valid-type]
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


# ----------------------------------------------------------------------------------------------
# on-disk layout
# ----------------------------------------------------------------------------------------------
def _voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 entries, flattened RGB), 255 drawn in light grey."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    pal[IGNORE_INDEX] = (224, 224, 192)
    return pal.reshape(-1).tolist()


@dataclass
class SceneWriteResult:
    """What ``write_scenes`` wrote: the root, the stems per split and the class names."""

    root: Path
    stems: dict[str, list[str]]
    class_names: list[str]

    @property
    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.stems.items()}


def write_scenes(
    out_dir: str | os.PathLike,
    n: int | Mapping[str, int] = 1000,
    *,
    splits: str | Sequence[str] = SPLITS,
    image_size: int | None = None,
    seed: int = 0,
    config: SceneConfig | None = None,
    num_workers: int | None = None,
) -> SceneWriteResult:
    """Write scenes as PNG images and masks in a VOC-like layout under ``out_dir``::

        out_dir/
          images/{split}_{i:05d}.png     RGB scenes
          masks/{split}_{i:05d}.png      palettised PNG, pixel value = class id, 255 = ignore
          ImageSets/Segmentation/{split}.txt   one stem per line
          classes.txt                    one class name per line (line k = class id k)
          scenes.json                    generator settings, counts and ignore index

    Args:
        n: scenes per split, or a mapping ``{split: n}``.
        splits: which splits to write.
    """
    from PIL import Image

    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    for s in splits:
        _check_split(s)
    if isinstance(n, Mapping):
        missing = [s for s in splits if s not in n]
        if missing:
            raise ValueError(f"n gives no count for split(s) {missing}; got {dict(n)}")
    counts = {s: (n[s] if isinstance(n, Mapping) else n) for s in splits}
    config = _resolve_config(config, image_size)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"output path {root} exists and is not a directory")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    palette = _voc_palette()

    def save(args: tuple[np.ndarray, np.ndarray, str]) -> None:
        img, msk, stem = args
        Image.fromarray(img).save(root / "images" / f"{stem}.png", compress_level=1)
        m = Image.fromarray(msk).convert("P")
        m.putpalette(palette)
        m.save(root / "masks" / f"{stem}.png", optimize=False)

    stems: dict[str, list[str]] = {}
    workers = num_workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for split in splits:
            _check_n_seed(counts[split], seed)
            split_stems = [f"{split}_{i:05d}" for i in range(counts[split])]
            for c in range(0, counts[split], 256):  # bounded memory for large sets
                k = min(256, counts[split] - c)
                sc = generate_scenes(k, split, seed=seed, config=config, start=c)
                list(pool.map(save, zip(sc.images, sc.masks, split_stems[c : c + k])))
            (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
                "".join(s + "\n" for s in split_stems)
            )
            stems[split] = split_stems
    names = config.class_names()
    (root / "classes.txt").write_text("".join(c + "\n" for c in names))
    meta = {
        "source": "dsekit.data.scenes",
        "format_version": _FORMAT_VERSION,
        "seed": int(seed),
        "counts": {s: len(v) for s, v in stems.items()},
        "ignore_index": IGNORE_INDEX,
        "num_classes": config.num_classes,
        "class_names": names,
        "config": scene_settings("train", 0, config=config)["config"],
    }
    (root / "scenes.json").write_text(json.dumps(meta, indent=2) + "\n")
    return SceneWriteResult(root=root, stems=stems, class_names=names)


def read_scenes(root: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Read back a layout written by ``write_scenes``: images (n, S, S, 3) and masks (n, S, S) uint8."""
    from PIL import Image

    root = Path(root)
    lst = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not lst.is_file():
        raise FileNotFoundError(
            f"{lst} not found; expected the layout written by write_scenes: images/, masks/, "
            f"ImageSets/Segmentation/{{train,val}}.txt, classes.txt under {root}"
        )
    stems = [s for s in lst.read_text().split() if s]
    images, masks = [], []
    for stem in stems:
        with Image.open(root / "images" / f"{stem}.png") as im:
            images.append(np.asarray(im.convert("RGB")))
        with Image.open(root / "masks" / f"{stem}.png") as im:
            masks.append(np.asarray(im))  # palette indices = class ids
    if not stems:
        return np.zeros((0, 0, 0, 3), np.uint8), np.zeros((0, 0, 0), np.uint8)
    return np.stack(images), np.stack(masks)
