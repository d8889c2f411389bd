#!/usr/bin/env python
"""How fast the command line answers: ``dsekit --help``, ``dsekit scan --help``, ``dsekit
--version`` and an argument error, each a fresh process, against the same commands with the
library imported first as the command line used to import it before its handlers imported the
work (torch, the data packages, scan, probe, report, demo and the trainer at start-up).

Both are timed in one run, alternately, ``--repeats`` times each; medians are reported with
their ratio. Target: at most 0.5 s for each of the four, at idle.

Usage::

    python bench/cli_startup.py [--repeats 7] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import load_average

TARGET_S = 0.5
CASES = {
    "dsekit --help": ["--help"],
    "dsekit scan --help": ["scan", "--help"],
    "dsekit --version": ["--version"],
    "argument error": ["scan", "RUN", "--method", "dino", "--num-images", "0"],
}
#: what the command line imported at start-up before (its module tops)
EAGER = (
    "import torch, rich.console, dsekit.data.scenes, dsekit.demo, dsekit.io, dsekit.metrics.dse, dsekit.report, "
    "dsekit.scan, dsekit.probe, dsekit.train.ssl; "
)


def _run(argv: list[str], eager: bool) -> float:
    code = (
        "import sys; "
        + (EAGER if eager else "")
        + "from dsekit.cli import main; sys.argv = ['dsekit'] + sys.argv[1:]; "
        "raise SystemExit(main(sys.argv[1:]))"
    )
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; load average (1/5/15 min) {load_average()}"
    )
    rows = []
    for name, cmd in CASES.items():
        times: dict[bool, list[float]] = {False: [], True: []}
        _run(cmd, False), _run(cmd, True)  # warm the file-system cache
        for _ in range(args.repeats):
            for eager in (False, True):
                times[eager].append(_run(cmd, eager))
        now, before = statistics.median(times[False]), statistics.median(times[True])
        rows.append({"case": name, "now_s": now, "eager_s": before, "ratio": before / now})
    print(f"\n{'command':<22} {'now s':>7} {'eager imports s':>16} {'eager / now':>12}  target <= {TARGET_S} s")
    for r in rows:
        verdict = "met" if r["now_s"] <= TARGET_S else "NOT met"
        print(f"{r['case']:<22} {r['now_s']:>7.3f} {r['eager_s']:>16.3f} {r['ratio']:>11.1f}x  {verdict}")
    print(f"(medians of {args.repeats} fresh processes each, alternated; load average now {load_average()})")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "repeats": args.repeats, "load": load_average()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
