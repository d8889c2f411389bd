"""A run folder's ``dsekit.json``, read against the keys ``dsekit train`` writes there.

The file directs model creation (its ``arch`` and ``model_kwargs`` go to timm), so nothing else
is taken from it: a key ``dsekit train`` does not write, a value of the wrong type, or a
``model_kwargs`` entry that names a file (``checkpoint_path``, ``pretrained_cfg_overlay``, any
string that looks like a path) is refused with one line naming the key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from .train.config import ResolvedConfig, TrainConfig

__all__ = ["RUN_INFO", "read_run_info", "check_run_info", "check_model_kwargs"]

RUN_INFO = "dsekit.json"

#: top-level key -> the JSON type(s) of its value
_TOP: dict[str, tuple[type, ...]] = {
    "method": (str,),
    "arch": (str,),
    "model_kwargs": (dict,),
    "image_size": (int,),
    "patch_size": (int, type(None)),
    "checkpoint_pattern": (str,),
    "scan_args": (list,),
    "scan_config": (dict,),
    "settings": (dict,),
    "images": (dict,),
}
_SCAN_CONFIG = {"method", "arch", "model_kwargs", "image_size", "scenes"}
_IMAGES = {
    "source",
    "num_images",
    "requested",
    "available",
    "num_skipped",
    "skipped",
    "image_hash",
    "names",
    "settings",
}
#: timm arguments that open files or fetch weights: never taken from a file
_FILE_ARGS = {
    "checkpoint_path",
    "pretrained",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "pretrained_strict",
    "cache_dir",
    "features_only",
}
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar", ".npz", ".pkl")


def _settings_keys() -> set[str]:
    resolved = {f.name for f in fields(ResolvedConfig)} - {"cfg", "timm_arch", "timm_kwargs"}
    return {f.name for f in fields(TrainConfig)} | resolved | {"arch_preset"}


def check_model_kwargs(kwargs: Mapping[str, Any], where: str) -> None:
    """``ValueError`` naming the key when a timm argument from a file could open or fetch a file."""
    for key, value in kwargs.items():
        if key in _FILE_ARGS:
            raise ValueError(f"{where}.{key}: a timm argument that reads files is not taken from a run's {RUN_INFO}")
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, dict):
                raise ValueError(f"{where}.{key}: expected a number, string or list, got an object")
            if isinstance(v, str) and (os.sep in v or "/" in v or v.lower().endswith(_WEIGHT_SUFFIXES)):
                raise ValueError(f"{where}.{key}: {v!r} looks like a path; paths are not taken from a run's {RUN_INFO}")


def _check_keys(obj: Mapping[str, Any], allowed: set[str] | Mapping[str, Any], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise ValueError(
                f"{where}: key {key!r} is not one dsekit train writes (expected: {', '.join(sorted(allowed))})"
            )


def check_run_info(info: Any, path: str | os.PathLike) -> dict[str, Any]:
    """``info`` (the parsed ``dsekit.json`` at ``path``) when it has only the keys and types
    ``dsekit train`` writes; ``ValueError`` naming the file and the key otherwise."""
    where = str(path)
    if not isinstance(info, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(info).__name__}")
    _check_keys(info, _TOP, where)
    for key, types in _TOP.items():
        if key in info and (not isinstance(info[key], types) or isinstance(info[key], bool)):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ValueError(f"{where}: key {key!r}: expected {names}, got {type(info[key]).__name__}")
    check_model_kwargs(info.get("model_kwargs", {}), f"{where}: model_kwargs")
    scan_config = info.get("scan_config", {})
    _check_keys(scan_config, _SCAN_CONFIG, f"{where}: scan_config")
    check_model_kwargs(scan_config.get("model_kwargs") or {}, f"{where}: scan_config.model_kwargs")
    _check_keys(info.get("images", {}), _IMAGES, f"{where}: images")
    settings = info.get("settings", {})
    _check_keys(settings, _settings_keys(), f"{where}: settings")
    if isinstance(settings.get("model_kwargs"), dict):
        check_model_kwargs(settings["model_kwargs"], f"{where}: settings.model_kwargs")
    return info


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The checked ``dsekit.json`` of a run: ``method``, ``arch``, ``model_kwargs``,
    ``image_size``, ``scan_args``, ``scan_config`` (kwargs for :class:`dsekit.scan.ScanConfig`),
    ``settings`` and ``images``; ``FileNotFoundError`` / ``ValueError`` naming the file."""
    p = Path(run_dir) / RUN_INFO
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist: {run_dir} is not a folder written by dsekit train")
    try:
        info = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: not the JSON dsekit train writes ({exc})") from None
    return check_run_info(info, p)
