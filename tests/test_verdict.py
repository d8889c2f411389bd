"""The report's verdict on synthetic curves with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dsekit.verdict import VERDICTS, degradation_verdict

POS = list(range(8))
RISE_FALL = [0.50, 0.55, 0.60, 0.62, 0.58, 0.55, 0.53, 0.52]


def _draws(curve, noise, seed=0, r=400):
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, noise, size=(r, 1))  # paired: one resample moves every checkpoint alike
    return np.asarray(curve)[None, :] + shared + rng.normal(0, noise / 5, size=(r, len(curve)))


def test_dense_degradation_when_miou_falls_and_image_accuracy_rises():
    knn = [0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.62, 0.65]
    v = degradation_verdict(
        POS,
        RISE_FALL,
        knn,
        miou_draws=_draws(RISE_FALL, 0.01),
        knn_draws=_draws(knn, 0.02),
        loss=[3.0, 2.0, 1.5],
        collapse_loss=math.log(4096),
        min_fall=0.02,
    )
    assert v["verdict"] == "dense degradation"
    assert v["peak"] == 3 and v["miou_fall"] == pytest.approx(0.10) and v["miou_fall_low"] > 0
    assert v["knn_change"] > 0 and any("holds or rises" in r for r in v["reasons"])


def test_collapse_when_both_fall():
    knn = [0.2, 0.4, 0.5, 0.5, 0.4, 0.3, 0.2, 0.1]
    v = degradation_verdict(POS, RISE_FALL, knn, miou_draws=_draws(RISE_FALL, 0.01), knn_draws=_draws(knn, 0.01))
    assert v["verdict"] == "collapse" and v["knn_change_high"] < 0


def test_collapse_when_the_loss_reaches_its_uniform_value():
    knn = [0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.62, 0.65]
    v = degradation_verdict(
        POS,
        RISE_FALL,
        knn,
        miou_draws=_draws(RISE_FALL, 0.01),
        knn_draws=_draws(knn, 0.01),
        loss=[7.0, 8.0, 8.317],
        collapse_loss=math.log(4096),
    )
    assert v["verdict"] == "collapse" and any("collapse value" in r and "uniform" in r for r in v["reasons"])


def test_no_degradation_for_a_rise_or_a_fall_inside_its_interval():
    rising = [0.5, 0.52, 0.55, 0.57, 0.6, 0.61, 0.62, 0.63]
    assert degradation_verdict(POS, rising, rising)["verdict"] == "no degradation"
    small = [0.50, 0.55, 0.60, 0.61, 0.605, 0.60, 0.605, 0.602]
    rng = np.random.default_rng(1)
    wide = np.asarray(small)[None, :] + rng.normal(0, 0.05, size=(400, 8))  # unpaired noise: a wide interval
    v = degradation_verdict(POS, small, None, miou_draws=wide)
    assert v["verdict"] == "no degradation" and v["miou_fall_low"] <= 0
    v = degradation_verdict(POS, RISE_FALL, None, miou_draws=_draws(RISE_FALL, 0.01), min_fall=0.2)
    assert v["verdict"] == "no degradation" and "that count" in v["reasons"][0]


def test_without_image_labels_the_reasons_say_so():
    v = degradation_verdict(POS, RISE_FALL, None, miou_draws=_draws(RISE_FALL, 0.01))
    assert v["verdict"] == "dense degradation" and "not measured" in " ".join(v["reasons"])
    assert v["verdict"] in VERDICTS
