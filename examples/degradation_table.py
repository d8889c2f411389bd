"""Summarise the reports of ``examples/degradation.sh``: one row per run, then per-class IoU.

    python examples/degradation_table.py RUN/run/dse/report.json [...]

Prints two Markdown tables. The first: the mIoU of the untrained network and of the first,
best and last checkpoints, the differences best − untrained, best − first and best − last,
Kendall τ of DSE and of each baseline with mIoU, and DSE's selection gain over the last
checkpoint — each with its 95 % interval from the report. The second: per-class IoU at the
best and the last checkpoint of every run.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

METRICS = ("dse", "dse_raw", "rankme", "alpha_req", "dense_rankme", "lidar")


def _ci(lo: float | None, hi: float | None, scale: float = 100.0, spec: str = "+.1f") -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    return f" [{format(scale * lo, spec)}, {format(scale * hi, spec)}]"


def _run_name(path: Path) -> str:
    return path.parents[2].name  # OUT/<run>/run/dse/report.json


def row(path: Path) -> list[str]:
    report = json.loads(path.read_text())
    e = report["datasets"]["scenes"]
    c, sel, ep = e["curve"], e["selection"], e["epochs"]
    out = [
        _run_name(path),
        "n/a" if c["untrained"] is None else f"{100 * c['untrained']:.1f}",
        f"{100 * c['first']:.1f}",
        f"{100 * c['best']:.1f} (ep {ep[c['best_index']]})",
        f"{100 * c['last']:.1f}",
    ]
    for k in ("best_minus_untrained", "best_minus_first", "best_minus_last"):
        v = c.get(k)
        out.append("n/a" if v is None else f"{100 * v:+.1f}{_ci(c.get(k + '_low'), c.get(k + '_high'))}")
    for name in METRICS:
        r = e["correlation"].get(name)
        tau = None if r is None else r.get("kendall_tau")
        out.append("—" if tau is None else f"{tau:+.2f}{_ci(r.get('tau_low'), r.get('tau_high'), 1.0, '+.2f')}")
    out.append(
        f"{100 * sel['top1_miou']:.1f} (ep {ep[sel['top1_index']]}), "
        f"{100 * sel['gain_top1_vs_last']:+.1f}{_ci(sel.get('gain_top1_vs_last_low'), sel.get('gain_top1_vs_last_high'))}"
    )
    return out


def class_rows(path: Path) -> list[list[str]]:
    e = json.loads(path.read_text())["datasets"]["scenes"]
    best, last = e["curve"]["best_index"], len(e["miou"]) - 1
    rows = []
    for name, k in (e.get("classes") or {}).items():

        def cell(i: int, k: dict = k) -> str:
            v = k["iou"][i]
            return "n/a" if v is None else f"{100 * v:.1f}"

        rows.append(
            [
                _run_name(path),
                name,
                "n/a" if k["untrained"] is None else f"{100 * k['untrained']:.1f}",
                cell(best),
                cell(last),
            ]
        )
    return rows


def _table(head: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def main(paths: list[str]) -> None:
    if not paths:
        sys.exit("usage: python examples/degradation_table.py RUN/run/dse/report.json [...]")
    _table(
        [
            "run",
            "untrained",
            "first",
            "best",
            "last",
            "best − untrained",
            "best − first",
            "best − last",
            *(f"τ {m}" for m in METRICS),
            "DSE pick, pick − last",
        ],
        [row(Path(p)) for p in paths],
    )
    print()
    _table(["run", "class", "untrained", "IoU at best", "IoU at last"], [r for p in paths for r in class_rows(Path(p))])


if __name__ == "__main__":
    main(sys.argv[1:])
