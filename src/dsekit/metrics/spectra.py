"""Spectral helpers: singular values, nuclear norm and effective rank, batched.

Everything in dsekit that needs a spectrum goes through this module.

Two paths compute singular values of a batch of matrices ``x`` of shape ``(..., m, n)``:

* ``"gram"`` (the default, estimator and regulariser alike): eigenvalues of the smaller
  Gram matrix (``x xᵀ`` when ``m <= n``, else ``xᵀ x``); ``σ = sqrt(max(λ, 0))``. This is
  several times faster than an SVD on CPU for the tall/wide matrices DSE uses. Its
  gradient ``W diag(g/σ) Wᵀ x`` reuses the eigenvectors and stays finite for repeated or
  vanishing singular values (see :class:`_GramSingularValues`).
* ``"svd"``: ``torch.linalg.svdvals`` (reference path, used in tests).

Precision: without gradient (the estimator, the baselines) the Gram matrix is formed and
decomposed in float64, so that small singular values keep
their precision: in float32 every eigenvalue below ``max(m, n) · eps32 · λ_max`` is rounding
noise, which on features of a few strong directions plus weak noise (well-separated classes,
trained backbones' tokens) removes hundreds of small singular values and changes ``M_dim`` by
up to 24 % (measured: README, "Benchmarks"). With gradient (the regulariser) it is computed
in the input's precision, float32 at least: training runs in float32, the eigenvectors the
gradient needs cost twice as much in float64, and singular values below the float32 rounding
level (about 0.7 % of ``σ_max`` for ``d = 384``) count as zero. float64 inputs (``gradcheck``)
stay float64.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "singular_values",
    "nuclear_norm",
    "effective_rank",
    "erank_from_singular_values",
    "center",
    "centered_nuclear_norms",
    "centered_nuclear_norms_stacks",
    "eigvalsh_stacks",
]


def center(x: Tensor) -> Tensor:
    """Subtract the mean row: ``(..., m, n) -> (..., m, n)``."""
    return x - x.mean(dim=-2, keepdim=True)


@contextlib.contextmanager
def _single_intra_op_thread() -> Iterator[int]:
    """Set torch's intra-op threads to 1 for the block; yields the previous setting."""
    before = torch.get_num_threads()
    if before == 1:
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield before
    finally:
        torch.set_num_threads(before)


def _batched_eigh(gram: Tensor, vectors: bool) -> tuple[Tensor, Tensor | None]:
    """Eigenvalues (ascending) and optionally eigenvectors of a batch ``(..., m, m)``
    (the batch is shared out over the CPU threads as in :func:`eigvalsh_stacks`)."""
    shape = gram.shape
    ((eig, vec),) = _eigh_stacks([gram.reshape(-1, shape[-2], shape[-1])], vectors)
    return eig.reshape(*shape[:-1]), (vec.reshape(shape) if vec is not None else None)


def _finite_decomposition(g: Tensor, eig: Tensor, vec: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``(eig, vec)`` of the stack ``g`` (c, m, m), with any matrix whose decomposition came back
    non-finite decomposed again in float64. MKL's float32 ``syevd`` returns NaN eigenvectors
    for some finite, nearly zero rank-one matrices (norm ~1e-13: collapsed features)."""
    bad = ~torch.isfinite(eig).all(-1)
    if vec is not None:
        bad |= ~torch.isfinite(vec).flatten(-2).all(-1)
    if g.dtype == torch.float64 or not bool(bad.any()) or not bool(torch.isfinite(g[bad]).all()):
        return eig, vec
    redo = g[bad].double()
    if vec is None:
        eig = eig.clone()
        eig[bad] = torch.linalg.eigvalsh(redo).to(eig.dtype)
        return eig, None
    e64, v64 = torch.linalg.eigh(redo)
    eig, vec = eig.clone(), vec.clone()
    eig[bad], vec[bad] = e64.to(eig.dtype), v64.to(vec.dtype)
    return eig, vec


def eigvalsh_stacks(grams: list[Tensor]) -> list[Tensor]:
    """Eigenvalues (ascending) of several stacks of symmetric matrices ``[(c_i, m_i, m_i)]``,
    in one pass over the CPU threads (see :func:`_eigh_stacks`)."""
    return [eig for eig, _ in _eigh_stacks(grams, vectors=False)]


def _eigh_stacks(grams: list[Tensor], vectors: bool) -> list[tuple[Tensor, Tensor | None]]:
    """Eigenvalues and optionally eigenvectors of several stacks ``[(c_i, m_i, m_i)]``.

    On CPU a batched eigen-decomposition is a loop of small LAPACK calls whose own OpenMP
    threading gains nothing (and, on busy cores, spinning threads make it many times
    slower). Instead all stacks are shared out over as many worker threads as torch's
    intra-op setting allows, in one pass: pieces of at most ``1/threads`` of a stack, placed
    largest first on the least loaded thread by their ``c · m³`` cost, each worker running
    single-threaded LAPACK, so many small stacks cost one thread pool, not one each.
    """

    def decompose(g: Tensor) -> tuple[Tensor, Tensor | None]:
        eig, vec = torch.linalg.eigh(g) if vectors else (torch.linalg.eigvalsh(g), None)
        return _finite_decomposition(g, eig, vec)

    if not grams:
        return []
    if grams[0].device.type != "cpu":
        return [decompose(g) for g in grams]
    with _single_intra_op_thread() as threads:
        pieces = []  # (cost, stack index, slice start, slice stop)
        for i, g in enumerate(grams):
            c, m = g.shape[0], g.shape[-1]
            bounds = torch.linspace(0, c, min(threads, c) + 1).round().long().tolist()
            pieces += [((hi - lo) * m**3, i, lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo]
        if threads <= 1 or len(pieces) <= 1:
            return [decompose(g) for g in grams]
        loads = [0] * threads
        plans: list[list[tuple[int, int, int, int]]] = [[] for _ in range(threads)]
        for piece in sorted(pieces, reverse=True):
            w = loads.index(min(loads))
            loads[w] += piece[0]
            plans[w].append(piece)
        eigs = [torch.empty(g.shape[:-1], dtype=g.dtype) for g in grams]
        vecs = [torch.empty_like(g) for g in grams] if vectors else None

        def work(plan: list[tuple[int, int, int, int]]) -> None:
            for _, i, lo, hi in plan:
                eig, vec = decompose(grams[i][lo:hi])
                eigs[i][lo:hi] = eig
                if vecs is not None:
                    assert vec is not None  # vecs exists only when vectors were asked for
                    vecs[i][lo:hi] = vec

        # Workers are created inside the single-thread block, so each initialises torch's
        # per-thread state with one intra-op thread.
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(work, [p for p in plans if p]))
    return [(e, vecs[i] if vecs is not None else None) for i, e in enumerate(eigs)]


def _grad_precision(x: Tensor) -> torch.dtype:
    """Precision of a spectrum computed with gradient: the input's (float32 at least)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _gram_spectrum(x: Tensor, vectors: bool, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor | None, bool]:
    """Eigen-decomposition of the smaller Gram matrix of ``x`` (..., m, n), in ``dtype``.

    Returns ascending singular values ``σ``, the eigenvectors (or None) and whether the Gram
    matrix is ``x xᵀ`` (``m <= n``). Eigenvalues at or below the rounding level of the
    decomposition (``max(m, n) · eps · λ_max``, as ``torch.linalg.matrix_rank``) are set
    to 0: their square roots would otherwise be ``sqrt(eps)``-sized noise, not spectrum.
    """
    gram, left = _gram(x.detach().to(dtype))
    eig, vec = _batched_eigh(gram, vectors)
    return _singular_from_eigenvalues(eig, max(x.shape[-2], x.shape[-1])), vec, left


def _gram(x: Tensor) -> tuple[Tensor, bool]:
    """The smaller Gram matrix of ``x`` (..., m, n) and whether it is ``x xᵀ`` (``m <= n``)."""
    left = x.shape[-2] <= x.shape[-1]
    return (x @ x.transpose(-1, -2) if left else x.transpose(-1, -2) @ x), left


def _singular_from_eigenvalues(eig: Tensor, size: int) -> Tensor:
    """``σ = sqrt(λ)`` from ascending Gram eigenvalues of a matrix with ``size = max(m, n)``;
    ``λ`` at or below ``size · eps · λ_max`` count as 0."""
    floor = size * torch.finfo(eig.dtype).eps * eig[..., -1:].clamp_min(0)
    return torch.where(eig > floor, eig, torch.zeros_like(eig)).sqrt()


class _GramSingularValues(torch.autograd.Function):
    """Singular values from the eigen-decomposition of the smaller Gram matrix.

    Computed in the input's precision, float32 at least (see the module docstring).

    Forward: ``G = x xᵀ`` (``m <= n``) or ``xᵀ x``, ``G = W Λ Wᵀ``, ``σ = sqrt(Λ)``.
    Backward: ``dσᵢ/dx = uᵢ vᵢᵀ = uᵢ uᵢᵀ x / σᵢ``, so for an upstream gradient ``g``
    ``∂/∂x = W diag(g / σ) Wᵀ x`` (or ``x W diag(g / σ) Wᵀ``). Zero singular values
    contribute nothing (the minimum-norm subgradient), so collapsed or rank-deficient
    inputs give finite gradients; unlike the eigen-decomposition's own backward, no
    ``1 / (λᵢ - λⱼ)`` appears, so repeated singular values are safe too.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        sv, vec, left = _gram_spectrum(x, vectors=True, dtype=_grad_precision(x))
        ctx.save_for_backward(x, vec, sv)
        ctx.left = left
        return sv.flip(-1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        x, vec, sv = ctx.saved_tensors
        return _singular_value_grad(x, vec, sv, ctx.left, grad.flip(-1))


def _singular_value_grad(x: Tensor, vec: Tensor, sv: Tensor, left: bool, grad: Tensor) -> Tensor:
    """``∂(Σ gᵢ σᵢ)/∂x = W diag(g / σ) Wᵀ x`` (or ``x W diag(g / σ) Wᵀ``), from the Gram
    eigenvectors ``W`` and ascending ``σ``; ``grad`` (..., r) ascending like ``sv`` or (...)
    for the same weight on every ``σ``. Zero ``σ`` contribute nothing."""
    g = grad.to(sv.dtype)
    if g.ndim < sv.ndim:
        g = g.unsqueeze(-1)
    keep = sv > 0
    scale = torch.where(keep, g / torch.where(keep, sv, torch.ones_like(sv)), torch.zeros_like(sv))
    # W diag(g/σ) Wᵀ in the spectrum's precision, then the large product in the input's dtype
    proj = ((vec * scale.unsqueeze(-2)) @ vec.transpose(-1, -2)).to(x.dtype)
    return proj @ x if left else x @ proj


def _gram_singular_values(x: Tensor) -> Tensor:
    """Singular values (descending); float64, or with gradient the input's precision (float32 at least)."""
    if x.requires_grad and torch.is_grad_enabled():
        return _GramSingularValues.apply(x)
    return _gram_spectrum(x, vectors=False)[0].flip(-1)


def singular_values(x: Tensor, *, center_rows: bool = False, method: str = "auto") -> Tensor:
    """Singular values, descending.

    Args:
        x: ``(..., m, n)`` float tensor.
        center_rows: subtract the mean row of each matrix first.
        method: ``"gram"`` (eigenvalues of the smaller Gram matrix, with the
            gradient of :class:`_GramSingularValues`), ``"svd"`` (``torch.linalg.svdvals``)
            or ``"auto"`` (``"gram"``).

    Returns:
        ``(..., min(m, n))`` tensor; for ``"gram"`` float64 (with gradient: float64 or
        float32, see the module docstring), ``x.dtype`` for ``"svd"``.
    """
    if x.ndim < 2:
        raise ValueError(f"x: expected a (..., m, n) tensor, got shape {tuple(x.shape)}")
    if center_rows:
        x = center(x)
    if method == "auto":
        method = "gram"
    if method == "gram":
        return _gram_singular_values(x)
    if method == "svd":
        return torch.linalg.svdvals(x)
    raise ValueError(f"method: expected 'auto', 'gram' or 'svd', got {method!r}")


def nuclear_norm(x: Tensor, *, center_rows: bool = False, method: str = "auto") -> Tensor:
    """Sum of singular values of each matrix: ``(..., m, n) -> (...)``."""
    return singular_values(x, center_rows=center_rows, method=method).sum(-1)


def erank_from_singular_values(s: Tensor, *, eps: float = 0.0) -> Tensor:
    """Effective rank ``exp(-Σ p log p)`` with ``p = σ / Σσ`` (Roy & Vetterli, 2007).

    Args:
        s: ``(..., r)`` non-negative singular values.
        eps: added to ``p`` before the logarithm (RankMe uses ``1e-7``); with ``eps=0``
            the convention ``0 log 0 = 0`` is used.

    Returns:
        ``(...)`` effective rank in ``[1, r]``; an all-zero spectrum gives 1 (a single
        direction, the limit of a collapsing representation), never NaN.
    """
    total = s.sum(-1, keepdim=True)
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    p = s / safe_total
    if eps > 0:
        p = p + eps
        entropy = -(p * p.log()).sum(-1)
    else:
        logp = torch.where(p > 0, p, torch.ones_like(p)).log()
        entropy = -(p * logp).sum(-1)
    erank = entropy.exp()
    return torch.where(total.squeeze(-1) > 0, erank, torch.ones_like(erank))


def effective_rank(
    x: Tensor,
    *,
    normalize: bool = True,
    center_rows: bool = False,
    eps: float = 0.0,
    method: str = "auto",
) -> Tensor:
    """Effective rank of each matrix, optionally divided by ``min(m, n)``.

    Args:
        x: ``(..., m, n)``.
        normalize: divide by ``min(m, n)`` so the value lies in ``(0, 1]``.
        center_rows: centre the rows first (DSE's ``M_dim`` does not).
        eps: see :func:`erank_from_singular_values`.
        method: see :func:`singular_values`.

    Returns:
        ``(...)`` tensor.
    """
    s = singular_values(x, center_rows=center_rows, method=method)
    r = erank_from_singular_values(s, eps=eps)
    if normalize:
        r = r / min(x.shape[-2], x.shape[-1])
    return r


def centered_nuclear_norms(rows: Tensor, counts: Tensor) -> Tensor:
    """Nuclear norms of padded point sets after centring each on its own mean.

    Args:
        rows: ``(c, m, d)``; set ``i`` is ``rows[i, :counts[i]]``, the remaining rows are
            padding and ignored whatever their values.
        counts: ``(c,)`` number of points of each set (>= 1).

    Returns:
        ``(c,)`` nuclear norms ``‖C_i - mean(C_i)‖_*``, from the Gram spectrum of the
        centred sets, centred and decomposed in float64 (with gradient: in the input's
        precision, float32 at least; see the module docstring). With gradient:
        ``∂‖HC‖_*/∂C = U Vᵀ`` of the centred set, whose columns ``U`` are orthogonal to
        the constant vector, so the centring adds nothing to it and padding rows get 0.
    """
    if rows.requires_grad and torch.is_grad_enabled():
        return _CentredNuclearNorms.apply(rows, counts)
    return _centred_spectrum(rows, counts, vectors=False)[1].sum(-1)


def centered_nuclear_norms_stacks(stacks: Iterable[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """:func:`centered_nuclear_norms` of several padded stacks ``[(rows, counts)]``, without
    gradient; their eigenvalues are computed in one pass (:func:`eigvalsh_stacks`).

    ``rows`` may be an iterator's items: each stack is reduced to its Gram matrices before
    the next is read, so at most one stack of rows is held at a time. The stacks are buffers
    of the caller's: each is centred in place.
    """
    grams, sizes = [], []
    for rows, counts in stacks:
        centred = _centred(rows, counts, torch.float64, in_place=True)
        grams.append(_gram(centred)[0])
        sizes.append(max(rows.shape[-2], rows.shape[-1]))
        del centred
    eigs = eigvalsh_stacks(grams)
    return [_singular_from_eigenvalues(e, size).sum(-1) for e, size in zip(eigs, sizes, strict=True)]


def _centred(rows: Tensor, counts: Tensor, dtype: torch.dtype, in_place: bool = False) -> Tensor:
    """Padded sets ``rows`` (c, m, d) in ``dtype``, each centred on its own mean; padding rows 0.

    A copy, unless ``in_place`` and ``rows`` already has ``dtype``: then ``rows`` itself (a
    buffer of the caller's) is overwritten.
    """
    c, m, _ = rows.shape
    xd = rows.detach().to(dtype)
    valid = (torch.arange(m, device=rows.device).unsqueeze(0) < counts.unsqueeze(1)).to(dtype)  # (c, m)
    mean = (valid.unsqueeze(1) @ xd) / counts.to(dtype).view(c, 1, 1)  # (c, 1, d)
    centred = xd.sub_(mean) if in_place else xd - mean
    return centred.mul_(valid.unsqueeze(-1))  # padding rows become 0: no effect on σ


def _centred_spectrum(
    rows: Tensor, counts: Tensor, vectors: bool, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor, Tensor | None, bool]:
    """Centred copy of padded sets in ``dtype`` (padding rows 0) and its Gram spectrum."""
    centred = _centred(rows, counts, dtype)
    sv, vec, left = _gram_spectrum(centred, vectors, dtype)
    return centred, sv, vec, left


class _CentredNuclearNorms(torch.autograd.Function):
    """``‖C_i - mean(C_i)‖_*`` of padded sets with the gradient ``U Vᵀ`` (see
    :func:`centered_nuclear_norms`); no ``1 / (σᵢ - σⱼ)``, finite for collapsed sets."""

    @staticmethod
    def forward(ctx: Any, rows: Tensor, counts: Tensor) -> Tensor:
        centred, sv, vec, left = _centred_spectrum(rows, counts, vectors=True, dtype=_grad_precision(rows))
        ctx.save_for_backward(centred.to(rows.dtype), vec, sv)
        ctx.left = left
        return sv.sum(-1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        centred, vec, sv = ctx.saved_tensors
        return _singular_value_grad(centred, vec, sv, ctx.left, grad), None
