"""Spectral helpers: singular values, nuclear norm and effective rank, batched.

Everything in dsekit that needs a spectrum goes through this module.

Two paths compute singular values of a batch of matrices ``x`` of shape ``(..., m, n)``:

* ``"gram"`` (the default, estimator and regulariser alike): eigenvalues of the smaller
  Gram matrix (``x xᵀ`` when ``m <= n``, else ``xᵀ x``), formed and decomposed in float64
  so that small singular values keep their precision; ``σ = sqrt(max(λ, 0))``. This is
  several times faster than an SVD on CPU for the tall/wide matrices DSE uses. Its
  gradient ``W diag(g/σ) Wᵀ x`` reuses the eigenvectors and stays finite for repeated or
  vanishing singular values (see :class:`_GramSingularValues`).
* ``"svd"``: ``torch.linalg.svdvals`` (reference path, used in tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
    """Eigenvalues (ascending) and optionally eigenvectors of a batch ``(..., m, m)``.

    On CPU a batched eigen-decomposition is a loop of small LAPACK calls whose own OpenMP
    threading gains nothing (and, on busy cores, spinning threads make it many times
    slower). Instead the batch is split across as many worker threads as torch's
    intra-op setting allows, each running single-threaded LAPACK on its share.
    """

    def decompose(g: Tensor) -> tuple[Tensor, Tensor | None]:
        if vectors:
            return torch.linalg.eigh(g)
        return torch.linalg.eigvalsh(g), None

    if gram.device.type != "cpu":
        return decompose(gram)
    shape = gram.shape
    flat = gram.reshape(-1, shape[-2], shape[-1])
    with _single_intra_op_thread() as threads:
        workers = min(threads, flat.shape[0])
        if workers <= 1:
            eig, vec = decompose(flat)
        else:
            # Workers are created inside the single-thread block, so each initialises
            # torch's per-thread state with one intra-op thread.
            with ThreadPoolExecutor(max_workers=workers) as pool:
                parts = list(pool.map(decompose, flat.tensor_split(workers)))
            eig = torch.cat([e for e, _ in parts])
            vec = torch.cat([v for _, v in parts]) if vectors else None
    eig = eig.reshape(*shape[:-1])
    return eig, (vec.reshape(shape) if vec is not None else None)


def _gram_spectrum(x: Tensor, vectors: bool) -> tuple[Tensor, Tensor | None, bool]:
    """Eigen-decomposition of the smaller float64 Gram matrix of ``x`` (..., m, n).

    Returns ascending singular values ``σ``, the eigenvectors (or None) and whether the Gram
    matrix is ``x xᵀ`` (``m <= n``). Eigenvalues at or below the rounding level of the
    decomposition (``max(m, n) · eps64 · λ_max``, as ``torch.linalg.matrix_rank``) are set
    to 0: their square roots would otherwise be ``sqrt(eps)``-sized noise, not spectrum.
    """
    x64 = x.detach().to(torch.float64)
    m, n = x64.shape[-2], x64.shape[-1]
    left = m <= n
    gram = x64 @ x64.transpose(-1, -2) if left else x64.transpose(-1, -2) @ x64
    eig, vec = _batched_eigh(gram, vectors)
    floor = max(m, n) * torch.finfo(torch.float64).eps * eig[..., -1:].clamp_min(0)
    sv = torch.where(eig > floor, eig, torch.zeros_like(eig)).sqrt()
    return sv, vec, left


class _GramSingularValues(torch.autograd.Function):
    """Singular values from the float64 eigen-decomposition of the smaller Gram matrix.

    Forward: ``G = x xᵀ`` (``m <= n``) or ``xᵀ x``, ``G = W Λ Wᵀ``, ``σ = sqrt(Λ)``.
    Backward: ``dσᵢ/dx = uᵢ vᵢᵀ = uᵢ uᵢᵀ x / σᵢ``, so for an upstream gradient ``g``
    ``∂/∂x = W diag(g / σ) Wᵀ x`` (or ``x W diag(g / σ) Wᵀ``). Zero singular values
    contribute nothing (the minimum-norm subgradient), so collapsed or rank-deficient
    inputs give finite gradients; unlike the eigen-decomposition's own backward, no
    ``1 / (λᵢ - λⱼ)`` appears, so repeated singular values are safe too.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        sv, vec, left = _gram_spectrum(x, vectors=True)
        ctx.save_for_backward(x, vec, sv)
        ctx.left = left
        return sv.flip(-1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        x, vec, sv = ctx.saved_tensors
        g = grad.to(torch.float64).flip(-1)  # ascending, like sv
        keep = sv > 0
        scale = torch.where(keep, g / torch.where(keep, sv, torch.ones_like(sv)), torch.zeros_like(sv))
        proj = (vec * scale.unsqueeze(-2)) @ vec.transpose(-1, -2)  # W diag(g/σ) Wᵀ
        x64 = x.to(torch.float64)
        gx = proj @ x64 if ctx.left else x64 @ proj
        return gx.to(x.dtype)


def _gram_singular_values(x: Tensor) -> Tensor:
    """Singular values (descending, float64); differentiable through :class:`_GramSingularValues`."""
    if x.requires_grad and torch.is_grad_enabled():
        return _GramSingularValues.apply(x)
    return _gram_spectrum(x, vectors=False)[0].flip(-1)


def singular_values(x: Tensor, *, center_rows: bool = False, method: str = "auto") -> Tensor:
    """Singular values, descending.

    Args:
        x: ``(..., m, n)`` float tensor.
        center_rows: subtract the mean row of each matrix first.
        method: ``"gram"`` (float64 eigenvalues of the smaller Gram matrix, with the
            gradient of :class:`_GramSingularValues`), ``"svd"`` (``torch.linalg.svdvals``)
            or ``"auto"`` (``"gram"``).

    Returns:
        ``(..., min(m, n))`` tensor; float64 for ``"gram"``, ``x.dtype`` for ``"svd"``.
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
        ``(c,)`` nuclear norms ``‖C_i - mean(C_i)‖_*`` (see :func:`singular_values` for the
        dtype and the gradient path).
    """
    c, m, d = rows.shape
    valid = (torch.arange(m, device=rows.device).unsqueeze(0) < counts.unsqueeze(1)).to(rows.dtype)  # (c, m)
    mean = (valid.unsqueeze(1) @ rows) / counts.to(rows.dtype).view(c, 1, 1)  # (c, 1, d)
    centred = (rows - mean) * valid.unsqueeze(-1)  # padding rows become 0: no effect on σ
    return singular_values(centred).sum(-1)
