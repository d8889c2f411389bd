"""Smoke test of bench/dse_speed.py: a tiny run without the reference estimator."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "dse_speed.py"


def test_dse_speed_quick_without_reference(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--sizes", "16", "--device", "cpu", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert "reference: not given" in text
    assert "DSE time per batch" in text and "ref/dsekit" in text  # the table was printed
    assert "Targets" in text

    report = json.loads(out.read_text())
    (row,) = report["timings"]
    assert row["device"] == "cpu" and row["B"] == 16 and row["input"] == "overlap-1.0"
    # the floor: bare kernel seconds per part, and dsekit's time over it
    assert set(row["floor_parts"]) == {
        "k-means",
        "M_inter",
        "radii: Gram",
        "radii: eigenvalues",
        "M_dim: Gram",
        "M_dim: eigenvalues",
    }
    assert row["floor_s"] == pytest.approx(sum(row["floor_parts"].values()))
    assert row["over_floor"] == pytest.approx(row["dsekit_s"] / row["floor_s"])
    assert all(v >= 1.0 for v in row["floor_iterations"].values())
    assert row["dsekit_s"] > 0 and len(row["dsekit_times"]) == 1
    assert row["reference_s"] is None and row["ratio"] is None
    assert report["reference"] is None
    (mem,) = report["memory"]
    assert mem["extra_bytes"] is not None and mem["extra_bytes"] >= 0
    spread = report["spread"]["results"]["dsekit"]
    assert len(spread["values"]) == 3 and spread["std"] >= 0
    assert "reference" not in report["spread"]["results"]


def test_suite_inputs_are_named_deterministic_and_distinct():
    sys.path.insert(0, str(BENCH.parent))
    try:
        from _dse_inputs import SUITE, SYNTHETIC, synthetic_features
    finally:
        sys.path.remove(str(BENCH.parent))
    assert "real-tokens" in SUITE and len(SYNTHETIC) == 6
    xs = {name: synthetic_features(name, 8) for name in SYNTHETIC}
    for name, x in xs.items():
        assert x.shape == (8, 196, 384) and x.dtype == torch.float32, name
        assert torch.equal(x, synthetic_features(name, 8)), name  # seeded
    assert len({float(x.std()) for x in xs.values()}) == len(xs)
    with pytest.raises(ValueError, match="input"):
        synthetic_features("nope", 8)


def test_gpu_table_reads_what_the_benchmarks_write(tmp_path):
    """bench/gpu_table.py on a dse_speed JSON: CPU rows give "not measured" GPU figures; the same
    rows relabelled as CUDA give a verdict. (The GPU run itself needs a GPU.)"""
    table = BENCH.parent / "gpu_table.py"
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--sizes",
            "16",
            "--device",
            "cpu",
            "--parts",
            "timing",
            "--no-floor",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    gpu_dir = tmp_path / "gpu"
    gpu_dir.mkdir()
    shutil.copy(out, gpu_dir / "dse.json")
    text = subprocess.run([sys.executable, str(table), str(gpu_dir)], capture_output=True, text=True, check=True).stdout
    assert "DSE, B = 1024" in text and "not measured" in text and "met" not in text.replace("not measured", "")
    report = json.loads(out.read_text())
    for e in report["timings"]:
        e.update(device="cuda", B=1024, ratio=60.0, reference_s=60.0 * e["dsekit_s"])
    (gpu_dir / "dse.json").write_text(json.dumps(report))
    text = subprocess.run([sys.executable, str(table), str(gpu_dir)], capture_output=True, text=True, check=True).stdout
    line = next(x for x in text.splitlines() if x.startswith("DSE, B = 1024"))
    fast = report["timings"][0]["dsekit_s"] <= 0.1
    assert "60x the reference" in line and ("NOT met" in line) == (not fast) and line.rstrip().endswith("met")
    assert "scan extraction vs timm" in text and "regulariser share" in text  # missing parts: not measured
