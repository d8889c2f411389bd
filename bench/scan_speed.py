#!/usr/bin/env python
"""Speed of ``dsekit scan`` over a run of ViT-S/16 checkpoints: load, extract and score per checkpoint.

A run of ``--checkpoints`` DINO-format checkpoints of the full ``vit_small_patch16_224`` (random
weights: teacher and student networks, DINO heads, optimizer-free) is written to a temporary
folder, then scanned with ``dsekit.scan.scan`` on ``--num-images`` images (the built-in scenes,
or ``--images DIR``) at ``--image-size``.

Usage::

    python bench/scan_speed.py [--checkpoints 8] [--num-images 256] [--images DIR] [--threads 2]
                               [--device cpu|cuda|auto] [--batch-size 64] [--image-size 224]
                               [--json OUT]
    python bench/scan_speed.py --layer-map [--layer-map-sizes 64 256] [--checkpoints 4] ...

Reported:

* per checkpoint, the times the scan itself records (``run.json`` ``timings``): loading the
  checkpoint into the backbone, extracting the patch features, scoring DSE; their sum, and the
  share of DSE scoring in it;
* the time to decode / generate the image sample and how many images were decoded in total
  over the whole scan (counted by wrapping the decoder: ``dsekit.data.images._decode`` for a
  folder, ``dsekit.data.scenes.make_scenes`` for the built-in scenes);
* on CUDA: extraction throughput of ``dsekit.backbones.extract_features`` against timm's plain
  ``model(x)`` forward at the same batch size (both moving the batch from the CPU, after a
  warm-up, median of ``--repeats``).

With ``--layer-map``: the cost of the layer map. For each sample size of ``--layer-map-sizes``
the same run is scanned with the scan's own layer alone and with ``--layers all`` (every block,
one forward pass per checkpoint), alternately in one process, each into its own output folder
(nothing cached); the per-checkpoint time (load + extract + score + intervals + layers, from
``run.json``) and the whole scan are reported with their ratio, map / single layer.

Targets (issue: scan a training run): images decoded once per scan, not once per checkpoint;
DSE scoring <= 20 % of the per-checkpoint time on CPU; on a GPU, extraction throughput >= 90 %
of timm's plain forward. The load average before and after is printed: on a shared machine
other processes change every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _common import load_average, median_seconds
from _targets import GPU_EXTRACTION

TARGET_SCORE_SHARE_CPU = 0.20
ARCH = "vit_small_patch16_224"


# --------------------------------------------------------------------------- the run


def write_run(folder: Path, n: int, image_size: int, seed: int = 0) -> list[Path]:
    """``n`` DINO checkpoints ``checkpoint{epoch:04d}.pth`` of ViT-S/16 with random weights.

    One network is initialised the timm way; checkpoint ``i`` adds seeded noise to it, so every
    checkpoint holds other weights. Each file stores the teacher (``backbone.*`` + ``head.*``), the
    DDP-wrapped student, the epoch and the training arguments, as DINO's ``main_dino.py`` does.
    """
    import argparse as _argparse

    from dsekit.backbones import create_backbone

    base = create_backbone(ARCH, img_size=image_size).state_dict()
    dim = base["cls_token"].shape[-1]
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(seed + i)
        teacher = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        student = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in teacher.items()}
        head = {
            "head.mlp.0.weight": 0.02 * torch.randn(2048, dim, generator=g),
            "head.mlp.0.bias": torch.zeros(2048),
            "head.mlp.2.weight": 0.02 * torch.randn(2048, 2048, generator=g),
            "head.mlp.2.bias": torch.zeros(2048),
            "head.mlp.4.weight": 0.02 * torch.randn(256, 2048, generator=g),
            "head.mlp.4.bias": torch.zeros(256),
            "head.last_layer.weight_g": torch.ones(65536, 1),
            "head.last_layer.weight_v": 0.02 * torch.randn(65536, 256, generator=g),
        }
        epoch = 10 * (i + 1) - 1
        ckpt = {
            "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **head},
            "student": {
                **{f"module.backbone.{k}": v for k, v in student.items()},
                **{f"module.{k}": v for k, v in head.items()},
            },
            "epoch": epoch + 1,
            "args": _argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536, epochs=100),
            "dino_loss": {"center": torch.zeros(1, 65536)},
        }
        path = folder / f"checkpoint{epoch:04d}.pth"
        torch.save(ckpt, path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- decode counting


class DecodeCounter:
    """Counts images decoded / generated while active (wraps the decoder functions)."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> DecodeCounter:
        import dsekit.data.images as images_mod
        import dsekit.data.scenes as scenes_mod

        decode, make_scenes, load_sample = images_mod._decode, scenes_mod.make_scenes, images_mod.load_image_sample

        def counted_decode(*a: Any, **k: Any) -> Any:
            self.count += 1
            return decode(*a, **k)

        def counted_scenes(n: int, *a: Any, **k: Any) -> Any:
            out = make_scenes(n, *a, **k)
            self.count += int(out[0].shape[0])
            return out

        def timed_load(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return load_sample(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0

        for mod, name, fn in (
            (images_mod, "_decode", counted_decode),
            (scenes_mod, "make_scenes", counted_scenes),
            (images_mod, "load_image_sample", timed_load),
        ):
            self._saved.append((mod, name, getattr(mod, name)))
            setattr(mod, name, fn)
        return self

    def __exit__(self, *exc: Any) -> None:
        for mod, name, fn in reversed(self._saved):
            setattr(mod, name, fn)


# --------------------------------------------------------------------------- GPU throughput


def gpu_throughput(images: torch.Tensor, image_size: int, batch_size: int, device: str, repeats: int) -> dict:
    """Images/s of dsekit's extraction vs timm's plain ``model(x)`` at the same batch size."""
    from dsekit.backbones import FeatureExtractor, create_backbone, extract_features

    model = create_backbone(ARCH, img_size=image_size).to(device).eval()
    extractor = FeatureExtractor(model)
    dev = torch.device(device)

    def plain() -> None:
        with torch.inference_mode():
            for lo in range(0, images.shape[0], batch_size):
                model(images[lo : lo + batch_size].to(dev, non_blocking=True))
        torch.cuda.synchronize(dev)

    def dsekit_extract() -> None:
        extract_features(extractor, images, batch_size=batch_size, device=dev)
        torch.cuda.synchronize(dev)

    def rate(fn) -> float:
        return images.shape[0] / median_seconds(fn, device, repeats)

    r_timm, r_dsekit = rate(plain), rate(dsekit_extract)
    return {
        "timm_images_per_s": r_timm,
        "dsekit_images_per_s": r_dsekit,
        "ratio": r_dsekit / r_timm,
        "batch_size": batch_size,
        "device_name": torch.cuda.get_device_name(dev),
    }


# --------------------------------------------------------------------------- the layer map


def _per_checkpoint_seconds(out: Path) -> float:
    record = json.loads((out / "run.json").read_text())
    return sum(sum(c["timings"].values()) for c in record["checkpoints"])


def layer_map_cost(args: argparse.Namespace) -> int:
    """The layer map against a single-layer scan of the same run (see the module docstring)."""
    from dsekit.scan import ScanConfig, scan

    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} thread(s); load average (1/5/15 min) {load_average()}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="dsekit-layer-bench-", dir=args.workdir) as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        write_run(run, args.checkpoints, args.image_size)
        for n in args.layer_map_sizes:
            seconds: dict[str, list[float]] = {"one layer": [], "layer map": []}
            per: dict[str, float] = {}
            for k, (name, layers) in enumerate(
                (("one layer", ()), ("layer map", "all"), ("layer map", "all"), ("one layer", ()))
            ):  # alternated: drift hits both
                out = Path(tmp) / f"out-{n}-{k}"
                cfg = ScanConfig(
                    str(run),
                    "dino",
                    out=str(out),
                    num_images=n,
                    image_size=args.image_size,
                    batch_size=args.batch_size,
                    intervals=args.intervals,
                    layers=layers,
                    device="cpu",
                )
                t0 = time.perf_counter()
                result = scan(cfg, progress=False)
                seconds[name].append(time.perf_counter() - t0)
                if result.failed:
                    print(f"failed: {result.failed[0].error}", file=sys.stderr)
                    return 1
                per[name] = per.get(name, 0.0) + _per_checkpoint_seconds(out) / 2
            one, full = statistics.mean(seconds["one layer"]), statistics.mean(seconds["layer map"])
            rows.append(
                {
                    "num_images": n,
                    "single_s": one,
                    "map_s": full,
                    "ratio": full / one,
                    "single_per_checkpoint_s": per["one layer"] / args.checkpoints,
                    "map_per_checkpoint_s": per["layer map"] / args.checkpoints,
                }
            )
    print(
        f"\nlayer map (--layers all: 12 blocks of {ARCH}) vs one layer, {args.checkpoints} checkpoints, "
        f"{args.image_size} px, intervals {args.intervals}; means of 2 alternated runs each"
    )
    print(f"{'images':>7} {'one layer s':>12} {'layer map s':>12} {'ratio':>7} {'per ckpt: one':>14} {'map':>8}")
    for r in rows:
        print(
            f"{r['num_images']:>7} {r['single_s']:>12.1f} {r['map_s']:>12.1f} {r['ratio']:>6.2f}x "
            f"{r['single_per_checkpoint_s']:>14.2f} {r['map_per_checkpoint_s']:>8.2f}"
        )
    print(f"load average now {load_average()}")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"layer_map": rows, "settings": {k: str(v) for k, v in vars(args).items()}}, indent=2)
        )
    return 0


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=int, default=8, help="checkpoints in the run (default 8)")
    p.add_argument("--images", type=Path, default=None, help="image folder (default: the built-in scenes)")
    p.add_argument("--num-images", type=int, default=256, help="images in the sample (default 256)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument(
        "--intervals",
        type=int,
        default=0,
        help="half-samples for the intervals (default 0: the DSE timing alone, as before; scan's default is 10)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of the GPU throughput comparison")
    p.add_argument("--workdir", type=Path, default=None, help="where to write the run (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    p.add_argument("--layer-map", action="store_true", help="measure the layer map (--layers all) against one layer")
    p.add_argument("--layer-map-sizes", type=int, nargs="+", default=[64, 256], help="sample sizes for --layer-map")
    args = p.parse_args(argv)
    if args.checkpoints < 1 or args.num_images < 1:
        p.error("--checkpoints and --num-images must be positive")
    if args.layer_map:
        return layer_map_cost(args)

    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")

    from dsekit.scan import ScanConfig, scan

    load_before = load_average()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} thread(s), device {device}; load average (1/5/15 min) {load_before}"
    )
    with tempfile.TemporaryDirectory(prefix="dsekit-scan-bench-", dir=args.workdir) as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        t0 = time.perf_counter()
        paths = write_run(run, args.checkpoints, args.image_size)
        size_mb = sum(q.stat().st_size for q in paths) / len(paths) / 2**20
        print(
            f"wrote {len(paths)} DINO checkpoints of {ARCH} ({size_mb:.0f} MB each) in {time.perf_counter() - t0:.1f} s"
        )

        cfg = ScanConfig(
            str(run),
            "dino",
            out=str(Path(tmp) / "out"),
            images=None if args.images is None else str(args.images),
            num_images=args.num_images,
            image_size=args.image_size,
            batch_size=args.batch_size,
            device=device,
            intervals=args.intervals,
        )
        with DecodeCounter() as counter:
            t0 = time.perf_counter()
            result = scan(cfg, progress=False)
            total = time.perf_counter() - t0
        if result.failed:
            for r in result.failed:
                print(f"failed {Path(r.checkpoint).name}: {r.error}", file=sys.stderr)
            return 1
        n_images = result.results[0].num_images
        sample_record = json.loads((cfg.out_dir / "run.json").read_text())["images"]

        gpu = None
        if device.startswith("cuda"):
            from dsekit.data.images import load_image_sample

            sample = load_image_sample(cfg.images, cfg.num_images, cfg.seed, cfg.image_size)
            gpu = gpu_throughput(sample.images, args.image_size, args.batch_size, device, args.repeats)

    rows = []
    for r in result.results:
        t = r.timings
        per = t["load"] + t["extract"] + t["score"]
        rows.append(
            {
                "checkpoint": Path(r.checkpoint).name,
                "epoch": r.epoch,
                "load_s": t["load"],
                "extract_s": t["extract"],
                "score_s": t["score"],
                "total_s": per,
                "score_share": t["score"] / per,
            }
        )

    head = (
        f"{'checkpoint':<20} {'epoch':>5} {'load s':>8} {'extract s':>10} {'score s':>8} {'total s':>8} {'score %':>8}"
    )
    print()
    print(
        f"scan of {len(rows)} checkpoints, {n_images} images at {args.image_size} px, batch {args.batch_size}, {device}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        print(
            f"{row['checkpoint']:<20} {row['epoch']:>5} {row['load_s']:>8.2f} {row['extract_s']:>10.2f} "
            f"{row['score_s']:>8.2f} {row['total_s']:>8.2f} {100 * row['score_share']:>7.1f}%"
        )
    med = {k: statistics.median(r[k] for r in rows) for k in ("load_s", "extract_s", "score_s", "total_s")}
    share = sum(r["score_s"] for r in rows) / sum(r["total_s"] for r in rows)
    share_no_load = sum(r["score_s"] for r in rows) / sum(r["extract_s"] + r["score_s"] for r in rows)
    print("-" * len(head))
    print(
        f"{'median':<20} {'':>5} {med['load_s']:>8.2f} {med['extract_s']:>10.2f} {med['score_s']:>8.2f} "
        f"{med['total_s']:>8.2f} {100 * med['score_s'] / med['total_s']:>7.1f}%"
    )
    print()
    tried = n_images + int(sample_record["num_skipped"])  # every file tried once (unreadable ones too)
    once = counter.count == tried
    target_share = TARGET_SCORE_SHARE_CPU if device == "cpu" else None
    print(
        f"image sample: {counter.count} image(s) decoded in total for {len(rows)} checkpoints "
        f"({n_images} in the sample, {sample_record['num_skipped']} unreadable skipped, {counter.seconds:.2f} s) "
        f"-> decoded once per scan: {'yes' if once else 'NO'}"
    )
    verdict = (
        ""
        if target_share is None
        else f" (target <= {100 * target_share:.0f} % on CPU: " + ("met)" if share <= target_share else "NOT met)")
    )
    print(
        f"DSE scoring share of the per-checkpoint time (all checkpoints): {100 * share:.1f} %{verdict}; "
        f"of extract + score only (checkpoint loading left out): {100 * share_no_load:.1f} %"
    )
    print(f"whole scan: {total:.1f} s (incl. sample, model build, selection, plot); load average now {load_average()}")
    if gpu is not None:
        print(
            f"extraction throughput on {gpu['device_name']} at batch {gpu['batch_size']}: dsekit "
            f"{gpu['dsekit_images_per_s']:.0f} img/s, timm model(x) {gpu['timm_images_per_s']:.0f} img/s, "
            f"ratio {100 * gpu['ratio']:.1f} % (target >= {100 * GPU_EXTRACTION:.0f} %: "
            f"{'met' if gpu['ratio'] >= GPU_EXTRACTION else 'NOT met'})"
        )
    elif device == "cpu":
        print("extraction throughput vs timm: measured on CUDA only (run with --device cuda)")

    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "settings": {
                        **vars(args),
                        "images": None if args.images is None else str(args.images),
                        "json": str(args.json),
                        "workdir": None if args.workdir is None else str(args.workdir),
                    },
                    "device": device,
                    "num_images": n_images,
                    "checkpoints": rows,
                    "score_share": share,
                    "score_share_without_load": share_no_load,
                    "images_decoded": counter.count,
                    "decode_seconds": counter.seconds,
                    "scan_seconds": total,
                    "load_average_before": load_before,
                    "load_average_after": load_average(),
                    "gpu": gpu,
                    "torch": torch.__version__,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
