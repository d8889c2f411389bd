"""Self-supervised training of small timm backbones with DINO or MoCo v3, saving official checkpoints.

``train(TrainConfig(method="dino", out="runs/dino"))`` (CLI ``dsekit train --method dino --out
runs/dino``) trains a timm backbone on the built-in scenes (or on ``images=DIR``) with the method's
components from lightly (losses, heads, multi-view transforms, momentum and cosine schedules) and
writes, in ``out``:

* the method's official checkpoints every ``save_every`` epochs (0-based epoch index ``e`` in the
  name, saved when ``e % save_every == 0`` and after the last epoch, as DINO's ``saveckp_freq``):

  - DINO: ``checkpoint{e:04d}.pth`` = ``{"student": {"module.backbone.*", "module.head.*"},
    "teacher": {"backbone.*", "head.*"}, "optimizer", "epoch": e + 1, "args": argparse.Namespace,
    "dino_loss": {"center"}}``;
  - MoCo v3: ``checkpoint_{e:04d}.pth.tar`` = ``{"epoch": e + 1, "arch", "state_dict":
    {"module.base_encoder.*", "module.momentum_encoder.*", "module.predictor.*"}, "optimizer",
    "args"}``, the projector being the encoders' ``head``;

  both also hold ``"train_log"`` (the per-epoch history), so ``dsekit scan RUN_DIR --method dino``
  / ``--method mocov3`` reads them unchanged;
* ``checkpoint_init.pth`` (DINO) / ``checkpoint_init.pth.tar`` (MoCo v3): the initial weights, in
  the same format with ``"epoch": 0``, written before the first step, so that scan and probe
  score the untrained network too (its epoch is :data:`dsekit.backbones.INIT_EPOCH`, -1);
* ``checkpoint.pth`` (DINO) / ``checkpoint.pth.tar`` (MoCo v3): the latest state, rewritten after
  every epoch (names the scan does not pick up); a rerun with the same settings resumes from it;
* ``dsekit.json``: the timm architecture, its kwargs and image size, the settings, and the
  ``dsekit scan`` arguments that rebuild the backbone;
* ``log.txt``: one JSON line per epoch (loss, DSE when regularised, schedules, throughput).

Reproducibility: the run is a function of its settings (``workers`` included). The trainer is an
application entry point: as torchvision / lightly augmentations draw from the process-wide RNGs,
it seeds ``torch``, ``numpy`` and ``random`` at the start of the run (model initialisation) and of
every epoch from ``(seed, epoch)``, and restores the caller's RNG states when it returns. The data
order comes from a private ``torch.Generator`` per epoch and the DSE regulariser's generator is
re-seeded per epoch, so resuming after epoch ``e`` continues bit-for-bit as the uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..cliargs import parse_model_kwargs, positive_int
from ..scan import resolve_device

__all__ = [
    "METHODS",
    "PRESETS",
    "ArchPreset",
    "TrainConfig",
    "TrainResult",
    "add_train_parser",
    "build_arguments",
    "checkpoint_name",
    "latest_checkpoint_name",
    "main",
    "read_run_info",
    "resolve_arch",
    "run_train",
    "scan_arguments",
    "train",
]

METHODS = ("dino", "mocov3")
RUN_INFO = "dsekit.json"
LOG_FILE = "log.txt"
_SEED_TAG = 0x55C7A1  # keeps the training streams apart from other uses of the same seed
_PRECISIONS = ("fp32", "bf16")


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
        "ViT-Ti width (192, 3 heads), 4 blocks, 8-pixel patches at 64x64: an 8x8 patch grid; "
        "trains on a laptop CPU",
    ),
}


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
            raise ValueError(
                f"arch: {arch!r} is neither a preset ({', '.join(PRESETS)}) nor a timm architecture"
            )
        name, merged, size = arch, kwargs, 224
    if size_kw is not None:
        size = int(size_kw)
    if image_size is not None:
        size = int(image_size)
    return name, merged, size


def _make_backbone(name: str, kwargs: Mapping[str, Any], image_size: int) -> nn.Module:
    """A timm backbone (no classifier) in train mode; ViTs accept any multiple of the patch size."""
    from dsekit.backbones import create_backbone

    try:
        model = create_backbone(name, img_size=image_size, dynamic_img_size=True, **kwargs)
    except TypeError:  # architectures without dynamic_img_size take any size anyway
        model = create_backbone(name, img_size=image_size, **kwargs)
    return model.train()


def _patch_size(backbone: nn.Module) -> int | None:
    pe = getattr(backbone, "patch_embed", None)
    ps = getattr(pe, "patch_size", None)
    if ps is None:
        return None
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)


def _embed_dim(backbone: nn.Module) -> int:
    for attr in ("num_features", "embed_dim"):
        d = getattr(backbone, attr, None)
        if isinstance(d, int) and d > 0:
            return d
    raise ValueError(f"cannot tell the feature width of {type(backbone).__name__}")


def _encode(backbone: nn.Module, x: Tensor, head: nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """``(pooled (B, d) [through head], patches (B, N, d))`` of images ``x (B, 3, H, W)``.

    Patch tokens are those of the final norm with prefix tokens dropped (as the scan extracts
    them); CNN maps ``(B, d, h, w)`` are flattened row-major.
    """
    feats = backbone.forward_features(x)
    pooled = backbone.forward_head(feats, pre_logits=True)
    if feats.ndim == 4:
        patches = feats.flatten(2).transpose(1, 2)
    else:
        patches = feats[:, int(getattr(backbone, "num_prefix_tokens", 0)) :]
    if head is not None:
        pooled = head(pooled)
    return pooled, patches


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

    # settings that may differ between a run and its resumption
    _RESUME_FREE = ("out", "device", "stop_after", "save_every")


@dataclass(frozen=True)
class _Resolved:
    """TrainConfig with every default filled in (what ``args`` stores)."""

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


def _resolve(cfg: TrainConfig) -> _Resolved:
    method = str(cfg.method).lower().replace("-", "").replace("_", "")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {cfg.method!r}")
    images = None if cfg.images is None else str(Path(cfg.images).expanduser().resolve())
    cfg = replace(cfg, method=method, model_kwargs=dict(cfg.model_kwargs), images=images, scenes=dict(cfg.scenes))
    if not cfg.out:
        raise ValueError("out: a run folder is required")
    for name, low in (("epochs", 1), ("save_every", 1), ("batch_size", 2), ("num_images", 2),
                      ("local_crops", 0), ("freeze_last_layer", 0), ("seed", 0), ("workers", 0)):
        _check_int(name, getattr(cfg, name), low)
    if cfg.stop_after is not None:
        _check_int("stop_after", cfg.stop_after, 1)
    _check_float("dse_weight", cfg.dse_weight, 0.0)
    _check_float("temperature", cfg.temperature, 0.0, strict=True)
    _check_float("teacher_temp", cfg.teacher_temp, 0.0, strict=True)
    _check_float("warmup_teacher_temp", cfg.warmup_teacher_temp, 0.0, strict=True)
    if cfg.crop_min_scale is not None and not (0.0 < cfg.crop_min_scale <= 1.0):
        raise ValueError(f"crop_min_scale: expected a number in (0, 1], got {cfg.crop_min_scale!r}")
    if cfg.cj_strength is not None:
        _check_float("cj_strength", cfg.cj_strength, 0.0)
    if cfg.precision not in _PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(_PRECISIONS)}, got {cfg.precision!r}")
    if cfg.batch_size > cfg.num_images:
        raise ValueError(
            f"batch_size: {cfg.batch_size} is larger than num_images={cfg.num_images}; every epoch "
            "needs at least one full batch"
        )

    name, kwargs, size = resolve_arch(cfg.arch, cfg.model_kwargs, cfg.image_size)
    _check_int("image_size", size, 8)
    if cfg.scenes and cfg.images is None:
        from dsekit.data.scenes import SceneConfig

        SceneConfig(**{**cfg.scenes, "image_size": size})  # raises on a bad scene setting
    patch = kwargs.get("patch_size")
    if patch is None:  # timm names spell it: vit_small_patch16_224, swin_tiny_patch4_window7_224
        m = re.search(r"patch(\d+)", name)
        patch = int(m.group(1)) if m else None
    patch = None if patch is None else int(patch[0] if isinstance(patch, (tuple, list)) else patch)
    if patch is not None and size % patch:
        raise ValueError(f"image_size: {size} is not a multiple of the patch size {patch} of {name}")

    dino = method == "dino"
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
    return _Resolved(
        cfg, name, kwargs, int(size), patch, float(lr), float(min_lr), int(warmup), float(wd),
        float(wd_end), float(momentum), int(out_dim), int(hidden), int(bottleneck), int(local),
        int(tt_warm), float(clip),
    )


# --------------------------------------------------------------------------------------------------
# File names and run information
# --------------------------------------------------------------------------------------------------


def checkpoint_name(method: str, epoch: int) -> str:
    """Official file name of the checkpoint saved after 0-based epoch ``epoch``."""
    if method == "dino":
        return f"checkpoint{epoch:04d}.pth"
    if method == "mocov3":
        return f"checkpoint_{epoch:04d}.pth.tar"
    raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")


def init_checkpoint_name(method: str) -> str:
    """Official-format file name of the initial weights (``{epoch}`` spelt ``_init`` / ``init``)."""
    if method == "dino":
        return "checkpoint_init.pth"
    if method == "mocov3":
        return "checkpoint_init.pth.tar"
    raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")


def latest_checkpoint_name(method: str) -> str:
    """The latest-state file rewritten every epoch (not matched by the scan's patterns)."""
    if method == "dino":
        return "checkpoint.pth"
    if method == "mocov3":
        return "checkpoint.pth.tar"
    raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")


def scan_arguments(run: _Resolved | Mapping[str, Any]) -> list[str]:
    """``dsekit scan`` options that rebuild this run's backbone (method, arch, kwargs, size)."""
    if isinstance(run, _Resolved):
        method, arch, kwargs, size = run.cfg.method, run.timm_arch, run.timm_kwargs, run.image_size
    else:
        method, arch, kwargs, size = run["method"], run["arch"], run["model_kwargs"], run["image_size"]
    out = ["--method", method, "--arch", arch]
    for k, v in kwargs.items():
        out += ["--model-kwarg", f"{k}={json.dumps(v)}"]
    out += ["--image-size", str(size)]
    return out


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``dsekit.json`` of a run: ``method``, ``arch``, ``model_kwargs``, ``image_size``,
    ``scan_args``, ``scan_config`` (kwargs for :class:`dsekit.scan.ScanConfig`) and ``settings``."""
    p = Path(run_dir) / RUN_INFO
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist: {run_dir} is not a folder written by dsekit train")
    return json.loads(p.read_text())


def _run_info(run: _Resolved) -> dict[str, Any]:
    return {
        "method": run.cfg.method,
        "arch": run.timm_arch,
        "model_kwargs": run.timm_kwargs,
        "image_size": run.image_size,
        "patch_size": run.patch_size,
        "checkpoint_pattern": checkpoint_name(run.cfg.method, 0).replace("0000", "{epoch:04d}"),
        "scan_args": scan_arguments(run),
        "scan_config": {
            "method": run.cfg.method,
            "arch": run.timm_arch,
            "model_kwargs": run.timm_kwargs,
            "image_size": run.image_size,
            **({"scenes": dict(run.cfg.scenes)} if run.cfg.scenes and run.cfg.images is None else {}),
        },
        "settings": run.settings(),
    }


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# --------------------------------------------------------------------------------------------------
# Randomness
# --------------------------------------------------------------------------------------------------


def _stream_seeds(seed: int, stream: int) -> np.ndarray:
    """Eight 32-bit seeds of stream ``stream`` (epoch index, or -1 for initialisation)."""
    return np.random.SeedSequence([_SEED_TAG, int(seed), int(stream) + 1]).generate_state(8, dtype=np.uint32)


def _seed_globals(seeds: np.ndarray) -> None:
    """Seed the process-wide RNGs that augmentations and initialisers draw from (entry point only)."""
    torch.manual_seed(int(seeds[0]) << 32 | int(seeds[1]))
    np.random.seed(seeds[2:4])
    random.seed(int(seeds[4]))


@contextlib.contextmanager
def _preserved_global_rng(device: torch.device) -> Iterator[None]:
    """Restore the caller's torch / numpy / random states afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if (
        device.type == "cuda") else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


class _ViewsDataset(torch.utils.data.Dataset):
    """Images held as uint8 ``(n, S, S, 3)``; an item is ``transform(PIL image)`` (a list of views)."""

    def __init__(self, images: np.ndarray, transform: Callable[[Any], list[Tensor]]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> list[Tensor]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index]))


def _load_images(run: _Resolved) -> tuple[np.ndarray, dict[str, Any]]:
    """The training images as uint8 ``(n, S, S, 3)`` and their provenance record."""
    from dsekit.data.images import load_image_sample

    cfg = run.cfg
    if cfg.images is not None and not Path(cfg.images).exists():
        raise FileNotFoundError(f"images: folder {cfg.images} does not exist")
    sample = load_image_sample(
        cfg.images, cfg.num_images, cfg.seed, run.image_size, mean=None, std=None, dtype=torch.float32,
        scenes=cfg.scenes,
    )
    if len(sample) < cfg.batch_size:
        raise ValueError(
            f"batch_size: {cfg.batch_size} is larger than the {len(sample)} readable images in {sample.source}"
        )
    arr = sample.images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return np.ascontiguousarray(arr.numpy()), sample.record()


def _transform(run: _Resolved) -> Callable[[Any], list[Tensor]]:
    """The method's lightly views; blur sigmas scale with the image size (``(0.1, 2.0)`` at 224)."""
    scale = run.image_size / 224
    sigmas = (0.1 * scale, 2.0 * scale)
    cfg = run.cfg
    if cfg.method == "dino":
        from lightly.transforms import DINOTransform

        extra: dict[str, Any] = {}
        if cfg.crop_min_scale is not None:
            extra["global_crop_scale"] = (cfg.crop_min_scale, 1.0)
        if cfg.cj_strength is not None:
            extra["cj_strength"] = cfg.cj_strength
        return DINOTransform(
            global_crop_size=run.image_size,
            local_crop_size=run.local_crop_size,
            n_local_views=cfg.local_crops,
            sigmas=sigmas,
            **extra,
        )
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    extra = {}
    if cfg.crop_min_scale is not None:
        extra["min_scale"] = cfg.crop_min_scale
    if cfg.cj_strength is not None:
        extra["cj_strength"] = cfg.cj_strength
    # MoCo v3 uses BYOL's asymmetric augmentations (blur 1.0 / 0.1, solarisation 0 / 0.2)
    return BYOLTransform(
        BYOLView1Transform(input_size=run.image_size, sigmas=sigmas, **extra),
        BYOLView2Transform(input_size=run.image_size, sigmas=sigmas, **extra),
    )


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------


class _MultiCrop(nn.Module):
    """DINO's backbone + head pair (state-dict keys ``backbone.*`` and ``head.*``)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(head output (B, out_dim), patch tokens (B, N, d))``."""
        return _encode(self.backbone, x, self.head)


def _with_module_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {f"module.{k}": v for k, v in state.items()}


def _without_module_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


class _DINO:
    """DINO with lightly's ``DINOProjectionHead`` and ``DINOLoss``; EMA teacher."""

    name = "dino"

    def __init__(self, run: _Resolved) -> None:
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        def build() -> _MultiCrop:
            backbone = _make_backbone(run.timm_arch, run.timm_kwargs, run.image_size)
            with warnings.catch_warnings():  # lightly's head uses the older weight_norm API
                warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
                head = DINOProjectionHead(
                    _embed_dim(backbone), run.hidden_dim, run.bottleneck_dim, run.out_dim,
                    freeze_last_layer=run.cfg.freeze_last_layer,
                )
            return _MultiCrop(backbone, head)

        self.run = run
        self.student = build()
        self.teacher = build()
        self.teacher.load_state_dict(self.student.state_dict())
        deactivate_requires_grad(self.teacher)
        self.criterion = DINOLoss(
            output_dim=run.out_dim,
            warmup_teacher_temp=run.cfg.warmup_teacher_temp,
            teacher_temp=run.cfg.teacher_temp,
            warmup_teacher_temp_epochs=max(1, run.warmup_teacher_temp_epochs),
        )
        n = max(1, run.warmup_teacher_temp_epochs)
        self._temps = np.concatenate(
            [np.linspace(run.cfg.warmup_teacher_temp, run.cfg.teacher_temp, n),
             np.full(max(0, run.cfg.epochs - n), run.cfg.teacher_temp)]
        ) if run.warmup_teacher_temp_epochs > 0 else np.full(run.cfg.epochs, run.cfg.teacher_temp)

    def to(self, device: torch.device) -> None:
        self.student.to(device)
        self.teacher.to(device)
        self.criterion.to(device)

    def trainable(self) -> nn.Module:
        return self.student

    def student_backbone(self) -> nn.Module:
        return self.student.backbone

    def teacher_backbone(self) -> nn.Module:
        return self.teacher.backbone

    def teacher_temp(self, epoch: int) -> float:
        return float(self._temps[min(epoch, len(self._temps) - 1)])

    def step(self, views: Sequence[Tensor], epoch: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        """``(ssl loss, student patch tokens of the global views (2B, N, d), logs)``."""
        b = views[0].shape[0]
        glob = torch.cat(list(views[:2]))
        with torch.no_grad():
            t_out, _ = self.teacher(glob)
        s_glob, patches = self.student(glob)
        s_out = list(s_glob.split(b))
        if len(views) > 2:
            s_loc, _ = self.student(torch.cat(list(views[2:])))
            s_out += list(s_loc.split(b))
        temp = self.teacher_temp(epoch)
        loss = self.criterion(list(t_out.float().split(b)), [s.float() for s in s_out], teacher_temp=temp)
        return loss, patches, {"teacher_temp": temp}

    def before_optimizer_step(self, epoch: int) -> None:
        self.student.head.cancel_last_layer_gradients(epoch)

    def momentum_update(self, m: float) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(self.student, self.teacher, m)

    def checkpoint(self, optimizer: torch.optim.Optimizer, epoch: int, args: argparse.Namespace) -> dict[str, Any]:
        return {
            "student": _with_module_prefix(self.student.state_dict()),
            "teacher": self.teacher.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "args": args,
            "dino_loss": self.criterion.state_dict(),
        }

    def load(self, ckpt: Mapping[str, Any]) -> None:
        self.student.load_state_dict(_without_module_prefix(ckpt["student"]))
        self.teacher.load_state_dict(_without_module_prefix(ckpt["teacher"]))
        self.criterion.load_state_dict(ckpt["dino_loss"])


class _MoCoV3Model(nn.Module):
    """MoCo v3 (keys ``base_encoder.*``, ``momentum_encoder.*``, ``predictor.*``).

    The projector is each encoder's ``head`` (as the official ViT code replaces the classifier).
    """

    def __init__(self, run: _Resolved) -> None:
        from lightly.models.modules import MoCoProjectionHead

        super().__init__()

        def encoder() -> nn.Module:
            backbone = _make_backbone(run.timm_arch, run.timm_kwargs, run.image_size)
            backbone.head = MoCoProjectionHead(
                _embed_dim(backbone), run.hidden_dim, run.out_dim, num_layers=3, batch_norm=True
            )
            return backbone

        self.base_encoder = encoder()
        self.momentum_encoder = encoder()
        self.predictor = MoCoProjectionHead(run.out_dim, run.hidden_dim, run.out_dim, num_layers=2, batch_norm=True)
        self.momentum_encoder.load_state_dict(self.base_encoder.state_dict())


def _contrastive(q: Tensor, k: Tensor, temperature: float) -> Tensor:
    """MoCo v3's InfoNCE of queries ``q (B, c)`` against keys ``k (B, c)`` (positives on the
    diagonal), scaled by ``2 * temperature`` as the official code."""
    q = nn.functional.normalize(q.float(), dim=1)
    k = nn.functional.normalize(k.float(), dim=1)
    logits = q @ k.T / temperature
    labels = torch.arange(q.shape[0], device=q.device)
    return nn.functional.cross_entropy(logits, labels) * (2 * temperature)


class _MoCoV3:
    """MoCo v3 with lightly's ``MoCoProjectionHead`` (3-layer projector, 2-layer predictor, BN)."""

    name = "mocov3"

    def __init__(self, run: _Resolved) -> None:
        from lightly.models.utils import deactivate_requires_grad

        self.run = run
        self.model = _MoCoV3Model(run)
        deactivate_requires_grad(self.model.momentum_encoder)
        self._params = nn.ModuleDict({"base_encoder": self.model.base_encoder, "predictor": self.model.predictor})

    def to(self, device: torch.device) -> None:
        self.model.to(device)

    def trainable(self) -> nn.Module:
        return self._params

    def student_backbone(self) -> nn.Module:
        return self.model.base_encoder

    def teacher_backbone(self) -> nn.Module:
        return self.model.momentum_encoder

    def step(self, views: Sequence[Tensor], epoch: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        m = self.model
        b = views[0].shape[0]
        x = torch.cat(list(views[:2]))
        z, patches = _encode(m.base_encoder, x, m.base_encoder.head)
        q1, q2 = m.predictor(z).split(b)
        with torch.no_grad():
            k, _ = _encode(m.momentum_encoder, x, m.momentum_encoder.head)
            k1, k2 = k.split(b)
        t = self.run.cfg.temperature
        return _contrastive(q1, k2, t) + _contrastive(q2, k1, t), patches, {}

    def before_optimizer_step(self, epoch: int) -> None:
        return None

    def momentum_update(self, m: float) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(self.model.base_encoder, self.model.momentum_encoder, m)

    def checkpoint(self, optimizer: torch.optim.Optimizer, epoch: int, args: argparse.Namespace) -> dict[str, Any]:
        return {
            "epoch": epoch + 1,
            "arch": self.run.timm_arch,
            "state_dict": _with_module_prefix(self.model.state_dict()),
            "optimizer": optimizer.state_dict(),
            "args": args,
        }

    def load(self, ckpt: Mapping[str, Any]) -> None:
        self.model.load_state_dict(_without_module_prefix(ckpt["state_dict"]))


def _build_method(run: _Resolved) -> _DINO | _MoCoV3:
    return _DINO(run) if run.cfg.method == "dino" else _MoCoV3(run)


def _param_groups(module: nn.Module) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weights, none on biases and norm parameters (as DINO)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------------------
# Resumption
# --------------------------------------------------------------------------------------------------


def _args_namespace(run: _Resolved) -> argparse.Namespace:
    """The settings as an ``argparse.Namespace`` of plain values (as the official scripts store)."""
    return argparse.Namespace(**run.settings(), output_dir=str(run.cfg.out))


def _save_numbered(out: Path, cfg: TrainConfig, epoch: int) -> str:
    """Give the latest state its official numbered name when ``epoch`` is due (``""`` if not)."""
    if not (epoch % cfg.save_every == 0 or epoch == cfg.epochs - 1):
        return ""
    name = checkpoint_name(cfg.method, epoch)
    target = out / name
    latest = out / latest_checkpoint_name(cfg.method)
    if not target.exists() or not os.path.samefile(latest, target):
        _link_or_copy(latest, target)
    return name


def _find_resume(out: Path, method: str) -> Path | None:
    latest = out / latest_checkpoint_name(method)
    if latest.is_file():
        return latest
    from dsekit.backbones import INIT_EPOCH, discover_checkpoints

    try:
        found = [(p, e) for p, e in discover_checkpoints(out, method) if e != INIT_EPOCH]
    except FileNotFoundError:
        return None
    return found[-1][0] if found else None


def _check_resume_settings(stored: Mapping[str, Any], run: _Resolved, path: Path) -> None:
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


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a call to :func:`train` did.

    Attributes:
        run_dir: the run folder.
        method: ``"dino"`` or ``"mocov3"``.
        checkpoints: the official checkpoints now in ``run_dir`` as ``(path, 0-based epoch)``.
        init_checkpoint: the initial weights (``checkpoint_init.pth[.tar]``), also read by scan and probe.
        start_epoch: first epoch run by this call (> 0 after resuming).
        end_epoch: epochs completed in total.
        history: one dict per completed epoch (this call and earlier ones).
        scan_args: ``dsekit scan RUN_DIR`` options that read these checkpoints.
        images: provenance of the training images.
    """

    run_dir: Path
    method: str
    checkpoints: list[tuple[Path, int]]
    start_epoch: int
    end_epoch: int
    history: list[dict[str, float]]
    scan_args: list[str]
    images: dict[str, Any] = field(default_factory=dict)
    init_checkpoint: Path | None = None

    @property
    def scan_command(self) -> str:
        """The shell command that scans this run."""
        import shlex

        return shlex.join(["dsekit", "scan", str(self.run_dir), *self.scan_args])


def _make_regularizer(run: _Resolved) -> nn.Module | None:
    if run.cfg.dse_weight == 0:
        return None
    try:
        from dsekit.train.regularizer import DSERegularizer
    except ImportError as err:  # pragma: no cover - part of the package
        raise ValueError(f"dse_weight: the DSE regulariser is unavailable ({err})") from err
    return DSERegularizer(beta=run.cfg.dse_weight, seed=run.cfg.seed)


def train(cfg: TrainConfig, *, progress: bool = True, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; see the module docstring for the outputs.

    Args:
        cfg: the settings.
        progress: show a progress bar per epoch (loss and images/s) and a line per epoch.
        log: where epoch lines go (default: standard error).

    Raises:
        ValueError: a bad setting, or ``cfg.out`` holds a run with other settings.
        FileNotFoundError: ``cfg.images`` does not exist or holds no image.
    """
    run = _resolve(cfg)
    cfg = run.cfg
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out: {out} is a file, expected a run folder")
    emit = log or (lambda s: print(s, file=sys.stderr, flush=True))
    with _preserved_global_rng(device):
        return _train(run, device, out, progress, emit)


def _train(run: _Resolved, device: torch.device, out: Path, progress: bool, emit: Callable[[str], None]) -> TrainResult:
    from lightly.utils.scheduler import cosine_schedule, cosine_warmup_schedule

    from dsekit.backbones import read_checkpoint

    cfg = run.cfg
    resume_from = _find_resume(out, cfg.method) if out.is_dir() else None
    ckpt: Mapping[str, Any] | None = None
    if resume_from is not None:
        ckpt = read_checkpoint(resume_from, map_location="cpu")
        stored = vars(ckpt["args"]) if isinstance(ckpt.get("args"), argparse.Namespace) else {}
        _check_resume_settings(stored, run, resume_from)
    out.mkdir(parents=True, exist_ok=True)

    images, record = _load_images(run)
    _seed_globals(_stream_seeds(cfg.seed, -1))  # initialisation
    method = _build_method(run)
    method.to(device)
    optimizer = torch.optim.AdamW(_param_groups(method.trainable()), lr=run.lr, weight_decay=run.weight_decay)
    reg = _make_regularizer(run)
    history: list[dict[str, float]] = []
    start = 0
    if ckpt is not None:
        method.load(ckpt)
        optimizer.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["epoch"])
        history = [dict(h) for h in ckpt.get("train_log", []) if int(h.get("epoch", -1)) < start]
        emit(f"resuming {cfg.method} from {resume_from.name} (epoch {start} of {cfg.epochs} done)")
        if start > 0 and resume_from.name == latest_checkpoint_name(cfg.method):
            _save_numbered(out, cfg, start - 1)  # in case the run stopped between the two writes
        _atomic_text("".join(json.dumps(h) + "\n" for h in history), out / LOG_FILE)

    args = _args_namespace(run)
    init = out / init_checkpoint_name(cfg.method)
    if ckpt is None and not init.is_file():  # the untrained network, scored like any checkpoint
        _atomic_save(method.checkpoint(optimizer, -1, args), init)
    info = _run_info(run)
    info["images"] = record
    _atomic_text(json.dumps(info, indent=2, default=str) + "\n", out / RUN_INFO)

    dataset = _ViewsDataset(images, _transform(run))
    steps = len(dataset) // cfg.batch_size
    total = steps * cfg.epochs
    warmup_steps = min(run.warmup_epochs * steps, total)
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if cfg.precision == "bf16" else contextlib.nullcontext()
    )
    stop = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, cfg.stop_after)
    for epoch in range(start, stop):
        seeds = _stream_seeds(cfg.seed, epoch)
        _seed_globals(seeds)
        loader_gen = torch.Generator().manual_seed(int(seeds[5]) << 32 | int(seeds[6]))
        if reg is not None:
            gen = torch.Generator(device=device).manual_seed(int(seeds[7]))
            reg.set_rng_state(gen.get_state(), device)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=loader_gen,
            num_workers=cfg.workers, pin_memory=device.type == "cuda",
        )
        method.trainable().train()
        sums = {"loss": 0.0, "loss_ssl": 0.0, "dse": 0.0}
        t0 = time.perf_counter()
        seen = 0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", unit="step",
                       leave=False, dynamic_ncols=True)
        extra: dict[str, float] = {}
        lr = wd = m = 0.0
        for i, views in enumerate(loader):
            it = epoch * steps + i
            lr = cosine_warmup_schedule(it, total, run.lr, run.min_lr, warmup_steps, 0.0) if warmup_steps else (
                cosine_schedule(it, total, run.lr, run.min_lr))
            wd = cosine_schedule(it, total, run.weight_decay, run.weight_decay_end)
            m = cosine_schedule(it, total, run.momentum, 1.0)
            optimizer.param_groups[0]["lr"] = lr
            optimizer.param_groups[0]["weight_decay"] = wd
            optimizer.param_groups[1]["lr"] = lr
            views = [v.to(device, non_blocking=True) for v in views]
            with autocast:
                loss_ssl, patches, extra = method.step(views, epoch)
            loss = loss_ssl
            dse_value = None
            if reg is not None:
                dse_value = reg(patches)
                loss = loss_ssl - cfg.dse_weight * dse_value
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at epoch {epoch}, step {i}; lower the learning rate (--lr)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if run.clip_grad > 0:
                nn.utils.clip_grad_norm_(method.trainable().parameters(), run.clip_grad)
            method.before_optimizer_step(epoch)
            optimizer.step()
            with torch.no_grad():
                method.momentum_update(m)
            sums["loss"] += float(loss.detach())
            sums["loss_ssl"] += float(loss_ssl.detach())
            if dse_value is not None:
                sums["dse"] += float(dse_value.detach())
            seen += views[0].shape[0]
            if bar is not None:
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                post = {"loss": f"{float(loss_ssl.detach()):.4f}", "img/s": f"{rate:.1f}"}
                if dse_value is not None:
                    post["dse"] = f"{float(dse_value.detach()):.4f}"
                bar.set_postfix(post)
                bar.update(1)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        entry: dict[str, float] = {
            "epoch": epoch,
            "loss": sums["loss"] / steps,
            "loss_ssl": sums["loss_ssl"] / steps,
            "lr": lr,
            "weight_decay": wd,
            "momentum": m,
            "seconds": seconds,
            "images_per_s": seen / max(seconds, 1e-9),
            **{k: float(v) for k, v in extra.items()},
        }
        if reg is not None:
            entry["dse"] = sums["dse"] / steps
        history.append(entry)
        state = method.checkpoint(optimizer, epoch, args)
        state["train_log"] = history
        latest = out / latest_checkpoint_name(cfg.method)
        _atomic_save(state, latest)
        name = _save_numbered(out, cfg, epoch)
        saved = f", saved {name}" if name else ""
        _atomic_text("".join(json.dumps(h) + "\n" for h in history), out / LOG_FILE)
        if progress:
            dse_txt = f", dse {entry['dse']:.4f}" if "dse" in entry else ""
            emit(f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}: loss {entry['loss_ssl']:.4f}{dse_txt}, "
                 f"{seconds:.1f} s, {entry['images_per_s']:.1f} img/s{saved}")

    if start >= stop:
        emit(f"{cfg.method}: nothing to do, {start} of {cfg.epochs} epochs are done in {out}")
    from dsekit.backbones import INIT_EPOCH, discover_checkpoints

    try:
        found = [(p, int(e)) for p, e in discover_checkpoints(out, cfg.method) if e is not None and e != INIT_EPOCH]
    except FileNotFoundError:
        found = []
    return TrainResult(
        run_dir=out,
        method=cfg.method,
        checkpoints=found,
        start_epoch=start,
        end_epoch=max(start, stop),
        history=history,
        scan_args=scan_arguments(run),
        images=record,
        init_checkpoint=init if init.is_file() else None,
    )


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` options to ``parser``."""
    p = parser
    p.add_argument("--method", required=True, choices=METHODS, help="self-supervised method")
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, dsekit.json, log.txt)")
    p.add_argument("--images", type=Path, default=None, help="image folder (default: the built-in scenes)")
    p.add_argument("--arch", default="vit_tiny_scenes",
                   help=f"preset ({', '.join(PRESETS)}) or timm architecture (default vit_tiny_scenes)")
    p.add_argument("--model-kwarg", action="append", default=[], metavar="KEY=VALUE",
                   help="timm model argument overriding the preset's, e.g. depth=6 (repeatable)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="training resolution (default: the preset's, 64 for vit_tiny_scenes)")
    p.add_argument("--num-images", type=positive_int, default=512, help="training images (default 512)")
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs (default 20)")
    p.add_argument("--save-every", type=positive_int, default=2,
                   help="save an official checkpoint after epochs 0, K, 2K, ... and the last (default 2)")
    p.add_argument("--dse-weight", type=float, default=0.0, metavar="BETA",
                   help="loss = loss_ssl - BETA * DSE(student patch tokens) (default 0: off; paper 0.001)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per step (default 64)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default base_lr * batch_size / 256; DINO 5e-4, MoCo v3 1.5e-4)")
    p.add_argument("--min-lr", type=float, default=None, help="final learning rate (DINO 1e-6, MoCo v3 0)")
    p.add_argument("--warmup-epochs", type=int, default=None, help="learning-rate warm-up (default 10%% of epochs)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (DINO 0.04, MoCo v3 0.1)")
    p.add_argument("--weight-decay-end", type=float, default=None, help="final weight decay (DINO 0.4)")
    p.add_argument("--momentum", type=float, default=None, help="initial EMA momentum (DINO 0.996, MoCo v3 0.99)")
    p.add_argument("--out-dim", type=positive_int, default=None, help="DINO prototypes / MoCo v3 embedding size")
    p.add_argument("--hidden-dim", type=positive_int, default=None, help="head hidden width (default 512)")
    p.add_argument("--bottleneck-dim", type=positive_int, default=None, help="DINO head bottleneck (default 128)")
    p.add_argument("--local-crops", type=int, default=4, help="DINO local views (default 4)")
    p.add_argument("--local-crop-size", type=positive_int, default=None, help="DINO local view size")
    p.add_argument("--teacher-temp", type=float, default=0.04, help="DINO teacher temperature (default 0.04)")
    p.add_argument("--temperature", type=float, default=0.2, help="MoCo v3 temperature (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything random (default 0)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=_PRECISIONS, help="fp32 or bf16 autocast")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``dsekit train`` on ``subparsers`` (its ``func`` is :func:`run_train`)."""
    p = subparsers.add_parser(
        "train",
        help="train a small ViT with DINO or MoCo v3, saving official checkpoints",
        description="Self-supervised training with lightly's DINO / MoCo v3 components on a timm "
        "backbone (default: vit_tiny_scenes on the built-in scenes). Checkpoints are written in the "
        "method's official format and file name every --save-every epochs, so 'dsekit scan OUT' reads "
        "them; a rerun with the same settings resumes from the latest state.",
    )
    build_arguments(p)
    p.set_defaults(func=run_train)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``train`` arguments."""
    return TrainConfig(
        method=args.method,
        out=str(args.out),
        images=None if args.images is None else str(args.images),
        arch=args.arch,
        model_kwargs=parse_model_kwargs(args.model_kwarg),
        image_size=args.image_size,
        num_images=args.num_images,
        epochs=args.epochs,
        save_every=args.save_every,
        dse_weight=args.dse_weight,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay,
        weight_decay_end=args.weight_decay_end,
        momentum=args.momentum,
        out_dim=args.out_dim,
        hidden_dim=args.hidden_dim,
        bottleneck_dim=args.bottleneck_dim,
        local_crops=args.local_crops,
        local_crop_size=args.local_crop_size,
        teacher_temp=args.teacher_temp,
        temperature=args.temperature,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        workers=args.workers,
    )


def run_train(args: argparse.Namespace) -> int:
    """Entry point of ``dsekit train``: train, then print the checkpoints and the scan command."""
    result = train(config_from_args(args), progress=not args.quiet)
    if not args.quiet:
        print(f"{len(result.checkpoints)} {result.method} checkpoint(s) in {result.run_dir} "
              f"(epochs {result.start_epoch}..{result.end_epoch - 1} run now, {result.end_epoch} done)")
        print(f"scan them with: {result.scan_command}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dsekit.train.ssl ...``: the ``train`` command on its own."""
    parser = build_arguments(argparse.ArgumentParser(prog="dsekit train"))
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"dsekit train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
