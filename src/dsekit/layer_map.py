"""The layer map of a scan (and a probe): DSE and mIoU of several blocks of every checkpoint,
from one forward pass.

``dsekit scan --layers all|LIST`` scores each chosen block of each checkpoint (the five terms and
their half-sample intervals, as the scan's own layer) and writes, beside ``dse.csv``:

* ``dse_layers.csv``: one row per checkpoint and block (``checkpoint, epoch|step, layer``, the
  five terms, ``dse``, ``dse_map``, then ``<column>_low`` / ``<column>_high``);
* ``dse_layers_replicates.csv``: the half-sample values behind those intervals;
* ``layers.json``: λ per block, the map's λ, and the best block of every checkpoint;
* ``dse_layers.png``: the heat map (checkpoint × block) of ``dse_map``, each checkpoint's best
  block marked.

``dsekit probe --layers LIST`` trains the probe's heads on each chosen block too and writes
``probe_layers.csv`` (``checkpoint, epoch|step, dataset, layer, miou, pixel_accuracy, miou_low,
miou_high``; other datasets' rows kept) and ``probe_<dataset>_layer<k>_confusion.npz`` (the
per-image confusions behind the intervals), from which the report correlates DSE with mIoU
block by block.

Two calibrations, because they answer two questions. ``dse`` is the paper's DSE of one block's
curve: λ = std(S) / std(M_dim) over that block's checkpoints, so τ(dse, mIoU) per block is the
paper's statistic for that block. ``dse_map`` puts every cell on one scale, λ computed once over
all (checkpoint, block) cells, so that blocks can be compared: the best block of a checkpoint is
the one with the largest ``dse_map``. The initial weights (when scored) are shown with both λ but
never enter them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .backbones import num_feature_layers
from .io import write_confusion_table
from .metrics.dse import TERMS, calibrated_dse
from .metrics.intervals import half_sample_interval, miou_bootstrap
from .plots import plot_layer_map
from .runtime import file_name_part, write_csv_atomic, write_json_atomic
from .select import calibrate

__all__ = [
    "LAYER_COLUMNS",
    "PROBE_LAYER_COLUMNS",
    "check_layers",
    "resolve_layers",
    "write_layer_map",
    "write_probe_layers",
]

LAYER_COLUMNS = ("checkpoint", "epoch", "layer", *TERMS, "dse", "dse_map")  #: ``epoch`` is ``step`` for step runs
#: columns of ``probe_layers.csv`` (``epoch`` is ``step`` for step runs)
PROBE_LAYER_COLUMNS = ("checkpoint", "epoch", "dataset", "layer", "miou", "pixel_accuracy", "miou_low", "miou_high")


def check_layers(layers: Sequence[int] | str) -> None:
    """``ValueError`` unless ``layers`` is ``"all"``, empty, or a sequence of ints."""
    if layers == "all" or not layers:
        return
    if isinstance(layers, str) or not all(isinstance(v, int) and not isinstance(v, bool) for v in layers):
        raise ValueError(f"layers: expected 'all' or a list of block indices, got {layers!r}")


def resolve_layers(layers: Sequence[int] | str, model: nn.Module) -> list[int]:
    """The blocks of ``layers`` (``"all"``, or indices, negative counting from the end) as
    ascending non-negative indices of ``model``'s blocks; ``ValueError`` naming the range."""
    n = num_feature_layers(model)
    if n is None:
        raise ValueError(f"layers: {type(model).__name__} does not say how many blocks it has")
    if layers == "all":
        return list(range(n))
    bad = [v for v in layers if not -n <= int(v) < n]
    if bad:
        raise ValueError(
            f"layers: {bad} out of range for {type(model).__name__} with {n} blocks (valid: {-n} .. {n - 1})"
        )
    return sorted({int(v) % n for v in layers})


def _cells(results: Sequence[Any]) -> list[tuple[Any, int]]:
    return [(r, int(b)) for r in results for b in sorted(r.layers, key=int)]


def write_layer_map(results: Sequence[Any], init: int, out: Path, unit: str, confidence: float) -> dict[str, Any]:
    """Write the layer map's files (see the module docstring) from scan results with ``layers``;
    ``init`` is the epoch that marks the initial weights. Returns ``layers.json``'s content."""
    cells = _cells(results)
    blocks = sorted({b for _, b in cells})
    trained = [(r, b) for r, b in cells if r.epoch != init]

    def lam_of(pairs: list[tuple[Any, int]]) -> float | None:
        if len(pairs) < 2:
            return None
        return calibrate(*[[r.layers[str(b)]["terms"][t] for r, b in pairs] for t in TERMS[:4]]).lam

    lam_block = {b: lam_of([(r, c) for r, c in trained if c == b]) for b in blocks}
    lam_map = lam_of(trained)
    rows, rep_rows = [], []
    for r, b in cells:
        cell = r.layers[str(b)]
        terms = cell["terms"]
        point = {**terms, "dse": calibrated_dse(terms, lam_block[b]), "dse_map": calibrated_dse(terms, lam_map)}
        reps = {k: np.asarray(v, dtype=np.float64) for k, v in cell.get("replicates", {}).items()}
        if reps and all(t in reps for t in TERMS[:4]):
            k = len(reps[TERMS[0]])
            per = [{t: float(reps[t][i]) for t in TERMS[:4]} for i in range(k)]
            reps["dse"] = np.array([calibrated_dse(p, lam_block[b]) for p in per])
            reps["dse_map"] = np.array([calibrated_dse(p, lam_map) for p in per])
        row: dict[str, Any] = {"checkpoint": r.checkpoint, unit: "" if r.epoch is None else r.epoch, "layer": b}
        row.update({c: repr(float(v)) for c, v in point.items()})
        for c, v in point.items():
            if c in reps and len(reps[c]) >= 2:
                low, high = half_sample_interval(v, reps[c], confidence)
                row[f"{c}_low"] = repr(float(low)) if np.isfinite(low) else ""
                row[f"{c}_high"] = repr(float(high)) if np.isfinite(high) else ""
        rows.append(row)
        for i in range(len(reps.get(TERMS[0], ()))):
            rep_rows.append(
                {
                    "checkpoint": r.checkpoint,
                    "layer": b,
                    "replicate": i,
                    **{t: repr(float(reps[t][i])) for t in TERMS if t in reps},
                }
            )
    value_columns = list(LAYER_COLUMNS[3:])
    columns = [
        "checkpoint",
        unit,
        "layer",
        *value_columns,
        *[f"{c}_{s}" for c in value_columns for s in ("low", "high")],
    ]
    write_csv_atomic(out / "dse_layers.csv", columns, rows)
    write_csv_atomic(out / "dse_layers_replicates.csv", ["checkpoint", "layer", "replicate", *TERMS], rep_rows)
    best = []
    for r in results:
        if not r.layers:
            continue
        scores = {int(b): calibrated_dse(c["terms"], lam_map) for b, c in r.layers.items()}
        top = max(scores, key=lambda b: scores[b])
        best.append({"checkpoint": r.checkpoint, unit: r.epoch, "layer": top, "dse_map": scores[top]})
    record = {
        "unit": unit,
        "layers": blocks,
        "lambda": {str(b): lam for b, lam in lam_block.items()},
        "lambda_map": lam_map,
        "best_layer": best,
    }
    write_json_atomic(out / "layers.json", record)
    grid = np.full((len(blocks), len([r for r in results if r.layers])), np.nan)
    shown = [r for r in results if r.layers]
    for j, r in enumerate(shown):
        for b, c in r.layers.items():
            grid[blocks.index(int(b)), j] = calibrated_dse(c["terms"], lam_map)
    x = [r.epoch if r.epoch is not None and r.epoch != init else "init" for r in shown]
    plot_layer_map(grid, blocks, x, [blocks.index(b["layer"]) for b in best], out / "dse_layers.png", unit=unit)
    return record


def write_probe_layers(
    results: Sequence[Any],
    confusions: dict[str, dict[int, list[Any]]],
    dataset: str,
    unit: str,
    out: Path,
    confidence: float,
    seed: int,
) -> None:
    """``probe_layers.csv`` and the per-block confusion files of a probe with ``layers`` (see the
    module docstring); ``confusions``: checkpoint -> block -> per-head per-image confusions."""
    ok = [r for r in results if r.layers]
    blocks = sorted({int(b) for r in ok for b in r.layers})
    safe = file_name_part(dataset)
    columns = [unit if c == "epoch" else c for c in PROBE_LAYER_COLUMNS]
    rows = [r for r in _read_rows(out / "probe_layers.csv") if r.get("dataset") != dataset]
    for b in blocks:
        have = [r for r in ok if str(b) in r.layers]
        tables = [confusions[r.checkpoint][b] for r in have]
        write_confusion_table(out / f"probe_{safe}_layer{b}_confusion.npz", [r.checkpoint for r in have], tables)
        boot = miou_bootstrap(tables, confidence=confidence, seed=seed) if have and have[0].num_val >= 2 else None
        for t, r in enumerate(have):
            cell = r.layers[str(b)]
            rows.append(
                {
                    "checkpoint": r.checkpoint,
                    unit: "" if r.epoch is None else str(r.epoch),
                    "dataset": dataset,
                    "layer": str(b),
                    "miou": _number(cell["miou"]),
                    "pixel_accuracy": _number(cell["pixel_accuracy"]),
                    "miou_low": _number(boot.low[t]) if boot else "",
                    "miou_high": _number(boot.high[t]) if boot else "",
                }
            )
    write_csv_atomic(out / "probe_layers.csv", columns, rows)


def _number(v: Any) -> str:
    return repr(float(v)) if v is not None and np.isfinite(v) else ""


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    import csv

    with open(path, newline="") as f:
        return [dict(r) for r in csv.DictReader(f)]
