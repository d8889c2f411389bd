"""What a run's curves say: dense degradation, collapse, or no degradation (pure).

A run *degrades densely* when its dense quality (linear-probe mIoU) falls after its peak while
its image-level quality (k-NN accuracy of the image embeddings) holds or rises: the features
stay good for the image-level task the training optimises, and lose what a dense task needs.
It *collapses* when both fall, or when the training loss reaches the value of a uniform,
input-independent output (DINO: ``ln K`` for ``K`` prototypes; MoCo v3: ``4 τ ln B``). Judged from
the intervals:

* the mIoU fall: ``mIoU[peak] − mIoU[last]`` with its paired interval (bootstrap draws of the
  validation images, shared by all checkpoints); it is a fall when the interval's low end is
  above 0 and the point fall is at least ``min_fall``;
* the image-level change from the mIoU peak to the last checkpoint, with its paired interval;
  it has *fallen* when the interval's high end is below 0, and *holds or rises* otherwise;
* the loss: collapsed when the last epoch's loss is within ``rtol`` (relative) of the collapse
  value.

Verdicts: ``"collapse"`` (the loss collapsed, or mIoU and image-level accuracy both fell),
``"dense degradation"`` (mIoU fell, image-level accuracy held or rose, the loss did not collapse;
without image labels: mIoU fell and the loss did not collapse, said in the reasons), else
``"no degradation"``. Without draws the point values decide, and the reasons say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["VERDICTS", "degradation_verdict"]

VERDICTS = ("dense degradation", "collapse", "no degradation")


def _interval(draws: np.ndarray | None, confidence: float) -> tuple[float | None, float | None]:
    if draws is None or draws.size < 2:
        return None, None
    d = draws[np.isfinite(draws)]
    if d.size < 2:
        return None, None
    a = (1 - confidence) / 2
    return float(np.quantile(d, a)), float(np.quantile(d, 1 - a))


def degradation_verdict(
    positions: Sequence[Any],
    miou: Sequence[float],
    knn: Sequence[float] | None = None,
    *,
    miou_draws: np.ndarray | None = None,
    knn_draws: np.ndarray | None = None,
    loss: Sequence[float] | None = None,
    collapse_loss: float | None = None,
    confidence: float = 0.95,
    min_fall: float = 0.0,
    rtol: float = 0.01,
    unit: str = "epoch",
) -> dict[str, Any]:
    """The verdict on one run (see the module docstring).

    Args:
        positions: each checkpoint's epoch or step, in training order (the initial weights left out).
        miou: mIoU per checkpoint; knn: image-level accuracy per checkpoint (None or NaNs: none).
        miou_draws, knn_draws: ``(R, T)`` paired bootstrap draws of the two curves (None: none).
        loss: the training loss per epoch; collapse_loss: its value for a uniform output.
        min_fall: the smallest mIoU fall (in mIoU units, e.g. 0.02) that counts.

    Returns:
        ``{"verdict": one of VERDICTS, "reasons": [...], "peak": ..., "miou_fall": ...,
        "miou_fall_low"/"_high", "knn_change": ..., "knn_change_low"/"_high", "loss_last": ...,
        "collapse_loss": ...}``.
    """
    y = np.asarray(miou, dtype=np.float64)
    if y.ndim != 1 or len(y) == 0 or len(positions) != len(y):
        raise ValueError(f"verdict: expected one mIoU per checkpoint, got {len(y)} values for {len(positions)}")
    peak = int(np.nanargmax(y))
    last = len(y) - 1
    pct = f"{int(round(100 * confidence))} %"
    reasons: list[str] = []
    fall = float(y[peak] - y[last])
    md = None if miou_draws is None else np.asarray(miou_draws, dtype=np.float64)
    f_lo, f_hi = _interval(None if md is None else md[:, peak] - md[:, last], confidence)
    if peak == last:
        fell = False
        reasons.append(f"mIoU peaks at the last checkpoint ({unit} {positions[last]})")
    elif f_lo is None:
        fell = fall > 0 and fall >= min_fall
        reasons.append(
            f"mIoU falls {100 * fall:.1f} points from its peak ({unit} {positions[peak]}) to the last "
            f"checkpoint (no interval: no paired draws)"
        )
    else:
        assert f_hi is not None  # _interval gives both ends or neither
        fell = f_lo > 0 and fall >= min_fall
        beyond = "beyond" if f_lo > 0 else "not beyond"
        reasons.append(
            f"mIoU falls {100 * fall:.1f} points [{100 * f_lo:.1f}, {100 * f_hi:.1f}] ({pct}) from its peak "
            f"({unit} {positions[peak]}) to the last checkpoint, {beyond} its interval"
            + (f"; less than the {100 * min_fall:.1f} points that count" if f_lo > 0 and fall < min_fall else "")
        )
    k = None if knn is None else np.asarray(knn, dtype=np.float64)
    has_knn = k is not None and len(k) == len(y) and bool(np.isfinite(k[[peak, last]]).all())
    change = k_lo = k_hi = None
    knn_fell = False
    if has_knn:
        assert k is not None
        change = float(k[last] - k[peak])
        kd = None if knn_draws is None else np.asarray(knn_draws, dtype=np.float64)
        k_lo, k_hi = _interval(None if kd is None else kd[:, last] - kd[:, peak], confidence)
        knn_fell = (k_hi < 0) if k_hi is not None else change < 0
        where = (
            f"[{100 * k_lo:.1f}, {100 * k_hi:.1f}] ({pct})"
            if k_lo is not None and k_hi is not None
            else "(no interval)"
        )
        reasons.append(
            f"image-level accuracy changes {100 * change:+.1f} points {where} from the mIoU peak to the "
            f"last checkpoint: {'falls' if knn_fell else 'holds or rises'}"
        )
    else:
        reasons.append("image-level accuracy not measured (no image labels)")
    loss_last = None
    collapsed = False
    if loss is not None and len(loss) and collapse_loss is not None and math.isfinite(collapse_loss):
        loss_last = float(loss[-1])
        collapsed = abs(loss_last - collapse_loss) <= rtol * abs(collapse_loss)
        reasons.append(
            f"the training loss ends at {loss_last:.4g}, "
            + (
                f"its collapse value {collapse_loss:.4g} (a uniform output)"
                if collapsed
                else f"away from its collapse value {collapse_loss:.4g}"
            )
        )
    if collapsed or (fell and knn_fell):
        verdict = "collapse"
    elif fell:
        verdict = "dense degradation"
    else:
        verdict = "no degradation"
    return {
        "verdict": verdict,
        "reasons": reasons,
        "peak": positions[peak],
        "last": positions[last],
        "miou_fall": fall,
        "miou_fall_low": f_lo,
        "miou_fall_high": f_hi,
        "knn_change": change,
        "knn_change_low": k_lo,
        "knn_change_high": k_hi,
        "loss_last": loss_last,
        "collapse_loss": collapse_loss,
    }
