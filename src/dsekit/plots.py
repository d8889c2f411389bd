"""The figures: DSE and its terms over a run, label-free metrics against mIoU, and each
class's IoU over training (matplotlib, Agg backend, one PNG each)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TERM_LABELS",
    "METRIC_ORDER",
    "entry_positions",
    "to_float",
    "plot_dse_curve",
    "plot_metrics_vs_miou",
    "plot_classes",
    "plot_curves",
    "plot_layer_map",
]

#: the four DSE terms and their names in tables and figures
TERM_LABELS = {
    "inter_class_distance": "M_inter",
    "intra_class_image": "M_intra (image)",
    "intra_class_batch": "M_intra (batch)",
    "effective_dimensionality": "M_dim",
}
#: metrics shown in reports and figures, in this order when present (others follow)
METRIC_ORDER = ("dse", "dse_raw", "rankme", "alpha_req", "dense_rankme", "lidar")


def to_float(value: Any) -> float:
    """``float(value)``, NaN for an empty or unparsable cell."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _minmax(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    span = np.nanmax(a) - np.nanmin(a) if np.isfinite(a).any() else 0.0
    return (a - np.nanmin(a)) / span if span > 0 else np.full_like(a, 0.5)


def _pyplot():
    import matplotlib  # heavy: imported when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax: Any, x: Sequence[float], bands: Sequence[dict[str, str]] | None, name: str, color: str) -> None:
    """Shade ``<name>_low .. <name>_high`` (from dse.csv-style dicts) where both are present."""
    if not bands:
        return
    lo = np.array([to_float(b.get(f"{name}_low", "")) for b in bands])
    hi = np.array([to_float(b.get(f"{name}_high", "")) for b in bands])
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.fill_between(np.asarray(x, dtype=float)[ok], lo[ok], hi[ok], color=color, alpha=0.2, lw=0)


def plot_dse_curve(
    results: Sequence[Any],
    dse: Sequence[float],
    selection: dict[str, Any],
    path: str | Path,
    *,
    bands: Sequence[dict[str, str]] | None = None,
    unit: str = "epoch",
) -> Path:
    """DSE over epochs or steps (candidates marked, the selection starred) above its four terms.

    Args:
        results: objects with ``checkpoint``, ``epoch`` and ``terms`` (a dict of the four terms).
        dse: calibrated DSE per result.
        selection: as written to ``selection.json`` (``candidates``, ``best``, ``lambda``).
        path: PNG to write.
        bands: per result, ``{"<column>_low": ..., "<column>_high": ...}`` (dse.csv's interval
            columns), drawn as shaded bands.
        unit: what the x axis counts (``"epoch"`` or ``"step"``).
    """
    plt = _pyplot()
    x = [r.epoch if r.epoch is not None else i for i, r in enumerate(results)]
    index = {r.checkpoint: i for i, r in enumerate(results)}
    fig = plt.figure(figsize=(8, 7))
    grid = fig.add_gridspec(3, 2, height_ratios=[2.2, 1, 1])
    top = fig.add_subplot(grid[0, :])
    _band(top, x, bands, "dse", "C0")
    top.plot(x, dse, "-o", color="C0", ms=4, label="DSE" + (" (95 % interval shaded)" if bands else ""))
    cand = [index[c["checkpoint"]] for c in selection.get("candidates", []) if c["checkpoint"] in index]
    if cand:
        top.plot(
            [x[i] for i in cand],
            [dse[i] for i in cand],
            "o",
            mfc="none",
            mec="C3",
            ms=11,
            mew=1.5,
            label="candidates (local maxima)",
        )
    best = selection.get("best")
    if best and best["checkpoint"] in index:
        i = index[best["checkpoint"]]
        top.plot([x[i]], [dse[i]], "*", color="C3", ms=16, label=f"selected ({unit} {x[i]})")
    lam = selection.get("lambda")
    top.set_ylabel("DSE" + (f"  (λ = {lam:.3g})" if lam is not None else "  (raw)"))
    top.legend(loc="best", fontsize=8)
    top.grid(alpha=0.3)
    for j, (term, label) in enumerate(TERM_LABELS.items()):
        ax = fig.add_subplot(grid[1 + j // 2, j % 2], sharex=top)
        _band(ax, x, bands, term, f"C{j + 1}")
        ax.plot(x, [r.terms[term] for r in results], "-", color=f"C{j + 1}")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if j >= 2:
            ax.set_xlabel(unit)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(entry: dict[str, Any], dataset: str, path: str | Path) -> Path:
    """Dense and image-level quality over training on one axis, each with its 95 % band:
    linear-probe mIoU and k-NN accuracy (when measured), DSE on a second axis; the DSE pick and
    the verdict marked."""
    plt = _pyplot()
    unit, pos = entry_positions(entry)
    x = np.array([e if e is not None else i for i, e in enumerate(pos)], dtype=float)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label, colour in (
        ("miou", "linear-probe mIoU (dense)", "C0"),
        ("knn", "k-NN accuracy (image-level)", "C1"),
    ):
        if key not in entry:
            continue
        y = np.asarray(entry[key], dtype=float) * 100
        lo = np.asarray(entry.get(f"{key}_low", [math.nan] * len(y)), dtype=float) * 100
        hi = np.asarray(entry.get(f"{key}_high", [math.nan] * len(y)), dtype=float) * 100
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            ax.fill_between(x[ok], lo[ok], hi[ok], color=colour, alpha=0.2, lw=0)
        ax.plot(x, y, "-o", color=colour, ms=4, lw=2, label=label + (" (95 % band)" if ok.any() else ""))
    ax.set_xlabel(unit)
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    if "dse" in entry.get("values", {}):
        ax2 = ax.twinx()
        d_lo = np.asarray(entry.get("values_low", {}).get("dse", [math.nan] * len(x)), dtype=float)
        d_hi = np.asarray(entry.get("values_high", {}).get("dse", [math.nan] * len(x)), dtype=float)
        d_ok = np.isfinite(d_lo) & np.isfinite(d_hi)
        if d_ok.any():
            ax2.fill_between(x[d_ok], d_lo[d_ok], d_hi[d_ok], color="C2", alpha=0.12, lw=0)
        band = " (95 % band)" if d_ok.any() else ""
        ax2.plot(x, entry["values"]["dse"], "--", color="C2", lw=1.5, label=f"DSE (label-free){band}")
        sel = entry.get("selection")
        if sel:
            i = sel["top1_index"]
            ax2.plot([x[i]], [entry["values"]["dse"][i]], "*", color="C3", ms=15, label=f"DSE pick ({unit} {pos[i]})")
        ax2.set_ylabel("DSE")
        lines = ax.get_legend_handles_labels()
        more = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="best")
    else:
        ax.legend(fontsize=8, loc="best")
    verdict = entry.get("verdict", {}).get("verdict")
    ax.set_title(f"{dataset}: dense vs image-level quality" + (f" — {verdict}" if verdict else ""))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_layer_map(
    grid: np.ndarray,
    blocks: Sequence[int],
    x: Sequence[Any],
    best: Sequence[int],
    path: str | Path,
    *,
    unit: str = "epoch",
) -> Path:
    """Heat map of DSE on one scale (``grid``: blocks × checkpoints), each checkpoint's best
    block (``best``: row index per column) marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(x) + 2), max(3.0, 0.32 * len(blocks) + 1.5)))
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
    ax.plot(range(len(best)), best, "o", mfc="none", mec="white", ms=8, mew=1.5, label="best block")
    ax.set_xticks(range(len(x)), [str(v) for v in x], fontsize=7, rotation=90 if len(x) > 20 else 0)
    ax.set_yticks(range(len(blocks)), [str(b) for b in blocks], fontsize=7)
    ax.set_xlabel(unit)
    ax.set_ylabel("block")
    ax.set_title("DSE per block (one λ over the map)")
    fig.colorbar(im, ax=ax, label="DSE")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def entry_positions(entry: dict[str, Any]) -> tuple[str, list[Any]]:
    """``(unit, positions)`` of a report entry: its checkpoints' epochs or steps (``entry["unit"]``
    names which, ``"epoch"`` when absent; the list is ``entry["epochs"]`` or ``entry["steps"]``)."""
    unit = entry.get("unit", "epoch")
    return unit, entry[f"{unit}s"]


def plot_metrics_vs_miou(entry: dict[str, Any], dataset: str, path: str | Path) -> Path:
    """mIoU and every metric, min–max normalised, over epochs; DSE candidates marked."""
    plt = _pyplot()
    unit, pos = entry_positions(entry)
    x = [e if e is not None else i for i, e in enumerate(pos)]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    m = np.asarray(entry["miou"], dtype=float)
    lo, hi = (
        np.asarray(entry.get("miou_low", [math.nan] * len(m)), float),
        np.asarray(entry.get("miou_high", [math.nan] * len(m)), float),
    )
    span = np.nanmax(m) - np.nanmin(m)
    if span > 0 and np.isfinite(lo).all() and np.isfinite(hi).all():  # the band on the same normalised scale
        ax.fill_between(x, (lo - np.nanmin(m)) / span, (hi - np.nanmin(m)) / span, color="black", alpha=0.12, lw=0)
    ax.plot(x, _minmax(entry["miou"]), "-o", color="black", lw=2.2, ms=4, label="mIoU")
    for j, (name, values) in enumerate(entry["values"].items()):
        if name not in METRIC_ORDER:
            continue
        c = entry["correlation"][name]
        tau = c["kendall_tau"]
        style = "-" if name == "dse" else "--"
        ci = f" [{c['tau_low']:+.2f}, {c['tau_high']:+.2f}]" if c.get("tau_low") is not None else ""
        ax.plot(
            x,
            _minmax(values),
            style,
            color=f"C{j}",
            lw=2 if name == "dse" else 1.2,
            label=f"{name} (τ = {tau:.2f}{ci})",
        )
    sel = entry.get("selection")
    if sel:
        dse_n = _minmax(entry["values"]["dse"])
        ax.plot(
            [x[i] for i in sel["candidates"]],
            [dse_n[i] for i in sel["candidates"]],
            "o",
            mfc="none",
            mec="C3",
            ms=11,
            mew=1.5,
            label="DSE candidates",
        )
        i = sel["top1_index"]
        ax.plot([x[i]], [dse_n[i]], "*", color="C3", ms=15, label="DSE selection")
    ax.set_xlabel(unit)
    ax.set_ylabel("min–max normalised")
    ax.set_title(f"{dataset}: label-free metrics vs linear-probe mIoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_classes(entry: dict[str, Any], dataset: str, path: str | Path) -> Path:
    """Each class's IoU over epochs (95 % bands), the untrained network at the left edge."""
    plt = _pyplot()
    unit, pos = entry_positions(entry)
    x = np.array([e if e is not None else i for i, e in enumerate(pos)], dtype=float)
    classes = entry["classes"]
    fig, ax = plt.subplots(figsize=(9, 5))
    cmap = plt.get_cmap("tab20")
    x0 = x[0] - max(1.0, (x[-1] - x[0]) / 20) if len(x) else -1.0
    for j, (name, c) in enumerate(classes.items()):
        colour = cmap(j % 20)
        iou, lo, hi = (np.asarray(c[k], dtype=float) for k in ("iou", "low", "high"))
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            ax.fill_between(x[ok], lo[ok], hi[ok], color=colour, alpha=0.12, lw=0)
        ax.plot(x, iou, "-", color=colour, lw=1.4, label=name)
        if c.get("untrained") is not None and math.isfinite(c["untrained"]):
            ax.plot([x0], [c["untrained"]], "o", color=colour, ms=4)
    if entry.get("init"):
        ax.axvline(x0, color="grey", lw=0.6, ls=":")
        ax.text(x0, 1.0, " untrained", fontsize=7, va="top", color="grey")
    ax.set_xlabel(unit)
    ax.set_ylabel("IoU")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{dataset}: IoU of each class over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
