"""``dsekit train``: its arguments and its handler (the loop itself is :func:`dsekit.train.ssl.train`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..train.presets import METHODS, PRESETS, TRAIN_PRECISIONS
from .args import parse_model_kwargs, positive_int, seed_int

if TYPE_CHECKING:
    from ..train.config import TrainConfig

__all__ = ["add_train_parser", "build_arguments", "config_from_args", "main", "run_train"]


def build_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` options to ``parser``."""
    p = parser
    p.add_argument("--method", required=True, choices=METHODS, help="self-supervised method")
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, dsekit.json, log.txt)")
    p.add_argument("--images", type=Path, default=None, help="image folder (default: the built-in scenes)")
    p.add_argument(
        "--arch",
        default="vit_tiny_scenes",
        help=f"preset ({', '.join(PRESETS)}) or timm architecture (default vit_tiny_scenes)",
    )
    p.add_argument(
        "--model-kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="timm model argument overriding the preset's, e.g. depth=6 (repeatable)",
    )
    p.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="training resolution (default: the preset's, 64 for vit_tiny_scenes)",
    )
    p.add_argument("--num-images", type=positive_int, default=512, help="training images (default 512)")
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs (default 20)")
    p.add_argument(
        "--save-every",
        type=positive_int,
        default=2,
        help="save an official checkpoint after epochs 0, K, 2K, ... and the last (default 2)",
    )
    p.add_argument(
        "--dse-weight",
        type=float,
        default=0.0,
        metavar="BETA",
        help="loss = loss_ssl - BETA * DSE(student patch tokens) (default 0: off; paper 0.001)",
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per step (default 64)")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default base_lr * batch_size / 256; DINO 5e-4, MoCo v3 1.5e-4)",
    )
    p.add_argument("--min-lr", type=float, default=None, help="final learning rate (DINO 1e-6, MoCo v3 0)")
    p.add_argument("--warmup-epochs", type=int, default=None, help="learning-rate warm-up (default 10%% of epochs)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (DINO 0.04, MoCo v3 0.1)")
    p.add_argument("--weight-decay-end", type=float, default=None, help="final weight decay (DINO 0.4)")
    p.add_argument("--momentum", type=float, default=None, help="initial EMA momentum (DINO 0.996, MoCo v3 0.99)")
    p.add_argument("--out-dim", type=positive_int, default=None, help="DINO prototypes / MoCo v3 embedding size")
    p.add_argument("--hidden-dim", type=positive_int, default=None, help="head hidden width (default 512)")
    p.add_argument("--bottleneck-dim", type=positive_int, default=None, help="DINO head bottleneck (default 128)")
    p.add_argument("--local-crops", type=int, default=4, help="DINO local views (default 4)")
    p.add_argument("--local-crop-size", type=positive_int, default=None, help="DINO local view size")
    p.add_argument("--teacher-temp", type=float, default=0.04, help="DINO teacher temperature (default 0.04)")
    p.add_argument("--temperature", type=float, default=0.2, help="MoCo v3 temperature (default 0.2)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of everything random (default 0)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=TRAIN_PRECISIONS, help="fp32 or bf16 autocast")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument(
        "--crop-min-scale",
        type=float,
        default=None,
        help="smallest area fraction of a random-resized crop (DINO 0.4, MoCo v3 0.08)",
    )
    p.add_argument("--cj-strength", type=float, default=None, help="colour-jitter strength (DINO 0.5, MoCo v3 1.0)")
    p.add_argument(
        "--gram-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="Gram anchoring: loss = loss_ssl + W * L_gram (DINOv3; default 0: off)",
    )
    p.add_argument(
        "--gram-teacher",
        default=None,
        metavar="FILE|STEP",
        help="the Gram teacher: a checkpoint of this method and network, or the step at which the run's "
        "own EMA teacher is copied",
    )
    p.add_argument(
        "--gram-every",
        type=positive_int,
        default=None,
        metavar="K",
        help="with a step teacher: copy the EMA teacher again every K steps",
    )
    p.add_argument(
        "--gram-batch-level",
        action="store_true",
        help="one Gram matrix over the batch's patches instead of one per image",
    )
    p.add_argument("--gram-keep-negative", action="store_true", help="keep negative similarities in the Gram matrices")
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="start a new run from this checkpoint of another run (same method and network; new "
        "optimizer and schedule)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``dsekit train`` on ``subparsers`` (its ``func`` is :func:`run_train`)."""
    p = subparsers.add_parser(
        "train",
        help="train a small ViT with DINO or MoCo v3, saving official checkpoints",
        description="Self-supervised training with lightly's DINO / MoCo v3 components on a timm "
        "backbone (default: vit_tiny_scenes on the built-in scenes). Checkpoints are written in the "
        "method's official format and file name every --save-every epochs, so 'dsekit scan OUT' reads "
        "them; a rerun with the same settings resumes from the latest state.",
    )
    build_arguments(p)
    p.set_defaults(func=run_train)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~dsekit.train.config.TrainConfig` of parsed ``train`` arguments."""
    from ..train.config import TrainConfig

    return TrainConfig(
        method=args.method,
        out=str(args.out),
        images=None if args.images is None else str(args.images),
        arch=args.arch,
        model_kwargs=parse_model_kwargs(args.model_kwarg),
        image_size=args.image_size,
        num_images=args.num_images,
        epochs=args.epochs,
        save_every=args.save_every,
        dse_weight=args.dse_weight,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay,
        weight_decay_end=args.weight_decay_end,
        momentum=args.momentum,
        out_dim=args.out_dim,
        hidden_dim=args.hidden_dim,
        bottleneck_dim=args.bottleneck_dim,
        local_crops=args.local_crops,
        local_crop_size=args.local_crop_size,
        teacher_temp=args.teacher_temp,
        temperature=args.temperature,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        workers=args.workers,
        crop_min_scale=args.crop_min_scale,
        cj_strength=args.cj_strength,
        gram_weight=args.gram_weight,
        gram_teacher=args.gram_teacher,
        gram_every=args.gram_every,
        gram_clamp_negative=not args.gram_keep_negative,
        gram_image_level=not args.gram_batch_level,
        init_from=None if args.init_from is None else str(args.init_from),
    )


def run_train(args: argparse.Namespace) -> int:
    """Entry point of ``dsekit train``: train, then print the checkpoints and the scan command."""
    from ..train.ssl import train

    result = train(config_from_args(args), progress=not args.quiet)
    if not args.quiet:
        print(
            f"{len(result.checkpoints)} {result.method} checkpoint(s) in {result.run_dir} "
            f"(epochs {result.start_epoch}..{result.end_epoch - 1} run now, {result.end_epoch} done)"
        )
        print(f"scan them with: {result.scan_command}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The ``train`` command on its own (``argv`` without the ``train`` word; ``python -m dsekit train``
    is the same through the full command line)."""
    parser = build_arguments(argparse.ArgumentParser(prog="dsekit train"))
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"dsekit train: error: {exc}", file=sys.stderr)
        return 2
