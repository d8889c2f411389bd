"""The linear probe on frozen patch features (the DINOv2 linear protocol): ``BatchNorm2d``
+ ``1x1 Conv2d`` head, the exact upsampled cross-entropy, training on cached features and the
evaluation (confusion matrices, per image and overall)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import sparse
from torch import Tensor, nn

from .metrics.iou import check_labels, iou_from_confusion, miou_from_confusion, pixel_accuracy_from_confusion
from .runtime import resolve_device

__all__ = ["LinearHead", "ProbeMetrics", "bilinear_matrix", "linear_probe", "make_optimizer", "upsampled_cross_entropy"]

_CPU_CHUNK_ELEMENTS = 1 << 21  # full-resolution logits held at once (8 MB of float32: stays in cache)
_CUDA_CHUNK_ELEMENTS = 1 << 27


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
        total -= nll.sum(dtype=torch.float64) if all_valid else nll.masked_fill_(~v, 0.0).sum(dtype=torch.float64)
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
    def forward(ctx, logits: Tensor, target: Tensor, ignore_index: int | None, chunk_elements: int) -> Tensor:
        loss, grad = _upsampled_ce_and_grad(logits, target, ignore_index, chunk_elements)
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):
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
            assert self.conv.bias is not None  # the conv is built with a bias
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.bn(x))


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


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
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
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
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
    opt = make_optimizer(optimizer, head.parameters(), lr, weight_decay)
    steps_per_epoch = math.ceil(n_train / batch_size)
    total_steps = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )
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
        iou=[float(v) if p else None for v, p in zip(iou.tolist(), present.tolist(), strict=True)],
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
    head: LinearHead,
    feats: Any,
    masks: Any,
    num_classes: int,
    ignore_index: int | None,
    h: int,
    w: int,
    dev: torch.device,
    batch_size: int,
) -> tuple[Tensor, Any]:
    """The confusion matrix (C, C) over all images (torchmetrics) and each image's, as a sparse
    ``(n, C*C)`` matrix (for the bootstrap over validation images)."""
    from torchmetrics.classification import MulticlassConfusionMatrix  # heavy (loads torch._dynamo): used here only

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
        (
            np.concatenate(vals) if vals else np.zeros(0, np.int64),
            (
                np.concatenate(rows) if rows else np.zeros(0, np.int64),
                np.concatenate(cols) if cols else np.zeros(0, np.int64),
            ),
        ),
        shape=(n, C2),
        dtype=np.int64,
    )
    return metric.compute().long(), per_image
