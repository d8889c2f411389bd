"""Scan a training run: DSE of every checkpoint, λ, the selected checkpoints, a plot.

``scan(ScanConfig(run_dir, method=...))`` discovers the run's checkpoints, decodes one image
sample (once), and for each checkpoint loads the backbone, extracts patch features and scores
them. Each checkpoint's result is written atomically to ``OUT/cache/`` as soon as it is done,
keyed on the settings and the checkpoint file's identity, so a rerun with the same settings
skips finished checkpoints and a kill loses at most the checkpoint in flight.

Under ``torchrun`` (``WORLD_SIZE > 1``) the checkpoints are split across ranks (gloo on CPU,
NCCL on GPUs; OUT on a filesystem every rank sees); rank 0 assembles the outputs:

* ``dse.csv``: one row per scored checkpoint (``checkpoint, epoch`` — ``step`` for runs that count
  iterations: DINOv2, DINOv3, Hugging Face — the five terms, ``dse``
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

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torchvision.transforms import v2

from .backbones import (
    INIT_EPOCH,
    FeatureExtractor,
    checkpoint_label,
    extract_features,
    get_adapter,
    load_backbone_as,
    num_feature_layers,
    output_shapes,
)
from .data.images import ImageSample, ImageSampleResult, content_hash, file_size, find_images, load_image_sample
from .feature_cache import FeatureCache
from .layer_map import check_layers, resolve_layers, write_layer_map
from .metrics.baselines import BASELINE_METRICS, lidar_dense
from .metrics.dse import TERMS, DSEAccumulator, DSESettings, calibrated_dse
from .metrics.intervals import half_sample_interval, half_sample_problem, half_sample_replicates
from .plots import plot_dse_curve
from .runtime import PRECISIONS, barrier, library_versions, process_group, write_csv_atomic, write_json_atomic
from .select import calibrate, select_checkpoints
from .sweep import RunSettings, SweepTask, open_run, sweep

__all__ = ["ScanConfig", "ScanResult", "CheckpointResult", "scan", "lidar_views", "CSV_COLUMNS"]

CSV_COLUMNS = ("checkpoint", "epoch", *TERMS, "dse")  #: ``epoch`` is ``step`` for runs that count steps


@dataclass
class ScanConfig(RunSettings):
    """Every setting of a scan (all of them go to ``run.json``); the shared ones are :class:`RunSettings`'."""

    images: str | None = None  #: image folder; None: the built-in scenes
    scenes: dict[str, Any] = field(default_factory=dict)  #: SceneConfig settings of the built-in scenes
    num_images: int = 2048
    dse_batch_size: int = 1024  #: images per DSE batch
    local_clusters: int = DSESettings.local_clusters
    global_clusters: int = DSESettings.global_clusters
    images_per_group: int = DSESettings.images_per_group
    normalize: bool = DSESettings.normalize
    n_init: int = DSESettings.n_init
    metrics: tuple[str, ...] = ()  #: extra columns: rankme, alpha_req, dense_rankme, lidar
    lidar_images: int = 64  #: images with augmented views for LiDAR
    lidar_views: int = 8  #: augmented views per image for LiDAR
    window: int = 2
    top: int = 3
    intervals: int = 10  #: half-samples per checkpoint for the intervals (0: none)
    confidence: float = 0.95  #: nominal coverage of the intervals
    layers: tuple[int, ...] | str = ()  #: the layer map's blocks ("all": every block); (): no map
    cache_memory_gb: float = 4.0  #: RAM for the layer map's features (beyond it: memory-mapped spill files)

    UNKEYED: ClassVar[tuple[str, ...]] = (*RunSettings.UNKEYED, "window", "top", "confidence", "cache_memory_gb")

    @property
    def dse_settings(self) -> DSESettings:
        """The estimator's settings of this scan."""
        return DSESettings(
            self.local_clusters, self.global_clusters, self.images_per_group, self.normalize, self.n_init
        )

    def result_key(self, image_hash: str) -> str:
        """Hash of everything that changes a checkpoint's numbers (not device or output paths)."""
        keyed = self.keyed_settings()
        keyed["metrics"] = sorted(keyed["metrics"])
        if not keyed["layers"]:
            keyed.pop("layers")  # no layer map: the key is the one it was before the map existed
        if "lidar" not in keyed["metrics"]:
            keyed.pop("lidar_images")
            keyed.pop("lidar_views")
        keyed["image_hash"] = image_hash
        return self.hash_key(keyed)


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
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)  #: layer map: block -> {"terms", "replicates"}


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


# --------------------------------------------------------------------------- scoring one checkpoint


class _Scored(NamedTuple):
    """What scoring one checkpoint gives (see :func:`_score_checkpoint`)."""

    terms: dict[str, float]
    metrics: dict[str, float]
    timings: dict[str, float]
    replicates: dict[str, list[float]]
    partial: str
    layout: str
    layers: dict[str, dict[str, Any]]
    interval_note: str | None = None  #: why the intervals are empty (a sample too small for them)


def _score_checkpoint(
    cfg: ScanConfig,
    path: Path,
    images: torch.Tensor,
    device: torch.device,
    metric_fns: dict[str, Callable[[torch.Tensor], float]],
    progress: Any,
    model: torch.nn.Module | None = None,
    views: torch.Tensor | None = None,
    layer_map: tuple[list[int], list[Any]] | None = None,
) -> _Scored:
    """Load, extract and score one checkpoint (terms, metrics, timings, half-sample replicates,
    the partial-load message or "", the layout read, and the layer map's terms and replicates).

    ``model``: a backbone of the right architecture to load into (every weight is
    overwritten, as loading is strict); None builds a new one. ``layer_map``: the blocks of the
    layer map (``cfg.layer`` among them) and one ``(B, N, d)`` float32 array per block to extract
    into, all from one forward pass per batch.
    """

    t0 = time.perf_counter()
    partial: list[str] = []
    layout: list[str] = []
    model = load_backbone_as(cfg, path, model, partial=partial, layout=layout)
    t1 = time.perf_counter()
    extractor = FeatureExtractor(model, cfg.layer)
    precision = PRECISIONS[cfg.precision]
    if layer_map is None:
        feats = extract_features(
            extractor, images, batch_size=cfg.batch_size, device=device, amp_dtype=precision, progress=progress
        )
    else:
        blocks, arrays = layer_map
        extract_features(
            FeatureExtractor(model, layers=blocks),
            images,
            batch_size=cfg.batch_size,
            device=device,
            amp_dtype=precision,
            progress=progress,
            out=arrays,
        )
        feats = torch.from_numpy(arrays[blocks.index(cfg.layer % (num_feature_layers(model) or 1))])
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
        n, q = views.shape[:2]
        vf = extract_features(
            extractor, views.flatten(0, 1), batch_size=cfg.batch_size, device=device, amp_dtype=precision
        )
        vf = vf.reshape(n, q, *vf.shape[1:])
        metrics["lidar"] = _safe_metric("lidar", lidar_dense, vf)
    t4 = time.perf_counter()
    replicates = _replicates(cfg, feats, vf, device, metric_fns)
    t5 = time.perf_counter()
    layers: dict[str, dict[str, Any]] = {}
    if layer_map is not None:
        for block, array in zip(*layer_map, strict=True):
            f = torch.from_numpy(array)
            layers[str(block)] = {
                "terms": _dse_terms(cfg, f, device, cfg.seed),
                "replicates": _replicates(cfg, f, None, device, {}),
            }
    timings = {"load": t1 - t0, "extract": t2 - t1, "score": t3 - t2, "metrics": t4 - t3, "intervals": t5 - t4}
    if layer_map is not None:
        timings["layers"] = time.perf_counter() - t5
    note = (
        half_sample_problem(int(feats.shape[0]), int(feats.shape[1]), cfg.dse_settings, cfg.dse_batch_size)
        if cfg.intervals >= 2
        else None
    )
    return _Scored(terms, metrics, timings, replicates, "; ".join(partial), "; ".join(layout), layers, note)


def _dse_terms(cfg: ScanConfig, feats: torch.Tensor, device: torch.device, seed: int) -> dict[str, float]:
    """The five DSE terms of ``feats`` (B, N, d), in DSE batches of ``cfg.dse_batch_size`` images."""
    acc = DSEAccumulator(cfg.dse_batch_size, seed=seed, settings=cfg.dse_settings)
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
    seed); LiDAR on half-samples of its images. Empty when intervals are off, or (said once, with
    the smallest sample that allows them) when the sample is too small for half-samples."""
    if cfg.intervals < 2:
        return {}
    if half_sample_problem(int(feats.shape[0]), int(feats.shape[1]), cfg.dse_settings, cfg.dse_batch_size) is not None:
        return {}  # the scan says why, once

    def score(sub: torch.Tensor, seed: int) -> dict[str, float]:
        with warnings.catch_warnings():  # a metric undefined at half size is NaN, said once for the full sample
            warnings.simplefilter("ignore")
            return {
                **_dse_terms(cfg, sub, device, seed),
                **{name: _safe_metric(name, fn, sub) for name, fn in metric_fns.items()},
            }

    out = half_sample_replicates(score, feats, cfg.intervals, cfg.seed)
    if views is not None and views.shape[0] >= 4:

        def lidar(sub: torch.Tensor, seed: int) -> dict[str, float]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return {"lidar": _safe_metric("lidar", lidar_dense, sub)}

        out.update(half_sample_replicates(lidar, views, cfg.intervals, cfg.seed))
    return {k: v.tolist() for k, v in out.items()}


def _metric_functions(names: Sequence[str]) -> dict[str, Callable[[torch.Tensor], float]]:
    """Image-sample metrics by name (``lidar``, which needs augmented views, is handled apart)."""
    if not names:
        return {}
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


class _ScanTask(SweepTask[CheckpointResult]):
    """Scores one checkpoint of a scan; the image sample is decoded once, on the first call to :meth:`prepare`."""

    result_type = CheckpointResult

    def __init__(
        self, cfg: ScanConfig, run: Any, cache: Path, base: str, rank: int, console: Any, progress: bool
    ) -> None:
        self.cfg, self.run, self.cache, self.base, self.rank = cfg, run, cache, base, rank
        self.console, self.progress = console, progress
        self.metric_fns = _metric_functions(cfg.metrics)
        self.sample: ImageSampleResult | None = None
        self.views: torch.Tensor | None = None
        self.layer_map: tuple[list[int], list[Any]] | None = None
        self.store: FeatureCache | None = None
        self.said: set[str] = set()

    def prepare(self) -> str:
        cfg = self.cfg
        self.sample = load_image_sample(
            cfg.images,
            cfg.num_images,
            cfg.seed,
            cfg.image_size,
            scenes=cfg.scenes,
            progress=self.progress and self.rank == 0,
        )
        if self.sample.shortfall:
            warnings.warn(
                f"images: asked for {cfg.num_images} images, {len(self.sample)} available in {self.sample.source}",
                stacklevel=4,
            )
        write_json_atomic(self.cache / f"images.{self.base[:16]}.rank{self.rank}.json", self.sample.record())
        if "lidar" in cfg.metrics:
            self.views = lidar_views(
                self.sample.images, min(cfg.lidar_images, len(self.sample)), cfg.lidar_views, cfg.seed
            )
        if cfg.layers:
            self.layer_map = self._layer_arrays()
        return _with_content(self.base, cfg.images, self.sample.image_hash)

    def _layer_arrays(self) -> tuple[list[int], list[Any]]:
        """The layer map's blocks (``cfg.layer`` added) and one float32 array per block, in RAM up
        to ``cache_memory_gb`` and memory-mapped beyond (reused for every checkpoint)."""
        assert self.sample is not None
        model, cfg = self.run.model, self.cfg
        n = num_feature_layers(model) or 1
        blocks = sorted({*resolve_layers(cfg.layers, model), cfg.layer % n})
        shapes = output_shapes(FeatureExtractor(model, layers=blocks), self.sample.images[:1])
        self.store = FeatureCache(int(cfg.cache_memory_gb * (1 << 30)), self.cache / "spill")
        arrays = [
            self.store.allocate(f"layer{b}", (len(self.sample), *shape[1:]), np.float32)
            for b, shape in zip(blocks, shapes, strict=True)
        ]
        return blocks, arrays

    def close(self) -> None:
        """Release the layer map's arrays (and their spill files)."""
        if self.store is not None:
            self.store.close()

    def score(self, n: int, total: int, path: Path, epoch: int | None, identity: str, target: Path) -> CheckpointResult:
        assert self.sample is not None
        if self.progress:
            self.console.print(f"scoring [{n}/{total}] {checkpoint_label(path)}")
        model = (
            None if self.cfg.allow_partial else self.run.model
        )  # every checkpoint is loaded into it (strict loading)
        scored = _score_checkpoint(
            self.cfg,
            path,
            self.sample.images,
            self.run.device,
            self.metric_fns,
            checkpoint_label(path) if self.progress else False,
            model,
            self.views,
            self.layer_map,
        )
        if self.progress:
            self.console.print(f"  read as: {scored.layout}")
        if scored.interval_note and scored.interval_note not in self.said:
            self.said.add(scored.interval_note)
            warnings.warn(scored.interval_note, stacklevel=2)
        return CheckpointResult(
            str(path),
            epoch,
            "ok",
            scored.terms,
            scored.metrics,
            scored.timings,
            identity=identity,
            num_images=len(self.sample),
            replicates=scored.replicates,
            partial=scored.partial,
            layout=scored.layout,
            layers=scored.layers,
        )

    def failure(self, path: Path, epoch: int | None, error: str, identity: str) -> CheckpointResult:
        return CheckpointResult(str(path), epoch, "failed", error=error, identity=identity)


def _check_scan(cfg: ScanConfig) -> None:
    _metric_functions(cfg.metrics)
    check_layers(cfg.layers)
    if not cfg.cache_memory_gb >= 0:
        raise ValueError(f"cache_memory_gb: expected >= 0, got {cfg.cache_memory_gb!r}")
    if isinstance(cfg.intervals, bool) or not isinstance(cfg.intervals, int) or cfg.intervals < 0 or cfg.intervals == 1:
        raise ValueError(f"intervals: expected 0 (none) or at least 2 half-samples, got {cfg.intervals!r}")
    if not 0 < cfg.confidence < 1:
        raise ValueError(f"confidence: expected a level in (0, 1), got {cfg.confidence!r}")


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
    console = console or Console(stderr=True)
    cache = cfg.out_dir / "cache"
    run = open_run(cfg, cache, console, _check_scan)
    cfg = run.cfg
    out = cfg.out_dir
    with process_group(run.device) as (rank, world):
        # the image list's hash is part of the cache key: computed from the settings without
        # decoding; the images are decoded only if some checkpoint of this rank needs scoring
        spec = ImageSample(cfg.images, cfg.num_images, cfg.seed, cfg.image_size, scenes=cfg.scenes or None)
        key_source = json.dumps(spec.settings(), sort_keys=True)
        if cfg.images is not None:
            files = find_images(cfg.images)
            key_source += json.dumps([(f, file_size(Path(cfg.images) / f)) for f in files])
        base = cfg.result_key(hashlib.sha256(key_source.encode()).hexdigest())
        # results are keyed on the images' content too: the sample a cached result used is read
        # again and hashed (None when unknown or changed: everything is scored anew)
        task = _ScanTask(cfg, run, cache, base, rank, console, progress)
        try:
            results, computed = sweep(
                run.checkpoints,
                task,
                cache=cache,
                key=_content_key(cache, base, cfg.images),
                final_key=lambda: _content_key(cache, base, cfg.images) or base,  # the sample the others recorded
                rank=rank,
                world=world,
                console=console,
                after_checkpoint=after_checkpoint,
            )
        finally:
            task.close()
        ok = [r for r in results if r.status == "ok"]
        failed = [r for r in results if r.status != "ok"]
        summary = _assemble(cfg, ok, failed, out, task.sample, base, write=rank == 0)
        barrier(world)
        if rank == 0 and progress:
            _print_summary(console, ok, failed, summary)
        return ScanResult(results, summary["lambda"], summary["dse"], summary["selection"], out, failed, computed)


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

    unit = get_adapter(cfg.method).unit

    def entry(j: int) -> dict[str, Any]:
        i = trained[j]
        return {"checkpoint": ok[i].checkpoint, unit: ok[i].epoch, "dse": dse_values[i]}

    selection = {
        "unit": unit,
        "lambda": lam,
        "raw": lam is None,
        "note": note,
        "window": cfg.window,
        "top": cfg.top,
        "candidates": [entry(j) for j in sel.candidates] if sel else [],
        "selected": [entry(j) for j in sel.selected] if sel else [],
        "best": entry(sel.best) if sel and sel.best is not None else None,
        "failed": [{"checkpoint": r.checkpoint, unit: r.epoch, "error": r.error} for r in failed],
    }
    summary = {"lambda": lam, "dse": dse_values, "selection": selection}
    if not write:
        return summary
    extra = list(dict.fromkeys(m for r in ok for m in r.metrics))
    columns = [*CSV_COLUMNS[2:], *extra]
    reps = [_replicate_table(r, lam) for r in ok]
    bands = [
        _bands(r, value, table, columns, cfg.confidence) for r, value, table in zip(ok, dse_values, reps, strict=True)
    ]
    rows = []
    for r, value, band in zip(ok, dse_values, bands, strict=True):
        row = {"checkpoint": r.checkpoint, unit: "" if r.epoch is None else r.epoch}
        row.update({t: repr(float(r.terms[t])) for t in TERMS})
        row["dse"] = repr(float(value))
        row.update({m: repr(float(r.metrics[m])) if m in r.metrics else "" for m in extra})
        row.update(band)
        row["partial"] = "yes" if r.partial else ""
        rows.append(row)
    marked = ["partial"] if any(r.partial for r in ok) else []  # only runs that loaded partial weights
    id_columns = ["checkpoint", unit]
    write_csv_atomic(
        out / "dse.csv",
        [*id_columns, *CSV_COLUMNS[2:], *extra, *[f"{c}_{s}" for c in columns for s in ("low", "high")], *marked],
        rows,
    )
    rep_rows = [
        {"checkpoint": r.checkpoint, "replicate": k, **{c: repr(float(v[k])) for c, v in table.items() if c in columns}}
        for r, table in zip(ok, reps, strict=True)
        for k in range(len(next(iter(table.values()), [])))
    ]
    write_csv_atomic(out / "dse_replicates.csv", ["checkpoint", "replicate", *columns], rep_rows)
    write_json_atomic(out / "selection.json", selection)
    images_record = sample.record() if sample is not None else _cached_images_record(out / "cache", key)
    write_json_atomic(
        out / "run.json",
        {
            "settings": asdict(cfg),
            "unit": unit,
            "result_key": key,
            "versions": library_versions(),
            "images": images_record,
            "checkpoints": [
                {
                    "checkpoint": r.checkpoint,
                    unit: r.epoch,
                    "status": r.status,
                    "timings": r.timings,
                    "error": r.error,
                    "partial": r.partial,
                    "layout": r.layout,
                }
                for r in ok + failed
            ],
        },
    )
    if ok:
        plot_dse_curve(ok, dse_values, selection, out / "dse.png", bands=bands, unit=unit)
    if any(r.layers for r in ok):
        summary["layer_map"] = write_layer_map(ok, INIT_EPOCH, out, unit, cfg.confidence)
    return summary


def _replicate_table(r: CheckpointResult, lam: float | None) -> dict[str, np.ndarray]:
    """The half-sample values of every column of one checkpoint, ``dse`` with the run's λ."""
    table = {k: np.asarray(v, dtype=np.float64) for k, v in r.replicates.items()}
    if table and all(t in table for t in TERMS[:4]):
        table["dse"] = np.array(
            [calibrated_dse({t: float(table[t][k]) for t in TERMS[:4]}, lam) for k in range(len(table[TERMS[0]]))]
        )
    return table


def _bands(
    r: CheckpointResult, value: float, table: dict[str, np.ndarray], columns: Sequence[str], confidence: float
) -> dict[str, str]:
    """``<column>_low`` / ``<column>_high`` of one checkpoint (empty without replicates)."""
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
    best = summary["selection"]["best"]
    cands = {c["checkpoint"] for c in summary["selection"]["candidates"]}
    table = Table(title="DSE per checkpoint")
    for col in (
        "checkpoint",
        summary["selection"]["unit"],
        "M_inter",
        "M_intra_img",
        "M_intra_batch",
        "M_dim",
        "DSE",
        "",
    ):
        table.add_column(col, justify="left" if col == "checkpoint" else "right")
    for r, value in zip(ok, summary["dse"], strict=True):
        mark = (
            "★ selected"
            if best and r.checkpoint == best["checkpoint"]
            else ("candidate" if r.checkpoint in cands else "")
        )
        t = r.terms
        table.add_row(
            checkpoint_label(r.checkpoint),
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
    if summary.get("layer_map"):
        best = summary["layer_map"]["best_layer"]
        console.print(
            "best layer per checkpoint (layer map, dse_layers.csv): "
            + ", ".join(f"{checkpoint_label(b['checkpoint'])}: {b['layer']}" for b in best)
        )
    for r in failed:
        console.print(f"[red]failed[/red] {checkpoint_label(r.checkpoint)}: {r.error}")
