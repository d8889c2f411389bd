"""``torchrun --nproc_per_node 2 -m dsekit scan``: two gloo processes on CPU give the same outputs as one.

The checkpoints are split across ranks (rank r scores checkpoints r, r + 2, ... in epoch order)
and rank 0 assembles ``dse.csv``, ``selection.json``, ``dse.png`` and ``run.json``. Every process
runs single-threaded so that the arithmetic is identical in both set-ups.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dsekit.backbones import create_backbone
from dsekit.scan import ScanConfig, scan

EPOCHS = (0, 10, 20, 30, 40)  # 5 checkpoints: rank 0 gets three, rank 1 two
DEPTH, IMG, NUM_IMAGES, GLOBAL_K = 1, 48, 32, 4


def _vit(seed: int) -> nn.Module:
    model = create_backbone("vit_small_patch16_224", img_size=IMG, depth=DEPTH, init_weights=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():  # every float tensor: weight_init="skip" leaves some unset
            if t.is_floating_point():
                t.copy_((1.0 if t.ndim == 1 else 0.0) + 0.05 * torch.randn(t.shape, generator=g))
    return model.eval()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    for i, ep in enumerate(EPOCHS):
        backbone = {f"backbone.{k}": v for k, v in _vit(i).state_dict().items()}
        torch.save(
            {
                "teacher": backbone,
                "student": {f"module.{k}": v for k, v in backbone.items()},
                "epoch": ep + 1,
                "args": argparse.Namespace(arch="vit_small", patch_size=16),
            },
            root / f"checkpoint{ep:04d}.pth",
        )
    return root


def _scan_args(run: Path, out: Path) -> list[str]:
    return [
        "scan",
        str(run),
        "--method",
        "dino",
        "--model-kwarg",
        f"depth={DEPTH}",
        "--num-images",
        str(NUM_IMAGES),
        "--image-size",
        str(IMG),
        "--global-clusters",
        str(GLOBAL_K),
        "--metrics",
        "rankme",
        "--out",
        str(out),
    ]


def test_two_gloo_processes_give_the_single_process_outputs(run, tmp_path):
    # one process, single-threaded like each torchrun worker
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = scan(
            ScanConfig(
                str(run),
                "dino",
                out=str(tmp_path / "single"),
                model_kwargs={"depth": DEPTH},
                num_images=NUM_IMAGES,
                image_size=IMG,
                global_clusters=GLOBAL_K,
                metrics=("rankme",),
            ),
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    assert single.ok and single.computed == len(EPOCHS)

    out, logs = tmp_path / "dist", tmp_path / "logs"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("WORLD_SIZE", None)
    port = _free_port()
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "--log_dir",
        str(logs),
        "--redirects",
        "3",
        "-m",
        "dsekit",
        *_scan_args(run, out),
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    rank_logs = {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}
    assert proc.returncode == 0, (proc.stderr[-3000:], {r: t[-2000:] for r, t in rank_logs.items()})

    # same numbers, same selection
    assert (out / "dse.csv").read_text() == (single.out_dir / "dse.csv").read_text()
    selection = json.loads((out / "selection.json").read_text())
    assert selection == json.loads((single.out_dir / "selection.json").read_text())
    assert (out / "dse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "run.json").read_text())
    assert [c["epoch"] for c in record["checkpoints"]] == list(EPOCHS)
    assert record["images"]["num_images"] == NUM_IMAGES

    # the checkpoints really were split: rank r scored checkpoints r, r + 2, ...; rank 0 assembled
    assert set(rank_logs) == {0, 1}
    names = [f"checkpoint{ep:04d}.pth" for ep in EPOCHS]
    for rank, text in rank_logs.items():
        scored = re.findall(r"scoring \[\d+/\d+\] (checkpoint\d+\.pth)", text)
        assert scored == names[rank::2], (rank, text[-2000:])
    assert "DSE per checkpoint" in rank_logs[0] and "DSE per checkpoint" not in rank_logs[1]
    key = record["result_key"][:16]  # each rank decoded the sample for its own share and recorded it
    records = sorted(p.name for p in (out / "cache").glob("images.*.json"))
    assert records == [f"images.{key}.rank{r}.json" for r in (0, 1)]
    assert len([p for p in (out / "cache").glob("checkpoint*.json") if "failed" not in p.name]) == len(EPOCHS)
