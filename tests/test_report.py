import csv
import json

import numpy as np
import pytest

from dsekit.cli import main
from dsekit.report import build_report, rank_correlations, selection_gain, write_report

# Fixed synthetic run: 8 checkpoints, mIoU peaks at epoch 30 and degrades.
EPOCHS = [10, 20, 30, 40, 50, 60, 70, 80]
MIOU = [40.0, 45.0, 50.0, 48.0, 44.0, 42.0, 41.0, 39.0]
DSE = [1.0, 2.0, 3.0, 2.5, 2.6, 1.5, 1.2, 1.1]  # local maxima: window 2 -> [2]; window 1 -> [2, 4]
RANKME = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]  # monotone increasing: anti-correlated with late mIoU


def test_rank_correlations_exact():
    # RANKME increases with the index, so a pair (i < j) is concordant iff MIOU[j] > MIOU[i]:
    # by hand, 8 concordant and 20 discordant pairs of 28 -> tau = -12/28
    r = rank_correlations(RANKME, MIOU)
    n = len(MIOU)
    conc = disc = 0
    for i in range(n):
        for j in range(i + 1, n):
            s = np.sign(RANKME[i] - RANKME[j]) * np.sign(MIOU[i] - MIOU[j])
            conc += s > 0
            disc += s < 0
    assert r["kendall_tau"] == pytest.approx((conc - disc) / (n * (n - 1) / 2))
    assert (conc, disc) == (8, 20)
    assert r["kendall_tau"] == pytest.approx(-12 / 28)
    assert rank_correlations(MIOU, MIOU) == {"kendall_tau": pytest.approx(1.0), "spearman_rho": pytest.approx(1.0)}
    assert np.isnan(rank_correlations([1, 1, 1], [1, 2, 3])["kendall_tau"])


def test_selection_gain_exact():
    g = selection_gain(DSE, MIOU, window=2, top=3)
    assert g.candidates == [2]
    assert g.top1_index == 2 and g.top1_miou == 50.0
    assert g.last_miou == 39.0 and g.best_miou == 50.0
    assert g.gain_top1_vs_last == pytest.approx(11.0)
    assert g.gap_top1_to_best == 0.0
    g1 = selection_gain(DSE, MIOU, window=1, top=3)
    assert g1.candidates == [2, 4]
    assert g1.best_of_top_index == 2 and g1.gain_best_of_top_vs_last == pytest.approx(11.0)
    late = selection_gain([0, 1, 2, 3, 4, 5, 6, 7], MIOU)
    assert late.top1_index == 7 and late.gain_top1_vs_last == 0.0 and late.gap_top1_to_best == pytest.approx(-11.0)


def _write(tmp_path):
    with open(tmp_path / "dse.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "epoch", "dse_raw", "dse", "rankme"])
        for e, d, r in zip(EPOCHS, DSE, RANKME):
            w.writerow([f"ckpt{e}.pth", e, d - 1, d, r])
    with open(tmp_path / "probe.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "epoch", "dataset", "miou", "pixel_accuracy"])
        for e, m in zip(EPOCHS, MIOU):
            w.writerow([f"ckpt{e}.pth", e, "scenes", m, 0.9])
            w.writerow([f"ckpt{e}.pth", e, "voc", 100 - m, 0.9])


def test_write_report_outputs(tmp_path):
    _write(tmp_path)
    rep = write_report(tmp_path)
    assert set(rep["datasets"]) == {"scenes", "voc"}
    sc = rep["datasets"]["scenes"]
    assert sc["correlation"]["rankme"]["kendall_tau"] == pytest.approx(-12 / 28)
    assert rep["datasets"]["voc"]["correlation"]["rankme"]["kendall_tau"] == pytest.approx(12 / 28)
    assert sc["selection"]["gain_top1_vs_last"] == pytest.approx(11.0)
    assert rep["datasets"]["voc"]["selection"]["gain_top1_vs_last"] == pytest.approx(-11.0)
    for name in ("report.md", "report.json", "report_scenes.png", "report_voc.png"):
        assert (tmp_path / name).is_file()
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["datasets"]["scenes"]["selection"]["top1_index"] == 2
    assert "Kendall" in (tmp_path / "report.md").read_text()


def test_report_cli(tmp_path, capsys):
    _write(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    assert "top-1 − last" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_build_report_needs_rows():
    with pytest.raises(ValueError, match="scan"):
        build_report([], [])
