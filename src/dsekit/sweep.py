"""One cached, resumable, rank-split sweep over a run's checkpoints, shared by every
per-checkpoint command (``scan``, ``probe``).

A command brings its settings (a :class:`RunSettings` subclass), a result dataclass and a
:class:`SweepTask` that scores one checkpoint; :func:`sweep` does the rest:

1. every checkpoint's file identity (SHA-256 of its content) and cache file
   ``CACHE/<name>.<hash of identity and result key>.json``;
2. the checkpoints without a valid cached result, listed by every process before any of them
   writes (a barrier), then split across ranks (``pending[rank::world]``);
3. on a rank with work, :meth:`SweepTask.prepare` once (decode data, build the model), then per
   checkpoint :meth:`SweepTask.score`; each result is written atomically as soon as it is done,
   and a checkpoint that raises gets a failure record (``<name>[.<label>].failed.json``) instead
   of stopping the sweep; so does one whose file was written while it was scored (its tensors
   are memory-mapped and read as the model runs: :func:`dsekit.runtime.file_signature` before
   and after), its result not kept;
4. a barrier, then every result read back from the cache in checkpoint order (rank 0 assembles
   the outputs from them).

:func:`open_run` holds the set-up both commands share: ``--method auto``, the checks that can
only fail, the device, checkpoint discovery, the backbone built once and the writable cache.
"""

from __future__ import annotations

import errno
import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import torch

from .backbones import (
    CheckpointError,
    FeatureExtractor,
    checkpoint_label,
    create_backbone,
    discover_checkpoints,
    get_adapter,
    list_methods,
)
from .backbones.detect import detect_checkpoint
from .metrics.settings import SEED_MAX
from .runtime import (
    barrier,
    ensure_writable,
    file_identity,
    file_name_part,
    file_signature,
    resolve_device,
    resolve_precision,
    write_json_atomic,
)

__all__ = [
    "RunSettings",
    "SweepTask",
    "OpenRun",
    "build_model",
    "check_run_settings",
    "open_run",
    "resolve_auto",
    "sweep",
]

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    class SweepResult(DataclassInstance, Protocol):
        """A command's result dataclass as :func:`sweep` uses it (``asdict``, ``replace``)."""

        checkpoint: str
        error: str


R = TypeVar("R", bound="SweepResult")


@dataclass
class RunSettings:
    """The settings every per-checkpoint command shares: which run, how its checkpoints load,
    which backbone and layer, and where it runs (all of them go to the command's run record)."""

    run_dir: str
    method: str
    out: str | None = None  #: default: ``RUN_DIR/dse``
    arch: str | None = None  #: timm name; default: the method's
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    glob: str | None = None
    branch: str | None = None
    prefix: str | None = None
    allow_partial: bool = False
    trust_checkpoints: bool = False
    layer: int = -1
    image_size: int = 224
    seed: int = 0
    batch_size: int = 64  #: images per backbone forward pass
    device: str | None = None  #: default: cuda when available
    precision: str = "fp32"  #: fp32, bf16 or fp16 (autocast during extraction)

    #: settings that never change a checkpoint's numbers (left out of the result key)
    UNKEYED: ClassVar[tuple[str, ...]] = ("run_dir", "out", "glob", "device", "batch_size", "trust_checkpoints")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run_dir) / "dse"

    def keyed_settings(self) -> dict[str, Any]:
        """The settings that change a checkpoint's numbers (default scenes leave the key as it was
        before that setting existed)."""
        keyed = {k: v for k, v in asdict(self).items() if k not in self.UNKEYED}
        if not keyed.get("scenes"):
            keyed.pop("scenes", None)
        return keyed

    @staticmethod
    def hash_key(keyed: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()


class SweepTask(Generic[R]):
    """What a command plugs into :func:`sweep` (override :meth:`prepare`, :meth:`score`, :meth:`failure`).

    ``result_type``: the command's result dataclass, with at least ``checkpoint``, ``epoch``,
    ``status`` (``"ok"`` / ``"failed"``), ``error`` and ``identity`` fields.
    ``label``: appended to failure-record names (one cache folder can hold several datasets).
    ``verb``: what the command does to a checkpoint ("scored", "probed"), for messages.
    """

    result_type: type
    label: str = ""
    verb: str = "scored"

    def prepare(self) -> str:
        """Called once on a rank that has checkpoints to score; returns the result key to write under."""
        raise NotImplementedError

    def score(self, n: int, total: int, path: Path, epoch: int | None, identity: str, target: Path) -> R:
        """Score checkpoint ``n`` of ``total`` on this rank; ``target`` is its cache file (siblings
        of it, e.g. ``target.with_suffix('.npz')``, may be written too)."""
        raise NotImplementedError

    def failure(self, path: Path, epoch: int | None, error: str, identity: str) -> R:
        """The result recorded for a checkpoint that could not be scored."""
        raise NotImplementedError

    def complete(self, path: Path, target: Path, result: R) -> bool:
        """Whether the cached result ``target`` of checkpoint ``path`` is usable (e.g. its sibling
        files are still there)."""
        return True


class CheckpointChangedError(RuntimeError):
    """A checkpoint file changed between the start of the sweep and the end of its scoring."""


def _cache_path(cache: Path, path: Path, identity: str, key: str) -> Path:
    name = file_name_part(checkpoint_label(path))
    return cache / f"{name}.{hashlib.sha256((identity + key).encode()).hexdigest()[:16]}.json"


def _failed_path(cache: Path, path: Path, label: str) -> Path:
    name = file_name_part(checkpoint_label(path))
    return cache / (f"{name}.{file_name_part(label)}.failed.json" if label else f"{name}.failed.json")


def _read(result_type: type, p: Path) -> Any:
    try:
        return result_type(**json.loads(p.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # absent or unreadable: recompute


def sweep(
    checkpoints: Sequence[tuple[Path, int | None]],
    task: SweepTask[R],
    *,
    cache: Path,
    key: str | None,
    final_key: Callable[[], str] | None = None,
    rank: int = 0,
    world: int = 1,
    console: Any = None,
    after_checkpoint: Callable[[R], None] | None = None,
) -> tuple[list[R], int]:
    """Score every checkpoint without a valid cached result (see the module docstring).

    Args:
        checkpoints: ``(path, epoch)`` pairs in run order.
        key: the result key under which cached results are valid now (None: none is reusable).
        final_key: after the sweep, the key to read results under on a rank that did not
            :meth:`~SweepTask.prepare` (default: ``key``).

    Returns:
        every checkpoint's result in run order (``checkpoint`` set to where the file is now) and
        the number scored by this process in this call.
    """
    rtype = task.result_type
    signatures = [file_signature(p) for p, _ in checkpoints]  # taken first: a write while hashing counts
    identities = [file_identity(p) if p.exists() else "" for p, _ in checkpoints]

    def cached(i: int, k: str | None) -> Any:
        if k is None:
            return None
        target = _cache_path(cache, checkpoints[i][0], identities[i], k)
        res = _read(rtype, target)
        return res if res is not None and task.complete(checkpoints[i][0], target, res) else None

    pending = [i for i in range(len(checkpoints)) if cached(i, key) is None]
    barrier(world)  # every process has listed the cache before any of them writes to it
    todo = pending[rank::world]
    computed = 0
    if todo:
        key = task.prepare()
        for n, i in enumerate(todo, 1):
            path, epoch = checkpoints[i]
            target = _cache_path(cache, path, identities[i], key)
            try:
                res = task.score(n, len(todo), path, epoch, identities[i], target)
                if file_signature(path) != signatures[i]:  # its tensors are read while it is scored
                    raise CheckpointChangedError(
                        f"{path} was written while it was read (a run saving in place?): its result is not kept; "
                        "run the same command again to score what it holds now"
                    )
                write_json_atomic(target, asdict(res))
                _failed_path(cache, path, task.label).unlink(missing_ok=True)
                computed += 1
            except Exception as exc:  # noqa: BLE001 - one bad checkpoint must not stop the sweep
                if isinstance(exc, OSError) and exc.errno in _DISK_FULL:  # but a full disk stops it
                    raise OSError(
                        exc.errno,
                        f"no space left to write the results in {cache} ({exc.strerror}); every result finished "
                        f"before is kept ({computed} in this run): free space and run the same command again",
                    ) from None
                res = task.failure(path, epoch, f"{type(exc).__name__}: {exc}", identities[i])
                write_json_atomic(_failed_path(cache, path, task.label), asdict(res))
                if console is not None:
                    console.print(f"[red]failed[/red] {checkpoint_label(path)}: {res.error}")
            if after_checkpoint is not None:
                after_checkpoint(res)
    barrier(world)
    if key is None:  # this process scored nothing
        key = final_key() if final_key is not None else None

    results: list[R] = []
    for i, (path, epoch) in enumerate(checkpoints):
        res = cached(i, key)
        if res is None:
            res = _read(rtype, _failed_path(cache, path, task.label)) or task.failure(
                path, epoch, f"no result (not {task.verb})", ""
            )
        results.append(replace(res, checkpoint=str(path)))  # where it is now (the run may have moved)
    return results, computed


# --------------------------------------------------------------------------- the shared set-up


#: the errors of a full disk or quota: the sweep stops, what is done is kept
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _first_checkpoint(cfg: RunSettings) -> Path:
    """The run's first checkpoint for ``--method auto``: of ``--glob``, else of the first method
    whose official layout the run has (Hugging Face folders, DINOv2 / DINOv3 runs, ...), else the
    first checkpoint file in the folder."""
    if cfg.glob is not None:
        return discover_checkpoints(cfg.run_dir, "generic", cfg.glob)[0][0]
    for name in list_methods():
        adapter = get_adapter(name)
        if adapter.discover is None and not any("/" in t for t in adapter.file_patterns):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # said again when the method's own discovery runs
                return discover_checkpoints(cfg.run_dir, name)[0][0]
        except (FileNotFoundError, CheckpointError):
            continue
    return discover_checkpoints(cfg.run_dir, "generic")[0][0]


def resolve_auto(cfg: RunSettings, console: Any = None) -> RunSettings:
    """``method="auto"``: a copy of the settings with the method, branch and architecture detected
    from the run's first checkpoint (settings given explicitly win); what was detected is
    printed. A method whose network its checkpoints describe (DINOv2, DINOv3, Hugging Face)
    without ``arch``: the architecture of its first checkpoint, printed. Others: ``cfg``."""
    adapter = get_adapter(cfg.method) if cfg.method != "auto" else None
    if adapter is not None and not (adapter.arch_from_checkpoint and cfg.arch is None):
        return cfg
    if adapter is None:
        first = _first_checkpoint(cfg)
        det = detect_checkpoint(first, trust_checkpoints=cfg.trust_checkpoints)
    else:
        first = discover_checkpoints(cfg.run_dir, cfg.method, cfg.glob)[0][0]
        det = detect_checkpoint(first, trust_checkpoints=cfg.trust_checkpoints, methods=[cfg.method])
    adapter = get_adapter(det.method)
    arch, kwargs = cfg.arch, dict(cfg.model_kwargs)
    if arch is None and (adapter.arch_from_checkpoint or not kwargs):
        own = det.arch == adapter.arch  # the method's own architecture: its arch_kwargs are added when built
        arch = None if own or adapter.builder is not None else det.arch
        found = {k: v for k, v in det.model_kwargs.items() if not (own and k in adapter.arch_kwargs)}
        kwargs = {**found, **kwargs}
    glob = cfg.glob
    try:
        discover_checkpoints(cfg.run_dir, det.method, glob)
    except FileNotFoundError:
        glob = "*" + "".join(first.suffixes)  # files named otherwise (release files): every file of that type
    if console is not None:
        what = "--method auto" if cfg.method == "auto" else f"--method {cfg.method}"
        console.print(f"{what}: {checkpoint_label(first)} reads as {det.describe()}")
    return replace(cfg, method=det.method, branch=cfg.branch or det.branch, arch=arch, model_kwargs=kwargs, glob=glob)


def check_run_settings(cfg: RunSettings) -> None:
    """Settings shared by scan and probe that can only fail: checked before any checkpoint is read."""
    get_adapter(cfg.method)  # unknown method: error listing the known ones
    resolve_precision(cfg.precision)  # an unknown name: error listing the known ones
    seed = cfg.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed: expected an integer in 0..2**63-1, got {seed!r}")
    if getattr(cfg, "window", 0) < 0:
        raise ValueError(f"window: expected >= 0 checkpoints on each side, got {cfg.window}")  # type: ignore[attr-defined]
    if getattr(cfg, "top", 1) < 1:
        raise ValueError(f"top: expected >= 1, got {cfg.top}")  # type: ignore[attr-defined]


def build_model(cfg: RunSettings, first: Path | None = None) -> torch.nn.Module:
    """The backbone of ``cfg``, built without weights (parameters on the meta device: every
    checkpoint's tensors become them, see :func:`dsekit.backbones.load_into`), its ``layer``
    checked: a bad architecture, model argument or layer raises ``ValueError`` here. A
    method that builds its network from a checkpoint (Hugging Face folders) builds the one
    ``first`` describes."""
    adapter = get_adapter(cfg.method)
    if adapter.builder is not None:
        if first is None:
            raise ValueError(f"method {cfg.method!r} builds its network from a checkpoint: none given")
        model = adapter.builder(first, dict(cfg.model_kwargs), cfg.image_size)
        FeatureExtractor(model, cfg.layer)
        return model
    name = cfg.arch or adapter.arch
    if not name:
        raise ValueError(f"--method {adapter.name} needs --arch: the name of the timm model the checkpoints hold")
    kwargs = adapter.kwargs_for(name)  # the method's family and default-architecture settings
    kwargs.update(cfg.model_kwargs)
    kwargs.pop("img_size", None)
    try:
        model = create_backbone(name, img_size=cfg.image_size, empty=True, **kwargs)
    except TypeError as err:  # timm's answer to a model argument the architecture does not take
        raise ValueError(f"arch {name!r} with model arguments {kwargs}: {err}") from None
    FeatureExtractor(model, cfg.layer)
    return model


@dataclass
class OpenRun:
    """A run ready to sweep: the resolved settings, the device, the checkpoints and the backbone."""

    cfg: Any
    device: torch.device
    checkpoints: list[tuple[Path, int | None]]
    model: torch.nn.Module  #: built once; strict loading overwrites every weight of it


def open_run(cfg: RunSettings, cache: Path, console: Any, check: Callable[[Any], None] | None = None) -> OpenRun:
    """Resolve ``--method auto``, check the settings (``check``: the command's own checks), find
    the device and the checkpoints, build the backbone and make ``cache`` writable, in the order
    that fails fastest."""
    cfg = resolve_auto(cfg, console)
    check_run_settings(cfg)
    if check is not None:
        check(cfg)
    device = resolve_device(cfg.device)
    checkpoints = discover_checkpoints(cfg.run_dir, cfg.method, cfg.glob)
    model = build_model(
        cfg, checkpoints[0][0]
    )  # an unknown architecture or layer fails here, before any checkpoint is scored
    ensure_writable(cache)
    return OpenRun(cfg, device, checkpoints, model)
