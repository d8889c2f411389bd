#!/usr/bin/env python
"""Peak resident memory of ``dsekit scan`` on one large checkpoint, against the file's size and
the backbone's.

Each input is a DINOv2 checkpoint with random weights in the official layout (the names and
shapes of ``DinoVisionTransformer`` and ``DINOHead``; chunked blocks as the training writes
them), written once into ``--work`` by a child process:

* ``vitl14-teacher``, ``vitg14-teacher``: ``eval/training_<iter>/teacher_checkpoint.pth``,
  ``{"teacher": {backbone.*, dino_head.*[, ibot_head.*]}}`` (ViT-L/14: 65,536 prototypes;
  ViT-g/14: SwiGLU, 131,072 prototypes, a separate iBOT head, as the official ``vitg14`` config);
* ``vitl14-training``: the periodic ``model_<iter>.rank_0.pth`` of a one-process run, student
  and teacher with their heads and AdamW's two moments of the student (about 4x the backbone);
* ``tiny``: a two-block ViT-S/14 (for the smoke test).

Then, side by side, each in a fresh process whose peak resident set size (``ru_maxrss`` of
``os.wait4``; anonymous and file-backed pages from ``/proc/PID/status``, sampled every 0.1 s)
is read:

* ``torch.load(file, weights_only=True)`` of the whole file, as checkpoints were read before;
* ``dsekit scan RUN --method dinov2`` of the one checkpoint (``--num-images``, ``--image-size``,
  one CPU device, fp32, the RankMe column only, no intervals).

Target: the scan's peak at most the backbone's bytes + 1.5 GB (10^9 bytes).

Usage::

    python bench/checkpoint_memory.py --work /tmp/ckmem [--inputs vitg14-teacher ...]
        [--num-images 16] [--image-size 112] [--keep] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from _common import load_average

GB = 1e9
TARGET_EXTRA = 1.5 * GB


@dataclass(frozen=True)
class Spec:
    """One DINOv2 network and how its checkpoint is stored."""

    width: int
    depth: int
    patch: int
    grid: int  #: position-embedding grid (518 px / 14 = 37 for the released networks)
    swiglu: bool
    prototypes: int
    bottleneck: int
    ibot_head: bool  #: a separate iBOT head (the vitg14 config)
    chunks: int  #: block chunks of the FSDP training (0: none)
    layout: str  #: "teacher" (teacher_checkpoint.pth) or "training" (model_<iter>.rank_0.pth)


INPUTS = {
    "tiny": Spec(384, 2, 14, 4, False, 1024, 256, False, 0, "teacher"),
    "vitl14-teacher": Spec(1024, 24, 14, 37, False, 65536, 256, False, 4, "teacher"),
    "vitg14-teacher": Spec(1536, 40, 14, 37, True, 131072, 384, True, 4, "teacher"),
    "vitl14-training": Spec(1024, 24, 14, 37, False, 65536, 256, False, 4, "training"),
}
ITERATION = 12499


# ----------------------------------------------------------------------------- the checkpoints


def _backbone(spec: Spec, g: object) -> dict[str, object]:
    """Official DINOv2 backbone names and shapes, random weights."""
    import torch

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).mul_(0.02)  # type: ignore[call-overload]

    d = spec.width
    sd: dict[str, object] = {
        "cls_token": r(1, 1, d),
        "pos_embed": r(1, 1 + spec.grid * spec.grid, d),
        "mask_token": torch.zeros(1, d),
        "patch_embed.proj.weight": r(d, 3, spec.patch, spec.patch),
        "patch_embed.proj.bias": r(d),
        "norm.weight": torch.ones(d),
        "norm.bias": torch.zeros(d),
    }
    hidden = 4 * d
    per_chunk = spec.depth // spec.chunks if spec.chunks else spec.depth
    for i in range(spec.depth):
        b = f"blocks.{i // per_chunk}.{i}." if spec.chunks else f"blocks.{i}."
        sd.update(
            {
                b + "norm1.weight": torch.ones(d),
                b + "norm1.bias": torch.zeros(d),
                b + "attn.qkv.weight": r(3 * d, d),
                b + "attn.qkv.bias": r(3 * d),
                b + "attn.proj.weight": r(d, d),
                b + "attn.proj.bias": r(d),
                b + "ls1.gamma": torch.full((d,), 1e-5),
                b + "norm2.weight": torch.ones(d),
                b + "norm2.bias": torch.zeros(d),
                b + "ls2.gamma": torch.full((d,), 1e-5),
            }
        )
        if spec.swiglu:
            h = (int(hidden * 2 / 3) + 7) // 8 * 8
            mlp = {
                "mlp.w12.weight": r(2 * h, d),
                "mlp.w12.bias": r(2 * h),
                "mlp.w3.weight": r(d, h),
                "mlp.w3.bias": r(d),
            }
        else:
            mlp = {"mlp.fc1.weight": r(hidden, d), "mlp.fc1.bias": r(hidden), "mlp.fc2.weight": r(d, hidden)}
            mlp["mlp.fc2.bias"] = r(d)
        sd.update({b + k: v for k, v in mlp.items()})
    return sd


def _head(spec: Spec, g: object) -> dict[str, object]:
    """``DINOHead``: a 3-layer MLP (hidden 2048) to the bottleneck, then the weight-normed prototypes."""
    import torch

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).mul_(0.02)  # type: ignore[call-overload]

    return {
        "mlp.0.weight": r(2048, spec.width),
        "mlp.0.bias": r(2048),
        "mlp.2.weight": r(2048, 2048),
        "mlp.2.bias": r(2048),
        "mlp.4.weight": r(spec.bottleneck, 2048),
        "mlp.4.bias": r(spec.bottleneck),
        "last_layer.weight_g": torch.ones(spec.prototypes, 1),
        "last_layer.weight_v": r(spec.prototypes, spec.bottleneck),
    }


def _network(spec: Spec, g: object) -> dict[str, object]:
    net = {f"backbone.{k}": v for k, v in _backbone(spec, g).items()}
    net.update({f"dino_head.{k}": v for k, v in _head(spec, g).items()})
    if spec.ibot_head:
        net.update({f"ibot_head.{k}": v for k, v in _head(spec, g).items()})
    return net


def write_checkpoint(name: str, run: Path) -> Path:
    """Write input ``name``'s checkpoint into the run folder ``run``; returns its path."""
    import torch

    spec = INPUTS[name]
    g = torch.Generator().manual_seed(0)
    if spec.layout == "teacher":
        path = run / "eval" / f"training_{ITERATION}" / "teacher_checkpoint.pth"
        obj: dict[str, object] = {"teacher": _network(spec, g)}
    else:
        path = run / f"model_{ITERATION:07d}.rank_0.pth"
        student, teacher = _network(spec, g), _network(spec, g)
        model = {**{f"student.{k}": v for k, v in student.items()}, **{f"teacher.{k}": v for k, v in teacher.items()}}
        model["dino_loss.center"] = torch.zeros(1, spec.prototypes)
        state = {
            i: {
                "step": torch.tensor(float(ITERATION)),
                "exp_avg": torch.randn_like(v),
                "exp_avg_sq": torch.rand_like(v),
            }
            for i, v in enumerate(student.values())
        }
        obj = {
            "model": model,
            "optimizer": {"state": state, "param_groups": [{"params": list(state), "lr": 1e-4}]},
            "iteration": ITERATION,
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def backbone_bytes(name: str) -> int:
    """Bytes of the backbone's float32 tensors (what the scan has to hold)."""
    import torch

    with torch.device("meta"):
        sd = _backbone(INPUTS[name], None)
    return sum(t.numel() * 4 for t in sd.values())  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- measuring


def _status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of ``pid`` in bytes (empty where /proc cannot be read)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, object]:
    """Run ``cmd``; its exit code, wall time, peak RSS (``ru_maxrss``) and the peaks of its
    anonymous and file-backed resident pages as sampled."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for k, v in _status(proc.pid).items():
                if k in peaks:
                    peaks[k] = max(peaks[k], v)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": proc.returncode,
        "seconds": time.perf_counter() - t0,
        "peak_rss": usage.ru_maxrss * 1024,  # kilobytes on Linux
        "peak_anon": peaks["RssAnon"],
        "peak_file": peaks["RssFile"],
        "tail": output[-1500:],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the checkpoints (several GB)")
    p.add_argument("--inputs", nargs="+", default=["vitl14-teacher", "vitl14-training", "vitg14-teacher"])
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--keep", action="store_true", help="keep the checkpoints (default: removed after each input)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    unknown = [n for n in args.inputs if n not in INPUTS]
    if unknown:
        p.error(f"--inputs: unknown {', '.join(unknown)} (known: {', '.join(INPUTS)})")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {mem:.1f} GB RAM, Python "
        f"{platform.python_version()}; load average (1/5/15 min) {load_average()}"
    )
    here = Path(__file__).resolve().parent
    rows = []
    for name in args.inputs:
        run = args.work / name
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        code = f"import sys; sys.path.insert(0, {str(here)!r}); import checkpoint_memory as c; print(c.write_checkpoint({name!r}, __import__('pathlib').Path({str(run)!r})))"
        written = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        if written.returncode != 0:
            print(f"{name}: writing the checkpoint failed:\n{written.stderr[-2000:]}")
            return 1
        path = Path(written.stdout.strip().splitlines()[-1])
        print(f"{name}: wrote {path} ({path.stat().st_size / GB:.2f} GB) in {time.perf_counter() - t0:.0f} s")
        whole = measure([sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=True)"], env)
        scan_cmd = [sys.executable, "-m", "dsekit", "scan", str(run), "--method", "dinov2", "--device", "cpu"]
        scan_cmd += ["--num-images", str(args.num_images), "--image-size", str(args.image_size), "--precision", "fp32"]
        scan_cmd += ["--metrics", "rankme", "--intervals", "0", "--out", str(run / "dse"), "--quiet"]
        scan = measure(scan_cmd, env)
        if scan["rc"] != 0:
            print(f"{name}: the scan failed (exit {scan['rc']}):\n{scan['tail']}")
        row = {
            "input": name,
            "spec": asdict(INPUTS[name]),
            "file_bytes": path.stat().st_size,
            "backbone_bytes": backbone_bytes(name),
            "whole_read": whole,
            "scan": scan,
        }
        row["scan_ok"] = scan["rc"] == 0 and (run / "dse" / "dse.csv").is_file()
        row["target_bytes"] = row["backbone_bytes"] + TARGET_EXTRA
        row["met"] = bool(row["scan_ok"]) and scan["peak_rss"] <= row["target_bytes"]  # type: ignore[operator]
        rows.append(row)
        if not args.keep:
            path.unlink()
    print(
        f"\n{'input':<16} {'file GB':>8} {'backbone GB':>12} {'whole read GB':>14} {'scan peak GB':>13} "
        f"{'anon/file GB':>13} {'scan/backbone':>14} {'whole/scan':>11} {'scan s':>7}  target: backbone + 1.5 GB"
    )
    for r in rows:
        s, w = r["scan"], r["whole_read"]
        verdict = "met" if r["met"] else ("scan FAILED" if not r["scan_ok"] else "NOT met")
        split = f"{s['peak_anon'] / GB:.2f}/{s['peak_file'] / GB:.2f}"
        print(
            f"{r['input']:<16} {r['file_bytes'] / GB:>8.2f} {r['backbone_bytes'] / GB:>12.2f} "
            f"{w['peak_rss'] / GB:>14.2f} {s['peak_rss'] / GB:>13.2f} {split:>13} "
            f"{s['peak_rss'] / r['backbone_bytes']:>13.2f}x {w['peak_rss'] / s['peak_rss']:>10.2f}x "
            f"{s['seconds']:>7.0f}  {verdict}"
        )
    print(
        "(peak resident set of one fresh process each, ru_maxrss; anon/file: the sampled peaks of its anonymous "
        f"and file-backed pages; {args.num_images} images at {args.image_size} px; load average now {load_average()})"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "load": load_average()}, indent=2))
    return 0 if all(r["scan_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
