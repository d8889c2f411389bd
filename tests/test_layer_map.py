"""The layer map: ``scan --layers`` / ``probe --layers`` on a small DINOv2 run counted in steps,
``--method auto`` on its nested layout, and the report's correlation per block."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dsekit.probe import ProbeConfig, probe
from dsekit.report import write_report
from dsekit.scan import ScanConfig, scan
from dsekit.select import calibrate

from test_dinov import _teacher, dinov2_sd

STEPS = (1249, 2499, 3749)
COMMON = {"num_images": 16, "image_size": 56, "intervals": 4, "seed": 0}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dinov2_run")
    for k, step in enumerate(STEPS):
        d = root / "eval" / f"training_{step}"
        d.mkdir(parents=True)
        torch.save(_teacher(dinov2_sd(10 + k, grid=4, depth=3)), d / "teacher_checkpoint.pth")
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_scan_layer_map(run, tmp_path):
    out = tmp_path / "map"
    res = scan(ScanConfig(str(run), "auto", out=str(out), layers="all", **COMMON), progress=False)
    assert res.ok and res.computed == 3
    rows = _rows(out / "dse_layers.csv")
    assert list(rows[0])[:3] == ["checkpoint", "step", "layer"]
    assert [(int(r["step"]), int(r["layer"])) for r in rows] == [(s, b) for s in STEPS for b in range(3)]
    main = {r["checkpoint"]: r for r in _rows(out / "dse.csv")}
    for r in rows:  # the scan's own layer (-1 = block 2) comes from the same pass: the same terms
        if r["layer"] == "2":
            for t in ("inter_class_distance", "intra_class_image", "intra_class_batch", "effective_dimensionality"):
                assert r[t] == main[r["checkpoint"]][t]
        assert float(r["dse_low"]) <= float(r["dse"]) <= float(r["dse_high"])
    record = json.loads((out / "layers.json").read_text())
    for b in range(3):  # λ of each block: calibrated on that block's curve
        mine = [r for r in rows if r["layer"] == str(b)]
        lam = calibrate(
            *[
                [float(r[t]) for r in mine]
                for t in ("inter_class_distance", "intra_class_image", "intra_class_batch", "effective_dimensionality")
            ]
        ).lam
        assert record["lambda"][str(b)] == pytest.approx(lam)
    for best in record["best_layer"]:  # the best block: the largest DSE on the map's one scale
        cells = {int(r["layer"]): float(r["dse_map"]) for r in rows if r["checkpoint"] == best["checkpoint"]}
        assert best["layer"] == max(cells, key=cells.get)
    assert (out / "dse_layers.png").stat().st_size > 0

    again = scan(ScanConfig(str(run), "auto", out=str(out), layers="all", **COMMON), progress=False)
    assert again.computed == 0  # cached, layer map included
    other = scan(ScanConfig(str(run), "auto", out=str(out), layers=(0,), **COMMON), progress=False)
    assert other.computed == 3  # another map is another result

    plain = tmp_path / "plain"
    scan(ScanConfig(str(run), "dinov2", out=str(plain), **COMMON), progress=False)
    assert [r["dse"] for r in _rows(plain / "dse.csv")] == [
        main[r["checkpoint"]]["dse"] for r in _rows(plain / "dse.csv")
    ]


def test_probe_layers_and_the_report_per_block(run, tmp_path):
    out = tmp_path / "map"
    scan(ScanConfig(str(run), "dinov2", out=str(out), layers=(0, -1), **COMMON), progress=False)
    cfg = ProbeConfig(
        str(run), "dinov2", out=str(out), image_size=56, num_train=12, num_val=8, epochs=2, layers=(0, -1)
    )
    res = probe(cfg, progress=False)
    assert res.ok
    layer_rows = _rows(out / "probe_layers.csv")
    assert list(layer_rows[0])[:4] == ["checkpoint", "step", "dataset", "layer"]
    assert sorted({r["layer"] for r in layer_rows}) == ["0", "2"]
    main = {r["checkpoint"]: float(r["miou"]) for r in _rows(out / "probe.csv")}
    for r in layer_rows:
        if r["layer"] == "2":  # the probe's own layer: the same heads on the same features
            assert float(r["miou"]) == pytest.approx(main[r["checkpoint"]])
    report = write_report(out)
    blocks = report["layers"]["scenes"]
    assert [e["layer"] for e in blocks] == [0, 2]
    assert all(e["intervals"] for e in blocks)
    assert "DSE and mIoU per block" in (out / "report.md").read_text()
    assert report["unit"] == "step" and report["datasets"]["scenes"]["steps"] == list(STEPS)
    assert "step 1249" in (out / "report.md").read_text()

    again = probe(cfg, progress=False)
    assert again.computed == 0


def test_cli_layer_errors(run, tmp_path):
    bad = subprocess.run(
        [sys.executable, "-m", "dsekit", "scan", str(run), "--method", "dinov2", "--layers", "banana"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--layers" in bad.stderr and "Traceback" not in bad.stderr
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dsekit",
            "scan",
            str(run),
            "--method",
            "dinov2",
            "--layers",
            "7",
            "--image-size",
            "56",
            "--num-images",
            "8",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "out of range" in out.stderr and "Traceback" not in out.stderr


def test_multi_layer_extraction_is_one_pass_of_the_single_layers(run):
    from dsekit.backbones import FeatureExtractor, load_backbone

    model = load_backbone(next(run.glob("eval/*/teacher_checkpoint.pth")), "dinov2", img_size=56)
    x = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        many = FeatureExtractor(model, layers=[2, 0])(x)
        for f, b in zip(many, [2, 0], strict=True):
            np.testing.assert_array_equal(f.numpy(), FeatureExtractor(model, b)(x).numpy())
