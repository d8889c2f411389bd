"""Settings of a self-supervised training run: :class:`TrainConfig`, its validation, and the
resolved run settings (:class:`ResolvedConfig`, every method default filled in).

The architecture presets (:data:`PRESETS`) and the check that a resumed run keeps its settings
(:func:`check_resume_settings`) live here too, as both are about what a setting means.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..data.scenes import SceneConfig
from ..runtime import resolve_precision
from .presets import METHODS, PRESETS, TRAIN_PRECISIONS, ArchPreset  # noqa: F401 - importable from here too

__all__ = [
    "METHODS",
    "PRESETS",
    "TRAIN_PRECISIONS",
    "ArchPreset",
    "ResolvedConfig",
    "TrainConfig",
    "check_resume_settings",
    "resolve_arch",
    "resolve_config",
]


def resolve_arch(
    arch: str, model_kwargs: Mapping[str, Any] | None = None, image_size: int | None = None
) -> tuple[str, dict[str, Any], int]:
    """``(timm name, timm kwargs, image size)`` for a preset name or a timm name.

    ``model_kwargs`` override the preset's kwargs; ``image_size`` overrides the preset's size (a
    timm name without ``image_size`` uses 224, or ``model_kwargs["img_size"]``).
    """
    kwargs = dict(model_kwargs or {})
    size_kw = kwargs.pop("img_size", None)
    if arch in PRESETS:
        preset = PRESETS[arch]
        name, merged, size = preset.arch, {**preset.model_kwargs, **kwargs}, preset.image_size
    else:
        import timm

        if not timm.is_model(arch):
            raise ValueError(f"arch: {arch!r} is neither a preset ({', '.join(PRESETS)}) nor a timm architecture")
        name, merged, size = arch, kwargs, 224
    if size_kw is not None:
        size = int(size_kw)
    if image_size is not None:
        size = int(image_size)
    return name, merged, size


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Every setting of a training run (method-specific ones left ``None`` take the method's default).

    Attributes:
        method: ``"dino"`` or ``"mocov3"``.
        out: run folder (checkpoints, ``dsekit.json``, ``log.txt``).
        images: image folder (any tree); ``None``: the built-in scenes (train split), generated with
            ``scenes`` (:class:`dsekit.data.scenes.SceneConfig` settings, ``image_size`` excepted).
        arch: a preset (:data:`PRESETS`) or a timm name; ``model_kwargs`` override its kwargs.
        image_size: training resolution (global crops) and size of the decoded images
            (default: the preset's; 224 for a timm name).
        num_images: images used for training (chosen by ``seed`` from a folder).
        epochs, save_every: run length and checkpoint period (epochs).
        dse_weight: ``beta`` of ``loss = loss_ssl - beta * DSE(student patch tokens)``; 0: off.
        batch_size: images per step (the last incomplete batch is dropped).
        lr: peak learning rate (default ``base_lr * batch_size / 256`` with the method's base_lr:
            DINO 5e-4, MoCo v3 1.5e-4); ``min_lr`` at the end of the cosine decay.
        warmup_epochs: linear learning-rate warm-up (default: 10 % of the epochs, at most 10 for
            DINO / 40 for MoCo v3).
        weight_decay, weight_decay_end: AdamW weight decay, cosine from start to end (DINO
            0.04 -> 0.4, MoCo v3 0.1 constant); biases and norms have none.
        momentum: start of the teacher / momentum-encoder EMA, cosine to 1 (DINO 0.996, MoCo v3 0.99).
        out_dim, hidden_dim, bottleneck_dim: head sizes (DINO: 4096 / 512 / 128 prototypes / hidden /
            bottleneck; MoCo v3: 128 / 512 projection / hidden; the official ViT-S values are
            65536 / 2048 / 256 and 256 / 4096, reduced for small models).
        local_crops: DINO local views (size ``local_crop_size``, default ~3/7 of ``image_size``
            rounded up to the patch size).
        teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs: DINO teacher temperature
            (linear warm-up 0.04 -> 0.04 over 30 % of the epochs, at most 30).
        temperature: MoCo v3 contrastive temperature (0.2).
        crop_min_scale: smallest area fraction of a random-resized crop (DINO global views 0.4,
            MoCo v3 views 0.08); cj_strength: colour-jitter strength (DINO 0.5, MoCo v3 1.0).
        clip_grad: gradient-norm clip (DINO 3.0; 0: none). freeze_last_layer: DINO epochs with the
            last head layer frozen (1).
        seed: seeds initialisation, data order, augmentations, the image choice and the regulariser.
        device: ``None``: CUDA when available. precision: ``"fp32"`` or ``"bf16"`` (autocast).
        workers: DataLoader worker processes (part of the reproducibility key).
        stop_after: stop after this many epochs of the run in total, as if interrupted (the
            schedules still span ``epochs``); ``None``: run to ``epochs``.
        gram_weight: ``w`` of Gram anchoring, ``loss = loss_ssl + w · L_gram`` (0: off;
            :mod:`dsekit.train.gram`).
        gram_teacher: the Gram teacher: a checkpoint file of the same method and network (its
            teacher backbone), or a step (int) at which the run's own EMA teacher is copied.
        gram_every: with a step teacher, copy the EMA teacher again every this many steps (None: never).
        gram_clamp_negative, gram_image_level: :func:`dsekit.train.gram.gram_anchoring_loss`'s options.
        init_from: start from this checkpoint of another run (same method and network: every
            network and the method's state, e.g. DINO's centre), with a new optimiser and schedule;
            the run has no initial-weights checkpoint of its own.
    """

    method: str
    out: str
    images: str | None = None
    scenes: dict[str, Any] = field(default_factory=dict)
    arch: str = "vit_tiny_scenes"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    num_images: int = 512
    epochs: int = 20
    save_every: int = 2
    dse_weight: float = 0.0
    batch_size: int = 64
    lr: float | None = None
    min_lr: float | None = None
    warmup_epochs: int | None = None
    weight_decay: float | None = None
    weight_decay_end: float | None = None
    momentum: float | None = None
    out_dim: int | None = None
    hidden_dim: int | None = None
    bottleneck_dim: int | None = None
    local_crops: int = 4
    local_crop_size: int | None = None
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int | None = None
    temperature: float = 0.2
    crop_min_scale: float | None = None
    cj_strength: float | None = None
    clip_grad: float | None = None
    freeze_last_layer: int = 1
    seed: int = 0
    device: str | None = None
    precision: str = "fp32"
    workers: int = 0
    stop_after: int | None = None
    gram_weight: float = 0.0
    gram_teacher: str | int | None = None
    gram_every: int | None = None
    gram_clamp_negative: bool = True
    gram_image_level: bool = True
    init_from: str | None = None

    # settings that may differ between a run and its resumption
    _RESUME_FREE = ("out", "device", "stop_after", "save_every")


@dataclass(frozen=True)
class ResolvedConfig:
    """TrainConfig with every default filled in (what ``args`` stores); made by :func:`resolve_config`."""

    cfg: TrainConfig
    timm_arch: str
    timm_kwargs: dict[str, Any]
    image_size: int
    patch_size: int | None
    lr: float
    min_lr: float
    warmup_epochs: int
    weight_decay: float
    weight_decay_end: float
    momentum: float
    out_dim: int
    hidden_dim: int
    bottleneck_dim: int
    local_crop_size: int
    warmup_teacher_temp_epochs: int
    clip_grad: float

    def settings(self) -> dict[str, Any]:
        """JSON-able settings with every default resolved; ``arch`` / ``model_kwargs`` are the timm
        name and its full kwargs (``arch_preset``: the name given)."""
        s = asdict(self.cfg)
        for f in fields(self):
            if f.name not in ("cfg", "timm_arch", "timm_kwargs"):
                s[f.name] = getattr(self, f.name)
        s["arch_preset"] = self.cfg.arch
        s["arch"] = self.timm_arch
        s["model_kwargs"] = dict(self.timm_kwargs)
        return s


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")


def _check_float(name: str, value: Any, low: float | None = None, *, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{name}: expected a number {'>' if strict else '>='} {low}, got {value!r}")


def _checked_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the method name normalised and the image folder made absolute, after checking
    the settings that need no architecture (``ValueError`` naming the first bad one)."""
    method = str(cfg.method).lower().replace("-", "").replace("_", "")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {cfg.method!r}")
    images = None if cfg.images is None else str(Path(cfg.images).expanduser().resolve())
    cfg = replace(cfg, method=method, model_kwargs=dict(cfg.model_kwargs), images=images, scenes=dict(cfg.scenes))
    if not cfg.out:
        raise ValueError("out: a run folder is required")
    for name, low in (
        ("epochs", 1),
        ("save_every", 1),
        ("batch_size", 2),
        ("num_images", 2),
        ("local_crops", 0),
        ("freeze_last_layer", 0),
        ("seed", 0),
        ("workers", 0),
    ):
        _check_int(name, getattr(cfg, name), low)
    if cfg.stop_after is not None:
        _check_int("stop_after", cfg.stop_after, 1)
    _check_float("dse_weight", cfg.dse_weight, 0.0)
    _check_float("gram_weight", cfg.gram_weight, 0.0)
    if cfg.gram_weight > 0 and cfg.gram_teacher is None:
        raise ValueError("gram_teacher: Gram anchoring (gram_weight > 0) needs a teacher: a checkpoint file or a step")
    if cfg.gram_every is not None:
        _check_int("gram_every", cfg.gram_every, 1)
    if cfg.gram_teacher is not None and not isinstance(cfg.gram_teacher, int):
        teacher = str(cfg.gram_teacher)
        if not teacher.strip().isdigit() and not Path(teacher).expanduser().is_file():
            raise ValueError(f"gram_teacher: {teacher} is neither a step nor an existing checkpoint file")
    if cfg.init_from is not None and not Path(cfg.init_from).expanduser().is_file():
        raise ValueError(f"init_from: {cfg.init_from} is not a checkpoint file")
    _check_float("temperature", cfg.temperature, 0.0, strict=True)
    _check_float("teacher_temp", cfg.teacher_temp, 0.0, strict=True)
    _check_float("warmup_teacher_temp", cfg.warmup_teacher_temp, 0.0, strict=True)
    if cfg.crop_min_scale is not None and not (0.0 < cfg.crop_min_scale <= 1.0):
        raise ValueError(f"crop_min_scale: expected a number in (0, 1], got {cfg.crop_min_scale!r}")
    if cfg.cj_strength is not None:
        _check_float("cj_strength", cfg.cj_strength, 0.0)
    resolve_precision(cfg.precision, TRAIN_PRECISIONS)
    if cfg.batch_size > cfg.num_images:
        raise ValueError(
            f"batch_size: {cfg.batch_size} is larger than num_images={cfg.num_images}; every epoch "
            "needs at least one full batch"
        )
    return cfg


def _architecture(cfg: TrainConfig) -> tuple[str, dict[str, Any], int, int | None]:
    """``(timm name, timm kwargs, image size, patch size or None)``, the image size checked
    against the patch size and the scene settings."""
    name, kwargs, size = resolve_arch(cfg.arch, cfg.model_kwargs, cfg.image_size)
    _check_int("image_size", size, 8)
    if cfg.scenes and cfg.images is None:
        SceneConfig(**{**cfg.scenes, "image_size": size})  # raises on a bad scene setting
    patch = kwargs.get("patch_size")
    if patch is None:  # timm names spell it: vit_small_patch16_224, swin_tiny_patch4_window7_224
        m = re.search(r"patch(\d+)", name)
        patch = int(m.group(1)) if m else None
    patch = None if patch is None else int(patch[0] if isinstance(patch, (tuple, list)) else patch)
    if patch is not None and size % patch:
        raise ValueError(f"image_size: {size} is not a multiple of the patch size {patch} of {name}")
    return name, kwargs, size, patch


def resolve_config(cfg: TrainConfig) -> ResolvedConfig:
    """Check ``cfg`` and fill in every method default (``ValueError`` naming the first bad setting)."""
    cfg = _checked_config(cfg)
    name, kwargs, size, patch = _architecture(cfg)

    dino = cfg.method == "dino"
    epochs = int(cfg.epochs)
    lr = cfg.lr if cfg.lr is not None else (5e-4 if dino else 1.5e-4) * cfg.batch_size / 256
    _check_float("lr", lr, 0.0, strict=True)
    min_lr = cfg.min_lr if cfg.min_lr is not None else (1e-6 if dino else 0.0)
    _check_float("min_lr", min_lr, 0.0)
    warmup = cfg.warmup_epochs if cfg.warmup_epochs is not None else min(10 if dino else 40, epochs // 10)
    _check_int("warmup_epochs", warmup, 0)
    if warmup >= epochs and epochs > 1:
        raise ValueError(f"warmup_epochs: {warmup} must be smaller than epochs={epochs}")
    wd = cfg.weight_decay if cfg.weight_decay is not None else (0.04 if dino else 0.1)
    wd_end = cfg.weight_decay_end if cfg.weight_decay_end is not None else (0.4 if dino else wd)
    _check_float("weight_decay", wd, 0.0)
    _check_float("weight_decay_end", wd_end, 0.0)
    momentum = cfg.momentum if cfg.momentum is not None else (0.996 if dino else 0.99)
    _check_float("momentum", momentum, 0.0)
    if momentum > 1:
        raise ValueError(f"momentum: expected a number in [0, 1], got {momentum!r}")
    out_dim = cfg.out_dim if cfg.out_dim is not None else (4096 if dino else 128)
    hidden = cfg.hidden_dim if cfg.hidden_dim is not None else 512
    bottleneck = cfg.bottleneck_dim if cfg.bottleneck_dim is not None else 128
    for n, v in (("out_dim", out_dim), ("hidden_dim", hidden), ("bottleneck_dim", bottleneck)):
        _check_int(n, v, 1)
    step = patch or 1
    local = cfg.local_crop_size
    if local is None:
        local = max(step, int(math.ceil(size * 96 / 224 / step)) * step)
    _check_int("local_crop_size", local, 1)
    if local % step:
        raise ValueError(f"local_crop_size: {local} is not a multiple of the patch size {step}")
    tt_warm = cfg.warmup_teacher_temp_epochs
    if tt_warm is None:
        tt_warm = min(30, (3 * epochs) // 10)
    _check_int("warmup_teacher_temp_epochs", tt_warm, 0)
    clip = cfg.clip_grad if cfg.clip_grad is not None else (3.0 if dino else 0.0)
    _check_float("clip_grad", clip, 0.0)
    return ResolvedConfig(
        cfg,
        name,
        kwargs,
        int(size),
        patch,
        float(lr),
        float(min_lr),
        int(warmup),
        float(wd),
        float(wd_end),
        float(momentum),
        int(out_dim),
        int(hidden),
        int(bottleneck),
        int(local),
        int(tt_warm),
        float(clip),
    )


def check_resume_settings(stored: Mapping[str, Any], run: ResolvedConfig, path: Path) -> None:
    """``ValueError`` naming every setting of ``run`` that differs from the ``stored`` settings of
    the checkpoint ``path`` (those a resumption may change, :attr:`TrainConfig._RESUME_FREE`, excepted)."""
    current = run.settings()
    free = set(TrainConfig._RESUME_FREE) | {"output_dir", "arch_preset"}
    diff = []
    for k, v in current.items():
        if k in free:
            continue
        if k not in stored and v in (None, {}):  # a setting added since, left at its default
            continue
        old = stored.get(k, "<missing>")
        if json.dumps(old, sort_keys=True, default=str) != json.dumps(v, sort_keys=True, default=str):
            diff.append(f"{k}: {old!r} in the checkpoint vs {v!r} now")
    if diff:
        raise ValueError(
            f"out: {path.parent} holds a run with other settings ({'; '.join(diff)}); resume it with "
            "the same settings, or choose another --out"
        )
