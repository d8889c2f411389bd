"""Command-line interface: ``dsekit <command> ...`` (also ``python -m dsekit``).

The only place with argument parsers: ``dse``, ``report``, ``data`` and ``demo`` here, ``scan``,
``probe`` and ``train`` in their own modules of this package; each handler builds the library's
settings object and calls the library. The parsers are built from light modules only (no torch,
no data packages): the work is imported in the handlers, so that ``--help``, ``--version`` and an
argument error answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..metrics.settings import DSESettings
from ..train.presets import DEMO_REGULARIZE_BETA, METHODS
from .args import add_cluster_arguments, positive_int, seed_int
from .probe import add_probe_parser
from .scan import add_scan_parser
from .train import add_train_parser

__all__ = ["main", "build_parser"]

DEFAULT = DSESettings()


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
    add_cluster_arguments(p)
    p.add_argument("--batch-size", type=positive_int, default=1024, help="images per DSE batch (default 1024)")
    p.add_argument("--no-normalize", action="store_true", help="do not L2-normalise patches")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of k-means and the M_dim permutation")
    p.add_argument(
        "--n-init", type=positive_int, default=DEFAULT.n_init, help=f"k-means restarts (default {DEFAULT.n_init})"
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the five terms")
    p.set_defaults(func=_run_dse)


def _run_dse(args: argparse.Namespace) -> int:
    import torch

    from ..io import load_array
    from ..metrics.dse import TERMS, DSEAccumulator, as_features, dse_from_labels

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


# --------------------------------------------------------------------------- report


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="correlation of label-free metrics with mIoU, and the selection gain of DSE",
        description="Read dse.csv (dsekit scan) and probe.csv (dsekit probe) and write report.md, "
        "report.json and report_<dataset>.png: Kendall tau and Spearman rho of every metric with mIoU "
        "per dataset, and the mIoU gained by selecting checkpoints by DSE.",
    )
    p.add_argument(
        "run_dir", type=Path, help="the run folder (its dse/ output folder is used) or the output folder itself"
    )
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--top", type=positive_int, default=3)
    p.add_argument("--confidence", type=float, default=0.95, help="nominal coverage of the intervals (default 0.95)")
    p.set_defaults(func=_run_report)


def _outputs_folder(run_dir: Path) -> Path:
    if (run_dir / "dse.csv").is_file():
        return run_dir
    if (run_dir / "dse" / "dse.csv").is_file():
        return run_dir / "dse"
    raise FileNotFoundError(f"{run_dir}: no dse.csv here or in {run_dir / 'dse'}; run `dsekit scan` first")


def _run_report(args: argparse.Namespace) -> int:
    from ..report import write_report

    out = _outputs_folder(args.run_dir)
    report = write_report(out, window=args.window, top=args.top, confidence=args.confidence)
    print((out / "report.md").read_text())
    print(f"report written to {out / 'report.md'} ({len(report['datasets'])} dataset(s))")
    return 0


# --------------------------------------------------------------------------- data


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="built-in data sets")
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    dsub.required = True
    s = dsub.add_parser(
        "scenes",
        help="write the built-in scenes (digits on textures) as PNG images and masks",
        description="Write the built-in dense scenes in a VOC-like layout: images/, masks/, "
        "ImageSets/Segmentation/{train,val}.txt, classes.txt.",
    )
    s.add_argument("out", type=Path, help="output folder")
    s.add_argument("--n", type=positive_int, default=1000, help="scenes per split (default 1000)")
    s.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    s.add_argument("--image-size", type=positive_int, default=None, help="side in pixels (default 224)")
    s.add_argument("--seed", type=seed_int, default=0)
    s.set_defaults(func=_run_data_scenes)


def _run_data_scenes(args: argparse.Namespace) -> int:
    from ..data.scenes import write_scenes

    res = write_scenes(args.out, args.n, splits=args.splits, image_size=args.image_size, seed=args.seed)
    counts = ", ".join(f"{n} {split}" for split, n in res.counts.items())
    print(f"wrote {counts} scenes ({len(res.class_names)} classes) to {res.root}")
    return 0


# --------------------------------------------------------------------------- demo


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="end to end on a laptop CPU: train a small MoCo v3, scan, probe, report",
        description="Train a small MoCo v3 on the built-in scenes (CPU), scan its checkpoints (DSE), linear-probe them "
        "on the scenes' masks (mIoU), measure their image-level k-NN accuracy and write the report with its verdict. "
        "A rerun reuses what is done.",
    )
    p.add_argument("--quick", action="store_true", help="a smaller run (a few minutes)")
    p.add_argument("--out", type=Path, default=Path("dsekit-demo"), help="output folder (default ./dsekit-demo)")
    p.add_argument("--seed", type=seed_int, default=0, help="training seed (default 0)")
    p.add_argument("--method", default="mocov3", choices=list(METHODS), help="SSL method (default mocov3)")
    reg = p.add_mutually_exclusive_group()
    reg.add_argument(
        "--regularize",
        action="store_true",
        help=f"train with the DSE regulariser, loss − β·DSE at β = {DEMO_REGULARIZE_BETA:g}",
    )
    reg.add_argument("--dse-weight", type=float, default=None, help="β of the DSE regulariser (default 0: off)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, demo

    demo(
        DemoConfig(
            out=str(args.out),
            quick=args.quick,
            seed=args.seed,
            device=args.device,
            method=args.method,
            dse_weight=DEMO_REGULARIZE_BETA if args.regularize else (args.dse_weight or 0.0),
        ),
        progress=not args.quiet,
    )
    return 0


# --------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsekit",
        description="Label-free dense representation quality (DSE) for self-supervised checkpoints.",
    )
    parser.add_argument("--version", action="version", version=f"dsekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_dse(sub)
    add_scan_parser(sub)
    add_probe_parser(sub)
    _add_report(sub)
    add_train_parser(sub)
    _add_demo(sub)
    _add_data(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:
            from ..runtime import resolve_device

            try:
                resolve_device(args.device)  # an unknown device, or CUDA where there is none: one line
            except ValueError as exc:
                raise ValueError(f"--{exc}") from None
        return int(args.func(args) or 0)
    except (ValueError, OSError, ImportError) as exc:  # bad input, missing files or extras: the message names them
        print(f"dsekit {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Warnings at the command line as one line, ``dsekit: warning: ...`` (no source location)."""
    print(f"dsekit: warning: {message}", file=file or sys.stderr)


#: caches the libraries would write under the home folder or the temp folder, and their variables
_LIBRARY_CACHES = {"MPLCONFIGDIR": "matplotlib", "TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}


def _private_caches() -> None:
    """Point the libraries' caches (matplotlib's font list, torch's compiler caches) that the
    user has not set into one temporary folder, removed when the process exits: a command
    writes nothing outside ``--out``, the run folder and that folder."""
    import atexit
    import os
    import shutil
    import tempfile

    unset = [v for v in _LIBRARY_CACHES if not os.environ.get(v)]
    if not unset:
        return
    tmp = tempfile.mkdtemp(prefix="dsekit-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    for var in unset:
        os.environ[var] = os.path.join(tmp, _LIBRARY_CACHES[var])


def console_main() -> int:
    """The ``dsekit`` executable: :func:`main` with warnings shown as one line each and the
    libraries' caches in a temporary folder removed on exit."""
    import warnings

    warnings.showwarning = _one_line_warning
    _private_caches()
    return main()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_main())
