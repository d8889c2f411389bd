"""Scan a training run: DSE of every checkpoint, λ, the selected checkpoints, a plot.

``scan(ScanConfig(run_dir, method=...))`` discovers the run's checkpoints, decodes one image
sample (once), and for each checkpoint loads the backbone, extracts patch features and scores
them. Each checkpoint's result is written atomically to ``OUT/cache/`` as soon as it is done,
keyed on the settings and the checkpoint file's identity, so a rerun with the same settings
skips finished checkpoints and a kill loses at most the checkpoint in flight.

Under ``torchrun`` (``WORLD_SIZE > 1``) the checkpoints are split across ranks (gloo on CPU,
NCCL on GPUs; OUT on a filesystem every rank sees); rank 0 assembles the outputs:

* ``dse.csv``: one row per scored checkpoint (``checkpoint, epoch``, the five terms, ``dse``
  and any baseline metric columns), then ``<column>_low, <column>_high`` for each of them: the
  interval over the image sample and the k-means seed (``intervals`` half-samples of the
  images, each with its own seed; :mod:`dsekit.metrics.intervals`). The interval of ``dse``
  holds λ at the run's value;
* ``dse_replicates.csv``: the half-sample values behind those intervals (``checkpoint,
  replicate``, then the same columns), which the report pairs with mIoU resamples;
* ``selection.json``: λ, candidates (epochs and DSE) and the selected checkpoint;
* ``dse.png``: DSE and its terms over epochs, candidates marked;
* ``run.json``: every setting, library versions, the image list's hash and the failures.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .metrics.dse import TERMS, DSEAccumulator
from .select import calibrate, select_checkpoints

__all__ = ["ScanConfig", "ScanResult", "CheckpointResult", "scan", "write_json_atomic", "write_csv_atomic", "file_identity", "calibrated_dse", "resolve_device",
           "ensure_writable", "check_run_settings", "resolve_auto"]

CSV_COLUMNS = ("checkpoint", "epoch", *TERMS, "dse")


@dataclass
class ScanConfig:
    """Every setting of a scan (all of them go to ``run.json``)."""

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
    images: str | None = None  #: image folder; None: the built-in scenes
    scenes: dict[str, Any] = field(default_factory=dict)  #: SceneConfig settings of the built-in scenes
    num_images: int = 2048
    image_size: int = 224
    seed: int = 0
    batch_size: int = 64  #: images per forward pass
    dse_batch_size: int = 1024  #: images per DSE batch
    local_clusters: int = 3
    global_clusters: int = 24
    images_per_group: int = 8
    normalize: bool = True
    n_init: int = 1
    metrics: tuple[str, ...] = ()  #: extra columns: rankme, alpha_req, dense_rankme, lidar
    lidar_images: int = 64  #: images with augmented views for LiDAR
    lidar_views: int = 8  #: augmented views per image for LiDAR
    device: str | None = None  #: default: cuda when available
    precision: str = "fp32"  #: fp32, bf16 or fp16 (autocast during extraction)
    window: int = 2
    top: int = 3
    intervals: int = 10  #: half-samples per checkpoint for the intervals (0: none)
    confidence: float = 0.95  #: nominal coverage of the intervals

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run_dir) / "dse"

    def result_key(self, image_hash: str) -> str:
        """Hash of everything that changes a checkpoint's numbers (not device or output paths)."""
        keyed = {
            k: v
            for k, v in asdict(self).items()
            if k not in (
                "run_dir", "out", "glob", "device", "window", "top", "batch_size", "trust_checkpoints", "confidence",
            )
        }
        keyed["metrics"] = sorted(keyed["metrics"])
        if "lidar" not in keyed["metrics"]:
            keyed.pop("lidar_images")
            keyed.pop("lidar_views")
        if not keyed.get("scenes"):  # default scenes: same key as before the setting existed
            keyed.pop("scenes", None)
        keyed["image_hash"] = image_hash
        return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class CheckpointResult:
    """Result of one checkpoint (``status`` is ``"ok"`` or ``"failed"``)."""

    checkpoint: str
    epoch: int | None
    status: str
    terms: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""
    identity: str = ""
    num_images: int = 0
    replicates: dict[str, list[float]] = field(default_factory=dict)  #: column -> one value per half-sample
    partial: str = ""  #: with ``allow_partial``: what did not fit (missing / unexpected keys); "" if it all did
    layout: str = ""  #: what was read: "training checkpoint, <branch>" or "release file"


@dataclass
class ScanResult:
    """What a scan produced (rank 0 has the assembled outputs)."""

    results: list[CheckpointResult]
    lam: float | None
    dse: list[float]
    selection: dict[str, Any]
    out_dir: Path
    failed: list[CheckpointResult]
    computed: int  #: checkpoints scored by this process in this call (not taken from the cache)

    @property
    def ok(self) -> bool:
        return not self.failed


# --------------------------------------------------------------------------- small I/O helpers


def ensure_writable(folder: Path, option: str = "--out") -> None:
    """Create ``folder`` and check that files can be written in it; ``ValueError`` naming the folder
    and ``option`` otherwise (a read-only, shared run folder is common)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"cannot write to the output folder {folder} ({err.strerror or err}); pass {option} to write elsewhere"
        ) from None


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_csv_atomic(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` (dicts; missing keys empty, extra keys ignored) under ``columns``, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def file_identity(path: Path, chunk: int = 1 << 22) -> str:
    """Identity of a checkpoint file: SHA-256 of its name, size and whole content (about 1 GB/s,
    so a few tenths of a second for a ViT-S checkpoint; a change anywhere in the file counts)."""
    size = path.stat().st_size
    h = hashlib.sha256(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import timm
    import torchvision

    from . import __version__

    return {
        "dsekit": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
    }


# --------------------------------------------------------------------------- distributed


def _dist_context(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call initialised the process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), True


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def resolve_device(name: str | None) -> torch.device:
    """The torch device named ``name`` (None: CUDA when available); ``ValueError`` for a name torch
    does not know or a CUDA device on a machine without CUDA."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device: {name!r} is not a torch device ({err}); use e.g. cpu, cuda, cuda:1") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------- scoring one checkpoint


def _score_checkpoint(
    cfg: ScanConfig,
    path: Path,
    images: torch.Tensor,
    device: torch.device,
    metric_fns: dict[str, Callable[[torch.Tensor], float]],
    progress: Any,
    model: torch.nn.Module | None = None,
    views: torch.Tensor | None = None,
) -> tuple[dict[str, float], dict[str, float], dict[str, float], dict[str, list[float]], str, str]:
    """Load, extract and score one checkpoint -> (terms, metrics, timings, half-sample replicates,
    the partial-load message or "", the layout read).

    ``model``: a backbone of the right architecture to load into (every weight is
    overwritten, as loading is strict); None builds a new one.
    """
    from .backbones import FeatureExtractor, extract_features, load_backbone_as

    t0 = time.perf_counter()
    partial: list[str] = []
    layout: list[str] = []
    model = load_backbone_as(cfg, path, model, partial=partial, layout=layout)
    t1 = time.perf_counter()
    extractor = FeatureExtractor(model, cfg.layer)
    feats = extract_features(
        extractor,
        images,
        batch_size=cfg.batch_size,
        device=device,
        amp_dtype=_PRECISIONS[cfg.precision],
        progress=progress,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t2 = time.perf_counter()
    terms = _dse_terms(cfg, feats, device, cfg.seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t3 = time.perf_counter()
    metrics = {name: _safe_metric(name, fn, feats) for name, fn in metric_fns.items()}
    vf = None
    if views is not None:
        from .metrics.baselines import lidar_dense

        n, q = views.shape[:2]
        vf = extract_features(
            extractor, views.flatten(0, 1), batch_size=cfg.batch_size, device=device,
            amp_dtype=_PRECISIONS[cfg.precision],
        )
        vf = vf.reshape(n, q, *vf.shape[1:])
        metrics["lidar"] = _safe_metric("lidar", lidar_dense, vf)
    t4 = time.perf_counter()
    replicates = _replicates(cfg, feats, vf, device, metric_fns)
    t5 = time.perf_counter()
    timings = {"load": t1 - t0, "extract": t2 - t1, "score": t3 - t2, "metrics": t4 - t3, "intervals": t5 - t4}
    return terms, metrics, timings, replicates, "; ".join(partial), "; ".join(layout)


def _dse_terms(cfg: ScanConfig, feats: torch.Tensor, device: torch.device, seed: int) -> dict[str, float]:
    """The five DSE terms of ``feats`` (B, N, d), in DSE batches of ``cfg.dse_batch_size`` images."""
    acc = DSEAccumulator(
        cfg.dse_batch_size,
        seed=seed,
        local_clusters=cfg.local_clusters,
        global_clusters=cfg.global_clusters,
        images_per_group=cfg.images_per_group,
        normalize=cfg.normalize,
        n_init=cfg.n_init,
    )
    for lo in range(0, feats.shape[0], cfg.dse_batch_size):
        acc.update(feats[lo : lo + cfg.dse_batch_size].to(device))
    return acc.compute().as_dict()


def _replicates(
    cfg: ScanConfig,
    feats: torch.Tensor,
    views: torch.Tensor | None,
    device: torch.device,
    metric_fns: dict[str, Callable[[torch.Tensor], float]],
) -> dict[str, list[float]]:
    """Every column on ``cfg.intervals`` half-samples of the images (each with its own k-means
    seed); LiDAR on half-samples of its images. Empty when intervals are off or the sample is too small."""
    from .metrics.intervals import half_sample_replicates

    if cfg.intervals < 2 or feats.shape[0] < 4:
        return {}

    def score(sub: torch.Tensor, seed: int) -> dict[str, float]:
        with warnings.catch_warnings():  # a metric undefined at half size is NaN, said once for the full sample
            warnings.simplefilter("ignore")
            return {
                **_dse_terms(cfg, sub, device, seed),
                **{name: _safe_metric(name, fn, sub) for name, fn in metric_fns.items()},
            }

    out = half_sample_replicates(score, feats, cfg.intervals, cfg.seed)
    if views is not None and views.shape[0] >= 4:
        from .metrics.baselines import lidar_dense

        def lidar(sub: torch.Tensor, seed: int) -> dict[str, float]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return {"lidar": _safe_metric("lidar", lidar_dense, sub)}

        out.update(half_sample_replicates(lidar, views, cfg.intervals, cfg.seed))
    return {k: v.tolist() for k, v in out.items()}


def _build_model(cfg: ScanConfig) -> torch.nn.Module:
    """The backbone of ``cfg`` (random weights), its ``layer`` checked: a bad architecture,
    model argument or layer raises ``ValueError`` here."""
    from .backbones import FeatureExtractor, create_backbone, get_adapter

    adapter = get_adapter(cfg.method)
    name = cfg.arch or adapter.arch
    kwargs = dict(adapter.arch_kwargs) if name == adapter.arch else {}
    kwargs.update(cfg.model_kwargs)
    kwargs.pop("img_size", None)
    try:
        model = create_backbone(name, img_size=cfg.image_size, init_weights=False, **kwargs)
    except TypeError as err:  # timm's answer to a model argument the architecture does not take
        raise ValueError(f"arch {name!r} with model arguments {kwargs}: {err}") from None
    FeatureExtractor(model, cfg.layer)
    return model


_MAX_SEED = 2**63 - 1


def resolve_auto(cfg: Any, console: Any = None) -> Any:
    """``method="auto"``: a copy of the scan or probe settings with the method, branch and
    architecture detected from the run's first checkpoint (settings given explicitly win);
    what was detected is printed. Other methods: ``cfg`` unchanged."""
    if cfg.method != "auto":
        return cfg
    from .backbones import discover_checkpoints, get_adapter
    from .backbones.detect import detect_checkpoint

    first = discover_checkpoints(cfg.run_dir, "generic", cfg.glob)[0][0]
    det = detect_checkpoint(first, trust_checkpoints=cfg.trust_checkpoints)
    adapter = get_adapter(det.method)
    arch, kwargs = cfg.arch, dict(cfg.model_kwargs)
    if arch is None and not kwargs:
        own = det.arch == adapter.arch  # the method's own architecture: its arch_kwargs are added when built
        arch = None if own else det.arch
        kwargs = {k: v for k, v in det.model_kwargs.items() if not (own and k in adapter.arch_kwargs)}
    glob = cfg.glob
    try:
        discover_checkpoints(cfg.run_dir, det.method, glob)
    except FileNotFoundError:
        glob = "*" + "".join(first.suffixes)  # files named otherwise (release files): every file of that type
    if console is not None:
        console.print(f"--method auto: {first.name} reads as {det.describe()}")
    return replace(cfg, method=det.method, branch=cfg.branch or det.branch, arch=arch, model_kwargs=kwargs, glob=glob)


def check_run_settings(cfg: Any) -> None:
    """Settings shared by scan and probe that can only fail: checked before any checkpoint is read."""
    seed = getattr(cfg, "seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed: expected an integer in 0..2**63-1, got {seed!r}")
    if getattr(cfg, "window", 0) < 0:
        raise ValueError(f"window: expected >= 0 checkpoints on each side, got {cfg.window}")
    if getattr(cfg, "top", 1) < 1:
        raise ValueError(f"top: expected >= 1, got {cfg.top}")


def _metric_functions(names: Sequence[str]) -> dict[str, Callable[[torch.Tensor], float]]:
    """Image-sample metrics by name (``lidar``, which needs augmented views, is handled apart)."""
    if not names:
        return {}
    from .metrics.baselines import BASELINE_METRICS

    unknown = [n for n in names if n not in BASELINE_METRICS and n != "lidar"]
    if unknown:
        raise ValueError(f"metrics: unknown {unknown}; known: {sorted([*BASELINE_METRICS, 'lidar'])}")
    return {n: BASELINE_METRICS[n] for n in names if n != "lidar"}


def _safe_metric(name: str, fn: Callable[[torch.Tensor], float], feats: torch.Tensor) -> float:
    """A metric's value, or NaN with a warning when the sample is too small for it."""
    try:
        return float(fn(feats))
    except ValueError as exc:
        warnings.warn(f"metric {name} not computed: {exc}", stacklevel=2)
        return float("nan")


def lidar_views(images: torch.Tensor, count: int, views: int, seed: int) -> torch.Tensor:
    """Augmented views for LiDAR: ``(count, views, 3, S, S)`` from the first ``count`` images.

    Each view is a random resized crop (scale 0.25–1) with a random horizontal flip of a
    preprocessed image. torchvision draws from the process-wide RNG, so the draws run inside
    ``torch.random.fork_rng`` seeded with ``seed``: the views are a function of the seed and
    the caller's RNG state is left as it was.
    """
    from torchvision.transforms import v2

    if count < 2 or views < 2:
        raise ValueError(f"lidar_images and lidar_views: LiDAR needs at least 2 of each, got {count} and {views}")
    size = images.shape[-1]
    aug = v2.Compose([v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True), v2.RandomHorizontalFlip()])
    src = images[:count]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = torch.stack([torch.stack([aug(img) for _ in range(views)]) for img in src])
    return out


# --------------------------------------------------------------------------- the scan


def _cache_path(cache: Path, path: Path, identity: str, key: str) -> Path:
    return cache / f"{path.name}.{hashlib.sha256((identity + key).encode()).hexdigest()[:16]}.json"


def _read_cached(p: Path) -> CheckpointResult | None:
    try:
        return CheckpointResult(**json.loads(p.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # absent or unreadable: recompute


def scan(
    cfg: ScanConfig,
    *,
    progress: bool = True,
    console: Any = None,
    after_checkpoint: Callable[[CheckpointResult], None] | None = None,
) -> ScanResult:
    """Run the scan described by ``cfg`` (see the module docstring).

    Raises:
        FileNotFoundError / NotADirectoryError: the run folder is missing, empty or has no checkpoint.
        ValueError: an unknown method, metric or setting.
    """
    from rich.console import Console

    from .backbones import discover_checkpoints, get_adapter
    from .data.images import load_image_sample

    console = console or Console(stderr=True)
    cfg = resolve_auto(cfg, console)
    get_adapter(cfg.method)  # unknown method: error listing the known ones
    if cfg.precision not in _PRECISIONS:
        raise ValueError(f"precision: expected one of {sorted(_PRECISIONS)}, got {cfg.precision!r}")
    metric_fns = _metric_functions(cfg.metrics)
    if isinstance(cfg.intervals, bool) or not isinstance(cfg.intervals, int) or cfg.intervals < 0 or cfg.intervals == 1:
        raise ValueError(f"intervals: expected 0 (none) or at least 2 half-samples, got {cfg.intervals!r}")
    if not 0 < cfg.confidence < 1:
        raise ValueError(f"confidence: expected a level in (0, 1), got {cfg.confidence!r}")
    check_run_settings(cfg)
    device = resolve_device(cfg.device)
    checkpoints = discover_checkpoints(cfg.run_dir, cfg.method, cfg.glob)
    built = _build_model(cfg)  # an unknown architecture or layer fails here, before any checkpoint is read
    out = cfg.out_dir
    cache = out / "cache"
    ensure_writable(cache)
    rank, world, owns_group = _dist_context(device)

    try:
        sample = None
        identities = [file_identity(p) if p.is_file() else "" for p, _ in checkpoints]
        # the image list's hash is part of the cache key: compute it from the settings
        # without decoding, then decode only if some checkpoint of this rank needs scoring
        from .data.images import ImageSample

        spec = ImageSample(cfg.images, cfg.num_images, cfg.seed, cfg.image_size, scenes=cfg.scenes or None)
        key_source = json.dumps(spec.settings(), sort_keys=True)
        if cfg.images is not None:
            from .data.images import file_size, find_images

            files = find_images(cfg.images)
            key_source += json.dumps([(f, file_size(Path(cfg.images) / f)) for f in files])
        base = cfg.result_key(hashlib.sha256(key_source.encode()).hexdigest())
        # results are keyed on the images' content too: the sample a cached result used is read
        # again and hashed (None when unknown or changed: everything is scored anew)
        key = _content_key(cache, base, cfg.images)

        # the checkpoints still to score, split evenly across processes (every process lists
        # the cache before any of them writes to it)
        pending = [
            i for i in range(len(checkpoints))
            if key is None or _read_cached(_cache_path(cache, checkpoints[i][0], identities[i], key)) is None
        ]
        _barrier(world)
        todo = pending[rank::world]
        computed = 0
        if todo:
            sample = load_image_sample(
                cfg.images, cfg.num_images, cfg.seed, cfg.image_size, scenes=cfg.scenes, progress=progress and rank == 0
            )
            if sample.shortfall:
                warnings.warn(
                    f"images: asked for {cfg.num_images} images, {len(sample)} available in {sample.source}",
                    stacklevel=2,
                )
            write_json_atomic(cache / f"images.{base[:16]}.rank{rank}.json", sample.record())
            key = _with_content(base, cfg.images, sample.image_hash)
            model = None if cfg.allow_partial else built  # every checkpoint is loaded into it (strict loading)
            views = (
                lidar_views(sample.images, min(cfg.lidar_images, len(sample)), cfg.lidar_views, cfg.seed)
                if "lidar" in cfg.metrics
                else None
            )
            for n, i in enumerate(todo, 1):
                path, epoch = checkpoints[i]
                target = _cache_path(cache, path, identities[i], key)
                label = f"[{n}/{len(todo)}] {path.name}"
                if progress:
                    console.print(f"scoring {label}")
                try:
                    terms, metrics, timings, replicates, partial, layout = _score_checkpoint(
                        cfg, path, sample.images, device, metric_fns, f"{path.name}" if progress else False, model, views
                    )
                    res = CheckpointResult(
                        str(path), epoch, "ok", terms, metrics, timings, identity=identities[i], num_images=len(sample),
                        replicates=replicates, partial=partial, layout=layout,
                    )
                    if progress:
                        console.print(f"  read as: {layout}")
                    write_json_atomic(target, asdict(res))
                    (cache / f"{path.name}.failed.json").unlink(missing_ok=True)
                    computed += 1
                except Exception as exc:  # noqa: BLE001 - one bad checkpoint must not stop the scan
                    res = CheckpointResult(
                        str(path), epoch, "failed", error=f"{type(exc).__name__}: {exc}", identity=identities[i]
                    )
                    write_json_atomic(cache / f"{path.name}.failed.json", asdict(res))
                    console.print(f"[red]failed[/red] {path.name}: {res.error}")
                if after_checkpoint is not None:
                    after_checkpoint(res)
        _barrier(world)
        if key is None:  # this process decoded nothing: the others recorded the sample they used
            key = _content_key(cache, base, cfg.images) or base

        results: list[CheckpointResult] = []
        for i, (path, epoch) in enumerate(checkpoints):
            res = _read_cached(_cache_path(cache, path, identities[i], key))
            if res is None:
                failed = _read_cached(cache / f"{path.name}.failed.json")
                res = failed or CheckpointResult(str(path), epoch, "failed", error="no result (not scored)")
            results.append(replace(res, checkpoint=str(path)))  # where it is now (the run may have moved)
        ok = [r for r in results if r.status == "ok"]
        failed = [r for r in results if r.status != "ok"]
        summary = _assemble(cfg, ok, failed, out, sample, base, write=rank == 0)
        _barrier(world)
        if rank == 0 and progress:
            _print_summary(console, ok, failed, summary)
        return ScanResult(results, summary["lambda"], summary["dse"], summary["selection"], out, failed, computed)
    finally:
        if owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _assemble(
    cfg: ScanConfig,
    ok: list[CheckpointResult],
    failed: list[CheckpointResult],
    out: Path,
    sample: Any,
    key: str,
    *,
    write: bool,
) -> dict[str, Any]:
    from .backbones import INIT_EPOCH

    # λ and the selection come from the training checkpoints; the initial weights (if scored)
    # are shown with the same λ but are never a candidate
    trained = [i for i, r in enumerate(ok) if r.epoch != INIT_EPOCH]
    if trained:
        cal = calibrate(*[[ok[i].terms[t] for i in trained] for t in TERMS[:4]])
        sel = select_checkpoints(cal.dse, window=cfg.window, top=cfg.top)
        lam, note = cal.lam, cal.note
    else:
        sel, lam, note = None, None, "no checkpoint could be scored"
    dse_values = [calibrated_dse(r.terms, lam) for r in ok]

    def entry(j: int) -> dict[str, Any]:
        i = trained[j]
        return {"checkpoint": ok[i].checkpoint, "epoch": ok[i].epoch, "dse": dse_values[i]}

    selection = {
        "lambda": lam,
        "raw": lam is None,
        "note": note,
        "window": cfg.window,
        "top": cfg.top,
        "candidates": [entry(j) for j in sel.candidates] if sel else [],
        "selected": [entry(j) for j in sel.selected] if sel else [],
        "best": entry(sel.best) if sel and sel.best is not None else None,
        "failed": [{"checkpoint": r.checkpoint, "epoch": r.epoch, "error": r.error} for r in failed],
    }
    summary = {"lambda": lam, "dse": dse_values, "selection": selection}
    if not write:
        return summary
    extra = list(dict.fromkeys(m for r in ok for m in r.metrics))
    columns = [*CSV_COLUMNS[2:], *extra]
    reps = [_replicate_table(r, lam) for r in ok]
    bands = [_bands(r, value, table, columns, cfg.confidence) for r, value, table in zip(ok, dse_values, reps)]
    rows = []
    for r, value, band in zip(ok, dse_values, bands):
        row = {"checkpoint": r.checkpoint, "epoch": "" if r.epoch is None else r.epoch}
        row.update({t: repr(float(r.terms[t])) for t in TERMS})
        row["dse"] = repr(float(value))
        row.update({m: repr(float(r.metrics[m])) if m in r.metrics else "" for m in extra})
        row.update(band)
        row["partial"] = "yes" if r.partial else ""
        rows.append(row)
    marked = ["partial"] if any(r.partial for r in ok) else []  # only runs that loaded partial weights
    write_csv_atomic(
        out / "dse.csv", [*CSV_COLUMNS, *extra, *[f"{c}_{s}" for c in columns for s in ("low", "high")], *marked], rows
    )
    rep_rows = [
        {"checkpoint": r.checkpoint, "replicate": k, **{c: repr(float(v[k])) for c, v in table.items() if c in columns}}
        for r, table in zip(ok, reps) for k in range(len(next(iter(table.values()), [])))
    ]
    write_csv_atomic(out / "dse_replicates.csv", ["checkpoint", "replicate", *columns], rep_rows)
    write_json_atomic(out / "selection.json", selection)
    images_record = sample.record() if sample is not None else _cached_images_record(out / "cache", key)
    write_json_atomic(
        out / "run.json",
        {
            "settings": asdict(cfg),
            "result_key": key,
            "versions": _versions(),
            "images": images_record,
            "checkpoints": [
                {"checkpoint": r.checkpoint, "epoch": r.epoch, "status": r.status, "timings": r.timings, "error": r.error,
                 "partial": r.partial, "layout": r.layout}
                for r in ok + failed
            ],
        },
    )
    if ok:
        from .report import plot_dse_curve

        plot_dse_curve(ok, dse_values, selection, out / "dse.png", bands=bands)
    return summary


def calibrated_dse(terms: dict[str, float], lam: float | None) -> float:
    """``S + λ · M_dim`` of one set of terms (``λ = None``: the raw score ``S + M_dim``)."""
    s = terms["inter_class_distance"] - (terms["intra_class_batch"] + terms["intra_class_image"]) / 2
    return float(s + (1.0 if lam is None else lam) * terms["effective_dimensionality"])


def _replicate_table(r: CheckpointResult, lam: float | None) -> dict[str, np.ndarray]:
    """The half-sample values of every column of one checkpoint, ``dse`` with the run's λ."""
    table = {k: np.asarray(v, dtype=np.float64) for k, v in r.replicates.items()}
    if table and all(t in table for t in TERMS[:4]):
        table["dse"] = np.array([
            calibrated_dse({t: float(table[t][k]) for t in TERMS[:4]}, lam) for k in range(len(table[TERMS[0]]))
        ])
    return table


def _bands(
    r: CheckpointResult, value: float, table: dict[str, np.ndarray], columns: Sequence[str], confidence: float
) -> dict[str, str]:
    """``<column>_low`` / ``<column>_high`` of one checkpoint (empty without replicates)."""
    from .metrics.intervals import half_sample_interval

    out: dict[str, str] = {}
    for c in columns:
        point = value if c == "dse" else r.terms.get(c, r.metrics.get(c))
        if c not in table or point is None or len(table[c]) < 2:
            continue
        low, high = half_sample_interval(point, table[c], confidence)
        out[f"{c}_low"] = repr(float(low)) if np.isfinite(low) else ""
        out[f"{c}_high"] = repr(float(high)) if np.isfinite(high) else ""
    return out


def _with_content(base: str, images: str | None, image_hash: str) -> str:
    """The result key: the settings' key, and for an image folder the content of the sample."""
    if images is None:  # the built-in scenes are a function of the settings
        return base
    return hashlib.sha256(f"{base}:{image_hash}".encode()).hexdigest()


def _content_key(cache: Path, base: str, images: str | None) -> str | None:
    """The result key of the sample recorded for ``base``, its files hashed again now; None
    when no sample was recorded or its files changed or vanished (then nothing is reused)."""
    if images is None:
        return base
    from .data.images import content_hash

    record = _cached_images_record(cache, base)
    if not record or "names" not in record:
        return None
    now = content_hash(images, record["names"])
    if now is None or now != record.get("image_hash"):
        return None
    return _with_content(base, images, now)


def _cached_images_record(cache: Path, key: str) -> dict[str, Any] | None:
    for p in sorted(cache.glob(f"images.{key[:16]}.rank*.json")):  # the sample of these settings
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            continue
    return None


def _print_summary(console: Any, ok: list[CheckpointResult], failed: list[CheckpointResult], summary: dict) -> None:
    from rich.table import Table

    best = summary["selection"]["best"]
    cands = {c["checkpoint"] for c in summary["selection"]["candidates"]}
    table = Table(title="DSE per checkpoint")
    for col in ("checkpoint", "epoch", "M_inter", "M_intra_img", "M_intra_batch", "M_dim", "DSE", ""):
        table.add_column(col, justify="left" if col == "checkpoint" else "right")
    for r, value in zip(ok, summary["dse"]):
        mark = "★ selected" if best and r.checkpoint == best["checkpoint"] else ("candidate" if r.checkpoint in cands else "")
        t = r.terms
        table.add_row(
            Path(r.checkpoint).name,
            str(r.epoch),
            f"{t['inter_class_distance']:.4f}",
            f"{t['intra_class_image']:.4f}",
            f"{t['intra_class_batch']:.4f}",
            f"{t['effective_dimensionality']:.4f}",
            f"{value:.4f}",
            mark,
        )
    console.print(table)
    lam = summary["lambda"]
    console.print(f"λ = {lam:.4f}" if lam is not None else summary["selection"]["note"])
    for r in failed:
        console.print(f"[red]failed[/red] {Path(r.checkpoint).name}: {r.error}")
