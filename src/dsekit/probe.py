r"""Linear-probe mIoU per checkpoint: the segmentation quality that DSE is meant to track.

Protocol (the DINOv2 linear protocol, on frozen patch features)
---------------------------------------------------------------
* **Features**: the frozen backbone's patch features of the chosen layer (default: the last),
  taken exactly as ``dsekit scan`` takes them (:class:`dsekit.backbones.FeatureExtractor`: ViT
  tokens after the final norm, prefix tokens dropped; CNN / Swin stage maps), laid out on the
  patch grid ``(B, d, h, w)``.
* **Head**: ``BatchNorm2d(d)`` followed by a ``1x1 Conv2d(d, C)``
  (:class:`LinearHead`); the convolution starts from ``N(0, 0.01²)`` weights and zero bias
  drawn from a private generator seeded by ``seed``.
* **Loss**: logits ``(B, C, h, w)`` upsampled bilinearly (``align_corners=False``) to the mask
  resolution, cross-entropy averaged over the pixels whose label is not the dataset's ignore
  index (:func:`upsampled_cross_entropy`; exact value and gradient, computed in chunks so that
  the full-resolution logits of a batch never exist at once).
* **Evaluation**: the same upsampled logits, arg-max per pixel, a confusion matrix accumulated
  with ``torchmetrics.classification.MulticlassConfusionMatrix(ignore_index=...)``, then mIoU
  and pixel accuracy from it (:func:`miou_from_confusion`, :func:`pixel_accuracy_from_confusion`).
  The metric never synchronises across processes (``sync_on_compute=False``): under ``torchrun``
  each rank evaluates its own checkpoints on the whole validation set.

mIoU convention: IoU_c = TP_c / (TP_c + FP_c + FN_c); the mean runs over the classes that occur
in the ground truth *or* the prediction of the evaluated set; a class absent from both has no
IoU and is left out of the mean (neither 0 nor 1). This is what torchmetrics' own
``MulticlassJaccardIndex(average="macro")`` computes (it gives such classes zero weight); it is
recomputed here from the confusion matrix so that the rule does not depend on the torchmetrics
version and an empty matrix gives 0.0 instead of NaN. Pixel accuracy is trace / total over the
non-ignored pixels (torchmetrics ``MulticlassAccuracy(average="micro")``).

Defaults (all settable, see :class:`ProbeConfig`)
-------------------------------------------------
* images: shorter side resized to ``image_size`` = 224 (bilinear, antialiased), centre crop
  224 x 224; masks the same with nearest-neighbour, so the **mask resolution is the crop size**;
* no augmentation: features are extracted once per checkpoint and cached, so every epoch sees
  the same crops (this is what makes the head cheap to train);
* 10 epochs over the cached training features, batches of 32 images, AdamW (lr 1e-2, weight
  decay 1e-4), cosine decay of the learning rate to 0 over all steps, no warm-up
  (``optimizer="sgd"``: momentum 0.9, same schedule). The DINOv2 configurations train the head
  with AdamW at lr 1e-3 for 40k iterations; on cached features the head sees a few hundred to a
  few thousand steps, where 1e-3 leaves it short of convergence and 1e-2 reaches it (a
  BatchNorm'd linear layer tolerates the larger step);
* datasets: the training split of :func:`dsekit.data.segmentation.default_train_split` (VOC:
  ``train_aug`` when the SBD list is there), validation on ``val``; all images of both splits,
  except the built-in scenes: 1000 training and 250 validation scenes.

The feature cache
-----------------
Everything the probe stores per dataset (decoded images ``uint8 (n, 3, S, S)`` and masks
``uint8 (n, S, S)``, both kept once for all checkpoints) and per checkpoint (patch features,
``float16 (n, h*w, d)``, the array slots reused from one checkpoint to the next) goes through
one :class:`FeatureCache` whose **resident memory is at most** ``cache_memory_gb`` (default
4 GB). Arrays are placed in RAM while they fit (features first, then masks, then images) and
beyond that in ``numpy.memmap`` files under ``OUT/cache/probe/spill/`` (removed at the end;
their pages live in the OS page cache, which the kernel reclaims as needed). Masks use ``uint8`` when the dataset has at most 255 classes and ignore index 255 (every
built-in reader), ``int16`` otherwise.

Outputs (``OUT``, default ``RUN_DIR/dse``, the folder ``dsekit scan`` writes to)
--------------------------------------------------------------------------------
* ``probe.csv``: ``checkpoint, epoch, dataset, miou, pixel_accuracy, miou_low, miou_high,
  heads``, one row per checkpoint and dataset; rows of other datasets already in the file are
  kept (with any column they have), those of the probed dataset replaced. ``miou`` is the mean
  over ``head_seeds`` heads; ``miou_low`` / ``miou_high`` its bootstrap interval over the
  validation images and the heads (:func:`dsekit.metrics.intervals.miou_bootstrap`,
  ``confidence``, 1000 resamples shared by all checkpoints);
* ``probe_<dataset>_classes.csv``: ``checkpoint, epoch, class_id, class_name, iou, iou_low,
  iou_high`` (empty IoU: the class is absent from truth and prediction);
* ``probe_<dataset>_confusion.npz``: every image's confusion matrix per checkpoint and head
  (sparse: ``checkpoint, head, image, cell, count`` with ``cell = truth * C + prediction``),
  from which :mod:`dsekit.report` draws the paired resamples of its τ and selection intervals;
* ``probe_<dataset>.json``: settings, library versions, the datasets used and, per checkpoint,
  per-class IoU, training loss per epoch and timings;
* ``report.md`` / ``report.json`` / PNGs through :func:`dsekit.report.write_report` when
  ``dse.csv`` is in the same folder.

Resume and torchrun behave as in :mod:`dsekit.scan`: each checkpoint's result is written
atomically to ``OUT/cache/probe/`` as soon as it is done, keyed on the settings, the dataset
and the checkpoint file's identity; under ``torchrun`` checkpoints are split across ranks and
rank 0 assembles the outputs.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .scan import (  # shared with the scan (private helpers of that module)
    _PRECISIONS,
    _barrier,
    _build_model,
    _dist_context,
    resolve_device,
    _versions,
    check_run_settings,
    ensure_writable,
    resolve_auto,
    file_identity,
    write_csv_atomic,
    write_json_atomic,
)

__all__ = [
    "PROBE_COLUMNS",
    "CLASS_COLUMNS",
    "read_confusion_table",
    "write_confusion_table",
    "CheckpointProbe",
    "FeatureCache",
    "LinearHead",
    "ProbeConfig",
    "ProbeMetrics",
    "ProbeResult",
    "add_probe_parser",
    "bilinear_matrix",
    "check_labels",
    "confusion_matrix",
    "iou_from_confusion",
    "linear_probe",
    "miou_from_confusion",
    "pixel_accuracy_from_confusion",
    "probe",
    "run_probe",
    "upsampled_cross_entropy",
]

PROBE_COLUMNS = ("checkpoint", "epoch", "dataset", "miou", "pixel_accuracy", "miou_low", "miou_high", "heads")
CLASS_COLUMNS = ("checkpoint", "epoch", "class_id", "class_name", "iou", "iou_low", "iou_high")
SCENES_DEFAULT_COUNTS = {"train": 1000, "val": 250}
_CPU_CHUNK_ELEMENTS = 1 << 21  # full-resolution logits held at once (8 MB of float32: stays in cache)
_CUDA_CHUNK_ELEMENTS = 1 << 27
_SHOW = 5


# =========================================================================== pure tensor math


def check_labels(mask: Tensor | np.ndarray, num_classes: int, ignore_index: int | None, source: str = "mask") -> None:
    """Raise ``ValueError`` when ``mask`` holds a value outside ``[0, num_classes)`` other than
    ``ignore_index``; the message names ``source`` and the offending values."""
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask)
    if m.is_floating_point() or m.dtype == torch.bool:
        raise ValueError(f"{source}: labels must be integers, got dtype {m.dtype}")
    bad = (m < 0) | (m >= num_classes)
    if ignore_index is not None:
        bad &= m != ignore_index
    if bool(bad.any()):
        values = torch.unique(m[bad]).tolist()
        shown = ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
        ign = f" and {ignore_index} (ignore)" if ignore_index is not None else ""
        raise ValueError(
            f"{source}: label value(s) {shown} outside the class range 0..{num_classes - 1}{ign} "
            f"in {int(bad.sum())} pixel(s)"
        )


def confusion_matrix(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None
) -> Tensor:
    """Confusion matrix ``(C, C)`` int64, rows = ground truth, columns = prediction, through
    ``torchmetrics`` (pixels whose target is ``ignore_index`` are skipped).

    Args:
        preds: predicted class ids, any shape.
        target: ground-truth ids, the same shape; checked with :func:`check_labels`.
    """
    from torchmetrics.classification import MulticlassConfusionMatrix

    if preds.shape != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} must have the same shape")
    check_labels(target, num_classes, ignore_index, "target")
    check_labels(preds, num_classes, None, "preds")
    metric = MulticlassConfusionMatrix(
        num_classes, ignore_index=ignore_index, validate_args=False, sync_on_compute=False
    ).to(preds.device)
    metric.update(preds.reshape(-1).long(), target.reshape(-1).long())
    return metric.compute().long()


def iou_from_confusion(conf: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Per-class IoU and presence from a confusion matrix ``(C, C)`` (rows: truth, cols: prediction).

    Returns:
        ``iou (C,)`` float64 (0 for absent classes) and ``present (C,)`` bool: the class occurs
        in the ground truth or in the prediction (``TP + FP + FN > 0``).
    """
    c = torch.as_tensor(np.asarray(conf) if not isinstance(conf, Tensor) else conf).double()
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise ValueError(f"conf must be a square (C, C) confusion matrix, got shape {tuple(c.shape)}")
    if bool((c < 0).any()) or not bool(torch.isfinite(c).all()):
        raise ValueError("conf must hold finite non-negative counts")
    tp = torch.diagonal(c)
    union = c.sum(0) + c.sum(1) - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1e-300), torch.zeros_like(tp))
    return iou, present


def miou_from_confusion(conf: Tensor | np.ndarray) -> float:
    """Mean IoU over the classes present in the truth or the prediction (absent classes are
    excluded from the mean); 0.0 for an all-zero matrix."""
    iou, present = iou_from_confusion(conf)
    n = int(present.sum())
    return float(iou[present].sum() / n) if n else 0.0


def pixel_accuracy_from_confusion(conf: Tensor | np.ndarray) -> float:
    """Correct pixels / labelled pixels (0.0 for an all-zero matrix)."""
    c = torch.as_tensor(np.asarray(conf) if not isinstance(conf, Tensor) else conf).double()
    total = float(c.sum())
    return float(torch.diagonal(c).sum()) / total if total > 0 else 0.0


def bilinear_matrix(out_size: int, in_size: int, *, device: Any = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``U (out_size, in_size)`` with ``U @ x`` = 1-D bilinear resampling of ``x`` as done by
    ``F.interpolate(mode="bilinear", align_corners=False)`` along one axis (so a 2-D upsampling
    of ``z (h, w)`` to ``(H, W)`` is ``U_H @ z @ U_W.T``)."""
    if out_size < 1 or in_size < 1:
        raise ValueError(f"sizes must be positive, got out_size={out_size}, in_size={in_size}")
    src = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp(min=0.0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    w1 = src - i0.double()
    rows = torch.arange(out_size)
    u = torch.zeros(out_size, in_size, dtype=torch.float64)
    u.index_put_((rows, i0), 1.0 - w1, accumulate=True)
    u.index_put_((rows, i1), w1, accumulate=True)
    return u.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _cached_bilinear_key(out_size: int, in_size: int, device: str) -> Tensor:
    return bilinear_matrix(out_size, in_size, device=device)


def _cached_bilinear(out_size: int, in_size: int, device: torch.device) -> Tensor:
    return _cached_bilinear_key(int(out_size), int(in_size), str(device))


def _upsample(z: Tensor, u_h: Tensor, u_w: Tensor) -> Tensor:
    """Bilinear upsampling ``(b, C, h, w) -> (b, C, H, W)`` as two matrix products ``U_H z U_W^T``
    (equal to ``F.interpolate(mode="bilinear", align_corners=False)``; on CPU several times faster)."""
    b, C, h, w = z.shape
    H, W = u_h.shape[0], u_w.shape[0]
    t = torch.matmul(z.transpose(-1, -2).reshape(b * C * w, h), u_h.t())  # (b*C*w, H)
    t = t.view(b * C, w, H).transpose(1, 2).reshape(b * C * H, w)
    return torch.matmul(t, u_w.t()).view(b, C, H, W)


def _chunk_elements(device: torch.device) -> int:
    return _CUDA_CHUNK_ELEMENTS if device.type == "cuda" else _CPU_CHUNK_ELEMENTS


def _upsampled_ce_and_grad(
    logits: Tensor, target: Tensor, ignore_index: int | None, chunk_elements: int
) -> tuple[Tensor, Tensor]:
    """Loss (float32 scalar) and its gradient w.r.t. ``logits (B, C, h, w)``."""
    B, C, h, w = logits.shape
    H, W = target.shape[-2:]
    dev = logits.device
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    n_valid = int(valid.sum())
    grad = torch.zeros(logits.shape, dtype=torch.float32, device=dev)
    if n_valid == 0:  # nothing to learn from this batch
        return torch.zeros((), dtype=torch.float32, device=dev), grad
    u_h = _cached_bilinear(H, h, dev)
    u_w = _cached_bilinear(W, w, dev)
    total = torch.zeros((), dtype=torch.float64, device=dev)
    tiny = torch.finfo(torch.float32).tiny
    step = max(1, chunk_elements // (C * H * W))
    for lo in range(0, B, step):
        z = logits[lo : lo + step].detach().float()
        b = z.shape[0]
        v = valid[lo : lo + step].unsqueeze(1)  # (b, 1, H, W)
        all_valid = bool(v.all())
        t = target[lo : lo + step].unsqueeze(1).long()
        if not all_valid:
            t = t.masked_fill(~v, 0)
        p = torch.softmax(_upsample(z, u_h, u_w), dim=1)
        nll = p.gather(1, t).clamp_min_(tiny).log_()
        total -= (nll.sum(dtype=torch.float64) if all_valid else nll.masked_fill_(~v, 0.0).sum(dtype=torch.float64))
        # d loss / d upsampled logits = softmax - onehot on labelled pixels, 0 on ignored ones
        p.scatter_add_(1, t, torch.full((1, 1, 1, 1), -1.0, device=dev).expand(t.shape))
        if not all_valid:
            p.mul_(v)
        # adjoint of the upsampling: U_H^T G U_W
        g = torch.matmul(p.view(b * C * H, W), u_w).view(b * C, H, w)
        g = torch.matmul(g.transpose(1, 2).reshape(b * C * w, H), u_h).view(b * C, w, h).transpose(1, 2)
        grad[lo : lo + b] = g.reshape(b, C, h, w)
    return (total / n_valid).float(), grad.div_(n_valid)


class _UpsampledCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, ignore_index: int | None, chunk_elements: int) -> Tensor:  # type: ignore[override]
        loss, grad = _upsampled_ce_and_grad(logits, target, ignore_index, chunk_elements)
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.logits_dtype), None, None, None


def upsampled_cross_entropy(
    logits: Tensor, target: Tensor, ignore_index: int | None = 255, *, chunk_elements: int | None = None
) -> Tensor:
    """Cross-entropy of logits upsampled bilinearly to the target's resolution.

    Equal in value and gradient to ``F.cross_entropy(F.interpolate(logits, size=target.shape[-2:],
    mode="bilinear", align_corners=False), target, ignore_index=ignore_index)`` (mean over the
    labelled pixels), but computed ``chunk_elements`` upsampled values at a time with the
    gradient formed in one pass (softmax minus one-hot, mapped back through the transposed
    interpolation), which is several times lighter on memory and faster on CPU. A batch without
    labelled pixels gives 0 (not NaN). The loss value saturates at ~87 per pixel where a
    probability underflows float32; the gradient is exact there too.

    Args:
        logits: ``(B, C, h, w)`` float.
        target: ``(B, H, W)`` integer class ids (any integer dtype), ``ignore_index`` skipped.
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must have shape (B, C, h, w), got {tuple(logits.shape)}")
    if target.ndim != 3 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target must have shape (B={logits.shape[0]}, H, W), got {tuple(target.shape)}")
    if target.is_floating_point():
        raise ValueError(f"target must hold integer class ids, got dtype {target.dtype}")
    chunk = chunk_elements or _chunk_elements(logits.device)
    return _UpsampledCrossEntropy.apply(logits, target.to(logits.device), ignore_index, chunk)


class LinearHead(nn.Module):
    """``BatchNorm2d(d)`` + ``1x1 Conv2d(d, C)`` on the patch grid: ``(B, d, h, w) -> (B, C, h, w)``.

    Built on the meta device and initialised from ``generator`` (conv weights ``N(0, 0.01²)``,
    bias 0, BN affine 1 / 0), so that creating a head never draws from the process-wide RNG.
    """

    def __init__(self, dim: int, num_classes: int, *, generator: torch.Generator | None = None, device: Any = None):
        super().__init__()
        if dim < 1 or num_classes < 1:
            raise ValueError(f"dim and num_classes must be positive, got {dim}, {num_classes}")
        self.bn = nn.BatchNorm2d(dim, device="meta")
        self.conv = nn.Conv2d(dim, num_classes, kernel_size=1, device="meta")
        self.to_empty(device=device or "cpu")
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.bn.reset_running_stats()
            nn.init.ones_(self.bn.weight)
            nn.init.zeros_(self.bn.bias)
            w = torch.empty(self.conv.weight.shape, dtype=torch.float32).normal_(0.0, 0.01, generator=g)
            self.conv.weight.copy_(w)
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.bn(x))


# --------------------------------------------------------------------------- the probe on features


@dataclass
class ProbeMetrics:
    """Result of :func:`linear_probe` on one set of features."""

    miou: float
    pixel_accuracy: float
    iou: list[float | None]  #: per class; None where the class is absent from truth and prediction
    train_loss: list[float]  #: mean training loss per epoch
    confusion: Tensor  #: (C, C) int64, rows = truth
    timings: dict[str, float] = field(default_factory=dict)  #: seconds: train, epoch_mean, epoch_median, eval
    image_confusion: Any = None  #: (n_val, C*C) ``scipy.sparse.csr_matrix``: each image's confusion, row-major
    epoch_times: list[float] = field(default_factory=list)  #: seconds per epoch

    def as_dict(self) -> dict[str, Any]:
        return {
            "miou": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "iou": self.iou,
            "train_loss": self.train_loss,
            "timings": self.timings,
            "epoch_times": self.epoch_times,
        }


def _grid_of(shape: Sequence[int], grid: tuple[int, int] | None, name: str) -> tuple[int, int, int]:
    """(h, w, d) of a feature array ``(n, N, d)`` or ``(n, d, h, w)``."""
    if len(shape) == 4:
        return int(shape[2]), int(shape[3]), int(shape[1])
    if len(shape) != 3:
        raise ValueError(f"{name} must have shape (n, N, d) or (n, d, h, w), got {tuple(shape)}")
    N, d = int(shape[1]), int(shape[2])
    if grid is None:
        side = math.isqrt(N)
        if side * side != N:
            raise ValueError(f"{name} has N={N} patches, not a square grid: pass grid=(h, w)")
        grid = (side, side)
    if grid[0] * grid[1] != N:
        raise ValueError(f"grid={tuple(grid)} does not match N={N} patches of {name}")
    return int(grid[0]), int(grid[1]), d


def _take(arr: Any, idx: np.ndarray) -> Tensor:
    """Rows ``idx`` (sorted) of a numpy array / memmap / tensor as a tensor."""
    if isinstance(arr, Tensor):
        return arr[torch.from_numpy(idx)]
    return torch.from_numpy(np.ascontiguousarray(arr[idx]))


def _feature_batch(feats: Any, idx: np.ndarray, h: int, w: int, device: torch.device) -> Tensor:
    x = _take(feats, idx).to(device, non_blocking=True).float()
    if x.ndim == 3:  # (b, N, d) -> (b, d, h, w)
        x = x.view(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)
    return x.contiguous()


def _check_mask_array(masks: Any, num_classes: int, ignore_index: int | None, name: str, n: int) -> None:
    if len(masks.shape) != 3 or masks.shape[0] != n:
        raise ValueError(f"{name} must have shape (n={n}, H, W), got {tuple(masks.shape)}")
    step = max(1, (1 << 24) // max(1, int(masks.shape[1]) * int(masks.shape[2])))
    for lo in range(0, n, step):
        chunk = _take(masks, np.arange(lo, min(n, lo + step)))
        try:
            check_labels(chunk, num_classes, ignore_index, name)
        except ValueError:
            for i in range(chunk.shape[0]):  # name the first offending sample
                check_labels(chunk[i], num_classes, ignore_index, f"{name}[{lo + i}]")
            raise


def _make_optimizer(name: str, params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"optimizer: expected 'adamw' or 'sgd', got {name!r}")


def linear_probe(
    train_feats: Any,
    train_masks: Any,
    val_feats: Any,
    val_masks: Any,
    num_classes: int,
    *,
    ignore_index: int | None = 255,
    grid: tuple[int, int] | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    optimizer: str = "adamw",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | str = False,
) -> ProbeMetrics:
    """Train a :class:`LinearHead` on cached features and evaluate it (see the module docstring).

    Args:
        train_feats, val_feats: ``(n, N, d)`` patch tokens (row-major grid ``grid``, default
            square) or ``(n, d, h, w)`` maps: numpy arrays, memmaps or tensors of any float dtype.
        train_masks, val_masks: ``(n, H, W)`` integer class ids; ``ignore_index`` is skipped.
            Values outside ``[0, num_classes)`` other than ``ignore_index`` raise ``ValueError``
            naming the sample and the values.
        epochs, batch_size, lr, weight_decay, optimizer: the schedule (cosine decay to 0, no warm-up).
        seed: head initialisation and batch order (private generator).
        device: where the head trains (default: cuda when available).

    Returns:
        :class:`ProbeMetrics` (mIoU over the classes present in truth or prediction).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not (lr > 0 and math.isfinite(lr)) or weight_decay < 0:
        raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {lr}, {weight_decay}")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    h, w, d = _grid_of(train_feats.shape, grid, "train_feats")
    hv, wv, dv = _grid_of(val_feats.shape, grid, "val_feats")
    if (hv, wv, dv) != (h, w, d):
        raise ValueError(f"val_feats grid/dim {(hv, wv, dv)} differs from train_feats {(h, w, d)}")
    n_train, n_val = int(train_feats.shape[0]), int(val_feats.shape[0])
    if n_train < 1 or n_val < 1 or n_train * h * w < 2:
        raise ValueError(
            f"need at least one validation sample and two training patches, got {n_train} x {h * w} training "
            f"patches and {n_val} validation samples"
        )
    _check_mask_array(train_masks, num_classes, ignore_index, "train_masks", n_train)
    _check_mask_array(val_masks, num_classes, ignore_index, "val_masks", n_val)

    g = torch.Generator().manual_seed(int(seed))
    head = LinearHead(d, num_classes, generator=g, device=dev)
    opt = _make_optimizer(optimizer, head.parameters(), lr, weight_decay)
    steps_per_epoch = math.ceil(n_train / batch_size)
    total_steps = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc=progress if isinstance(progress, str) else "head", unit="step", leave=False)

    losses: list[float] = []
    epoch_times: list[float] = []
    t0 = time.perf_counter()
    head.train()
    try:
        for _ in range(epochs):
            te = time.perf_counter()
            order = torch.randperm(n_train, generator=g).numpy()
            acc, count = 0.0, 0
            for lo in range(0, n_train, batch_size):
                idx = np.sort(order[lo : lo + batch_size])
                if idx.size * h * w == 1:  # BatchNorm needs two values per channel: borrow one more image
                    idx = np.sort(order[lo - 1 : lo + 1])
                x = _feature_batch(train_feats, idx, h, w, dev)
                y = _take(train_masks, idx).to(dev, non_blocking=True)
                loss = upsampled_cross_entropy(head(x), y, ignore_index)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                acc += float(loss.detach()) * idx.size
                count += idx.size
                if bar is not None:
                    bar.update(1)
            losses.append(acc / count)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            epoch_times.append(time.perf_counter() - te)
            if not math.isfinite(losses[-1]):
                raise ValueError("the probe's training loss is not finite: the features hold NaN/Inf or huge values")
    finally:
        if bar is not None:
            bar.close()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t1 = time.perf_counter()
    conf, per_image = _evaluate(head, val_feats, val_masks, num_classes, ignore_index, h, w, dev, batch_size)
    t2 = time.perf_counter()
    iou, present = iou_from_confusion(conf)
    return ProbeMetrics(
        miou=miou_from_confusion(conf),
        pixel_accuracy=pixel_accuracy_from_confusion(conf),
        iou=[float(v) if p else None for v, p in zip(iou.tolist(), present.tolist())],
        train_loss=losses,
        confusion=conf.cpu(),
        timings={
            "train": t1 - t0,
            "epoch_mean": (t1 - t0) / epochs,
            "epoch_median": float(np.median(epoch_times)),
            "eval": t2 - t1,
        },
        epoch_times=epoch_times,
        image_confusion=per_image,
    )


@torch.no_grad()
def _evaluate(
    head: LinearHead, feats: Any, masks: Any, num_classes: int, ignore_index: int | None,
    h: int, w: int, dev: torch.device, batch_size: int,
) -> tuple[Tensor, Any]:
    """The confusion matrix (C, C) over all images (torchmetrics) and each image's, as a sparse
    ``(n, C*C)`` matrix (for the bootstrap over validation images)."""
    from scipy import sparse
    from torchmetrics.classification import MulticlassConfusionMatrix

    head.eval()
    metric = MulticlassConfusionMatrix(
        num_classes, ignore_index=ignore_index, validate_args=False, sync_on_compute=False
    ).to(dev)
    n = int(feats.shape[0])
    H, W = int(masks.shape[1]), int(masks.shape[2])
    u_h, u_w = _cached_bilinear(H, h, dev), _cached_bilinear(W, w, dev)
    step = max(1, min(batch_size, _chunk_elements(dev) // (num_classes * H * W)))
    C2 = num_classes * num_classes
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for lo in range(0, n, step):
        idx = np.arange(lo, min(n, lo + step))
        logits = head(_feature_batch(feats, idx, h, w, dev))
        pred = _upsample(logits, u_h, u_w).argmax(1)
        target = _take(masks, idx).to(dev).long()
        metric.update(pred.reshape(-1), target.reshape(-1))
        valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        image = torch.arange(len(idx), device=dev).view(-1, 1, 1).expand_as(target)
        key = (image * num_classes + target) * num_classes + pred
        counts = torch.bincount(key[valid], minlength=len(idx) * C2).view(len(idx), C2).cpu()
        r, c = counts.nonzero(as_tuple=True)
        rows.append((r + lo).numpy())
        cols.append(c.numpy())
        vals.append(counts[r, c].numpy())
    per_image = sparse.csr_matrix(
        (np.concatenate(vals) if vals else np.zeros(0, np.int64),
         (np.concatenate(rows) if rows else np.zeros(0, np.int64), np.concatenate(cols) if cols else np.zeros(0, np.int64))),
        shape=(n, C2), dtype=np.int64,
    )
    return metric.compute().long(), per_image


# =========================================================================== the feature cache


def _spill_prefix() -> str:
    import socket

    host = "".join(ch if ch.isalnum() else "_" for ch in socket.gethostname())
    return f"spill-{host}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_spills(parent: str | os.PathLike) -> list[Path]:
    """Remove the spill folders in ``parent`` left by processes of this machine that no longer run
    (a probe killed while spilling); returns what was removed. Folders of live processes and of
    other machines (a shared file system) are kept."""
    removed = []
    prefix = _spill_prefix()
    for d in Path(parent).glob(f"{prefix}*"):
        pid = d.name[len(prefix):].split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


class FeatureCache:
    """Arrays kept in RAM up to ``memory_bytes`` in total and in ``numpy.memmap`` files beyond.

    ``allocate`` places an array in RAM when it fits in what is left of the bound, else on disk
    in ``directory`` (created on first use, removed by :meth:`close`; folders left there by killed
    processes are removed when a new one is made). ``in_memory_bytes`` never
    exceeds ``memory_bytes``; ``peak_in_memory_bytes`` records the largest value it reached.
    """

    def __init__(self, memory_bytes: int, directory: str | os.PathLike | None = None) -> None:
        if memory_bytes < 0:
            raise ValueError(f"memory_bytes must be >= 0, got {memory_bytes}")
        self.memory_bytes = int(memory_bytes)
        self._parent = Path(directory) if directory is not None else None
        self._dir: Path | None = None
        self._arrays: dict[str, tuple[np.ndarray, bool]] = {}
        self.in_memory_bytes = 0
        self.on_disk_bytes = 0
        self.peak_in_memory_bytes = 0

    def allocate(self, name: str, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """A new (uninitialised) array ``name``; an earlier array of that name is released."""
        self.release(name)
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self.in_memory_bytes + nbytes <= self.memory_bytes:
            arr = np.empty(tuple(shape), dtype=dtype)
            self.in_memory_bytes += nbytes
            self.peak_in_memory_bytes = max(self.peak_in_memory_bytes, self.in_memory_bytes)
            self._arrays[name] = (arr, False)
            return arr
        if self._dir is None:
            parent = self._parent if self._parent is not None else Path(tempfile.gettempdir())
            parent.mkdir(parents=True, exist_ok=True)
            remove_stale_spills(parent)
            self._dir = Path(tempfile.mkdtemp(prefix=f"{_spill_prefix()}{os.getpid()}-", dir=parent))
        path = self._dir / f"{name}.{dtype.name}.mmap"
        arr = np.memmap(path, dtype=dtype, mode="w+", shape=tuple(shape)) if nbytes else np.empty(tuple(shape), dtype)
        self.on_disk_bytes += nbytes
        self._arrays[name] = (arr, True)
        return arr

    def is_spilled(self, name: str) -> bool:
        return self._arrays[name][1]

    def release(self, name: str) -> None:
        if name not in self._arrays:
            return
        arr, spilled = self._arrays.pop(name)
        if spilled:
            self.on_disk_bytes -= arr.nbytes
            if isinstance(arr, np.memmap):
                filename = arr.filename
                arr._mmap.close()  # type: ignore[attr-defined]
                Path(filename).unlink(missing_ok=True)
        else:
            self.in_memory_bytes -= arr.nbytes

    def stats(self) -> dict[str, int]:
        return {
            "memory_bound_bytes": self.memory_bytes,
            "in_memory_bytes": self.in_memory_bytes,
            "peak_in_memory_bytes": self.peak_in_memory_bytes,
            "on_disk_bytes": self.on_disk_bytes,
        }

    def close(self) -> None:
        for name in list(self._arrays):
            try:
                self.release(name)
            except (OSError, ValueError, BufferError):
                self._arrays.pop(name, None)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# =========================================================================== probing a run (I/O)


@dataclass
class ProbeConfig:
    """Every setting of a probe run (all of them go to ``probe_<dataset>.json``)."""

    run_dir: str
    method: str
    dataset: str = "scenes"
    root: str | None = None  #: dataset directory (None for the built-in scenes)
    scenes: dict[str, Any] = field(default_factory=dict)  #: SceneConfig settings of the built-in scenes
    out: str | None = None  #: default: ``RUN_DIR/dse`` (next to the scan's dse.csv)
    train_split: str | None = None  #: default: ``default_train_split(dataset, root)``
    val_split: str = "val"
    num_classes: int | None = None  #: folder datasets only: None reads classes.txt, else infers from the masks
    num_train: int | None = None  #: None: every sample (scenes: 1000)
    num_val: int | None = None  #: None: every sample (scenes: 250)
    arch: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    glob: str | None = None
    branch: str | None = None
    prefix: str | None = None
    allow_partial: bool = False
    trust_checkpoints: bool = False
    layer: int = -1
    image_size: int = 224  #: crop side S; masks are stored at S x S
    resize: int | None = None  #: shorter side before the centre crop (default: S)
    epochs: int = 10
    head_batch_size: int = 32
    lr: float = 1e-2
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    seed: int = 0
    head_seeds: int = 1  #: heads trained per checkpoint (seeds ``seed, seed+1, ...``); mIoU is their mean
    confidence: float = 0.95  #: nominal coverage of the mIoU intervals
    batch_size: int = 64  #: images per backbone forward pass
    cache_memory_gb: float = 4.0
    cache_dtype: str = "float16"
    workers: int | None = None  #: image decoding processes (default: min(4, CPUs); 0 for scenes)
    threads: int | None = None  #: CPU threads for the run (``torch.set_num_threads``, restored after); None: as set
    device: str | None = None
    precision: str = "fp32"

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run_dir) / "dse"

    def result_key(self, data_fingerprint: str) -> str:
        """Hash of everything that changes a checkpoint's numbers (not device, paths or speed knobs)."""
        keyed = {
            k: v
            for k, v in asdict(self).items()
            if k not in (
                "run_dir", "out", "glob", "device", "batch_size", "cache_memory_gb", "workers", "threads",
                "trust_checkpoints", "root", "confidence",
            )
        }
        if not keyed.get("scenes"):  # default scenes: same key as before the setting existed
            keyed.pop("scenes", None)
        keyed["data"] = data_fingerprint
        return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class CheckpointProbe:
    """Probe result of one checkpoint on one dataset (``status`` is ``"ok"`` or ``"failed"``)."""

    checkpoint: str
    epoch: int | None
    dataset: str
    status: str
    miou: float = float("nan")
    pixel_accuracy: float = float("nan")
    iou: list[float | None] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""
    identity: str = ""
    num_train: int = 0
    num_val: int = 0
    head_miou: list[float] = field(default_factory=list)  #: mIoU of each head (seed, seed+1, ...)
    partial: str = ""  #: with ``allow_partial``: what did not fit (missing / unexpected keys); "" if it all did


@dataclass
class ProbeResult:
    """What a probe run produced (rank 0 has the assembled outputs)."""

    results: list[CheckpointProbe]
    dataset: str
    out_dir: Path
    failed: list[CheckpointProbe]
    computed: int  #: checkpoints probed by this process in this call (not taken from the cache)
    cache_stats: dict[str, int] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)  #: seconds: data (open + decode, once per run), total

    @property
    def ok(self) -> bool:
        return not self.failed


class _Uint8Eval:
    """Joint eval transform returning ``(uint8 image (3, S, S), int64 mask (S, S))`` (no normalisation)."""

    def __init__(self, image_size: int, resize: int | None) -> None:
        from .data.segmentation import EvalTransform

        self.inner = EvalTransform(image_size=image_size, resize=resize, mean=None, std=None)

    def __call__(self, image: Any, mask: Any) -> tuple[Tensor, Tensor]:
        img, m = self.inner(image, mask)
        return img.mul(255.0).round_().to(torch.uint8), m

    def __repr__(self) -> str:
        return f"uint8 {self.inner!r}"


@dataclass
class _Split:
    images: np.ndarray  # (n, 3, S, S) uint8
    masks: np.ndarray  # (n, S, S) uint8 / int16
    names: list[str]


def _open_dataset(cfg: ProbeConfig, split: str, which: str) -> Any:
    from .data.segmentation import dataset_spec, get_dataset

    spec = dataset_spec(cfg.dataset)
    count = cfg.num_train if which == "train" else cfg.num_val
    kwargs: dict[str, Any] = {
        "image_size": cfg.image_size,
        "resize": cfg.resize,
        "transform": _Uint8Eval(cfg.image_size, cfg.resize),
        "seed": cfg.seed,
    }
    if spec.name == "scenes":
        from .data.scenes import SceneConfig

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


def _dataset_label(cfg: ProbeConfig) -> str:
    from .data.segmentation import dataset_spec

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


def _fingerprint(train_ds: Any, val_ds: Any) -> str:
    """Hash of both splits: their settings, sample ids and the content of every image and mask
    file used (about 1 GB/s: a second or two for PASCAL VOC's train_aug + val); the built-in
    scenes are a function of their settings."""
    from .data.images import content_hash

    parts = []
    for ds in (train_ds, val_ds):
        rec = ds.record() if hasattr(ds, "record") else {"n": len(ds)}
        rec = {k: v for k, v in rec.items() if k not in ("root", "transform")}
        ids = list(getattr(ds, "ids", []))
        root = getattr(ds, "root", None) or Path("/")
        files = [os.path.relpath(p, root) for pair in getattr(ds, "samples", []) for p in pair]  # a moved root keeps its key
        parts.append({"record": rec, "ids": ids, "content": content_hash(root, files) if files else None})
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _mask_dtype(num_classes: int, ignore_index: int) -> np.dtype:
    if num_classes <= 255 and ignore_index == 255:
        return np.dtype(np.uint8)
    if num_classes <= 32767 and -32768 <= ignore_index <= 32767:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def _default_workers(ds: Any) -> int:
    from .data.segmentation import ScenesSegmentation

    if isinstance(ds, ScenesSegmentation):
        return 0  # generated in memory: nothing to decode
    return min(4, os.cpu_count() or 1)


def _decode_split(
    ds: Any, cache: FeatureCache, tag: str, cfg: ProbeConfig, progress: bool
) -> _Split:
    """Decode every (image, mask) of ``ds`` once into the cache, checking the labels."""
    from torch.utils.data import DataLoader

    n, S = len(ds), cfg.image_size
    C, ignore = int(ds.num_classes), int(ds.ignore_index)
    masks = cache.allocate(f"{tag}.masks", (n, S, S), _mask_dtype(C, ignore))
    images = cache.allocate(f"{tag}.images", (n, 3, S, S), np.uint8)
    workers = cfg.workers if cfg.workers is not None else _default_workers(ds)
    loader = DataLoader(ds, batch_size=16, shuffle=False, num_workers=workers)
    bar = None
    if progress:
        from tqdm.auto import tqdm

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
    return _Split(images, masks, names)


def _worker_message(exc: BaseException) -> str:
    """The original error of a DataLoader worker, without the worker's traceback: its last line."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return last.split(": ", 1)[1] if re.match(r"^[A-Za-z_.]*(Error|Exception): ", last) else last


def _extract_into(
    extractor: Any, images: np.ndarray, out: np.ndarray, cfg: ProbeConfig, device: torch.device, desc: str | bool
) -> None:
    """Patch features of uint8 ``images`` into ``out (n, N, d)`` (the cache's dtype)."""
    from .backbones import extract_features
    from .data.images import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0
    n = images.shape[0]
    bar = None
    if desc:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=desc if isinstance(desc, str) else "features", unit="img", leave=False)
    try:
        for lo in range(0, n, cfg.batch_size):
            x = torch.from_numpy(images[lo : lo + cfg.batch_size]).to(device, non_blocking=True)
            x = (x.float() - mean) / std
            z = extract_features(
                extractor, x, batch_size=cfg.batch_size, device=device, amp_dtype=_PRECISIONS[cfg.precision]
            )
            if not bool(torch.isfinite(z).all()):
                raise ValueError("the backbone's features hold NaN/Inf values")
            zc = z.numpy().astype(out.dtype)
            if not np.isfinite(zc).all():
                raise ValueError(
                    f"features overflow {out.dtype} (max |value| {float(z.abs().max()):.3g}); use cache_dtype='float32'"
                )
            out[lo : lo + z.shape[0]] = zc
            if bar is not None:
                bar.update(z.shape[0])
    finally:
        if bar is not None:
            bar.close()


def _probe_checkpoint(
    cfg: ProbeConfig,
    path: Path,
    model: nn.Module | None,
    data: dict[str, _Split],
    feats: dict[str, np.ndarray],
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    progress: bool,
) -> tuple[list[ProbeMetrics], dict[str, float], str]:
    """Load, extract and train ``cfg.head_seeds`` heads -> (per-head metrics, timings, partial-load message)."""
    from .backbones import FeatureExtractor, load_backbone_as

    t0 = time.perf_counter()
    partial: list[str] = []
    model = load_backbone_as(cfg, path, model, partial=partial)
    extractor = FeatureExtractor(model, cfg.layer)
    t1 = time.perf_counter()
    for split in ("train", "val"):
        _extract_into(extractor, data[split].images, feats[split], cfg, device, f"{path.name} {split}" if progress else False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t2 = time.perf_counter()
    heads = [
        linear_probe(
            feats["train"],
            data["train"].masks,
            feats["val"],
            data["val"].masks,
            num_classes,
            ignore_index=ignore_index,
            epochs=cfg.epochs,
            batch_size=cfg.head_batch_size,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            optimizer=cfg.optimizer,
            seed=cfg.seed + h,
            device=device,
            progress=f"{path.name} head {h + 1}/{cfg.head_seeds}" if progress else False,
        )
        for h in range(cfg.head_seeds)
    ]
    timings = {"load": t1 - t0, "extract": t2 - t1}
    for k in heads[0].timings:
        timings[f"head_{k}"] = sum(m.timings[k] for m in heads)
    timings["total"] = time.perf_counter() - t0
    return heads, timings, "; ".join(partial)


def _combine_heads(heads: list[ProbeMetrics]) -> tuple[float, float, list[float | None]]:
    """mIoU, pixel accuracy and per-class IoU averaged over heads (a class absent for every head: None)."""
    miou = float(np.mean([m.miou for m in heads]))
    acc = float(np.mean([m.pixel_accuracy for m in heads]))
    iou: list[float | None] = []
    for c in range(len(heads[0].iou)):
        vals = [m.iou[c] for m in heads if m.iou[c] is not None]
        iou.append(float(np.mean(vals)) if vals else None)
    return miou, acc, iou


def _cache_path(cache: Path, path: Path, identity: str, key: str) -> Path:
    return cache / f"{path.name}.{hashlib.sha256((identity + key).encode()).hexdigest()[:16]}.json"


def _failed_path(cache: Path, path: Path, label: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
    return cache / f"{path.name}.{safe}.failed.json"


def _read_cached(p: Path) -> CheckpointProbe | None:
    try:
        return CheckpointProbe(**json.loads(p.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # absent or unreadable: recompute


def _feature_shape(model: nn.Module, cfg: ProbeConfig, device: torch.device) -> tuple[int, int]:
    """(N, d) of the model's features at ``image_size``, from one blank image."""
    from .backbones import FeatureExtractor, extract_features

    z = extract_features(FeatureExtractor(model, cfg.layer), torch.zeros(1, 3, cfg.image_size, cfg.image_size), device=device)
    return int(z.shape[1]), int(z.shape[2])


def probe(
    cfg: ProbeConfig,
    *,
    progress: bool = True,
    console: Any = None,
    after_checkpoint: Callable[[CheckpointProbe], None] | None = None,
) -> ProbeResult:
    """Linear-probe every checkpoint of ``cfg.run_dir`` on ``cfg.dataset`` (see the module docstring).

    Raises:
        FileNotFoundError / NotADirectoryError: the run folder or the dataset root is missing
            (the dataset error shows the expected layout).
        ValueError: an unknown method, dataset or setting; label values outside the class range
            (naming the mask file and the values).
    """
    from rich.console import Console

    from .backbones import discover_checkpoints, get_adapter
    from .data.segmentation import dataset_spec, default_train_split

    console = console or Console(stderr=True)
    cfg = resolve_auto(cfg, console)
    get_adapter(cfg.method)
    spec = dataset_spec(cfg.dataset)
    if cfg.precision not in _PRECISIONS:
        raise ValueError(f"precision: expected one of {sorted(_PRECISIONS)}, got {cfg.precision!r}")
    if cfg.cache_dtype not in ("float16", "float32"):
        raise ValueError(f"cache_dtype: expected 'float16' or 'float32', got {cfg.cache_dtype!r}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {cfg.threads!r}")
    if isinstance(cfg.head_seeds, bool) or not isinstance(cfg.head_seeds, int) or cfg.head_seeds < 1:
        raise ValueError(f"head_seeds must be a positive int, got {cfg.head_seeds!r}")
    if not 0 < cfg.confidence < 1:
        raise ValueError(f"confidence: expected a level in (0, 1), got {cfg.confidence!r}")
    if not cfg.cache_memory_gb >= 0:
        raise ValueError(f"cache_memory_gb must be >= 0, got {cfg.cache_memory_gb}")
    _make_optimizer(cfg.optimizer, [torch.zeros(1, requires_grad=True)], 1.0, 0.0)  # validates the name
    if spec.needs_root and cfg.root is None:
        raise ValueError(f"dataset {spec.name!r} needs --root (its layout:)\n{spec.layout}")
    check_run_settings(cfg)
    device = resolve_device(cfg.device)
    checkpoints = discover_checkpoints(cfg.run_dir, cfg.method, cfg.glob)
    built = _build_model(cfg)  # type: ignore[arg-type]  # an unknown architecture or layer fails here
    out = cfg.out_dir
    cache_dir = out / "cache" / "probe"
    ensure_writable(cache_dir)
    rank, world, owns_group = _dist_context(device)
    label = _dataset_label(cfg)
    train_split = cfg.train_split or default_train_split(spec.name, cfg.root)

    threads_before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    store = FeatureCache(int(cfg.cache_memory_gb * (1 << 30)), cache_dir / "spill")
    t_start = time.perf_counter()
    run_timings: dict[str, float] = {}
    try:
        train_ds = _open_dataset(cfg, train_split, "train")
        val_ds = _open_dataset(cfg, cfg.val_split, "val")
        num_classes, ignore_index = int(train_ds.num_classes), int(train_ds.ignore_index)
        key = cfg.result_key(_fingerprint(train_ds, val_ds) + label + train_split)
        identities = [file_identity(p) if p.is_file() else "" for p, _ in checkpoints]
        # the checkpoints still to probe, split evenly across processes (every process lists
        # the cache before any of them writes to it)
        pending = [
            i for i in range(len(checkpoints))
            if _read_cached(_cache_path(cache_dir, checkpoints[i][0], identities[i], key)) is None
        ]
        _barrier(world)
        todo = pending[rank::world]
        computed = 0
        if todo:
            # set-up errors (architecture, dataset files, labels) stop the run; checkpoint errors do not
            model = None if cfg.allow_partial else built  # reused: strict loading overwrites every weight
            N, d = _feature_shape(built, cfg, device)
            feats = {  # reserved first: read every epoch, they get the RAM before images and masks
                split: store.allocate(f"{split}.features", (len(ds), N, d), cfg.cache_dtype)
                for split, ds in (("train", train_ds), ("val", val_ds))
            }
            data = {
                "train": _decode_split(train_ds, store, "train", cfg, progress and rank == 0),
                "val": _decode_split(val_ds, store, "val", cfg, progress and rank == 0),
            }
            run_timings["data"] = time.perf_counter() - t_start
            for n, i in enumerate(todo, 1):
                path, epoch = checkpoints[i]
                target = _cache_path(cache_dir, path, identities[i], key)
                if progress:
                    console.print(f"probing [{n}/{len(todo)}] {path.name} on {label}")
                try:
                    heads, timings, partial = _probe_checkpoint(
                        cfg, path, model, data, feats, num_classes, ignore_index, device, progress
                    )
                    miou, acc, iou = _combine_heads(heads)
                    res = CheckpointProbe(
                        str(path), epoch, label, "ok", miou, acc, iou,
                        heads[0].train_loss, timings, identity=identities[i],
                        num_train=len(train_ds), num_val=len(val_ds), head_miou=[m.miou for m in heads],
                        partial=partial,
                    )
                    write_confusion_table(target.with_suffix(".npz"), [str(path)], [[m.image_confusion for m in heads]])
                    write_json_atomic(target, asdict(res))
                    _failed_path(cache_dir, path, label).unlink(missing_ok=True)
                    computed += 1
                except Exception as exc:  # noqa: BLE001 - one bad checkpoint must not stop the run
                    res = CheckpointProbe(
                        str(path), epoch, label, "failed", error=f"{type(exc).__name__}: {exc}", identity=identities[i]
                    )
                    write_json_atomic(_failed_path(cache_dir, path, label), asdict(res))
                    console.print(f"[red]failed[/red] {path.name}: {res.error}")
                if after_checkpoint is not None:
                    after_checkpoint(res)
        _barrier(world)

        results: list[CheckpointProbe] = []
        confusions: dict[str, list[Any]] = {}
        for i, (path, epoch) in enumerate(checkpoints):
            cached = _cache_path(cache_dir, path, identities[i], key)
            res = _read_cached(cached)
            conf = _cached_confusions(cached.with_suffix(".npz")) if res is not None else None
            if res is not None and conf is not None:
                confusions[str(path)] = conf
            elif res is not None:  # the confusions are gone: this result cannot be given an interval
                res = None
            if res is None:
                res = _read_cached(_failed_path(cache_dir, path, label)) or CheckpointProbe(
                    str(path), epoch, label, "failed", error="no result (not probed)"
                )
            results.append(replace(res, checkpoint=str(path)))  # where it is now (the run may have moved)
        failed = [r for r in results if r.status != "ok"]
        report = None
        run_timings["total"] = time.perf_counter() - t_start
        if rank == 0:
            _write_outputs(
                cfg, results, confusions, label, train_split, train_ds, val_ds, store.stats(), key, out, run_timings
            )
            report = _maybe_report(out, console)
            if progress:
                _print_summary(console, results, label)
        _barrier(world)
        return ProbeResult(results, label, out, failed, computed, store.stats(), report, run_timings)
    finally:
        store.close()
        torch.set_num_threads(threads_before)
        if owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _fmt(v: float | None) -> str:
    return repr(float(v)) if v is not None and math.isfinite(v) else ""


def write_confusion_table(path: Path, names: Sequence[str], confusions: Sequence[Sequence[Any]]) -> None:
    """Checkpoints' per-head, per-image confusions (sparse ``(n, C*C)`` matrices, ``confusions[t][h]``)
    in one sparse table (see the module docstring), written atomically. Also the format of the
    per-checkpoint cache files."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("checkpoint", "head", "image", "cell", "count")}
    shape = np.zeros(3, np.int64)
    for t, heads in enumerate(confusions):
        for h, m in enumerate(heads):
            coo = m.tocoo()
            shape = np.array([len(heads), *coo.shape], np.int64)
            for k, v in (("checkpoint", np.full(coo.nnz, t)), ("head", np.full(coo.nnz, h)), ("image", coo.row),
                         ("cell", coo.col), ("count", coo.data)):
                cols[k].append(np.asarray(v))
    arrays = {k: (np.concatenate(v) if v else np.zeros(0)).astype(np.int64) for k, v in cols.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays, shape=shape, checkpoints=np.array(list(names), dtype=str))
    os.replace(tmp, path)


def _cached_confusions(path: Path) -> list[Any] | None:
    """The per-head confusions of one checkpoint's cache file (None when absent or unreadable)."""
    try:
        return read_confusion_table(path)[1][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def read_confusion_table(path: str | os.PathLike) -> tuple[list[str], list[list[Any]]]:
    """The checkpoints of a ``probe_<dataset>_confusion.npz`` and their per-head sparse (n, C*C) matrices."""
    from scipy import sparse

    with np.load(path, allow_pickle=False) as z:
        names = [str(c) for c in z["checkpoints"]]
        H, n, cc = (int(v) for v in z["shape"])
        t, h, i, c, v = (z[k] for k in ("checkpoint", "head", "image", "cell", "count"))
    out = []
    for k in range(len(names)):
        sel_t = t == k
        out.append([
            sparse.csr_matrix((v[sel_t & (h == j)], (i[sel_t & (h == j)], c[sel_t & (h == j)])), shape=(n, cc))
            for j in range(H)
        ])
    return names, out


def _write_outputs(
    cfg: ProbeConfig,
    results: list[CheckpointProbe],
    confusions: dict[str, list[Any]],
    label: str,
    train_split: str,
    train_ds: Any,
    val_ds: Any,
    cache_stats: dict[str, int],
    key: str,
    out: Path,
    run_timings: dict[str, float],
) -> None:
    from .metrics.intervals import miou_bootstrap

    ok = [r for r in results if r.status == "ok"]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
    boot = (
        miou_bootstrap([confusions[r.checkpoint] for r in ok], confidence=cfg.confidence, seed=cfg.seed)
        if ok and ok[0].num_val >= 2 else None
    )
    columns = list(PROBE_COLUMNS)
    rows: list[dict[str, str]] = []
    csv_path = out / "probe.csv"
    if csv_path.is_file():  # keep the rows of the other datasets, with every column they have
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames and "dataset" in reader.fieldnames:
                columns += [c for c in reader.fieldnames if c not in columns and c]
                rows = [dict(r) for r in reader if r.get("dataset") != label]
    for t, r in enumerate(ok):
        rows.append({
            "checkpoint": r.checkpoint, "epoch": "" if r.epoch is None else str(r.epoch), "dataset": label,
            "miou": _fmt(r.miou), "pixel_accuracy": _fmt(r.pixel_accuracy),
            "miou_low": _fmt(boot.low[t]) if boot else "", "miou_high": _fmt(boot.high[t]) if boot else "",
            "heads": str(len(r.head_miou) or 1), "partial": "yes" if r.partial else "",
        })
    if any(r.partial for r in ok) and "partial" not in columns:
        columns.append("partial")
    write_csv_atomic(out / "probe.csv", columns, rows)
    names = list(getattr(train_ds, "class_names", ()))
    class_rows = []
    for t, r in enumerate(ok):
        for c, v in enumerate(r.iou):
            class_rows.append({
                "checkpoint": r.checkpoint, "epoch": "" if r.epoch is None else str(r.epoch), "class_id": str(c),
                "class_name": names[c] if c < len(names) else str(c), "iou": _fmt(v),
                "iou_low": _fmt(boot.iou_low[t, c]) if boot else "", "iou_high": _fmt(boot.iou_high[t, c]) if boot else "",
            })
    write_csv_atomic(out / f"probe_{safe}_classes.csv", list(CLASS_COLUMNS), class_rows)
    write_confusion_table(out / f"probe_{safe}_confusion.npz", [r.checkpoint for r in ok],
                          [confusions[r.checkpoint] for r in ok])
    record = {
        "settings": {**asdict(cfg), "train_split": train_split},
        "dataset": label,
        "result_key": key,
        "versions": _versions(),
        "data": {
            "train": train_ds.record() if hasattr(train_ds, "record") else {"n": len(train_ds)},
            "val": val_ds.record() if hasattr(val_ds, "record") else {"n": len(val_ds)},
            "class_names": list(getattr(train_ds, "class_names", ())),
        },
        "cache": cache_stats,
        "timings": run_timings,
        "checkpoints": [asdict(r) for r in results],
    }
    write_json_atomic(out / f"probe_{safe}.json", record)


def _maybe_report(out: Path, console: Any) -> dict[str, Any] | None:
    from . import report as report_mod

    if not hasattr(report_mod, "write_report") or not (out / "dse.csv").is_file():
        return None
    try:
        return report_mod.write_report(out)
    except (ValueError, OSError) as exc:
        console.print(f"[yellow]report not written[/yellow]: {exc}")
        return None


def _print_summary(console: Any, results: list[CheckpointProbe], label: str) -> None:
    from rich.table import Table

    table = Table(title=f"linear probe on {label}")
    for col in ("checkpoint", "epoch", "mIoU", "pixel acc.", "extract s", "head s"):
        table.add_column(col, justify="left" if col == "checkpoint" else "right")
    for r in results:
        if r.status == "ok":
            table.add_row(
                Path(r.checkpoint).name, str(r.epoch), f"{r.miou:.4f}", f"{r.pixel_accuracy:.4f}",
                f"{r.timings.get('extract', float('nan')):.1f}", f"{r.timings.get('head_train', float('nan')):.1f}",
            )
        else:
            table.add_row(Path(r.checkpoint).name, str(r.epoch), "failed", "", "", "")
    console.print(table)
    for r in results:
        if r.status != "ok":
            console.print(f"[red]failed[/red] {Path(r.checkpoint).name}: {r.error}")


# =========================================================================== command line


def add_probe_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``dsekit probe`` to an ``argparse`` sub-parser set (``run_probe`` is its handler)."""
    from .cliargs import add_checkpoint_arguments, positive_int

    p = subparsers.add_parser(
        "probe",
        help="linear-probe mIoU of every checkpoint of a run on a segmentation dataset",
        description="For each checkpoint of RUN_DIR (same discovery and adapters as `scan`), train a "
        "linear head (BatchNorm + 1x1 conv, DINOv2 linear protocol) on cached frozen patch features "
        "and report mIoU and pixel accuracy on the validation split. Writes probe.csv (and the "
        "report when dse.csv is in OUT). Resumable; split across processes under torchrun.",
    )
    p.add_argument("run_dir", type=Path, help="folder holding the run's checkpoints")
    p.add_argument("--dataset", required=True, help="voc, ade20k, cocostuff, cocostuff27, cityscapes, folder or scenes")
    p.add_argument("--root", type=Path, default=None, help="dataset directory (not for scenes)")
    add_checkpoint_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/dse, next to dse.csv)")
    p.add_argument("--train-split", default=None, help="training split (default: train; VOC: train_aug when present)")
    p.add_argument("--val-split", default="val", help="evaluation split (default val)")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="folder datasets: class count (default: classes.txt, else inferred from the masks)")
    p.add_argument("--num-train", type=positive_int, default=None, help="training images (default all; scenes 1000)")
    p.add_argument("--num-val", type=positive_int, default=None, help="validation images (default all; scenes 250)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="crop side = mask resolution (default 224, or the run's dsekit.json)")
    p.add_argument("--resize", type=positive_int, default=None, help="shorter side before the crop (default: image size)")
    p.add_argument("--epochs", type=positive_int, default=10, help="head epochs on cached features (default 10)")
    p.add_argument("--head-batch-size", type=positive_int, default=32, help="images per head step (default 32)")
    p.add_argument("--lr", type=float, default=1e-2, help="peak learning rate, cosine to 0 (default 1e-2)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="default 1e-4")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"], help="default adamw")
    p.add_argument("--seed", type=int, default=0, help="head init, batch order and dataset subset seed")
    p.add_argument("--head-seeds", type=positive_int, default=1,
                   help="heads trained per checkpoint (seeds SEED, SEED+1, ...): mIoU is their mean and its "
                   "interval covers the head's seed too (default 1)")
    p.add_argument("--confidence", type=float, default=0.95, help="nominal coverage of the intervals (default 0.95)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per backbone forward pass")
    p.add_argument("--cache-memory-gb", type=float, default=4.0,
                   help="RAM for cached images, masks and features; beyond it they spill to disk (default 4)")
    p.add_argument("--cache-dtype", default="float16", choices=["float16", "float32"], help="cached feature dtype")
    p.add_argument("--workers", type=int, default=None, help="image decoding processes (default min(4, CPUs))")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads (default: torch's; 1 is steadier on a busy shared CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_probe)
    return p


def run_probe(args: argparse.Namespace) -> int:
    """Handler of ``dsekit probe``: 0 when every checkpoint was probed, 1 otherwise."""
    from .cliargs import checkpoint_settings, report_failed, run_scenes

    cfg = ProbeConfig(
        **checkpoint_settings(args),
        dataset=args.dataset,
        scenes=run_scenes(args.run_dir) if args.dataset == "scenes" else {},
        root=None if args.root is None else str(args.root),
        train_split=args.train_split,
        val_split=args.val_split,
        num_classes=args.num_classes,
        num_train=args.num_train,
        num_val=args.num_val,
        resize=args.resize,
        epochs=args.epochs,
        head_batch_size=args.head_batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        seed=args.seed,
        head_seeds=args.head_seeds,
        confidence=args.confidence,
        batch_size=args.batch_size,
        cache_memory_gb=args.cache_memory_gb,
        cache_dtype=args.cache_dtype,
        workers=args.workers,
        threads=args.threads,
    )
    result = probe(cfg, progress=not args.quiet)
    if report_failed("probe", result.failed, result.out_dir / "probe.csv"):
        return 1
    extra = ", report.md" if result.report is not None else ""
    print(f"outputs in {result.out_dir}: probe.csv{extra}")
    return 0
