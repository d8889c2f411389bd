"""Command-line pieces shared by ``dsekit scan``, ``probe``, ``train`` and the other commands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..metrics.settings import DSESettings, check_seed

__all__ = [
    "positive_int",
    "layer_list",
    "parse_model_kwargs",
    "add_checkpoint_arguments",
    "run_architecture",
    "checkpoint_settings",
    "report_failed",
]


def positive_int(text: str) -> int:
    """``argparse`` type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """DSE's k-means settings (``--local-clusters``, ``--global-clusters``, ``--images-per-group``)."""
    default = DSESettings()
    p.add_argument(
        "--local-clusters",
        type=positive_int,
        default=default.local_clusters,
        help=f"k per image (default {default.local_clusters})",
    )
    p.add_argument(
        "--global-clusters",
        type=positive_int,
        default=default.global_clusters,
        help=f"k per group (default {default.global_clusters})",
    )
    p.add_argument(
        "--images-per-group",
        type=positive_int,
        default=default.images_per_group,
        help=f"images per group (default {default.images_per_group})",
    )


def seed_int(text: str) -> int:
    """An argparse type: an integer seed in ``[0, 2**63 - 1]``."""
    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63 - 1], got {text!r}") from None


def layer_list(text: str) -> tuple[int, ...] | str:
    """``argparse`` type of ``--layers``: ``all`` or comma-separated block indices (``0,5,-1``)."""
    text = text.strip()
    if text == "all":
        return "all"
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'all' or block indices such as 0,5,11 or -1, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected 'all' or at least one block index")
    return values


def parse_model_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``["depth=6", "global_pool=token"]`` -> ``{"depth": 6, "global_pool": "token"}``.

    Values are JSON where they parse, strings otherwise."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--model-kwarg: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """The options that say how to find and read a run's checkpoints (``scan`` and ``probe``)."""
    p.add_argument(
        "--method",
        required=True,
        help="checkpoint format: dino, ibot, mugs, mocov3, mae, ijepa, esvit, "
        "swav, densecl, simsiam, mec, resa, byol, vicreg, vicregl, barlowtwins, dinov2, dinov3, hf "
        "(Hugging Face folders / Trainer runs), timm (with --arch), generic, or auto (detected from the "
        "first checkpoint's keys, shapes and config.json, and printed); see docs/checkpoints.md",
    )
    p.add_argument("--arch", default=None, help="timm architecture (default: the run's dsekit.json, else the method's)")
    p.add_argument(
        "--model-kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra timm model argument, e.g. img_size=448 (repeatable)",
    )
    p.add_argument("--glob", default=None, help="checkpoint files to use, relative to RUN_DIR (e.g. '*.pth')")
    p.add_argument(
        "--branch",
        default=None,
        help="network to read: teacher/student (DINO family, DINOv2, DINOv3; "
        "DINOv3 also gram), momentum/base (MoCo v3), target/online (BYOL)",
    )
    p.add_argument("--prefix", default=None, help="state-dict prefix to keep (generic)")
    p.add_argument("--allow-partial", action="store_true", help="warn instead of failing on missing/unexpected keys")
    p.add_argument(
        "--trust-checkpoints",
        action="store_true",
        help="allow full unpickling of checkpoints (only for files you trust)",
    )
    p.add_argument("--layer", type=int, default=-1, help="block/stage to read (default -1: the last)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="extraction precision")


def _run_info(run_dir: str | Path) -> dict[str, Any]:
    """The run's checked ``dsekit.json``; its ``ValueError`` says how to do without it."""
    from ..run_info import read_run_info

    try:
        return read_run_info(run_dir)
    except ValueError as exc:
        raise ValueError(f"{exc}; pass --arch/--model-kwarg/--image-size instead") from None


def run_architecture(args: argparse.Namespace) -> tuple[str | None, dict[str, Any], int]:
    """``(arch, model_kwargs, image_size)`` from --arch/--model-kwarg/--image-size.

    Without --arch and --model-kwarg they come from ``RUN_DIR/dsekit.json`` (written by
    ``dsekit train``) when present; the image size defaults to 224 otherwise.
    """
    from ..run_info import RUN_INFO

    info_path = Path(args.run_dir) / RUN_INFO
    if args.arch is None and not args.model_kwarg and info_path.is_file():
        info = _run_info(args.run_dir)
        try:
            arch, model_kwargs, trained_size = info["arch"], dict(info["model_kwargs"]), int(info["image_size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{info_path}: expected the JSON written by `dsekit train` with 'arch', 'model_kwargs' and "
                f"'image_size' ({type(exc).__name__}: {exc}); pass --arch/--model-kwarg/--image-size instead"
            ) from exc
        if info.get("method") and info["method"] != args.method:
            raise ValueError(f"--method {args.method}: {info_path} says the run was trained with {info['method']}")
        return arch, model_kwargs, args.image_size if args.image_size is not None else trained_size
    return args.arch, parse_model_kwargs(args.model_kwarg), args.image_size if args.image_size is not None else 224


def run_scenes(run_dir: str | Path) -> dict[str, Any]:
    """The built-in scene settings a run was trained on (``scan_config.scenes`` of its
    ``dsekit.json``), so that scan and probe read the same scenes; {} when none were set."""
    from ..run_info import RUN_INFO

    if not (Path(run_dir) / RUN_INFO).is_file():
        return {}
    scenes = _run_info(run_dir).get("scan_config", {}).get("scenes", {})  # ValueError naming a bad key
    return dict(scenes) if isinstance(scenes, dict) else {}


def checkpoint_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run and checkpoint options as keyword arguments of ``ScanConfig`` / ``ProbeConfig``.

    Covers RUN_DIR, --out, :func:`add_checkpoint_arguments` and --image-size (resolved by
    :func:`run_architecture`).
    """
    arch, model_kwargs, image_size = run_architecture(args)
    return dict(
        run_dir=str(args.run_dir),
        out=None if args.out is None else str(args.out),
        method=args.method,
        arch=arch,
        model_kwargs=model_kwargs,
        image_size=image_size,
        glob=args.glob,
        branch=args.branch,
        prefix=args.prefix,
        allow_partial=args.allow_partial,
        trust_checkpoints=args.trust_checkpoints,
        layer=args.layer,
        device=args.device,
        precision=args.precision,
    )


def report_failed(command: str, failed: Sequence[Any], where: Path) -> int:
    """Print the checkpoints that failed (objects with a ``checkpoint`` path) to stderr; 1 if any, else 0."""
    if not failed:
        return 0
    from ..backbones.discovery import checkpoint_label

    names = ", ".join(checkpoint_label(r.checkpoint) for r in failed)
    print(f"dsekit {command}: {len(failed)} checkpoint(s) failed: {names} (see {where})", file=sys.stderr)
    return 1
