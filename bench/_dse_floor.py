"""The floor of one DSE computation on this machine: its unavoidable kernels, timed bare.

DSE of ``(B, N, d)`` features cannot cost less than the dense linear algebra its definition
requires. The floor is that work, each kernel timed alone at its real shape in float32 on the
same input (median of 5 runs after a warm-up), with nothing else around it:

* **k-means** (per image, ``k = 3``; per group of 8 images, ``k = 24``): the distance products
  of the k-means++ seeding (``k − 1`` steps, each against the candidates the seeding draws,
  ``DSESettings.seeding_trials``), the first assignment, and per Lloyd iteration the
  centroid sums and the new assignment — each a batched matrix product (``torch.bmm``),
  Lloyd's over blocks of problems that stay in cache (as dsekit runs them); the seeding's the
  faster of all problems at once (as dsekit runs them) and blocks of problems each running
  all its steps while in cache (up to 1.8× faster on this CPU, though not faster within
  dsekit's seeding, where the other work of each step comes between the products); Lloyd's
  share is scaled by the mean number of iterations the problems needed to converge on this
  input (read from an untimed run of dsekit's k-means);
* **M_inter**: the distances of every patch to every centroid of its group (one product);
* **cluster radii** (``M_intra``): for every cluster of >= 2 patches of both k-means, its Gram
  matrix (``min(m, d)²`` entries) and that matrix's eigenvalues;
* **M_dim**: the ``N`` Gram matrices of the ``B × d`` one-patch-per-image matrices and their
  eigenvalues.

The Gram matrices and their eigenvalues are in float64, the precision the estimator needs (in
float32 the small singular values of real features are lost: README, "Benchmarks"); k-means
runs in float32. The eigenvalues are timed with ``torch.linalg.eigvalsh`` on the actual Gram matrices, grouped
by exact size (no padding), shared out over the CPU threads with dsekit's own dispatcher
(single-threaded LAPACK calls, one pool for all). Normalisation, reductions, sorting, indexing and copies
are left out: the floor is a lower bound, not an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dsekit.metrics.dse import DSESettings
from dsekit.metrics.kmeans import kmeans, lloyd_block, make_generator
from dsekit.metrics.spectra import eigvalsh_stacks

from _common import median_seconds


@dataclass
class Floor:
    """Bare kernel seconds per part of the computation."""

    parts: dict[str, float] = field(default_factory=dict)
    iterations: dict[str, float] = field(default_factory=dict)  #: mean Lloyd iterations per problem

    @property
    def seconds(self) -> float:
        return sum(self.parts.values())


def _kmeans_products(x: torch.Tensor, k: int, trials: int, iterations: float, device: str) -> float:
    """Seconds of k-means' matrix products on ``x`` (P, n, d): seeding, assignments, updates;
    ``iterations``: mean Lloyd iterations per problem. On CPU the Lloyd products are timed
    over dsekit's blocks of problems (``lloyd_block``), which stay in cache."""
    P, n, d = x.shape
    cand = x[:, :trials].transpose(1, 2).contiguous()  # (P, d, trials): candidate centres
    cent = x[:, :k].transpose(1, 2).contiguous()  # (P, d, k)
    onehot = torch.zeros(P, k, n, device=x.device, dtype=x.dtype)
    step = lloyd_block(x)
    blocks = [slice(i, i + step) for i in range(0, P, step)]

    def lloyd_step() -> None:
        for b in blocks:
            for _ in range(2):  # two iterations per block while it is in cache
                torch.bmm(onehot[b], x[b])
                torch.bmm(x[b], cent[b])

    def seeding_in_blocks() -> None:
        for b in blocks:
            for _ in range(k - 1):
                torch.bmm(x[b], cand[b])

    seeding = min(
        median_seconds(lambda: torch.bmm(x, cand), device) * (k - 1),
        median_seconds(seeding_in_blocks, device, repeats=3),
    )
    assign = median_seconds(lambda: torch.bmm(x, cent), device)  # the first assignment
    lloyd = median_seconds(lloyd_step, device) / 2 * iterations
    return seeding + assign + lloyd


def _sets_by_size(points: torch.Tensor, members: list[torch.Tensor]) -> list[torch.Tensor]:
    """The member sets of ``points`` (M, d), stacked by exact size: [(c, m, d)]."""
    by_size: dict[int, list[torch.Tensor]] = {}
    for idx in members:
        by_size.setdefault(idx.numel(), []).append(idx)
    return [points[torch.stack(ids)] for ids in by_size.values()]


def _gram(sets: torch.Tensor) -> torch.Tensor:
    """Gram matrices of the smaller side of (c, m, d) -> (c, r, r), r = min(m, d), in float64
    (no copy when ``sets`` is float64 already)."""
    sets = sets.double()
    return sets @ sets.transpose(1, 2) if sets.shape[1] <= sets.shape[2] else sets.transpose(1, 2) @ sets


def _eig_seconds(grams: list[torch.Tensor]) -> float:
    """Wall time of the eigenvalues of ``grams`` (stacks of equal size), shared out over torch's
    CPU threads as dsekit does (:func:`dsekit.metrics.spectra.eigvalsh_stacks`)."""
    return median_seconds(lambda: eigvalsh_stacks(grams), "cpu")


def _cluster_members(labels: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Point indices (into the flattened problems) of every cluster of >= 2 points; labels (P, n)."""
    members = []
    flat = labels + k * torch.arange(labels.shape[0]).unsqueeze(1)
    order = flat.reshape(-1).argsort(stable=True)
    counts = torch.bincount(flat.reshape(-1), minlength=labels.shape[0] * k)
    for ids in order.split(counts.tolist()):
        if ids.numel() >= 2:
            members.append(ids)
    return members


def dse_floor(features: torch.Tensor, settings: DSESettings | None = None, seed: int = 0) -> Floor:
    """The floor of ``dse(features)`` (``features`` (B, N, d), CPU) on this machine, with torch's
    current number of CPU threads."""
    st = settings or DSESettings()
    device = str(features.device)
    z = F.normalize(features.float(), dim=-1)
    B, N, d = z.shape
    G, kg, kl = st.images_per_group, st.global_clusters, st.local_clusters
    g = make_generator(seed, z.device)
    floor = Floor()

    local = kmeans(z, kl, n_init=st.n_init, generator=g, n_local_trials=st.seeding_trials)
    P = B // G
    x = z[: P * G].reshape(P, G * N, d)
    glob = kmeans(x, kg, n_init=st.n_init, generator=g, n_local_trials=st.seeding_trials)
    floor.iterations = {name: float(r.iterations.float().mean()) for name, r in (("local", local), ("global", glob))}
    floor.parts["k-means"] = _kmeans_products(
        z, kl, st.seeding_trials, floor.iterations["local"], device
    ) + _kmeans_products(x, kg, st.seeding_trials, floor.iterations["global"], device)
    cent_t = glob.centroids.transpose(1, 2).contiguous()
    floor.parts["M_inter"] = median_seconds(lambda: torch.bmm(x, cent_t), device)

    points = z.reshape(B * N, d)
    members = _cluster_members(local.labels, kl) + _cluster_members(glob.labels, kg)
    sets = _sets_by_size(points, members)
    floor.parts["radii: Gram"] = median_seconds(lambda: [_gram(s) for s in sets], device)
    floor.parts["radii: eigenvalues"] = _eig_seconds([_gram(s) for s in sets])

    cols = z.transpose(0, 1).double().contiguous()  # (N, B, d): one patch per image at each position
    floor.parts["M_dim: Gram"] = median_seconds(lambda: _gram(cols), device)
    floor.parts["M_dim: eigenvalues"] = _eig_seconds([_gram(cols)])
    return floor
