"""The end-to-end demo, at a tiny size (the CI runs ``dsekit demo --quick`` in full)."""

from __future__ import annotations

import json

import pytest
import torch

from dsekit.demo import DemoConfig, demo

TINY = dict(
    train_images=16,
    epochs=2,
    save_every=1,
    batch_size=8,
    warmup_epochs=0,
    scan_images=16,
    probe_train=8,
    probe_val=4,
    probe_epochs=1,
)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_demo_trains_scans_probes_and_reports(tmp_path, capsys):
    report = demo(DemoConfig(out=str(tmp_path / "demo")), progress=False, settings=TINY)
    out_dir = tmp_path / "demo" / "run" / "dse"
    for name in ("dse.csv", "selection.json", "dse.png", "probe.csv", "report.md", "report.json"):
        assert (out_dir / name).is_file(), name
    entry = report["datasets"]["scenes"]
    assert entry["epochs"] == [0, 1]
    assert all(0.0 <= m <= 1.0 for m in entry["miou"])
    assert set(report["timings"]) == {"train", "scan", "probe"}
    assert json.loads((out_dir / "report.json").read_text())["datasets"]["scenes"]["epochs"] == [0, 1]
    printed = capsys.readouterr().out
    assert "Kendall" in printed and "DSE's pick (epoch" in printed and "untrained" in printed
    # the untrained network is scored and shown, never selected; every figure has an interval
    assert entry["init"] is not None and 0.0 <= entry["init"]["miou"] <= 1.0
    assert entry["intervals"] is True
    for i, m in enumerate(entry["miou"]):
        assert entry["miou_low"][i] <= m <= entry["miou_high"][i]
        assert entry["values_low"]["dse"][i] <= entry["values"]["dse"][i] <= entry["values_high"]["dse"][i]
    assert entry["correlation"]["dse"]["tau_low"] is not None
    assert entry["selection"]["gain_top1_vs_last_low"] is not None
    assert set(entry["classes"]) == {"gravel", "tissue", "stars", "digit"}  # the demo's dense task
    text = (out_dir / "report.md").read_text()
    assert "IoU per class" in text and "best − untrained" in text
    assert (out_dir / "classes_scenes.png").is_file() and (out_dir / "curves_scenes.png").is_file()
    # the image-level curve (the scenes' digit identities) and the verdict
    assert len(entry["knn"]) == 2 and all(
        lo <= k <= hi for lo, k, hi in zip(entry["knn_low"], entry["knn"], entry["knn_high"], strict=True)
    )
    stored = json.loads((out_dir / "report.json").read_text())
    assert stored["verdict"] in ("dense degradation", "collapse", "no degradation") and stored["verdict_reasons"]
    assert "### Verdict" in text
    # the demo's default training: plain MoCo v3, no regulariser; the summary says τ is one run's
    info = json.loads((tmp_path / "demo" / "run" / "dsekit.json").read_text())
    assert info["method"] == "mocov3" and info["settings"]["dse_weight"] == 0.0
    assert "training MoCo v3 on the built-in scenes" in printed and "with the DSE regulariser" not in printed
    assert "k-NN digit %" in printed and f"verdict: {stored['verdict']}" in printed
    assert "this one training run's" in printed
    # a rerun reuses everything already computed
    again = demo(DemoConfig(out=str(tmp_path / "demo")), progress=False, settings=TINY)
    assert again["datasets"]["scenes"]["miou"] == entry["miou"]


def test_demo_regularize_flag_trains_with_the_dse_regulariser(tmp_path, capsys, monkeypatch):
    import dsekit.demo as demo_module
    from dsekit.cli import main
    from dsekit.train.presets import DEMO_REGULARIZE_BETA

    monkeypatch.setitem(demo_module.DEMO_SETTINGS, "quick", {**demo_module.DEMO_SETTINGS["quick"], **TINY, "epochs": 1})
    assert main(["demo", "--quick", "--quiet", "--regularize", "--out", str(tmp_path / "d")]) == 0
    info = json.loads((tmp_path / "d" / "run" / "dsekit.json").read_text())
    assert info["settings"]["dse_weight"] == DEMO_REGULARIZE_BETA == 0.1
    assert f"with the DSE regulariser (β = {DEMO_REGULARIZE_BETA:g})" in capsys.readouterr().out
