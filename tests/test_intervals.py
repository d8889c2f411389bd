"""Intervals: half-samples for label-free scores, bootstrap for mIoU, propagated τ / ρ; coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from dsekit import dse
from dsekit.metrics.intervals import (
    correlation_intervals,
    half_sample_draws,
    half_sample_indices,
    half_sample_interval,
    half_sample_replicates,
    iou_from_confusions,
    miou_bootstrap,
    percentile_interval,
)
from dsekit.metrics.iou import miou_from_confusion


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_half_sample_indices_are_seeded_sorted_halves_and_leave_global_rng():
    state = np.random.get_state()[1].copy()
    torch_state = torch.random.get_rng_state()
    a = half_sample_indices(21, 6, seed=3)
    assert a.shape == (6, 10)
    assert np.array_equal(a, half_sample_indices(21, 6, seed=3))
    assert not np.array_equal(a, half_sample_indices(21, 6, seed=4))
    assert all(np.all(np.diff(row) > 0) for row in a)
    assert a.min() >= 0 and a.max() < 21
    assert np.array_equal(np.random.get_state()[1], state)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    with pytest.raises(ValueError, match="at least 4"):
        half_sample_indices(3, 5, 0)
    with pytest.raises(ValueError, match="replicates"):
        half_sample_indices(10, 1, 0)


def test_half_sample_interval_shape_and_errors():
    est = np.array([1.0, 2.0])
    rep = np.array([[0.9, 2.0], [1.1, 2.0], [1.0, 2.0]])
    low, high = half_sample_interval(est, rep, 0.95)
    assert low[0] < 1.0 < high[0] and low[1] == high[1] == 2.0
    draws = half_sample_draws(est, rep)
    assert np.allclose(draws.mean(0), est)
    with pytest.raises(ValueError, match="replicates"):
        half_sample_interval(est, rep[:1])
    with pytest.raises(ValueError, match="confidence"):
        half_sample_interval(est, rep, 1.5)


def test_half_sample_interval_covers_a_mean_and_a_nonlinear_statistic():
    """Nominal 95 %: the true value is inside in at least 90 % of 400 repeats."""
    rng = np.random.default_rng(0)
    n, R, repeats = 64, 10, 400
    hits_mean = hits_sd = 0
    for _ in range(repeats):
        x = rng.exponential(size=n)  # skewed; truth: mean 1
        idx = half_sample_indices(n, R, int(rng.integers(1 << 31)))
        lo, hi = half_sample_interval(x.mean(), x[idx].mean(1))
        hits_mean += lo <= 1.0 <= hi
        z = rng.normal(size=n)  # truth: sd 1
        lo, hi = half_sample_interval(z.std(ddof=1), z[idx].std(1, ddof=1))
        hits_sd += lo <= 1.0 <= hi
    assert hits_mean / repeats >= 0.90, hits_mean
    assert hits_sd / repeats >= 0.90, hits_sd


def _patch_sample(rng: np.random.Generator, centres: np.ndarray, n: int, N: int) -> torch.Tensor:
    """n images of N patches: each image shows 2 of the classes, patches are centre + noise."""
    k, d = centres.shape
    out = np.empty((n, N, d))
    for i in range(n):
        classes = rng.choice(k, size=2, replace=False)
        lab = classes[rng.integers(0, 2, size=N)]
        out[i] = centres[lab] + 0.6 * rng.normal(size=(N, d))
    return torch.from_numpy(out).float()


@pytest.mark.slow
def test_dse_half_sample_interval_coverage(one_thread):
    """DSE_raw of n images: the 95 % half-sample interval (images and k-means seed) contains the
    expected value at that sample size in at least 90 % of 100 repeats."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 8))
    n, N, R = 32, 16, 10
    # the truth: expected DSE_raw of n images, over images and seeds (Monte Carlo, 300 draws)
    truth = np.mean(
        [
            dse(_patch_sample(rng, centres, n, N), seed=s, global_clusters=6, images_per_group=8).dse_raw
            for s in range(300)
        ]
    )

    def score(sub: torch.Tensor, seed: int) -> dict[str, float]:
        return {"dse_raw": dse(sub, seed=seed, global_clusters=6, images_per_group=8).dse_raw}

    hits = 0
    for rep in range(100):
        x = _patch_sample(rng, centres, n, N)
        est = score(x, rep)["dse_raw"]
        reps = half_sample_replicates(score, x, R, seed=rep)["dse_raw"]
        lo, hi = half_sample_interval(est, reps)
        hits += lo <= truth <= hi
    assert hits >= 90, hits


def _confusions(rng: np.random.Generator, P: np.ndarray, alpha: np.ndarray, n: int, pixels: int) -> np.ndarray:
    """Per-image confusion matrices (n, C, C): class proportions ~ Dirichlet(alpha), predictions ~ P[true]."""
    C = len(alpha)
    out = np.zeros((n, C, C), dtype=np.int64)
    props = rng.dirichlet(alpha, size=n)
    for i in range(n):
        counts = rng.multinomial(pixels, props[i])
        for c in range(C):
            out[i, c] = rng.multinomial(counts[c], P[c])
    return out


def test_miou_bootstrap_point_matches_the_total_confusion_and_intervals_bracket_it():
    rng = np.random.default_rng(2)
    P = np.array([[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.1, 0.3, 0.6]])
    conf = np.stack([_confusions(rng, P, np.ones(3), 40, 50) for _ in range(3)])[:, None]  # (T=3, H=1, n, C, C)
    b = miou_bootstrap(conf, n_resamples=300, seed=0)
    for t in range(3):
        assert b.miou[t] == pytest.approx(miou_from_confusion(torch.from_numpy(conf[t, 0].sum(0))), abs=1e-12)
        assert b.low[t] <= b.miou[t] <= b.high[t]
    assert b.replicates.shape == (300, 3) and b.iou.shape == (3, 3)
    assert np.all(b.iou_low <= b.iou + 1e-12) and np.all(b.iou <= b.iou_high + 1e-12)
    # same seed, same resamples; a sparse (n, C*C) input gives the same numbers
    from scipy import sparse

    nested = [[sparse.csr_matrix(conf[t, 0].reshape(40, 9))] for t in range(3)]
    b2 = miou_bootstrap(nested, n_resamples=300, seed=0)
    assert np.allclose(b2.replicates, b.replicates) and np.allclose(b2.low, b.low)


def test_miou_bootstrap_with_heads_widens_for_disagreeing_heads():
    rng = np.random.default_rng(3)
    good = np.array([[0.9, 0.1], [0.1, 0.9]])
    bad = np.array([[0.6, 0.4], [0.4, 0.6]])
    one = _confusions(rng, good, np.ones(2), 60, 40)
    other = _confusions(rng, bad, np.ones(2), 60, 40)
    same = miou_bootstrap(np.stack([one, one])[None], n_resamples=400, seed=1)
    mixed = miou_bootstrap(np.stack([one, other])[None], n_resamples=400, seed=1)
    assert same.heads == 2
    assert mixed.miou[0] == pytest.approx(
        (miou_from_confusion(torch.from_numpy(one.sum(0))) + miou_from_confusion(torch.from_numpy(other.sum(0)))) / 2
    )
    assert (mixed.high - mixed.low)[0] > 2 * (same.high - same.low)[0]


def test_miou_bootstrap_coverage():
    """Nominal 95 % intervals contain the population mIoU in at least 90 % of 100 repeats."""
    rng = np.random.default_rng(4)
    P = np.array([[0.7, 0.2, 0.1, 0.0], [0.1, 0.6, 0.2, 0.1], [0.05, 0.15, 0.7, 0.1], [0.1, 0.1, 0.2, 0.6]])
    alpha = np.array([2.0, 1.0, 0.5, 0.5])
    # population confusion: expected pixels per true class times the prediction probabilities
    truth = float(np.nanmean(iou_from_confusions((alpha / alpha.sum())[:, None] * P)))
    hits = 0
    for rep in range(100):
        conf = _confusions(rng, P, alpha, 80, 30)
        b = miou_bootstrap(conf[None, None], n_resamples=400, seed=rep)
        hits += b.low[0] <= truth <= b.high[0]
    assert hits >= 90, hits


def test_miou_bootstrap_errors():
    with pytest.raises(ValueError, match=r"\(T, H, n, C, C\)"):
        miou_bootstrap(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="at least 2 validation images"):
        miou_bootstrap(np.ones((1, 1, 1, 2, 2)))
    with pytest.raises(ValueError, match="same heads"):
        miou_bootstrap([[np.ones((3, 2, 2))], [np.ones((4, 2, 2))]])


def test_correlation_intervals():
    rng = np.random.default_rng(5)
    T, R = 10, 200
    truth = np.linspace(0, 1, T)
    y = truth + 0.01 * rng.normal(size=(R, T))
    good = truth + 0.01 * rng.normal(size=(R, T))
    noise = rng.normal(size=(R, T))
    out = correlation_intervals({"dse": good, "noise": noise}, y, reference="dse")
    assert out["dse"]["nonzero"] and out["dse"]["tau_low"] > 0.8
    assert not out["noise"]["nonzero"]
    assert out["noise"]["differs_from_reference"] and out["noise"]["tau_diff_high"] < 0
    assert "tau_diff_low" not in out["dse"]
    # the row-wise Spearman is scipy's
    from dsekit.metrics.intervals import _spearman_rows

    rows = _spearman_rows(noise[:5], y[:5])
    assert np.allclose(rows, [spearmanr(noise[r], y[r]).statistic for r in range(5)])
    # constant draws: undefined, not a crash
    flat = correlation_intervals({"dse": np.ones((R, T))}, y)
    assert flat["dse"]["tau_low"] is None and flat["dse"]["nonzero"] is False


def test_percentile_interval_ignores_non_finite():
    d = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.inf]])
    low, high = percentile_interval(d, 0.5)
    assert low[0] == pytest.approx(1.5) and high[0] == pytest.approx(2.5)
    assert np.isnan(low[1]) and np.isnan(high[1])
