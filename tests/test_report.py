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
        for e, d, r in zip(EPOCHS, DSE, RANKME, strict=True):
            w.writerow([f"ckpt{e}.pth", e, d - 1, d, r])
    with open(tmp_path / "probe.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "epoch", "dataset", "miou", "pixel_accuracy"])
        for e, m in zip(EPOCHS, MIOU, strict=True):
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


# ---------------------------------------------------------------------------------------------- intervals

TERMS4 = ("inter_class_distance", "intra_class_image", "intra_class_batch", "effective_dimensionality")


def _write_with_replicates(tmp_path, accuracy, n_images, noise, seed=0):
    """A run whose DSE peaks at epoch 30 (M_inter and M_dim both follow DSE) and whose per-image confusions have the
    given per-checkpoint accuracy (2 classes, 20 pixels each per image)."""
    rng = np.random.default_rng(seed)
    names = [f"ckpt{e}.pth" for e in EPOCHS]
    inter = np.array(DSE)
    with open(tmp_path / "dse.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "epoch", *TERMS4, "dse_raw", "dse"])
        for n, e, v in zip(names, EPOCHS, inter, strict=True):
            w.writerow([n, e, v, 0.5, 0.5, 0.3 + 0.05 * v, v - 0.5 + 0.3, v])
    with open(tmp_path / "dse_replicates.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "replicate", *TERMS4, "dse_raw"])
        for n, v in zip(names, inter, strict=True):
            for k in range(10):
                w.writerow([n, k, v + noise * rng.normal(), 0.5, 0.5, 0.3 + 0.05 * v + 0.05 * noise * rng.normal(), v])
    cols = {k: [] for k in ("checkpoint", "head", "image", "cell", "count")}
    with open(tmp_path / "probe.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "epoch", "dataset", "miou", "pixel_accuracy"])
        for t, (n, e, p) in enumerate(zip(names, EPOCHS, accuracy, strict=True)):
            conf = np.zeros((n_images, 2, 2), np.int64)
            right = rng.binomial(20, p, size=(n_images, 2))
            conf[:, 0, 0], conf[:, 0, 1] = right[:, 0], 20 - right[:, 0]
            conf[:, 1, 1], conf[:, 1, 0] = right[:, 1], 20 - right[:, 1]
            total = conf.sum(0)
            iou = [total[c, c] / (total[c].sum() + total[:, c].sum() - total[c, c]) for c in range(2)]
            w.writerow([n, e, "scenes", float(np.mean(iou)), 0.5])
            flat = conf.reshape(n_images, 4)
            img, cell = np.nonzero(flat)
            for k, v in (
                ("checkpoint", np.full(img.size, t)),
                ("head", np.zeros(img.size)),
                ("image", img),
                ("cell", cell),
                ("count", flat[img, cell]),
            ):
                cols[k].append(v)
    np.savez(
        tmp_path / "probe_scenes_confusion.npz",
        **{k: np.concatenate(v).astype(np.int64) for k, v in cols.items()},
        shape=np.array([1, n_images, 4]),
        checkpoints=np.array(names),
    )


def test_report_intervals_separate_a_clear_gain_from_noise(tmp_path):
    clear = tmp_path / "clear"
    clear.mkdir()
    acc = [0.80, 0.85, 0.90, 0.88, 0.84, 0.80, 0.75, 0.70]  # peak at epoch 30, where DSE peaks
    _write_with_replicates(clear, acc, n_images=200, noise=0.01)
    e = write_report(clear)["datasets"]["scenes"]
    s = e["selection"]
    assert e["intervals"] and s["top1_index"] == 2
    assert 0 < s["gain_top1_vs_last_low"] <= s["gain_top1_vs_last"] <= s["gain_top1_vs_last_high"]
    assert s["pick_agreement"] > 0.9
    assert e["correlation"]["dse"]["nonzero"] and e["correlation"]["dse"]["tau_low"] > 0
    assert e["curve"]["best_minus_last_low"] > 0 and e["curve"]["best_index"] == 2
    text = (clear / "report.md").read_text()
    assert "the pick is better than the last checkpoint" in text
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    _write_with_replicates(noisy, [0.80, 0.80, 0.801, 0.80, 0.80, 0.80, 0.80, 0.80], n_images=10, noise=1.0)
    e = write_report(noisy)["datasets"]["scenes"]
    s = e["selection"]
    assert s["gain_top1_vs_last_low"] < 0 < s["gain_top1_vs_last_high"]
    assert "not distinguishable from the last checkpoint" in (noisy / "report.md").read_text()
    assert not e["correlation"]["dse"]["nonzero"]


def test_report_without_replicates_says_so(tmp_path):
    _write(tmp_path)
    e = write_report(tmp_path)["datasets"]["scenes"]
    assert e["intervals"] is False and "tau_low" not in e["correlation"]["dse"]
    assert "no intervals" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(
    "which, text, message",
    [
        (
            "dse.csv",
            "checkpoint,epoch,dse\nckpt10.pth,10,1.0\nckpt20.pth,20,high\n",
            "dse.csv, line 3, column 'dse': expected a number, got 'high'",
        ),
        ("dse.csv", "checkpoint,dse\nckpt10.pth,1.0\n", "dse.csv: missing column(s) epoch"),
        ("probe.csv", "checkpoint,epoch,dataset\nckpt10.pth,10,scenes\n", "probe.csv: missing column(s) miou"),
        (
            "probe.csv",
            "checkpoint,epoch,dataset,miou,pixel_accuracy\nckpt10.pth,10,scenes,0.5,x\n",
            "probe.csv, line 2, column 'pixel_accuracy': expected a number, got 'x'",
        ),
    ],
)
def test_malformed_tables_name_the_file_line_and_column(which, text, message, tmp_path, capsys):
    _write(tmp_path)
    (tmp_path / which).write_text(text)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
