"""The end-to-end demo: train, scan, probe, report, on a laptop CPU with nothing but the install.

``dsekit demo [--quick] [--out DIR]``:

1. trains a small MoCo v3, plain (a ViT-Ti-width preset at 64×64 px, 8-px patches; with
   ``regularize`` the DSE regulariser at β = 0.1), on the built-in scenes (a digit on texture
   photos, see ``DEMO_SCENES``), saving its initial weights and an official checkpoint every epoch;
2. scans them and the initial weights: DSE per checkpoint with its interval, λ and the selected
   checkpoints (``OUT/run/dse/``), with RankMe, α-ReQ, dense RankMe and LiDAR as extra columns;
3. linear-probes each checkpoint on the scenes' masks (mIoU and per-class IoU) and measures
   its image-level k-NN accuracy on the scenes' digit identities, each with its interval;
4. writes the report: DSE, mIoU and k-NN curves, Kendall τ of every metric, the selection gain
   of DSE against the last checkpoint, each with its interval, and the verdict (dense
   degradation, collapse or no degradation).

The τ it prints is one training run's: its intervals cover the validation images, not the
run-to-run variation (``examples/demo_seeds.py`` measures that over seeds).

Everything is seeded; a rerun reuses what is already computed (training resumes, scan and
probe results are cached).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .probe import ProbeConfig, probe
from .report import selection_sentence, write_report
from .scan import ScanConfig, scan
from .train.ssl import TrainConfig, read_run_info, train

__all__ = ["DemoConfig", "demo", "DEMO_SCENES", "DEMO_SETTINGS"]

#: The demo's dense task: 3 texture classes and one merged ``digit`` class, one large digit with
#: thick strokes per scene, so that a linear head on 8-pixel patches can segment it at all and
#: the digit class is what self-supervised features improve (random features already separate
#: the textures; digit identity never becomes linearly decodable within a CPU budget).
DEMO_SCENES: dict[str, Any] = dict(
    textures=["gravel", "tissue", "stars"],
    digits_per_scene=[1, 1],
    digit_size=[0.6, 0.9],
    digit_threshold=0.2,
    merge_digits=True,
)

#: (full, quick) settings of each stage. Training (the same for DINO and MoCo v3): batch 16 (more
#: updates for the same compute), a constant learning rate of 1.5e-3 after one warm-up epoch,
#: teacher / momentum-encoder EMA from 0.98, crops of at least 20 % of the area and colour jitter
#: 0.5 for 64-px scenes, 64 epochs with a checkpoint every 4. With these, plain MoCo v3 (the
#: demo's default) first improves its dense quality and then loses it while its loss stays away
#: from collapse (docs/experiments.md); DINO's output collapses towards uniform on these scenes
#: in every setting tried.
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "full": dict(
        train_images=512,
        epochs=64,
        save_every=4,
        batch_size=16,
        lr=1.5e-3,
        min_lr=1.5e-3,
        momentum=0.98,
        warmup_epochs=1,
        crop_min_scale=0.2,
        cj_strength=0.5,
        scan_images=512,
        probe_train=500,
        probe_val=200,
        probe_epochs=10,
    ),
    "quick": dict(
        train_images=256,
        epochs=6,
        save_every=1,
        batch_size=16,
        lr=1.5e-3,
        min_lr=1.5e-3,
        momentum=0.98,
        warmup_epochs=1,
        crop_min_scale=0.2,
        cj_strength=0.5,
        scan_images=128,
        probe_train=160,
        probe_val=80,
        probe_epochs=6,
    ),
}


@dataclass
class DemoConfig:
    out: str = "dsekit-demo"
    quick: bool = False
    seed: int = 0  #: training seed (the scan, probe and report seeds stay 0: the same images and resamples)
    device: str | None = None
    method: str = "mocov3"  #: "mocov3" (the demo's) or "dino"
    dse_weight: float = 0.0  #: β of the DSE regulariser during training (0: off, the demo's)


def demo(cfg: DemoConfig, *, progress: bool = True, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the demo; returns the report dict (see :func:`dsekit.report.build_report`) plus timings."""
    console = Console()
    s = {**DEMO_SETTINGS["quick" if cfg.quick else "full"], **(settings or {})}
    out = Path(cfg.out)
    run_dir = out / "run"
    timings: dict[str, float] = {}

    title = {"dino": "DINO", "mocov3": "MoCo v3"}.get(cfg.method, cfg.method)
    reg = f" with the DSE regulariser (β = {cfg.dse_weight:g})" if cfg.dse_weight else ""
    console.rule(f"1/4 training {title}{reg} on the built-in scenes (seed {cfg.seed})")
    t = time.perf_counter()
    train(
        TrainConfig(
            method=cfg.method,
            dse_weight=cfg.dse_weight,
            out=str(run_dir),
            scenes=DEMO_SCENES,
            num_images=s["train_images"],
            epochs=s["epochs"],
            save_every=s["save_every"],
            batch_size=s["batch_size"],
            lr=s.get("lr"),
            min_lr=s.get("min_lr"),
            momentum=s.get("momentum"),
            warmup_epochs=s.get("warmup_epochs"),
            crop_min_scale=s.get("crop_min_scale"),
            cj_strength=s.get("cj_strength"),
            seed=cfg.seed,
            device=cfg.device,
        ),
        progress=progress,
    )
    timings["train"] = time.perf_counter() - t
    info = read_run_info(run_dir)
    common = dict(
        run_dir=str(run_dir),
        method=cfg.method,
        arch=info["arch"],
        model_kwargs=dict(info["model_kwargs"]),
        image_size=int(info["image_size"]),
        seed=0,
        device=cfg.device,
    )

    console.rule("2/4 scanning the checkpoints (DSE, baselines)")
    t = time.perf_counter()
    scanned = scan(
        ScanConfig(
            **common,
            scenes=DEMO_SCENES,
            num_images=s["scan_images"],
            metrics=("rankme", "alpha_req", "dense_rankme", "lidar"),
        ),
        progress=progress,
    )
    timings["scan"] = time.perf_counter() - t

    console.rule("3/4 linear probe on the scenes' masks (mIoU) and k-NN on their digits")
    t = time.perf_counter()
    probe(
        ProbeConfig(
            **common,
            dataset="scenes",
            scenes=DEMO_SCENES,
            num_train=s["probe_train"],
            num_val=s["probe_val"],
            epochs=s["probe_epochs"],
        ),
        progress=progress,
    )
    timings["probe"] = time.perf_counter() - t

    console.rule("4/4 report")
    report = write_report(scanned.out_dir)
    _print_summary(console, report, scanned.out_dir, timings)
    report["timings"] = timings
    report["out_dir"] = str(scanned.out_dir)
    return report


def _interval(lo: float | None, hi: float | None, scale: float = 1.0, spec: str = ".4f") -> str:
    if lo is None or hi is None or lo != lo or hi != hi:
        return ""
    return f" [{format(scale * lo, spec)}, {format(scale * hi, spec)}]"


def _percent(v: float | None, lo: float | None, hi: float | None) -> str:
    if v is None or v != v:
        return ""
    return f"{100 * v:.1f}{_interval(lo, hi, 100, '.1f')}"


def _print_summary(console: Any, report: dict[str, Any], out_dir: Path, timings: dict[str, float]) -> None:
    entry = report["datasets"].get("scenes")
    if entry is None:
        console.print("no checkpoint could be probed; see the scan and probe outputs in", out_dir)
        return
    sel = entry["selection"]
    pc = f"{int(round(100 * report.get('confidence', 0.95)))} %"
    table = Table(title=f"DSE vs linear-probe mIoU on the built-in scenes ({pc} intervals)")
    has_knn = bool(entry.get("knn"))
    for col in ("epoch", "DSE", "mIoU %", *(("k-NN digit %",) if has_knn else ()), ""):
        table.add_column(col, justify="right")
    init = entry.get("init")
    if init:
        table.add_row(
            "init",
            f"{init['values']['dse']:.4f}{_interval(init['values_low']['dse'], init['values_high']['dse'])}",
            f"{100 * init['miou']:.1f}{_interval(init['miou_low'], init['miou_high'], 100, '.1f')}",
            *((_percent(init.get("knn_top1"), init.get("knn_low"), init.get("knn_high")),) if has_knn else ()),
            "untrained",
        )
    lows, highs = entry["values_low"]["dse"], entry["values_high"]["dse"]
    for i, (ep, d, m) in enumerate(zip(entry["epochs"], entry["values"]["dse"], entry["miou"], strict=True)):
        mark = "★ DSE pick" if i == sel["top1_index"] else ("candidate" if i in sel["candidates"] else "")
        if i == sel["best_index"]:
            mark = (mark + ", best mIoU").lstrip(", ")
        table.add_row(
            str(ep),
            f"{d:.4f}{_interval(lows[i], highs[i])}",
            f"{100 * m:.1f}{_interval(entry['miou_low'][i], entry['miou_high'][i], 100, '.1f')}",
            *((_percent(entry["knn"][i], entry["knn_low"][i], entry["knn_high"][i]),) if has_knn else ()),
            mark,
        )
    console.print(table)
    c = entry["curve"]
    parts = []
    if c.get("best_minus_untrained") is not None:
        parts.append(
            f"best − untrained {100 * c['best_minus_untrained']:+.1f}"
            f"{_interval(c.get('best_minus_untrained_low'), c.get('best_minus_untrained_high'), 100, '+.1f')}"
        )
    for k, label in (("best_minus_first", "best − first"), ("best_minus_last", "best − last")):
        parts.append(f"{label} {100 * c[k]:+.1f}{_interval(c.get(k + '_low'), c.get(k + '_high'), 100, '+.1f')}")
    console.print("mIoU (points): " + ", ".join(parts))
    corr = Table(title=f"Kendall τ with mIoU across the training checkpoints ({pc} intervals)")
    corr.add_column("metric", justify="left")
    corr.add_column("τ", justify="right")
    corr.add_column("interval", justify="right")
    corr.add_column("≠ 0", justify="center")
    for name, r in entry["correlation"].items():
        tau = r["kendall_tau"]
        nz = "" if r.get("tau_low") is None else ("yes" if r.get("nonzero") else "no")
        corr.add_row(
            name, "n/a" if tau != tau else f"{tau:+.2f}", _interval(r.get("tau_low"), r.get("tau_high"), 1, "+.2f"), nz
        )
    console.print(corr)
    console.print(selection_sentence(entry, report.get("confidence", 0.95)))
    console.print("τ and its intervals are this one training run's (the intervals cover the validation images)")
    verdict = entry.get("verdict")
    if verdict:
        console.print(f"verdict: {verdict['verdict']}")
        for reason in verdict["reasons"]:
            console.print(f"  {reason}")
    console.print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    console.print(f"report: {out_dir / 'report.md'}")
