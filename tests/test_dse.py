import numpy as np
import pytest
import torch

from dsekit import DSEAccumulator, dse, dse_from_labels
from dsekit.metrics.dse import TERMS
from dsekit.synthetic import clustered_features

KW = dict(local_clusters=3, global_clusters=8, images_per_group=4)


def test_result_fields_and_raw_formula():
    z = clustered_features(8, 49, 32, classes=8, classes_per_image=3, seed=0)
    r = dse(z, **KW)
    d = r.as_dict()
    assert list(d) == list(TERMS)
    assert d["dse_raw"] == pytest.approx(
        d["inter_class_distance"]
        + d["effective_dimensionality"]
        - (d["intra_class_batch"] + d["intra_class_image"]) / 2
    )
    assert r.settings["local_clusters"] == 3 and r.num_images == 8 and not r.degenerate


def test_structure_scores_higher_than_noise():
    structured = clustered_features(16, 49, 32, classes=8, classes_per_image=3, noise=0.2, seed=0)
    noise = torch.randn(16, 49, 32, generator=torch.Generator().manual_seed(0))
    assert dse(structured, **KW).dse_raw > dse(noise, **KW).dse_raw + 0.5


def test_does_not_touch_global_rng(rng_state_guard):
    dse(clustered_features(8, 49, 16, classes=8, seed=1), **KW)


def test_global_rng_draws_after_dse_are_not_repeated():
    torch.manual_seed(0)
    a = torch.rand(3)
    dse(clustered_features(8, 49, 16, classes=8, seed=1), **KW)
    b = torch.rand(3)
    assert not torch.equal(a, b)


def test_collapsed_input_is_finite_and_low():
    z = torch.ones(8, 49, 16)
    r = dse(z, **KW)
    assert r.degenerate
    assert r.inter_class_distance == r.intra_class_image == r.intra_class_batch == 0.0
    assert r.effective_dimensionality == pytest.approx(1 / 8, rel=1e-6)
    assert r.dse_raw == pytest.approx(1 / 8, rel=1e-6)
    healthy = dse(clustered_features(8, 49, 16, classes=8, seed=0), **KW)
    assert r.dse_raw < healthy.dse_raw


@pytest.mark.parametrize("normalize", [True, False])
def test_rank_one_input_is_finite(normalize):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(16, generator=g)
    a = torch.randn(8, 49, 1, generator=g)
    r = dse(a * v, normalize=normalize, **KW)
    assert all(np.isfinite(x) for x in r.as_dict().values())
    assert r.effective_dimensionality == pytest.approx(1 / 8, rel=1e-4)


def test_accumulator_averages_batches():
    z = clustered_features(24, 49, 16, classes=8, seed=2)
    acc = DSEAccumulator(batch_size=8, seed=5, **KW)
    for chunk in z.split(5):
        acc.update(chunk)
    res = acc.compute()
    assert res.num_batches == 3 and res.num_images == 24
    from dsekit.metrics.kmeans import make_generator

    g = make_generator(5)
    per = [dse(z[i : i + 8], generator=g, **KW) for i in (0, 8, 16)]
    for name in TERMS:
        assert getattr(res, name) == pytest.approx(np.mean([getattr(p, name) for p in per]), rel=1e-9)


def test_accumulator_partial_last_batch_and_empty():
    acc = DSEAccumulator(batch_size=8, **KW)
    with pytest.raises(ValueError, match="no features"):
        acc.compute()
    acc.update(clustered_features(12, 49, 16, classes=8, seed=2))
    assert acc.compute().num_batches == 2
    with pytest.raises(ValueError, match="like earlier"):
        acc2 = DSEAccumulator(batch_size=100, **KW)
        acc2.update(torch.randn(4, 49, 16))
        acc2.update(torch.randn(4, 50, 16))


def test_oracle_labels_match_kmeans_on_separated_clusters():
    z, cls = clustered_features(
        8, 49, 32, classes=8, classes_per_image=2, noise=0.02, image_shift=0.0, seed=3, return_labels=True
    )
    local = torch.stack([torch.unique(c, return_inverse=True)[1] for c in cls])
    glob = torch.cat([torch.unique(cls[i : i + 4], return_inverse=True)[1] for i in (0, 4)])
    oracle = dse_from_labels(z, local, glob, local_clusters=2, global_clusters=8, images_per_group=4)
    km = dse(z, local_clusters=2, global_clusters=int(glob.max()) + 1, images_per_group=4)
    assert oracle.settings["assignments"] == "labels"
    assert oracle.intra_class_image == pytest.approx(km.intra_class_image, rel=1e-3)


@pytest.mark.parametrize(
    "features,kw,match",
    [
        (np.zeros((4, 5)), {}, r"shape \(B, N, d\)"),
        (np.zeros((0, 5, 3), dtype=np.float32), {}, "non-empty"),
        (np.ones((4, 49, 8), dtype=np.int64), {}, "floating-point"),
        (np.full((4, 49, 8), np.nan, dtype=np.float32), {}, "non-finite"),
        (np.ones((4, 2, 8), dtype=np.float32), {"local_clusters": 3}, "at least as many patches per image"),
        (np.ones((9, 2, 8), dtype=np.float32), {"local_clusters": 1, "global_clusters": 3}, "patches per group"),
        (np.ones((4, 49, 8), dtype=np.float32), {"global_clusters": 1}, "global_clusters"),
        ("not an array", {}, "numpy array or torch tensor"),
    ],
)
def test_bad_input_errors(features, kw, match):
    with pytest.raises(ValueError, match=match):
        dse(features, **kw)


def test_bad_labels_errors():
    z = np.random.default_rng(0).normal(size=(8, 10, 4)).astype(np.float32)
    ok = np.zeros((8, 10), dtype=np.int64)
    with pytest.raises(ValueError, match="local_labels: expected shape"):
        dse_from_labels(z, ok[:, :5], ok)
    with pytest.raises(ValueError, match=r"global_labels: expected values in \[0, 2\)"):
        dse_from_labels(z, ok, ok + 5, global_clusters=2)
    with pytest.raises(ValueError, match="integer"):
        dse_from_labels(z, ok.astype(np.float32), ok)
    with pytest.raises(ValueError, match="local_labels: expected values"):
        dse_from_labels(z, ok - 1, ok)


@pytest.mark.parametrize("spectrum", ["clustered", "power_law", "few_directions"])
def test_float32_features_get_float64_spectra(spectrum):
    """float32 features give the terms of the same features in float64 (same clusters): the
    spectra are float64 either way (in float32 the Gram spectrum loses every singular value below
    ~0.7 % of the largest, which changed M_dim by up to 24 % on the benchmark's inputs)."""
    from dsekit.metrics.dse import cluster_assignments
    from dsekit.metrics.kmeans import make_generator

    if spectrum == "clustered":
        z = clustered_features(24, 64, 96, classes=12, seed=3)
    elif spectrum == "power_law":  # singular values falling as 1/i
        g = torch.Generator().manual_seed(4)
        u = torch.linalg.qr(torch.randn(24 * 64, 96, generator=g))[0]
        v = torch.linalg.qr(torch.randn(96, 96, generator=g))[0]
        z = (u * (1.0 / torch.arange(1, 97)) @ v.T).reshape(24, 64, 96)
    else:  # 12 classes, noise of norm 0.01
        z = clustered_features(24, 64, 96, classes=12, noise=0.01, image_shift=0.05, seed=5)
    z = torch.nn.functional.normalize(z, dim=-1)
    a = cluster_assignments(z, generator=make_generator(0))
    glob = torch.cat([labels.reshape(-1, 64) for labels, _, _ in a.global_blocks])
    r32 = dse_from_labels(z, a.local_labels, glob, seed=0)
    r64 = dse_from_labels(z.double(), a.local_labels, glob, seed=0)
    for name in TERMS:
        assert getattr(r32, name) == pytest.approx(getattr(r64, name), rel=1e-5, abs=1e-6), name
