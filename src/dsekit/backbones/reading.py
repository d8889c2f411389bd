"""Reading a checkpoint file safely: ``torch.load(weights_only=True)`` unless the caller trusts it.

Only plain training-setting types are allow-listed (:data:`SAFE_GLOBALS`: ``argparse.Namespace`` as
DINO / MAE / iBOT / Mugs / EsViT store their arguments, and ``pathlib`` paths). Anything else that
needs full unpickling fails with an error naming the opt-in ``trust_checkpoints=True`` (CLI
``--trust-checkpoints``). ``.safetensors`` files are read with safetensors.
"""

from __future__ import annotations

import argparse
import pathlib
import pickle
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from dsekit.backbones.registry import CheckpointError, UnsafeCheckpointError

__all__ = ["SAFE_GLOBALS", "read_checkpoint"]

#: Types that official checkpoints store next to the weights and that are harmless to rebuild.
SAFE_GLOBALS: tuple[type, ...] = (
    argparse.Namespace,
    pathlib.PosixPath,
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
)

_TRUST_HINT = "pass trust_checkpoints=True (CLI: --trust-checkpoints) only if you trust its source"


# --------------------------------------------------------------------------------------------------
# Reading (I/O)
# --------------------------------------------------------------------------------------------------


def _unsafe_globals(path: Path, message: str) -> list[str]:
    names: list[str] = []
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - best effort only (legacy formats are not supported by it)
        names = []
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in SAFE_GLOBALS}
    names = [n for n in names if n not in allowed]
    if not names:
        names = re.findall(r"GLOBAL ([\w\.]+)", message)
    return sorted(set(names))


def _allow_safe_globals() -> Any:
    """Context allow-listing :data:`SAFE_GLOBALS` for weights-only loading (torch >= 2.5)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is not None:
        return safe_globals(list(SAFE_GLOBALS))
    add = getattr(torch.serialization, "add_safe_globals", None)  # torch 2.4: process-wide only
    if add is not None:
        add(list(SAFE_GLOBALS))
    return nullcontext()


def read_checkpoint(
    path: str | Path,
    *,
    trust_checkpoints: bool = False,
    map_location: str | torch.device | None = "cpu",
) -> Any:
    """Load a checkpoint file safely and return the stored object.

    ``.safetensors`` files are read with safetensors. Everything else goes through
    ``torch.load(weights_only=True)`` with :data:`SAFE_GLOBALS` allow-listed; with
    ``trust_checkpoints=True`` full unpickling is used instead (arbitrary code: trusted files only).

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: it stores other Python objects (message names ``--trust-checkpoints``).
        CheckpointError: it is truncated, corrupt or not a checkpoint.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a directory, expected a file", p)
    if p.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {p}: the file is empty", p)

    if p.name.lower().endswith(".safetensors"):
        try:
            from safetensors.torch import load_file

            device = "cpu" if map_location is None else str(map_location)
            return load_file(str(p), device=device)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"cannot read checkpoint {p}: corrupt safetensors file ({err})", p) from err

    if trust_checkpoints:
        try:
            return torch.load(p, map_location=map_location, weights_only=False)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(
                f"cannot read checkpoint {p} with full unpickling: the file is truncated or corrupt, or "
                f"refers to code that cannot be imported ({_short(err)})",
                p,
            ) from err

    try:
        with _allow_safe_globals():
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        msg = str(err)
        if "unsupported global" in msg.lower() or "not an allowed global" in msg:  # torch words it both ways
            names = _unsafe_globals(p, msg)
            listed = ", ".join(names) if names else "unknown types"
            raise UnsafeCheckpointError(
                f"checkpoint {p} stores Python objects that need full unpickling ({listed}), which can "
                f"run arbitrary code; {_TRUST_HINT}",
                p,
                names,
            ) from None
        raise CheckpointError(
            f"cannot read checkpoint {p}: the file is truncated, corrupt or not a PyTorch checkpoint "
            f"({_short(err)})",
            p,
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError/EOFError/KeyError/... on bad files
        raise CheckpointError(
            f"cannot read checkpoint {p}: the file is truncated or corrupt ({_short(err)})", p
        ) from err


def _short(err: BaseException, limit: int = 200) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()
    first = text[0] if text else type(err).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."

