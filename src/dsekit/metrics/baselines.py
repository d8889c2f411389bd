r"""Label-free baseline metrics: RankMe, α-ReQ, dense RankMe and LiDAR.

Every spectrum goes through :mod:`dsekit.metrics.spectra` (singular values in float64,
effective rank ``exp(-Σ p log p)``). Inputs are torch tensors or numpy arrays of any
float dtype, on any device; the spectral work is done in float64.

Variants (``σ_k``: singular values; ``λ_i``: eigenvalues, in descending order)
------------------------------------------------------------------------------

**RankMe** (Garrido et al., ICML 2023) of an embedding matrix ``Z ∈ R^{n×d}``, *not
centred*::

    p_k = σ_k(Z) / Σ_j σ_j(Z) + ε,   k = 1 … min(n, d)
    RankMe(Z) = exp(-Σ_k p_k log p_k),   ε = 1e-7

The value lies in ``[1, min(n, d)]`` up to ``O(min(n, d) · ε log ε)`` (``ε`` lifts a
rank-1 matrix slightly above 1 and a flat spectrum slightly above ``min(n, d)``); it is
invariant to rescaling ``Z`` and to orthogonal maps on either side. The paper estimates
it on ``n ≥ d`` embeddings (tens of thousands of images); with ``n < d`` it is capped by
``n``.

**Dense RankMe**: RankMe of the ``(B·N) × d`` matrix of every patch token of ``B`` images,
optionally on ``max_patches`` rows drawn without replacement by a private generator
seeded by ``seed`` (same seed, same rows; kept in their original order). The patch
matrix is never copied whole to float64: its ``d × d`` Gram matrix is accumulated in
float64 over row chunks and factored (see ``_row_reduce``), so memory stays at about the
input plus ``O(d²)``.

**α-ReQ** (Agrawal et al., NeurIPS 2022) of ``Z ∈ R^{n×d}``: the eigenvalues of the
sample covariance of the *centred* embeddings, ``λ_i = σ_i(Z - \bar z)^2 / (n - 1)``, are
fitted by a power law ``λ_i ≈ c · i^{-α}`` on a log-log scale::

    minimise_{α, c}  Σ_{i ∈ F} w_i (log λ_i - log c + α log i)^2

* fit ranks ``F = {i : lo ≤ i ≤ min(hi, min(n - 1, d)), λ_i > rel_floor · λ_1}`` with
  ``fit_range = (lo, hi) = (11, 100)`` (1-based ranks, inclusive) by default: the first
  ten eigenvalues and the tail are left out, as in the α-ReQ authors' ``reptrix`` package
  (``fit_range=np.arange(10, 100)`` over 0-based indices). Eigenvalues at or below
  ``rel_floor · λ_1`` (``rel_floor = 1e-10``) are numerically zero (rank deficiency)
  and are excluded rather than fitted as ``log 0``;
* ``weighting="inverse_rank"`` (default): ``w_i = 1 / i``, the weighted least squares of
  ``reptrix`` (after Stringer et al., Nature 2019); ``"uniform"``: ``w_i = 1``, ordinary
  least squares. Both return the exact ``α`` on an exact power law.
* a spectrum that leaves fewer than two ranks in ``F`` (its numerical rank is at most
  ``lo``: e.g. all rows equal, or rank 1) decays too fast to fit; α is then reported
  as ``log2(1 / rel_floor)`` (≈ 33.2), the exponent of a drop from ``λ_1`` to the floor
  within one octave of rank, and the fit is flagged ``collapsed``. Fitted values on real
  embeddings are far smaller (α ≈ 1 for good representations).

**LiDAR** (Thilak et al., ICLR 2024) of embeddings ``e ∈ R^{n×q×d}`` of ``q`` augmented
views of each of ``n`` images (each image is a class of LDA, its views the samples)::

    μ_x = (1/q) Σ_v e_{x,v},   μ = (1/n) Σ_x μ_x
    Σ_b = 1/(n-1) Σ_x (μ_x - μ)(μ_x - μ)ᵀ
    Σ_w = 1/(n(q-1)) Σ_x Σ_v (e_{x,v} - μ_x)(e_{x,v} - μ_x)ᵀ + δ I_d
    Σ_lidar = Σ_w^{-1/2} Σ_b Σ_w^{-1/2}
    p_i = λ_i(Σ_lidar) / Σ_j λ_j(Σ_lidar) + ε,   i = 1 … d
    LiDAR(e) = exp(-Σ_i p_i log p_i),   δ = 1e-4,  ε = 1e-7

i.e. the smooth rank of the *eigenvalues* of ``Σ_lidar`` (L1-normalised, then ``+ε``, as
RankMe does with singular values; ``Σ_lidar`` is symmetric PSD so the two coincide). The
eigenvalues are computed as the squared singular values of ``A = (M - 1μᵀ) Σ_w^{-1/2} /
sqrt(n-1)``, ``M`` the ``n × d`` matrix of the ``μ_x`` (``Σ_lidar = AᵀA``), padded with
zeros to ``d`` values; ``Σ_w^{-1/2}`` comes from the eigen-decomposition of ``Σ_w``, all
in float64. The paper's
experiments use about ``n = 1000`` images with ``q = 50`` views each; the rank is at most
``min(n - 1, d)``, so use ``n > d`` where the budget allows, and ``q ≥ 2`` (``Σ_w`` needs it).
``δ`` is an absolute ridge: LiDAR is invariant to orthogonal maps of feature space, but
only approximately to rescaling (exactly when ``δ`` is negligible against ``Σ_w``).

Only dense features available
-----------------------------
:data:`BASELINE_METRICS` maps a name to ``f(features) -> float`` on dense features
``(B, N, d)``. The image-level metrics (``rankme``, ``alpha_req``) use one embedding per
image, the **mean-pooled patch tokens** ``z_b = (1/N) Σ_n features[b, n]`` (timm's
``global_pool="avg"``); ``dense_rankme`` uses every patch token. :data:`VIEW_METRICS`
holds the metrics that need augmented views (``lidar``), on dense features
``(n_images, n_views, N, d)``, mean-pooled the same way.

Collapsed inputs give finite numbers: RankMe (and dense RankMe) ≈ 1 for rank-1 or
constant rows and exactly 1 for all-zero input; α-ReQ the cap above; LiDAR exactly 1 when
all images embed to the same point (``Σ_b = 0``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

import numpy as np
import torch
from torch import Tensor

from .spectra import effective_rank, erank_from_singular_values, singular_values

__all__ = [
    "rankme",
    "dense_rankme",
    "alpha_req",
    "alpha_req_fit",
    "PowerLawFit",
    "covariance_eigenvalues",
    "lidar",
    "lidar_matrix",
    "lidar_dense",
    "BASELINE_METRICS",
    "VIEW_METRICS",
]

# Largest matrix (elements) copied whole to float64; a larger tall one (B·N patch tokens)
# is reduced chunk by chunk to a square one with the same singular values.
_MAX_ELEMENTS = 1 << 22
# Elements per float64 chunk of views when accumulating LiDAR's within-class scatter.
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------- validation


def _as_array(x: Any, name: str, ndim: int, layout: str) -> Tensor:
    """Check and convert a float array (numpy or torch) of rank ``ndim`` to a tensor.

    Float64 stays float64, other float types become float32. Raises ``ValueError`` naming
    ``name`` for a non-array, the wrong rank, an empty array, a non-float dtype or NaN/Inf.
    """
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{name}: expected floating-point values, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected shape {layout}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty {layout} array, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected floating-point values, got dtype {x.dtype}")
    if x.dtype != torch.float64:
        x = x.float()
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(f"{name}: contains {int(bad.sum())} non-finite values (NaN or Inf)")
    return x.detach()


def _check_eps(eps: float) -> None:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps: expected a finite number >= 0, got {eps!r}")


# --------------------------------------------------------------------------- tensor math


def _row_reduce(x: Tensor, *, center: bool = False, max_elements: int = _MAX_ELEMENTS) -> Tensor:
    """A float64 matrix with the singular values of ``x`` (optionally row-centred).

    ``(m, n) -> (m', n)``. A matrix of at most ``max_elements`` elements, or a wide one, is
    returned as a float64 copy (:func:`~dsekit.metrics.spectra.singular_values` then forms
    its smaller Gram matrix in float64). A larger tall one (``m > n``, e.g. ``B·N`` patch
    tokens) is never copied whole: its ``n × n`` Gram matrix ``G = xᵀx`` is accumulated in
    float64 over row chunks and factored as ``G = LLᵀ`` (Cholesky), so that ``Lᵀ`` (n × n)
    has the singular values of ``x``. When ``G`` is numerically singular (a collapsed
    representation) a ridge ``τ I`` with ``τ = 10^-15 · tr G`` (raised tenfold until the
    factorisation succeeds) is added first, which moves a zero singular value to
    ``sqrt(τ) ≈ 3e-8 · ‖x‖_F``: the size of the rounding error of the float64 Gram path itself.
    """
    m, n = x.shape
    chunk = max(1, max_elements // n)
    mean = None
    if center:
        mean = torch.zeros(n, dtype=torch.float64, device=x.device)
        for lo in range(0, m, chunk):
            mean += x[lo : lo + chunk].to(torch.float64).sum(0)
        mean /= m
    if m * n <= max_elements or m <= n:
        x64 = x.to(torch.float64)
        return x64 - mean if mean is not None else x64
    gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for lo in range(0, m, chunk):
        c = x[lo : lo + chunk].to(torch.float64)
        if mean is not None:
            c = c - mean
        gram += c.T @ c
    trace = float(gram.diagonal().sum())
    if trace <= 0:
        return gram  # all zeros: every singular value is 0
    eye = torch.eye(n, dtype=torch.float64, device=x.device)
    tau = 0.0
    for _ in range(10):
        chol, info = torch.linalg.cholesky_ex(gram + tau * eye)
        if int(info) == 0:
            return chol.T
        tau = 1e-15 * trace if tau == 0 else 10 * tau
    raise RuntimeError("could not factor the Gram matrix of the embeddings")  # pragma: no cover


def _rankme(z: Tensor, eps: float) -> float:
    return float(effective_rank(_row_reduce(z), normalize=False, eps=eps, method="gram"))


def covariance_eigenvalues(z: Tensor | np.ndarray) -> Tensor:
    """Eigenvalues of the sample covariance of the rows of ``z``, descending.

    Args:
        z: ``(n, d)`` embeddings, ``n >= 2``.

    Returns:
        ``(min(n, d),)`` float64 tensor ``σ_i(z - mean)^2 / (n - 1)``.
    """
    z = _as_array(z, "z", 2, "(n, d) = (samples, channels)")
    if z.shape[0] < 2:
        raise ValueError(f"z: a covariance needs at least 2 rows, got shape {tuple(z.shape)}")
    s = singular_values(_row_reduce(z, center=True), method="gram")
    return s.square() / (z.shape[0] - 1)


class _FitSettings(TypedDict):
    """The settings of an α-ReQ fit, as :class:`PowerLawFit` records them."""

    fit_range: tuple[int, int]
    weighting: str
    rel_floor: float


@dataclass(frozen=True)
class PowerLawFit:
    """Power-law fit ``λ_i ≈ c · i^-alpha`` of a covariance spectrum (α-ReQ).

    Attributes:
        alpha: decay coefficient (the cap ``log2(1/rel_floor)`` when ``collapsed``).
        log_intercept: ``log c`` for the spectrum normalised to unit sum (0 when collapsed).
        r2: coefficient of determination of the fit of ``log λ_i`` on the fitted ranks
            (unweighted; 0 when collapsed).
        first_rank, last_rank: 1-based ranks of the first and last fitted eigenvalues
            (0 when collapsed).
        num_points: number of fitted eigenvalues.
        collapsed: fewer than two eigenvalues above the floor fell in the fit range.
        fit_range, weighting, rel_floor: the settings used.
    """

    alpha: float
    log_intercept: float
    r2: float
    first_rank: int
    last_rank: int
    num_points: int
    collapsed: bool
    fit_range: tuple[int, int]
    weighting: str
    rel_floor: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _power_law_fit(lam: Tensor, ranks: Tensor, weights: Tensor) -> tuple[float, float, float]:
    """Weighted least squares of ``log λ`` on ``-log i``: returns ``(alpha, log c, R²)``."""
    x = -ranks.to(torch.float64).log()
    y = lam.log()
    w = weights / weights.sum()
    xm, ym = (w * x).sum(), (w * y).sum()
    alpha = float((w * (x - xm) * (y - ym)).sum() / (w * (x - xm).square()).sum())
    log_c = float(ym - alpha * xm)
    res = (y - (log_c + alpha * x)).square().sum()
    tot = (y - y.mean()).square().sum()
    r2 = float(1.0 - res / tot) if float(tot) > 0 else 1.0
    return alpha, log_c, r2


def alpha_req_fit(
    z: Tensor | np.ndarray,
    *,
    fit_range: tuple[int, int] = (11, 100),
    weighting: str = "inverse_rank",
    rel_floor: float = 1e-10,
) -> PowerLawFit:
    """α-ReQ with the details of the fit (see the module docstring for the definition).

    Args:
        z: ``(n, d)`` embeddings (rows are samples); centred internally.
        fit_range: ``(lo, hi)`` 1-based, inclusive ranks of the eigenvalues to fit, clipped
            to ``min(n - 1, d)`` (the covariance's largest possible rank).
        weighting: ``"inverse_rank"`` (``w_i = 1/i``, as ``reptrix``) or ``"uniform"``.
        rel_floor: eigenvalues ``<= rel_floor · λ_1`` count as zero and are not fitted.

    Returns:
        :class:`PowerLawFit`.
    """
    z = _as_array(z, "z", 2, "(n, d) = (samples, channels)")
    if (
        not isinstance(fit_range, (tuple, list))
        or len(fit_range) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in fit_range)
        or not 1 <= fit_range[0] < fit_range[1]
    ):
        raise ValueError(f"fit_range: expected two integer ranks 1 <= lo < hi, got {fit_range!r}")
    if weighting not in ("inverse_rank", "uniform"):
        raise ValueError(f"weighting: expected 'inverse_rank' or 'uniform', got {weighting!r}")
    if not (isinstance(rel_floor, (int, float)) and 0 < rel_floor < 1):
        raise ValueError(f"rel_floor: expected a number in (0, 1), got {rel_floor!r}")
    lo, hi = int(fit_range[0]), int(fit_range[1])
    n, d = z.shape
    top = min(hi, n - 1, d)
    if top - lo + 1 < 2:
        raise ValueError(
            f"z: fit_range {(lo, hi)} needs at least {lo + 2} samples and {lo + 1} channels "
            f"(two eigenvalues from rank {lo} on), got shape {tuple(z.shape)}"
        )
    settings: _FitSettings = {"fit_range": (lo, hi), "weighting": weighting, "rel_floor": float(rel_floor)}
    lam = covariance_eigenvalues(z)
    total = lam.sum()
    usable = lam > rel_floor * lam[0]
    ranks = torch.arange(lo, top + 1, device=lam.device)
    ranks = ranks[usable[ranks - 1]]
    if ranks.numel() < 2 or float(total) <= 0:
        cap = math.log2(1.0 / rel_floor)
        return PowerLawFit(cap, 0.0, 0.0, 0, 0, 0, True, **settings)
    weights = ranks.to(torch.float64)
    weights = 1.0 / weights if weighting == "inverse_rank" else torch.ones_like(weights)
    alpha, log_c, r2 = _power_law_fit(lam[ranks - 1] / total, ranks, weights)
    return PowerLawFit(alpha, log_c, r2, int(ranks[0]), int(ranks[-1]), int(ranks.numel()), False, **settings)


def alpha_req(
    z: Tensor | np.ndarray,
    *,
    fit_range: tuple[int, int] = (11, 100),
    weighting: str = "inverse_rank",
    rel_floor: float = 1e-10,
) -> float:
    """α-ReQ (Agrawal et al. 2022): power-law decay coefficient of the covariance spectrum.

    Args:
        z: ``(n, d)`` embeddings.
        fit_range, weighting, rel_floor: see :func:`alpha_req_fit`.

    Returns:
        ``alpha`` (larger = faster decay; ``log2(1/rel_floor)`` for a collapsed spectrum).
    """
    return alpha_req_fit(z, fit_range=fit_range, weighting=weighting, rel_floor=rel_floor).alpha


def rankme(z: Tensor | np.ndarray, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): smooth rank of the singular values of ``z``.

    Args:
        z: ``(n, d)`` embeddings, not centred.
        eps: added to the normalised singular values before the logarithm.

    Returns:
        ``exp(-Σ p log p)``, ``p = σ / Σσ + eps``; about ``[1, min(n, d)]``, 1 for all zeros.
    """
    z = _as_array(z, "z", 2, "(n, d) = (samples, channels)")
    _check_eps(eps)
    return _rankme(z, eps)


def dense_rankme(
    features: Tensor | np.ndarray,
    eps: float = 1e-7,
    max_patches: int | None = None,
    seed: int = 0,
) -> float:
    """RankMe of all patch tokens: rows ``features.reshape(B·N, d)``.

    Args:
        features: ``(B, N, d)`` dense features.
        eps: see :func:`rankme`.
        max_patches: when ``B·N`` exceeds it, use ``max_patches`` rows drawn without
            replacement by a private generator seeded by ``seed`` (``None``: all rows).
        seed: seed of that draw; the process-wide RNG is not touched.

    Returns:
        RankMe of the ``(B·N or max_patches) × d`` patch matrix.
    """
    x = _as_array(features, "features", 3, "(B, N, d) = (images, patches, channels)")
    _check_eps(eps)
    if max_patches is not None and (
        not isinstance(max_patches, (int, np.integer)) or isinstance(max_patches, bool) or max_patches < 1
    ):
        raise ValueError(f"max_patches: expected a positive integer or None, got {max_patches!r}")
    rows = x.reshape(-1, x.shape[-1])
    if max_patches is not None and rows.shape[0] > max_patches:
        g = torch.Generator().manual_seed(int(seed))
        idx = torch.randperm(rows.shape[0], generator=g)[: int(max_patches)].sort().values
        rows = rows[idx.to(rows.device)]
    return _rankme(rows, eps)


def _lidar_factor(e: Tensor, delta: float) -> Tensor:
    """``A`` with ``AᵀA = Σ_w^{-1/2} Σ_b Σ_w^{-1/2}``: ``(n, q, d) -> (n, d)`` float64."""
    n, q, d = e.shape
    step = max(1, _CHUNK_ELEMENTS // (q * d))
    means = torch.empty(n, d, dtype=torch.float64, device=e.device)
    scatter = torch.zeros(d, d, dtype=torch.float64, device=e.device)
    for lo in range(0, n, step):
        c = e[lo : lo + step].to(torch.float64)
        mu = c.mean(1, keepdim=True)
        means[lo : lo + step] = mu.squeeze(1)
        r = (c - mu).reshape(-1, d)
        scatter += r.T @ r
    sigma_w = scatter / (n * (q - 1)) + delta * torch.eye(d, dtype=torch.float64, device=e.device)
    # Σ_w = S + δI with S PSD: its eigenvalues are >= δ up to rounding.
    w, v = torch.linalg.eigh(sigma_w)
    inv_sqrt = (v * w.clamp_min(delta).rsqrt()) @ v.T
    return (means - means.mean(0)) @ inv_sqrt / math.sqrt(n - 1)


def _check_views(embeddings: Any, delta: float) -> Tensor:
    e = _as_array(embeddings, "embeddings", 3, "(n_images, n_views, d)")
    if e.shape[0] < 2:
        raise ValueError(f"embeddings: LiDAR needs at least 2 images (classes), got shape {tuple(e.shape)}")
    if e.shape[1] < 2:
        raise ValueError(
            f"embeddings: LiDAR needs at least 2 views per image (within-class scatter), got shape {tuple(e.shape)}"
        )
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta: expected a finite number > 0, got {delta!r}")
    return e


def lidar_matrix(embeddings: Tensor | np.ndarray, delta: float = 1e-4) -> Tensor:
    """``Σ_lidar = Σ_w^{-1/2} Σ_b Σ_w^{-1/2}`` of LiDAR (module docstring).

    Args:
        embeddings: ``(n_images, n_views, d)``.
        delta: ridge ``δ`` added to the within-class covariance.

    Returns:
        ``(d, d)`` float64 symmetric PSD matrix.
    """
    a = _lidar_factor(_check_views(embeddings, delta), float(delta))
    return a.T @ a


def lidar(embeddings: Tensor | np.ndarray, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR (Thilak et al. 2024): smooth rank of the LDA matrix of images vs their views.

    Args:
        embeddings: ``(n_images, n_views, d)`` embeddings of ``n_views`` augmented views of
            each image. The paper uses about 1000 images × 50 views; ``n_images > d`` lets
            the rank reach ``d`` (it is at most ``min(n_images - 1, d)``); ``n_views >= 2``.
        delta: ``δ``, ridge added to the within-class covariance ``Σ_w`` (absolute).
        eps: ``ε``, added to the L1-normalised eigenvalues before the logarithm.

    Returns:
        ``exp(-Σ p log p)`` with ``p = λ(Σ_lidar) / Σλ + eps`` over the ``d`` eigenvalues;
        1 when all images embed to the same point.
    """
    e = _check_views(embeddings, delta)
    _check_eps(eps)
    d = e.shape[-1]
    lam = singular_values(_lidar_factor(e, float(delta)), method="gram").square()
    if lam.numel() < d:
        lam = torch.cat([lam, lam.new_zeros(d - lam.numel())])
    return float(erank_from_singular_values(lam, eps=eps))


# --------------------------------------------------------------------------- registry


def _pooled(features: Any, name: str = "features") -> Tensor:
    """``(B, N, d) -> (B, d)``: mean of the patch tokens of each image."""
    x = _as_array(features, name, 3, "(B, N, d) = (images, patches, channels)")
    return x.mean(1)


def _rankme_pooled(features: Tensor | np.ndarray) -> float:
    """RankMe of the mean-pooled patch tokens ``(B, d)``."""
    return rankme(_pooled(features))


def _alpha_req_pooled(features: Tensor | np.ndarray) -> float:
    """α-ReQ of the mean-pooled patch tokens ``(B, d)``."""
    return alpha_req(_pooled(features))


def lidar_dense(features: Tensor | np.ndarray, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR of dense features of augmented views ``(n_images, n_views, N, d)``.

    Each view is embedded by its mean-pooled patch tokens, then :func:`lidar`.
    """
    x = _as_array(features, "features", 4, "(n_images, n_views, N, d) = (images, views, patches, channels)")
    return lidar(x.mean(2), delta=delta, eps=eps)


BASELINE_METRICS: dict[str, Callable[[Tensor | np.ndarray], float]] = {
    "rankme": _rankme_pooled,
    "alpha_req": _alpha_req_pooled,
    "dense_rankme": dense_rankme,
}
"""Name -> ``f(features (B, N, d)) -> float`` with default settings; image-level metrics
use mean-pooled patch tokens."""

VIEW_METRICS: dict[str, Callable[[Tensor | np.ndarray], float]] = {
    "lidar": lidar_dense,
}
"""Name -> ``f(features (n_images, n_views, N, d)) -> float`` for metrics of augmented views."""
