"""The probe's datasets: both splits opened with the probe's settings and decoded once, images as
``uint8 (n, 3, S, S)`` and masks as ``uint8`` / ``int16 (n, S, S)``, into the probe's
:class:`~dsekit.feature_cache.FeatureCache`, their labels checked; the fingerprint that keys
cached results on the data."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data.images import content_hash
from .data.scenes import SceneConfig
from .data.segmentation import EvalTransform, ScenesSegmentation, dataset_spec, get_dataset
from .feature_cache import FeatureCache
from .metrics.iou import check_labels

__all__ = [
    "SCENES_DEFAULT_COUNTS",
    "DecodedSplit",
    "ImageLabels",
    "Uint8Eval",
    "data_fingerprint",
    "dataset_label",
    "decode_split",
    "image_labels",
    "open_dataset",
    "split_image_labels",
]

SCENES_DEFAULT_COUNTS = {"train": 1000, "val": 250}


class Uint8Eval:
    """Joint eval transform returning ``(uint8 image (3, S, S), int64 mask (S, S))`` (no normalisation)."""

    def __init__(self, image_size: int, resize: int | None) -> None:
        self.inner = EvalTransform(image_size=image_size, resize=resize, mean=None, std=None)

    def __call__(self, image: Any, mask: Any) -> tuple[Tensor, Tensor]:
        img, m = self.inner(image, mask)
        return img.mul(255.0).round_().to(torch.uint8), m

    def __repr__(self) -> str:
        return f"uint8 {self.inner!r}"


@dataclass
class DecodedSplit:
    images: np.ndarray  # (n, 3, S, S) uint8
    masks: np.ndarray  # (n, S, S) uint8 / int16
    names: list[str]


def open_dataset(cfg: Any, split: str, which: str) -> Any:
    spec = dataset_spec(cfg.dataset)
    count = cfg.num_train if which == "train" else cfg.num_val
    kwargs: dict[str, Any] = {
        "image_size": cfg.image_size,
        "resize": cfg.resize,
        "transform": Uint8Eval(cfg.image_size, cfg.resize),
        "seed": cfg.seed,
    }
    if spec.name == "scenes":
        kwargs["n"] = count if count is not None else SCENES_DEFAULT_COUNTS.get(split, SCENES_DEFAULT_COUNTS["val"])
        if cfg.scenes:
            kwargs["config"] = SceneConfig(**{**cfg.scenes, "image_size": cfg.image_size})
    else:
        kwargs["max_samples"] = count
    if cfg.num_classes is not None:
        if spec.name != "folder":
            raise ValueError(f"num_classes: only for the folder dataset ({spec.name} has its own classes)")
        kwargs["num_classes"] = cfg.num_classes
    return get_dataset(spec.name, cfg.root, split, **kwargs)


def dataset_label(cfg: Any) -> str:
    name = dataset_spec(cfg.dataset).name
    if name == "folder" and cfg.root:
        return f"folder:{Path(cfg.root).resolve().name}"
    return name


def _sample_name(ds: Any, i: int) -> str:
    samples = getattr(ds, "samples", None)
    if samples and i < len(samples):
        return f"mask {samples[i][1]}"
    ids = getattr(ds, "ids", None)
    if ids and i < len(ids):
        return f"{getattr(ds, 'name', 'dataset')} sample {ids[i]}"
    return f"sample {i}"


def data_fingerprint(train_ds: Any, val_ds: Any) -> str:
    """Hash of both splits: their settings, sample ids and the content of every image and mask
    file used (about 1 GB/s: a second or two for PASCAL VOC's train_aug + val); the built-in
    scenes are a function of their settings."""
    parts = []
    for ds in (train_ds, val_ds):
        rec = ds.record() if hasattr(ds, "record") else {"n": len(ds)}
        rec = {k: v for k, v in rec.items() if k not in ("root", "transform")}
        ids = list(getattr(ds, "ids", []))
        root = getattr(ds, "root", None) or Path("/")
        files = [
            os.path.relpath(p, root) for pair in getattr(ds, "samples", []) for p in pair
        ]  # a moved root keeps its key
        parts.append({"record": rec, "ids": ids, "content": content_hash(root, files) if files else None})
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _mask_dtype(num_classes: int, ignore_index: int) -> np.dtype:
    if num_classes <= 255 and ignore_index == 255:
        return np.dtype(np.uint8)
    if num_classes <= 32767 and -32768 <= ignore_index <= 32767:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def _default_workers(ds: Any) -> int:
    if isinstance(ds, ScenesSegmentation):
        return 0  # generated in memory: nothing to decode
    return min(4, os.cpu_count() or 1)


def decode_split(ds: Any, cache: FeatureCache, tag: str, cfg: Any, progress: bool) -> DecodedSplit:
    """Decode every (image, mask) of ``ds`` once into the cache, checking the labels."""
    n, S = len(ds), cfg.image_size
    C, ignore = int(ds.num_classes), int(ds.ignore_index)
    masks = cache.allocate(f"{tag}.masks", (n, S, S), _mask_dtype(C, ignore))
    images = cache.allocate(f"{tag}.images", (n, 3, S, S), np.uint8)
    workers = cfg.workers if cfg.workers is not None else _default_workers(ds)
    loader = DataLoader(ds, batch_size=16, shuffle=False, num_workers=workers)
    bar = None
    if progress:
        bar = tqdm(total=n, desc=f"decode {tag}", unit="img", leave=False)
    filled = 0
    try:
        for img, m in loader:
            b = img.shape[0]
            if tuple(img.shape[1:]) != (3, S, S) or tuple(m.shape[1:]) != (S, S):
                raise ValueError(
                    f"{_sample_name(ds, filled)}: expected image (3, {S}, {S}) and mask ({S}, {S}) after the "
                    f"transform, got {tuple(img.shape[1:])} and {tuple(m.shape[1:])}"
                )
            for j in range(b):
                check_labels(m[j], C, ignore, _sample_name(ds, filled + j))
            images[filled : filled + b] = img.numpy()
            masks[filled : filled + b] = m.numpy().astype(masks.dtype)
            filled += b
            if bar is not None:
                bar.update(b)
    except Exception as exc:  # noqa: BLE001 - a worker's error arrives with its traceback in the message
        if "DataLoader worker" not in str(exc):
            raise
        raise ValueError(_worker_message(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    names = list(getattr(ds, "ids", [])) or [str(i) for i in range(n)]
    return DecodedSplit(images, masks, names)


def _worker_message(exc: BaseException) -> str:
    """The original error of a DataLoader worker, without the worker's traceback: its last line."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return last.split(": ", 1)[1] if re.match(r"^[A-Za-z_.]*(Error|Exception): ", last) else last


# --------------------------------------------------------------------------- image-level labels


@dataclass
class ImageLabels:
    """Image-level labels of a split: ``labels[i]`` of sample ``i`` (0 .. len(names) - 1)."""

    labels: list[int]
    names: list[str]
    source: str


def image_labels(ds: Any, label_file: str | None = None, names: list[str] | None = None) -> ImageLabels | None:
    """The image-level labels of dataset ``ds``, from (first that applies):

    1. ``label_file``: a CSV of ``name,label`` rows (a header row ``name,label`` is allowed),
       ``name`` a sample id of the dataset (for ``folder`` datasets: the path below ``images/``
       without its extension), ``label`` any string; for the built-in scenes also ``"digit"``
       (the default) or ``"texture"`` (each scene's dominant texture);
    2. the dataset's own (the built-in scenes: the value of each scene's largest digit);
    3. a ``folder`` dataset's ``ROOT/image_labels.csv`` (same format);
    4. a ``folder`` dataset laid out as an ``ImageFolder`` tree (every image under
       ``images/<class>/``): the folder names.

    None when none applies. ``names``: the label names to use (the training split's, so that the
    validation split is numbered alike); a label outside them is an error naming it.
    """
    own = getattr(ds, "image_labels", None)
    ids = [str(i) for i in getattr(ds, "ids", [])]
    raw: list[str] | None = None
    source = ""
    root = getattr(ds, "root", None)
    if label_file in ("digit", "texture") and getattr(ds, "name", "") == "scenes":
        if label_file == "texture":
            labels, texture_names = ds.texture_labels()
            return ImageLabels(labels, texture_names, "scenes (dominant texture)")
        label_file = None  # the scenes' own: the digit
    if label_file is not None:
        raw, source = _labels_from_file(Path(label_file), ids), str(label_file)
    elif own is not None:
        return ImageLabels(
            [int(v) for v in own],
            list(getattr(ds, "image_label_names", [])) or [str(v) for v in range(max(own) + 1)],
            f"{getattr(ds, 'name', 'dataset')} (its own)",
        )
    elif root is not None and getattr(ds, "name", "") == "folder" and (Path(root) / "image_labels.csv").is_file():
        raw, source = _labels_from_file(Path(root) / "image_labels.csv", ids), str(Path(root) / "image_labels.csv")
    elif getattr(ds, "name", "") == "folder" and ids and all("/" in i for i in ids):
        raw, source = [i.split("/", 1)[0] for i in ids], "folder names (images/<class>/...)"
    if raw is None:
        return None
    table = list(names) if names is not None else sorted(set(raw))
    index = {n: k for k, n in enumerate(table)}
    unknown = sorted(set(raw) - set(index))
    if unknown:
        raise ValueError(
            f"{source}: image label(s) {unknown[:5]} of the validation split are not among the training "
            f"split's ({', '.join(table[:10])}{', ...' if len(table) > 10 else ''})"
        )
    return ImageLabels([index[v] for v in raw], table, source)


def _labels_from_file(path: Path, ids: list[str]) -> list[str]:
    import csv

    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: not a readable CSV of name,label rows ({err})") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["name", "label"]:
        rows = rows[1:]
    table: dict[str, str] = {}
    for line, r in enumerate(rows, start=1):
        if len(r) != 2 or not r[0].strip() or not r[1].strip():
            raise ValueError(f"{path}, row {line}: expected name,label, got {r!r}")
        table[r[0].strip()] = r[1].strip()
    missing = [i for i in ids if i not in table]
    if missing:
        raise ValueError(f"{path}: no image label for {len(missing)} sample(s), e.g. {', '.join(missing[:3])}")
    return [table[i] for i in ids]


def split_image_labels(train_ds: Any, val_ds: Any, label_file: str | None) -> tuple[ImageLabels, ImageLabels] | None:
    """Image-level labels of both splits, numbered alike (the training split's names), or None
    when the dataset has none (see :func:`image_labels`)."""
    train = image_labels(train_ds, label_file)
    if train is None:
        return None
    return train, image_labels(val_ds, label_file, names=train.names)  # type: ignore[return-value]
