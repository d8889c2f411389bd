"""Batched, seeded k-means: one implementation used everywhere in dsekit.

``kmeans(x, k)`` clusters ``P`` independent problems at once: ``x`` has shape
``(P, n, d)`` (e.g. the ``N`` patches of each of ``B`` images, or the ``G·N`` patches of
each group of images) and every step is a batched tensor operation over all problems and
all restarts, on CPU or CUDA.

* Seeding: greedy k-means++ (Arthur & Vassilvitskii 2007; the greedy variant of
  scikit-learn): each new centre is drawn with probability ∝ D² (squared distance to
  the nearest chosen centre), ``2 + ⌊ln k⌋`` candidates are drawn and the one that lowers
  the potential most is kept (``n_local_trials`` sets another number of candidates).
* Lloyd iterations (at most ``max_iter``), each problem until its centroid shift
  ``‖C_new − C_old‖_F`` is at most ``tol`` times its RMS spread (relative, so the result
  does not depend on the scale of the data) or its labels repeat (a fixed point: the next
  update would return the same centroids); converged problems leave the batch, so a batch
  costs the iterations its problems need, not ``P`` times the slowest one's. On CPU the
  iterations run over blocks of problems of at most 16 MiB, which stay in cache.
* Empty clusters are re-seeded with the points farthest from their centroid.
* ``n_init`` restarts run side by side; the one with the lowest inertia wins per problem.
* The returned labels are the assignment to the returned centroids.

All randomness comes from a private ``torch.Generator``: the process-wide RNG is never
touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .settings import check_seed

__all__ = ["KMeansResult", "kmeans", "lloyd_block", "make_generator", "pairwise_sq_dists"]

# Bytes of points per block of problems in the CPU Lloyd iterations: the block stays in the
# last-level cache from one iteration to the next (and a converged problem's removal copies
# at most this much).
_LLOYD_BLOCK_BYTES = 16 << 20


@dataclass
class KMeansResult:
    """Output of :func:`kmeans` for ``P`` problems of ``n`` points in ``d`` dimensions."""

    centroids: Tensor  #: (P, k, d)
    labels: Tensor  #: (P, n) int64, index of the nearest returned centroid
    inertia: Tensor  #: (P,) sum of squared distances of points to their centroid
    n_iter: int  #: Lloyd iterations run (the most any problem needed)
    iterations: Tensor  #: (P,) int64 Lloyd iterations each problem ran


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A private generator on ``device`` seeded with ``seed`` (``None``: fresh entropy)."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(check_seed(seed))
    return g


def pairwise_sq_dists(x: Tensor, c: Tensor, x_sq: Tensor | None = None) -> Tensor:
    """Squared Euclidean distances ``(P, n, d), (P, m, d) -> (P, n, m)``, clamped at 0."""
    if x_sq is None:
        x_sq = _sq_norms(x)
    c_sq = _sq_norms(c)
    d2 = torch.baddbmm(x_sq.unsqueeze(-1) + c_sq.unsqueeze(-2), x, c.transpose(1, 2), alpha=-2.0)
    return d2.clamp_min_(0)


def _sq_norms(x: Tensor) -> Tensor:
    """Squared Euclidean norms over the last dimension (a fused reduction, no temporary)."""
    return torch.linalg.vector_norm(x, dim=-1).square()


def _gather_points(x: Tensor, idx: Tensor) -> Tensor:
    """``x`` (P, n, d), ``idx`` (P, m) -> (P, m, d)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _sample_rows(weights: Tensor, num: int, generator: torch.Generator) -> Tensor:
    """``num`` draws per row ∝ ``weights`` (P, n); all-zero rows are drawn uniformly."""
    total = weights.sum(-1, keepdim=True)
    w = torch.where(total > 0, weights, torch.ones_like(weights))
    return torch.multinomial(w, num, replacement=True, generator=generator)


def _kmeans_plus_plus(
    x: Tensor, x_sq: Tensor, k: int, restarts: int, trials: int, generator: torch.Generator
) -> Tensor:
    """Greedy k-means++ seeding of ``restarts`` independent runs per problem.

    Args:
        x: (P, n, d); x_sq: (P, n) squared norms; trials: candidates drawn per new centre.

    Returns:
        (P, restarts, k, d) initial centres.
    """
    P, n, d = x.shape
    R = restarts
    xt = x.transpose(1, 2)  # (P, d, n): candidate-by-point products come out (P, R·trials, n)
    first = torch.randint(0, n, (P, R), device=x.device, generator=generator)
    centres = [_gather_points(x, first)]  # each (P, R, d)
    closest = pairwise_sq_dists(x, centres[0], x_sq).transpose(1, 2)  # (P, R, n)
    for _ in range(1, k):
        cand = _sample_rows(closest.reshape(P * R, n), trials, generator).reshape(P, R * trials)
        cand_pts = _gather_points(x, cand)  # (P, R*trials, d)
        # ‖c‖² − 2 c·x: the squared distance less ‖x‖², which is the same for every candidate
        shifted = torch.baddbmm(_sq_norms(cand_pts).unsqueeze(-1), cand_pts, xt, alpha=-2.0)
        d2 = shifted.add_(x_sq.unsqueeze(1)).clamp_min_(0).view(P, R, trials, n)
        new_closest = torch.minimum(closest.unsqueeze(2), d2)  # (P, R, trials, n)
        best = new_closest.sum(-1).argmin(-1)  # (P, R)
        closest = new_closest.gather(2, best[:, :, None, None].expand(P, R, 1, n)).squeeze(2)
        pick = cand.reshape(P, R, trials).gather(2, best.unsqueeze(-1)).squeeze(-1)
        centres.append(_gather_points(x, pick))
    return torch.stack(centres, dim=2)


def _assign(x: Tensor, x_sq: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest centre per point and restart: -> labels (P, R, n), squared distance (P, R, n)."""
    P, R, k, d = centres.shape
    d2 = pairwise_sq_dists(x, centres.reshape(P, R * k, d), x_sq)  # (P, n, R*k)
    d2 = d2.reshape(P, -1, R, k).permute(0, 2, 1, 3)  # (P, R, n, k)
    dist, labels = d2.min(-1)
    return labels, dist


def _update(x: Tensor, labels: Tensor, centres: Tensor, dist: Tensor) -> tuple[Tensor, Tensor]:
    """Lloyd update with empty clusters re-seeded at the farthest points -> centres (P, R, k, d)
    and whether a cluster was empty (P, R)."""
    P, R, k, d = centres.shape
    n = x.shape[1]
    offset = (torch.arange(R, device=x.device) * k).view(1, R, 1)
    onehot = torch.zeros(P, n, R * k, device=x.device, dtype=x.dtype)
    onehot.scatter_(2, (labels + offset).transpose(1, 2), 1.0)
    sums = torch.bmm(onehot.transpose(1, 2), x).reshape(P, R, k, d)
    counts = onehot.sum(1).reshape(P, R, k)
    new = sums / counts.clamp_min(1).unsqueeze(-1)
    empty = counts == 0
    if bool(empty.any()):
        far = dist.topk(k, dim=-1).indices  # (P, R, k) farthest points first
        rank = (empty.cumsum(-1) - 1).clamp_min(0)
        pick = far.gather(2, rank).reshape(P, R * k)
        reseed = _gather_points(x, pick).reshape(P, R, k, d)
        new = torch.where(empty.unsqueeze(-1), reseed, new)
    return new, empty.any(-1)


def _lloyd(
    x: Tensor, x_sq: Tensor, centres: Tensor, threshold: Tensor, max_iter: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lloyd iterations from ``centres`` (P, R, k, d); each problem stops once each of its
    restarts has converged (a shift at most ``threshold`` (P, 1), or a fixed point), or after
    ``max_iter``.

    A problem's result is final once it converges. Converged problems are dropped from the
    batch when they are at least a quarter of it, so the batch shrinks with at most
    ``log_{4/3} P`` copies of the points, each smaller than the last.

    Returns centres (P, R, k, d), labels and squared distances (P, R, n) of the final
    assignment, and the iterations each problem ran (P,).
    """
    P = x.shape[0]
    labels, dist = _assign(x, x_sq, centres)
    iterations = torch.zeros(P, dtype=torch.long, device=x.device)
    active = torch.arange(P, device=x.device)  # the batch's problems
    running = torch.ones(P, dtype=torch.bool, device=x.device)  # in the batch and not converged
    xa, xa_sq, ca, la, da, ta = x, x_sq, centres, labels, dist, threshold
    for _ in range(max_iter):
        new, emptied = _update(xa, la, ca, da)
        shift = (new - ca).pow(2).sum((-1, -2)).sqrt()  # (Pa, R)
        ca = new
        previous = la
        la, da = _assign(xa, xa_sq, ca)
        iterations[active[running]] += 1
        # converged: a small shift, or a fixed point (the same labels, no cluster re-seeded),
        # after which the next update would return these very centres
        stable = (la == previous).all(-1) & ~emptied  # (Pa, R)
        done = running & ((shift <= ta) | stable).all(1)  # converged in this iteration
        if bool(done.any()):
            finished = active[done]
            centres[finished], labels[finished], dist[finished] = ca[done], la[done], da[done]
            running &= ~done
        if not bool(running.any()):
            return centres, labels, dist, iterations
        if 4 * int(running.sum()) <= 3 * running.numel():  # a quarter of the batch is done: drop it
            active, xa, xa_sq, ca, la, da, ta = (t[running] for t in (active, xa, xa_sq, ca, la, da, ta))
            running = running[running]
    left = active[running]
    centres[left], labels[left], dist[left] = ca[running], la[running], da[running]
    return centres, labels, dist, iterations


def lloyd_block(x: Tensor) -> int:
    """Problems per block of the Lloyd iterations on ``x`` (P, n, d): all of them on a GPU; on
    CPU as many as fit in 16 MiB (at least one), so that a block stays in cache."""
    P, n, d = x.shape
    return P if x.device.type != "cpu" else max(1, _LLOYD_BLOCK_BYTES // (n * d * x.element_size()))


def _validate(x: Tensor, k: int, n_init: int, max_iter: int) -> None:
    if not isinstance(x, Tensor) or x.ndim != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: expected a (P, n, d) tensor, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point tensor, got {x.dtype}")
    if int(k) < 1:
        raise ValueError(f"k: expected a positive number of clusters, got {k}")
    if x.shape[1] < k:
        raise ValueError(f"k: cannot form {k} clusters from {x.shape[1]} points per problem")
    if x.shape[0] == 0 or x.shape[2] == 0:
        raise ValueError(f"x: expected a non-empty (P, n, d) tensor, got shape {tuple(x.shape)}")
    if n_init < 1 or max_iter < 0:
        raise ValueError(f"n_init must be >= 1 and max_iter >= 0, got {n_init} and {max_iter}")


@torch.no_grad()
def kmeans(
    x: Tensor,
    k: int,
    *,
    n_init: int = 1,
    max_iter: int = 20,
    tol: float = 1e-4,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    n_local_trials: int | None = None,
) -> KMeansResult:
    """Cluster each of ``P`` point sets into ``k`` clusters.

    Args:
        x: (P, n, d) float tensor, ``n >= k``.
        k: number of clusters.
        n_init: restarts per problem (run batched); the lowest inertia is kept.
        max_iter: maximum Lloyd iterations.
        tol: stop when every centroid shift ``‖ΔC‖_F <= tol · RMS spread`` of its problem.
        seed: seed of a private generator (ignored when ``generator`` is given).
        generator: a ``torch.Generator`` on ``x.device`` to draw from instead.
        n_local_trials: candidates drawn per new centre in the greedy seeding (``None``:
            ``2 + ⌊ln k⌋``, scikit-learn's choice); more trials seed closer to a
            farthest-point cover, so small clusters are missed less often.

    Returns:
        :class:`KMeansResult` with centroids (P, k, d), labels (P, n) and inertia (P,).
    """
    _validate(x, k, n_init, max_iter)
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(k)) if k > 1 else 1
    elif n_local_trials < 1:
        raise ValueError(f"n_local_trials: expected >= 1 candidates per centre, got {n_local_trials}")
    if generator is None:
        generator = make_generator(seed, x.device)
    x = x.detach()
    P, n, d = x.shape
    x_sq = _sq_norms(x)
    # RMS distance to the problem's mean: mean ‖x‖² − ‖mean‖² (no centred copy of x)
    spread = (x_sq.mean(1) - _sq_norms(x.mean(1))).clamp_min(0).sqrt()  # (P,)
    threshold = (tol * spread).view(P, 1)

    centres = _kmeans_plus_plus(x, x_sq, k, n_init, n_local_trials, generator)
    # Lloyd has no randomness, so on CPU it runs over blocks of problems that stay in cache
    step = lloyd_block(x)
    parts = [
        _lloyd(x[i : i + step], x_sq[i : i + step], centres[i : i + step], threshold[i : i + step], max_iter)
        for i in range(0, P, step)
    ]
    centres, labels, dist, iterations = (torch.cat(t) for t in zip(*parts, strict=True))
    inertia = dist.sum(-1)  # (P, R)
    best = inertia.argmin(1)  # (P,)
    rows = torch.arange(P, device=x.device)
    return KMeansResult(
        centroids=centres[rows, best],
        labels=labels[rows, best],
        inertia=inertia[rows, best],
        n_iter=int(iterations.max()),
        iterations=iterations,
    )
