import math
import os
import socket
import sys

import pytest
import torch
import torch.nn.functional as F

from dsekit import dse
from dsekit.metrics.kmeans import make_generator
from dsekit.synthetic import clustered_features
from dsekit.train import DSERegularizer, cluster_assignments, dse_with_grad, safe_normalize

KW = dict(local_clusters=3, global_clusters=8, images_per_group=4)
TINY = dict(local_clusters=2, global_clusters=4, images_per_group=2)


def features(B=8, N=49, d=16, seed=0):
    return clustered_features(B, N, d, classes=8, classes_per_image=3, seed=seed)


# --------------------------------------------------------------------------- value


@pytest.mark.parametrize("normalize", [True, False])
def test_value_and_terms_equal_the_estimator(normalize):
    z = features(seed=1)
    reg = DSERegularizer(seed=7, normalize=normalize, **KW)
    value = reg(z.clone().requires_grad_(True))
    ref = dse(z, seed=7, normalize=normalize, **KW)
    assert value.dtype == torch.float32 and value.ndim == 0 and value.requires_grad
    assert value.item() == pytest.approx(ref.dse_raw, rel=1e-5, abs=1e-5)
    for name, expected in ref.as_dict().items():
        assert reg.last_terms[name] == pytest.approx(expected, rel=1e-5, abs=1e-5), name
    assert reg.last_terms["dse"] == pytest.approx(value.item())
    assert reg.last_terms["degenerate"] == 0.0


def test_lam_weights_m_dim_and_loss_is_minus_beta_dse():
    z = features(seed=2)
    reg = DSERegularizer(lam=2.5, seed=3, **KW)
    value = reg(z)
    t = reg.last_terms
    expected = (
        t["inter_class_distance"]
        - (t["intra_class_image"] + t["intra_class_batch"]) / 2
        + 2.5 * t["effective_dimensionality"]
    )
    assert value.item() == pytest.approx(expected, rel=1e-5)
    loss = DSERegularizer(beta=0.01, lam=2.5, seed=3, **KW).loss(z)
    assert loss.item() == pytest.approx(-0.01 * value.item(), rel=1e-6)


def test_successive_calls_differ_and_runs_are_reproducible():
    z = features(seed=3)
    a, b = DSERegularizer(seed=11, **KW), DSERegularizer(seed=11, **KW)
    seq_a = [a(z).item() for _ in range(3)]
    seq_b = [b(z).item() for _ in range(3)]
    assert seq_a == seq_b
    assert len(set(seq_a)) == 3  # the private generator advances every call
    assert seq_a[0] == pytest.approx(dse(z, seed=11, **KW).dse_raw, rel=1e-5)


def test_rng_state_can_be_saved_and_restored():
    z = features(seed=4)
    reg = DSERegularizer(seed=0, **KW)
    assert reg.get_rng_state() is None
    reg(z)
    state = reg.get_rng_state()
    first = reg(z).item()
    other = DSERegularizer(seed=123, **KW)
    other.set_rng_state(state)
    assert other(z).item() == first


def test_does_not_touch_global_rng(rng_state_guard):
    x = features(seed=5).requires_grad_(True)
    DSERegularizer(**KW)(x).backward()


# --------------------------------------------------------------------------- gradients


def _fixed_assignment_dse(z0, *, normalize, seed=0):
    """DSE as a function of the features with the k-means assignments (and centroids) of z0 held fixed."""
    base = safe_normalize(z0) if normalize else z0
    assignments = cluster_assignments(base, generator=make_generator(seed), **TINY)

    def fn(z):
        terms = dse_with_grad(
            z, normalize=normalize, assignments=assignments, generator=make_generator(seed + 1), **TINY
        )
        return terms.dse(1.0)

    return fn


@pytest.mark.parametrize("normalize, seed", [(True, 0), (False, 1)])
def test_gradcheck_float64(normalize, seed):
    z = torch.randn(4, 8, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
    fn = _fixed_assignment_dse(z, normalize=normalize, seed=seed)
    assert fn(z).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (z.requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_module_gradient_is_the_fixed_assignment_gradient():
    """The module's gradient is that of DSE with its own k-means assignments held fixed."""
    z = torch.randn(4, 8, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = z.clone().requires_grad_(True)
    DSERegularizer(seed=9, **TINY)(x).backward()
    g = make_generator(9)
    assignments = cluster_assignments(safe_normalize(z), generator=g, **TINY)
    y = z.clone().requires_grad_(True)
    dse_with_grad(y, assignments=assignments, generator=g, **TINY).dse().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-12, atol=1e-12)
    assert x.grad.abs().sum() > 0


def test_adam_on_free_features_raises_dse():
    z = torch.randn(8, 49, 16, generator=torch.Generator().manual_seed(0))
    before = dse(z, seed=0, **KW).dse_raw
    x = z.clone().requires_grad_(True)
    reg = DSERegularizer(beta=1.0, seed=0, **KW)
    opt = torch.optim.Adam([x], lr=0.1)
    for _ in range(8):
        opt.zero_grad()
        reg.loss(x).backward()
        opt.step()
    after = dse(x.detach(), seed=0, **KW).dse_raw
    assert after > before + 0.5, (before, after)


def _collapsed_cases():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(16, generator=g)
    return {
        "all_equal": v.expand(8, 49, 16).clone(),
        "all_zero": torch.zeros(8, 49, 16),
        "rank_one": torch.randn(8, 49, 1, generator=g) * v,
        "two_points": torch.where(torch.rand(8, 49, 1, generator=g) > 0.5, v, -v),
        "one_vector_per_image": torch.randn(8, 1, 16, generator=g).expand(8, 49, 16).clone(),
        "some_zero_patches": torch.cat([torch.zeros(8, 25, 16), torch.randn(8, 24, 16, generator=g)], 1),
        "near_collapse": v + 1e-7 * torch.randn(8, 49, 16, generator=g),
    }


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("case", list(_collapsed_cases()))
def test_collapsed_batches_give_finite_gradients(case, normalize):
    x = _collapsed_cases()[case].requires_grad_(True)
    reg = DSERegularizer(normalize=normalize, **KW)
    value = reg(x)
    value.backward()
    assert math.isfinite(value.item())
    assert torch.isfinite(x.grad).all(), case
    assert all(math.isfinite(v) for v in reg.last_terms.values())


def test_fully_collapsed_batch_is_degenerate_and_lowest():
    x = torch.ones(8, 49, 16, requires_grad=True)
    reg = DSERegularizer(**KW)
    value = reg(x)
    value.backward()
    assert reg.last_terms["degenerate"] == 1.0
    assert value.item() == pytest.approx(1 / 8, rel=1e-5)
    assert torch.isfinite(x.grad).all()


def test_safe_normalize_matches_f_normalize_and_is_safe_at_zero():
    z = torch.randn(5, 7, 3, generator=torch.Generator().manual_seed(0))
    z[0, 0] = 0
    x = z.clone().requires_grad_(True)
    out = safe_normalize(x)
    assert torch.equal(out, F.normalize(z, dim=-1))
    out.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[0, 0], torch.zeros(3))
    # F.normalize passes a 1/eps-sized gradient at a zero vector
    y = z.clone().requires_grad_(True)
    (F.normalize(y, dim=-1) * torch.arange(3.0)).sum().backward()
    assert y.grad[0, 0].abs().max() > 1e6


# --------------------------------------------------------------------------- precision and devices


def test_bf16_autocast_computes_in_float32():
    z = features(seed=6)
    proj = torch.nn.Linear(16, 16)
    reg = DSERegularizer(seed=1, **KW)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = proj(z)
        assert h.dtype == torch.bfloat16
        value = reg(h)
    assert value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(proj.weight.grad).all() and proj.weight.grad.abs().sum() > 0
    expected = dse(h.detach().float(), seed=1, **KW).dse_raw
    assert value.item() == pytest.approx(expected, rel=1e-4)


def test_half_precision_leaf_gets_its_own_dtype_gradient():
    x = features(seed=7).bfloat16().requires_grad_(True)
    value = DSERegularizer(**KW)(x)
    assert value.dtype == torch.float32
    value.backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    z = features(seed=8)
    x = z.cuda().requires_grad_(True)
    reg = DSERegularizer(seed=2, **KW)
    value = reg(x)
    value.backward()
    assert value.device.type == "cuda" and torch.isfinite(x.grad).all()
    assert value.item() == pytest.approx(dse(z.cuda(), seed=2, **KW).dse_raw, rel=1e-4)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta=float("nan")), "beta"),
        (dict(lam="1"), "lam"),
        (dict(local_clusters=0), "local_clusters"),
        (dict(global_clusters=1), "global_clusters"),
        (dict(images_per_group=0), "images_per_group"),
        (dict(n_init=0), "n_init"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSERegularizer(**kwargs)


def test_bad_features_raise():
    reg = DSERegularizer(**KW)
    with pytest.raises(ValueError, match=r"features.*\(B, N, d\)"):
        reg(torch.randn(8, 16))
    with pytest.raises(ValueError, match="features"):
        reg([[1.0]])
    with pytest.raises(ValueError, match="non-finite"):
        reg(torch.full((8, 49, 16), float("nan")))
    with pytest.raises(ValueError, match="local_clusters"):
        reg(torch.randn(8, 2, 16))


# --------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, z: torch.Tensor, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        B = z.shape[0] // world
        results = {}
        for gather in (True, False):
            x = z[rank * B : (rank + 1) * B].clone().requires_grad_(True)
            value = DSERegularizer(seed=4, gather=gather, **KW)(x)
            value.backward()
            results[gather] = (value.item(), x.grad.clone())
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gather_scores_the_global_batch_with_gradient_to_each_shard(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    z = features(B=16, seed=9)
    mp.spawn(_ddp_worker, args=(world, _free_port(), z, str(tmp_path)), nprocs=world, join=True)

    full = z.clone().requires_grad_(True)
    value = DSERegularizer(seed=4, **KW)(full)
    value.backward()
    B = z.shape[0] // world
    for rank in range(world):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        gathered_value, gathered_grad = out[True]
        assert gathered_value == pytest.approx(value.item(), rel=1e-5)
        # all_gather's backward sums the identical per-rank copies; DDP's averaging divides by world
        torch.testing.assert_close(gathered_grad, world * full.grad[rank * B : (rank + 1) * B], rtol=1e-4, atol=1e-6)
        local_value, _ = out[False]
        assert local_value == pytest.approx(dse(z[rank * B : (rank + 1) * B], seed=4, **KW).dse_raw, rel=1e-5)


# --------------------------------------------------------------------------- benchmark script


@pytest.mark.filterwarnings("ignore::FutureWarning")  # weight_norm inside lightly's DINO head
def test_regularizer_speed_bench_runs(tmp_path, capsys, monkeypatch):
    """A tiny run of bench/regularizer_speed.py (no reference): both tables, consistent values."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "regularizer_speed.py"
    monkeypatch.syspath_prepend(str(path.parent))  # as `python bench/regularizer_speed.py` has it (bench/_common.py)
    spec = importlib.util.spec_from_file_location("regularizer_speed", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    args = [
        "--device",
        "cpu",
        "--threads",
        str(threads),
        "--batch",
        "8",
        "--patches",
        "16",
        "--dim",
        "64",
        "--repeats",
        "1",
        "--train-repeats",
        "1",
        "--image-size",
        "32",
        "--train-batch",
        "8",
        "--json",
        str(out),
    ]
    try:
        assert bench.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    text = capsys.readouterr().out
    assert "reference: not given" in text and "Share of one training step" in text and "Targets" in text
    report = json.loads(out.read_text())
    ours, estimator = report["forward_backward"]["cpu"]
    assert ours["name"] == "dsekit DSERegularizer" and len(ours["wall"]) == 1
    assert ours["value"] == pytest.approx(estimator["value"], rel=1e-4)  # same k-means, same terms
    (step,) = report["training_step"]
    assert step["tokens"] == [8, 4, 192] and step["step_with"]["wall"][0] > 0
