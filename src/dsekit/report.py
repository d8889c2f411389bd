"""Reports of a run: the DSE curve of a scan, and how well label-free metrics predicted mIoU.

``write_report(out_dir)`` reads ``dse.csv`` (from ``dsekit scan``) and ``probe.csv`` (from
``dsekit probe``) in one folder and writes, per dataset of the probe:

* Kendall τ (tau-b) and Spearman ρ between every metric column and mIoU across the training
  checkpoints (the table of SPEC §6), each with a 95 % interval that carries both sides'
  per-checkpoint uncertainty, and whether it differs from 0 and from DSE's;
* the selection gain: mIoU of the DSE top-1 pick and of the best of the top-3 candidates,
  against the last checkpoint and against the best checkpoint in hindsight, with intervals;
* the mIoU curve: the untrained network (when the run saved its initial weights), the first,
  best and last checkpoints, and the differences between them with intervals;
* per-class IoU of every checkpoint (table and figure);
* figures: mIoU and each metric min–max normalised over epochs with DSE candidates marked,
  and each class's IoU over epochs.

Intervals: ``dse_replicates.csv`` (half-sample values of every label-free column, from the
scan) and ``probe_<dataset>_confusion.npz`` (per-image confusions, from the probe) give
paired draws of both curves: draw ``b`` takes bootstrap resample ``b`` of the validation
images (shared by all checkpoints) and a random half-sample replicate of the scan (shared by
all checkpoints), recomputes λ, the calibrated DSE, its pick, τ and ρ, and the intervals are
the percentiles of these draws (:mod:`dsekit.metrics.intervals`). Without those files the
report has no intervals and says so. The initial weights (epoch -1) are shown but are never a
candidate and do not enter τ, ρ or λ.

Outputs: ``report.md``, ``report.json``, ``report_<dataset>.png`` and ``classes_<dataset>.png``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import INIT_EPOCH
from .io import read_confusion_table, read_knn_table
from .metrics.intervals import correlation_intervals, half_sample_draws, miou_bootstrap, percentile_interval
from .metrics.knn import accuracy_bootstrap
from .plots import METRIC_ORDER, TERM_LABELS, entry_positions, plot_classes, plot_curves, plot_metrics_vs_miou, to_float
from .report_tables import DSE_TABLE_COLUMNS, ID_COLUMNS, PROBE_TABLE_COLUMNS, numeric_columns, read_table, table_header
from .report_text import markdown, selection_sentence
from .run_info import read_run_info
from .runtime import file_name_part, write_json_atomic, write_text_atomic
from .select import calibrate, select_checkpoints
from .train.logs import collapse_loss, read_training_log
from .verdict import degradation_verdict

__all__ = [
    "rank_correlations",
    "selection_gain",
    "SelectionGain",
    "read_table",
    "build_report",
    "selection_sentence",
    "write_report",
]

#: the smallest mIoU fall (2 points) the verdict counts as dense degradation or collapse
MIN_FALL = 0.02
_TERMS4 = tuple(TERM_LABELS)


# --------------------------------------------------------------------------- pure statistics


def rank_correlations(metric: Sequence[float], target: Sequence[float]) -> dict[str, float]:
    """Kendall τ-b and Spearman ρ between two sequences (NaN when undefined, e.g. constant input)."""
    from scipy.stats import kendalltau, spearmanr  # heavy: imported when a report is computed

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
        raise ValueError(
            f"selection_gain: expected two non-empty 1-D sequences of equal length, got {d.shape} and {y.shape}"
        )
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


def _metric_columns(columns: Sequence[str]) -> list[str]:
    cols = [c for c in columns if c not in ID_COLUMNS and not c.endswith(("_low", "_high"))]
    return [m for m in METRIC_ORDER if m in cols] + [m for m in cols if m not in METRIC_ORDER]


def build_report(
    dse_rows: list[dict[str, str]],
    probe_rows: list[dict[str, str]],
    *,
    window: int = 2,
    top: int = 3,
    replicate_rows: list[dict[str, str]] | None = None,
    confusions: dict[str, tuple[list[str], list[list[Any]]]] | None = None,
    class_rows: dict[str, list[dict[str, str]]] | None = None,
    confidence: float = 0.95,
    n_draws: int = 1000,
    seed: int = 0,
    knn_tables: dict[str, tuple[list[str], np.ndarray]] | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Correlations, selection gains, the mIoU and image-level curves and the verdict per dataset,
    with intervals where possible.

    Args:
        dse_rows, probe_rows: rows of dse.csv and probe.csv. Checkpoints are matched by the
            ``checkpoint`` column and kept in the order of dse.csv (training order); their
            position is its ``epoch`` column, or ``step`` for runs that count iterations (the
            report's ``unit``; each dataset's entry lists them as ``epochs`` or ``steps``). Every
            numeric column of dse.csv that does not end in ``_low`` / ``_high`` is a metric.
        replicate_rows: rows of dse_replicates.csv (None: no intervals on the metric side).
        confusions: dataset -> ``(checkpoints, per-head sparse per-image confusions)`` as read by
            :func:`dsekit.probe.read_confusion_table` (None: no intervals on the mIoU side).
        class_rows: dataset -> rows of ``probe_<dataset>_classes.csv``.
        confidence, n_draws, seed: the intervals' coverage, number of paired draws and seed.
        knn_tables: dataset -> ``(checkpoints, per-image k-NN correctness (T, n))`` of
            ``probe_<dataset>_knn.npz`` (paired intervals of the image-level curve).
        training: ``{"loss": [...], "collapse_loss": float | None}`` of the run's training log
            (:mod:`dsekit.train.logs`), for the verdict.

    The verdict (:func:`dsekit.verdict.degradation_verdict`) is per dataset (``entry["verdict"]``)
    and, for the first dataset, the report's ``verdict`` and ``verdict_reasons``.
    """
    if not dse_rows:
        raise ValueError("dse.csv has no rows: run `dsekit scan` first")
    metrics = _metric_columns(list(dse_rows[0]))
    datasets = sorted({r["dataset"] for r in probe_rows})
    report: dict[str, Any] = {
        "metrics": metrics,
        "unit": table_unit(dse_rows),
        "window": window,
        "top": top,
        "confidence": confidence,
        "datasets": {},
    }
    for ds in datasets:
        entry = _dataset_entry(
            ds,
            dse_rows,
            probe_rows,
            metrics,
            window,
            top,
            replicate_rows,
            (confusions or {}).get(ds),
            (class_rows or {}).get(ds),
            confidence,
            n_draws,
            seed,
        )
        if entry is not None:
            _image_level(
                entry, (knn_tables or {}).get(ds), (confusions or {}).get(ds), training or {}, confidence, n_draws, seed
            )
            report["datasets"][ds] = entry
    if report["datasets"]:
        first = next(iter(report["datasets"].values()))
        report["verdict"] = first["verdict"]["verdict"]
        report["verdict_reasons"] = first["verdict"]["reasons"]
        report["verdict_dataset"] = next(iter(report["datasets"]))
    report["partial_checkpoints"] = sorted(
        {r["checkpoint"] for r in dse_rows if r.get("partial")}
        | {r["checkpoint"] for r in probe_rows if r.get("partial")}
    )
    report["unprobed_checkpoints"] = [
        r["checkpoint"]
        for r in dse_rows
        if not any(
            r["checkpoint"] in e["checkpoints"] or r["checkpoint"] == (e.get("init") or {}).get("checkpoint")
            for e in report["datasets"].values()
        )
    ]
    return report


def _epoch(r: dict[str, str]) -> int | None:
    """The checkpoint's epoch or step (dse.csv / probe.csv carry one of the two columns)."""
    v = r.get("epoch", r.get("step"))
    return int(float(v)) if v not in (None, "") else None


def table_unit(rows: Sequence[dict[str, str]]) -> str:
    """``"step"`` when the table's rows count steps (a ``step`` column), else ``"epoch"``."""
    return "step" if rows and "step" in rows[0] and "epoch" not in rows[0] else "epoch"


def _dataset_entry(
    ds: str,
    dse_rows: list[dict[str, str]],
    probe_rows: list[dict[str, str]],
    metrics: list[str],
    window: int,
    top: int,
    replicate_rows: list[dict[str, str]] | None,
    confusion: tuple[list[str], list[list[Any]]] | None,
    class_rows: list[dict[str, str]] | None,
    confidence: float,
    n_draws: int,
    seed: int,
) -> dict[str, Any] | None:
    probe_of = {r["checkpoint"]: r for r in probe_rows if r["dataset"] == ds}
    rows = [
        r
        for r in dse_rows
        if r["checkpoint"] in probe_of and math.isfinite(to_float(probe_of[r["checkpoint"]]["miou"]))
    ]
    init_rows = [r for r in rows if _epoch(r) == INIT_EPOCH]
    rows = [r for r in rows if _epoch(r) != INIT_EPOCH]
    if not rows:
        return None
    names = [r["checkpoint"] for r in rows]
    miou = [to_float(probe_of[c]["miou"]) for c in names]
    unit = table_unit(dse_rows)
    entry: dict[str, Any] = {
        "checkpoints": names,
        "unit": unit,
        f"{unit}s": [_epoch(r) for r in rows],
        "miou": miou,
        "miou_low": [to_float(probe_of[c].get("miou_low", "")) for c in names],
        "miou_high": [to_float(probe_of[c].get("miou_high", "")) for c in names],
        "values": {m: [to_float(r[m]) for r in rows] for m in metrics},
        "values_low": {m: [to_float(r.get(f"{m}_low", "")) for r in rows] for m in metrics},
        "values_high": {m: [to_float(r.get(f"{m}_high", "")) for r in rows] for m in metrics},
        "correlation": {m: rank_correlations([to_float(r[m]) for r in rows], miou) for m in metrics},
        "init": None,
    }
    if init_rows:
        c = init_rows[0]["checkpoint"]
        entry["init"] = {
            "checkpoint": c,
            "miou": to_float(probe_of[c]["miou"]),
            "miou_low": to_float(probe_of[c].get("miou_low", "")),
            "miou_high": to_float(probe_of[c].get("miou_high", "")),
            **{k: to_float(probe_of[c].get(k, "")) for k in ("knn_top1", "knn_low", "knn_high")},
            "values": {m: to_float(init_rows[0][m]) for m in metrics},
            "values_low": {m: to_float(init_rows[0].get(f"{m}_low", "")) for m in metrics},
            "values_high": {m: to_float(init_rows[0].get(f"{m}_high", "")) for m in metrics},
        }
    if "dse" in metrics:
        entry["selection"] = asdict(selection_gain(entry["values"]["dse"], miou, window=window, top=top))
    draws = _paired_draws(rows, init_rows, metrics, replicate_rows, confusion, n_draws, seed)
    entry["intervals"] = draws is not None
    entry["curve"] = _curve_summary(entry, draws, confidence)
    if draws is not None:
        y, _, metric_draws, terms = draws
        ci = correlation_intervals(
            metric_draws, y, confidence=confidence, reference="dse" if "dse" in metric_draws else None
        )
        for m, interval in ci.items():
            entry["correlation"][m].update(interval)
        sel = entry.get("selection")
        if sel is not None and terms is not None:
            gains = _selection_draws(terms, y, window, top)
            for k in ("gain_top1_vs_last", "gap_top1_to_best"):
                lo, hi = percentile_interval(gains[k], confidence)
                sel[f"{k}_low"], sel[f"{k}_high"] = _nan_none(lo), _nan_none(hi)
            sel["pick_agreement"] = float(np.mean(gains["pick"] == sel["top1_index"]))
    if class_rows:
        entry["classes"] = _class_table(class_rows, names, entry["init"])
    return entry


def _image_level(
    entry: dict[str, Any],
    knn: tuple[list[str], np.ndarray] | None,
    confusion: tuple[list[str], list[list[Any]]] | None,
    training: dict[str, Any],
    confidence: float,
    n_draws: int,
    seed: int,
) -> None:
    """The image-level curve (k-NN accuracy, paired intervals) and the verdict of one dataset's entry."""
    names = entry["checkpoints"]
    knn_draws = miou_draws = None
    if knn is not None and all(c in knn[0] for c in names):
        rows = np.stack([knn[1][knn[0].index(c)] for c in names])
        boot = accuracy_bootstrap(rows, n_resamples=n_draws, confidence=confidence, seed=seed)
        entry.update(knn=boot.accuracy.tolist(), knn_low=boot.low.tolist(), knn_high=boot.high.tolist())
        knn_draws = boot.replicates
    if confusion is not None and all(c in confusion[0] for c in names):
        miou_draws = miou_bootstrap(
            [confusion[1][confusion[0].index(c)] for c in names], n_resamples=n_draws, seed=seed
        ).replicates
    unit, positions = entry_positions(entry)
    entry["verdict"] = degradation_verdict(
        positions,
        entry["miou"],
        entry.get("knn"),
        miou_draws=miou_draws,
        knn_draws=knn_draws,
        loss=training.get("loss"),
        collapse_loss=training.get("collapse_loss"),
        confidence=confidence,
        min_fall=MIN_FALL,
        unit=unit,
    )


def _validation_images(per_checkpoint: list[list[Any]]) -> int:
    """The number of validation images in a confusion table (0 when it is empty)."""
    if not per_checkpoint or not per_checkpoint[0]:
        return 0
    return int(per_checkpoint[0][0].shape[0])


def _nan_none(v: Any) -> float | None:
    f = float(v)
    return f if math.isfinite(f) else None


def _paired_draws(
    rows: list[dict[str, str]],
    init_rows: list[dict[str, str]],
    metrics: list[str],
    replicate_rows: list[dict[str, str]] | None,
    confusion: tuple[list[str], list[list[Any]]] | None,
    n_draws: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray], dict[str, np.ndarray] | None] | None:
    """Paired draws: mIoU of the training checkpoints (R, T) and of the initial weights (R,) or
    None; every metric (R, T); the four DSE terms (R, T) for recomputing λ and the pick. None
    when either side has no replicates."""
    if not replicate_rows or confusion is None:
        return None
    names = [r["checkpoint"] for r in rows]
    conf_names, conf = confusion
    where = {c: i for i, c in enumerate(conf_names)}
    order = [r["checkpoint"] for r in init_rows[:1]] + names
    if any(c not in where for c in order):
        return None
    boot = miou_bootstrap([conf[where[c]] for c in order], n_resamples=n_draws, seed=seed)
    y_init = boot.replicates[:, 0] if init_rows else None
    y = boot.replicates[:, 1:] if init_rows else boot.replicates  # (R, T)
    reps: dict[str, dict[int, dict[str, float]]] = {}
    for r in replicate_rows:
        reps.setdefault(r["checkpoint"], {})[int(r["replicate"])] = {k: to_float(v) for k, v in r.items()}
    if any(c not in reps for c in names):
        return None
    k_reps = min(len(reps[c]) for c in names)
    if k_reps < 2:
        return None
    pick = np.random.default_rng([seed, 0x5E1EC7]).integers(0, k_reps, size=y.shape[0])
    metric_draws: dict[str, np.ndarray] = {}
    for m in [*metrics, *_TERMS4]:
        if m == "dse" or any(m not in reps[c][0] for c in names):
            continue
        rep_m = np.array([[reps[c][k][m] for c in names] for k in range(k_reps)])  # (K, T)
        point = np.array([to_float(r[m]) for r in rows])
        metric_draws[m] = half_sample_draws(point, rep_m)[pick]
    terms = {t: metric_draws[t] for t in _TERMS4} if all(t in metric_draws for t in _TERMS4) else None
    if terms is not None and "dse" in metrics:
        metric_draws["dse"] = np.stack([_calibrated(terms, b) for b in range(y.shape[0])])
    metric_draws = {m: metric_draws[m] for m in metrics if m in metric_draws}
    return y, y_init, metric_draws, terms


def _calibrated(terms: dict[str, np.ndarray], b: int) -> np.ndarray:
    """The calibrated DSE curve of draw ``b`` (λ recomputed from the draw's own terms)."""
    return calibrate(*[terms[t][b] for t in _TERMS4]).dse


def _selection_draws(terms: dict[str, np.ndarray], y: np.ndarray, window: int, top: int) -> dict[str, np.ndarray]:
    """Per draw: DSE's pick, its gain over the last checkpoint and its gap to the best (mIoU of the draw)."""
    out = {k: np.empty(y.shape[0]) for k in ("pick", "gain_top1_vs_last", "gap_top1_to_best")}
    for b in range(y.shape[0]):
        p = select_checkpoints(_calibrated(terms, b), window=window, top=top).selected[0]
        out["pick"][b] = p
        out["gain_top1_vs_last"][b] = y[b, p] - y[b, -1]
        out["gap_top1_to_best"][b] = y[b, p] - y[b].max()
    return out


def _curve_summary(
    entry: dict[str, Any],
    draws: tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray], dict[str, np.ndarray] | None] | None,
    confidence: float,
) -> dict[str, Any]:
    """Untrained, first, best and last mIoU and their differences (paired intervals when drawn)."""
    miou = np.asarray(entry["miou"])
    best = int(np.argmax(miou))
    out: dict[str, Any] = {
        "best_index": best,
        "first": float(miou[0]),
        "best": float(miou[best]),
        "last": float(miou[-1]),
        "untrained": entry["init"]["miou"] if entry["init"] else None,
    }
    trained = None if draws is None else draws[0]
    y_init = None if draws is None else draws[1]
    has_init = entry["init"] is not None
    pairs = {"best_minus_first": (best, 0), "best_minus_last": (best, len(miou) - 1)}
    for name, (i, j) in pairs.items():
        out[name] = float(miou[i] - miou[j])
        if trained is not None:
            lo, hi = percentile_interval(trained[:, i] - trained[:, j], confidence)
            out[f"{name}_low"], out[f"{name}_high"] = _nan_none(lo), _nan_none(hi)
    if has_init:
        out["best_minus_untrained"] = float(miou[best] - entry["init"]["miou"])
        if trained is not None and y_init is not None:
            lo, hi = percentile_interval(trained[:, best] - y_init, confidence)
            out["best_minus_untrained_low"], out["best_minus_untrained_high"] = _nan_none(lo), _nan_none(hi)
    return out


def _class_table(class_rows: list[dict[str, str]], names: list[str], init: dict[str, Any] | None) -> dict[str, Any]:
    """class name -> IoU, low, high per checkpoint (in ``names`` order), and the untrained value."""
    by = {(r["checkpoint"], r["class_name"]): r for r in class_rows}
    classes = list(dict.fromkeys(r["class_name"] for r in sorted(class_rows, key=lambda r: int(r["class_id"]))))
    out: dict[str, Any] = {}
    for c in classes:

        def get(ck: str, k: str, c: str = c) -> float:
            return to_float(by[(ck, c)][k]) if (ck, c) in by else math.nan

        out[c] = {
            "iou": [get(n, "iou") for n in names],
            "low": [get(n, "iou_low") for n in names],
            "high": [get(n, "iou_high") for n in names],
            "untrained": get(init["checkpoint"], "iou") if init else None,
        }
    return out


# --------------------------------------------------------------------------- writing


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _layer_correlations(
    out: Path, unit: str, window: int, top: int, confidence: float
) -> dict[str, list[dict[str, Any]]]:
    """Per dataset, per block of a layer map (``dse_layers.csv`` from ``scan --layers`` and
    ``probe_layers.csv`` from ``probe --layers``): τ and ρ of the block's DSE with its mIoU, with
    intervals from the block's replicates and confusions, and what selecting by that DSE gives."""
    if not ((out / "dse_layers.csv").is_file() and (out / "probe_layers.csv").is_file()):
        return {}
    value_cols = [*_TERMS4, "dse_raw", "dse"]
    dse_all = read_table(
        out / "dse_layers.csv", ("checkpoint", unit, "layer", *value_cols), (unit, "layer", *value_cols)
    )
    probe_all = read_table(
        out / "probe_layers.csv",
        ("checkpoint", unit, "dataset", "layer", "miou"),
        (unit, "layer", "miou", "pixel_accuracy", "miou_low", "miou_high"),
    )
    reps_path = out / "dse_layers_replicates.csv"
    reps_all = read_table(reps_path, ("checkpoint", "layer", "replicate")) if reps_path.is_file() else []
    result: dict[str, list[dict[str, Any]]] = {}
    for ds in sorted({r["dataset"] for r in probe_all}):
        safe = file_name_part(ds)
        entries = []
        for b in sorted({int(r["layer"]) for r in probe_all if r["dataset"] == ds}):
            dse_rows = [{k: r[k] for k in ("checkpoint", unit, *value_cols)} for r in dse_all if int(r["layer"]) == b]
            probe_rows = [r for r in probe_all if r["dataset"] == ds and int(r["layer"]) == b]
            reps = [r for r in reps_all if int(r["layer"]) == b] or None
            conf_path = out / f"probe_{safe}_layer{b}_confusion.npz"
            conf = read_confusion_table(conf_path) if conf_path.is_file() else None
            if not dse_rows or not probe_rows:
                continue
            e = _dataset_entry(ds, dse_rows, probe_rows, value_cols, window, top, reps, conf, None, confidence, 1000, 0)
            if e is None:
                continue
            c, sel = e["correlation"]["dse"], e.get("selection") or {}
            entries.append(
                {
                    "layer": b,
                    "kendall_tau": c["kendall_tau"],
                    "tau_low": c.get("tau_low"),
                    "tau_high": c.get("tau_high"),
                    "spearman_rho": c["spearman_rho"],
                    "best_miou": max(e["miou"]),
                    "last_miou": e["miou"][-1],
                    "dse_pick_miou": sel.get("top1_miou"),
                    "intervals": e["intervals"],
                }
            )
        if entries:
            result[ds] = entries
    return result


def _training(out: Path) -> dict[str, Any]:
    """The training loss per epoch and its collapse value, of the run the scan in ``out`` read
    (``run.json``'s run folder: its ``log.txt`` and ``dsekit.json``); {} when unknown."""
    try:
        run_dir = Path(json.loads((out / "run.json").read_text())["settings"]["run_dir"])
        settings = read_run_info(run_dir).get("settings", {})
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    log = read_training_log(run_dir)
    return {
        "loss": [float(e.get("loss_ssl", e.get("loss", float("nan")))) for e in log],
        "collapse_loss": collapse_loss(settings),
    }


def _csv_unit(path: Path) -> str:
    """``"step"`` when the table at ``path`` has a ``step`` column and no ``epoch`` column."""
    header = table_header(path)
    return "step" if "step" in header and "epoch" not in header else "epoch"


def write_report(out_dir: str | Path, *, window: int = 2, top: int = 3, confidence: float = 0.95) -> dict[str, Any]:
    """Read ``dse.csv``, ``probe.csv`` and (when present) ``dse_replicates.csv``,
    ``probe_<dataset>_confusion.npz`` and ``probe_<dataset>_classes.csv`` in ``out_dir``;
    write report.md, report.json and PNGs."""
    out = Path(out_dir)
    unit = _csv_unit(out / "dse.csv")
    dse_rows = read_table(
        out / "dse.csv",
        ("checkpoint", unit),
        numeric_columns(out / "dse.csv", ("checkpoint", "partial")),
        finite=[c for c in (*TERM_LABELS, "dse_raw", "dse") if c in table_header(out / "dse.csv")],
        known=DSE_TABLE_COLUMNS,
    )
    probe_unit = _csv_unit(out / "probe.csv")
    if (out / "probe.csv").is_file() and probe_unit != unit:
        raise ValueError(
            f"{out / 'probe.csv'} counts {probe_unit}s where {out / 'dse.csv'} counts {unit}s: "
            "they are not of the same run"
        )
    probe_rows = read_table(
        out / "probe.csv",
        ("checkpoint", unit, "dataset", "miou"),
        (unit, "miou", "pixel_accuracy", "miou_low", "miou_high", "heads", "knn_top1", "knn_low", "knn_high"),
        finite=("miou",),
        known=PROBE_TABLE_COLUMNS,
    )
    replicates = (
        read_table(
            out / "dse_replicates.csv",
            ("checkpoint", "replicate"),
            numeric_columns(out / "dse_replicates.csv", ("checkpoint",)),
        )
        if (out / "dse_replicates.csv").is_file()
        else None
    )
    confusions, classes, knn = {}, {}, {}
    for ds in {r["dataset"] for r in probe_rows}:
        safe = file_name_part(ds)
        if (out / f"probe_{safe}_confusion.npz").is_file():
            path = out / f"probe_{safe}_confusion.npz"
            table = read_confusion_table(path)
            n = _validation_images(table[1])
            if n < 2:  # mIoU is reported, its intervals cannot be
                warnings.warn(
                    f"{path}: {n} validation image(s); the mIoU intervals (a bootstrap over the images) need "
                    "at least 2, so the report gives them empty",
                    stacklevel=2,
                )
            else:
                confusions[ds] = table
        if (out / f"probe_{safe}_classes.csv").is_file():
            classes[ds] = read_table(out / f"probe_{safe}_classes.csv")
        if (out / f"probe_{safe}_knn.npz").is_file():
            names, correct = read_knn_table(out / f"probe_{safe}_knn.npz")
            if correct.ndim == 2 and correct.shape[1] >= 2:
                knn[ds] = (names, correct)
            else:
                warnings.warn(
                    f"{out / f'probe_{safe}_knn.npz'}: fewer than 2 validation images; the k-NN curve needs at "
                    "least 2 for its intervals and is left out",
                    stacklevel=2,
                )
    report = build_report(
        dse_rows,
        probe_rows,
        window=window,
        top=top,
        replicate_rows=replicates,
        confusions=confusions,
        class_rows=classes,
        confidence=confidence,
        knn_tables=knn,
        training=_training(out),
    )
    layers = _layer_correlations(out, unit, window, top, confidence)
    if layers:
        report["layers"] = layers
    for ds, entry in report["datasets"].items():
        plot_metrics_vs_miou(entry, ds, out / f"report_{ds}.png")
        plot_curves(entry, ds, out / f"curves_{ds}.png")
        if entry.get("classes"):
            plot_classes(entry, ds, out / f"classes_{ds}.png")
    write_json_atomic(out / "report.json", _json_safe(report))
    write_text_atomic(out / "report.md", markdown(report))
    return report
