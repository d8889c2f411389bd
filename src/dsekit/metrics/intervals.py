"""Confidence intervals for per-checkpoint scores and for what a run derives from them.

Three sources of uncertainty, one tool each:

* **Label-free scores of one checkpoint** (DSE, its terms, RankMe, …) vary with the image
  sample and, for DSE, with the k-means seed. They are recomputed on ``R`` random
  half-samples of the images, each with its own k-means seed (:func:`half_sample_indices`).
  For a mean-like statistic the spread of half-sample values around their mean equals the
  sampling spread of the full-sample value (the finite-population correction of a half-sample
  is exactly 1/2), so the interval is ``estimate ± t · sd(half-sample values)``
  (:func:`half_sample_interval`). Seed noise at half size is at least that at full size, so it
  is covered, conservatively. Resampling images *with* replacement (the bootstrap) is not
  used here: duplicated images form spurious clusters and lower the effective rank.
* **mIoU of one checkpoint** varies with the validation images and the head's training seed:
  a bootstrap over images (and over heads, when several were trained) on per-image confusion
  matrices (:func:`miou_bootstrap`, ``scipy.stats.bootstrap``, percentile intervals). The
  resamples are shared by all checkpoints of a run, so the replicates of different
  checkpoints are paired as the checkpoints are (same images).
* **Quantities over a run** (Kendall τ, Spearman ρ, the selection gain) are propagated by
  pairing replicate draws of both sides (:func:`correlation_intervals`); the two sides are
  independent (different images, different randomness), so any pairing is valid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .settings import DSESettings

__all__ = [
    "half_sample_indices",
    "half_sample_seeds",
    "half_sample_replicates",
    "half_sample_interval",
    "half_sample_problem",
    "half_sample_draws",
    "MIoUBootstrap",
    "miou_bootstrap",
    "iou_from_confusions",
    "percentile_interval",
    "correlation_intervals",
]

_HALF_SAMPLE_TAG = 0x4A1F5  # keeps the half-sample stream apart from other uses of the seed


# --------------------------------------------------------------------------- half-samples


def half_sample_indices(n: int, replicates: int, seed: int) -> np.ndarray:
    """Indices of ``replicates`` random half-samples of ``range(n)``: (R, n // 2) int64, each row sorted.

    Drawn from a private generator seeded by ``seed`` (the process-wide RNG is not touched);
    the same ``(n, replicates, seed)`` give the same subsets, so every checkpoint of a run is
    scored on the same half-samples.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 4:
        raise ValueError(f"half-samples need at least 4 images, got n={n!r}")
    if isinstance(replicates, bool) or not isinstance(replicates, (int, np.integer)) or replicates < 2:
        raise ValueError(f"replicates: expected an integer >= 2, got {replicates!r}")
    rng = np.random.default_rng([_HALF_SAMPLE_TAG, int(seed)])
    rows = [np.sort(rng.permutation(int(n))[: int(n) // 2]) for _ in range(int(replicates))]
    return np.stack(rows).astype(np.int64)


def half_sample_seeds(replicates: int, seed: int) -> list[int]:
    """One k-means seed per half-sample replicate, derived from ``seed`` (none equals ``seed``'s own stream)."""
    ss = np.random.SeedSequence([_HALF_SAMPLE_TAG, int(seed), 1])
    return [int(v) for v in ss.generate_state(int(replicates), dtype=np.uint32)]


def half_sample_replicates(
    score: Callable[[Any, int], Mapping[str, float]],
    features: Any,
    replicates: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Scores of ``replicates`` half-samples of the images: name -> (R,) values.

    Args:
        score: ``score(features[subset], replicate_seed) -> {name: value}``.
        features: (B, ...) per-image features (indexable by an index tensor / array).
        replicates: R >= 2.
        seed: selects the subsets (:func:`half_sample_indices`) and the replicate seeds.
    """
    import torch

    idx = half_sample_indices(int(features.shape[0]), replicates, seed)
    seeds = half_sample_seeds(replicates, seed)
    rows: list[Mapping[str, float]] = []
    for r in range(idx.shape[0]):
        sub = torch.from_numpy(idx[r]) if isinstance(features, torch.Tensor) else idx[r]
        rows.append(score(features[sub], seeds[r]))
    names = list(dict.fromkeys(k for row in rows for k in row))
    return {k: np.array([float(row.get(k, math.nan)) for row in rows]) for k in names}


def _half_sample_error(n: int, N: int, settings: DSESettings, batch_size: int) -> str | None:
    """Why half-samples of ``n`` images of ``N`` patches cannot be scored, or ``None``."""
    if n < 4:
        return "half-samples need at least 4 images"
    half = n // 2
    try:
        for b in {min(half, batch_size)} | ({half % batch_size} - {0}):  # the DSE batches of a half
            settings.check(b, N)
    except ValueError as exc:
        return str(exc)
    return None


def half_sample_problem(n: int, N: int, settings: DSESettings, batch_size: int) -> str | None:
    """Why ``n`` images of ``N`` patches are too few for DSE's half-sample intervals (scored in
    DSE batches of ``batch_size`` images with ``settings``), with the smallest sample that allows
    them; ``None`` when they can be computed. DSE itself may still be computed on the whole sample."""
    why = _half_sample_error(n, N, settings, batch_size)
    if why is None:
        return None
    smallest = next(
        (m for m in range(n + 1, 64 * n + 4096) if _half_sample_error(m, N, settings, batch_size) is None), None
    )
    allow = f"; {smallest} images or more allow them" if smallest is not None else ""
    return (
        f"intervals: {n} images x {N} patches are too few for half-sample intervals (a half-sample of "
        f"{n // 2}: {why}); DSE and its terms are computed on the whole sample, the interval columns are empty{allow}"
    )


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, dof))


def _check_confidence(confidence: float) -> float:
    if not (0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence: expected a level in (0, 1), got {confidence!r}")
    return float(confidence)


def half_sample_interval(estimate: Any, replicates: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """``estimate ± t_{(1+c)/2, R-1} · sd(replicates)``, elementwise.

    Args:
        estimate: (...) the full-sample values.
        replicates: (R, ...) the same statistics on R half-samples (R >= 2).
        confidence: nominal coverage.

    Returns:
        (low, high), each shaped like ``estimate``; NaN where a replicate is not finite.
    """
    confidence = _check_confidence(confidence)
    est = np.asarray(estimate, dtype=np.float64)
    rep = np.asarray(replicates, dtype=np.float64)
    if rep.ndim < 1 or rep.shape[0] < 2 or rep.shape[1:] != est.shape:
        raise ValueError(f"replicates: expected shape (R >= 2, *{est.shape}), got {rep.shape}")
    half = _t_quantile(confidence, rep.shape[0] - 1) * rep.std(axis=0, ddof=1)
    return est - half, est + half


def half_sample_draws(estimate: Any, replicates: Any) -> np.ndarray:
    """Draws of the full-sample statistic for propagation: ``estimate + (replicates - mean)``, (R, ...)."""
    est = np.asarray(estimate, dtype=np.float64)
    rep = np.asarray(replicates, dtype=np.float64)
    if rep.ndim < 1 or rep.shape[1:] != est.shape:
        raise ValueError(f"replicates: expected shape (R, *{est.shape}), got {rep.shape}")
    return est + (rep - rep.mean(axis=0))


def percentile_interval(draws: Any, confidence: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed percentile interval of ``draws`` along ``axis`` (non-finite draws ignored)."""
    confidence = _check_confidence(confidence)
    d = np.asarray(draws, dtype=np.float64)
    d = np.where(np.isfinite(d), d, np.nan)
    alpha = (1 - confidence) / 2
    with np.errstate(all="ignore"), _quiet_nan_warnings():
        low = np.nanquantile(d, alpha, axis=axis)
        high = np.nanquantile(d, 1 - alpha, axis=axis)
    return low, high


class _quiet_nan_warnings:
    """Silence numpy's all-NaN slice warnings (an all-NaN column gives a NaN interval)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


# --------------------------------------------------------------------------- mIoU bootstrap


def iou_from_confusions(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU of confusion matrices ``(..., C, C)`` (rows: truth): (..., C), NaN where a
    class is absent from both truth and prediction."""
    c = np.asarray(conf, dtype=np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    union = c.sum(-1) + c.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def _nanmean_last(x: np.ndarray) -> np.ndarray:
    finite = np.isfinite(x)
    count = finite.sum(-1)
    total = np.where(finite, x, 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


@dataclass(frozen=True)
class MIoUBootstrap:
    """mIoU and per-class IoU of T checkpoints with bootstrap intervals.

    Attributes:
        miou: (T,) mean over heads of each head's mIoU (classes absent from truth and prediction
            left out).
        low, high: (T,) percentile interval of ``miou``.
        iou: (T, C) per-class IoU, mean over heads (NaN: absent).
        iou_low, iou_high: (T, C) its percentile interval.
        replicates: (R, T) mIoU of every resample; column t and column u share their resample.
        confidence: the nominal coverage.
        heads: heads per checkpoint (H).
        images: validation images (n).
    """

    miou: np.ndarray
    low: np.ndarray
    high: np.ndarray
    iou: np.ndarray
    iou_low: np.ndarray
    iou_high: np.ndarray
    replicates: np.ndarray
    confidence: float
    heads: int
    images: int


def _as_csr_stack(confusions: Any) -> tuple[list[list[Any]], int, int, int]:
    """Nested (T, H) lists of CSR matrices (n, C*C), and (H, n, C)."""
    from scipy import sparse

    if isinstance(confusions, np.ndarray):
        if confusions.ndim != 5 or confusions.shape[-1] != confusions.shape[-2]:
            raise ValueError(f"confusions: expected shape (T, H, n, C, C), got {confusions.shape}")
        confusions = [[confusions[t, h] for h in range(confusions.shape[1])] for t in range(confusions.shape[0])]
    out: list[list[Any]] = []
    shape: tuple[int, int, int] | None = None
    for t, per_head in enumerate(confusions):
        row = []
        for h, m in enumerate(per_head):
            if sparse.issparse(m):
                csr = sparse.csr_matrix(m, dtype=np.float64)
                n, cc = csr.shape
                C = math.isqrt(cc)
                if C * C != cc:
                    raise ValueError(f"confusions[{t}][{h}]: expected (n, C*C) columns, got {csr.shape}")
            else:
                a = np.asarray(m)
                if a.ndim != 3 or a.shape[1] != a.shape[2]:
                    raise ValueError(f"confusions[{t}][{h}]: expected per-image matrices (n, C, C), got {a.shape}")
                n, C = a.shape[0], a.shape[1]
                csr = sparse.csr_matrix(a.reshape(n, C * C).astype(np.float64))
            if np.any(csr.data < 0):
                raise ValueError(f"confusions[{t}][{h}]: counts must be >= 0")
            row.append(csr)
        if not row:
            raise ValueError(f"confusions[{t}]: no head")
        out.append(row)
        s = (len(row), row[0].shape[0], math.isqrt(row[0].shape[1]))
        if any(m.shape != row[0].shape for m in row) or (shape is not None and s != shape):
            raise ValueError("confusions: every checkpoint needs the same heads, images and classes")
        shape = s
    if shape is None:
        raise ValueError("confusions: no checkpoint")
    H, n, C = shape
    if n < 2:
        raise ValueError(f"confusions: the bootstrap needs at least 2 validation images, got {n}")
    return out, H, n, C


def _multiplicities(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``range(n)`` occurs in every row of ``idx`` (B, m) -> (B, n) float."""
    idx = np.asarray(idx, dtype=np.int64).reshape(-1, idx.shape[-1])
    B = idx.shape[0]
    flat = idx + n * np.arange(B)[:, None]
    return np.bincount(flat.ravel(), minlength=B * n).reshape(B, n).astype(np.float64)


def miou_bootstrap(
    confusions: Any,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> MIoUBootstrap:
    """Bootstrap intervals of mIoU (and per-class IoU) over validation images and heads.

    Args:
        confusions: per-image confusion matrices (rows: truth) of T checkpoints, each probed
            by H heads (different head seeds) on the same n images: an array (T, H, n, C, C),
            or nested sequences ``[t][h]`` of arrays (n, C, C) or sparse matrices (n, C*C).
        n_resamples: bootstrap resamples (shared by all checkpoints).
        confidence: nominal coverage of the percentile intervals.
        seed: seed of the private generator of the resamples.

    Images are resampled with replacement; with H > 1 heads the heads are resampled too,
    independently (``scipy.stats.bootstrap`` with ``paired=False``), so the interval covers
    both the validation sample and the head's training seed.
    """
    from scipy.stats import bootstrap

    confidence = _check_confidence(confidence)
    mats, H, n, C = _as_csr_stack(confusions)
    T = len(mats)
    heads_iou = np.stack(
        [np.stack([iou_from_confusions(np.asarray(m.sum(axis=0)).reshape(C, C)) for m in row]) for row in mats]
    )  # (T, H, C)
    point_iou = _nanmean_last(np.moveaxis(heads_iou, 1, -1))  # (T, C): mean over heads
    point_miou = _nanmean_last(heads_iou).mean(axis=1)  # (T,)

    def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        img = samples[0]
        batch_shape = img.shape[:-1]
        W = _multiplicities(img, n)  # (B, n)
        V = _multiplicities(samples[1], H) if H > 1 else np.ones((W.shape[0], 1))
        ious = np.empty((T, H, W.shape[0], C))
        for t, row in enumerate(mats):
            for h, m in enumerate(row):
                conf = np.asarray(m.T @ W.T).T.reshape(-1, C, C)  # (B, C, C)
                ious[t, h] = iou_from_confusions(conf)
        weight = V / H  # (B, H)
        miou = np.einsum("thb,bh->tb", np.nan_to_num(_nanmean_last(ious), nan=0.0), weight)
        iou = np.einsum("thbc,bh->tbc", np.nan_to_num(ious, nan=0.0), weight)
        present = np.einsum("thbc,bh->tbc", np.isfinite(ious).astype(np.float64), weight)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(present > 0, iou / np.where(present > 0, present, 1.0), np.nan)
        out = np.concatenate([miou, iou.transpose(0, 2, 1).reshape(T * C, -1)], axis=0)  # (T + T*C, B)
        return out.reshape(T + T * C, *batch_shape)

    import warnings

    from scipy.stats import DegenerateDataWarning

    data: tuple[np.ndarray, ...] = (np.arange(n),) if H == 1 else (np.arange(n), np.arange(H))
    with warnings.catch_warnings():  # NaN for a class absent from every resample: handled below
        warnings.simplefilter("ignore", DegenerateDataWarning)
        res = bootstrap(
            data,
            statistic,
            n_resamples=int(n_resamples),
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            paired=False,
            rng=np.random.default_rng(int(seed)),
        )
    dist = np.asarray(res.bootstrap_distribution)  # (T + T*C, R)
    miou_rep = dist[:T].T  # (R, T)
    iou_rep = dist[T:].reshape(T, C, -1)  # (T, C, R)
    low, high = percentile_interval(miou_rep, confidence, axis=0)
    iou_low, iou_high = percentile_interval(iou_rep, confidence, axis=-1)
    return MIoUBootstrap(
        miou=point_miou,
        low=low,
        high=high,
        iou=point_iou,
        iou_low=iou_low,
        iou_high=iou_high,
        replicates=miou_rep,
        confidence=confidence,
        heads=H,
        images=n,
    )


# --------------------------------------------------------------------------- propagated intervals


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman ρ of every row pair of (R, T) arrays (average ranks; NaN for a constant row)."""
    from scipy.stats import rankdata

    ra = rankdata(a, axis=1)
    rb = rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def _kendall_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall τ-b of every row pair of (R, T) arrays (``scipy.stats.kendalltau`` per row)."""
    from scipy.stats import kendalltau

    out = np.full(a.shape[0], np.nan)
    for r in range(a.shape[0]):
        if np.ptp(a[r]) > 0 and np.ptp(b[r]) > 0:
            out[r] = kendalltau(a[r], b[r]).statistic
    return out


def correlation_intervals(
    metric_draws: Mapping[str, Any],
    miou_draws: Any,
    *,
    confidence: float = 0.95,
    reference: str | None = "dse",
) -> dict[str, dict[str, float | bool | None]]:
    """Percentile intervals of Kendall τ-b and Spearman ρ between each metric and mIoU.

    Args:
        metric_draws: name -> (R, T) draws of the metric's curve over T checkpoints.
        miou_draws: (R, T) draws of the mIoU curve (paired with the metric draws row by row).
        confidence: nominal coverage.
        reference: a metric of ``metric_draws`` to compare with: the interval of
            ``τ(metric) - τ(reference)`` over the same draws says whether the two differ.

    Returns:
        name -> ``tau_low, tau_high, rho_low, rho_high`` and, when defined,
        ``tau_diff_low, tau_diff_high`` (against ``reference``), ``nonzero`` (the τ interval
        excludes 0) and ``differs_from_reference`` (the difference interval excludes 0).
    """
    y = np.asarray(miou_draws, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"miou_draws: expected (R, T), got shape {y.shape}")
    taus: dict[str, np.ndarray] = {}
    out: dict[str, dict[str, float | bool | None]] = {}
    for name, draws in metric_draws.items():
        d = np.asarray(draws, dtype=np.float64)
        if d.shape != y.shape:
            raise ValueError(f"metric_draws[{name!r}]: expected shape {y.shape}, got {d.shape}")
        taus[name] = _kendall_rows(d, y)
        rho = _spearman_rows(d, y)
        tl, th = percentile_interval(taus[name], confidence)
        rl, rh = percentile_interval(rho, confidence)
        out[name] = {
            "tau_low": _f(tl),
            "tau_high": _f(th),
            "rho_low": _f(rl),
            "rho_high": _f(rh),
            "nonzero": bool(np.isfinite(tl) and (tl > 0 or th < 0)),
        }
    if reference is not None and reference in taus:
        for name, entry in out.items():
            if name == reference:
                continue
            dl, dh = percentile_interval(taus[name] - taus[reference], confidence)
            entry.update(
                tau_diff_low=_f(dl),
                tau_diff_high=_f(dh),
                differs_from_reference=bool(np.isfinite(dl) and (dl > 0 or dh < 0)),
            )
    return out


def _f(x: Any) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None
