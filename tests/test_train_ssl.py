"""The SSL trainer: official checkpoints that the adapters and the scan read, exact resumption."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dsekit.backbones import FeatureExtractor, load_backbone, read_checkpoint
from dsekit.cli.train import add_train_parser
from dsekit.train.config import resolve_config
from dsekit.train.methods import build_method, encode
from dsekit.train.ssl import (
    TrainConfig,
    checkpoint_name,
    init_checkpoint_name,
    read_run_info,
    train,
)

KWARGS = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
TINY = dict(
    arch="vit_tiny_patch16_224",
    model_kwargs=KWARGS,
    image_size=32,
    num_images=16,
    batch_size=8,
    out_dim=64,
    hidden_dim=32,
    bottleneck_dim=16,
    local_crops=2,
    local_crop_size=16,
)
TINY_ARGS = [
    "--arch",
    "vit_tiny_patch16_224",
    *[a for k, v in KWARGS.items() for a in ("--model-kwarg", f"{k}={v}")],
    "--image-size",
    "32",
    "--num-images",
    "16",
    "--batch-size",
    "8",
    "--out-dim",
    "64",
    "--hidden-dim",
    "32",
    "--bottleneck-dim",
    "16",
    "--local-crops",
    "2",
    "--local-crop-size",
    "16",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are dominated by threading overhead on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(method: str, out: Path, **kw) -> TrainConfig:
    return TrainConfig(method=method, out=str(out), **{**TINY, **kw})


@pytest.fixture(scope="module")
def dino_run(tmp_path_factory):
    """Two DINO epochs through the CLI entry point (checkpoint after each)."""
    out = tmp_path_factory.mktemp("dino")
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["train", "--method", "dino", "--out", str(out), "--epochs", "2", "--save-every", "1", "--quiet", *TINY_ARGS]
    )
    assert args.func(args) == 0
    return out


@pytest.fixture(scope="module")
def mocov3_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mocov3")
    result = train(_tiny("mocov3", out, epochs=2, save_every=1), progress=False)
    assert result.start_epoch == 0 and result.end_epoch == 2
    return out


def _method_from(path: Path, method: str):
    """The trainer's own model, restored from a checkpoint by its resume path."""
    ckpt = read_checkpoint(path)
    run = resolve_config(
        TrainConfig(**{k: v for k, v in vars(ckpt["args"]).items() if k in TrainConfig.__dataclass_fields__})
    )
    assert run.cfg.method == method
    m = build_method(run)
    m.load(ckpt)
    return m


def _patches(backbone: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    backbone.eval()
    with torch.no_grad():
        return encode(backbone, x)[1]


# ---------------------------------------------------------------------------------------------- formats


def test_dino_checkpoints_are_official_and_load_unchanged(dino_run):
    names = sorted(p.name for p in dino_run.iterdir())
    assert {"checkpoint0000.pth", "checkpoint0001.pth", "checkpoint.pth", "dsekit.json", "log.txt"} <= set(names)
    path = dino_run / "checkpoint0001.pth"
    raw = read_checkpoint(path)
    assert {"student", "teacher", "optimizer", "epoch", "args", "dino_loss"} <= set(raw)
    assert raw["epoch"] == 2
    assert isinstance(raw["args"], argparse.Namespace) and raw["args"].arch == "vit_tiny_patch16_224"
    assert all(k.startswith(("module.backbone.", "module.head.")) for k in raw["student"])
    assert any(k.startswith("module.head.") for k in raw["student"])
    assert all(k.startswith(("backbone.", "head.")) for k in raw["teacher"])
    assert raw["dino_loss"]["center"].shape[-1] == 64
    # safe loading: only argparse.Namespace is needed beyond tensors and plain containers
    with torch.serialization.safe_globals([argparse.Namespace]):
        torch.load(path, map_location="cpu", weights_only=True)

    info = read_run_info(dino_run)
    m = _method_from(path, "dino")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for branch, own in (("teacher", m.teacher_backbone()), ("student", m.student_backbone())):
        loaded = load_backbone(
            path, "dino", info["arch"], branch=branch, model_kwargs=info["model_kwargs"], img_size=info["image_size"]
        )
        with torch.no_grad():
            got = FeatureExtractor(loaded)(x)
        assert torch.equal(got, _patches(own, x)), branch
    # the teacher is an EMA of the student, not a copy
    assert not torch.equal(_patches(m.teacher_backbone(), x), _patches(m.student_backbone(), x))


def test_mocov3_checkpoints_are_official_and_load_unchanged(mocov3_run):
    assert (mocov3_run / "checkpoint_0000.pth.tar").is_file()
    path = mocov3_run / "checkpoint_0001.pth.tar"
    raw = read_checkpoint(path)
    assert {"epoch", "arch", "state_dict", "optimizer"} <= set(raw)
    assert raw["epoch"] == 2 and raw["arch"] == "vit_tiny_patch16_224"
    keys = raw["state_dict"]
    prefixes = {k.split(".")[1] for k in keys}
    assert prefixes == {"base_encoder", "momentum_encoder", "predictor"}
    assert all(k.startswith("module.") for k in keys)
    assert any(k.startswith("module.base_encoder.head.") for k in keys)  # the projector

    info = read_run_info(mocov3_run)
    m = _method_from(path, "mocov3")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for branch, own in (("momentum", m.teacher_backbone()), ("base", m.student_backbone())):
        loaded = load_backbone(
            path, "mocov3", info["arch"], branch=branch, model_kwargs=info["model_kwargs"], img_size=info["image_size"]
        )
        with torch.no_grad():
            got = FeatureExtractor(loaded)(x)
        assert torch.equal(got, _patches(own, x)), branch
    assert not torch.equal(_patches(m.teacher_backbone(), x), _patches(m.student_backbone(), x))


def test_run_info_and_log(dino_run):
    info = read_run_info(dino_run)
    assert info["scan_args"] == [
        "--method",
        "dino",
        "--arch",
        "vit_tiny_patch16_224",
        "--model-kwarg",
        "patch_size=8",
        "--model-kwarg",
        "embed_dim=32",
        "--model-kwarg",
        "depth=1",
        "--model-kwarg",
        "num_heads=2",
        "--image-size",
        "32",
    ]
    lines = [json.loads(s) for s in (dino_run / "log.txt").read_text().splitlines()]
    assert [h["epoch"] for h in lines] == [0, 1]
    assert all(np.isfinite(h["loss"]) and h["images_per_s"] > 0 for h in lines)


def test_scan_reads_the_checkpoints(dino_run, mocov3_run, tmp_path):
    from dsekit.scan import ScanConfig, scan

    for run_dir in (dino_run, mocov3_run):
        kw = read_run_info(run_dir)["scan_config"]
        cfg = ScanConfig(
            run_dir=str(run_dir),
            out=str(tmp_path / run_dir.name),
            num_images=16,
            batch_size=16,
            dse_batch_size=16,
            global_clusters=8,
            **kw,
        )
        res = scan(cfg, progress=False)
        assert res.ok and not res.failed
        assert [r.epoch for r in res.results] == [-1, 0, 1]  # the initial weights first
        assert Path(res.results[0].checkpoint).name == init_checkpoint_name(kw["method"])
        assert all(np.isfinite(r.terms["dse_raw"]) for r in res.results)


# ---------------------------------------------------------------------------------------------- resume


def _state_tensors(path: Path) -> dict[str, torch.Tensor]:
    raw = read_checkpoint(path)
    flat: dict[str, torch.Tensor] = {}
    for top in ("student", "teacher", "state_dict", "dino_loss"):
        for k, v in raw.get(top, {}).items():
            flat[f"{top}/{k}"] = v
    for pid, st in raw["optimizer"]["state"].items():
        for k, v in st.items():
            flat[f"optimizer/{pid}/{k}"] = torch.as_tensor(v)
    return flat


def _assert_same(a: Path, b: Path) -> None:
    sa, sb = _state_tensors(a), _state_tensors(b)
    assert sa.keys() == sb.keys()
    bad = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


@pytest.mark.parametrize("method", ["dino", "mocov3"])
def test_resume_continues_exactly(method, tmp_path, rng_state_guard):
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    full = train(_tiny(method, tmp_path / "full", epochs=3, save_every=1, dse_weight=1e-3), progress=False)
    part = train(
        _tiny(method, tmp_path / "part", epochs=3, save_every=1, dse_weight=1e-3, stop_after=1), progress=False
    )
    last = checkpoint_name(method, 2)
    assert part.end_epoch == 1 and not (tmp_path / "part" / last).exists()
    first = (tmp_path / "part" / checkpoint_name(method, 0)).read_bytes()
    lines: list[str] = []
    rest = train(
        _tiny(method, tmp_path / "part", epochs=3, save_every=1, dse_weight=1e-3), progress=False, log=lines.append
    )
    assert rest.start_epoch == 1 and rest.end_epoch == 3
    assert any("resuming" in s for s in lines)
    assert (tmp_path / "part" / checkpoint_name(method, 0)).read_bytes() == first  # not redone
    assert [h["epoch"] for h in rest.history] == [0, 1, 2]
    assert all(np.isfinite(h["dse"]) for h in rest.history)
    _assert_same(tmp_path / "full" / last, tmp_path / "part" / last)
    assert [p.name for p, _ in full.checkpoints] == [checkpoint_name(method, e) for e in range(3)]
    # the caller's RNG states are untouched (torch: rng_state_guard)
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before


def test_regulariser_changes_training(tmp_path):
    a = train(_tiny("dino", tmp_path / "a", epochs=1), progress=False)
    b = train(_tiny("dino", tmp_path / "b", epochs=1, dse_weight=0.5), progress=False)
    assert "dse" not in a.history[0] and np.isfinite(b.history[0]["dse"])
    sa, sb = _state_tensors(a.checkpoints[-1][0]), _state_tensors(b.checkpoints[-1][0])
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if k.startswith("student/module.backbone."))


def test_kill_and_resume_in_a_subprocess(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "dsekit",
        "train",
        "--method",
        "dino",
        "--out",
        str(out),
        "--epochs",
        "6",
        "--save-every",
        "1",
        "--quiet",
        *TINY_ARGS,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = out / "checkpoint0000.pth"
    deadline = time.monotonic() + 60
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), proc.stdout.read().decode()[-2000:]
    assert not (out / "checkpoint0005.pth").exists(), "the run finished before it could be killed"
    digest = hashlib.sha256(first.read_bytes()).hexdigest()

    # the rerun (same settings) continues from the latest state the killed process left
    lines: list[str] = []
    done = train(_tiny("dino", out, epochs=6, save_every=1), progress=False, log=lines.append)
    assert 1 <= done.start_epoch < 6 and done.end_epoch == 6
    assert any(f"(epoch {done.start_epoch} of 6 done)" in s for s in lines)
    final = read_checkpoint(out / "checkpoint0005.pth")
    assert final["epoch"] == 6
    assert hashlib.sha256(first.read_bytes()).hexdigest() == digest
    assert [p.name for p, _ in done.checkpoints] == [f"checkpoint{e:04d}.pth" for e in range(6)]
    # identical to an uninterrupted run of the same settings
    ref = train(_tiny("dino", tmp_path / "ref", epochs=6, save_every=5), progress=False)
    assert ref.end_epoch == 6
    _assert_same(out / "checkpoint0005.pth", tmp_path / "ref" / "checkpoint0005.pth")


def test_trains_on_an_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(10):
        sub = tmp_path / "imgs" / f"class{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(sub / f"{i}.png")
    res = train(
        _tiny("mocov3", tmp_path / "run", images=str(tmp_path / "imgs"), num_images=10, epochs=1), progress=False
    )
    assert res.images["source"] == str((tmp_path / "imgs").resolve()) and res.images["num_images"] == 10
    assert read_run_info(tmp_path / "run")["images"]["image_hash"] == res.images["image_hash"]
    assert [p.name for p, _ in res.checkpoints] == ["checkpoint_0000.pth.tar"]


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_settings(tmp_path, dino_run):
    with pytest.raises(ValueError, match="method"):
        train(_tiny("simclr", tmp_path / "x"), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        train(_tiny("dino", tmp_path / "x", batch_size=32), progress=False)
    with pytest.raises(ValueError, match="image_size"):
        train(_tiny("dino", tmp_path / "x", image_size=36), progress=False)
    with pytest.raises(ValueError, match="dse_weight"):
        train(_tiny("dino", tmp_path / "x", dse_weight=float("nan")), progress=False)
    with pytest.raises(ValueError, match="arch"):
        train(_tiny("dino", tmp_path / "x", arch="no_such_net"), progress=False)
    with pytest.raises(FileNotFoundError, match="images"):
        train(_tiny("dino", tmp_path / "x", images=str(tmp_path / "missing")), progress=False)
    # resuming with other settings names them
    with pytest.raises(ValueError, match="lr"):
        train(_tiny("dino", dino_run, epochs=2, save_every=1, lr=0.1), progress=False)
    with pytest.raises(NotADirectoryError):
        (tmp_path / "file").write_text("")
        train(_tiny("dino", tmp_path / "file"), progress=False)


def test_probe_cli_reads_the_run_info(dino_run, tmp_path):
    # No --arch/--model-kwarg/--image-size: they come from RUN_DIR/dsekit.json as for scan
    # (the method's default architecture would not load these checkpoints).
    from dsekit.cli import main

    out = tmp_path / "probe"
    rc = main(
        [
            "probe",
            str(dino_run),
            "--method",
            "dino",
            "--dataset",
            "scenes",
            "--num-train",
            "8",
            "--num-val",
            "4",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    rows = (out / "probe.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("checkpoint,epoch,dataset,miou")  # header, init, epochs 0 and 1
    assert "checkpoint_init.pth,-1," in rows[1]


def test_unreadable_run_info_names_the_file(tmp_path, capsys):
    from dsekit.cli import main

    (tmp_path / "dsekit.json").write_text('{"method": "dino", "arch": ')
    for command in ("scan", "probe"):
        extra = ["--dataset", "scenes"] if command == "probe" else []
        rc = main([command, str(tmp_path), "--method", "dino", *extra, "--quiet"])
        assert rc == 2
        err = capsys.readouterr().err
        assert str(tmp_path / "dsekit.json") in err and "--arch" in err


def test_scan_and_probe_cli_read_the_scenes_a_run_was_trained_on(tmp_path):
    from dsekit.cli import main

    scenes = {"textures": ["gravel", "tissue", "stars"], "digits_per_scene": [1, 1], "merge_digits": True}
    run = tmp_path / "run"
    train(
        TrainConfig(
            method="mocov3",
            out=str(run),
            scenes=scenes,
            num_images=8,
            epochs=1,
            batch_size=4,
            model_kwargs={"depth": 1},
        ),
        progress=False,
    )
    assert read_run_info(run)["scan_config"]["scenes"] == scenes
    assert (
        main(
            [
                "scan",
                str(run),
                "--method",
                "mocov3",
                "--num-images",
                "8",
                "--global-clusters",
                "4",
                "--images-per-group",
                "4",
                "--intervals",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    run_json = json.loads((run / "dse" / "run.json").read_text())
    assert run_json["settings"]["scenes"] == scenes
    assert (
        main(
            [
                "probe",
                str(run),
                "--method",
                "mocov3",
                "--dataset",
                "scenes",
                "--num-train",
                "4",
                "--num-val",
                "4",
                "--epochs",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    record = json.loads((run / "dse" / "probe_scenes.json").read_text())
    assert record["data"]["class_names"] == ["gravel", "tissue", "stars", "digit"]
