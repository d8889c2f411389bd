"""Reports of a run: the DSE curve of a scan, and how well label-free metrics predicted mIoU.

``write_report(out_dir)`` reads ``dse.csv`` (from ``dsekit scan``) and ``probe.csv`` (from
``dsekit probe``) in one folder and writes, per dataset of the probe:

* Kendall τ (tau-b) and Spearman ρ between every metric column and mIoU across checkpoints
  (the table of SPEC §6);
* the selection gain: mIoU of the DSE top-1 pick and of the best of the top-3 candidates,
  against the last checkpoint and against the best checkpoint in hindsight;
* a figure: mIoU and each metric min–max normalised over epochs, DSE candidates marked.

Outputs: ``report.md``, ``report.json`` and ``report_<dataset>.png``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .select import select_checkpoints

__all__ = [
    "plot_dse_curve",
    "rank_correlations",
    "selection_gain",
    "SelectionGain",
    "read_table",
    "build_report",
    "write_report",
]

_TERM_LABELS = {
    "inter_class_distance": "M_inter",
    "intra_class_image": "M_intra (image)",
    "intra_class_batch": "M_intra (batch)",
    "effective_dimensionality": "M_dim",
}
#: columns of dse.csv that are not metrics
_ID_COLUMNS = ("checkpoint", "epoch")
#: metrics shown in the report, in this order when present (others follow)
_METRIC_ORDER = ("dse", "dse_raw", "rankme", "alpha_req", "dense_rankme", "lidar")


# --------------------------------------------------------------------------- pure statistics


def rank_correlations(metric: Sequence[float], target: Sequence[float]) -> dict[str, float]:
    """Kendall τ-b and Spearman ρ between two sequences (NaN when undefined, e.g. constant input)."""
    from scipy.stats import kendalltau, spearmanr

    m = np.asarray(metric, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if m.shape != t.shape or m.ndim != 1:
        raise ValueError(f"rank_correlations: expected two 1-D sequences of equal length, got {m.shape} and {t.shape}")
    if len(m) < 2 or np.ptp(m) == 0 or np.ptp(t) == 0:
        return {"kendall_tau": math.nan, "spearman_rho": math.nan}
    return {"kendall_tau": float(kendalltau(m, t).statistic), "spearman_rho": float(spearmanr(m, t).statistic)}


@dataclass(frozen=True)
class SelectionGain:
    """mIoU of DSE-selected checkpoints against the last and the best checkpoint."""

    top1_index: int
    top1_miou: float
    best_of_top_index: int
    best_of_top_miou: float
    last_miou: float
    best_miou: float
    best_index: int
    gain_top1_vs_last: float
    gain_best_of_top_vs_last: float
    gap_top1_to_best: float
    candidates: list[int]
    selected: list[int]


def selection_gain(dse: Sequence[float], miou: Sequence[float], *, window: int = 2, top: int = 3) -> SelectionGain:
    """What selecting checkpoints by DSE would have given, in mIoU.

    Args:
        dse: calibrated DSE per checkpoint, in training order.
        miou: mIoU per checkpoint, same order.
        window, top: as :func:`dsekit.select.select_checkpoints`.
    """
    d = np.asarray(dse, dtype=np.float64)
    y = np.asarray(miou, dtype=np.float64)
    if d.shape != y.shape or d.ndim != 1 or len(d) == 0:
        raise ValueError(f"selection_gain: expected two non-empty 1-D sequences of equal length, got {d.shape} and {y.shape}")
    sel = select_checkpoints(d, window=window, top=top)
    top1 = sel.selected[0]
    best_of_top = max(sel.selected, key=lambda i: (y[i], -i))
    best = int(np.argmax(y))
    return SelectionGain(
        top1_index=top1,
        top1_miou=float(y[top1]),
        best_of_top_index=best_of_top,
        best_of_top_miou=float(y[best_of_top]),
        last_miou=float(y[-1]),
        best_miou=float(y[best]),
        best_index=best,
        gain_top1_vs_last=float(y[top1] - y[-1]),
        gain_best_of_top_vs_last=float(y[best_of_top] - y[-1]),
        gap_top1_to_best=float(y[top1] - y[best]),
        candidates=sel.candidates,
        selected=sel.selected,
    )


# --------------------------------------------------------------------------- tables


def read_table(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts (error naming the file when it is missing)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _float(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def build_report(dse_rows: list[dict[str, str]], probe_rows: list[dict[str, str]], *, window: int = 2, top: int = 3) -> dict[str, Any]:
    """Correlations and selection gains per dataset from dse.csv and probe.csv rows.

    Checkpoints are matched by the ``checkpoint`` column and kept in the order of dse.csv
    (training order). Every numeric column of dse.csv is a metric.
    """
    if not dse_rows:
        raise ValueError("dse.csv has no rows: run `dsekit scan` first")
    metrics = [c for c in dse_rows[0] if c not in _ID_COLUMNS]
    metrics = [m for m in _METRIC_ORDER if m in metrics] + [m for m in metrics if m not in _METRIC_ORDER]
    by_ckpt = {r["checkpoint"]: r for r in dse_rows}
    datasets = sorted({r["dataset"] for r in probe_rows})
    report: dict[str, Any] = {"metrics": metrics, "window": window, "top": top, "datasets": {}}
    for ds in datasets:
        miou_of = {r["checkpoint"]: _float(r["miou"]) for r in probe_rows if r["dataset"] == ds}
        rows = [r for r in dse_rows if r["checkpoint"] in miou_of and math.isfinite(miou_of[r["checkpoint"]])]
        if not rows:
            continue
        miou = [miou_of[r["checkpoint"]] for r in rows]
        entry: dict[str, Any] = {
            "checkpoints": [r["checkpoint"] for r in rows],
            "epochs": [int(r["epoch"]) if r.get("epoch") not in (None, "") else None for r in rows],
            "miou": miou,
            "values": {m: [_float(r[m]) for r in rows] for m in metrics},
            "correlation": {m: rank_correlations([_float(r[m]) for r in rows], miou) for m in metrics},
        }
        if "dse" in metrics:
            entry["selection"] = asdict(selection_gain(entry["values"]["dse"], miou, window=window, top=top))
        report["datasets"][ds] = entry
    missing = [c for c in by_ckpt if not any(c in e["checkpoints"] for e in report["datasets"].values())]
    report["unprobed_checkpoints"] = missing
    return report


# --------------------------------------------------------------------------- figures


def _minmax(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    span = np.nanmax(a) - np.nanmin(a) if np.isfinite(a).any() else 0.0
    return (a - np.nanmin(a)) / span if span > 0 else np.full_like(a, 0.5)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_dse_curve(results: Sequence[Any], dse: Sequence[float], selection: dict[str, Any], path: str | Path) -> Path:
    """DSE over epochs (candidates marked, the selection starred) above its four terms.

    Args:
        results: objects with ``checkpoint``, ``epoch`` and ``terms`` (a dict of the four terms).
        dse: calibrated DSE per result.
        selection: as written to ``selection.json`` (``candidates``, ``best``, ``lambda``).
        path: PNG to write.
    """
    plt = _pyplot()
    x = [r.epoch if r.epoch is not None else i for i, r in enumerate(results)]
    index = {r.checkpoint: i for i, r in enumerate(results)}
    fig = plt.figure(figsize=(8, 7))
    grid = fig.add_gridspec(3, 2, height_ratios=[2.2, 1, 1])
    top = fig.add_subplot(grid[0, :])
    top.plot(x, dse, "-o", color="C0", ms=4, label="DSE")
    cand = [index[c["checkpoint"]] for c in selection.get("candidates", []) if c["checkpoint"] in index]
    if cand:
        top.plot([x[i] for i in cand], [dse[i] for i in cand], "o", mfc="none", mec="C3", ms=11, mew=1.5,
                 label="candidates (local maxima)")
    best = selection.get("best")
    if best and best["checkpoint"] in index:
        i = index[best["checkpoint"]]
        top.plot([x[i]], [dse[i]], "*", color="C3", ms=16, label=f"selected (epoch {x[i]})")
    lam = selection.get("lambda")
    top.set_ylabel("DSE" + (f"  (λ = {lam:.3g})" if lam is not None else "  (raw)"))
    top.legend(loc="best", fontsize=8)
    top.grid(alpha=0.3)
    for j, (term, label) in enumerate(_TERM_LABELS.items()):
        ax = fig.add_subplot(grid[1 + j // 2, j % 2], sharex=top)
        ax.plot(x, [r.terms[term] for r in results], "-", color=f"C{j + 1}")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if j >= 2:
            ax.set_xlabel("epoch")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_metrics_vs_miou(entry: dict[str, Any], dataset: str, path: str | Path) -> Path:
    """mIoU and every metric, min–max normalised, over epochs; DSE candidates marked."""
    plt = _pyplot()
    x = [e if e is not None else i for i, e in enumerate(entry["epochs"])]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(x, _minmax(entry["miou"]), "-o", color="black", lw=2.2, ms=4, label="mIoU")
    for j, (name, values) in enumerate(entry["values"].items()):
        if name not in _METRIC_ORDER:
            continue
        tau = entry["correlation"][name]["kendall_tau"]
        style = "-" if name == "dse" else "--"
        ax.plot(x, _minmax(values), style, color=f"C{j}", lw=2 if name == "dse" else 1.2, label=f"{name} (τ = {tau:.2f})")
    sel = entry.get("selection")
    if sel:
        dse_n = _minmax(entry["values"]["dse"])
        ax.plot([x[i] for i in sel["candidates"]], [dse_n[i] for i in sel["candidates"]], "o", mfc="none", mec="C3",
                ms=11, mew=1.5, label="DSE candidates")
        i = sel["top1_index"]
        ax.plot([x[i]], [dse_n[i]], "*", color="C3", ms=15, label="DSE selection")
    ax.set_xlabel("epoch")
    ax.set_ylabel("min–max normalised")
    ax.set_title(f"{dataset}: label-free metrics vs linear-probe mIoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- writing


def _fmt(v: float, spec: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# DSE report", ""]
    metrics = [m for m in report["metrics"]]
    lines += ["## Rank correlation with linear-probe mIoU across checkpoints", ""]
    lines += ["| dataset | metric | Kendall τ | Spearman ρ |", "|---|---|---|---|"]
    for ds, e in report["datasets"].items():
        for m in metrics:
            c = e["correlation"][m]
            lines.append(f"| {ds} | {m} | {_fmt(c['kendall_tau'], '.2f')} | {_fmt(c['spearman_rho'], '.2f')} |")
    lines += ["", "## Selection by DSE", ""]
    lines += [
        "| dataset | checkpoints | last mIoU | DSE top-1 mIoU | best of top-3 mIoU | best in hindsight | gain top-1 vs last |",
        "|---|---|---|---|---|---|---|",
    ]
    for ds, e in report["datasets"].items():
        s = e.get("selection")
        if not s:
            continue
        ep = e["epochs"]
        lines.append(
            f"| {ds} | {len(e['miou'])} | {_fmt(s['last_miou'])} | {_fmt(s['top1_miou'])} (epoch {ep[s['top1_index']]}) | "
            f"{_fmt(s['best_of_top_miou'])} (epoch {ep[s['best_of_top_index']]}) | {_fmt(s['best_miou'])} "
            f"(epoch {ep[s['best_index']]}) | {s['gain_top1_vs_last']:+.3f} |"
        )
    if report.get("unprobed_checkpoints"):
        lines += ["", f"Checkpoints without mIoU: {len(report['unprobed_checkpoints'])}."]
    for ds in report["datasets"]:
        lines += ["", f"![{ds}](report_{ds}.png)"]
    return "\n".join(lines) + "\n"


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_report(out_dir: str | Path, *, window: int = 2, top: int = 3) -> dict[str, Any]:
    """Read ``dse.csv`` and ``probe.csv`` in ``out_dir``; write report.md, report.json and PNGs."""
    from .scan import write_json_atomic

    out = Path(out_dir)
    dse_rows = read_table(out / "dse.csv")
    probe_rows = read_table(out / "probe.csv")
    report = build_report(dse_rows, probe_rows, window=window, top=top)
    for ds, entry in report["datasets"].items():
        plot_metrics_vs_miou(entry, ds, out / f"report_{ds}.png")
    write_json_atomic(out / "report.json", _json_safe(report))
    (out / "report.md").write_text(_markdown(report))
    return report
