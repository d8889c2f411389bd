import pytest
import torch

from dsekit.metrics.spectra import (
    centered_nuclear_norms,
    effective_rank,
    erank_from_singular_values,
    nuclear_norm,
    singular_values,
)


@pytest.mark.parametrize("shape", [(5, 20, 7), (3, 7, 20), (4, 64, 64), (2, 196, 48)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_singular_values_match_svdvals(shape, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(*shape, generator=g) + 0.5 * torch.randn(shape[-1], generator=g)).to(dtype)
    ref = torch.linalg.svdvals(x.double())
    got = singular_values(x, method="gram")
    torch.testing.assert_close(got.sum(-1), ref.sum(-1), rtol=1e-5, atol=0)
    torch.testing.assert_close(nuclear_norm(x), ref.sum(-1).to(nuclear_norm(x).dtype), rtol=1e-5, atol=0)
    r_ref = erank_from_singular_values(ref) / min(shape[-2:])
    torch.testing.assert_close(effective_rank(x), r_ref, rtol=1e-5, atol=0)


def test_centred_nuclear_norms_of_padded_sets_match_svdvals():
    g = torch.Generator().manual_seed(1)
    sizes = [2, 5, 17, 40, 80]
    m, d = 80, 48
    rows = torch.zeros(len(sizes), m, d)
    for i, n in enumerate(sizes):
        rows[i, :n] = torch.randn(n, d, generator=g) * (i + 1) + 3.0
    got = centered_nuclear_norms(rows, torch.tensor(sizes))
    for i, n in enumerate(sizes):
        c = rows[i, :n].double()
        ref = torch.linalg.svdvals(c - c.mean(0)).sum()
        assert got[i].item() == pytest.approx(ref.item(), rel=1e-5)


def test_centred_nuclear_norms_gradient_path_matches():
    g = torch.Generator().manual_seed(2)
    rows = torch.randn(3, 10, 6, generator=g, dtype=torch.float64)
    counts = torch.tensor([10, 4, 7])
    for i, n in enumerate(counts.tolist()):
        rows[i, n:] = 0
    with torch.no_grad():
        ref = centered_nuclear_norms(rows, counts)
    x = rows.clone().requires_grad_(True)
    got = centered_nuclear_norms(x, counts)
    got.sum().backward()
    torch.testing.assert_close(got.detach(), ref, rtol=1e-7, atol=0)
    assert torch.isfinite(x.grad).all()


def test_effective_rank_extremes():
    eye = torch.eye(16, dtype=torch.float64)
    assert effective_rank(eye, normalize=False).item() == pytest.approx(16.0, rel=1e-9)
    rank1 = torch.ones(10, 1, dtype=torch.float64) @ torch.randn(1, 30, dtype=torch.float64)
    assert effective_rank(rank1, normalize=False).item() == pytest.approx(1.0, abs=1e-6)
    zeros = torch.zeros(5, 8)
    assert effective_rank(zeros, normalize=False).item() == 1.0


def test_erank_eps_variant():
    s = torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)
    p = s / s.sum()
    ref = torch.exp(-(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum())
    assert erank_from_singular_values(s).item() == pytest.approx(ref.item())
    pe = p + 1e-7
    assert erank_from_singular_values(s, eps=1e-7).item() == pytest.approx(torch.exp(-(pe * pe.log()).sum()).item())


def test_bad_method():
    with pytest.raises(ValueError, match="method"):
        singular_values(torch.randn(3, 3), method="qr")


def test_threaded_eigen_decomposition_equals_single_thread():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 30, 50, generator=g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = singular_values(x)
        torch.set_num_threads(3)
        three = singular_values(x)
        assert torch.get_num_threads() == 3  # the setting is restored afterwards
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, three)


def test_centred_nuclear_norms_ignore_padding_values():
    g = torch.Generator().manual_seed(6)
    rows = torch.randn(3, 12, 5, generator=g, dtype=torch.float64)
    counts = torch.tensor([12, 3, 7])
    clean = rows.clone()
    for i, n in enumerate(counts.tolist()):
        clean[i, n:] = 0
    torch.testing.assert_close(centered_nuclear_norms(rows, counts), centered_nuclear_norms(clean, counts))


def test_centred_nuclear_norms_gradient_matches_svd_autograd():
    g = torch.Generator().manual_seed(7)
    rows = torch.randn(4, 9, 6, generator=g, dtype=torch.float64) + 2.0
    counts = torch.tensor([9, 3, 6, 2])
    x = rows.clone().requires_grad_(True)
    centered_nuclear_norms(x, counts).sum().backward()
    y = rows.clone().requires_grad_(True)
    total = 0
    for i, n in enumerate(counts.tolist()):
        c = y[i, :n]
        total = total + torch.linalg.svdvals(c - c.mean(0)).sum()
    total.backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-6, atol=1e-9)  # padding rows: 0 in both


def test_float32_gradient_path_agrees_with_float64_values():
    g = torch.Generator().manual_seed(8)
    rows = torch.randn(6, 40, 96, generator=g)
    counts = torch.tensor([40, 33, 20, 12, 5, 2])
    x = rows.clone().requires_grad_(True)
    with_grad = centered_nuclear_norms(x, counts)
    assert with_grad.dtype == torch.float32
    torch.testing.assert_close(with_grad.double(), centered_nuclear_norms(rows, counts), rtol=1e-5, atol=0)
    s32 = singular_values(rows.clone().requires_grad_(True))
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), singular_values(rows), rtol=1e-4, atol=1e-5)


def test_eigvalsh_stacks_equal_one_call_per_stack():
    from dsekit.metrics.spectra import eigvalsh_stacks

    g = torch.Generator().manual_seed(0)
    stacks = []
    for c, m in ((1, 5), (7, 3), (12, 40), (2, 64)):
        a = torch.randn(c, m, m + 3, generator=g)
        stacks.append(a @ a.transpose(1, 2))
    before = torch.get_num_threads()
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        try:
            got = eigvalsh_stacks(stacks)
        finally:
            torch.set_num_threads(before)
        assert torch.get_num_threads() == before
        for s, e in zip(stacks, got, strict=True):
            torch.testing.assert_close(e, torch.linalg.eigvalsh(s))
    assert eigvalsh_stacks([]) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_centered_nuclear_norms_stacks_equal_one_stack_at_a_time(dtype):
    from dsekit.metrics.spectra import centered_nuclear_norms_stacks

    g = torch.Generator().manual_seed(1)
    stacks = [
        (torch.randn(6, m, 30, generator=g).to(dtype), torch.randint(1, m + 1, (6,), generator=g)) for m in (4, 17, 45)
    ]
    got = centered_nuclear_norms_stacks((r.clone(), c) for r, c in stacks)  # centred in place
    for (rows, counts), v in zip(stacks, got, strict=True):
        assert v.dtype == torch.float64  # like centered_nuclear_norms, whatever the input's precision
        torch.testing.assert_close(v, centered_nuclear_norms(rows, counts), rtol=1e-6, atol=1e-6)
        ref = torch.stack(
            [torch.linalg.svdvals((r[:n] - r[:n].mean(0)).double()).sum() for r, n in zip(rows, counts, strict=True)]
        )
        torch.testing.assert_close(v.double(), ref, rtol=1e-5, atol=1e-5)


def test_non_finite_float32_decompositions_are_redone_in_float64(monkeypatch):
    """MKL's float32 eigh returns NaN eigenvectors for some nearly zero rank-one matrices: those
    matrices are decomposed again in float64, the others are left as they were."""
    import dsekit.metrics.spectra as sp

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 6, generator=g)
    grams = x @ x.transpose(-1, -2)
    grams[1] = torch.outer(x[1, 0], x[1, 0]) * 1e-13
    real_eigh = torch.linalg.eigh

    def flaky_eigh(a):
        e, v = real_eigh(a)
        if a.dtype == torch.float32 and a.ndim == 3 and a.shape[0] > 1:
            v = v.clone()
            v[1] = float("nan")
        return e, v

    monkeypatch.setattr(torch.linalg, "eigh", flaky_eigh)
    eig, vec = sp._batched_eigh(grams, vectors=True)
    assert torch.isfinite(vec).all() and torch.isfinite(eig).all()
    e64, v64 = real_eigh(grams.double())
    torch.testing.assert_close(eig[1].double(), e64[1], rtol=1e-5, atol=1e-20)
    rebuilt = vec[1].double() @ torch.diag(eig[1].double()) @ vec[1].double().T
    torch.testing.assert_close(rebuilt, grams[1].double(), rtol=1e-4, atol=1e-18)
    e0, v0 = real_eigh(grams[0])
    assert torch.equal(eig[0], e0)
