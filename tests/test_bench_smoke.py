"""Smoke test of bench/dse_speed.py: a tiny run without the reference estimator."""

import json
import subprocess
import sys
from pathlib import Path

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
    assert row["device"] == "cpu" and row["B"] == 16
    assert row["dsekit_s"] > 0 and len(row["dsekit_times"]) == 1
    assert row["reference_s"] is None and row["ratio"] is None
    assert report["reference"] is None
    (mem,) = report["memory"]
    assert mem["extra_bytes"] is not None and mem["extra_bytes"] >= 0
    spread = report["spread"]["results"]["dsekit"]
    assert len(spread["values"]) == 3 and spread["std"] >= 0
    assert "reference" not in report["spread"]["results"]
