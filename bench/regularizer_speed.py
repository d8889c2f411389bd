#!/usr/bin/env python
"""Speed of the DSE regulariser: forward + backward, and its share of a training step.

Two measurements:

1. Forward + backward of ``dsekit.train.DSERegularizer`` on one batch of synthetic dense
   features (``B = 64, N = 196, d = 384`` by default, clustered like real patch features),
   next to the paper authors' ``DSERegularizer.compute_DSE_loss`` on the same input when a
   checkout of their code is given with ``--reference DIR`` (``DIR/DSE_regularizer.py``),
   and next to dsekit's estimator without gradient (``dsekit.dse``) for context. Median
   wall-clock seconds after a warm-up call, and the process CPU seconds of the same calls
   (steadier than wall-clock on a shared machine), on CPU (``--threads``) and on CUDA when
   present.
2. One training step of a small ViT (timm, ``--arch`` at ``--image-size`` px, batch
   ``--train-batch``): a DINO-style step with lightly's projection head and loss (student on
   two views with gradient, EMA teacher on the same views without, AdamW step, EMA update),
   without and with ``loss - beta * DSE(student patch tokens of the first view)``. The
   regulariser's share is ``(t_with - t_without) / t_with``; the regulariser alone on those
   tokens (forward + backward) is timed too (``alone/step``: its time over ``t_with``, the
   steadier estimate on a noisy machine).

Targets: >= 10x faster than the reference; <= 15 % of a training step.

The reference re-seeds the process-wide RNG inside its k-means, so each reference call
runs after ``torch.manual_seed(seed)``, and the RNG state (CPU and CUDA) is saved before
the reference runs and restored after it. The two implementations do not compute the
same number: the reference computes ``M_dim`` as one effective rank of all ``B·N``
patches (dsekit: the estimator's per-position ``B × d`` matrices), and their k-means
differ; both values are printed.

On a shared machine run it with ``OMP_WAIT_POLICY=PASSIVE``: otherwise idle OpenMP threads
spin while waiting for a busy core, and code made of many small parallel operations (the
regulariser, both implementations) is slowed far more than a network's large ones.

Usage::

    python bench/regularizer_speed.py [--reference DIR] [--threads 2] [--device cpu|cuda|all]
        [--repeats 5] [--ref-repeats 3] [--arch vit_tiny_patch16_224] [--image-size 128]
        [--train-batch 64] [--no-train] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from dsekit import dse
from dsekit.synthetic import clustered_features
from dsekit.train import DSERegularizer

from _common import preserved_rng, sync

SETTINGS = dict(local_clusters=3, global_clusters=24, images_per_group=8, normalize=True)
TARGET_RATIO = 10.0
TARGET_SHARE = 0.15


# --------------------------------------------------------------------------- helpers


@dataclass
class Timing:
    name: str
    device: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    value: float = float("nan")

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall) if self.wall else float("nan")

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu) if self.cpu else float("nan")


def timed(fn: Callable[[], float], timing: Timing, repeats: int, warmup: bool = True) -> Timing:
    """Run ``fn`` (returns a value) ``repeats`` times after an optional warm-up call."""
    if warmup:
        timing.value = fn()
    for _ in range(repeats):
        sync(timing.device)
        w, c = time.perf_counter(), time.process_time()
        timing.value = fn()
        sync(timing.device)
        timing.wall.append(time.perf_counter() - w)
        timing.cpu.append(time.process_time() - c)
    return timing


def load_reference(path: str | None) -> tuple[type | None, str]:
    """The authors' ``DSERegularizer`` class from ``path/DSE_regularizer.py``, or ``(None, why)``."""
    if not path:
        return None, "reference: not given (--reference DIR); timing dsekit alone"
    directory = os.path.abspath(os.path.expanduser(path))
    file = os.path.join(directory, "DSE_regularizer.py")
    if not os.path.isfile(file):
        return None, f"reference: no DSE_regularizer.py in {directory}; timing dsekit alone"
    try:
        spec = importlib.util.spec_from_file_location("_reference_dse_regularizer", file)
        module = importlib.util.module_from_spec(spec)
        assert spec.loader is not None
        spec.loader.exec_module(module)
        cls = module.DSERegularizer
    except Exception as exc:  # noqa: BLE001 - any import problem means: no reference
        return None, f"reference: could not import DSERegularizer from {file} ({type(exc).__name__}: {exc})"
    return cls, f"reference: DSERegularizer from {file}"


# --------------------------------------------------------------------------- 1. forward + backward


def bench_regulariser(x: Tensor, ref_cls: type | None, repeats: int, ref_repeats: int, seed: int) -> list[Timing]:
    device = str(x.device)

    def ours() -> float:  # a fresh regulariser per call: its value equals dsekit.dse's
        leaf = x.detach().clone().requires_grad_(True)
        value = DSERegularizer(seed=seed, **SETTINGS)(leaf)
        value.backward()
        return value.item()

    def estimator() -> float:
        return dse(x, seed=seed, **SETTINGS).dse_raw

    rows = [timed(ours, Timing("dsekit DSERegularizer", device), repeats)]
    if ref_cls is not None:
        ref = ref_cls(
            normalize=True, local_clusters=SETTINGS["local_clusters"], global_clusters=SETTINGS["global_clusters"]
        )

        def reference() -> float:  # it re-seeds the global RNG inside; seed it the same way every call
            leaf = x.detach().clone().requires_grad_(True)
            torch.manual_seed(seed)
            value = ref.compute_DSE_loss(leaf)
            value.backward()
            return value.item()

        with preserved_rng():
            rows.append(timed(reference, Timing("reference DSERegularizer", device), ref_repeats))
    rows.append(timed(estimator, Timing("dsekit.dse (no gradient, context)", device), repeats))
    return rows


# --------------------------------------------------------------------------- 2. training step


@dataclass
class StepResult:
    device: str
    arch: str
    image_size: int
    batch: int
    tokens: tuple[int, int, int]
    step_without: Timing
    step_with: Timing
    reg_alone: Timing

    @property
    def share(self) -> float:
        return (self.step_with.wall_median - self.step_without.wall_median) / self.step_with.wall_median

    @property
    def share_cpu(self) -> float:
        return (self.step_with.cpu_median - self.step_without.cpu_median) / self.step_with.cpu_median

    @property
    def alone_share(self) -> float:
        return self.reg_alone.wall_median / self.step_with.wall_median


def bench_training_step(
    device: str, arch: str, image_size: int, batch: int, repeats: int, seed: int, beta: float
) -> StepResult:
    import timm
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead

    g = torch.Generator().manual_seed(seed)

    def build() -> nn.ModuleDict:
        backbone = timm.create_model(arch, pretrained=False, img_size=image_size, num_classes=0)
        head = DINOProjectionHead(backbone.num_features, hidden_dim=512, bottleneck_dim=64, output_dim=1024)
        return nn.ModuleDict(dict(backbone=backbone, head=head)).to(device)

    with preserved_rng():  # model initialisation draws from the process-wide RNG
        torch.manual_seed(seed)
        student, teacher = build(), build()
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    backbone = student["backbone"]
    criterion = DINOLoss(output_dim=1024, warmup_teacher_temp_epochs=0).to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.04)
    prefix = getattr(backbone, "num_prefix_tokens", 1)
    images = torch.rand(batch, 3, image_size, image_size, generator=g).to(device)
    views = [images, images.flip(-1) * 0.9 + 0.05]
    reg = DSERegularizer(beta=beta, seed=seed, **SETTINGS)

    def step(with_reg: bool) -> float:
        student.train()
        tokens = [student["backbone"].forward_features(v) for v in views]  # (B, prefix + N, d)
        with torch.no_grad():
            t_out = [teacher["head"](teacher["backbone"].forward_features(v)[:, 0]) for v in views]
        s_out = [student["head"](t[:, 0]) for t in tokens]
        loss = criterion(t_out, s_out, epoch=0)
        if with_reg:
            loss = loss + reg.loss(tokens[0][:, prefix:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
                pt.lerp_(ps, 0.004)
        return loss.item()

    with torch.no_grad():
        patch = student["backbone"].forward_features(views[0])[:, prefix:].contiguous()

    def alone() -> float:
        leaf = patch.detach().clone().requires_grad_(True)
        value = reg(leaf)
        value.backward()
        return value.item()

    without = timed(lambda: step(False), Timing("training step", device), repeats)
    with_reg = timed(lambda: step(True), Timing("training step + regulariser", device), repeats)
    reg_alone = timed(alone, Timing("regulariser alone on the step's tokens", device), repeats)
    return StepResult(device, arch, image_size, batch, tuple(patch.shape), without, with_reg, reg_alone)


# --------------------------------------------------------------------------- report


def print_tables(fb: dict[str, list[Timing]], steps: list[StepResult], shape: tuple[int, int, int]) -> None:
    B, N, d = shape
    print(f"\nForward + backward, B={B}, N={N}, d={d} (median seconds; CPU = process CPU seconds)")
    print(
        f"{'device':<8} {'implementation':<36} {'wall s':>9} {'CPU s':>9} {'value':>9} {'ref/dsekit wall':>16} {'ref/dsekit CPU':>15}"
    )
    for device, rows in fb.items():
        ours = rows[0]
        for row in rows:
            ratio = ratio_cpu = ""
            if row.name.startswith("reference"):
                ratio = f"{row.wall_median / ours.wall_median:.1f}x"
                ratio_cpu = f"{row.cpu_median / ours.cpu_median:.1f}x" if not device.startswith("cuda") else "-"
            cpu = f"{row.cpu_median:.3f}" if not device.startswith("cuda") else "-"
            print(
                f"{device:<8} {row.name:<36} {row.wall_median:>9.3f} {cpu:>9} {row.value:>9.4f} {ratio:>16} {ratio_cpu:>15}"
            )
    if steps:
        print("\nShare of one training step (median seconds)")
        print(
            f"{'device':<8} {'model':<34} {'tokens':<16} {'step':>8} {'step+reg':>9} {'reg alone':>10} {'share':>7} {'share CPU':>10} {'alone/step':>11}"
        )
        for s in steps:
            model = f"{s.arch}@{s.image_size}px b{s.batch}"
            tokens = "x".join(str(v) for v in s.tokens)
            share_cpu = f"{100 * s.share_cpu:.1f}%" if not s.device.startswith("cuda") else "-"
            print(
                f"{s.device:<8} {model:<34} {tokens:<16} {s.step_without.wall_median:>8.3f} {s.step_with.wall_median:>9.3f} "
                f"{s.reg_alone.wall_median:>10.3f} {100 * s.share:>6.1f}% {share_cpu:>10} {100 * s.alone_share:>10.1f}%"
            )
    print(f"\nTargets: reference/dsekit >= {TARGET_RATIO:.0f}x; share of a training step <= {100 * TARGET_SHARE:.0f}%.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", metavar="DIR", help="checkout of the authors' code (DIR/DSE_regularizer.py)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all", help="'all': CPU, and CUDA when present")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--patches", type=int, default=196)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ref-repeats", type=int, default=3)
    p.add_argument("--arch", default="vit_tiny_patch16_224", help="timm model of the training step")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--train-repeats", type=int, default=3)
    p.add_argument("--beta", type=float, default=1e-3)
    p.add_argument("--no-train", action="store_true", help="skip the training-step measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    ref_cls, ref_note = load_reference(args.reference)
    devices = ["cpu"] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            devices.append("cuda")
        elif args.device == "cuda":
            print("cuda: not available", file=sys.stderr)
            return 2
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    gpu = f", GPU {torch.cuda.get_device_name()}" if "cuda" in devices else ""
    wait = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} threads (OMP_WAIT_POLICY={wait}){gpu}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(ref_note)

    shape = (args.batch, args.patches, args.dim)
    base = clustered_features(*shape, classes=48, classes_per_image=4, seed=args.seed)
    fb: dict[str, list[Timing]] = {}
    steps: list[StepResult] = []
    for device in devices:
        x = base.to(device)
        fb[device] = bench_regulariser(x, ref_cls, args.repeats, args.ref_repeats, args.seed)
        if not args.no_train:
            steps.append(
                bench_training_step(
                    device, args.arch, args.image_size, args.train_batch, args.train_repeats, args.seed, args.beta
                )
            )
    print_tables(fb, steps, shape)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        out = dict(
            shape=shape,
            threads=args.threads,
            reference=ref_note,
            forward_backward={dev: [asdict(r) for r in rows] for dev, rows in fb.items()},
            training_step=[
                {**asdict(s), "share": s.share, "share_cpu": s.share_cpu, "alone_share": s.alone_share} for s in steps
            ],
        )
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
