#!/usr/bin/env python
"""Speed, peak memory and seed-to-seed stability of ``dsekit.metrics.dse.dse``, over a suite of inputs.

Every input of the suite (``bench/_dse_inputs.py``: well-separated classes, overlapping
classes at three noise levels, uneven anisotropic classes, isotropic Gaussian noise, and real
patch tokens of a checkpoint trained by ``dsekit train`` on the built-in scenes) goes through
dsekit and, when a checkout of the paper authors' code is given with ``--reference DIR``
(``DIR/estimator.py`` providing ``compute_DSE``), through their estimator, with the same
settings (``normalize=True``, 3 local clusters, 24 global clusters, groups of 8 images).

Usage::

    python bench/dse_speed.py [--reference DIR] [--inputs NAME ...] [--sizes 64 256 1024]
                              [--threads 2] [--device cpu|cuda|all] [--repeats R] [--real RUN]
                              [--cache DIR] [--json OUT] [--quick] [--max-ref-seconds S]
                              [--parts timing memory spread] [--passive] [--no-floor]

Reported:

* per input, device and batch size ``B`` (``N = 196`` patches, ``d = 384`` channels): the
  median time of dsekit (after a warm-up call at the same size) and of the reference, timed
  in alternation (each reference call right after a dsekit call; fewer reference calls at
  slow sizes; skipped when a linear extrapolation from the previous size exceeds
  ``--max-ref-seconds``), their ratio (the median of the ratios of the calls made one after
  the other, robust to the machine's drift), both DSE values, and on CPU the *floor*:
  the bare time of the kernels the computation cannot avoid, timed alone at their real shapes
  on the same input (``bench/_dse_floor.py`` says which), and dsekit's time over it;
* the peak extra memory of one dsekit call at ``B = 1024`` (input ``uneven-anisotropic``),
  measured in a fresh subprocess (CPU: peak resident set size minus the resident set size
  once the input exists; CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation
  before the call);
* the spread (standard deviation and max − min) of DSE over 10 seeds on clustered features
  with exactly as many classes per group of images as ``global_clusters``, uneven in size:
  an input on which a k-means with weak seeding merges clusters differently from seed to
  seed. dsekit runs with its default ``n_init`` (the verdict) and with ``n_init = 3``.

Targets on CPU: >= 5x faster than the reference at B = 256 on every input, and within 1.5x of
the floor; >= 10x at B = 1024; <= 2 GB extra memory at B = 1024; dsekit's seed-to-seed spread
at most a quarter of the reference's. On a GPU: B = 1024 in <= 0.1 s and >= 50x faster.

The reference re-seeds the process-wide RNG inside every k-means call (from
``torch.initial_seed()``), so each reference call here is preceded by
``torch.manual_seed(seed)`` and the global RNG state (CPU and CUDA) is saved before and
restored after it, outside the timed region.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ``--passive``: idle OpenMP threads sleep rather than spin (set before torch loads its OpenMP
# runtime). On a machine shared with other jobs, spinning threads of a 2-thread pool can slow
# every parallel region down many times over; on an idle machine the default (spinning for a
# while) is faster for dsekit and the reference alike. An OMP_WAIT_POLICY already in the
# environment is kept either way, and every run prints the policy it ran under.
if "--passive" in sys.argv[1:]:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from dsekit.metrics.dse import DSESettings, dse  # noqa: E402

from _common import preserved_rng, sync  # noqa: E402
from _dse_floor import dse_floor  # noqa: E402
from _dse_inputs import (
    DIM,
    N_PATCHES,
    REAL,
    SUITE,
    clustered_features,
    real_token_loader,
    synthetic_features,
    train_real_run,
)  # noqa: E402
from _targets import GPU_DSE_RATIO_B1024, GPU_DSE_SECONDS_B1024  # noqa: E402

SETTINGS = dict(local_clusters=3, global_clusters=24, images_per_group=8, normalize=True)
MEMORY_INPUT = "uneven-anisotropic"

# Features for the seed-to-seed spread: exactly global_clusters (24) classes in every group
# of 8 images (3 per image), sizes uneven (weights 1..4), well separated: the right
# clustering is clear, but one k-means++ attempt can miss a smaller class and split a
# larger one instead, which changes DSE.
SPREAD_INPUT = dict(num_classes=24, classes_per_image=(3, 3), shift=0.05, noise=0.2, unevenness=4.0, cover_group=8)

TARGET_CPU_RATIO_B256 = 5.0
TARGET_CPU_FLOOR_B256 = 1.5
TARGET_CPU_RATIO_B1024 = 10.0
TARGET_CPU_MEMORY_BYTES = 2e9
TARGET_SPREAD_FRACTION = 0.25


# --------------------------------------------------------------------------- helpers


def load_reference(path: str | None) -> tuple[Callable[..., Any] | None, str]:
    """Import ``compute_DSE`` from ``path/estimator.py``; ``(None, why)`` when impossible."""
    if not path:
        return None, "reference: not given (--reference DIR); timing dsekit alone"
    directory = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(os.path.join(directory, "estimator.py")):
        return None, f"reference: no estimator.py in {directory}; timing dsekit alone"
    sys.path.insert(0, directory)
    try:
        module = importlib.import_module("estimator")
        fn = module.compute_DSE
    except Exception as exc:  # noqa: BLE001 - any import problem means: no reference
        return (
            None,
            f"reference: could not import compute_DSE from {directory} ({type(exc).__name__}: {exc}); timing dsekit alone",
        )
    finally:
        sys.path.remove(directory)
    return fn, f"reference: compute_DSE from {os.path.join(directory, 'estimator.py')}"


def run_dsekit(x: torch.Tensor, seed: int, n_init: int | None = None) -> float:
    kwargs = {} if n_init is None else {"n_init": n_init}
    return dse(x, seed=seed, **SETTINGS, **kwargs).dse_raw


def run_reference(ref: Callable[..., Any], x: torch.Tensor, seed: int) -> tuple[float, float]:
    """One reference call under ``torch.manual_seed(seed)`` -> (seconds, DSE); RNG restored."""
    device = str(x.device)
    with preserved_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference's own UserWarnings
        torch.manual_seed(seed)
        sync(device)
        t0 = time.perf_counter()
        out = ref(
            x,
            inter_class_distance_images=SETTINGS["images_per_group"],
            normalize=SETTINGS["normalize"],
            local_clusters=SETTINGS["local_clusters"],
            global_clusters=SETTINGS["global_clusters"],
        )
        sync(device)
        seconds = time.perf_counter() - t0
    return seconds, float(out[4])


def time_dsekit(x: torch.Tensor, repeats: int, seed: int) -> tuple[float, list[float], float]:
    """Warm-up call, then ``repeats`` timed calls -> (median seconds, all times, DSE)."""
    value = run_dsekit(x, seed)  # warm-up
    times = []
    for _ in range(repeats):
        seconds, value = _dsekit_call(x, seed)
        times.append(seconds)
    return statistics.median(times), times, value


def _dsekit_call(x: torch.Tensor, seed: int) -> tuple[float, float]:
    """One timed dsekit call -> (seconds, DSE)."""
    sync(str(x.device))
    t0 = time.perf_counter()
    value = run_dsekit(x, seed)
    sync(str(x.device))
    return time.perf_counter() - t0, value


def time_side_by_side(
    ref: Callable[..., Any], x: torch.Tensor, repeats: int, seed: int, budget: float
) -> tuple[list[float], float, list[float], float]:
    """dsekit (after a warm-up call) and the reference in alternation, each reference call right
    after a dsekit call, so that both see the same machine; the reference stops once ``budget``
    seconds are spent, dsekit goes on to ``repeats`` calls -> (dsekit times, DSE, reference
    times, DSE)."""
    value = run_dsekit(x, seed)  # warm-up
    mine: list[float] = []
    theirs: list[float] = []
    ref_value = float("nan")
    for _ in range(repeats):
        seconds, value = _dsekit_call(x, seed)
        mine.append(seconds)
        if theirs and sum(theirs) + theirs[-1] > budget:
            continue
        seconds, ref_value = run_reference(ref, x, seed)
        theirs.append(seconds)
    return mine, value, theirs, ref_value


# --------------------------------------------------------------------------- memory


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class _RSSSampler:
    """Samples VmRSS every millisecond in a thread (when VmHWM cannot be reset)."""

    def __init__(self) -> None:
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, _status_kib("VmRSS") or 0)
            time.sleep(0.001)

    def __enter__(self) -> _RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, _status_kib("VmRSS") or 0)


def memory_child(B: int, device: str, threads: int, seed: int) -> dict[str, Any]:
    """Peak extra memory of one dsekit call on a fresh process (run by ``--_memory-child``)."""
    torch.set_num_threads(threads)
    x = synthetic_features(MEMORY_INPUT, B, seed=seed).to(device)
    run_dsekit(x[: min(B, 16)], seed)  # initialise libraries and kernels (not counted)
    gc.collect()
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run_dsekit(x, seed)
        sync(device)
        extra = torch.cuda.max_memory_allocated() - before
        return dict(
            device=device, B=B, extra_bytes=int(extra), method="torch.cuda.max_memory_allocated - allocated before"
        )
    base_kib = _status_kib("VmRSS")
    if base_kib is None:  # no /proc: growth of the lifetime peak (a lower bound)
        unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run_dsekit(x, seed)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return dict(
            device=device, B=B, extra_bytes=int((peak - base) * unit), method="growth of ru_maxrss (lower bound)"
        )
    try:  # reset the peak (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        hwm = _status_kib("VmHWM")
        hwm_reset = hwm is not None and hwm <= base_kib + 4096
    except OSError:
        hwm_reset = False
    if hwm_reset:
        run_dsekit(x, seed)
        peak_kib = max(_status_kib("VmHWM") or 0, _status_kib("VmRSS") or 0)
        method = "VmHWM (peak reset via /proc/self/clear_refs)"
    else:
        with _RSSSampler() as sampler:
            run_dsekit(x, seed)
        peak_kib = sampler.peak_kib
        method = "VmRSS sampled every 1 ms"
    method += " minus VmRSS once the input exists"
    return dict(device=device, B=B, extra_bytes=int((peak_kib - base_kib) * 1024), method=method)


def measure_memory(B: int, device: str, threads: int, seed: int) -> dict[str, Any]:
    """Run :func:`memory_child` in a fresh interpreter and parse its result."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--_memory-child",
        str(B),
        "--device",
        device,
        "--threads",
        str(threads),
        "--seed",
        str(seed),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line[len("MEMORY ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return dict(device=device, B=B, extra_bytes=None, method="failed: " + " | ".join(tail))


# --------------------------------------------------------------------------- spread


@dataclass
class Spread:
    name: str
    values: list[float] = field(default_factory=list)
    seconds: float = float("nan")  # mean seconds per call

    @property
    def std(self) -> float:
        return statistics.pstdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def range(self) -> float:
        return max(self.values) - min(self.values) if self.values else float("nan")

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else float("nan")


def seed_spread(
    ref: Callable[..., Any] | None, B: int, device: str, seeds: int, n_inits: list[int | None]
) -> list[Spread]:
    """DSE of one clustered input (:data:`SPREAD_INPUT`) under seeds ``0..seeds-1``.

    ``n_inits``: dsekit settings to try (``None``: its default). The reference is seeded
    with ``torch.manual_seed(seed)`` before each call.
    """
    x = clustered_features(B, **SPREAD_INPUT, seed=0).to(device)
    out = []
    for n_init in n_inits:
        s = Spread("dsekit" if n_init is None else f"dsekit, n_init={n_init}")
        sync(device)
        t0 = time.perf_counter()
        s.values = [run_dsekit(x, seed, n_init) for seed in range(seeds)]
        sync(device)
        s.seconds = (time.perf_counter() - t0) / seeds
        out.append(s)
    if ref is not None:
        s = Spread("reference")
        calls = [run_reference(ref, x, seed) for seed in range(seeds)]
        s.values = [v for _, v in calls]
        s.seconds = statistics.fmean(t for t, _ in calls)
        out.append(s)
    return out


# --------------------------------------------------------------------------- output


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
        print(title)
        print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))
        return
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*r)
    Console(width=max(160, len(title) + 4)).print(table)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--reference", metavar="DIR", help="directory holding the authors' estimator.py (compute_DSE)")
    p.add_argument(
        "--inputs",
        nargs="+",
        choices=SUITE,
        default=None,
        metavar="NAME",
        help=f"inputs of the suite (default all: {' '.join(SUITE)}; --quick: overlap-1.0)",
    )
    p.add_argument(
        "--real", metavar="RUN", help="run folder of dsekit train for real-tokens (default: train one into --cache)"
    )
    p.add_argument(
        "--cache",
        metavar="DIR",
        default=os.path.join(os.path.expanduser("~"), ".cache", "dsekit-bench"),
        help="where the real-tokens run is trained once (default ~/.cache/dsekit-bench)",
    )
    p.add_argument("--no-floor", action="store_true", help="do not measure the floor")
    p.add_argument(
        "--passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE (for a machine shared with other jobs)"
    )
    p.add_argument("--sizes", type=int, nargs="+", metavar="B", help="batch sizes (default 64 256 1024; --quick: 64)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument(
        "--device", choices=("cpu", "cuda", "all"), default="all", help="cpu, cuda, or all available (default)"
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed calls per size after a warm-up (default 3; --quick: 1)"
    )
    p.add_argument(
        "--max-ref-seconds",
        type=float,
        default=180.0,
        help="skip the reference at a size when one call extrapolates beyond this (default 180)",
    )
    p.add_argument(
        "--ref-budget",
        type=float,
        default=90.0,
        help="stop repeating reference calls at a size after about this many seconds (default 90)",
    )
    p.add_argument("--seeds", type=int, default=None, help="seeds for the spread (default 10; --quick: 3)")
    p.add_argument("--spread-size", type=int, default=64, help="B of the spread input (default 64)")
    p.add_argument(
        "--spread-n-init",
        type=int,
        nargs="*",
        default=[3],
        metavar="R",
        help="further dsekit n_init values for the spread, besides the default (default: 3)",
    )
    p.add_argument(
        "--memory-size",
        type=int,
        default=None,
        help="B of the memory measurement (default 1024; --quick: largest size)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the timed calls (default 0)")
    p.add_argument(
        "--parts",
        nargs="+",
        choices=("timing", "memory", "spread"),
        default=["timing", "memory", "spread"],
        help="what to measure (default: all three)",
    )
    p.add_argument("--json", metavar="OUT", help="also write every number to this JSON file")
    p.add_argument("--quick", action="store_true", help="smoke run: one input, B = 64 (or --sizes), 1 repeat, 3 seeds")
    p.add_argument("--_memory-child", dest="memory_child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = [64] if args.quick else [64, 256, 1024]
    if args.inputs is None:
        args.inputs = ["overlap-1.0"] if args.quick else list(SUITE)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.seeds is None:
        args.seeds = 3 if args.quick else 10
    if args.memory_size is None:
        args.memory_size = max(args.sizes) if args.quick else 1024
    if args.quick:
        args.spread_size = min(args.spread_size, max(args.sizes))
    for name in ("threads", "repeats", "seeds", "spread_size", "memory_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    if args.real and not (Path(args.real) / "dsekit.json").is_file():
        p.error(f"--real: {args.real} is not a run folder written by dsekit train (no dsekit.json)")
    if min(args.sizes) < 1:
        p.error(f"--sizes: expected positive batch sizes, got {args.sizes}")
    return args


def suite_inputs(args: argparse.Namespace) -> dict[str, Callable[[int], torch.Tensor]]:
    """``name -> (B -> features (B, N, d))`` for every input asked for."""
    out: dict[str, Callable[[int], torch.Tensor]] = {}
    for name in args.inputs:
        if name == REAL:
            run = Path(args.real) if args.real else train_real_run(Path(args.cache))
            out[name] = real_token_loader(run, max(args.sizes))
        else:
            out[name] = lambda B, name=name: synthetic_features(name, B, seed=args.seed)
    return out


def bench_timings(args: argparse.Namespace, devices: list[str], ref: Callable[..., Any] | None) -> list[dict[str, Any]]:
    """Time dsekit, the reference and (on CPU) the floor per input, device and size; print the table."""
    entries, rows = [], []
    inputs = suite_inputs(args)
    for device in devices:
        if ref is not None:  # warm-up of the reference at a small size
            run_reference(ref, synthetic_features("overlap-1.0", 8, seed=args.seed).to(device), args.seed)
        for name, make in inputs.items():
            last_ref: tuple[int, float] | None = None
            for B in args.sizes:
                x = make(B).to(device)
                estimate = last_ref[1] * B / last_ref[0] if last_ref else None
                skip = ref is None or (estimate is not None and estimate > args.max_ref_seconds)
                note = (
                    ""
                    if ref is None or not skip
                    else (
                        f"reference skipped: ~{estimate:.0f} s expected (> --max-ref-seconds {args.max_ref_seconds:g})"
                    )
                )
                all_ref: list[float] = []
                v_ref: float | None = None
                if skip:
                    t_dse, all_dse, v_dse = time_dsekit(x, args.repeats, args.seed)
                else:
                    try:
                        all_dse, v_dse, all_ref, v_ref = time_side_by_side(
                            ref, x, args.repeats, args.seed, args.ref_budget
                        )
                    except Exception as exc:  # noqa: BLE001 - report and go on
                        note = f"reference failed: {type(exc).__name__}: {exc}"
                        _, all_dse, v_dse = time_dsekit(x, args.repeats, args.seed)
                    t_dse = statistics.median(all_dse)
                e: dict[str, Any] = dict(
                    input=name,
                    device=device,
                    B=B,
                    dsekit_s=t_dse,
                    dsekit_times=all_dse,
                    dsekit_dse=v_dse,
                    reference_s=None,
                    reference_times=all_ref,
                    reference_dse=v_ref,
                    ratio=None,
                    floor_s=None,
                    floor_parts=None,
                    floor_iterations=None,
                    over_floor=None,
                    note=note,
                )
                if all_ref:
                    # the median of the ratios of the calls made one after the other
                    pairs = [r / d for r, d in zip(all_ref, all_dse, strict=True)]
                    e.update(reference_s=statistics.median(all_ref), ratio=statistics.median(pairs), pair_ratios=pairs)
                    last_ref = (B, statistics.median(all_ref))
                if device == "cpu" and not args.no_floor:
                    fl = dse_floor(x, seed=args.seed)
                    e.update(
                        floor_s=fl.seconds,
                        floor_parts=fl.parts,
                        floor_iterations=fl.iterations,
                        over_floor=t_dse / fl.seconds,
                    )
                entries.append(e)
                print(
                    f"  {name} {device} B={B}: dsekit {_fmt_s(t_dse)}"
                    + (f", floor {_fmt_s(e['floor_s'])}" if e["floor_s"] is not None else "")
                    + (f", reference {_fmt_s(e['reference_s'])}" if e["reference_s"] is not None else "")
                    + (f" ({e['note']})" if e["note"] else ""),
                    flush=True,
                )
                rows.append(
                    [
                        name,
                        device,
                        str(B),
                        _fmt_s(t_dse),
                        _fmt_s(e["reference_s"]),
                        f"{e['ratio']:.1f}x" if e["ratio"] is not None else "—",
                        _fmt_s(e["floor_s"]),
                        f"{e['over_floor']:.2f}x" if e["over_floor"] is not None else "—",
                        f"{v_dse:.4f}",
                        f"{e['reference_dse']:.4f}" if e["reference_dse"] is not None else "—",
                    ]
                )
                del x
    print()
    print_table(
        f"DSE time per batch (median of {args.repeats} after a warm-up; N = {N_PATCHES}, d = {DIM}, {args.threads} threads)",
        ["input", "device", "B", "dsekit", "reference", "ref/dsekit", "floor", "dsekit/floor", "DSE dsekit", "DSE ref"],
        rows,
    )
    print("  floor: the bare time of the unavoidable kernels on this input (bench/_dse_floor.py)")
    for e in entries:
        if e["note"]:
            print(f"  {e['input']} {e['device']} B={e['B']}: {e['note']}")
    return entries


def bench_spread(args: argparse.Namespace, device: str, ref: Callable[..., Any] | None) -> dict[str, Any]:
    """DSE over seeds for dsekit (default and further ``n_init``) and the reference; print the table."""
    default_n_init = DSESettings().n_init
    extra = [n for n in args.spread_n_init if n != default_n_init]
    spreads = seed_spread(ref, args.spread_size, device, args.seeds, [None, *extra])
    rs = next((s for s in spreads if s.name == "reference"), None)
    print()
    print_table(
        f"DSE over seeds 0..{args.seeds - 1} ({device}, B = {args.spread_size}, "
        f"{SPREAD_INPUT['num_classes']} uneven classes per group, {SETTINGS['global_clusters']} global clusters)",
        ["implementation", "mean DSE", "std", "max - min", "std / ref std", "time / call"],
        [
            [
                s.name,
                f"{s.mean:.4f}",
                f"{s.std:.4f}",
                f"{s.range:.4f}",
                f"{s.std / rs.std:.3f}" if rs is not None and rs.std > 0 else "—",
                _fmt_s(s.seconds),
            ]
            for s in spreads
        ],
    )
    print(
        f"  'dsekit' runs with its default n_init = {default_n_init} (greedy k-means++ seeding, D^2 sampling); "
        "the target is judged on it"
    )
    out: dict[str, Any] = dict(
        device=device,
        B=args.spread_size,
        seeds=args.seeds,
        dsekit_n_init=default_n_init,
        results={
            s.name: dict(values=s.values, mean=s.mean, std=s.std, range=s.range, seconds_per_call=s.seconds)
            for s in spreads
        },
    )
    if rs is not None and rs.std > 0:
        for s in spreads:
            if s is not rs:
                out["results"][s.name].update(std_ratio=s.std / rs.std, range_ratio=s.range / rs.range)
    return out


def print_targets(report: dict[str, Any]) -> dict[str, bool | None]:
    """Print each target with its measured value and verdict (``None``: not measured)."""
    print("\nTargets")
    verdicts: dict[str, bool | None] = {}
    timings = report.get("timings", [])

    def judge(
        key: str, label: str, cells: list[dict[str, Any]], value: str, ok: Callable[[dict[str, Any]], bool]
    ) -> None:
        measured = [e for e in cells if e[value] is not None]
        verdict = None if not measured else all(ok(e) for e in measured)
        verdicts[key] = verdict
        each = ", ".join(f"{e['input']} {e[value]:.2f}x" for e in measured) or "not measured"
        print(f"  {label}: {each} -> {_verdict(verdict)}")

    cpu256 = [e for e in timings if e["device"] == "cpu" and e["B"] == 256]
    judge(
        "cpu_b256_ratio",
        f"CPU, B = 256, >= {TARGET_CPU_RATIO_B256:g}x faster than the reference on every input",
        cpu256,
        "ratio",
        lambda e: e["ratio"] >= TARGET_CPU_RATIO_B256,
    )
    judge(
        "cpu_b256_floor",
        f"CPU, B = 256, within {TARGET_CPU_FLOOR_B256:g}x of the floor on every input",
        cpu256,
        "over_floor",
        lambda e: e["over_floor"] <= TARGET_CPU_FLOOR_B256,
    )
    cpu1024 = [e for e in timings if e["device"] == "cpu" and e["B"] == 1024]
    judge(
        "cpu_b1024_ratio",
        f"CPU, B = 1024, >= {TARGET_CPU_RATIO_B1024:g}x faster than the reference on every input",
        cpu1024,
        "ratio",
        lambda e: e["ratio"] >= TARGET_CPU_RATIO_B1024,
    )
    gpu = [e for e in timings if e["device"] == "cuda" and e["B"] == 1024]
    ok_t = None if not gpu else all(e["dsekit_s"] <= GPU_DSE_SECONDS_B1024 for e in gpu)
    verdicts["gpu_b1024_seconds"] = ok_t
    print(
        f"  GPU, B = 1024, <= {GPU_DSE_SECONDS_B1024:g} s on every input: "
        + (", ".join(f"{e['input']} {_fmt_s(e['dsekit_s'])}" for e in gpu) or "not measured")
        + f" -> {_verdict(ok_t)}"
    )
    judge(
        "gpu_b1024_ratio",
        f"GPU, B = 1024, >= {GPU_DSE_RATIO_B1024:g}x faster than the reference on every input",
        gpu,
        "ratio",
        lambda e: e["ratio"] >= GPU_DSE_RATIO_B1024,
    )
    for m in report.get("memory", []):
        mb = None if m["extra_bytes"] is None else m["extra_bytes"] / 1e6
        ok = (
            None
            if mb is None or m["device"] != "cpu" or m["B"] != 1024
            else m["extra_bytes"] <= TARGET_CPU_MEMORY_BYTES
        )
        if m["device"] == "cpu":
            verdicts["cpu_memory_b1024"] = ok
        target = f" (target at B = 1024: <= {TARGET_CPU_MEMORY_BYTES / 1e9:g} GB)" if m["device"] == "cpu" else ""
        print(
            f"  peak extra memory, {m['device']}, B = {m['B']}{target}: "
            + (f"{mb:.0f} MB" if mb is not None else "not measured")
            + f" [{m['method']}] -> {_verdict(ok)}"
        )
    spread = report.get("spread")
    if spread is not None:
        ds = spread["results"]["dsekit"]
        if "std_ratio" in ds:
            ok = ds["std_ratio"] <= TARGET_SPREAD_FRACTION and ds["range_ratio"] <= TARGET_SPREAD_FRACTION
            print(
                f"  seed spread, dsekit (n_init = {spread['dsekit_n_init']}) / reference: std {ds['std_ratio']:.3f}, "
                f"max - min {ds['range_ratio']:.3f} (target <= {TARGET_SPREAD_FRACTION:g}) -> {_verdict(ok)}"
            )
            for name, r in spread["results"].items():
                if name not in ("dsekit", "reference") and "std_ratio" in r:
                    print(f"    {name} / reference: std {r['std_ratio']:.3f}, max - min {r['range_ratio']:.3f}")
        else:
            ok = None
            print(
                f"  seed spread: dsekit std = {ds['std']:.4f}, max - min = {ds['range']:.4f}; no reference spread -> n/a"
            )
        verdicts["seed_spread"] = ok
    return verdicts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        print("MEMORY " + json.dumps(memory_child(args.memory_child, args.device, args.threads, args.seed)), flush=True)
        return 0

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    devices = (
        ["cpu"]
        if args.device == "cpu"
        else ["cuda"]
        if args.device == "cuda"
        else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    )

    ref, ref_note = load_reference(args.reference)
    load0 = os.getloadavg()
    print(f"dsekit DSE benchmark: N = {N_PATCHES}, d = {DIM}, {SETTINGS}")
    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, CPU threads = {args.threads} "
        f"(of {os.cpu_count()} cores), devices: {', '.join(devices)}"
        + (f" ({torch.cuda.get_device_name()})" if "cuda" in devices else "")
    )
    print(
        f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset (the OpenMP default)')}"
    )
    if load0[0] > 0.5 * (os.cpu_count() or 1):
        print(
            f"warning: the machine is busy (load {load0[0]:.2f} on {os.cpu_count()} cores): CPU timings are unreliable"
        )
    print(ref_note, flush=True)
    report: dict[str, Any] = dict(
        settings=SETTINGS,
        N=N_PATCHES,
        d=DIM,
        threads=args.threads,
        torch=torch.__version__,
        devices=devices,
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
        reference=args.reference if ref is not None else None,
        reference_note=ref_note,
        inputs=args.inputs,
        memory_input=MEMORY_INPUT,
        spread_input=SPREAD_INPUT,
        load_average_start=load0,
    )
    if "timing" in args.parts:
        report["timings"] = bench_timings(args, devices, ref)
    if "memory" in args.parts:
        report["memory"] = [measure_memory(args.memory_size, device, args.threads, args.seed) for device in devices]
    if "spread" in args.parts:
        report["spread"] = bench_spread(args, devices[0], ref)
    report["targets"] = print_targets(report)

    load1 = os.getloadavg()
    report["load_average_end"] = load1
    print(f"load average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
