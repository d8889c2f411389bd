"""DSE agrees with golden values computed with the paper authors' estimator (see data/golden/dse/README.md)."""

import json
from pathlib import Path

import numpy as np
import pytest

from dsekit import dse, dse_from_labels

ROOT = Path(__file__).parent / "data" / "golden" / "dse"
CASES = json.loads((ROOT / "cases.json").read_text())["cases"]


def _params(case):
    p = case["params"]
    return dict(
        local_clusters=p["local_clusters"],
        global_clusters=p["global_clusters"],
        images_per_group=p["images_per_group"],
        normalize=p["normalize"],
    )


@pytest.mark.parametrize("case", [c for c in CASES if c["kind"] == "labels"], ids=lambda c: c["case"])
def test_labels_cases(case):
    feats = np.load(ROOT / case["features"])
    local = np.load(ROOT / case["local_labels"])
    glob = np.load(ROOT / case["global_labels"])
    res = dse_from_labels(feats, local, glob, **_params(case))
    for name, expected in case["expected"].items():
        assert getattr(res, name) == pytest.approx(expected, rel=1e-4), name
    ed = case["expected_effective_dimensionality"]
    for seed in range(3):
        r = dse_from_labels(feats, local, glob, seed=seed, **_params(case))
        assert abs(r.effective_dimensionality - ed["mean"]) <= 5 * ed["std"], (seed, r.effective_dimensionality)


@pytest.mark.parametrize("case", [c for c in CASES if c["kind"] == "end_to_end"], ids=lambda c: c["case"])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_end_to_end_cases(case, seed):
    feats = np.load(ROOT / case["features"])
    res = dse(feats, seed=seed, **_params(case))
    exp = case["expected"]
    assert res.inter_class_distance == pytest.approx(exp["inter_class_distance"], rel=1e-3)
    assert res.effective_dimensionality == pytest.approx(exp["effective_dimensionality"], rel=1e-3)
    assert res.dse_raw == pytest.approx(exp["dse"], rel=1e-3)
    for name in ("intra_class_image", "intra_class_batch"):
        assert getattr(res, name) == pytest.approx(exp[name], rel=1e-3, abs=1e-5), name
