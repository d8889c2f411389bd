#!/usr/bin/env python
"""The paper's regularisation protocol on a base run: pick its checkpoint with DSE, continue it.

From the base run (trained, scanned and probed, e.g. by ``dsekit demo``), the checkpoint DSE
selects (``dse/selection.json``) starts new runs (``dsekit train --init-from``: their own
folder, optimiser and schedule, the base run's other settings) for the same number of epochs
in each arm, with at least two training seeds each:

* ``unchanged``: plain training;
* ``dse-<beta>``: ``loss − β · DSE`` for each ``--betas`` (the paper's β = 0.001 and a larger one);
* ``gram``: Gram anchoring, ``loss + w · L_gram``, the Gram teacher the picked checkpoint;
* ``dse+gram``: both (the first β).

Every continuation is probed as the base run was (the same probe settings and seed, so the same
validation images); the start is the picked checkpoint's own probe result. For each arm and seed
the table gives mIoU and image-level k-NN accuracy at the start and at the end, the change with
its 95 % paired interval (the same bootstrap resamples of the validation images on both
checkpoints), and whether the decline halts as measured: the end is compared with the start
("falls": the change's interval lies below 0; "holds": it contains 0; "rises": above 0) and with
the unchanged arm's end of the same seed.

Usage::

    python examples/regularization_protocol.py BASE_RUN --out runs/protocol [--seeds 0 1] [--epochs N]
        [--betas 0.001 0.1] [--gram-weight 1.0] [--markdown runs/protocol/table.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from dsekit.io import read_confusion_table, read_knn_table
from dsekit.metrics.intervals import miou_bootstrap, percentile_interval
from dsekit.metrics.knn import accuracy_bootstrap
from dsekit.probe import ProbeConfig, probe
from dsekit.train.config import TrainConfig
from dsekit.train.ssl import read_run_info, train

PROBE_KEYS = ("dataset", "scenes", "num_train", "num_val", "epochs", "seed", "image_size", "arch", "model_kwargs")


def _probe_settings(base_dse: Path) -> dict:
    """The probe settings of the base run (its ``probe_scenes.json``), to probe every arm alike."""
    record = json.loads((base_dse / "probe_scenes.json").read_text())["settings"]
    return {k: record[k] for k in PROBE_KEYS}


def _train_settings(base: Path) -> dict:
    s = read_run_info(base)["settings"]
    keep = (
        "method",
        "scenes",
        "arch",
        "model_kwargs",
        "image_size",
        "num_images",
        "batch_size",
        "lr",
        "min_lr",
        "warmup_epochs",
        "weight_decay",
        "weight_decay_end",
        "momentum",
        "out_dim",
        "hidden_dim",
        "bottleneck_dim",
        "local_crops",
        "local_crop_size",
        "teacher_temp",
        "warmup_teacher_temp",
        "temperature",
        "crop_min_scale",
        "cj_strength",
        "clip_grad",
        "freeze_last_layer",
        "save_every",
    )
    return {k: s[k] for k in keep if k in s}


def _tables(dse_dir: Path) -> tuple[tuple[list[str], list], tuple[list[str], np.ndarray]]:
    return read_confusion_table(dse_dir / "probe_scenes_confusion.npz"), read_knn_table(
        dse_dir / "probe_scenes_knn.npz"
    )


def _change(start: tuple, end: tuple, seed: int = 0) -> dict:
    """End − start of mIoU and k-NN accuracy with paired 95 % intervals (same image resamples)."""
    (sc, sk), (ec, ek) = start, end
    boot = miou_bootstrap([sc, ec], seed=seed)
    d = boot.replicates[:, 1] - boot.replicates[:, 0]
    lo, hi = percentile_interval(d)
    kb = accuracy_bootstrap(np.stack([sk, ek]), seed=seed)
    kd = kb.replicates[:, 1] - kb.replicates[:, 0]
    klo, khi = percentile_interval(kd)
    return {
        "miou_start": float(boot.miou[0]),
        "miou_end": float(boot.miou[1]),
        "miou_change": float(boot.miou[1] - boot.miou[0]),
        "miou_change_low": float(lo),
        "miou_change_high": float(hi),
        "knn_start": float(kb.accuracy[0]),
        "knn_end": float(kb.accuracy[1]),
        "knn_change": float(kb.accuracy[1] - kb.accuracy[0]),
        "knn_change_low": float(klo),
        "knn_change_high": float(khi),
    }


def _word(lo: float, hi: float) -> str:
    return "falls" if hi < 0 else ("rises" if lo > 0 else "holds")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", type=Path, help="the base run (trained, scanned and probed: RUN/dse/)")
    p.add_argument("--out", type=Path, default=Path("runs/protocol"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs of every continuation (default: the base run's epochs after the pick)",
    )
    p.add_argument(
        "--save-every", type=int, default=None, help="checkpoint period of the continuations (default the base run's)"
    )
    p.add_argument("--betas", type=float, nargs="+", default=[0.001, 0.1])
    p.add_argument("--gram-weight", type=float, default=1.0)
    p.add_argument("--arms", nargs="*", default=None, help="only these arms")
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args(argv)

    base_dse = args.base / "dse"
    sel = json.loads((base_dse / "selection.json").read_text())
    pick = Path(sel["best"]["checkpoint"])
    pick_epoch = int(sel["best"].get("epoch", sel["best"].get("step")))
    settings = _train_settings(args.base)
    if args.save_every:
        settings["save_every"] = args.save_every
    base_epochs = int(read_run_info(args.base)["settings"]["epochs"])
    epochs = args.epochs or max(1, base_epochs - pick_epoch - 1)
    probe_kw = _probe_settings(base_dse)
    (bc_names, bc), (bk_names, bk) = _tables(base_dse)
    start = (bc[bc_names.index(str(pick))], bk[bk_names.index(str(pick))])
    arms = {"unchanged": {}}
    for b in args.betas:
        arms[f"dse-{b:g}"] = {"dse_weight": b}
    arms["gram"] = {"gram_weight": args.gram_weight, "gram_teacher": str(pick)}
    arms["dse+gram"] = {"dse_weight": args.betas[0], "gram_weight": args.gram_weight, "gram_teacher": str(pick)}
    if args.arms:
        arms = {k: v for k, v in arms.items() if k in args.arms}
    print(
        f"base run {args.base}: DSE picks {pick.name} (epoch {pick_epoch}); every arm continues it for {epochs} epochs",
        flush=True,
    )

    results = []
    for seed in args.seeds:
        for arm, kw in arms.items():
            run = args.out / f"{arm}-seed{seed}"
            cfg = TrainConfig(out=str(run), epochs=epochs, seed=seed, init_from=str(pick), **{**settings, **kw})
            train(cfg, progress=False)
            probe(ProbeConfig(str(run), settings["method"], **probe_kw), progress=False)
            (c_names, conf), (k_names, corr) = _tables(run / "dse")
            last = c_names[-1]
            curve = json.loads((run / "dse" / "probe_scenes.json").read_text())["checkpoints"]
            rec = {
                "arm": arm,
                "seed": seed,
                **kw,
                "epochs": epochs,
                **_change(start, (conf[-1], corr[k_names.index(last)])),
                "curve": [(c["epoch"], c["miou"], c["knn_top1"]) for c in curve if c["status"] == "ok"],
            }
            results.append(rec)
            print(
                f"{arm:>10} seed {seed}: mIoU {100 * rec['miou_start']:.1f} -> {100 * rec['miou_end']:.1f} "
                f"({100 * rec['miou_change']:+.1f} [{100 * rec['miou_change_low']:+.1f}, {100 * rec['miou_change_high']:+.1f}]), "
                f"k-NN {100 * rec['knn_start']:.1f} -> {100 * rec['knn_end']:.1f}",
                flush=True,
            )
    # each arm's end against the unchanged arm's end, same seed
    for rec in results if "unchanged" in arms else []:
        run = args.out / f"{rec['arm']}-seed{rec['seed']}" / "dse"
        ref_run = args.out / f"unchanged-seed{rec['seed']}" / "dse"
        (a_n, a), _ = _tables(run)
        (b_n, b), _ = _tables(ref_run)
        boot = miou_bootstrap([b[-1], a[-1]])
        lo, hi = percentile_interval(boot.replicates[:, 1] - boot.replicates[:, 0])
        rec.update(
            vs_unchanged=float(boot.miou[1] - boot.miou[0]), vs_unchanged_low=float(lo), vs_unchanged_high=float(hi)
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "protocol.json").write_text(
        json.dumps(
            {"base": str(args.base), "pick": str(pick), "pick_epoch": pick_epoch, "epochs": epochs, "results": results},
            indent=2,
        )
    )
    lines = [
        "| arm | seed | mIoU start | mIoU end | change [95 %] | decline | k-NN start | k-NN end | change [95 %] | end vs unchanged [95 %] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['arm']} | {r['seed']} | {100 * r['miou_start']:.1f} | {100 * r['miou_end']:.1f} | "
            f"{100 * r['miou_change']:+.1f} [{100 * r['miou_change_low']:+.1f}, {100 * r['miou_change_high']:+.1f}] | "
            f"{_word(r['miou_change_low'], r['miou_change_high'])} | {100 * r['knn_start']:.1f} | {100 * r['knn_end']:.1f} | "
            f"{100 * r['knn_change']:+.1f} [{100 * r['knn_change_low']:+.1f}, {100 * r['knn_change_high']:+.1f}] | "
            + (
                "—"
                if r["arm"] == "unchanged"
                else "n/a"
                if "vs_unchanged" not in r
                else f"{100 * r['vs_unchanged']:+.1f} [{100 * r['vs_unchanged_low']:+.1f}, {100 * r['vs_unchanged_high']:+.1f}]"
            )
            + " |"
        )
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
