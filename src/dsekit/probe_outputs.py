"""The probe's output files (``probe.csv``, ``probe_<dataset>_classes.csv``, the confusion and
k-NN tables, ``probe_<dataset>.json``) and its printed summary, from the per-checkpoint results."""

from __future__ import annotations

import csv
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table

from .backbones import checkpoint_label, get_adapter
from .io import write_confusion_table, write_knn_table
from .layer_map import write_probe_layers
from .metrics.intervals import miou_bootstrap
from .metrics.knn import accuracy_bootstrap
from .runtime import file_name_part, library_versions, write_csv_atomic, write_json_atomic

if TYPE_CHECKING:
    from .probe import CheckpointProbe, ProbeConfig

__all__ = ["PROBE_COLUMNS", "KNN_COLUMNS", "CLASS_COLUMNS", "write_outputs", "print_summary"]

PROBE_COLUMNS = ("checkpoint", "epoch", "dataset", "miou", "pixel_accuracy", "miou_low", "miou_high", "heads")
#: probe.csv's image-level columns (k-NN top-1 accuracy and its interval), when the dataset has image labels
KNN_COLUMNS = ("knn_top1", "knn_low", "knn_high")
CLASS_COLUMNS = ("checkpoint", "epoch", "class_id", "class_name", "iou", "iou_low", "iou_high")


def _fmt(v: float | None) -> str:
    return repr(float(v)) if v is not None and math.isfinite(v) else ""


def write_outputs(
    cfg: ProbeConfig,
    results: list[CheckpointProbe],
    confusions: dict[str, list[Any]],
    layer_confusions: dict[str, dict[int, list[Any]]],
    label: str,
    train_split: str,
    train_ds: Any,
    val_ds: Any,
    cache_stats: dict[str, int],
    key: str,
    out: Path,
    run_timings: dict[str, float],
) -> None:
    """Write every output file of one probed dataset into ``out``."""
    ok = [r for r in results if r.status == "ok"]
    safe = file_name_part(label)
    boot = (
        miou_bootstrap([confusions[r.checkpoint] for r in ok], confidence=cfg.confidence, seed=cfg.seed)
        if ok and ok[0].num_val >= 2
        else None
    )
    unit = get_adapter(cfg.method).unit
    columns = [unit if c == "epoch" else c for c in PROBE_COLUMNS]
    rows: list[dict[str, str]] = []
    csv_path = out / "probe.csv"
    if csv_path.is_file():  # keep the rows of the other datasets, with every column they have
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames and "dataset" in reader.fieldnames:
                columns += [c for c in reader.fieldnames if c not in columns and c]
                rows = [dict(r) for r in reader if r.get("dataset") != label]
    knn = [r for r in ok if r.knn_correct]
    kboot = None
    if knn and len(knn) == len(ok) and len({len(r.knn_correct) for r in ok}) == 1 and len(ok[0].knn_correct) >= 2:
        kboot = accuracy_bootstrap(np.array([r.knn_correct for r in ok]), confidence=cfg.confidence, seed=cfg.seed)
        write_knn_table(out / f"probe_{safe}_knn.npz", [r.checkpoint for r in ok], [r.knn_correct for r in ok])
    for t, r in enumerate(ok):
        rows.append(
            {
                "checkpoint": r.checkpoint,
                unit: "" if r.epoch is None else str(r.epoch),
                "dataset": label,
                "miou": _fmt(r.miou),
                "pixel_accuracy": _fmt(r.pixel_accuracy),
                "miou_low": _fmt(boot.low[t]) if boot else "",
                "miou_high": _fmt(boot.high[t]) if boot else "",
                "heads": str(len(r.head_miou) or 1),
                "partial": "yes" if r.partial else "",
                "knn_top1": _fmt(r.knn_top1) if r.knn_correct else "",
                "knn_low": _fmt(kboot.low[t]) if kboot else "",
                "knn_high": _fmt(kboot.high[t]) if kboot else "",
            }
        )
    if kboot is not None:
        columns += [c for c in KNN_COLUMNS if c not in columns]
    if any(r.partial for r in ok) and "partial" not in columns:
        columns.append("partial")
    write_csv_atomic(out / "probe.csv", columns, rows)
    names = list(getattr(train_ds, "class_names", ()))
    class_rows = []
    for t, r in enumerate(ok):
        for c, v in enumerate(r.iou):
            class_rows.append(
                {
                    "checkpoint": r.checkpoint,
                    unit: "" if r.epoch is None else str(r.epoch),
                    "class_id": str(c),
                    "class_name": names[c] if c < len(names) else str(c),
                    "iou": _fmt(v),
                    "iou_low": _fmt(boot.iou_low[t, c]) if boot else "",
                    "iou_high": _fmt(boot.iou_high[t, c]) if boot else "",
                }
            )
    write_csv_atomic(
        out / f"probe_{safe}_classes.csv", [unit if c == "epoch" else c for c in CLASS_COLUMNS], class_rows
    )
    write_confusion_table(
        out / f"probe_{safe}_confusion.npz", [r.checkpoint for r in ok], [confusions[r.checkpoint] for r in ok]
    )
    if any(r.layers for r in ok):
        write_probe_layers(ok, layer_confusions, label, unit, out, cfg.confidence, cfg.seed)
    record = {
        "settings": {**asdict(cfg), "train_split": train_split},
        "unit": unit,
        "dataset": label,
        "result_key": key,
        "versions": library_versions(),
        "data": {
            "train": train_ds.record() if hasattr(train_ds, "record") else {"n": len(train_ds)},
            "val": val_ds.record() if hasattr(val_ds, "record") else {"n": len(val_ds)},
            "class_names": list(getattr(train_ds, "class_names", ())),
        },
        "cache": cache_stats,
        "timings": run_timings,
        "checkpoints": [asdict(r) for r in results],
    }
    write_json_atomic(out / f"probe_{safe}.json", record)


def print_summary(console: Any, results: list[CheckpointProbe], label: str, unit: str = "epoch") -> None:
    """The per-checkpoint table a probe prints (mIoU, pixel accuracy, timings) and its failures."""
    table = Table(title=f"linear probe on {label}")
    for col in ("checkpoint", unit, "mIoU", "pixel acc.", "extract s", "head s"):
        table.add_column(col, justify="left" if col == "checkpoint" else "right")
    for r in results:
        if r.status == "ok":
            table.add_row(
                checkpoint_label(r.checkpoint),
                str(r.epoch),
                f"{r.miou:.4f}",
                f"{r.pixel_accuracy:.4f}",
                f"{r.timings.get('extract', float('nan')):.1f}",
                f"{r.timings.get('head_train', float('nan')):.1f}",
            )
        else:
            table.add_row(checkpoint_label(r.checkpoint), str(r.epoch), "failed", "", "", "")
    console.print(table)
    for r in results:
        if r.status != "ok":
            console.print(f"[red]failed[/red] {checkpoint_label(r.checkpoint)}: {r.error}")
