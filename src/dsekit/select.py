"""DSE over the checkpoints of one run (λ) and checkpoint selection.

* ``S = M_inter - (M_intra_batch + M_intra_image) / 2`` per checkpoint,
  ``λ = std(S) / std(M_dim)`` over the run, ``DSE = S + λ · M_dim``. Ranking by DSE is then
  ranking by ``z(S) + z(M_dim)``. Where λ is undefined (a single checkpoint, or ``M_dim``
  constant) the raw score ``S + M_dim`` is used and the result says so.
* Candidates are the local maxima of DSE in a window of ``±window`` checkpoints
  (truncated at the ends); they are sorted by DSE, highest first (ties: the earlier
  checkpoint first), and the top ``top`` are kept; the first is *the* selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .metrics.dse import separability

__all__ = ["Calibration", "Selection", "calibrate", "local_maxima", "select_checkpoints"]


@dataclass(frozen=True)
class Calibration:
    """λ and the calibrated DSE of every checkpoint of a run."""

    lam: float | None  #: None when undefined
    dse: np.ndarray  #: (T,) calibrated DSE (raw DSE when ``lam`` is None)
    separability: np.ndarray  #: (T,) S = M_inter - M_intra
    raw: bool  #: True when λ was undefined and the raw score is reported
    note: str = ""


@dataclass(frozen=True)
class Selection:
    """Local maxima of a DSE curve and the checkpoints to keep."""

    candidates: list[int]  #: indices of local maxima, best first
    selected: list[int]  #: the top ``top`` candidates, best first
    window: int
    top: int
    values: list[float] = field(default_factory=list)

    @property
    def best(self) -> int | None:
        """Index of the selected checkpoint (None for an empty run)."""
        return self.selected[0] if self.selected else None


def _vector(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected one value per checkpoint (1-D), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains non-finite values: {arr.tolist()}")
    return arr


def calibrate(
    inter_class_distance: Sequence[float],
    intra_class_image: Sequence[float],
    intra_class_batch: Sequence[float],
    effective_dimensionality: Sequence[float],
    *,
    rtol: float = 1e-6,
) -> Calibration:
    """λ = std(S) / std(M_dim) over a run and DSE = S + λ · M_dim per checkpoint.

    Args:
        inter_class_distance, intra_class_image, intra_class_batch, effective_dimensionality:
            one value per checkpoint (equal lengths).
        rtol: ``M_dim`` counts as constant when its std is below ``rtol`` times its mean magnitude.
            The default, 1e-6, is ten times the float32 rounding of the features it is computed
            from: a spread below it is rounding noise, and dividing by it would give λ ~ 1e11.
    """
    inter = _vector("inter_class_distance", inter_class_distance)
    intra_i = _vector("intra_class_image", intra_class_image)
    intra_b = _vector("intra_class_batch", intra_class_batch)
    m_dim = _vector("effective_dimensionality", effective_dimensionality)
    if not (len(inter) == len(intra_i) == len(intra_b) == len(m_dim)):
        raise ValueError(
            "calibrate: expected one value per checkpoint for every term, got lengths "
            f"{len(inter)}, {len(intra_i)}, {len(intra_b)}, {len(m_dim)}"
        )
    s = separability(inter, intra_i, intra_b)
    if len(s) < 2:
        return Calibration(None, s + m_dim, s, True, "λ undefined for a single checkpoint: raw DSE reported")
    sd_dim = float(m_dim.std())
    if sd_dim <= rtol * max(float(np.abs(m_dim).mean()), 1e-300):
        return Calibration(None, s + m_dim, s, True, "λ undefined (M_dim constant over the run): raw DSE reported")
    lam = float(s.std()) / sd_dim
    return Calibration(lam, s + lam * m_dim, s, False, "")


def local_maxima(values: Sequence[float] | np.ndarray, window: int = 2) -> list[int]:
    """Indices ``i`` with ``values[i] == max(values[i - window : i + window + 1])`` (ends truncated)."""
    v = _vector("values", values)
    if window < 0:
        raise ValueError(f"window: expected >= 0, got {window}")
    return [i for i in range(len(v)) if v[i] == v[max(0, i - window) : i + window + 1].max()]


def select_checkpoints(values: Sequence[float] | np.ndarray, *, window: int = 2, top: int = 3) -> Selection:
    """Local maxima of ``values`` sorted by value (ties: earlier first); keep the top ``top``."""
    if top < 1:
        raise ValueError(f"top: expected >= 1, got {top}")
    v = _vector("values", values)
    cands = sorted(local_maxima(v, window), key=lambda i: (-v[i], i))
    return Selection(candidates=cands, selected=cands[:top], window=window, top=top, values=v.tolist())
