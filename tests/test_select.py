import numpy as np
import pytest

from dsekit.select import calibrate, local_maxima, select_checkpoints


def test_lambda_and_dse_match_definition():
    inter = np.array([1.0, 1.2, 1.5, 1.1])
    ii = np.array([0.5, 0.4, 0.3, 0.6])
    ib = np.array([0.7, 0.6, 0.5, 0.8])
    dim = np.array([0.90, 0.85, 0.80, 0.70])
    cal = calibrate(inter, ii, ib, dim)
    s = inter - (ii + ib) / 2
    lam = s.std() / dim.std()
    assert cal.lam == pytest.approx(lam) and not cal.raw
    np.testing.assert_allclose(cal.dse, s + lam * dim)
    z = lambda v: (v - v.mean()) / v.std()  # noqa: E731
    assert list(np.argsort(cal.dse)) == list(np.argsort(z(s) + z(dim)))


def test_lambda_undefined_falls_back_to_raw():
    one = calibrate([1.0], [0.2], [0.4], [0.9])
    assert one.raw and one.lam is None and "single" in one.note
    assert one.dse[0] == pytest.approx(1.0 - 0.3 + 0.9)
    const = calibrate([1.0, 2.0], [0.2, 0.2], [0.4, 0.4], [0.9, 0.9])
    assert const.raw and "constant" in const.note
    np.testing.assert_allclose(const.dse, [1.6, 2.6])


def test_local_maxima_window_and_ends():
    v = [1, 3, 2, 4, 1, 0, 2]
    assert local_maxima(v, 2) == [3, 6]
    assert local_maxima(v, 1) == [1, 3, 6]
    assert local_maxima([2, 2, 2], 2) == [0, 1, 2]


def test_select_top_and_ties_to_earlier():
    v = [5, 1, 0, 1, 5, 0, 0, 3, 0, 0, 2]
    sel = select_checkpoints(v, window=2, top=3)
    assert sel.candidates == [0, 4, 7, 10]
    assert sel.selected == [0, 4, 7] and sel.best == 0


def test_errors():
    with pytest.raises(ValueError, match="lengths"):
        calibrate([1, 2], [1], [1, 2], [1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        select_checkpoints([1.0, float("nan")])
    with pytest.raises(ValueError, match="top"):
        select_checkpoints([1.0], top=0)


def test_rounding_jitter_in_m_dim_is_constant_not_a_huge_lambda():
    from dsekit.select import calibrate

    s = [0.1, 0.2, 0.3, 0.25]
    z = [0.0] * 4
    jitter = [0.5, 0.5 + 1e-11, 0.5 - 1e-11, 0.5]
    cal = calibrate(s, z, z, jitter)
    assert cal.lam is None and cal.raw and "constant" in cal.note
    real = [0.5, 0.51, 0.49, 0.5]
    cal = calibrate(s, z, z, real)
    assert cal.lam == pytest.approx(np.std(s) / np.std(real))
