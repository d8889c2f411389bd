#!/usr/bin/env python
"""Search the built-in scenes' training settings for dense degradation without collapse.

Each named configuration trains with ``dsekit.train`` on the demo's scenes (``DEMO_SCENES``),
then probes every saved checkpoint (linear-probe mIoU and image-level k-NN accuracy on the
scenes' digit identities, each with its 95 % bootstrap interval) and reads the training loss
from ``log.txt``. One JSON line per configuration is appended to ``--results``: the settings,
the mIoU and k-NN curves, the loss per epoch, the timings and the verdict the report gives
(``dsekit.report``'s degradation verdict). Runs already in the results file are skipped.

Usage::

    python examples/sdd_search.py --out runs/sdd --results runs/sdd/results.jsonl [--only NAME ...]
    python examples/sdd_search.py --list

A configuration is ``TrainConfig`` settings on top of the demo's (``dsekit.demo.DEMO_SETTINGS``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from dsekit.demo import DEMO_SCENES, DEMO_SETTINGS
from dsekit.io import read_confusion_table, read_knn_table
from dsekit.metrics.intervals import miou_bootstrap
from dsekit.metrics.knn import accuracy_bootstrap
from dsekit.probe import ProbeConfig, probe
from dsekit.train.config import TrainConfig
from dsekit.train.logs import collapse_loss, read_training_log
from dsekit.train.ssl import read_run_info, train
from dsekit.verdict import degradation_verdict

BASE = {
    k: DEMO_SETTINGS["full"][k]
    for k in ("batch_size", "lr", "momentum", "warmup_epochs", "crop_min_scale", "cj_strength")
}

#: name -> (method, TrainConfig settings); in the order they were tried
CONFIGS: dict[str, tuple[str, dict]] = {
    "smoke": ("mocov3", {"epochs": 2, "save_every": 1, "num_images": 64}),
    "mocov3-e64": ("mocov3", {"epochs": 64, "save_every": 4}),
    "mocov3-e64-crop0.2": ("mocov3", {"epochs": 64, "save_every": 4, "crop_min_scale": 0.2}),
    # DINO without its collapse: a slower teacher and a learning rate nearer the linear-scaling rule
    "dino-e32-lr2e-4-m0.996": ("dino", {"epochs": 32, "save_every": 2, "lr": 2e-4, "momentum": 0.996}),
    "dino-e32-lr5e-4-m0.99": ("dino", {"epochs": 32, "save_every": 2, "lr": 5e-4, "momentum": 0.99}),
    "dino-e32-lr2e-4-m0.996-k1024": (
        "dino",
        {"epochs": 32, "save_every": 2, "lr": 2e-4, "momentum": 0.996, "out_dim": 1024},
    ),
    # MoCo v3 kept moving: a constant learning rate (no decay), and a high one
    "mocov3-e64-constlr": ("mocov3", {"epochs": 64, "save_every": 4, "min_lr": 1.5e-3, "crop_min_scale": 0.2}),
    "mocov3-e96-lr3e-3": ("mocov3", {"epochs": 96, "save_every": 6, "lr": 3e-3, "crop_min_scale": 0.2}),
    "mocov3-e64-n256": ("mocov3", {"epochs": 64, "save_every": 4, "num_images": 256, "crop_min_scale": 0.2}),
    "mocov3-e64-t0.1": ("mocov3", {"epochs": 64, "save_every": 4, "temperature": 0.1, "crop_min_scale": 0.2}),
    "mocov3-e128-n256-constlr": (
        "mocov3",
        {"epochs": 128, "save_every": 8, "num_images": 256, "min_lr": 1.5e-3, "crop_min_scale": 0.2},
    ),
}


def run_config(name: str, method: str, settings: dict, out: Path, seed: int, probe_images: tuple[int, int]) -> dict:
    run_dir = out / name / f"seed{seed}"
    kw = {"num_images": 512, **BASE, **settings}
    t0 = time.perf_counter()
    train(TrainConfig(method=method, out=str(run_dir), scenes=DEMO_SCENES, seed=seed, **kw), progress=False)
    t_train = time.perf_counter() - t0
    info = read_run_info(run_dir)
    t0 = time.perf_counter()
    res = probe(
        ProbeConfig(
            str(run_dir),
            method,
            arch=info["arch"],
            model_kwargs=dict(info["model_kwargs"]),
            image_size=int(info["image_size"]),
            dataset="scenes",
            scenes=DEMO_SCENES,
            num_train=probe_images[0],
            num_val=probe_images[1],
            epochs=10,
            seed=0,
        ),
        progress=False,
    )
    t_probe = time.perf_counter() - t0
    texture = probe(
        ProbeConfig(
            str(run_dir),
            method,
            out=str(run_dir / "dse_texture"),
            arch=info["arch"],
            model_kwargs=dict(info["model_kwargs"]),
            image_size=int(info["image_size"]),
            dataset="scenes",
            scenes=DEMO_SCENES,
            num_train=probe_images[0],
            num_val=probe_images[1],
            epochs=1,
            seed=0,
            image_labels="texture",
        ),
        progress=False,
    )
    texture_knn = {r["checkpoint"]: r["knn_top1"] for r in _probe_rows(texture.out_dir / "probe.csv")}
    out = res.out_dir
    rows = [r for r in _probe_rows(out / "probe.csv") if int(r["epoch"]) >= 0]
    names = [r["checkpoint"] for r in rows]
    conf_names, conf = read_confusion_table(out / "probe_scenes_confusion.npz")
    miou_draws = miou_bootstrap([conf[conf_names.index(c)] for c in names]).replicates
    knn_names, correct = read_knn_table(out / "probe_scenes_knn.npz")
    knn_draws = accuracy_bootstrap(np.stack([correct[knn_names.index(c)] for c in names])).replicates
    log = read_training_log(run_dir)
    loss = [float(e.get("loss_ssl", e["loss"])) for e in log]
    verdict = degradation_verdict(
        [int(r["epoch"]) for r in rows],
        [float(r["miou"]) for r in rows],
        [float(r["knn_top1"]) for r in rows],
        miou_draws=miou_draws,
        knn_draws=knn_draws,
        loss=loss,
        collapse_loss=collapse_loss(info["settings"]),
        min_fall=0.02,
    )
    curve = [
        {
            **{k: r[k] for k in ("epoch", "miou", "miou_low", "miou_high", "knn_top1", "knn_low", "knn_high")},
            "knn_texture": texture_knn.get(r["checkpoint"], ""),
        }
        for r in _probe_rows(out / "probe.csv")
    ]
    return {
        "name": name,
        "method": method,
        "seed": seed,
        "settings": kw,
        "train_s": t_train,
        "probe_s": t_probe,
        "curve": curve,
        "loss": loss,
        "verdict": verdict,
    }


def _probe_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return [dict(r) for r in csv.DictReader(f)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/sdd"))
    p.add_argument("--results", type=Path, default=None, help="JSON lines file (default OUT/results.jsonl)")
    p.add_argument("--only", nargs="*", default=None, help="configurations to run (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-images", type=int, nargs=2, default=(300, 200), metavar=("TRAIN", "VAL"))
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    if args.list:
        for name, (method, kw) in CONFIGS.items():
            print(f"{name}: {method} {kw}")
        return 0
    results = args.results or args.out / "results.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if results.is_file():
        done = {
            (json.loads(ln)["name"], json.loads(ln)["seed"]) for ln in results.read_text().splitlines() if ln.strip()
        }
    for name in args.only or list(CONFIGS):
        if (name, args.seed) in done:
            continue
        method, kw = CONFIGS[name]
        rec = run_config(name, method, kw, args.out, args.seed, tuple(args.probe_images))
        with open(results, "a") as f:
            f.write(json.dumps(rec) + "\n")
        v = rec["verdict"]
        print(
            f"{name} seed {args.seed}: {v['verdict']} ({rec['train_s']:.0f} s train, {rec['probe_s']:.0f} s probe)",
            flush=True,
        )
        for reason in v["reasons"]:
            print(f"  {reason}", flush=True)
        for c in rec["curve"]:
            print(
                f"  {c['epoch']:>5} mIoU {100 * float(c['miou']):5.1f}  kNN digit {100 * float(c['knn_top1'] or 'nan'):5.1f}"
                f"  kNN texture {100 * float(c['knn_texture'] or 'nan'):5.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
