"""The unlabeled image sample on which checkpoints are scored.

``load_image_sample`` picks ``num_images`` files from any image tree (an ImageFolder works),
deterministically from ``seed``, decodes each one once (in a thread pool, order preserved),
preprocesses them the standard evaluation way (shorter side resized to ``resize`` with bicubic
interpolation, centre crop ``image_size``, ImageNet normalisation) and returns one float tensor
``(n, 3, S, S)`` with the provenance needed for a run record: the files used, the unreadable
files skipped and a SHA-256 of the image list. Without a directory the built-in scenes
(``dsekit.data.scenes``, train split) are the sample.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import sys
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from . import scenes as _scenes

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageSample",
    "ImageSampleResult",
    "ImageSampleWarning",
    "content_hash",
    "default_resize",
    "file_size",
    "find_images",
    "load_image_sample",
    "preprocess_image",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
_STREAM_TAG = 0x1A6E5  # keeps the sampling stream apart from other uses of the same seed
_CONTENT_HASH_HEADER = "dsekit-image-content-v1\n"
_SHOW = 5  # file names listed in a warning


class ImageSampleWarning(UserWarning):
    """Unreadable files were skipped, or fewer images than asked were available."""


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def default_resize(image_size: int) -> int:
    """The resize (shorter side) that keeps the 224/256 crop ratio: 256 for 224."""
    return int(math.floor(image_size * 256 / 224 + 0.5))


# ----------------------------------------------------------------------------------------------
# results and settings
# ----------------------------------------------------------------------------------------------
@dataclass
class ImageSampleResult:
    """A decoded, preprocessed image sample.

    Attributes:
        images: (n, 3, S, S) float tensor, normalised.
        names: n identifiers in sample order: paths relative to ``root`` (POSIX separators) for a
            directory, ``"train_00000"``-style stems for the built-in scenes.
        paths: n absolute file paths (empty for the built-in scenes).
        skipped: ``(relative path, reason)`` for every unreadable file met while sampling.
        requested: ``num_images`` asked for.
        available: image files found (for the scenes: ``requested``).
        source: the directory (absolute) or ``"scenes"``.
        image_hash: SHA-256 hex of the used images' names and contents, in order
            (:func:`content_hash`), or of the scene generator settings.
        settings: the sampling and preprocessing settings, JSON-able.
    """

    images: torch.Tensor
    names: list[str]
    paths: list[Path]
    skipped: list[tuple[str, str]]
    requested: int
    available: int
    source: str
    image_hash: str
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @property
    def shortfall(self) -> int:
        """How many fewer images than requested the sample holds."""
        return max(0, self.requested - len(self))

    def record(self) -> dict:
        """A JSON-able summary for run records (no pixel data)."""
        return {
            "source": self.source,
            "num_images": len(self),
            "requested": self.requested,
            "available": self.available,
            "num_skipped": self.num_skipped,
            "skipped": [f"{n}: {r}" for n, r in self.skipped],
            "image_hash": self.image_hash,
            "names": list(self.names),
            "settings": self.settings,
        }


@dataclass(frozen=True)
class ImageSample:
    """Settings of an image sample; ``load()`` decodes it.

    ``images=None`` means the built-in scenes (train split) at ``image_size``, generated directly
    at that size (no resize or crop) and normalised with ``mean``/``std``; ``scenes`` holds
    :class:`dsekit.data.scenes.SceneConfig` settings for them (``image_size`` excepted).
    """

    images: str | os.PathLike | None = None
    num_images: int = 2048
    seed: int = 0
    image_size: int = 224
    resize: int | None = None
    interpolation: str = "bicubic"
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    scenes: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.num_images) or self.num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {self.num_images!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not _is_int(self.image_size) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        if self.resize is not None and (not _is_int(self.resize) or self.resize < self.image_size):
            raise ValueError(
                f"resize must be an integer >= image_size={self.image_size} (the shorter side before "
                f"the centre crop), got {self.resize!r}"
            )
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together (or both None for no normalisation)")
        if self.mean is not None:
            object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
            object.__setattr__(self, "std", tuple(float(v) for v in self.std))  # type: ignore[union-attr]
            if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:  # type: ignore[arg-type]
                raise ValueError(f"mean and std must hold 3 values with std > 0, got {self.mean}, {self.std}")

    @property
    def effective_resize(self) -> int:
        return default_resize(self.image_size) if self.resize is None else int(self.resize)

    def settings(self) -> dict:
        """JSON-able settings (the directory as given, resolved to an absolute path)."""
        return {
            "images": None if self.images is None else str(Path(self.images).resolve()),
            "num_images": int(self.num_images),
            "seed": int(self.seed),
            "image_size": int(self.image_size),
            "resize": None if self.images is None else self.effective_resize,
            "interpolation": self.interpolation,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            **({"scenes": dict(self.scenes)} if self.scenes else {}),
        }

    def load(
        self, *, num_workers: int | None = None, dtype: torch.dtype = torch.float32, progress: bool = False
    ) -> ImageSampleResult:
        """Decode and preprocess the sample (see ``load_image_sample``)."""
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
        if self.images is None:
            return _load_scenes(self, dtype)
        return _load_directory(self, num_workers=num_workers, dtype=dtype, progress=progress)


def load_image_sample(
    images: str | os.PathLike | None = None,
    num_images: int = 2048,
    seed: int = 0,
    image_size: int = 224,
    resize: int | None = None,
    interpolation: str = "bicubic",
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    *,
    scenes: Mapping[str, Any] | None = None,
    num_workers: int | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> ImageSampleResult:
    """Load the image sample used to score checkpoints.

    Args:
        images: a directory searched recursively for ``IMAGE_EXTENSIONS`` (any case; hidden files
            and folders skipped), or None for the built-in scenes.
        num_images: images to use, chosen by a seeded permutation of the sorted file list; an
            unreadable file is skipped (counted, warned about) and replaced by the next one.
        seed: selection seed (and scene seed for the built-in scenes).
        image_size: side S of the centre crop.
        resize: shorter side before cropping; default ``round(S * 256 / 224)`` (256 for 224).
        interpolation: resize filter (``"bicubic"`` by default).
        mean, std: per-channel normalisation of ``[0, 1]`` values; None for none.
        scenes: ``SceneConfig`` settings of the built-in scenes (default: ``SceneConfig()``).
        num_workers: decoding threads (default: up to 8, bounded by the CPUs available).
        dtype: floating dtype of the returned tensor.
        progress: show a progress bar while decoding.

    Returns:
        ``ImageSampleResult`` with ``images`` (n, 3, S, S).

    Raises:
        FileNotFoundError: ``images`` does not exist or holds no image file.
        NotADirectoryError: ``images`` is not a directory.
        ValueError: bad settings, or no file in the directory could be decoded.
    """
    spec = ImageSample(
        images=images,
        num_images=num_images,
        seed=seed,
        image_size=image_size,
        resize=resize,
        interpolation=interpolation,
        mean=None if mean is None else tuple(mean),
        std=None if std is None else tuple(std),
        scenes=None if not scenes else dict(scenes),
    )
    return spec.load(num_workers=num_workers, dtype=dtype, progress=progress)


# ----------------------------------------------------------------------------------------------
# file discovery and hashing
# ----------------------------------------------------------------------------------------------
def find_images(root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Sorted relative POSIX paths of the image files under ``root`` (recursive).

    Extensions match case-insensitively; hidden files and folders (leading ``.``) are skipped;
    symbolic links to folders are followed, each real folder once.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image directory {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"image path {root} is not a directory")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    found: list[str] = []
    seen = {os.path.realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if not d.startswith(".") and real not in seen:  # linked folders are followed once
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        rel = Path(dirpath).relative_to(root)
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(exts):
                found.append((rel / f).as_posix())
    found.sort()
    return found


def content_hash(root: str | os.PathLike, names: Sequence[str]) -> str | None:
    """SHA-256 hex of the files ``names`` under ``root``: each name, size and full content, in
    order (about 1 GB/s); None when one of them is no longer a readable regular file."""
    h = hashlib.sha256(_CONTENT_HASH_HEADER.encode())
    for name in names:
        path = Path(root) / name
        size = file_size(path)
        if size < 0:
            return None
        h.update(f"{name}\t{size}\n".encode())
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
        except OSError:
            return None
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# decoding and preprocessing (one file per call, run in worker threads)
# ----------------------------------------------------------------------------------------------
def _to_rgb(img):  # PIL.Image -> PIL.Image in RGB
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grey: rescale to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        img = Image.fromarray(arr.round().astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))  # transparent areas become white
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


def preprocess_image(img, image_size: int, resize: int, interpolation: str = "bicubic") -> torch.Tensor:
    """PIL image -> uint8 tensor (3, S, S): RGB, shorter side to ``resize``, centre crop ``S``."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    img = _to_rgb(img)
    img = F.resize(img, resize, interpolation=InterpolationMode(interpolation))
    img = F.center_crop(img, [image_size, image_size])
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def file_size(path: str | os.PathLike) -> int:
    """Size of a regular file (symbolic links followed), or -1 for anything else: a dangling or
    looping link, a FIFO, a device, a folder, an unreadable entry."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return -1
    return int(st.st_size) if stat.S_ISREG(st.st_mode) else -1


def _decode(path: Path, image_size: int, resize: int, interpolation: str) -> torch.Tensor | str:
    """The preprocessed uint8 image, or the reason it could not be read."""
    from PIL import Image

    try:
        st = os.stat(path)  # never open a FIFO or a device: reading one can block forever
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"[:200]
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    try:
        with Image.open(path) as img:
            img.load()
            return preprocess_image(img, image_size, resize, interpolation)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable", never a crash
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {msg}"[:200]


def _normalise(batch: torch.Tensor, mean, std, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (n, 3, S, S) -> float (n, 3, S, S), ``(x / 255 - mean) / std``."""
    out = batch.to(dtype).div_(255.0)
    if mean is not None:
        m = torch.tensor(mean, dtype=dtype).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=dtype).view(1, 3, 1, 1)
        out.sub_(m).div_(s)
    return out


def _warn(message: str) -> None:
    """Warn, attributing the warning to the first caller outside this module."""
    frame: FrameType | None = sys._getframe(1)
    level = 2
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, ImageSampleWarning, stacklevel=level)


def _default_workers() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, 2 * n))


# ----------------------------------------------------------------------------------------------
# the two sources
# ----------------------------------------------------------------------------------------------
def _load_directory(
    spec: ImageSample, *, num_workers: int | None, dtype: torch.dtype, progress: bool
) -> ImageSampleResult:
    root = Path(spec.images).resolve()  # type: ignore[arg-type]
    names = find_images(root)
    if not names:
        raise FileNotFoundError(
            f"no image files in {root} (searched recursively for extensions {', '.join(IMAGE_EXTENSIONS)}, any case)"
        )
    rng = np.random.default_rng([_STREAM_TAG, int(spec.seed)])
    order = rng.permutation(len(names))
    S, resize = int(spec.image_size), spec.effective_resize
    want = int(spec.num_images)

    kept: list[tuple[str, torch.Tensor]] = []
    skipped: list[tuple[str, str]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=min(want, len(names)), desc="decoding images", unit="img")
    pos = 0
    workers = num_workers or _default_workers()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while len(kept) < want and pos < len(names):
            # Try exactly as many files as are still missing; replacements for unreadable ones
            # come from further down the same permutation, so the result is deterministic.
            batch = [names[i] for i in order[pos : pos + want - len(kept)]]
            pos += len(batch)
            results = pool.map(lambda n: _decode(root / n, S, resize, spec.interpolation), batch)
            for name, res in zip(batch, results, strict=True):
                if isinstance(res, str):
                    skipped.append((name, res))
                else:
                    kept.append((name, res))
                    if bar is not None:
                        bar.update(1)
    if bar is not None:
        bar.close()

    if skipped:
        shown = ", ".join(f"{n} ({r})" for n, r in skipped[:_SHOW])
        more = f" and {len(skipped) - _SHOW} more" if len(skipped) > _SHOW else ""
        _warn(f"skipped {len(skipped)} unreadable image file(s) in {root}: {shown}{more}")
    if not kept:
        raise ValueError(f"none of the {len(skipped)} image files tried in {root} could be decoded")
    if len(kept) < want:
        _warn(f"only {len(kept)} readable images in {root}, fewer than the {want} asked for; using {len(kept)}")

    used = [n for n, _ in kept]
    images = _normalise(torch.stack([t for _, t in kept]), spec.mean, spec.std, dtype)
    paths = [root / n for n in used]
    image_hash = content_hash(root, used) or ""
    return ImageSampleResult(
        images=images,
        names=used,
        paths=paths,
        skipped=skipped,
        requested=want,
        available=len(names),
        source=str(root),
        image_hash=image_hash,
        settings=spec.settings(),
    )


def _load_scenes(spec: ImageSample, dtype: torch.dtype) -> ImageSampleResult:
    n, S = int(spec.num_images), int(spec.image_size)
    config = _scenes.SceneConfig(**{**dict(spec.scenes or {}), "image_size": S})
    images, _ = _scenes.make_scenes(n, "train", seed=int(spec.seed), config=config)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    settings = spec.settings()
    settings["scenes"] = _scenes.scene_settings("train", n, seed=int(spec.seed), config=config)
    image_hash = hashlib.sha256(json.dumps(settings["scenes"], sort_keys=True).encode()).hexdigest()
    return ImageSampleResult(
        images=_normalise(batch, spec.mean, spec.std, dtype),
        names=[f"train_{i:05d}" for i in range(n)],
        paths=[],
        skipped=[],
        requested=n,
        available=n,
        source="scenes",
        image_hash=image_hash,
        settings=settings,
    )
