#!/usr/bin/env python
"""The demo's configuration over several training seeds: τ of every metric per seed, and the
mean across seeds with its 95 % interval (Student t over the seeds: the run-to-run variation
that a single run's bootstrap intervals do not contain).

Each seed is a full ``dsekit demo --seed S`` (training seed S; the scan, probe and report keep
seed 0, so every run is scored on the same images and resamples). Runs already done are reused.

Usage::

    python examples/demo_seeds.py --out runs/seeds [--seeds 0 1 2] [--quick] [--markdown table.md]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from dsekit.demo import DemoConfig, demo


def _mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    from scipy.stats import t

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else math.nan), math.nan, math.nan
    half = float(t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/seeds"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args(argv)
    per_seed = {}
    for seed in args.seeds:
        report = demo(DemoConfig(out=str(args.out / f"seed{seed}"), seed=seed, quick=args.quick), progress=False)
        entry = report["datasets"]["scenes"]
        per_seed[seed] = {
            "tau": {m: c["kendall_tau"] for m, c in entry["correlation"].items()},
            "tau_low": {m: c.get("tau_low") for m, c in entry["correlation"].items()},
            "tau_high": {m: c.get("tau_high") for m, c in entry["correlation"].items()},
            "verdict": report.get("verdict"),
            "best_minus_last": entry["curve"]["best_minus_last"],
            "pick_minus_last": entry["selection"]["gain_top1_vs_last"],
        }
        print(f"seed {seed}: verdict {report.get('verdict')}; τ(dse) {per_seed[seed]['tau']['dse']:+.2f}", flush=True)
    metrics = list(next(iter(per_seed.values()))["tau"])
    header = "| metric | " + " | ".join(f"τ seed {s} [95 %]" for s in args.seeds) + " | mean over seeds [95 %, t] |"
    lines = [header, "|" + "---|" * (len(args.seeds) + 2)]
    summary = {}
    for m in metrics:
        cells = []
        for s in args.seeds:
            d = per_seed[s]
            lo, hi = d["tau_low"][m], d["tau_high"][m]
            cells.append(f"{d['tau'][m]:+.2f}" + (f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None else ""))
        mean, lo, hi = _mean_interval([per_seed[s]["tau"][m] for s in args.seeds])
        summary[m] = {"mean": mean, "low": lo, "high": hi}
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] |")
    table = "\n".join(lines)
    print(table)
    (args.out / "seeds.json").write_text(json.dumps({"per_seed": per_seed, "mean": summary}, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
