"""``dsekit scan``: its arguments and its handler (the sweep itself is :func:`dsekit.scan.scan`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..metrics.settings import DSESettings
from .args import (
    add_checkpoint_arguments,
    add_cluster_arguments,
    checkpoint_settings,
    layer_list,
    positive_int,
    report_failed,
    run_scenes,
    seed_int,
)

__all__ = ["add_scan_parser", "run_scan"]

DEFAULT = DSESettings()


def add_scan_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``dsekit scan`` to an ``argparse`` sub-parser set."""
    p = sub.add_parser(
        "scan",
        help="DSE of every checkpoint of a training run, λ, selected checkpoints and plot",
        description="Discover the checkpoints of RUN_DIR (official file names of --method, or --glob), "
        "extract patch features of an image sample, compute DSE per checkpoint, then λ and the "
        "selection. Resumable: finished checkpoints are skipped on a rerun with the same settings. "
        "Under torchrun the checkpoints are split across processes.",
    )
    p.add_argument("run_dir", type=Path, help="folder holding the run's checkpoints")
    add_checkpoint_arguments(p)
    p.add_argument("--images", type=Path, default=None, help="image folder (default: the built-in scenes)")
    p.add_argument("--num-images", type=positive_int, default=2048, help="images in the sample (default 2048)")
    p.add_argument(
        "--image-size", type=positive_int, default=None, help="centre-crop size (default 224, or the run's dsekit.json)"
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/dse)")
    p.add_argument("--seed", type=seed_int, default=0, help="image sample, k-means and M_dim seed")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--dse-batch-size", type=positive_int, default=1024, help="images per DSE batch (default 1024)")
    add_cluster_arguments(p)
    p.add_argument("--no-normalize", action="store_true")
    p.add_argument(
        "--n-init", type=positive_int, default=DEFAULT.n_init, help=f"k-means restarts (default {DEFAULT.n_init})"
    )
    p.add_argument(
        "--metrics", nargs="*", default=[], help="baseline metric columns: rankme alpha_req dense_rankme lidar"
    )
    p.add_argument(
        "--lidar-images", type=positive_int, default=64, help="images with augmented views for LiDAR (default 64)"
    )
    p.add_argument(
        "--lidar-views", type=positive_int, default=8, help="augmented views per image for LiDAR (default 8)"
    )
    p.add_argument("--window", type=int, default=2, help="local-maximum window (default ±2 checkpoints)")
    p.add_argument("--top", type=positive_int, default=3, help="candidates to keep (default 3)")
    p.add_argument(
        "--intervals",
        type=int,
        default=10,
        help="half-samples of the images (each with its own k-means seed) behind every column's "
        "interval; 0: none (default 10)",
    )
    p.add_argument("--confidence", type=float, default=0.95, help="nominal coverage of the intervals (default 0.95)")
    p.add_argument(
        "--layers",
        type=layer_list,
        default=(),
        metavar="all|LIST",
        help="layer map: DSE (with intervals) of these blocks too, from one forward pass per checkpoint "
        "(all, or indices such as 0,5,11 or -1): dse_layers.csv, layers.json, dse_layers.png",
    )
    p.add_argument(
        "--cache-memory-gb",
        type=float,
        default=4.0,
        help="RAM for the layer map's features; beyond it they spill to memory-mapped files (default 4)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_scan)


def run_scan(args: argparse.Namespace) -> int:
    """Handler of ``dsekit scan``: 0 when every checkpoint was scored, 1 otherwise."""
    from ..scan import ScanConfig, scan

    cfg = ScanConfig(
        **checkpoint_settings(args),
        images=None if args.images is None else str(args.images),
        scenes=run_scenes(args.run_dir) if args.images is None else {},
        num_images=args.num_images,
        seed=args.seed,
        batch_size=args.batch_size,
        dse_batch_size=args.dse_batch_size,
        local_clusters=args.local_clusters,
        global_clusters=args.global_clusters,
        images_per_group=args.images_per_group,
        normalize=not args.no_normalize,
        n_init=args.n_init,
        metrics=tuple(args.metrics),
        lidar_images=args.lidar_images,
        lidar_views=args.lidar_views,
        window=args.window,
        top=args.top,
        intervals=args.intervals,
        confidence=args.confidence,
        layers=args.layers,
        cache_memory_gb=args.cache_memory_gb,
    )
    result = scan(cfg, progress=not args.quiet)
    if report_failed("scan", result.failed, result.out_dir / "run.json"):
        return 1
    extra = ", dse_layers.csv, layers.json, dse_layers.png" if cfg.layers else ""
    print(f"outputs in {result.out_dir}: dse.csv, selection.json, dse.png, run.json{extra}")
    return 0
