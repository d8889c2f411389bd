"""Reading a checkpoint file safely: ``torch.load(weights_only=True)`` unless the caller trusts it.

Only plain training-setting types are allow-listed (:data:`SAFE_GLOBALS`: ``argparse.Namespace`` as
DINO / MAE / iBOT / Mugs / EsViT store their arguments, and ``pathlib`` paths). Anything else that
needs full unpickling fails with an error naming the opt-in ``trust_checkpoints=True`` (CLI
``--trust-checkpoints``). ``.safetensors`` files are read with safetensors.

Two kinds of folder are one checkpoint each:

* a ``torch.distributed.checkpoint`` folder (``.metadata`` and ``*.distcp`` files, as DINOv3's
  ``ckpt/<iter>/``): read with torch's own DCP reader in this one process, no process group;
  the checkpoint is ``{"<group>": LazyStateDict, ...}`` for the top-level groups that hold
  tensors (``model``, ...; the optimizer's state is never read) plus its scalar entries
  (``iteration``);
* a Hugging Face model folder (``config.json`` with ``model.safetensors`` — sharded or not —
  or ``pytorch_model.bin``, read with ``weights_only=True``): ``{"config": dict, "weights":
  LazyStateDict}``.

A :class:`LazyStateDict` lists its tensors' names without reading them; the loader reads only
the tensors it keeps (:meth:`LazyStateDict.load`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from dsekit.backbones.registry import CheckpointError, UnsafeCheckpointError

__all__ = ["SAFE_GLOBALS", "LazyStateDict", "read_checkpoint", "run_config"]

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
    lazy: bool = False,
    mmap: bool = True,
) -> Any:
    """Load a checkpoint file safely and return the stored object.

    ``.safetensors`` files are read with safetensors (with ``lazy``: a :class:`LazyStateDict`
    whose tensors are read when asked for). Everything else goes through
    ``torch.load(weights_only=True)`` with :data:`SAFE_GLOBALS` allow-listed; with
    ``trust_checkpoints=True`` full unpickling is used instead (arbitrary code: trusted files only).
    Files in torch's zip format are memory-mapped (``mmap=True``): a tensor's bytes are read
    from disk when it is used, so a checkpoint larger than the memory can be opened and only the
    tensors copied out of it (the backbone's) take memory; legacy-format files are read whole.
    ``mmap=False`` reads a zip file whole too: for files that a running training rewrites in
    place (a mapped page of a file truncated meanwhile ends the process with SIGBUS).

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: it stores other Python objects (message names ``--trust-checkpoints``).
        CheckpointError: it is truncated, corrupt or not a checkpoint.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.is_dir():
        return _read_folder(p, trust_checkpoints)
    if p.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {p}: the file is empty", p)

    if p.name.lower().endswith(".safetensors"):
        if lazy:
            return LazyStateDict(_file_keys(p, False), lambda names: _read_tensors(p, names, False), p)
        try:
            from safetensors.torch import load_file

            device = "cpu" if map_location is None else str(map_location)
            return load_file(str(p), device=device)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"cannot read checkpoint {p}: corrupt safetensors file ({err})", p) from err

    if trust_checkpoints:
        try:
            return _torch_load(p, map_location, weights_only=False, mmap=mmap)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(
                f"cannot read checkpoint {p} with full unpickling: the file is truncated or corrupt, or "
                f"refers to code that cannot be imported ({_short(err)})",
                p,
            ) from err

    try:
        with _allow_safe_globals():
            return _torch_load(p, map_location, weights_only=True, mmap=mmap)
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
            f"cannot read checkpoint {p}: the file is truncated, corrupt or not a PyTorch checkpoint ({_short(err)})",
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


# --------------------------------------------------------------------------------------------------
# Folders: torch.distributed.checkpoint and Hugging Face
# --------------------------------------------------------------------------------------------------


def _torch_load(p: Path, map_location: Any, *, weights_only: bool, mmap: bool = True) -> Any:
    """``torch.load``, memory-mapped when the file is in torch's zip format (legacy files are
    read whole: torch cannot map them)."""
    if mmap and zipfile.is_zipfile(p):
        return torch.load(p, map_location=map_location, weights_only=weights_only, mmap=True)
    return torch.load(p, map_location=map_location, weights_only=weights_only)


class LazyStateDict(Mapping[str, Any]):
    """Named tensors of a checkpoint that are read only when asked for.

    ``keys``: the tensors' names; ``loader(names) -> {name: tensor}`` reads some of them;
    ``source``: the checkpoint they come from.
    """

    def __init__(self, keys: Sequence[str], loader: Callable[[list[str]], dict[str, Any]], source: Path) -> None:
        self._keys = list(keys)
        self._set = set(self._keys)
        self._loader = loader
        self.source = source

    def __getitem__(self, key: str) -> Any:
        if key not in self._set:
            raise KeyError(key)
        return self._loader([key])[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._set

    def load(self, keys: Sequence[str]) -> dict[str, Any]:
        """The tensors ``keys``, read in one pass."""
        missing = [k for k in keys if k not in self._set]
        if missing:
            raise KeyError(missing[0])
        return self._loader(list(keys)) if keys else {}


def _read_folder(p: Path, trust_checkpoints: bool) -> dict[str, Any]:
    if (p / ".metadata").is_file():
        return _read_dcp(p)
    if (p / "config.json").is_file():
        return _read_hf_folder(p, trust_checkpoints)
    if any(f.suffix == ".distcp" for f in p.iterdir()):
        raise CheckpointError(
            f"checkpoint {p} is a torch.distributed.checkpoint folder without its .metadata file (the save did "
            "not finish, or the file was removed): it cannot be read",
            p,
        )
    raise CheckpointError(
        f"checkpoint {p} is a folder, but neither a torch.distributed.checkpoint folder (no .metadata) nor a "
        "Hugging Face model folder (no config.json)",
        p,
    )


def _read_dcp(p: Path) -> dict[str, Any]:
    """A ``torch.distributed.checkpoint`` folder's tensor groups (lazily) and scalar entries."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        metadata = dcp.FileSystemReader(str(p)).read_metadata()
    except Exception as err:  # noqa: BLE001 - a damaged .metadata raises anything pickle can
        raise CheckpointError(f"cannot read checkpoint {p}: its .metadata is damaged ({_short(err)})", p) from err
    entries = metadata.state_dict_metadata
    tensors = {k: m for k, m in entries.items() if isinstance(m, TensorStorageMetadata)}

    def loader(names: list[str]) -> dict[str, Any]:
        out = {n: torch.empty(tuple(tensors[n].size), dtype=tensors[n].properties.dtype) for n in names}
        try:
            dcp.load(out, storage_reader=dcp.FileSystemReader(str(p)), no_dist=True)
        except Exception as err:  # noqa: BLE001 - missing or truncated .distcp files
            raise CheckpointError(f"cannot read checkpoint {p}: {_short(err)}", p) from err
        return out

    out: dict[str, Any] = {}
    groups: dict[str, list[str]] = {}
    for k in tensors:
        head, _, rest = k.partition(".")
        if rest and head != "optimizer":
            groups.setdefault(head, []).append(k)
    for head, keys in groups.items():
        n = len(head) + 1

        def group_loader(names: list[str], n: int = n, head: str = head) -> dict[str, Any]:
            return {k[n:]: v for k, v in loader([f"{head}.{name}" for name in names]).items()}

        out[head] = LazyStateDict([k[n:] for k in keys], group_loader, p)
    scalars = [k for k, m in entries.items() if k not in tensors and "." not in k]
    if scalars:
        values: dict[str, Any] = {k: None for k in scalars}
        try:
            dcp.load(values, storage_reader=dcp.FileSystemReader(str(p)), no_dist=True)
        except Exception:  # noqa: BLE001 - the scalars (iteration) are a nicety
            values = {}
        out.update({k: v for k, v in values.items() if isinstance(v, (int, float, str))})
    return out


#: a Hugging Face folder's weight files, in the order ``from_pretrained`` prefers them
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _read_hf_folder(p: Path, trust_checkpoints: bool) -> dict[str, Any]:
    """A Hugging Face model folder: its ``config.json`` and its weights (lazily)."""
    try:
        config = json.loads((p / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {p}: config.json is not JSON ({_short(err)})", p) from err
    if not isinstance(config, dict):
        raise CheckpointError(f"cannot read checkpoint {p}: config.json holds no settings object", p)
    name = next((n for n in _HF_WEIGHTS if (p / n).is_file()), None)
    if name is None:
        raise CheckpointError(
            f"checkpoint {p}: a Hugging Face folder without weights (expected one of {', '.join(_HF_WEIGHTS)})", p
        )
    files = [p / name]
    if name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads((p / name).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"cannot read checkpoint {p}: {name} lists no weight_map ({_short(err)})", p) from err
        files = [p / s for s in shards]
    weights: dict[str, Path] = {}
    for f in files:
        for key in _file_keys(f, trust_checkpoints):
            weights[key] = f

    def loader(names: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dict.fromkeys(weights[n] for n in names):
            wanted = [n for n in names if weights[n] == f]
            out.update(_read_tensors(f, wanted, trust_checkpoints))
        return out

    return {"config": config, "weights": LazyStateDict(list(weights), loader, p)}


def _file_keys(f: Path, trust_checkpoints: bool) -> list[str]:
    if not f.is_file():
        raise CheckpointError(f"checkpoint {f.parent}: the weight file {f.name} is missing", f.parent)
    if f.name.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(str(f), framework="pt") as sf:
                return list(sf.keys())
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"cannot read checkpoint {f}: corrupt safetensors file ({err})", f) from err
    obj = read_checkpoint(f, trust_checkpoints=trust_checkpoints)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {f}: expected a state dict, found a {type(obj).__name__}", f)
    return [k for k, v in obj.items() if isinstance(v, torch.Tensor)]


def _read_tensors(f: Path, names: list[str], trust_checkpoints: bool) -> dict[str, Any]:
    if f.name.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as sf:
            return {n: sf.get_tensor(n) for n in names}
    obj = read_checkpoint(f, trust_checkpoints=trust_checkpoints)
    return {n: obj[n] for n in names}


# --------------------------------------------------------------------------------------------------
# A training run's settings
# --------------------------------------------------------------------------------------------------


def run_config(source: str | Path | None, section: str = "student") -> dict[str, Any] | None:
    """The ``section`` of the ``config.yaml`` a DINOv2 / DINOv3 run writes to its output folder,
    looked for in the checkpoint's folder and up to two above it (``RUN/eval/training_<iter>/
    teacher_checkpoint.pth``, ``RUN/ckpt/<iter>/``); None when there is none (release files)."""
    if source is None:
        return None
    for folder in list(Path(source).parents)[:3]:
        path = folder / "config.yaml"
        if not path.is_file():
            continue
        import yaml  # only for runs that carry a config.yaml

        try:
            cfg = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            return None
        part = cfg.get(section) if isinstance(cfg, dict) else None
        return part if isinstance(part, dict) else None
    return None
