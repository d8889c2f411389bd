"""Property tests: DSE terms are invariant to the symmetries of their definition."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsekit import dse
from dsekit.metrics.dse import TERMS
from dsekit.synthetic import clustered_features

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KW = dict(local_clusters=3, global_clusters=8, images_per_group=4)


def _features(seed, images=8, patches=36, dim=24):
    return clustered_features(images, patches, dim, classes=8, classes_per_image=3, noise=0.1, seed=seed).double()


def _close(a, b, rel=1e-4, abs_=1e-7):
    for name in TERMS:
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=rel, abs=abs_), name


@SETTINGS
@given(seed=st.integers(0, 10_000), normalize=st.booleans())
def test_orthogonal_rotation_invariance(seed, normalize):
    z = _features(seed)
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(z.shape[-1], z.shape[-1], generator=g, dtype=torch.float64))[0]
    _close(dse(z, normalize=normalize, seed=1, **KW), dse(z @ q, normalize=normalize, seed=1, **KW))


@SETTINGS
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3))
def test_global_rescaling_invariance_unnormalized(seed, scale):
    z = _features(seed)
    _close(dse(z, normalize=False, seed=2, **KW), dse(z * scale, normalize=False, seed=2, **KW))


@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_per_patch_rescaling_invariance_normalized(seed):
    z = _features(seed)
    g = torch.Generator().manual_seed(seed + 1)
    factors = torch.exp(torch.randn(*z.shape[:2], 1, generator=g, dtype=torch.float64))
    _close(dse(z, normalize=True, seed=3, **KW), dse(z * factors, normalize=True, seed=3, **KW))


@SETTINGS
@given(seed=st.integers(0, 10_000), dse_seed=st.integers(0, 2**31 - 1))
def test_same_seed_identical(seed, dse_seed):
    z = _features(seed).float()
    a, b = dse(z, seed=dse_seed, **KW), dse(z, seed=dse_seed, **KW)
    assert a.as_dict() == b.as_dict()


@SETTINGS
@given(seed=st.integers(0, 10_000), normalize=st.booleans())
def test_float32_and_float64_agree(seed, normalize):
    z = _features(seed)
    _close(
        dse(z, normalize=normalize, seed=4, **KW),
        dse(z.float(), normalize=normalize, seed=4, **KW),
        rel=1e-4,
        abs_=1e-5,
    )


def test_numpy_and_torch_inputs_agree():
    z = _features(0).float()
    assert dse(z, **KW).as_dict() == dse(z.numpy(), **KW).as_dict()


def test_half_precision_input_is_accepted():
    z = _features(1).float()
    r = dse(z.half(), **KW)
    assert all(np.isfinite(v) for v in r.as_dict().values())
