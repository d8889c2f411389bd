import numpy as np
import pytest
import torch

from dsekit.metrics.kmeans import kmeans
from dsekit.synthetic import clustered_features


def _blobs(P=4, k=5, per=30, d=8, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(P, k, d, generator=g) * 3
    truth = torch.arange(k).repeat_interleave(per).expand(P, -1)
    x = centres.gather(1, truth.unsqueeze(-1).expand(-1, -1, d)) + spread * torch.randn(P, k * per, d, generator=g)
    perm = torch.randperm(k * per, generator=g)
    return x[:, perm], truth[:, perm]


def _same_partition(a, b):
    # a relabelling of one another
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_recovers_separated_blobs_in_every_problem():
    x, truth = _blobs()
    res = kmeans(x, 5, seed=3)
    assert res.centroids.shape == (4, 5, 8) and res.labels.shape == (4, 150) and res.inertia.shape == (4,)
    for p in range(4):
        assert _same_partition(res.labels[p], truth[p])


def test_labels_are_assignment_to_returned_centroids():
    x = torch.randn(3, 200, 6, generator=torch.Generator().manual_seed(0))
    res = kmeans(x, 7, max_iter=3)
    d = torch.cdist(x, res.centroids)
    assert torch.equal(d.argmin(-1), res.labels)
    inertia = d.pow(2).min(-1).values.sum(-1)
    torch.testing.assert_close(res.inertia, inertia, rtol=1e-4, atol=1e-4)


def test_batched_equals_one_by_one_solution_quality():
    x, _ = _blobs(P=3, k=4, per=25, d=5, spread=0.2, seed=1)
    batched = kmeans(x, 4, seed=0)
    for p in range(3):
        single = kmeans(x[p : p + 1], 4, seed=0)
        assert single.inertia.item() == pytest.approx(batched.inertia[p].item(), rel=1e-4)


def test_seed_reproducible_and_private(rng_state_guard):
    x = torch.randn(2, 100, 4, generator=torch.Generator().manual_seed(5))
    a = kmeans(x, 6, seed=11)
    b = kmeans(x, 6, seed=11)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)


def test_does_not_reseed_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    kmeans(torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(0)), 4, seed=0)
    assert torch.equal(torch.rand(5), expected)


def test_several_inits_never_worse():
    x = clustered_features(4, 196, 32, classes=16, classes_per_image=4, noise=0.5, seed=2).reshape(1, -1, 32)
    one = kmeans(x, 16, n_init=1, seed=0).inertia
    many = kmeans(x, 16, n_init=4, seed=0).inertia
    assert many.item() <= one.item() + 1e-6


def test_d2_seeding_beats_uniform_merge_rate():
    # Many tight, equal clusters: with D^2 seeding + greedy trials, k-means finds all of them.
    x, truth = _blobs(P=20, k=12, per=10, d=16, spread=0.01, seed=4)
    res = kmeans(x, 12, seed=0)
    found = sum(_same_partition(res.labels[p], truth[p]) for p in range(20))
    assert found >= 19


def test_collapsed_points_are_finite():
    x = torch.ones(2, 30, 5)
    res = kmeans(x, 4, seed=0)
    assert torch.isfinite(res.centroids).all() and torch.isfinite(res.inertia).all()
    assert res.inertia.abs().max().item() == 0.0


def test_empty_cluster_is_reseeded():
    # 3 distinct points, k = 3, many duplicates: every cluster must end non-empty
    base = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = base.repeat_interleave(torch.tensor([50, 1, 1]), dim=0).unsqueeze(0)
    res = kmeans(x, 3, seed=0)
    assert torch.bincount(res.labels[0], minlength=3).min().item() >= 1
    assert res.inertia.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "x,k,match",
    [
        (torch.randn(5, 4), 2, "P, n, d"),
        (torch.randn(1, 3, 4), 4, "cannot form 4 clusters"),
        (torch.randint(0, 5, (1, 10, 2)), 2, "floating-point"),
        (torch.randn(1, 10, 2), 0, "positive"),
    ],
)
def test_errors(x, k, match):
    with pytest.raises(ValueError, match=match):
        kmeans(x, k)


def test_numpy_like_dtype_float64():
    x, truth = _blobs(P=2, k=3, per=20, d=4, seed=9)
    res = kmeans(x.double(), 3, seed=0)
    assert res.centroids.dtype == torch.float64
    assert all(_same_partition(res.labels[p], truth[p]) for p in range(2))
    assert isinstance(np.asarray(res.labels), np.ndarray)


def test_more_seeding_trials_find_small_clusters_more_often():
    # 8 clusters per problem, sizes 2..40 points: one D² draw per centre often lands a second
    # centre in a big cluster and leaves a small one uncovered; 16 candidates rarely do.
    g = torch.Generator().manual_seed(11)
    P, k, d = 40, 8, 16
    sizes = torch.tensor([40, 40, 30, 20, 10, 5, 3, 2])
    centres = torch.randn(P, k, d, generator=g) * 6
    truth = torch.arange(k).repeat_interleave(sizes).expand(P, -1)
    x = centres.gather(1, truth.unsqueeze(-1).expand(-1, -1, d)) + torch.randn(P, len(truth[0]), d, generator=g)

    def found(trials):
        res = kmeans(x, k, seed=0, n_local_trials=trials)
        return sum(_same_partition(res.labels[p], truth[p]) for p in range(P))

    default = found(None)  # 2 + ln 8 = 4 candidates
    assert found(16) >= P - 1
    assert found(16) > default > found(1)


def test_invalid_seeding_trials():
    with pytest.raises(ValueError, match="n_local_trials"):
        kmeans(torch.randn(1, 10, 2), 2, n_local_trials=0)


def test_each_problem_stops_when_it_converges_whatever_the_batch():
    """A problem's Lloyd iterations and result do not depend on slower problems in its batch."""
    import importlib

    km = importlib.import_module("dsekit.metrics.kmeans")
    easy, _ = _blobs(P=1, k=4, per=40, d=6, spread=0.01, seed=1)
    g = torch.Generator().manual_seed(2)
    hard = torch.randn(3, 160, 6, generator=g)  # no structure: many iterations
    x = torch.cat([easy, hard])
    x_sq = x.pow(2).sum(-1)
    start = x[:, :4].unsqueeze(1).clone()  # (P, R=1, k, d): the first points as centres
    threshold = torch.full((4, 1), 1e-6)
    c_all, l_all, d_all, it_all = km._lloyd(x, x_sq, start.clone(), threshold, 50)
    c_one, l_one, d_one, it_one = km._lloyd(x[:1], x_sq[:1], start[:1].clone(), threshold[:1], 50)
    assert it_all[0] == it_one[0] < it_all[1:].max()  # the easy problem stopped first
    torch.testing.assert_close(c_all[:1], c_one)
    assert torch.equal(l_all[:1], l_one)
    # every problem ends on the assignment to its own returned centres
    for p in range(4):
        d2 = torch.cdist(x[p], c_all[p, 0]).square()
        assert torch.equal(d2.argmin(-1), l_all[p, 0])


def test_kmeans_reports_iterations_per_problem():
    x, _ = _blobs(P=3)
    res = kmeans(x, 5, seed=0, max_iter=7)
    assert res.iterations.shape == (3,) and int(res.iterations.max()) == res.n_iter <= 7
    assert bool((res.iterations >= 1).all())


def test_cpu_blocks_of_problems_give_the_same_result(monkeypatch):
    """Lloyd runs over cache-sized blocks of problems on CPU; any block size gives the same answer."""
    import importlib

    km = importlib.import_module("dsekit.metrics.kmeans")
    x = torch.randn(7, 90, 12, generator=torch.Generator().manual_seed(5))
    whole = kmeans(x, 4, seed=1, n_init=2)
    monkeypatch.setattr(km, "_LLOYD_BLOCK_BYTES", 1)  # one problem per block
    assert km.lloyd_block(x) == 1
    one = kmeans(x, 4, seed=1, n_init=2)
    assert torch.equal(whole.labels, one.labels) and torch.equal(whole.iterations, one.iterations)
    torch.testing.assert_close(whole.centroids, one.centroids, rtol=1e-5, atol=1e-6)
