#!/usr/bin/env python
"""One table from the JSON files ``bench/gpu.sh`` writes into ``OUT``: each GPU figure, its target
and the verdict; a missing or failed part shows as "not measured".

    python bench/gpu_table.py OUT
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from _targets import GPU_DSE_RATIO_B1024, GPU_DSE_SECONDS_B1024, GPU_EXTRACTION, GPU_REGULARISER_SHARE


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "NOT met")


def _s(v: float | None) -> str:
    return "—" if v is None else (f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s")


def rows(out: Path) -> list[list[str]]:
    """``[what, measured, target, verdict]`` per figure."""
    table: list[list[str]] = []
    dse = _load(out / "dse.json")
    cells = {e["B"]: e for e in (dse or {}).get("timings", []) if e["device"] == "cuda"}
    for B in (256, 1024, 4096):
        e = cells.get(B)
        if e is None:
            table.append([f"DSE, B = {B}", "not measured", "", ""])
            continue
        ratio = (
            f", {e['ratio']:.0f}x the reference ({_s(e['reference_s'])})"
            if e.get("ratio")
            else (f", reference: {e['note'] or 'not run'}")
        )
        target, verdict = "", ""
        if B == 1024:
            target = f"<= {GPU_DSE_SECONDS_B1024:g} s and >= {GPU_DSE_RATIO_B1024:g}x"
            ok_r = None if not e.get("ratio") else e["ratio"] >= GPU_DSE_RATIO_B1024
            ok = e["dsekit_s"] <= GPU_DSE_SECONDS_B1024 and ok_r is not False
            verdict = _verdict(ok) + ("" if ok_r is not None else " (ratio not measured)")
        table.append([f"DSE, B = {B} ({e['input']})", f"{_s(e['dsekit_s'])}{ratio}", target, verdict])

    scan = _load(out / "scan.json")
    gpu = (scan or {}).get("gpu")
    if gpu:
        table.append(
            [
                f"scan extraction, batch {gpu['batch_size']}",
                f"{gpu['dsekit_images_per_s']:.0f} img/s vs timm {gpu['timm_images_per_s']:.0f} img/s "
                f"({100 * gpu['ratio']:.1f} %)",
                f">= {100 * GPU_EXTRACTION:.0f} %",
                _verdict(gpu["ratio"] >= GPU_EXTRACTION),
            ]
        )
    else:
        table.append(["scan extraction vs timm", "not measured", f">= {100 * GPU_EXTRACTION:.0f} %", ""])

    reg = _load(out / "regularizer.json")
    fb = [t for t in (reg or {}).get("forward_backward", {}).get("cuda", []) if t["name"] == "dsekit DSERegularizer"]
    ref = [
        t for t in (reg or {}).get("forward_backward", {}).get("cuda", []) if t["name"] == "reference DSERegularizer"
    ]
    if fb:
        mine = statistics.median(fb[0]["wall"])
        vs = f", reference {_s(statistics.median(ref[0]['wall']))}" if ref and ref[0]["wall"] else ""
        table.append([f"regulariser forward + backward, {tuple(reg['shape'])}", f"{_s(mine)}{vs}", "", ""])
    steps = [s for s in (reg or {}).get("training_step", []) if s["device"].startswith("cuda")]
    if steps:
        s = steps[0]
        table.append(
            [
                f"regulariser share of a {s['arch']} step (batch {s['batch']})",
                f"{100 * s['share']:.1f} % (alone {100 * s['alone_share']:.1f} %)",
                f"<= {100 * GPU_REGULARISER_SHARE:.0f} %",
                _verdict(s["share"] <= GPU_REGULARISER_SHARE),
            ]
        )
    else:
        table.append(
            ["regulariser share of a training step", "not measured", f"<= {100 * GPU_REGULARISER_SHARE:.0f} %", ""]
        )

    probe = _load(out / "probe.json")
    res = [r for r in (probe or {}).get("results", []) if str(r.get("device", "")).startswith("cuda")]
    if res:
        t = res[0]["times"]
        table.append(
            [
                "probe head epoch on cached features",
                f"{_s(t['cached_epoch'])} vs {_s(t['backbone_epoch'])} through the backbone ({res[0]['ratio']:.1f}x)",
                "",
                "",
            ]
        )
    else:
        table.append(["probe head epoch on cached features", "not measured", "", ""])
    return table


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python bench/gpu_table.py OUT", file=sys.stderr)
        return 2
    out = Path(args[0])
    gpu = (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").is_file() else "GPU: unknown"
    table = rows(out)
    widths = [max(len(r[i]) for r in table + [["what", "measured", "target", "verdict"]]) for i in range(4)]
    print(f"GPU benchmarks ({gpu})")
    for r in [["what", "measured", "target", "verdict"], ["-" * w for w in widths], *table]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
