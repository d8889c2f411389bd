"""Summarise the reports of ``examples/degradation.sh``: one row per run.

    python examples/degradation_table.py RUN/dse/report.json [...]

Prints a Markdown table: the mIoU curve (first, peak with its epoch, last), Kendall τ of DSE
and of each baseline with mIoU across checkpoints, and the mIoU of DSE's top-1 pick against
the last checkpoint and the best one in hindsight.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METRICS = ("dse", "rankme", "alpha_req", "dense_rankme", "lidar")


def row(path: Path) -> list[str]:
    report = json.loads(path.read_text())
    entry = report["datasets"]["scenes"]
    miou, epochs, sel = entry["miou"], entry["epochs"], entry["selection"]
    peak = max(range(len(miou)), key=miou.__getitem__)
    taus = []
    for name in METRICS:
        tau = entry["correlation"].get(name, {}).get("kendall_tau")
        taus.append("—" if tau is None or tau != tau else f"{tau:+.2f}")
    pick = sel["top1_index"]
    return [
        path.parent.parent.name,
        f"{100 * miou[0]:.1f}",
        f"{100 * miou[peak]:.1f} (ep {epochs[peak]})",
        f"{100 * miou[-1]:.1f}",
        *taus,
        f"{100 * sel['top1_miou']:.1f} (ep {epochs[pick]})",
        f"{100 * sel['gain_top1_vs_last']:+.1f}",
        f"{100 * sel['gap_top1_to_best']:+.1f}",
    ]


def main(paths: list[str]) -> None:
    if not paths:
        sys.exit("usage: python examples/degradation_table.py RUN/dse/report.json [...]")
    head = ["run", "mIoU first", "mIoU peak", "mIoU last", *(f"τ {m}" for m in METRICS),
            "DSE pick mIoU", "pick − last", "pick − best"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for p in paths:
        print("| " + " | ".join(row(Path(p))) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
