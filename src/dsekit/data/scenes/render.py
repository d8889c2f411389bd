"""Pixel synthesis of the scenes: the random parameters of one scene (``scene_params``) and the
rendering of a chunk of scenes into images and masks (``render_chunk``), vectorised over the
chunk."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import IGNORE_INDEX, RIM_BAND, SceneConfig
from .sources import digit_images, half_bounds, texture_bank

__all__ = ["SceneParams", "num_threads", "render_chunk", "scene_params"]


# ----------------------------------------------------------------------------------------------
# per-scene parameters (one private generator per scene)
# ----------------------------------------------------------------------------------------------
@dataclass
class SceneParams:
    """The random draws that fix one scene (from the scene's private generator)."""

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


def scene_params(
    rng: np.random.Generator, config: SceneConfig, split: str, heights: np.ndarray, widths: np.ndarray, pool: np.ndarray
) -> SceneParams:
    """Draw the parameters of one scene of ``split`` from ``rng``: regions, texture crops and
    colour jitter, digits and their positions (``pool``: the split's digit indices)."""
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
        y0b, x0b, y1b, x1b = half_bounds(int(heights[t]), int(widths[t]), split)
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
    return SceneParams(seeds, warp, tex, boxes, flips, gains, biases, digit_ids, sizes, pos, colours)


def _overlap(y0: int, x0: int, s0: int, y1: int, x1: int, s1: int) -> int:
    dy = min(y0 + s0, y1 + s1) - max(y0, y1)
    dx = min(x0 + s0, x1 + s1) - max(x0, x1)
    return max(dy, 0) * max(dx, 0)


# ----------------------------------------------------------------------------------------------
# pixel synthesis (vectorised over a chunk of scenes)
# ----------------------------------------------------------------------------------------------
def _region_maps(params: Sequence[SceneParams], S: int, R: int) -> np.ndarray:
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


def num_threads() -> int:
    """Threads to render chunks with: the usable CPUs, at most 4."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def render_chunk(params: Sequence[SceneParams], config: SceneConfig, images: np.ndarray, masks: np.ndarray) -> None:
    """Render a chunk of scenes into images (m, S, S, 3) uint8 and masks (m, S, S) uint8."""
    S = config.image_size
    m = len(params)
    R = max(len(p.textures) for p in params)
    bank, offsets, _, widths = texture_bank(config.textures)
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
    images, _ = digit_images()
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
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _paint_digit(image: np.ndarray, mask: np.ndarray, p: SceneParams, d: int, T: int, config: SceneConfig) -> None:
    """Paint digit ``d`` of scene ``p`` into ``image`` (S, S, 3) and ``mask`` (S, S) in place."""
    s = int(p.digit_sizes[d])
    py, px = (int(v) for v in p.digit_pos[d])
    k = int(p.digit_ids[d])
    mat = _upsample_matrix(s)
    v = mat @ _padded_digits()[k] @ mat.T  # (s, s) bilinear upscaling
    v *= 1.0 / max(float(v.max()), 1e-6)
    alpha = np.clip((v - (config.digit_threshold - RIM_BAND)) * (0.5 / RIM_BAND), 0.0, 1.0)
    bg = image[py : py + s, px : px + s].astype(np.float32)
    lum = float((bg @ _LUMA).mean())
    colour = p.digit_colours[d, 0 if lum > 110 else 1].astype(np.float32)  # contrast with the background
    fill = 0.8 * colour + 0.2 * bg  # a little of the texture shows through
    out = bg + alpha[..., None] * (fill - bg)
    image[py : py + s, px : px + s] = (out + 0.5).astype(np.uint8)
    mpatch = mask[py : py + s, px : px + s]
    mpatch[alpha >= 0.5] = T if config.merge_digits else T + int(digit_images()[1][k])
    if config.ignore_border:
        mpatch[(alpha > 0) & (alpha < 1)] = IGNORE_INDEX
