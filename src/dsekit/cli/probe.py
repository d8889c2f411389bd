"""``dsekit probe``: its arguments and its handler (the run itself is :func:`dsekit.probe.probe`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .args import (
    add_checkpoint_arguments,
    checkpoint_settings,
    layer_list,
    positive_int,
    report_failed,
    run_scenes,
    seed_int,
)

__all__ = ["add_probe_parser", "run_probe"]


def add_probe_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``dsekit probe`` to an ``argparse`` sub-parser set (``run_probe`` is its handler)."""
    p = subparsers.add_parser(
        "probe",
        help="linear-probe mIoU of every checkpoint of a run on a segmentation dataset",
        description="For each checkpoint of RUN_DIR (same discovery and adapters as `scan`), train a "
        "linear head (BatchNorm + 1x1 conv, DINOv2 linear protocol) on cached frozen patch features "
        "and report mIoU and pixel accuracy on the validation split. Writes probe.csv (and the "
        "report when dse.csv is in OUT). Resumable; split across processes under torchrun.",
    )
    p.add_argument("run_dir", type=Path, help="folder holding the run's checkpoints")
    p.add_argument("--dataset", required=True, help="voc, ade20k, cocostuff, cocostuff27, cityscapes, folder or scenes")
    p.add_argument("--root", type=Path, default=None, help="dataset directory (not for scenes)")
    add_checkpoint_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/dse, next to dse.csv)")
    p.add_argument("--train-split", default=None, help="training split (default: train; VOC: train_aug when present)")
    p.add_argument("--val-split", default="val", help="evaluation split (default val)")
    p.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="folder datasets: class count (default: classes.txt, else inferred from the masks)",
    )
    p.add_argument("--num-train", type=positive_int, default=None, help="training images (default all; scenes 1000)")
    p.add_argument("--num-val", type=positive_int, default=None, help="validation images (default all; scenes 250)")
    p.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="crop side = mask resolution (default 224, or the run's dsekit.json)",
    )
    p.add_argument(
        "--resize", type=positive_int, default=None, help="shorter side before the crop (default: image size)"
    )
    p.add_argument("--epochs", type=positive_int, default=10, help="head epochs on cached features (default 10)")
    p.add_argument("--head-batch-size", type=positive_int, default=32, help="images per head step (default 32)")
    p.add_argument("--lr", type=float, default=1e-2, help="peak learning rate, cosine to 0 (default 1e-2)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="default 1e-4")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"], help="default adamw")
    p.add_argument("--seed", type=seed_int, default=0, help="head init, batch order and dataset subset seed")
    p.add_argument(
        "--head-seeds",
        type=positive_int,
        default=1,
        help="heads trained per checkpoint (seeds SEED, SEED+1, ...): mIoU is their mean and its "
        "interval covers the head's seed too (default 1)",
    )
    p.add_argument("--confidence", type=float, default=0.95, help="nominal coverage of the intervals (default 0.95)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per backbone forward pass")
    p.add_argument(
        "--cache-memory-gb",
        type=float,
        default=4.0,
        help="RAM for cached images, masks and features; beyond it they spill to disk (default 4)",
    )
    p.add_argument("--cache-dtype", default="float16", choices=["float16", "float32"], help="cached feature dtype")
    p.add_argument("--workers", type=int, default=None, help="image decoding processes (default min(4, CPUs))")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads (default: torch's; 1 is steadier on a busy shared CPU)",
    )
    p.add_argument(
        "--layers",
        type=layer_list,
        default=(),
        metavar="all|LIST",
        help="also probe these blocks (all, or indices such as 0,5,11 or -1), from one forward pass per "
        "checkpoint: probe_layers.csv, and the report's correlation per block",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_probe)
    return p


def run_probe(args: argparse.Namespace) -> int:
    """Handler of ``dsekit probe``: 0 when every checkpoint was probed, 1 otherwise."""
    from ..probe import ProbeConfig, probe

    cfg = ProbeConfig(
        **checkpoint_settings(args),
        dataset=args.dataset,
        scenes=run_scenes(args.run_dir) if args.dataset == "scenes" else {},
        root=None if args.root is None else str(args.root),
        train_split=args.train_split,
        val_split=args.val_split,
        num_classes=args.num_classes,
        num_train=args.num_train,
        num_val=args.num_val,
        resize=args.resize,
        epochs=args.epochs,
        head_batch_size=args.head_batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        seed=args.seed,
        head_seeds=args.head_seeds,
        confidence=args.confidence,
        batch_size=args.batch_size,
        cache_memory_gb=args.cache_memory_gb,
        cache_dtype=args.cache_dtype,
        workers=args.workers,
        threads=args.threads,
        layers=args.layers,
    )
    result = probe(cfg, progress=not args.quiet)
    if report_failed("probe", result.failed, result.out_dir / "probe.csv"):
        return 1
    extra = ", report.md" if result.report is not None else ""
    print(f"outputs in {result.out_dir}: probe.csv{extra}")
    return 0
