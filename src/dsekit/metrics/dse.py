"""DSE, the Dense representation Structure Estimator, on batches of dense features.

For features ``Z`` of shape ``(B, N, d)`` (``B`` images, ``N`` patches, ``d`` channels)::

    DSE_raw = M_inter + M_dim - (M_intra_batch + M_intra_image) / 2

* ``s``: mean distance of the (optionally L2-normalised) patches to their mean.
* ``r(C) = ‖C - mean(C)‖_* / sqrt(max(n - 1, d))``: radius of a cluster of ``n >= 2`` points.
* ``M_intra_image``: per image, k-means with ``local_clusters``; mean ``r`` over the
  image's clusters; mean over images; ``/ s``.
* ``M_intra_batch``: per group of ``images_per_group`` consecutive images, k-means with
  ``global_clusters`` on the group's patches; mean ``r`` over every cluster of every
  group; ``/ s``.
* ``M_inter``: per group, mean over patches of the Euclidean distance to the nearest
  centroid other than the patch's own; mean over groups; ``/ s``.
* ``M_dim``: patches are permuted at random within each image; for each position the
  ``B × d`` matrix of one patch per image gets its effective rank ``/ min(B, d)``; mean
  over positions.

Degenerate inputs: when the patches have (numerically) no spread, ``s ≈ 0``, there is no
cluster structure to measure; the three cluster terms are then defined as 0 and DSE
reduces to ``M_dim``, which is ``1 / min(B, d)`` for a fully collapsed representation,
the lowest value DSE takes. Such results carry ``degenerate=True``.

The term functions are differentiable (used by the regulariser); :func:`dse` and
:class:`DSEAccumulator` evaluate them without gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .kmeans import kmeans, make_generator, pairwise_sq_dists
from .settings import KMEANS_SEEDING_TRIALS, DSESettings  # noqa: F401 - DSESettings is still importable from here
from .spectra import centered_nuclear_norms, centered_nuclear_norms_stacks, effective_rank

__all__ = [
    "TERMS",
    "DSESettings",
    "separability",
    "raw_dse",
    "calibrated_dse",
    "DSEResult",
    "DSETerms",
    "dse",
    "dse_from_labels",
    "dse_terms",
    "DSEAccumulator",
    "as_features",
    "cluster_radii",
    "ClusterAssignments",
    "cluster_assignments",
]

TERMS = ("inter_class_distance", "intra_class_image", "intra_class_batch", "effective_dimensionality", "dse_raw")

# Spread below this fraction of the RMS patch norm counts as a collapsed representation.
_DEGENERATE_RTOL = 1e-6
# Elements per chunk when gathering padded clusters / shuffled positions / centred images: 16 MiB
# of float32 bounds memory and stays below the C allocator's mapping threshold (32 MiB), so
# chunks reuse freed memory instead of faulting in fresh pages on every call.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class DSEResult:
    """The five DSE terms of one or more batches, and the settings that produced them."""

    inter_class_distance: float
    intra_class_image: float
    intra_class_batch: float
    effective_dimensionality: float
    dse_raw: float
    num_images: int = 0
    num_batches: int = 1
    degenerate: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        """The five terms by name (the keys of :data:`TERMS`)."""
        return {name: getattr(self, name) for name in TERMS}

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-serialisable."""
        return asdict(self)


@dataclass
class DSETerms:
    """Differentiable DSE terms of one batch (0-d tensors)."""

    inter_class_distance: Tensor
    intra_class_image: Tensor
    intra_class_batch: Tensor
    effective_dimensionality: Tensor
    scale: Tensor
    degenerate: bool

    def dse(self, lam: float = 1.0) -> Tensor:
        """``S + lam · M_dim`` (``lam = 1``: the raw per-batch score)."""
        s = separability(self.inter_class_distance, self.intra_class_image, self.intra_class_batch)
        return s + lam * self.effective_dimensionality


def separability(inter: Any, intra_image: Any, intra_batch: Any) -> Any:
    """``S = M_inter − (M_intra_batch + M_intra_image) / 2`` (floats, arrays or tensors)."""
    return inter - (intra_batch + intra_image) / 2


def raw_dse(inter: Any, intra_image: Any, intra_batch: Any, dim: Any) -> Any:
    """``DSE_raw = S + M_dim`` (floats, arrays or tensors)."""
    return inter + dim - (intra_batch + intra_image) / 2


def calibrated_dse(terms: Mapping[str, float], lam: float | None) -> float:
    """``S + λ · M_dim`` of one set of terms (``λ = None``: the raw score ``S + M_dim``)."""
    s = separability(terms["inter_class_distance"], terms["intra_class_image"], terms["intra_class_batch"])
    return float(s + (1.0 if lam is None else lam) * terms["effective_dimensionality"])


# --------------------------------------------------------------------------- validation


def as_features(features: Any, name: str = "features") -> Tensor:
    """Check and convert a ``(B, N, d)`` float array (numpy or torch) to a tensor.

    Float64 (and wider numpy floats, e.g. float128) become float64, other float types float32;
    big-endian arrays are accepted. Raises ``ValueError`` naming ``name`` for the wrong rank,
    empty arrays, non-float dtypes and NaN/Inf values (also values beyond float64's range).

    DSE does not change when all features are multiplied by one constant, so features whose
    magnitude would overflow (or underflow) float arithmetic in the squared distances and Gram
    matrices — largest ``|x|`` above ``2**40`` or below ``2**-40`` — are divided by a power of
    two that brings it near 1: an exact rescaling, so that their structure is measured instead
    of overflowing into a false "collapsed" or NaN.
    """
    if isinstance(features, np.ndarray):
        if not np.issubdtype(features.dtype, np.floating):
            raise ValueError(f"{name}: expected floating-point values, got dtype {features.dtype}")
        if not features.dtype.isnative:
            features = features.astype(features.dtype.newbyteorder("="))
        if features.dtype.itemsize > 8:  # float128 / longdouble: float64 holds what DSE needs
            with np.errstate(over="ignore"):
                wide = features.astype(np.float64)
            if not np.isfinite(wide).all() and np.isfinite(features).all():
                raise ValueError(f"{name}: values beyond the float64 range ({features.dtype}); rescale them")
            features = wide
        features = torch.from_numpy(np.ascontiguousarray(features))
    if not isinstance(features, Tensor):
        raise ValueError(f"{name}: expected a numpy array or torch tensor, got {type(features).__name__}")
    if features.ndim != 3:
        raise ValueError(
            f"{name}: expected shape (B, N, d) = (images, patches, channels), got shape {tuple(features.shape)}"
        )
    if min(features.shape) == 0:
        raise ValueError(f"{name}: expected a non-empty (B, N, d) array, got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"{name}: expected floating-point values, got dtype {features.dtype}")
    if features.dtype != torch.float64:
        features = features.float()
    peak = float(torch.linalg.vector_norm(features.detach(), ord=math.inf))  # one pass; NaN or Inf if any is
    if not math.isfinite(peak):
        bad = int((~torch.isfinite(features)).sum())
        raise ValueError(f"{name}: contains {bad} non-finite values (NaN or Inf)")
    if peak > 2.0**40 or 0.0 < peak < 2.0**-40:
        features = features * 2.0 ** -math.floor(math.log2(peak))  # exact: a power of two
    return features


def _check_labels(labels: Any, name: str, shape: tuple[int, int], k: int, device: torch.device) -> Tensor:
    if isinstance(labels, Tensor) and labels.dtype in (torch.uint16, torch.uint32, torch.uint64):
        labels = labels.cpu().numpy()  # torch has no reductions for these: check them in numpy
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "iu":
            raise ValueError(f"{name}: expected integer cluster ids, got dtype {labels.dtype}")
        if tuple(labels.shape) == shape and labels.size and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"{name}: expected values in [0, {k}), got values in [{labels.min()}, {labels.max()}]")
        labels = torch.from_numpy(labels.astype(np.int64))  # any width, sign or byte order
    if not isinstance(labels, Tensor):
        raise ValueError(f"{name}: expected an integer array of shape {shape}, got {type(labels).__name__}")
    if tuple(labels.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape} (images, patches), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer cluster ids, got dtype {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"{name}: expected values in [0, {k}), got values in [{lo}, {hi}]")
    return labels.to(device=device, dtype=torch.long)


# --------------------------------------------------------------------------- terms


def _groups(B: int, size: int) -> list[tuple[int, int, int]]:
    """Blocks of equal-size consecutive groups: [(start, group_count, group_size)]; the groups hold
    ``size`` images, a last one the remainder."""
    full = B // size
    blocks = [(0, full, size)] if full else []
    if B % size:
        blocks.append((full * size, 1, B % size))
    return blocks


def _size_buckets(sizes: list[int], d: int) -> list[tuple[int, int, int]]:
    """Split ascending ``sizes`` into runs padded to a common size: [(start, stop, pad)].

    Each run pads by at most ~12 % (eigen-decomposition cost grows with the cube of the
    padded size) and holds at most ``_CHUNK_ELEMENTS`` gathered values.
    """
    runs, start = [], 0
    while start < len(sizes):
        step = max(8, sizes[start] // 8)
        pad = -(-sizes[start] // step) * step
        stop = start
        while stop < len(sizes) and sizes[stop] <= pad and (stop + 1 - start) * pad * d <= _CHUNK_ELEMENTS:
            stop += 1
        stop = max(stop, start + 1)
        runs.append((start, stop, max(pad, sizes[stop - 1])))
        start = stop
    return runs


def cluster_radii(points: Tensor, partitions: list[tuple[Tensor, int, int]]) -> list[tuple[Tensor, Tensor]]:
    """Radius ``‖C - mean(C)‖_* / sqrt(max(n - 1, d))`` of every cluster of several partitions.

    All clusters of all partitions are sorted by size and decomposed together in size
    buckets, each padded to a common size (see :func:`_size_buckets`). With gradient, every
    bucket's points are gathered in one indexing operation, so the backward pass writes
    into one gradient buffer.

    Args:
        points: (M, d) points.
        partitions: ``(labels (P, n), k, first)``: ``P`` problems, problem ``p`` holding
            ``points[first + p·n : first + (p + 1)·n]``, labelled in ``[0, k)``.

    Returns:
        per partition, radii (P, k) (0 where undefined) and valid (P, k), True for
        clusters of >= 2 points.
    """
    M, d = points.shape
    counts_all, order_all, shapes = [], [], []
    for labels, k, first in partitions:
        P, n = labels.shape
        flat_ids = (labels + k * torch.arange(P, device=points.device).unsqueeze(1)).reshape(-1)
        counts_all.append(torch.bincount(flat_ids, minlength=P * k))
        order_all.append(torch.argsort(flat_ids, stable=True) + first)  # members, cluster by cluster
        shapes.append((P, k))
    counts, order = torch.cat(counts_all), torch.cat(order_all)
    starts = counts.cumsum(0) - counts
    grad = points.requires_grad and torch.is_grad_enabled()

    valid = counts >= 2
    ids = torch.nonzero(valid).squeeze(1)
    ids = ids[torch.argsort(counts[ids], stable=True)]
    buckets = _size_buckets(counts[ids].tolist(), d)
    last = order.numel() - 1
    index = [
        order[(starts[ids[lo:hi]].unsqueeze(1) + torch.arange(m, device=points.device)).clamp_max(last)]
        for lo, hi, m in buckets
    ]  # (c, m) point indices per bucket; rows past a cluster's count are padding
    sizes_of = [counts[ids[lo:hi]] for lo, hi, _ in buckets]
    if grad:
        flat = points.index_select(0, torch.cat([i.reshape(-1) for i in index]))  # backward: one index_add_
        rows = [r.reshape(*i.shape, d) for r, i in zip(flat.split([i.numel() for i in index]), index, strict=True)]
        nucs = [centered_nuclear_norms(r, c) for r, c in zip(rows, sizes_of, strict=True)]
    else:  # one bucket's rows at a time (bounded memory), all eigenvalues in one pass
        nucs = centered_nuclear_norms_stacks((points[i], c) for i, c in zip(index, sizes_of, strict=True))
    values = [nuc / torch.sqrt(torch.clamp(c - 1, min=d).to(nuc.dtype)) for nuc, c in zip(nucs, sizes_of, strict=True)]
    dtype = points.dtype if grad else torch.float64
    radii = points.new_zeros(counts.numel(), dtype=dtype)
    if values:
        radii = radii.index_put((ids,), torch.cat(values).to(dtype))
    sizes = [P * k for P, k in shapes]
    return [
        (r.reshape(P, k), v.reshape(P, k))
        for r, v, (P, k) in zip(radii.split(sizes), valid.split(sizes), shapes, strict=True)
    ]


def _member_means(x: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Centroids as member means: (P, n, d), (P, n) -> centroids (P, k, d), counts (P, k)."""
    onehot = F.one_hot(labels, k).to(x.dtype)  # (P, n, k)
    counts = onehot.sum(1)
    sums = onehot.transpose(1, 2) @ x
    return sums / counts.clamp_min(1).unsqueeze(-1), counts


def _inter_distance(x: Tensor, labels: Tensor, centroids: Tensor, present: Tensor) -> Tensor:
    """Mean distance of each point to the nearest other centroid: -> (P,)."""
    if x.requires_grad and torch.is_grad_enabled():
        d = torch.cdist(x, centroids)  # (P, n, k), a finite gradient at distance 0
    else:
        d = pairwise_sq_dists(x, centroids).sqrt_()
    excluded = F.one_hot(labels, centroids.shape[1]).bool() | ~present.unsqueeze(1)
    d = d.masked_fill(excluded, float("inf"))
    nearest = d.min(-1).values
    nearest = torch.where(torch.isfinite(nearest), nearest, torch.zeros_like(nearest))
    return nearest.mean(-1)


def effective_dimensionality(z: Tensor, generator: torch.Generator) -> Tensor:
    """``M_dim``: mean normalised effective rank of ``B × d`` one-patch-per-image matrices.

    Args:
        z: (B, N, d) features; generator: draws the per-image permutation of patches.
    """
    B, N, d = z.shape
    perm = torch.rand(B, N, generator=generator, device=z.device).argsort(1)
    # flat point index, position-major: row j·B + b is patch perm[b, j] of image b
    flat = (perm + N * torch.arange(B, device=z.device).unsqueeze(1)).t().reshape(-1)
    points = z.reshape(B * N, d)
    step = max(1, _CHUNK_ELEMENTS // (B * d))
    values = []
    for lo in range(0, N, step):
        idx = flat[lo * B : (lo + step) * B]
        cols = points.index_select(0, idx).reshape(-1, B, d)  # (c, B, d)
        values.append(effective_rank(cols, normalize=True))
    return torch.cat(values).mean()


def dse_terms(
    z: Tensor,
    local_labels: Tensor,
    global_blocks: list[tuple[Tensor, Tensor, Tensor]],
    generator: torch.Generator,
) -> DSETerms:
    """DSE terms from (normalised) features and cluster assignments.

    Args:
        z: (B, N, d) features, already normalised if wanted; may require grad.
        local_labels: (B, N) cluster of each patch within its image.
        global_blocks: per block of equal-size groups, ``(labels (P, G·N), centroids
            (P, k, d), present (P, k))`` in image order; the block's points are the
            consecutive images of ``z``.
        generator: for the permutation of ``M_dim``.
    """
    B, N, d = z.shape
    mean = z.mean((0, 1), keepdim=True)
    step = max(1, _CHUNK_ELEMENTS // (N * d))  # images at a time: no full-size centred copy
    scale = torch.cat([torch.linalg.vector_norm(c - mean, dim=-1) for c in z.split(step)]).mean()
    rms = torch.linalg.vector_norm(z.detach(), dim=-1).square().mean().sqrt()
    degenerate = bool(scale <= _DEGENERATE_RTOL * rms) or bool(scale == 0)

    k_local = int(local_labels.max()) + 1
    partitions, views, start = [(local_labels, k_local, 0)], [], 0
    for labels, centroids, present in global_blocks:
        P, n = labels.shape
        partitions.append((labels, centroids.shape[1], start * N))
        views.append((z[start : start + P * n // N].reshape(P, n, d), labels, centroids, present))
        start += P * n // N
    (radii, valid), *global_radii = cluster_radii(z.reshape(B * N, d), partitions)

    per_image = (radii * valid).sum(1) / valid.sum(1).clamp_min(1)
    has = valid.any(1)
    intra_image = per_image[has].mean() if bool(has.any()) else radii.sum() * 0

    r_all = torch.cat([r.reshape(-1) for r, _ in global_radii])
    v_all = torch.cat([v.reshape(-1) for _, v in global_radii])
    intra_batch = r_all[v_all].mean() if bool(v_all.any()) else r_all.sum() * 0
    inter_all = torch.cat([_inter_distance(*view) for view in views]).mean()

    m_dim = effective_dimensionality(z, generator)
    if degenerate:
        zero = scale * 0
        inter_all, intra_image, intra_batch = zero, zero, zero
    else:
        inter_all, intra_image, intra_batch = inter_all / scale, intra_image / scale, intra_batch / scale
    # with gradient the terms come back in the features' dtype, else in float64
    dtype = z.dtype if z.requires_grad and torch.is_grad_enabled() else torch.float64
    return DSETerms(
        inter_class_distance=inter_all.to(dtype),
        intra_class_image=intra_image.to(dtype),
        intra_class_batch=intra_batch.to(dtype),
        effective_dimensionality=m_dim.to(dtype),
        scale=scale,
        degenerate=degenerate,
    )


def _kmeans_blocks(z: Tensor, settings: DSESettings, generator: torch.Generator) -> list[tuple[Tensor, Tensor, Tensor]]:
    B, N, d = z.shape
    k = settings.global_clusters
    blocks = []
    for start, count, size in _groups(B, settings.images_per_group):
        x = z[start : start + count * size].reshape(count, size * N, d)
        res = kmeans(x, k, n_init=settings.n_init, generator=generator, n_local_trials=settings.seeding_trials)
        present = torch.ones(count, k, dtype=torch.bool, device=z.device)
        blocks.append((res.labels, res.centroids, present))
    return blocks


def _label_blocks(
    z: Tensor, global_labels: Tensor, images_per_group: int, k: int
) -> list[tuple[Tensor, Tensor, Tensor]]:
    B, N, d = z.shape
    blocks = []
    for start, count, size in _groups(B, images_per_group):
        x = z[start : start + count * size].reshape(count, size * N, d)
        labels = global_labels[start : start + count * size].reshape(count, size * N)
        centroids, counts = _member_means(x, labels, k)
        blocks.append((labels, centroids, counts > 0))
    return blocks


@dataclass
class ClusterAssignments:
    """Fixed k-means assignments of one batch (no gradient).

    Attributes:
        local_labels: (B, N) cluster of each patch within its image.
        global_blocks: per block of equal-size groups of consecutive images,
            ``(labels (P, G·N), centroids (P, k, d), present (P, k))``, the format of
            :func:`dsekit.metrics.dse.dse_terms`.
    """

    local_labels: Tensor
    global_blocks: list[tuple[Tensor, Tensor, Tensor]]


@torch.no_grad()
def cluster_assignments(
    z: Tensor,
    settings: DSESettings | None = None,
    *,
    local_clusters: int | None = None,
    global_clusters: int | None = None,
    images_per_group: int | None = None,
    n_init: int | None = None,
    generator: torch.Generator,
) -> ClusterAssignments:
    """The estimator's k-means on (already normalised) features ``z`` (B, N, d), no gradient.

    ``settings`` (default :class:`DSESettings`) with any of the other settings overridden.
    Draws from ``generator`` in the estimator's order: per-image k-means first, then the
    per-group k-means.
    """
    st = (settings or DSESettings()).with_overrides(
        local_clusters=local_clusters, global_clusters=global_clusters, images_per_group=images_per_group, n_init=n_init
    )
    local = kmeans(z, st.local_clusters, n_init=st.n_init, generator=generator, n_local_trials=st.seeding_trials).labels
    return ClusterAssignments(local_labels=local, global_blocks=_kmeans_blocks(z, st, generator))


# --------------------------------------------------------------------------- public API


def _result(terms: DSETerms, settings: dict[str, Any], num_images: int) -> DSEResult:
    values = {
        "inter_class_distance": float(terms.inter_class_distance),
        "intra_class_image": float(terms.intra_class_image),
        "intra_class_batch": float(terms.intra_class_batch),
        "effective_dimensionality": float(terms.effective_dimensionality),
    }
    values["dse_raw"] = raw_dse(
        values["inter_class_distance"],
        values["intra_class_image"],
        values["intra_class_batch"],
        values["effective_dimensionality"],
    )
    return DSEResult(**values, num_images=num_images, num_batches=1, degenerate=terms.degenerate, settings=settings)


@torch.no_grad()
def dse(
    features: Any,
    settings: DSESettings | None = None,
    *,
    local_clusters: int | None = None,
    global_clusters: int | None = None,
    images_per_group: int | None = None,
    normalize: bool | None = None,
    n_init: int | None = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
) -> DSEResult:
    """DSE of one batch of dense features.

    Args:
        features: (B, N, d) float array or tensor (CPU or CUDA).
        settings: the estimator's settings (default :class:`DSESettings`, the paper's).
        local_clusters, global_clusters, images_per_group, normalize, n_init: override one
            setting of ``settings`` (see :class:`DSESettings`).
        seed: seed of the private generator for k-means and the ``M_dim`` permutation.
        generator: use this generator instead of one seeded with ``seed``.

    Returns:
        :class:`DSEResult`.
    """
    st = (settings or DSESettings()).with_overrides(
        local_clusters=local_clusters,
        global_clusters=global_clusters,
        images_per_group=images_per_group,
        normalize=normalize,
        n_init=n_init,
    )
    z = as_features(features)
    B, N, d = z.shape
    st.check(B, N)
    if st.normalize:
        z = F.normalize(z, dim=-1)
    g = generator if generator is not None else make_generator(seed, z.device)
    assign = cluster_assignments(z, st, generator=g)
    terms = dse_terms(z, assign.local_labels, assign.global_blocks, g)
    recorded = dict(
        local_clusters=st.local_clusters,
        global_clusters=st.global_clusters,
        images_per_group=st.images_per_group,
        normalize=st.normalize,
        seed=seed,
        n_init=st.n_init,
        assignments="kmeans",
    )
    return _result(terms, recorded, B)


@torch.no_grad()
def dse_from_labels(
    features: Any,
    local_labels: Any,
    global_labels: Any,
    *,
    local_clusters: int | None = None,
    global_clusters: int | None = None,
    images_per_group: int | None = None,
    normalize: bool | None = None,
    seed: int | None = 0,
) -> DSEResult:
    """DSE with given cluster assignments instead of k-means (e.g. ground-truth masks: "oracle" DSE).

    Args:
        features: (B, N, d).
        local_labels: (B, N) integer cluster of each patch within its image, in ``[0, local_clusters)``.
        global_labels: (B, N) integer cluster of each patch within its group of
            ``images_per_group`` consecutive images, in ``[0, global_clusters)``.
        local_clusters, global_clusters: label ranges (default: max label + 1).
        images_per_group, normalize: as in :class:`DSESettings` (default: its defaults).
        seed: seed of the ``M_dim`` permutation.

    A cluster's centroid is the mean of its members; labels without members are ignored.
    """
    st = DSESettings().with_overrides(images_per_group=images_per_group, normalize=normalize)
    images_per_group, normalize = st.images_per_group, st.normalize
    z = as_features(features)
    B, N, d = z.shape
    for name, lab in (("local_labels", local_labels), ("global_labels", global_labels)):
        if not isinstance(lab, (np.ndarray, Tensor)):
            raise ValueError(f"{name}: expected an integer array of shape {(B, N)}, got {type(lab).__name__}")
        if tuple(lab.shape) != (B, N):
            raise ValueError(f"{name}: expected shape {(B, N)} (images, patches), got {tuple(lab.shape)}")
        if lab.size == 0 if isinstance(lab, np.ndarray) else lab.numel() == 0:
            raise ValueError(f"{name}: empty array")
    k_local = int(local_clusters) if local_clusters is not None else int(np.asarray(local_labels).max()) + 1
    k_global = int(global_clusters) if global_clusters is not None else int(np.asarray(global_labels).max()) + 1
    local = _check_labels(local_labels, "local_labels", (B, N), max(k_local, 1), z.device)
    glob = _check_labels(global_labels, "global_labels", (B, N), max(k_global, 1), z.device)
    if images_per_group < 1:
        raise ValueError(f"images_per_group: expected >= 1, got {images_per_group}")
    if normalize:
        z = F.normalize(z, dim=-1)
    g = make_generator(seed, z.device)
    blocks = _label_blocks(z, glob, images_per_group, max(k_global, 1))
    terms = dse_terms(z, local, blocks, g)
    settings = dict(
        local_clusters=k_local,
        global_clusters=k_global,
        images_per_group=images_per_group,
        normalize=normalize,
        seed=seed,
        assignments="labels",
    )
    return _result(terms, settings, B)


class DSEAccumulator:
    """Average per-batch DSE terms over many batches of images.

    Features are buffered and scored ``batch_size`` images at a time (1024 by default, as
    in the paper); the last, possibly smaller, batch is scored by :meth:`compute`. Each
    term of the result is the mean of its per-batch values. One private generator,
    seeded once, serves every batch.

    Example::

        acc = DSEAccumulator(batch_size=256, seed=0)
        for feats in loader:          # (b, N, d) each
            acc.update(feats)
        result = acc.compute()
    """

    def __init__(self, batch_size: int = 1024, *, seed: int | None = 0, **dse_kwargs: Any) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.dse_kwargs = dse_kwargs
        self.reset()

    def reset(self) -> None:
        self._buffer: list[Tensor] = []
        self._buffered = 0
        self._results: list[DSEResult] = []
        self._generator: torch.Generator | None = None

    def _score(self, z: Tensor) -> None:
        if self._generator is None:
            self._generator = make_generator(self.seed, z.device)
        self._results.append(dse(z, generator=self._generator, seed=self.seed, **self.dse_kwargs))

    def update(self, features: Any) -> None:
        """Add a (b, N, d) chunk of features; full batches are scored immediately."""
        z = as_features(features)
        if self._buffer and self._buffer[0].shape[1:] != z.shape[1:]:
            raise ValueError(
                f"features: expected (b, {self._buffer[0].shape[1]}, {self._buffer[0].shape[2]}) like earlier "
                f"updates, got {tuple(z.shape)}"
            )
        self._buffer.append(z)
        self._buffered += z.shape[0]
        while self._buffered >= self.batch_size:
            allz = torch.cat(self._buffer)
            self._score(allz[: self.batch_size])
            rest = allz[self.batch_size :]
            self._buffer = [rest] if rest.shape[0] else []
            self._buffered = rest.shape[0]

    def compute(self) -> DSEResult:
        """Score what is buffered and return the mean of every per-batch term."""
        if self._buffered:
            self._score(torch.cat(self._buffer))
            self._buffer, self._buffered = [], 0
        if not self._results:
            raise ValueError("DSEAccumulator.compute: no features were added (call update first)")
        means = {t: float(np.mean([getattr(r, t) for r in self._results])) for t in TERMS}
        first = self._results[0]
        return DSEResult(
            **means,
            num_images=sum(r.num_images for r in self._results),
            num_batches=len(self._results),
            degenerate=any(r.degenerate for r in self._results),
            settings={**first.settings, "batch_size": self.batch_size},
        )
