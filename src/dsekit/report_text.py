"""The report's text: ``report.md`` from the report dict of :func:`dsekit.report.build_report`,
and the sentence on DSE's selection that the demo prints too."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .plots import entry_positions

__all__ = ["ci", "fmt", "markdown", "pct", "selection_sentence"]


def fmt(v: float, spec: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def pct(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


def ci(lo: float | None, hi: float | None, scale: float = 100.0, spec: str = ".1f") -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    return f" [{format(scale * lo, spec)}, {format(scale * hi, spec)}]"


def selection_sentence(e: dict[str, Any], confidence: float = 0.95) -> str:
    """One plain sentence on DSE's pick against the last checkpoint."""
    s = e.get("selection")
    if not s:
        return "No DSE column: no selection."
    unit, ep = entry_positions(e)
    gain = f"{100 * s['gain_top1_vs_last']:+.1f} mIoU"
    lo, hi = s.get("gain_top1_vs_last_low"), s.get("gain_top1_vs_last_high")
    where = f"DSE's pick ({unit} {ep[s['top1_index']]}) vs the last checkpoint ({unit} {ep[-1]}): {gain}"
    if lo is None or hi is None:
        return where + " (no interval: the run has no replicates)."
    interval = f"{int(round(100 * confidence))} % interval{ci(lo, hi)}"
    if lo <= 0 <= hi:
        return where + f" ({interval}): the pick is not distinguishable from the last checkpoint."
    better = "better" if lo > 0 else "worse"
    return where + f" ({interval}): the pick is {better} than the last checkpoint."


def markdown(report: dict[str, Any]) -> str:
    conf = report.get("confidence", 0.95)
    pc = f"{int(round(100 * conf))} %"
    lines = ["# DSE report", ""]
    for ds, e in report["datasets"].items():
        lines += [f"## {ds}", ""]
        c = e["curve"]
        unit, ep = entry_positions(e)
        iv = "" if e["intervals"] else " (no intervals: the scan or the probe left no replicates)"
        lines += [f"### mIoU curve{iv}", ""]
        lines += [
            "| untrained | first | best | last | best − untrained | best − first | best − last |",
            "|---|---|---|---|---|---|---|",
        ]
        lines.append(
            f"| {pct(c['untrained'])} | {pct(c['first'])} ({unit} {ep[0]}) | {pct(c['best'])} "
            f"({unit} {ep[c['best_index']]}) | {pct(c['last'])} | "
            + " | ".join(
                (f"{100 * c[k]:+.1f}{ci(c.get(k + '_low'), c.get(k + '_high'))}" if c.get(k) is not None else "n/a")
                for k in ("best_minus_untrained", "best_minus_first", "best_minus_last")
            )
            + " |"
        )
        lines += [
            "",
            f"mIoU in %, differences in points, {pc} intervals in brackets (paired resamples of the "
            "validation images and heads).",
        ]
        if e.get("knn"):
            k, b = e["knn"], c["best_index"]
            lows, highs = e.get("knn_low", [None] * len(k)), e.get("knn_high", [None] * len(k))
            lines += [
                "",
                "Image-level k-NN accuracy (%): "
                + ", ".join(
                    f"{name} {pct(k[i])}{ci(lows[i], highs[i])}"
                    for name, i in (("first", 0), (f"at the mIoU peak ({unit} {ep[b]})", b), ("last", len(k) - 1))
                )
                + ".",
                "",
                f"![{ds} curves](curves_{ds}.png)",
            ]
        v = e.get("verdict")
        if v:
            lines += ["", f"### Verdict: {v['verdict']}", ""] + [f"* {r}" for r in v["reasons"]]
        lines += ["", "### Rank correlation with mIoU across the training checkpoints", ""]
        lines += [f"| metric | Kendall τ [{pc}] | Spearman ρ [{pc}] | τ ≠ 0 | τ ≠ τ(dse) |", "|---|---|---|---|---|"]
        for m in report["metrics"]:
            r = e["correlation"][m]
            nz = "" if r.get("tau_low") is None else ("yes" if r.get("nonzero") else "no")
            dd = (
                "—"
                if m == "dse"
                else ("" if r.get("tau_diff_low") is None else ("yes" if r.get("differs_from_reference") else "no"))
            )
            lines.append(
                f"| {m} | {fmt(r['kendall_tau'], '+.2f')}{ci(r.get('tau_low'), r.get('tau_high'), 1.0, '+.2f')} | "
                f"{fmt(r['spearman_rho'], '+.2f')}{ci(r.get('rho_low'), r.get('rho_high'), 1.0, '+.2f')} | "
                f"{nz} | {dd} |"
            )
        s = e.get("selection")
        if s:
            lines += ["", "### Selection by DSE", ""]
            lines += [
                "| checkpoints | last mIoU | DSE top-1 mIoU | best of top-3 | best in hindsight "
                "| top-1 − last | top-1 − best |",
                "|---|---|---|---|---|---|---|",
            ]
            lines.append(
                f"| {len(e['miou'])} | {pct(s['last_miou'])} | {pct(s['top1_miou'])} ({unit} {ep[s['top1_index']]}) | "
                f"{pct(s['best_of_top_miou'])} ({unit} {ep[s['best_of_top_index']]}) | {pct(s['best_miou'])} "
                f"({unit} {ep[s['best_index']]}) | {100 * s['gain_top1_vs_last']:+.1f}"
                f"{ci(s.get('gain_top1_vs_last_low'), s.get('gain_top1_vs_last_high'))} | "
                f"{100 * s['gap_top1_to_best']:+.1f}"
                f"{ci(s.get('gap_top1_to_best_low'), s.get('gap_top1_to_best_high'))} |"
            )
            lines += ["", selection_sentence(e, conf)]
            if "pick_agreement" in s:
                lines.append(
                    f"The pick was the same checkpoint in {100 * s['pick_agreement']:.0f} % of the paired draws."
                )
        if e.get("classes"):
            best, last = c["best_index"], len(e["miou"]) - 1
            lines += [
                "",
                "### IoU per class (%)",
                "",
                "| class | untrained | first | best | last |",
                "|---|---|---|---|---|",
            ]
            for name, k in e["classes"].items():
                lines.append(
                    f"| {name} | {pct(k['untrained'])} | {pct(k['iou'][0])}{ci(k['low'][0], k['high'][0])} | "
                    f"{pct(k['iou'][best])}{ci(k['low'][best], k['high'][best])} | "
                    f"{pct(k['iou'][last])}{ci(k['low'][last], k['high'][last])} |"
                )
            lines += ["", f"![{ds} classes](classes_{ds}.png)"]
        lines += ["", f"![{ds}](report_{ds}.png)", ""]
    for ds, entries in report.get("layers", {}).items():
        lines += [
            f"## {ds}: DSE and mIoU per block (layer map)",
            "",
            f"| block | Kendall τ(DSE, mIoU) [{pc}] | Spearman ρ | best mIoU | last mIoU | DSE pick's mIoU |",
            "|---|---|---|---|---|---|",
        ]
        for x in entries:
            lines.append(
                f"| {x['layer']} | {fmt(x['kendall_tau'], '+.2f')}{ci(x['tau_low'], x['tau_high'], 1.0, '+.2f')} | "
                f"{fmt(x['spearman_rho'], '+.2f')} | {pct(x['best_miou'])} | {pct(x['last_miou'])} | "
                f"{pct(x['dse_pick_miou'])} |"
            )
        lines += ["", "Each block's DSE is calibrated on its own curve (λ per block); mIoU in %.", ""]
    if report.get("unprobed_checkpoints"):
        lines += [f"Checkpoints without mIoU: {len(report['unprobed_checkpoints'])}."]
    if report.get("partial_checkpoints"):
        lines += [
            "",
            "**Partial weights**: these checkpoints were scored with `--allow-partial` and did not fit the "
            "model (missing or unexpected keys; see run.json / probe_<dataset>.json): "
            + ", ".join(f"`{Path(c).name}`" for c in report["partial_checkpoints"])
            + ".",
        ]
    return "\n".join(lines) + "\n"
