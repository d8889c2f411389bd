"""Self-supervised training of small timm backbones with DINO or MoCo v3, saving official checkpoints.

``train(TrainConfig(method="dino", out="runs/dino"))`` (CLI ``dsekit train --method dino --out
runs/dino``) trains a timm backbone on the built-in scenes (or on ``images=DIR``) with the method's
components from lightly (losses, heads, multi-view transforms, momentum and cosine schedules) and
writes, in ``out``:

* the method's official checkpoints every ``save_every`` epochs (0-based epoch index ``e`` in the
  name, saved when ``e % save_every == 0`` and after the last epoch, as DINO's ``saveckp_freq``):

  - DINO: ``checkpoint{e:04d}.pth`` = ``{"student": {"module.backbone.*", "module.head.*"},
    "teacher": {"backbone.*", "head.*"}, "optimizer", "epoch": e + 1, "args": argparse.Namespace,
    "dino_loss": {"center"}}``;
  - MoCo v3: ``checkpoint_{e:04d}.pth.tar`` = ``{"epoch": e + 1, "arch", "state_dict":
    {"module.base_encoder.*", "module.momentum_encoder.*", "module.predictor.*"}, "optimizer",
    "args"}``, the projector being the encoders' ``head``;

  both also hold ``"train_log"`` (the per-epoch history), so ``dsekit scan RUN_DIR --method dino``
  / ``--method mocov3`` reads them unchanged;
* ``checkpoint_init.pth`` (DINO) / ``checkpoint_init.pth.tar`` (MoCo v3): the initial weights, in
  the same format with ``"epoch": 0``, written before the first step, so that scan and probe
  score the untrained network too (its epoch is :data:`dsekit.backbones.INIT_EPOCH`, -1);
* ``checkpoint.pth`` (DINO) / ``checkpoint.pth.tar`` (MoCo v3): the latest state, rewritten after
  every epoch (names the scan does not pick up); a rerun with the same settings resumes from it;
* ``dsekit.json``: the timm architecture, its kwargs and image size, the settings, and the
  ``dsekit scan`` arguments that rebuild the backbone;
* ``log.txt``: one JSON line per epoch (loss, DSE when regularised, schedules, throughput).

Reproducibility: the run is a function of its settings (``workers`` included). The trainer is an
application entry point: as torchvision / lightly augmentations draw from the process-wide RNGs,
it seeds ``torch``, ``numpy`` and ``random`` at the start of the run (model initialisation) and of
every epoch from ``(seed, epoch)``, and restores the caller's RNG states when it returns. The data
order comes from a private ``torch.Generator`` per epoch and the DSE regulariser's generator is
re-seeded per epoch, so resuming after epoch ``e`` continues bit-for-bit as the uninterrupted run.

Where the pieces live: the settings in :mod:`dsekit.train.config`, the DINO and MoCo v3 method
objects in :mod:`dsekit.train.methods`, the images and their views in :mod:`dsekit.train.views`,
and the ``dsekit train`` command line in :mod:`dsekit.cli.train`. This module runs the loop and
writes the run folder; it re-exports the public settings names, so ``from dsekit.train.ssl import
TrainConfig, train`` keeps working.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import sys
import time
from argparse import Namespace  # only the container official checkpoints store as "args"; no parser
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..backbones import INIT_EPOCH, discover_checkpoints, load_backbone, read_checkpoint
from ..run_info import RUN_INFO, read_run_info
from ..runtime import (
    ensure_writable,
    link_or_copy,
    resolve_device,
    resolve_precision,
    write_text_atomic,
    write_torch_atomic,
)
from .config import (
    METHODS,
    PRESETS,
    TRAIN_PRECISIONS,
    ArchPreset,
    ResolvedConfig,
    TrainConfig,
    check_resume_settings,
    resolve_arch,
    resolve_config,
)
from .gram import GramAnchor, parse_gram_teacher
from .logs import LOG_FILE
from .methods import Method, build_method, encode, param_groups
from .regularizer import DSERegularizer
from .views import ViewsDataset, load_images, view_transform

__all__ = [
    "METHODS",
    "PRESETS",
    "ArchPreset",
    "TrainConfig",
    "TrainResult",
    "checkpoint_name",
    "latest_checkpoint_name",
    "read_run_info",
    "resolve_arch",
    "scan_arguments",
    "train",
]

_SEED_TAG = 0x55C7A1  # keeps the training streams apart from other uses of the same seed


# --------------------------------------------------------------------------------------------------
# File names and run information
# --------------------------------------------------------------------------------------------------


def checkpoint_name(method: str, epoch: int) -> str:
    """Official file name of the checkpoint saved after 0-based epoch ``epoch``."""
    if method == "dino":
        return f"checkpoint{epoch:04d}.pth"
    if method == "mocov3":
        return f"checkpoint_{epoch:04d}.pth.tar"
    raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")


def init_checkpoint_name(method: str) -> str:
    """Official-format file name of the initial weights (``{epoch}`` spelt ``_init`` / ``init``)."""
    if method == "dino":
        return "checkpoint_init.pth"
    if method == "mocov3":
        return "checkpoint_init.pth.tar"
    raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")


def latest_checkpoint_name(method: str) -> str:
    """The latest-state file rewritten every epoch (not matched by the scan's patterns)."""
    if method == "dino":
        return "checkpoint.pth"
    if method == "mocov3":
        return "checkpoint.pth.tar"
    raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")


def scan_arguments(run: ResolvedConfig | Mapping[str, Any]) -> list[str]:
    """``dsekit scan`` options that rebuild this run's backbone (method, arch, kwargs, size)."""
    if isinstance(run, ResolvedConfig):
        method, arch, kwargs, size = run.cfg.method, run.timm_arch, run.timm_kwargs, run.image_size
    else:
        method, arch, kwargs, size = run["method"], run["arch"], run["model_kwargs"], run["image_size"]
    out = ["--method", method, "--arch", arch]
    for k, v in kwargs.items():
        out += ["--model-kwarg", f"{k}={json.dumps(v)}"]
    out += ["--image-size", str(size)]
    return out


def _run_info(run: ResolvedConfig) -> dict[str, Any]:
    return {
        "method": run.cfg.method,
        "arch": run.timm_arch,
        "model_kwargs": run.timm_kwargs,
        "image_size": run.image_size,
        "patch_size": run.patch_size,
        "checkpoint_pattern": checkpoint_name(run.cfg.method, 0).replace("0000", "{epoch:04d}"),
        "scan_args": scan_arguments(run),
        "scan_config": {
            "method": run.cfg.method,
            "arch": run.timm_arch,
            "model_kwargs": run.timm_kwargs,
            "image_size": run.image_size,
            **({"scenes": dict(run.cfg.scenes)} if run.cfg.scenes and run.cfg.images is None else {}),
        },
        "settings": run.settings(),
    }


def _write_run_info(run: ResolvedConfig, out: Path, images: Mapping[str, Any]) -> None:
    """Write ``dsekit.json`` (:func:`read_run_info`) with the provenance of the training images."""
    info = _run_info(run)
    info["images"] = images
    write_text_atomic(out / RUN_INFO, json.dumps(info, indent=2, default=str) + "\n")


def _write_log(out: Path, history: list[dict[str, float]]) -> None:
    """Rewrite ``log.txt``: one JSON line per completed epoch."""
    write_text_atomic(out / LOG_FILE, "".join(json.dumps(h) + "\n" for h in history))


# --------------------------------------------------------------------------------------------------
# Randomness
# --------------------------------------------------------------------------------------------------


def _stream_seeds(seed: int, stream: int) -> np.ndarray:
    """Eight 32-bit seeds of stream ``stream`` (epoch index, or -1 for initialisation)."""
    return np.random.SeedSequence([_SEED_TAG, int(seed), int(stream) + 1]).generate_state(8, dtype=np.uint32)


def _seed_globals(seeds: np.ndarray) -> None:
    """Seed the process-wide RNGs that augmentations and initialisers draw from (entry point only)."""
    torch.manual_seed(int(seeds[0]) << 32 | int(seeds[1]))
    np.random.seed(seeds[2:4])
    random.seed(int(seeds[4]))


@contextlib.contextmanager
def _preserved_global_rng(device: torch.device) -> Iterator[None]:
    """Restore the caller's torch / numpy / random states afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if (device.type == "cuda") else []
    )
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


# --------------------------------------------------------------------------------------------------
# Checkpoints and resumption
# --------------------------------------------------------------------------------------------------


def _args_namespace(run: ResolvedConfig) -> Namespace:
    """The settings as an ``argparse.Namespace`` of plain values (as the official scripts store)."""
    return Namespace(**run.settings(), output_dir=str(run.cfg.out))


def _save_numbered(out: Path, cfg: TrainConfig, epoch: int) -> str:
    """Give the latest state its official numbered name when ``epoch`` is due (``""`` if not)."""
    if not (epoch % cfg.save_every == 0 or epoch == cfg.epochs - 1):
        return ""
    name = checkpoint_name(cfg.method, epoch)
    target = out / name
    latest = out / latest_checkpoint_name(cfg.method)
    if not target.exists() or not os.path.samefile(latest, target):
        link_or_copy(latest, target)
    return name


def _find_resume(out: Path, method: str) -> Path | None:
    latest = out / latest_checkpoint_name(method)
    if latest.is_file():
        return latest
    try:
        found = [(p, e) for p, e in discover_checkpoints(out, method) if e != INIT_EPOCH]
    except FileNotFoundError:
        return None
    return found[-1][0] if found else None


def _resume_point(run: ResolvedConfig, out: Path) -> tuple[Path | None, Mapping[str, Any] | None]:
    """``(file, content)`` of the checkpoint to resume from, ``(None, None)`` for a new run;
    ``ValueError`` when it was written with other settings."""
    resume_from = _find_resume(out, run.cfg.method) if out.is_dir() else None
    if resume_from is None:
        return None, None
    ckpt = read_checkpoint(resume_from, map_location="cpu")
    stored = vars(ckpt["args"]) if isinstance(ckpt.get("args"), Namespace) else {}
    check_resume_settings(stored, run, resume_from)
    return resume_from, ckpt


def _restore(
    ckpt: Mapping[str, Any],
    resume_from: Path,
    method: Method,
    optimizer: torch.optim.Optimizer,
    out: Path,
    cfg: TrainConfig,
    emit: Callable[[str], None],
) -> tuple[int, list[dict[str, float]]]:
    """Load the checkpoint into ``method`` and ``optimizer``; ``(epochs done, their history)``."""
    method.load(ckpt)
    optimizer.load_state_dict(ckpt["optimizer"])
    start = int(ckpt["epoch"])
    history = [dict(h) for h in ckpt.get("train_log", []) if int(h.get("epoch", -1)) < start]
    emit(f"resuming {cfg.method} from {resume_from.name} (epoch {start} of {cfg.epochs} done)")
    if start > 0 and resume_from.name == latest_checkpoint_name(cfg.method):
        _save_numbered(out, cfg, start - 1)  # in case the run stopped between the two writes
    _write_log(out, history)
    return start, history


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a call to :func:`train` did.

    Attributes:
        run_dir: the run folder.
        method: ``"dino"`` or ``"mocov3"``.
        checkpoints: the official checkpoints now in ``run_dir`` as ``(path, 0-based epoch)``.
        init_checkpoint: the initial weights (``checkpoint_init.pth[.tar]``), also read by scan and probe.
        start_epoch: first epoch run by this call (> 0 after resuming).
        end_epoch: epochs completed in total.
        history: one dict per completed epoch (this call and earlier ones).
        scan_args: ``dsekit scan RUN_DIR`` options that read these checkpoints.
        images: provenance of the training images.
    """

    run_dir: Path
    method: str
    checkpoints: list[tuple[Path, int]]
    start_epoch: int
    end_epoch: int
    history: list[dict[str, float]]
    scan_args: list[str]
    images: dict[str, Any] = field(default_factory=dict)
    init_checkpoint: Path | None = None

    @property
    def scan_command(self) -> str:
        """The shell command that scans this run."""
        return shlex.join(["dsekit", "scan", str(self.run_dir), *self.scan_args])


@dataclass
class _Loop:
    """What every epoch of a run uses: the networks, the optimiser, the regulariser (None: off),
    the data and the schedule lengths in steps."""

    run: ResolvedConfig
    device: torch.device
    method: Method
    optimizer: torch.optim.Optimizer
    reg: DSERegularizer | None
    dataset: ViewsDataset
    steps: int  # per epoch
    total: int
    warmup_steps: int
    autocast: contextlib.AbstractContextManager[Any]
    gram: GramAnchor | None = None


def _make_regularizer(run: ResolvedConfig) -> DSERegularizer | None:
    if run.cfg.dse_weight == 0:
        return None
    return DSERegularizer(beta=run.cfg.dse_weight, seed=run.cfg.seed)


def _make_gram(run: ResolvedConfig, ckpt: Mapping[str, Any] | None, method: Method) -> GramAnchor | None:
    """The run's Gram anchoring (None: off): a checkpoint file's teacher backbone, or the run's
    own EMA teacher at a step (restored from the resumed state when it was copied already)."""
    cfg = run.cfg
    if cfg.gram_weight == 0:
        return None
    path, step = parse_gram_teacher(cfg.gram_teacher)
    clamp_negative, image_level = cfg.gram_clamp_negative, cfg.gram_image_level
    if path is not None:
        teacher = load_backbone(path, cfg.method, run.timm_arch, model_kwargs=run.timm_kwargs, img_size=run.image_size)
        return GramAnchor(cfg.gram_weight, teacher, clamp_negative=clamp_negative, image_level=image_level)
    gram = GramAnchor(
        cfg.gram_weight, start=step, every=cfg.gram_every, clamp_negative=clamp_negative, image_level=image_level
    )
    if ckpt is not None and "gram_teacher" in ckpt:  # the copy made before the run stopped
        assert step is not None  # without a teacher file GramAnchor needs a start step (it raised above)
        gram.maybe_refresh(int(step), method.teacher_backbone())  # the architecture, then its stored weights
        assert gram.teacher is not None
        gram.teacher.load_state_dict(ckpt["gram_teacher"])
    return gram


def _init_from(run: ResolvedConfig, method: Method) -> None:
    """Load the networks and the method's state of ``run.cfg.init_from`` (another run's checkpoint)."""
    path = Path(run.cfg.init_from)  # type: ignore[arg-type]
    ckpt = read_checkpoint(path, map_location="cpu")
    try:
        method.load(ckpt)
    except (KeyError, RuntimeError, TypeError) as err:
        raise ValueError(
            f"init_from: {path} is not a {run.cfg.method} checkpoint of this network ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]})"
        ) from None


def train(cfg: TrainConfig, *, progress: bool = True, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; see the module docstring for the outputs.

    Args:
        cfg: the settings.
        progress: show a progress bar per epoch (loss and images/s) and a line per epoch.
        log: where epoch lines go (default: standard error).

    Raises:
        ValueError: a bad setting, or ``cfg.out`` holds a run with other settings.
        FileNotFoundError: ``cfg.images`` does not exist or holds no image.
    """
    run = resolve_config(cfg)
    cfg = run.cfg
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out: {out} is a file, expected a run folder")
    ensure_writable(out)  # a read-only place fails here, before any training
    emit = log or (lambda s: print(s, file=sys.stderr, flush=True))
    with _preserved_global_rng(device):
        return _train(run, device, out, progress, emit)


def _train(
    run: ResolvedConfig, device: torch.device, out: Path, progress: bool, emit: Callable[[str], None]
) -> TrainResult:
    """The run inside :func:`train`: resume or start, then train and save epoch by epoch."""
    cfg = run.cfg
    resume_from, ckpt = _resume_point(run, out)
    out.mkdir(parents=True, exist_ok=True)

    images, record = load_images(run)
    _seed_globals(_stream_seeds(cfg.seed, -1))  # initialisation
    method = build_method(run)
    method.to(device)
    optimizer = torch.optim.AdamW(param_groups(method.trainable()), lr=run.lr, weight_decay=run.weight_decay)
    reg = _make_regularizer(run)
    history: list[dict[str, float]] = []
    start = 0
    if ckpt is not None:
        assert resume_from is not None  # _resume_point gives both or neither
        start, history = _restore(ckpt, resume_from, method, optimizer, out, cfg, emit)
    elif cfg.init_from is not None:
        _init_from(run, method)
        emit(f"{cfg.method}: starting from {cfg.init_from}")

    args = _args_namespace(run)
    init = out / init_checkpoint_name(cfg.method)
    if (
        ckpt is None and cfg.init_from is None and not init.is_file()
    ):  # the untrained network, scored like any checkpoint
        write_torch_atomic(init, method.checkpoint(optimizer, -1, args))
    _write_run_info(run, out, record)

    loop = _make_loop(run, device, method, optimizer, reg, images)
    loop.gram = _make_gram(run, ckpt, method)
    if loop.gram is not None and loop.gram.teacher is not None:
        loop.gram.to(device)
    stop = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, cfg.stop_after)
    for epoch in range(start, stop):
        entry = _train_epoch(loop, epoch, progress)
        history.append(entry)
        saved = _save_epoch(loop, out, epoch, history, args)
        if progress:
            emit(_epoch_line(cfg, epoch, entry, saved))

    if start >= stop:
        emit(f"{cfg.method}: nothing to do, {start} of {cfg.epochs} epochs are done in {out}")
    try:
        found = [(p, int(e)) for p, e in discover_checkpoints(out, cfg.method) if e is not None and e != INIT_EPOCH]
    except FileNotFoundError:
        found = []
    return TrainResult(
        run_dir=out,
        method=cfg.method,
        checkpoints=found,
        start_epoch=start,
        end_epoch=max(start, stop),
        history=history,
        scan_args=scan_arguments(run),
        images=record,
        init_checkpoint=init if init.is_file() else None,
    )


def _make_loop(
    run: ResolvedConfig,
    device: torch.device,
    method: Method,
    optimizer: torch.optim.Optimizer,
    reg: DSERegularizer | None,
    images: np.ndarray,
) -> _Loop:
    """The data set of views, the schedule lengths and the autocast context of the run."""
    dataset = ViewsDataset(images, view_transform(run))
    steps = len(dataset) // run.cfg.batch_size
    total = steps * run.cfg.epochs
    dtype = resolve_precision(run.cfg.precision, TRAIN_PRECISIONS)
    autocast = torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    return _Loop(
        run, device, method, optimizer, reg, dataset, steps, total, min(run.warmup_epochs * steps, total), autocast
    )


def _epoch_loader(loop: _Loop, epoch: int) -> torch.utils.data.DataLoader:
    """Seed the epoch's streams (global RNGs, data order, regulariser) and return its data loader."""
    cfg = loop.run.cfg
    seeds = _stream_seeds(cfg.seed, epoch)
    _seed_globals(seeds)
    loader_gen = torch.Generator().manual_seed(int(seeds[5]) << 32 | int(seeds[6]))
    if loop.reg is not None:
        gen = torch.Generator(device=loop.device).manual_seed(int(seeds[7]))
        loop.reg.set_rng_state(gen.get_state(), loop.device)
    return torch.utils.data.DataLoader(
        loop.dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        generator=loader_gen,
        num_workers=cfg.workers,
        pin_memory=loop.device.type == "cuda",
    )


def _apply_schedules(loop: _Loop, it: int) -> tuple[float, float, float]:
    """Set the learning rate and weight decay of step ``it``; ``(lr, weight decay, momentum)``."""
    from lightly.utils.scheduler import cosine_schedule, cosine_warmup_schedule

    run = loop.run
    lr = (
        cosine_warmup_schedule(it, loop.total, run.lr, run.min_lr, loop.warmup_steps, 0.0)
        if loop.warmup_steps
        else (cosine_schedule(it, loop.total, run.lr, run.min_lr))
    )
    wd = cosine_schedule(it, loop.total, run.weight_decay, run.weight_decay_end)
    m = cosine_schedule(it, loop.total, run.momentum, 1.0)
    groups = loop.optimizer.param_groups
    groups[0]["lr"] = lr
    groups[0]["weight_decay"] = wd
    groups[1]["lr"] = lr
    return lr, wd, m


def _train_step(
    loop: _Loop, views: list[Tensor], epoch: int, i: int, momentum: float
) -> tuple[Tensor, Tensor, Tensor | None, dict[str, float]]:
    """One optimisation step on a batch of views: ``(loss, ssl loss, DSE or None, method logs)``."""
    method, optimizer, reg = loop.method, loop.optimizer, loop.reg
    views = [v.to(loop.device, non_blocking=True) for v in views]
    with loop.autocast:
        loss_ssl, patches, extra = method.step(views, epoch)
    loss = loss_ssl
    dse_value = None
    if reg is not None:
        dse_value = reg(patches)
        loss = loss_ssl - loop.run.cfg.dse_weight * dse_value
    if loop.gram is not None:
        if loop.gram.maybe_refresh(epoch * loop.steps + i, method.teacher_backbone()):
            loop.gram.to(loop.device)
        with loop.autocast:
            gram = loop.gram.loss(patches, torch.cat(list(views[:2])), lambda b, x: encode(b, x)[1])
        if gram is not None:
            loss = loss + loop.gram.weight * gram
            extra = {**extra, "loss_gram": float(gram.detach())}
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {i}; lower the learning rate (--lr)")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if loop.run.clip_grad > 0:
        nn.utils.clip_grad_norm_(method.trainable().parameters(), loop.run.clip_grad)
    method.before_optimizer_step(epoch)
    optimizer.step()
    with torch.no_grad():
        method.momentum_update(momentum)
    return loss, loss_ssl, dse_value, extra


def _train_epoch(loop: _Loop, epoch: int, progress: bool) -> dict[str, float]:
    """Train one epoch; its ``log.txt`` entry (mean losses, last schedules, throughput)."""
    cfg, steps = loop.run.cfg, loop.steps
    loader = _epoch_loader(loop, epoch)
    loop.method.trainable().train()
    sums = {"loss": 0.0, "loss_ssl": 0.0, "dse": 0.0}
    t0 = time.perf_counter()
    seen = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=steps,
            desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}",
            unit="step",
            leave=False,
            dynamic_ncols=True,
        )
    extra: dict[str, float] = {}
    gram_steps = 0
    lr = wd = m = 0.0
    for i, views in enumerate(loader):
        lr, wd, m = _apply_schedules(loop, epoch * steps + i)
        loss, loss_ssl, dse_value, extra = _train_step(loop, views, epoch, i, m)
        if "loss_gram" in extra:
            sums["loss_gram"] = sums.get("loss_gram", 0.0) + extra.pop("loss_gram")
            gram_steps += 1
        sums["loss"] += float(loss.detach())
        sums["loss_ssl"] += float(loss_ssl.detach())
        if dse_value is not None:
            sums["dse"] += float(dse_value.detach())
        seen += views[0].shape[0]
        if bar is not None:
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            post = {"loss": f"{float(loss_ssl.detach()):.4f}", "img/s": f"{rate:.1f}"}
            if dse_value is not None:
                post["dse"] = f"{float(dse_value.detach()):.4f}"
            bar.set_postfix(post)
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    entry: dict[str, float] = {
        "epoch": epoch,
        "loss": sums["loss"] / steps,
        "loss_ssl": sums["loss_ssl"] / steps,
        "lr": lr,
        "weight_decay": wd,
        "momentum": m,
        "seconds": seconds,
        "images_per_s": seen / max(seconds, 1e-9),
        **{k: float(v) for k, v in extra.items()},
    }
    if loop.reg is not None:
        entry["dse"] = sums["dse"] / steps
    if gram_steps:
        entry["loss_gram"] = sums["loss_gram"] / gram_steps  # over the steps that had a Gram teacher
    return entry


def _save_epoch(loop: _Loop, out: Path, epoch: int, history: list[dict[str, float]], args: Namespace) -> str:
    """Write the latest state (with the history) and ``log.txt``, and give the state its numbered
    name when the epoch is due; that name, or ``""``."""
    cfg = loop.run.cfg
    state = loop.method.checkpoint(loop.optimizer, epoch, args)
    state["train_log"] = history
    if loop.gram is not None and loop.gram.teacher is not None and loop.gram.start is not None:
        state["gram_teacher"] = loop.gram.teacher.state_dict()  # the run's own copy, for a resumption
    write_torch_atomic(out / latest_checkpoint_name(cfg.method), state)
    name = _save_numbered(out, cfg, epoch)
    _write_log(out, history)
    return name


def _epoch_line(cfg: TrainConfig, epoch: int, entry: Mapping[str, float], saved: str) -> str:
    """The line printed after an epoch (``saved``: the numbered checkpoint written, or ``""``)."""
    dse_txt = f", dse {entry['dse']:.4f}" if "dse" in entry else ""
    saved_txt = f", saved {saved}" if saved else ""
    return (
        f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}: loss {entry['loss_ssl']:.4f}{dse_txt}, "
        f"{entry['seconds']:.1f} s, {entry['images_per_s']:.1f} img/s{saved_txt}"
    )
