r"""Linear-probe mIoU per checkpoint: the segmentation quality that DSE is meant to track.

Protocol (the DINOv2 linear protocol, on frozen patch features)
---------------------------------------------------------------
* **Features**: the frozen backbone's patch features of the chosen layer (default: the last),
  taken exactly as ``dsekit scan`` takes them (:class:`dsekit.backbones.FeatureExtractor`: ViT
  tokens after the final norm, prefix tokens dropped; CNN / Swin stage maps), laid out on the
  patch grid ``(B, d, h, w)``.
* **Head**: ``BatchNorm2d(d)`` followed by a ``1x1 Conv2d(d, C)``
  (:class:`LinearHead`); the convolution starts from ``N(0, 0.01²)`` weights and zero bias
  drawn from a private generator seeded by ``seed``.
* **Loss**: logits ``(B, C, h, w)`` upsampled bilinearly (``align_corners=False``) to the mask
  resolution, cross-entropy averaged over the pixels whose label is not the dataset's ignore
  index (:func:`upsampled_cross_entropy`; exact value and gradient, computed in chunks so that
  the full-resolution logits of a batch never exist at once).
* **Evaluation**: the same upsampled logits, arg-max per pixel, a confusion matrix accumulated
  with ``torchmetrics.classification.MulticlassConfusionMatrix(ignore_index=...)``, then mIoU
  and pixel accuracy from it (:func:`miou_from_confusion`, :func:`pixel_accuracy_from_confusion`).
  The metric never synchronises across processes (``sync_on_compute=False``): under ``torchrun``
  each rank evaluates its own checkpoints on the whole validation set.

mIoU convention: IoU_c = TP_c / (TP_c + FP_c + FN_c); the mean runs over the classes that occur
in the ground truth *or* the prediction of the evaluated set; a class absent from both has no
IoU and is left out of the mean (neither 0 nor 1). This is what torchmetrics' own
``MulticlassJaccardIndex(average="macro")`` computes (it gives such classes zero weight); it is
recomputed here from the confusion matrix so that the rule does not depend on the torchmetrics
version and an empty matrix gives 0.0 instead of NaN. Pixel accuracy is trace / total over the
non-ignored pixels (torchmetrics ``MulticlassAccuracy(average="micro")``).

Defaults (all settable, see :class:`ProbeConfig`)
-------------------------------------------------
* images: shorter side resized to ``image_size`` = 224 (bilinear, antialiased), centre crop
  224 x 224; masks the same with nearest-neighbour, so the **mask resolution is the crop size**;
* no augmentation: features are extracted once per checkpoint and cached, so every epoch sees
  the same crops (this is what makes the head cheap to train);
* 10 epochs over the cached training features, batches of 32 images, AdamW (lr 1e-2, weight
  decay 1e-4), cosine decay of the learning rate to 0 over all steps, no warm-up
  (``optimizer="sgd"``: momentum 0.9, same schedule). The DINOv2 configurations train the head
  with AdamW at lr 1e-3 for 40k iterations; on cached features the head sees a few hundred to a
  few thousand steps, where 1e-3 leaves it short of convergence and 1e-2 reaches it (a
  BatchNorm'd linear layer tolerates the larger step);
* datasets: the training split of :func:`dsekit.data.segmentation.default_train_split` (VOC:
  ``train_aug`` when the SBD list is there), validation on ``val``; all images of both splits,
  except the built-in scenes: 1000 training and 250 validation scenes.

The feature cache
-----------------
Everything the probe stores per dataset (decoded images ``uint8 (n, 3, S, S)`` and masks
``uint8 (n, S, S)``, both kept once for all checkpoints) and per checkpoint (patch features,
``float16 (n, h*w, d)``, the array slots reused from one checkpoint to the next) goes through
one :class:`FeatureCache` whose **resident memory is at most** ``cache_memory_gb`` (default
4 GB). Arrays are placed in RAM while they fit (features first, then masks, then images) and
beyond that in ``numpy.memmap`` files under ``OUT/cache/probe/spill/`` (removed at the end;
their pages live in the OS page cache, which the kernel reclaims as needed). Masks use
``uint8`` when the dataset has at most 255 classes and ignore index 255 (every built-in
reader), ``int16`` otherwise.

Outputs (``OUT``, default ``RUN_DIR/dse``, the folder ``dsekit scan`` writes to)
--------------------------------------------------------------------------------
* ``probe.csv``: ``checkpoint, epoch, dataset, miou, pixel_accuracy, miou_low, miou_high,
  heads`` (``step`` for ``epoch`` in runs that count steps), one row per checkpoint and
  dataset; rows of other datasets already in the file are kept (with any column they have),
  those of the probed dataset replaced. ``miou`` is the mean over ``head_seeds`` heads;
  ``miou_low`` / ``miou_high`` its bootstrap interval over the validation images and the heads
  (:func:`dsekit.metrics.intervals.miou_bootstrap`, ``confidence``, 1000 resamples shared by all
  checkpoints);
* ``probe_<dataset>_classes.csv``: ``checkpoint, epoch, class_id, class_name, iou, iou_low,
  iou_high`` (empty IoU: the class is absent from truth and prediction);
* ``probe_<dataset>_confusion.npz``: every image's confusion matrix per checkpoint and head
  (sparse: ``checkpoint, head, image, cell, count`` with ``cell = truth * C + prediction``),
  from which :mod:`dsekit.report` draws the paired resamples of its τ and selection intervals;
* ``probe_<dataset>.json``: settings, library versions, the datasets used and, per checkpoint,
  per-class IoU, training loss per epoch and timings;
* ``report.md`` / ``report.json`` / PNGs through :func:`dsekit.report.write_report` when
  ``dse.csv`` is in the same folder.

Resume and torchrun behave as in :mod:`dsekit.scan`: each checkpoint's result is written
atomically to ``OUT/cache/probe/`` as soon as it is done, keyed on the settings, the dataset
and the checkpoint file's identity; under ``torchrun`` checkpoints are split across ranks and
rank 0 assembles the outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from rich.console import Console
from torch import nn
from tqdm.auto import tqdm

from .backbones import (
    FeatureExtractor,
    ImageEmbedder,
    checkpoint_label,
    extract_features,
    get_adapter,
    load_backbone_as,
    num_feature_layers,
    output_shapes,
)
from .data.images import IMAGENET_MEAN, IMAGENET_STD
from .data.segmentation import dataset_spec, default_train_split
from .feature_cache import FeatureCache
from .io import read_confusion_table, write_confusion_table
from .layer_map import check_layers, resolve_layers
from .linear_head import ProbeMetrics, linear_probe, make_optimizer
from .metrics.knn import knn_predict
from .probe_data import (
    DecodedSplit,
    ImageLabels,
    data_fingerprint,
    dataset_label,
    decode_split,
    open_dataset,
    split_image_labels,
)
from .probe_outputs import CLASS_COLUMNS, KNN_COLUMNS, PROBE_COLUMNS, print_summary, write_outputs
from .report import write_report
from .runtime import PRECISIONS, barrier, process_group
from .sweep import RunSettings, SweepTask, open_run, sweep

__all__ = ["PROBE_COLUMNS", "KNN_COLUMNS", "CLASS_COLUMNS", "CheckpointProbe", "ProbeConfig", "ProbeResult", "probe"]


@dataclass
class ProbeConfig(RunSettings):
    """Every setting of a probe run (all of them go to ``probe_<dataset>.json``); the shared ones
    are :class:`RunSettings`' (``image_size`` is the crop side S; masks are stored at S x S)."""

    dataset: str = "scenes"
    root: str | None = None  #: dataset directory (None for the built-in scenes)
    scenes: dict[str, Any] = field(default_factory=dict)  #: SceneConfig settings of the built-in scenes
    train_split: str | None = None  #: default: ``default_train_split(dataset, root)``
    val_split: str = "val"
    num_classes: int | None = None  #: folder datasets only: None reads classes.txt, else infers from the masks
    num_train: int | None = None  #: None: every sample (scenes: 1000)
    num_val: int | None = None  #: None: every sample (scenes: 250)
    resize: int | None = None  #: shorter side before the centre crop (default: S)
    epochs: int = 10
    head_batch_size: int = 32
    lr: float = 1e-2
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    head_seeds: int = 1  #: heads trained per checkpoint (seeds ``seed, seed+1, ...``); mIoU is their mean
    confidence: float = 0.95  #: nominal coverage of the mIoU intervals
    cache_memory_gb: float = 4.0
    cache_dtype: str = "float16"
    workers: int | None = None  #: image decoding processes (default: min(4, CPUs); 0 for scenes)
    threads: int | None = None  #: CPU threads for the run (``torch.set_num_threads``, restored after); None: as set
    layers: tuple[int, ...] | str = ()  #: probe these blocks too ("all": every block), from one forward pass; (): none
    image_labels: str | None = None  #: CSV of name,label rows (default: the dataset's own image labels, if any)
    knn_k: int = 20  #: neighbours of the image-level k-NN (DINO's protocol)
    knn_temperature: float = 0.07  #: vote temperature of the image-level k-NN

    UNKEYED: ClassVar[tuple[str, ...]] = (
        *RunSettings.UNKEYED,
        "cache_memory_gb",
        "workers",
        "threads",
        "root",
        "confidence",
    )

    def result_key(self, data_fingerprint: str) -> str:
        """Hash of everything that changes a checkpoint's numbers (not device, paths or speed knobs)."""
        keyed = self.keyed_settings()
        if not keyed["layers"]:
            keyed.pop("layers")  # no per-layer probe: the key is the one it was before the option existed
        keyed["data"] = data_fingerprint
        return self.hash_key(keyed)


@dataclass
class CheckpointProbe:
    """Probe result of one checkpoint on one dataset (``status`` is ``"ok"`` or ``"failed"``)."""

    checkpoint: str
    epoch: int | None
    dataset: str
    status: str
    miou: float = float("nan")
    pixel_accuracy: float = float("nan")
    iou: list[float | None] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""
    identity: str = ""
    num_train: int = 0
    num_val: int = 0
    head_miou: list[float] = field(default_factory=list)  #: mIoU of each head (seed, seed+1, ...)
    partial: str = ""  #: with ``allow_partial``: what did not fit (missing / unexpected keys); "" if it all did
    layers: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  #: block -> {"miou", "pixel_accuracy", "iou", "head_miou"}
    knn_top1: float = float("nan")  #: image-level k-NN top-1 accuracy on the validation split (NaN: no image labels)
    knn_correct: list[int] = field(default_factory=list)  #: 1 where the k-NN label of a validation image is right


@dataclass
class ProbeResult:
    """What a probe run produced (rank 0 has the assembled outputs)."""

    results: list[CheckpointProbe]
    dataset: str
    out_dir: Path
    failed: list[CheckpointProbe]
    computed: int  #: checkpoints probed by this process in this call (not taken from the cache)
    cache_stats: dict[str, int] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)  #: seconds: data (open + decode, once per run), total

    @property
    def ok(self) -> bool:
        return not self.failed


def _extract_into(
    extractor: Any, images: np.ndarray, outs: list[np.ndarray], cfg: ProbeConfig, device: torch.device, desc: str | bool
) -> None:
    """Patch features of uint8 ``images`` into ``outs``, one ``(n, N, d)`` array (the cache's
    dtype) per layer the extractor reads."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0
    n = images.shape[0]
    bar = None
    if desc:
        bar = tqdm(total=n, desc=desc if isinstance(desc, str) else "features", unit="img", leave=False)
    try:
        for lo in range(0, n, cfg.batch_size):
            x = torch.from_numpy(images[lo : lo + cfg.batch_size]).to(device, non_blocking=True)
            x = (x.float() - mean) / std
            zs = extract_features(
                extractor, x, batch_size=cfg.batch_size, device=device, amp_dtype=PRECISIONS[cfg.precision]
            )
            for z, out in zip(zs if isinstance(zs, list) else [zs], outs, strict=True):
                if not bool(torch.isfinite(z).all()):
                    raise ValueError("the backbone's features hold NaN/Inf values")
                zc = z.numpy().astype(out.dtype)
                if not np.isfinite(zc).all():
                    raise ValueError(
                        f"features overflow {out.dtype} (max |value| {float(z.abs().max()):.3g}); "
                        "use cache_dtype='float32'"
                    )
                out[lo : lo + z.shape[0]] = zc
            if bar is not None:
                bar.update(x.shape[0])
    finally:
        if bar is not None:
            bar.close()


def _probe_checkpoint(
    cfg: ProbeConfig,
    path: Path,
    model: nn.Module | None,
    data: dict[str, DecodedSplit],
    feats: dict[str, list[np.ndarray]],
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    progress: bool,
    blocks: list[int] | None = None,
    labels: tuple[ImageLabels, ImageLabels] | None = None,
) -> tuple[list[list[ProbeMetrics]], dict[str, float], str, list[int]]:
    """Load, extract and train ``cfg.head_seeds`` heads on each layer read -> (per layer, the
    per-head metrics; timings; partial-load message; the image-level k-NN's per-image
    correctness, empty without ``labels``). ``blocks``: the layers read in one forward pass
    (``feats`` holds one array per block and split); None: ``cfg.layer`` alone."""
    t0 = time.perf_counter()
    partial: list[str] = []
    model = load_backbone_as(cfg, path, model, partial=partial)
    extractor = FeatureExtractor(model, cfg.layer) if blocks is None else FeatureExtractor(model, layers=blocks)
    t1 = time.perf_counter()
    name = checkpoint_label(path)
    for split in ("train", "val"):
        _extract_into(
            extractor, data[split].images, feats[split], cfg, device, f"{name} {split}" if progress else False
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t2 = time.perf_counter()
    per_layer = [
        [
            linear_probe(
                train_feats,
                data["train"].masks,
                val_feats,
                data["val"].masks,
                num_classes,
                ignore_index=ignore_index,
                epochs=cfg.epochs,
                batch_size=cfg.head_batch_size,
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                optimizer=cfg.optimizer,
                seed=cfg.seed + h,
                device=device,
                progress=f"{name} head {h + 1}/{cfg.head_seeds}" if progress else False,
            )
            for h in range(cfg.head_seeds)
        ]
        for train_feats, val_feats in zip(feats["train"], feats["val"], strict=True)
    ]
    timings = {"load": t1 - t0, "extract": t2 - t1}
    for k in per_layer[0][0].timings:
        timings[f"head_{k}"] = sum(m.timings[k] for heads in per_layer for m in heads)
    correct: list[int] = []
    if labels is not None:
        t3 = time.perf_counter()
        correct = _image_knn(model, data, labels, cfg, device)
        timings["knn"] = time.perf_counter() - t3
    timings["total"] = time.perf_counter() - t0
    return per_layer, timings, "; ".join(partial), correct


def _image_knn(
    model: nn.Module,
    data: dict[str, DecodedSplit],
    labels: tuple[ImageLabels, ImageLabels],
    cfg: ProbeConfig,
    device: torch.device,
) -> list[int]:
    """Per validation image, 1 when its k-NN label (image embeddings of the training split,
    :func:`dsekit.metrics.knn.knn_predict`) is its own, else 0."""
    embedder = ImageEmbedder(model)
    emb = {}
    for split in ("train", "val"):
        n = data[split].images.shape[0]
        d = int(extract_features(embedder, torch.zeros(1, 3, cfg.image_size, cfg.image_size), device=device).shape[-1])
        out = np.empty((n, 1, d), dtype=np.float32)
        _extract_into(embedder, data[split].images, [out], cfg, device, False)
        emb[split] = torch.from_numpy(out[:, 0])
    pred = knn_predict(
        emb["train"],
        torch.tensor(labels[0].labels),
        emb["val"],
        k=cfg.knn_k,
        temperature=cfg.knn_temperature,
        num_classes=len(labels[0].names),
    )
    return [int(v) for v in (pred == torch.tensor(labels[1].labels)).tolist()]


def _combine_heads(heads: list[ProbeMetrics]) -> tuple[float, float, list[float | None]]:
    """mIoU, pixel accuracy and per-class IoU averaged over heads (a class absent for every head: None)."""
    miou = float(np.mean([m.miou for m in heads]))
    acc = float(np.mean([m.pixel_accuracy for m in heads]))
    iou: list[float | None] = []
    for c in range(len(heads[0].iou)):
        vals = [v for v in (m.iou[c] for m in heads) if v is not None]
        iou.append(float(np.mean(vals)) if vals else None)
    return miou, acc, iou


def _feature_shapes(model: nn.Module, cfg: ProbeConfig, blocks: list[int] | None) -> list[tuple[int, int]]:
    """(N, d) of the model's features at ``image_size`` for each layer read, from one blank image."""
    ext = FeatureExtractor(model, cfg.layer) if blocks is None else FeatureExtractor(model, layers=blocks)
    shapes = output_shapes(ext, torch.zeros(1, 3, cfg.image_size, cfg.image_size))
    return [(int(z[1]), int(z[2])) for z in shapes]


class _ProbeTask(SweepTask[CheckpointProbe]):
    """Probes one checkpoint; the features' slots are reserved and both splits decoded once, on
    the first call to :meth:`prepare`."""

    result_type = CheckpointProbe
    verb = "probed"

    def __init__(
        self,
        cfg: ProbeConfig,
        run: Any,
        data: tuple[Any, Any],
        store: FeatureCache,
        key: str,
        label: str,
        rank: int,
        console: Any,
        progress: bool,
        t_start: float,
    ) -> None:
        self.cfg, self.run, self.store, self.key, self.label = cfg, run, store, key, label
        self.train_ds, self.val_ds = data
        self.rank, self.console, self.progress = rank, console, progress
        self.confusions: dict[str, list[Any]] = {}
        self.layer_confusions: dict[str, dict[int, list[Any]]] = {}  #: checkpoint -> block -> per-head confusions
        self.feats: dict[str, list[np.ndarray]] = {}
        self.blocks: list[int] | None = None  #: the blocks read with --layers (cfg.layer among them)
        self.labels: tuple[ImageLabels, ImageLabels] | None = None  #: image-level labels of both splits
        self.data: dict[str, DecodedSplit] = {}
        self.data_seconds: float | None = None
        self.t_start = t_start  #: when the run began (the data timing counts opening the datasets too)
        self._read: dict[Path, list[Any]] = {}  #: cache files whose confusions were read already

    def prepare(self) -> str:
        # set-up errors (architecture, dataset files, labels) stop the run; checkpoint errors do not
        cfg = self.cfg
        model = self.run.model
        if cfg.layers:
            n = num_feature_layers(model) or 1
            self.blocks = sorted({*resolve_layers(cfg.layers, model), cfg.layer % n})
        shapes = _feature_shapes(model, cfg, self.blocks)
        self.feats = {  # reserved first: read every epoch, they get the RAM before images and masks
            split: [
                self.store.allocate(
                    f"{split}.features{'' if self.blocks is None else f'.layer{b}'}", (len(ds), N, d), cfg.cache_dtype
                )
                for b, (N, d) in zip(self.blocks or [cfg.layer], shapes, strict=True)
            ]
            for split, ds in (("train", self.train_ds), ("val", self.val_ds))
        }
        show = self.progress and self.rank == 0
        self.data = {
            "train": decode_split(self.train_ds, self.store, "train", cfg, show),
            "val": decode_split(self.val_ds, self.store, "val", cfg, show),
        }
        self.data_seconds = time.perf_counter() - self.t_start  # open + decode, once per run
        self.labels = split_image_labels(self.train_ds, self.val_ds, cfg.image_labels)
        return self.key

    def score(self, n: int, total: int, path: Path, epoch: int | None, identity: str, target: Path) -> CheckpointProbe:
        cfg = self.cfg
        if self.progress:
            self.console.print(f"probing [{n}/{total}] {checkpoint_label(path)} on {self.label}")
        model = None if cfg.allow_partial else self.run.model  # reused: strict loading overwrites every weight
        per_layer, timings, partial, correct = _probe_checkpoint(
            cfg,
            path,
            model,
            self.data,
            self.feats,
            int(self.train_ds.num_classes),
            int(self.train_ds.ignore_index),
            self.run.device,
            self.progress,
            self.blocks,
            self.labels,
        )
        blocks = self.blocks or [cfg.layer]
        heads = (
            per_layer[blocks.index(cfg.layer % (num_feature_layers(self.run.model) or 1))]
            if self.blocks
            else per_layer[0]
        )
        miou, acc, iou = _combine_heads(heads)
        write_confusion_table(target.with_suffix(".npz"), [str(path)], [[m.image_confusion for m in heads]])
        layers: dict[str, dict[str, Any]] = {}
        if self.blocks is not None:
            write_confusion_table(
                target.with_suffix(".layers.npz"),
                [str(b) for b in blocks],
                [[m.image_confusion for m in hs] for hs in per_layer],
            )
            for b, hs in zip(blocks, per_layer, strict=True):
                lm, la, li = _combine_heads(hs)
                layers[str(b)] = {"miou": lm, "pixel_accuracy": la, "iou": li, "head_miou": [m.miou for m in hs]}
            self.layer_confusions[str(path)] = {
                b: [m.image_confusion for m in hs] for b, hs in zip(blocks, per_layer, strict=True)
            }
        return CheckpointProbe(
            str(path),
            epoch,
            self.label,
            "ok",
            miou,
            acc,
            iou,
            heads[0].train_loss,
            timings,
            identity=identity,
            num_train=len(self.train_ds),
            num_val=len(self.val_ds),
            head_miou=[m.miou for m in heads],
            partial=partial,
            layers=layers,
            knn_top1=float(np.mean(correct)) if correct else float("nan"),
            knn_correct=correct,
        )

    def failure(self, path: Path, epoch: int | None, error: str, identity: str) -> CheckpointProbe:
        return CheckpointProbe(str(path), epoch, self.label, "failed", error=error, identity=identity)

    def complete(self, path: Path, target: Path, result: CheckpointProbe) -> bool:
        """A cached result counts only with its confusions (without them it cannot get an interval)."""
        # the sweep asks twice (what is pending, then the results): a file is read once (its name
        # holds the result key and it is written once, atomically)
        conf = self._read.get(target)
        if conf is None:
            conf = _cached_confusions(target.with_suffix(".npz"))
        if conf is None:
            return False
        if result.layers:
            by_layer = _cached_layer_confusions(target.with_suffix(".layers.npz"))
            if by_layer is None or set(by_layer) != {int(b) for b in result.layers}:
                return False
            self.layer_confusions[str(path)] = by_layer
        self._read[target] = conf
        self.confusions[str(path)] = conf
        return True


def _check_probe(cfg: ProbeConfig) -> None:
    spec = dataset_spec(cfg.dataset)
    check_layers(cfg.layers)
    if cfg.cache_dtype not in ("float16", "float32"):
        raise ValueError(f"cache_dtype: expected 'float16' or 'float32', got {cfg.cache_dtype!r}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {cfg.threads!r}")
    if isinstance(cfg.head_seeds, bool) or not isinstance(cfg.head_seeds, int) or cfg.head_seeds < 1:
        raise ValueError(f"head_seeds must be a positive int, got {cfg.head_seeds!r}")
    if not 0 < cfg.confidence < 1:
        raise ValueError(f"confidence: expected a level in (0, 1), got {cfg.confidence!r}")
    if not cfg.cache_memory_gb >= 0:
        raise ValueError(f"cache_memory_gb must be >= 0, got {cfg.cache_memory_gb}")
    make_optimizer(cfg.optimizer, [torch.zeros(1, requires_grad=True)], 1.0, 0.0)  # validates the name
    if spec.needs_root and cfg.root is None:
        raise ValueError(f"dataset {spec.name!r} needs --root (its layout:)\n{spec.layout}")


def probe(
    cfg: ProbeConfig,
    *,
    progress: bool = True,
    console: Any = None,
    after_checkpoint: Callable[[CheckpointProbe], None] | None = None,
) -> ProbeResult:
    """Linear-probe every checkpoint of ``cfg.run_dir`` on ``cfg.dataset`` (see the module docstring).

    Raises:
        FileNotFoundError / NotADirectoryError: the run folder or the dataset root is missing
            (the dataset error shows the expected layout).
        ValueError: an unknown method, dataset or setting; label values outside the class range
            (naming the mask file and the values).
    """
    console = console or Console(stderr=True)
    cache_dir = cfg.out_dir / "cache" / "probe"
    run = open_run(cfg, cache_dir, console, _check_probe)
    cfg = run.cfg
    out = cfg.out_dir
    label = dataset_label(cfg)
    train_split = cfg.train_split or default_train_split(dataset_spec(cfg.dataset).name, cfg.root)

    threads_before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    store = FeatureCache(int(cfg.cache_memory_gb * (1 << 30)), cache_dir / "spill")
    t_start = time.perf_counter()
    try:
        with process_group(run.device) as (rank, world):
            train_ds = open_dataset(cfg, train_split, "train")
            val_ds = open_dataset(cfg, cfg.val_split, "val")
            key = cfg.result_key(data_fingerprint(train_ds, val_ds) + label + train_split)
            task = _ProbeTask(cfg, run, (train_ds, val_ds), store, key, label, rank, console, progress, t_start)
            results, computed = sweep(
                run.checkpoints,
                task,
                cache=cache_dir,
                key=key,
                rank=rank,
                world=world,
                console=console,
                after_checkpoint=after_checkpoint,
            )
            failed = [r for r in results if r.status != "ok"]
            report = None
            run_timings = {"total": time.perf_counter() - t_start}
            if task.data_seconds is not None:
                run_timings = {"data": task.data_seconds, **run_timings}
            if rank == 0:
                write_outputs(
                    cfg,
                    results,
                    task.confusions,
                    task.layer_confusions,
                    label,
                    train_split,
                    train_ds,
                    val_ds,
                    store.stats(),
                    key,
                    out,
                    run_timings,
                )
                report = _maybe_report(out, console)
                if progress:
                    print_summary(console, results, label, get_adapter(cfg.method).unit)
            barrier(world)
            return ProbeResult(results, label, out, failed, computed, store.stats(), report, run_timings)
    finally:
        store.close()
        torch.set_num_threads(threads_before)


def _cached_layer_confusions(path: Path) -> dict[int, list[Any]] | None:
    """Block -> per-head confusions of one checkpoint's layer file (None when absent or unreadable)."""
    try:
        names, tables = read_confusion_table(path)
        return {int(n): t for n, t in zip(names, tables, strict=True)}
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _cached_confusions(path: Path) -> list[Any] | None:
    """The per-head confusions of one checkpoint's cache file (None when absent or unreadable)."""
    try:
        return read_confusion_table(path)[1][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _maybe_report(out: Path, console: Any) -> dict[str, Any] | None:
    if not (out / "dse.csv").is_file():
        return None
    try:
        return write_report(out)
    except (ValueError, OSError) as exc:
        console.print(f"[yellow]report not written[/yellow]: {exc}")
        return None
