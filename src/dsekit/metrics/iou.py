"""Segmentation metrics from confusion matrices: label checks, the confusion matrix
(torchmetrics), per-class IoU, mIoU and pixel accuracy.

mIoU convention: IoU_c = TP_c / (TP_c + FP_c + FN_c); the mean runs over the classes that occur
in the ground truth *or* the prediction of the evaluated set; a class absent from both has no
IoU and is left out of the mean (torchmetrics' ``MulticlassJaccardIndex(average="macro")`` rule,
recomputed here so that an empty matrix gives 0.0 instead of NaN).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "check_labels",
    "confusion_matrix",
    "iou_from_confusion",
    "miou_from_confusion",
    "pixel_accuracy_from_confusion",
]


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


def confusion_matrix(preds: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """Confusion matrix ``(C, C)`` int64, rows = ground truth, columns = prediction, through
    ``torchmetrics`` (pixels whose target is ``ignore_index`` are skipped).

    Args:
        preds: predicted class ids, any shape.
        target: ground-truth ids, the same shape; checked with :func:`check_labels`.
    """
    from torchmetrics.classification import MulticlassConfusionMatrix  # heavy (loads torch._dynamo): used here only

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
