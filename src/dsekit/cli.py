"""Command-line interface: ``dsekit <command> ...`` (also ``python -m dsekit``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _print_terms(title: str, rows: dict[str, float], notes: Sequence[str] = ()) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("term")
    table.add_column("value", justify="right")
    for name, value in rows.items():
        table.add_row(name, f"{value:.6f}")
    console = Console()
    console.print(table)
    for note in notes:
        console.print(note)


# --------------------------------------------------------------------------- dse


def _add_dse(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dse",
        help="DSE of a (B, N, d) dense feature array",
        description="Compute DSE (and its four terms) of one (B, N, d) array of dense features "
        "(.npy, .npz, .pt or .safetensors). With --local-labels/--global-labels the given cluster "
        "assignments replace k-means.",
    )
    p.add_argument("features", type=Path, help="(B, N, d) array: .npy, .npz, .pt or .safetensors")
    p.add_argument("--key", default=None, help="array name inside .npz/.pt/.safetensors files")
    p.add_argument("--local-labels", type=Path, default=None, help="(B, N) cluster of each patch in its image")
    p.add_argument("--global-labels", type=Path, default=None, help="(B, N) cluster of each patch in its group")
    p.add_argument("--local-clusters", type=_positive_int, default=3, help="k per image (default 3)")
    p.add_argument("--global-clusters", type=_positive_int, default=24, help="k per group (default 24)")
    p.add_argument("--images-per-group", type=_positive_int, default=8, help="images per group (default 8)")
    p.add_argument("--batch-size", type=_positive_int, default=1024, help="images per DSE batch (default 1024)")
    p.add_argument("--no-normalize", action="store_true", help="do not L2-normalise patches")
    p.add_argument("--seed", type=int, default=0, help="seed of k-means and the M_dim permutation")
    p.add_argument("--n-init", type=_positive_int, default=1, help="k-means restarts (default 1)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the five terms")
    p.set_defaults(func=_run_dse)


def _run_dse(args: argparse.Namespace) -> int:
    import torch

    from .io import load_array
    from .metrics.dse import DSEAccumulator, TERMS, as_features, dse_from_labels

    feats = as_features(load_array(args.features, args.key), name=str(args.features)).to(args.device)
    normalize = not args.no_normalize
    if (args.local_labels is None) != (args.global_labels is None):
        raise ValueError("--local-labels and --global-labels must be given together")
    if args.local_labels is not None:
        result = dse_from_labels(
            feats,
            load_array(args.local_labels),
            load_array(args.global_labels),
            local_clusters=args.local_clusters,
            global_clusters=args.global_clusters,
            images_per_group=args.images_per_group,
            normalize=normalize,
            seed=args.seed,
        )
    else:
        acc = DSEAccumulator(
            args.batch_size,
            seed=args.seed,
            local_clusters=args.local_clusters,
            global_clusters=args.global_clusters,
            images_per_group=args.images_per_group,
            normalize=normalize,
            n_init=args.n_init,
        )
        with torch.no_grad():
            acc.update(feats)
            result = acc.compute()
    if args.json:
        print(json.dumps({name: getattr(result, name) for name in TERMS}))
        return 0
    B, N, d = feats.shape
    notes = [f"{B} images x {N} patches x {d} channels, {result.num_batches} batch(es), settings {result.settings}"]
    if result.degenerate:
        notes.append("degenerate: the patches have no spread (collapsed); cluster terms are 0, DSE = M_dim")
    _print_terms(f"DSE of {args.features}", result.as_dict(), notes)
    return 0


# --------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="dsekit",
        description="Label-free dense representation quality (DSE) for self-supervised checkpoints.",
    )
    parser.add_argument("--version", action="version", version=f"dsekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_dse(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dsekit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
