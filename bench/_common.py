"""Helpers shared by the benchmarks in this folder (imported as ``_common``: the scripts run as
``python bench/NAME.py``, which puts this folder first on ``sys.path``)."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator

import torch


def sync(device: str) -> None:
    """Wait for queued CUDA work, so that timings cover it; nothing on CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], device: str = "cpu", repeats: int = 5) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after a warm-up call, each timed from and
    to an idle ``device``."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Save the process-wide RNG state (CPU and CUDA) and restore it afterwards."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def load_average() -> str:
    """The 1/5/15-minute load averages, to quote beside a timing ("n/a" where the OS has none)."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"
