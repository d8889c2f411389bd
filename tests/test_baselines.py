import importlib
import math

import numpy as np
import pytest
import torch

from dsekit.metrics import baselines as bl
from dsekit.metrics.baselines import (
    BASELINE_METRICS,
    VIEW_METRICS,
    alpha_req,
    alpha_req_fit,
    covariance_eigenvalues,
    dense_rankme,
    lidar,
    lidar_dense,
    lidar_matrix,
    rankme,
)
from dsekit.metrics.spectra import effective_rank, erank_from_singular_values, singular_values

EPS = 1e-7
ALPHA_CAP = math.log2(1e10)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthonormal(n: int, r: int, g: torch.Generator, *, zero_mean: bool = False) -> torch.Tensor:
    a = torch.randn(n, r, generator=g, dtype=torch.float64)
    if zero_mean:
        a = a - a.mean(0)
    return torch.linalg.qr(a).Q


def _erank(spectrum, eps: float = EPS) -> float:
    return float(erank_from_singular_values(torch.as_tensor(spectrum, dtype=torch.float64), eps=eps))


def _power_law_embeddings(n: int, d: int, alpha: float, seed: int = 0, offset: float = 0.0) -> torch.Tensor:
    """Embeddings whose centred covariance has eigenvalues exactly proportional to i^-alpha."""
    g = _gen(seed)
    r = min(n - 1, d)
    u = _orthonormal(n, r, g, zero_mean=True)
    v = _orthonormal(d, r, g)
    s = torch.arange(1, r + 1, dtype=torch.float64) ** (-alpha / 2)
    return (u * s) @ v.T + offset * torch.randn(d, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- RankMe


@pytest.mark.parametrize("d", [1, 8, 64])
def test_rankme_identity_is_d(d):
    expected = math.exp(-d * (1 / d + EPS) * math.log(1 / d + EPS))
    assert rankme(torch.eye(d)) == pytest.approx(expected, rel=1e-9)
    assert rankme(torch.eye(d)) == pytest.approx(d, rel=1e-4)


def test_rankme_is_the_smooth_rank_of_the_uncentred_singular_values():
    g = _gen(0)
    n, d = 200, 32
    s = torch.linspace(5.0, 0.01, d, dtype=torch.float64)
    z = (_orthonormal(n, d, g) * s) @ _orthonormal(d, d, g).T
    assert rankme(z) == pytest.approx(_erank(s), rel=1e-9)
    # eps enters as p = σ/Σσ + eps
    assert rankme(z, eps=0.0) == pytest.approx(_erank(s, 0.0), rel=1e-9)
    assert rankme(z, eps=1e-3) == pytest.approx(_erank(s, 1e-3), rel=1e-9)
    # no centring: a shared offset adds a dominant direction and lowers the rank
    assert rankme(z + 100.0) < 0.5 * rankme(z)


def test_rankme_rank_one_and_collapsed_inputs():
    g = _gen(1)
    u, v = torch.randn(300, 1, generator=g), torch.randn(1, 48, generator=g)
    assert rankme(u @ v) == pytest.approx(1.0, abs=1e-3)
    assert rankme(torch.full((300, 48), 2.5)) == pytest.approx(1.0, abs=1e-3)
    assert rankme(torch.zeros(300, 48)) == 1.0


def test_rankme_invariances_and_input_types():
    g = _gen(2)
    z = torch.randn(150, 24, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 24, dtype=torch.float64) + 0.5
    ref = rankme(z)
    q_right = _orthonormal(24, 24, g)
    q_left = _orthonormal(150, 150, g)
    assert rankme(z @ q_right) == pytest.approx(ref, rel=1e-9)
    assert rankme(q_left @ z) == pytest.approx(ref, rel=1e-9)
    assert rankme(7.3 * z) == pytest.approx(ref, rel=1e-9)
    assert rankme(z.numpy().astype(np.float32)) == pytest.approx(ref, rel=1e-5)
    assert rankme(z.to(torch.float16)) == pytest.approx(ref, rel=1e-2)


@pytest.mark.parametrize("kind", ["random", "rank1", "rank5", "constant"])
@pytest.mark.parametrize("center", [False, True])
def test_tall_reduction_keeps_the_singular_values(kind, center):
    g = _gen(3)
    m, d = 3000, 24
    x = {
        "random": torch.randn(m, d, generator=g) * torch.linspace(0.01, 3, d) + 1.0,
        "rank1": torch.randn(m, 1, generator=g) * torch.randn(1, d, generator=g),
        "rank5": torch.randn(m, 5, generator=g) @ torch.randn(5, d, generator=g),
        "constant": torch.full((m, d), 3.0),
    }[kind]
    reduced = bl._row_reduce(x, center=center, max_elements=1 << 14)  # 5 chunks
    assert reduced.shape == (d, d)  # took the chunked path
    x64 = x.double() - x.double().mean(0) if center else x.double()
    ref = torch.linalg.svdvals(x64)
    got = singular_values(reduced)
    scale = max(float(ref[0]), 1e-300)
    assert float((got - ref).abs().max()) / scale < 1e-6
    r_ref = float(effective_rank(x64, normalize=False, eps=EPS))
    assert float(effective_rank(reduced, normalize=False, eps=EPS)) == pytest.approx(r_ref, abs=1e-3)


# --------------------------------------------------------------------------- dense RankMe


def test_dense_rankme_uses_every_patch_token(rng_state_guard):
    g = _gen(4)
    f = torch.randn(12, 49, 32, generator=g) * torch.linspace(0.1, 2, 32) + 0.2
    assert dense_rankme(f) == pytest.approx(rankme(f.reshape(-1, 32)), rel=1e-12)
    assert dense_rankme(f.numpy()) == pytest.approx(rankme(f.reshape(-1, 32)), rel=1e-12)


def test_dense_rankme_chunked_path_matches_direct_spectrum():
    g = _gen(5)
    f = torch.randn(64, 196, 384, generator=g) * torch.linspace(0.05, 1, 384) + 0.1  # > _MAX_ELEMENTS
    ref = float(effective_rank(f.reshape(-1, 384).double(), normalize=False, eps=EPS))
    assert dense_rankme(f) == pytest.approx(ref, rel=1e-9)


def test_dense_rankme_subsample_is_seeded_and_private(rng_state_guard):
    g = _gen(6)
    f = torch.randn(10, 50, 16, generator=g) * torch.linspace(0.1, 2, 16)
    full = dense_rankme(f)
    a = dense_rankme(f, max_patches=40, seed=3)
    assert dense_rankme(f, max_patches=40, seed=3) == a
    assert dense_rankme(f, max_patches=40, seed=4) != a
    assert dense_rankme(f, max_patches=500) == full
    assert dense_rankme(f, max_patches=10_000) == full
    # the documented draw: randperm of a private generator seeded by `seed`, first k, sorted
    idx = torch.randperm(500, generator=_gen(3))[:40].sort().values
    assert a == pytest.approx(rankme(f.reshape(-1, 16)[idx]), rel=1e-12)


def test_dense_rankme_collapsed():
    assert dense_rankme(torch.ones(4, 16, 8)) == pytest.approx(1.0, abs=1e-3)
    assert dense_rankme(torch.zeros(4, 16, 8)) == 1.0


# --------------------------------------------------------------------------- α-ReQ


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("weighting", ["inverse_rank", "uniform"])
@pytest.mark.parametrize("shape", [(400, 128), (150, 256)])
def test_alpha_req_recovers_an_exact_power_law(alpha, weighting, shape):
    z = _power_law_embeddings(*shape, alpha=alpha, offset=3.0)
    fit = alpha_req_fit(z, weighting=weighting)
    assert fit.alpha == pytest.approx(alpha, abs=1e-8)
    assert fit.r2 == pytest.approx(1.0, abs=1e-10)
    assert (fit.first_rank, fit.last_rank) == (11, 100)
    assert not fit.collapsed
    # exponent and intercept of the unit-sum spectrum
    lam = covariance_eigenvalues(z)
    assert math.exp(fit.log_intercept) == pytest.approx(float(lam[0] / lam.sum()), rel=1e-8)


def test_alpha_req_fit_range_is_clipped_and_respected():
    z = _power_law_embeddings(40, 60, alpha=1.5)  # 40 samples: covariance rank 39
    fit = alpha_req_fit(z, fit_range=(3, 1000))
    assert (fit.first_rank, fit.last_rank, fit.num_points) == (3, 39, 37)
    assert fit.alpha == pytest.approx(1.5, abs=1e-8)
    # a spectrum that bends: the fitted slope depends on the range
    g = _gen(7)
    s = torch.arange(1, 65, dtype=torch.float64)
    s = torch.where(s <= 20, s**-0.5, 20**-0.5 * (s / 20) ** -3.0)
    z = (_orthonormal(300, 64, g, zero_mean=True) * s.sqrt()) @ _orthonormal(64, 64, g).T
    assert alpha_req(z, fit_range=(2, 20)) == pytest.approx(0.5, abs=1e-8)
    assert alpha_req(z, fit_range=(21, 64)) == pytest.approx(3.0, abs=1e-8)
    # across the bend the two weightings differ: w_i = 1/i on squared residuals, or none
    i = np.arange(2, 65)
    log_lam = np.log(covariance_eigenvalues(z).numpy()[1:64])
    weighted = -np.polyfit(np.log(i), log_lam, 1, w=np.sqrt(1.0 / i))[0]
    plain = -np.polyfit(np.log(i), log_lam, 1)[0]
    assert abs(weighted - plain) > 0.1
    assert alpha_req(z, fit_range=(2, 64)) == pytest.approx(weighted, rel=1e-9)
    assert alpha_req(z, fit_range=(2, 64), weighting="uniform") == pytest.approx(plain, rel=1e-9)


def test_alpha_req_invariances():
    g = _gen(8)
    z = torch.randn(300, 64, generator=g, dtype=torch.float64) * torch.arange(1, 65, dtype=torch.float64) ** -0.8
    ref = alpha_req(z)
    q = _orthonormal(64, 64, g)
    assert alpha_req(z @ q) == pytest.approx(ref, rel=1e-9)
    assert alpha_req(4.0 * z + 10.0) == pytest.approx(ref, rel=1e-9)
    assert alpha_req(z.float().numpy()) == pytest.approx(ref, rel=1e-4)


def test_alpha_req_rank_deficient_and_collapsed():
    g = _gen(9)
    z = torch.randn(300, 40, generator=g, dtype=torch.float64) @ torch.randn(40, 128, generator=g, dtype=torch.float64)
    fit = alpha_req_fit(z)
    assert (fit.first_rank, fit.last_rank) == (11, 40)  # numerically-zero tail excluded
    assert math.isfinite(fit.alpha) and 0 < fit.alpha < 5
    for collapsed in [
        torch.full((100, 32), 1.5),
        torch.randn(100, 1, generator=g) @ torch.randn(1, 32, generator=g),
        torch.randn(100, 8, generator=g) @ torch.randn(8, 32, generator=g),  # rank 8 < 11
    ]:
        fit = alpha_req_fit(collapsed)
        assert fit.collapsed and fit.num_points == 0
        assert fit.alpha == pytest.approx(ALPHA_CAP)
        assert math.isfinite(fit.r2) and math.isfinite(fit.log_intercept)
    assert alpha_req(torch.zeros(50, 32), rel_floor=1e-6) == pytest.approx(math.log2(1e6))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fit_range=(0, 10)), "fit_range"),
        (dict(fit_range=(10, 10)), "fit_range"),
        (dict(fit_range=(2.0, 10)), "fit_range"),
        (dict(fit_range=(2,)), "fit_range"),
        (dict(weighting="log"), "weighting"),
        (dict(rel_floor=0.0), "rel_floor"),
    ],
)
def test_alpha_req_bad_settings(kwargs, match):
    z = torch.randn(50, 20, generator=_gen(10))
    with pytest.raises(ValueError, match=match):
        alpha_req(z, **kwargs)


def test_alpha_req_too_small_for_the_fit_range():
    with pytest.raises(ValueError, match=r"z: fit_range \(11, 100\) needs at least 13 samples and 12 channels"):
        alpha_req(torch.randn(12, 64, generator=_gen(11)))
    with pytest.raises(ValueError, match="z: fit_range"):
        alpha_req(torch.randn(64, 11, generator=_gen(11)))
    assert alpha_req_fit(torch.randn(13, 64, generator=_gen(11))).num_points == 2
    assert alpha_req_fit(torch.randn(64, 12, generator=_gen(11))).num_points == 2
    assert math.isfinite(alpha_req(torch.randn(11, 64, generator=_gen(11)), fit_range=(1, 10)))


# --------------------------------------------------------------------------- LiDAR


def _reference_lidar_matrix(e: np.ndarray, delta: float) -> np.ndarray:
    """The paper's formulas, written out with explicit sums (float64 numpy)."""
    n, q, d = e.shape
    mu_x = e.mean(1)
    mu = mu_x.mean(0)
    sb = sum(np.outer(mu_x[i] - mu, mu_x[i] - mu) for i in range(n)) / (n - 1)
    sw = sum(np.outer(e[i, v] - mu_x[i], e[i, v] - mu_x[i]) for i in range(n) for v in range(q)) / (n * (q - 1))
    sw = sw + delta * np.eye(d)
    w, vec = np.linalg.eigh(sw)
    inv_sqrt = vec @ np.diag(w**-0.5) @ vec.T
    return inv_sqrt @ sb @ inv_sqrt


@pytest.mark.parametrize("delta", [1e-4, 0.3])
def test_lidar_matches_the_paper_formulas(delta):
    g = _gen(12)
    n, q, d = 30, 4, 12
    e = torch.randn(n, 1, d, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2, d, dtype=torch.float64)
    spread = torch.linspace(2, 0.1, d, dtype=torch.float64)
    e = e + 0.5 * torch.randn(n, q, d, generator=g, dtype=torch.float64) * spread
    ref = _reference_lidar_matrix(e.numpy(), delta)
    np.testing.assert_allclose(lidar_matrix(e, delta).numpy(), ref, rtol=1e-9, atol=1e-12)
    lam = np.clip(np.linalg.eigvalsh(ref), 0, None)
    assert lidar(e, delta) == pytest.approx(_erank(lam), rel=1e-9)


def test_lidar_identical_views_and_separated_classes():
    n, d, c, q = 10, 24, 3.0, 5
    means = c * torch.eye(n, d, dtype=torch.float64)  # one-hot class means
    e = means.unsqueeze(1).expand(n, q, d)  # views identical: Σ_w = δI
    expected = _erank([1.0] * (n - 1) + [0.0] * (d - n + 1))  # Σ_b: n-1 equal eigenvalues
    assert lidar(e) == pytest.approx(expected, rel=1e-9)
    assert lidar(e) == pytest.approx(n - 1, abs=1e-3)
    # all images embed to the same point: no between-class scatter
    assert lidar(torch.ones(n, q, d)) == 1.0
    assert lidar(torch.zeros(n, q, d)) == 1.0


def test_lidar_isotropic_within_class_noise_cancels():
    g = _gen(13)
    n, d = 48, 16
    means = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, d, dtype=torch.float64)
    f = math.sqrt(n / d) * _orthonormal(n, d, g)  # Σ_x f_x f_xᵀ = (n/d) I
    noisy = torch.stack([means + 2.0 * f, means - 2.0 * f], 1)  # Σ_w = (8/d) I + δI
    clean = means.unsqueeze(1).expand(n, 2, d)
    assert lidar(noisy) == pytest.approx(lidar(clean), rel=1e-9)
    # noise along one discriminative direction removes it from the LDA spectrum
    one_hot = 3.0 * torch.eye(8, d, dtype=torch.float64)
    along = torch.zeros(8, 2, d, dtype=torch.float64)
    along[:, 0, 0], along[:, 1, 0] = 50.0, -50.0
    assert lidar(one_hot.unsqueeze(1) + along) < lidar(one_hot.unsqueeze(1).expand(8, 2, d)) - 0.5


def test_lidar_rotation_invariance_and_types():
    g = _gen(14)
    e = torch.randn(40, 3, 20, generator=g, dtype=torch.float64)
    e = e + 2 * torch.randn(40, 1, 20, generator=g, dtype=torch.float64)
    ref = lidar(e)
    q = _orthonormal(20, 20, g)
    assert lidar(e @ q) == pytest.approx(ref, rel=1e-8)
    assert lidar(e.float().numpy()) == pytest.approx(ref, rel=1e-4)
    m = lidar_matrix(e)
    assert m.shape == (20, 20) and m.dtype == torch.float64
    torch.testing.assert_close(m, m.T)
    assert float(torch.linalg.eigvalsh(m).min()) > -1e-9


@pytest.mark.parametrize(
    "embeddings, kwargs, match",
    [
        (torch.randn(10, 16), {}, r"embeddings: expected shape \(n_images, n_views, d\)"),
        (torch.randn(1, 4, 8), {}, "at least 2 images"),
        (torch.randn(5, 1, 8), {}, "at least 2 views"),
        (torch.randn(5, 3, 8), dict(delta=0.0), "delta"),
        (torch.randn(5, 3, 8), dict(delta=float("nan")), "delta"),
        (torch.randn(5, 3, 8), dict(eps=-1.0), "eps"),
        (torch.full((5, 3, 8), float("nan")), {}, "embeddings: contains 120 non-finite"),
        (torch.ones(5, 3, 8, dtype=torch.int64), {}, "embeddings: expected floating-point"),
    ],
)
def test_lidar_errors(embeddings, kwargs, match):
    with pytest.raises(ValueError, match=match):
        lidar(embeddings, **kwargs)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("fn, ndim, name", [(rankme, 2, "z"), (alpha_req, 2, "z"), (dense_rankme, 3, "features")])
def test_input_validation(fn, ndim, name):
    shape = (20, 16) if ndim == 2 else (4, 5, 16)
    good = np.random.default_rng(0).standard_normal(shape)
    bad_nan, bad_inf = good.copy(), good.copy()
    bad_nan.flat[3], bad_inf.flat[5] = np.nan, -np.inf
    cases = [
        (good.astype(np.int64), "floating-point"),
        (torch.ones(shape, dtype=torch.int32), "floating-point"),
        (np.zeros((0,) + shape[1:]), "non-empty"),
        (good[None], "expected shape"),
        (good.reshape(-1), "expected shape"),
        (bad_nan, "1 non-finite"),
        (torch.from_numpy(bad_inf), "1 non-finite"),
        (good.tolist(), "numpy array or torch tensor"),
    ]
    for value, match in cases:
        with pytest.raises(ValueError, match=f"{name}: .*{match}"):
            fn(value)
    with pytest.raises(ValueError, match="eps"):
        (rankme if ndim == 2 else dense_rankme)(good, eps=-1e-3)
    if fn is dense_rankme:
        for bad in (0, -3, 2.5, True):
            with pytest.raises(ValueError, match="max_patches"):
                dense_rankme(good, max_patches=bad)


def test_covariance_eigenvalues():
    g = _gen(15)
    z = torch.randn(50, 8, generator=g, dtype=torch.float64) + 4.0
    ref = torch.linalg.eigvalsh(torch.cov(z.T)).flip(0)
    torch.testing.assert_close(covariance_eigenvalues(z), ref, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 rows"):
        covariance_eigenvalues(torch.randn(1, 8))


# --------------------------------------------------------------------------- registry


def test_registry_on_dense_features():
    assert set(BASELINE_METRICS) == {"rankme", "alpha_req", "dense_rankme"}
    g = _gen(16)
    f = torch.randn(32, 8, 24, generator=g) * torch.linspace(0.1, 2, 24) + torch.randn(32, 1, 24, generator=g)
    values = {name: fn(f) for name, fn in BASELINE_METRICS.items()}
    assert all(isinstance(v, float) and math.isfinite(v) for v in values.values())
    pooled = f.mean(1)
    assert values["rankme"] == pytest.approx(rankme(pooled), rel=1e-12)
    assert values["alpha_req"] == pytest.approx(alpha_req(pooled), rel=1e-12)
    assert values["dense_rankme"] == pytest.approx(dense_rankme(f), rel=1e-12)
    assert values["rankme"] != pytest.approx(values["dense_rankme"], rel=1e-3)
    collapsed = {name: fn(torch.ones(32, 8, 24)) for name, fn in BASELINE_METRICS.items()}
    assert collapsed["rankme"] == pytest.approx(1.0, abs=1e-3)
    assert collapsed["dense_rankme"] == pytest.approx(1.0, abs=1e-3)
    assert collapsed["alpha_req"] == pytest.approx(ALPHA_CAP)


def test_view_registry_mean_pools_tokens():
    assert set(VIEW_METRICS) == {"lidar"}
    g = _gen(17)
    f = torch.randn(20, 3, 6, 10, generator=g) + torch.randn(20, 1, 1, 10, generator=g)
    assert VIEW_METRICS["lidar"](f) == pytest.approx(lidar(f.mean(2)), rel=1e-12)
    assert lidar_dense(f, delta=0.5) == pytest.approx(lidar(f.mean(2), delta=0.5), rel=1e-12)
    with pytest.raises(ValueError, match=r"features: expected shape \(n_images, n_views, N, d\)"):
        lidar_dense(f[0])


# --------------------------------------------------------------------------- reptrix (dev only)
#
# reptrix 0.1.0 (by the α-ReQ authors) computes its spectra with sklearn's PCA on centred
# features: `explained_variance_ratio_`, i.e. σ_i(Z - mean)² / Σ σ_j², the normalised
# *covariance eigenvalues*. That is what α-ReQ defines; for RankMe and LiDAR it is not the
# published definition, and the tests below pin down exactly where the two differ.


@pytest.fixture(scope="module")
def reptrix():
    pytest.importorskip("sklearn")
    mod = pytest.importorskip("reptrix")
    for sub in ("alpha", "lidar", "rankme"):
        importlib.import_module(f"reptrix.{sub}")
    return mod


def test_reptrix_rankme_is_the_smooth_rank_of_centred_squared_singular_values(reptrix):
    g = _gen(20)
    z = torch.randn(500, 64, generator=g, dtype=torch.float64) * torch.arange(1, 65, dtype=torch.float64) ** -0.7 + 0.3
    theirs = reptrix.rankme.get_rankme(z)
    # same ε placement (p = λ/Σλ + 1e-7), but λ = σ(Z - mean)², not σ(Z)
    as_reptrix = _erank(singular_values(z, center_rows=True).square())
    assert theirs == pytest.approx(as_reptrix, rel=1e-6)
    assert rankme(z) > 1.5 * theirs  # squaring sharpens the spectrum, the offset is kept by us
    # where the definitions coincide: zero-mean columns with a flat spectrum
    flat = _orthonormal(500, 64, g, zero_mean=True) @ _orthonormal(64, 64, g).T
    assert reptrix.rankme.get_rankme(flat) == pytest.approx(rankme(flat), rel=1e-6)
    assert rankme(flat) == pytest.approx(64, rel=1e-4)


def test_reptrix_alpha_agrees_with_the_default_fit(reptrix):
    g = _gen(21)
    z = torch.randn(300, 128, generator=g, dtype=torch.float64) * torch.arange(1, 129, dtype=torch.float64) ** -0.6
    theirs = reptrix.alpha.get_alpha(z, fit_range=np.arange(10, 100))[0]  # 0-based indices 10..99
    assert alpha_req(z) == pytest.approx(theirs, rel=1e-6)  # ranks 11..100, weights 1/i
    # ordinary least squares is a different estimator off an exact power law ...
    assert abs(alpha_req(z, weighting="uniform") - theirs) > 1e-3
    # ... and the same one on an exact power law
    exact = _power_law_embeddings(300, 128, alpha=1.3)
    assert reptrix.alpha.get_alpha(exact)[0] == pytest.approx(alpha_req(exact, weighting="uniform"), rel=1e-6)


def test_reptrix_alpha_fits_the_numerically_zero_tail(reptrix):
    g = _gen(22)
    z = torch.randn(300, 40, generator=g, dtype=torch.float64) @ torch.randn(40, 128, generator=g, dtype=torch.float64)
    theirs = reptrix.alpha.get_alpha(z)[0]  # log of rounding-level eigenvalues 41..100
    ours = alpha_req_fit(z)
    assert ours.last_rank == 40 and theirs > 5 * ours.alpha
    # restricted to the eigenvalues above the floor the two fits agree
    assert reptrix.alpha.get_alpha(z, fit_range=np.arange(10, 40))[0] == pytest.approx(ours.alpha, rel=1e-6)


def test_reptrix_lidar_uses_the_squared_spectrum_of_a_row_centred_lidar_matrix(reptrix):
    g = _gen(23)
    n, q, d, delta = 40, 5, 16, 1e-2
    e = torch.randn(n, q, d, generator=g, dtype=torch.float64)
    e = e + 2 * torch.randn(n, 1, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 2, d, dtype=torch.float64)
    # reptrix: Σ_b summed (not / (n-1)), Σ_w summed over views (not / (q-1)), so its ridge
    # (q-1)·δ matches ours and its matrix is ours times (n-1)/(q-1) ...
    theirs = reptrix.lidar.get_lidar(e, n, q, del_sigma_augs=(q - 1) * delta)
    m = lidar_matrix(e, delta) * (n - 1) / (q - 1)
    # ... then it takes sklearn PCA of that d×d matrix: squared singular values after
    # centring its rows, not its eigenvalues
    as_reptrix = _erank(singular_values(m, center_rows=True).square())
    assert theirs == pytest.approx(as_reptrix, rel=1e-5)
    ours = lidar(e, delta)
    assert ours == pytest.approx(_erank(torch.linalg.eigvalsh(lidar_matrix(e, delta)).clamp_min(0)), rel=1e-9)
    assert ours > 1.3 * theirs
