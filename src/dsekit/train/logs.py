"""What a training run's ``log.txt`` and settings say about collapse: the loss per epoch and the
value the loss takes when the network's output is uniform (input-independent).

* DINO: the cross-entropy between a uniform teacher and a uniform student over ``K = out_dim``
  prototypes is ``ln K``.
* MoCo v3: with every query equally similar to every key, each of the two InfoNCE terms is
  ``ln B`` (``B`` the batch), scaled by ``2 τ`` as the official code does: ``4 τ ln B``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["LOG_FILE", "collapse_loss", "read_training_log"]

LOG_FILE = "log.txt"


def read_training_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epochs of ``RUN_DIR/log.txt`` (one JSON object per line); [] when there is none.
    A line that is not a JSON object raises ``ValueError`` naming the file and the line."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}, line {n}: expected one JSON object per epoch, got {line[:80]!r}")
        out.append(rec)
    return out


def collapse_loss(settings: Mapping[str, Any]) -> float | None:
    """The SSL loss of a uniform output for a run's resolved settings (``dsekit.json``'s
    ``settings``: ``method``, ``out_dim`` / ``batch_size``, ``temperature``); None when unknown."""
    method = settings.get("method")
    try:
        if method == "dino":
            return math.log(int(settings["out_dim"]))
        if method == "mocov3":
            return 4.0 * float(settings["temperature"]) * math.log(int(settings["batch_size"]))
    except (KeyError, TypeError, ValueError):
        return None
    return None
