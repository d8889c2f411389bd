#!/usr/bin/env python
"""Speed of ``dsekit probe`` per checkpoint: feature extraction vs training the linear head.

On the built-in scenes (15 classes, masks at the crop size) with a ViT-S/16 at 224 px (random
weights: speed does not depend on them), on CPU (``--threads``) and on CUDA when present:

1. **Extraction**: the frozen backbone's patch features of the training and validation images,
   written into the probe's feature cache (``float16``).
2. **Head epoch on cached features**: one epoch of the probe's head training
   (:func:`dsekit.probe.linear_probe`, the median over ``--epochs`` epochs after a warm-up at
   full batch size; the first epoch of a run is also shown: it pays for allocating the
   chunk buffers), reading the cache.
3. **Head epoch running the backbone**: the same epoch (same head, loss, optimiser, batch
   size) where every batch goes through the frozen backbone first, as a probe without a
   cache would do. Measured side by side with 2, interleaved ``--repeats`` times (2, 3, 2, 3,
   ...); the reported speed-up is the median of the per-pair ratios (each pair ran under the
   same machine load). **Target: 2 is >= 20x faster than 3.**
4. **Cache bound**: in a fresh process each, the features and masks of 1. copied (from
   file-backed memmaps) into a cache with a small memory bound (``--small-bound-mb``) and into
   one with the default bound (``--cache-memory-gb``), then one head epoch on it:
   the cache's resident bytes (``peak_in_memory_bytes``) stay within the bound, the rest is in
   ``numpy.memmap`` files on disk, and the process's anonymous resident memory
   (``RssAnon`` of ``/proc/self/status``; file-backed pages of the memmaps are not in it) grows by
   about what is kept in RAM. An epoch reading the spilled features is timed too.
5. With ``--full``: ``probe()`` of a one-checkpoint run at the default settings (1000 training
   and 250 validation scenes at 224 px, 10 epochs), with its per-stage timings.

Wall-clock and process CPU seconds are both printed (CPU seconds are steadier on a shared
machine; for the cached epoch they are the mean over its epochs, the first one included). Usage::

    python bench/probe_speed.py [--threads 2] [--device cpu|cuda|all] [--arch vit_small_patch16_224]
        [--image-size 224] [--num-train 256] [--num-val 64] [--head-batch-size 32] [--epochs 2] [--repeats 3]
        [--small-bound-mb 16] [--full] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsekit.backbones import FeatureExtractor, create_backbone, extract_features
from dsekit.data.images import IMAGENET_MEAN, IMAGENET_STD
from dsekit.data.scenes import IGNORE_INDEX, NUM_CLASSES, SceneDataset
from dsekit.probe import FeatureCache, LinearHead, ProbeConfig, linear_probe, probe, upsampled_cross_entropy

TARGET_RATIO = 20.0


@contextmanager
def timer(out: dict[str, float], key: str, device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    w, c = time.perf_counter(), time.process_time()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out[key] = time.perf_counter() - w
    out[key + "_cpu"] = time.process_time() - c


def rss_anon() -> int | None:
    """Anonymous resident memory of this process in bytes (Linux), None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def scenes(split: str, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    ds = SceneDataset(split, n=n, image_size=size, seed=0)
    return np.ascontiguousarray(ds.scenes.images.transpose(0, 3, 1, 2)), ds.scenes.masks


def normalise(x: np.ndarray, device: torch.device) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    return (torch.from_numpy(x).to(device).float() - mean) / std


def extract_into(ext: FeatureExtractor, images: np.ndarray, out: np.ndarray, batch: int, device: torch.device) -> None:
    for lo in range(0, images.shape[0], batch):
        z = extract_features(ext, normalise(images[lo : lo + batch], device), batch_size=batch, device=device)
        out[lo : lo + z.shape[0]] = z.numpy().astype(out.dtype)


def backbone_epoch(
    ext: FeatureExtractor,
    images: np.ndarray,
    masks: np.ndarray,
    dim: int,
    grid: int,
    batch: int,
    device: torch.device,
    seed: int = 0,
) -> float:
    """One epoch of the probe's head training where each batch first runs the frozen backbone."""
    g = torch.Generator().manual_seed(seed)
    head = LinearHead(dim, NUM_CLASSES, generator=g, device=device)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)  # the probe's defaults
    order = torch.randperm(images.shape[0], generator=g).numpy()
    head.train()
    total = 0.0
    for lo in range(0, images.shape[0], batch):
        idx = np.sort(order[lo : lo + batch])
        with torch.inference_mode():
            z = ext(normalise(images[idx], device))
        x = z.clone().view(len(idx), grid, grid, dim).permute(0, 3, 1, 2).contiguous()
        y = torch.from_numpy(masks[idx]).to(device)
        loss = upsampled_cross_entropy(head(x), y, IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach())
    return total


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:.1f} MiB"


def bench_device(args: argparse.Namespace, device: torch.device, data: dict[str, Any]) -> dict[str, Any]:
    S = args.image_size
    model = create_backbone(args.arch, img_size=S).to(device)
    ext = FeatureExtractor(model)
    N, d = extract_features(ext, torch.zeros(1, 3, S, S), device=device).shape[1:]
    grid = math.isqrt(N)
    (tr_img, tr_mask), (va_img, va_mask) = data["train"], data["val"]
    n_tr, n_va = tr_img.shape[0], va_img.shape[0]
    t: dict[str, float] = {}
    res: dict[str, Any] = {"device": str(device), "N": int(N), "d": int(d), "n_train": n_tr, "n_val": n_va}

    # warm-up at full batch size (first-call allocations, kernel selection, lazy imports)
    warm = min(2 * args.head_batch_size, n_tr)
    extract_into(ext, tr_img[:4], np.empty((4, N, d), np.float16), 4, device)
    linear_probe(
        np.zeros((warm, N, d), np.float16),
        tr_mask[:warm],
        np.zeros((2, N, d), np.float16),
        va_mask[:2],
        NUM_CLASSES,
        epochs=1,
        batch_size=args.head_batch_size,
        device=device,
    )

    bound = int(args.cache_memory_gb * 2**30)
    with tempfile.TemporaryDirectory() as tmp, FeatureCache(bound, tmp) as cache:
        f_tr = cache.allocate("train.features", (n_tr, N, d), np.float16)
        f_va = cache.allocate("val.features", (n_va, N, d), np.float16)
        with timer(t, "extract", device):
            extract_into(ext, tr_img, f_tr, args.batch_size, device)
            extract_into(ext, va_img, f_va, args.batch_size, device)
        # side by side, interleaved (robust to load changing on a shared machine): R times an
        # epoch of linear_probe on the cached features (median of its epochs) and an epoch that
        # runs the frozen backbone on every batch; the ratio of the medians is reported
        cached, cached_cpu, backbone, backbone_cpu, first = [], [], [], [], []
        for _ in range(args.repeats):
            with timer(t, "cached_run", device):
                m = linear_probe(
                    f_tr,
                    tr_mask,
                    f_va,
                    va_mask,
                    NUM_CLASSES,
                    epochs=args.epochs,
                    batch_size=args.head_batch_size,
                    device=device,
                )
            cached.append(m.timings["epoch_median"])
            first.append(m.epoch_times[0])
            cached_cpu.append(t["cached_run_cpu"] * m.timings["train"] / max(t["cached_run"], 1e-9) / args.epochs)
            with timer(t, "backbone_run", device):
                backbone_epoch(ext, tr_img, tr_mask, d, grid, args.head_batch_size, device)
            backbone.append(t["backbone_run"])
            backbone_cpu.append(t["backbone_run_cpu"])
        t["cached_epoch"], t["cached_epoch_cpu"] = float(np.median(cached)), float(np.median(cached_cpu))
        t["cached_epoch_first"] = float(np.median(first))
        t["backbone_epoch"], t["backbone_epoch_cpu"] = float(np.median(backbone)), float(np.median(backbone_cpu))
        t["eval"] = m.timings["eval"]
        res["repeats"] = {"cached_epoch": cached, "backbone_epoch": backbone}
        res["miou_random_weights"] = m.miou
        # the cache under a small and the default bound, each in a fresh process (so that nothing
        # allocated or freed earlier in this one blurs the resident-memory numbers)
        with tempfile.TemporaryDirectory() as arrays:
            for name, arr in (
                ("train.features", f_tr),
                ("val.features", f_va),
                ("train.masks", tr_mask),
                ("val.masks", va_mask),
            ):
                np.save(Path(arrays) / f"{name}.npy", np.asarray(arr))
            res["small_bound"] = memory_child(args, device, args.small_bound_mb * 2**20, Path(arrays))
            res["default_bound"] = memory_child(args, device, args.cache_memory_gb * 2**30, Path(arrays))
        t["spilled_epoch"] = res["small_bound"]["epoch"]

    # each interleaved pair ran under the same conditions: the median of the pair ratios
    res["pair_ratios"] = [b / c for b, c in zip(backbone, cached, strict=True)]
    res["ratio"] = float(np.median(res["pair_ratios"]))
    res["ratio_cpu_seconds"] = float(
        np.median([b / max(c, 1e-9) for b, c in zip(backbone_cpu, cached_cpu, strict=True)])
    )

    res["times"] = t
    return res


def memory_child(args: argparse.Namespace, device: torch.device, bound: float, arrays: Path) -> dict[str, Any]:
    """Run :func:`memory_run` in a fresh process and return its JSON."""
    import subprocess

    cmd = [
        sys.executable,
        __file__,
        "--memory-child",
        str(int(bound)),
        "--arrays",
        str(arrays),
        "--device",
        device.type,
        "--threads",
        str(args.threads),
        "--head-batch-size",
        str(args.head_batch_size),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_run(args: argparse.Namespace) -> dict[str, Any]:
    """Copy the features and masks saved in ``args.arrays`` (read through file-backed memmaps) into
    a cache bounded by ``args.memory_child`` bytes, then run one head epoch on it; report the
    cache's accounting, the spill files and the growth of anonymous resident memory."""
    device = torch.device(args.device if args.device != "all" else "cpu")
    bound = int(args.memory_child)
    src = {
        n: np.load(args.arrays / f"{n}.npy", mmap_mode="r")
        for n in ("train.features", "val.features", "train.masks", "val.masks")
    }
    n_, N, d = src["train.features"].shape
    warm = min(2 * args.head_batch_size, n_)
    linear_probe(
        np.zeros((warm, N, d), np.float16),
        np.zeros((warm, *src["train.masks"].shape[1:]), np.uint8),
        np.zeros((2, N, d), np.float16),
        np.zeros((2, *src["val.masks"].shape[1:]), np.uint8),
        NUM_CLASSES,
        epochs=1,
        batch_size=args.head_batch_size,
        device=device,
    )  # warm-up
    before = rss_anon()
    with tempfile.TemporaryDirectory() as tmp, FeatureCache(bound, tmp) as cache:
        stored = {n: cache.allocate(n, a.shape, a.dtype) for n, a in src.items()}  # features first, as probe()
        for n, a in src.items():
            for lo in range(0, a.shape[0], 16):
                stored[n][lo : lo + 16] = a[lo : lo + 16]
        after_fill = rss_anon()
        m = linear_probe(
            stored["train.features"],
            stored["train.masks"],
            stored["val.features"],
            stored["val.masks"],
            NUM_CLASSES,
            epochs=1,
            batch_size=args.head_batch_size,
            device=device,
        )
        after_epoch = rss_anon()
        return {
            **cache.stats(),
            "stored_bytes": int(sum(a.nbytes for a in stored.values())),
            "spilled": {n: cache.is_spilled(n) for n in stored},
            "files_on_disk_bytes": sum(p.stat().st_size for p in Path(tmp).rglob("*.mmap")),
            "rss_anon_growth_filling": None if before is None else after_fill - before,
            "rss_anon_growth_epoch": None if before is None else after_epoch - before,
            "within_bound": cache.peak_in_memory_bytes <= bound,
            "epoch": m.timings["epoch_mean"],
        }


def full_probe(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        model = create_backbone(args.arch, img_size=224)
        torch.save(model.state_dict(), run / "checkpoint_1.pth")
        cfg = ProbeConfig(
            str(run), "generic", dataset="scenes", arch=args.arch, out=str(Path(tmp) / "out"), device=str(device)
        )
        t0 = time.perf_counter()
        res = probe(cfg, progress=False)
        wall = time.perf_counter() - t0
        r = res.results[0]
        return {
            "device": str(device),
            "wall": wall,
            "status": r.status,
            "error": r.error,
            "miou": r.miou,
            "timings": r.timings,
            "num_train": r.num_train,
            "num_val": r.num_val,
            "cache": res.cache_stats,
            "run_timings": res.timings,
        }


def print_table(results: list[dict[str, Any]], full: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    for r in results:
        t = r["times"]
        n = r["n_train"]
        table = Table(
            title=f"probe speed on {r['device']}: {n} train / {r['n_val']} val scenes, N={r['N']} patches, d={r['d']}"
        )
        table.add_column("stage")
        table.add_column("wall s", justify="right")
        table.add_column("CPU s", justify="right")
        table.add_column("ms / train image", justify="right")
        rows = [
            ("extract features (train + val)", "extract"),
            ("head epoch on cached features (median)", "cached_epoch"),
            ("  first epoch (allocations)", "cached_epoch_first"),
            ("head epoch running the backbone", "backbone_epoch"),
            ("head epoch on spilled (memmap) features", "spilled_epoch"),
            ("evaluation (val)", "eval"),
        ]
        for label, key in rows:
            cpu = t.get(key + "_cpu")
            table.add_row(label, f"{t[key]:.2f}", "" if cpu is None else f"{cpu:.2f}", f"{1000 * t[key] / n:.1f}")
        console.print(table)
        ok = "meets" if r["ratio"] >= TARGET_RATIO else "misses"
        reps = r["repeats"]
        console.print(
            "  interleaved epochs, s: cached "
            + ", ".join(f"{v:.2f}" for v in reps["cached_epoch"])
            + "; backbone "
            + ", ".join(f"{v:.2f}" for v in reps["backbone_epoch"])
            + "; ratios "
            + ", ".join(f"{v:.1f}" for v in r["pair_ratios"])
        )
        console.print(
            f"  cached epoch is {r['ratio']:.1f}x faster than a backbone epoch (median of pairs) "
            f"(CPU seconds: {r['ratio_cpu_seconds']:.1f}x) — {ok} the >= {TARGET_RATIO:.0f}x target"
        )
        mem = Table(title="feature cache (train + val features float16, masks uint8)")
        for col in ("bound", "stored", "in RAM (peak)", "on disk", "spilled", "anon. RSS growth: fill / +epoch", ""):
            mem.add_column(col, justify="right")
        for key in ("small_bound", "default_bound"):
            sb = r[key]
            mem.add_row(
                fmt_bytes(sb["memory_bound_bytes"]),
                fmt_bytes(sb["stored_bytes"]),
                fmt_bytes(sb["peak_in_memory_bytes"]),
                fmt_bytes(sb["files_on_disk_bytes"]),
                ", ".join(k for k, v in sb["spilled"].items() if v) or "-",
                f"{fmt_bytes(sb['rss_anon_growth_filling'])} / {fmt_bytes(sb['rss_anon_growth_epoch'])}",
                "within" if sb["within_bound"] else "OVER",
            )
        console.print(mem)
    for f in full:
        tm = f["timings"]
        console.print(
            f"probe() per checkpoint on {f['device']} at default settings ({f['num_train']} train / {f['num_val']} val "
            f"scenes, 224 px, 10 epochs): {f['wall']:.1f} s in all (of which generating and decoding the scenes, once per "
            f"run: {f['run_timings'].get('data', 0):.1f} s); per checkpoint: load {tm.get('load', 0):.1f} s, extract "
            f"{tm.get('extract', 0):.1f} s, head training {tm.get('head_train', 0):.1f} s, eval {tm.get('head_eval', 0):.1f} s "
            f"(status {f['status']}{', ' + f['error'] if f['error'] else ''})"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    p.add_argument("--arch", default="vit_small_patch16_224")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-train", type=int, default=256)
    p.add_argument("--num-val", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64, help="images per backbone forward (extraction)")
    p.add_argument("--head-batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="head epochs per cached run (median taken)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved cached / backbone measurements")
    p.add_argument("--cache-memory-gb", type=float, default=4.0)
    p.add_argument("--small-bound-mb", type=float, default=16.0)
    p.add_argument("--full", action="store_true", help="also time probe() at default settings")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--memory-child", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--arrays", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child is not None:
        torch.set_num_threads(args.threads)
        print(json.dumps(memory_run(args)))
        return 0

    torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            print("CUDA requested but not available", file=sys.stderr)
            return 2
        else:
            print("no CUDA device: CPU only")
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} CPU thread(s), "
        f"load average {os.getloadavg() if hasattr(os, 'getloadavg') else 'n/a'}"
    )
    data = {
        "train": scenes("train", args.num_train, args.image_size),
        "val": scenes("val", args.num_val, args.image_size),
    }
    results = [bench_device(args, dev, data) for dev in devices]
    full = [full_probe(args, dev) for dev in devices] if args.full else []
    print_table(results, full)
    if hasattr(os, "getloadavg"):
        print(f"load average at the end: {os.getloadavg()}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"settings": vars(args) | {"json": str(args.json)}, "results": results, "full": full},
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
