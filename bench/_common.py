"""Helpers shared by the benchmarks in this folder (imported as ``_common``: the scripts run as
``python bench/NAME.py``, which puts this folder first on ``sys.path``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def sync(device: str) -> None:
    """Wait for queued CUDA work, so that timings cover it; nothing on CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


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
