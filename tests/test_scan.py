"""End-to-end tests of ``dsekit scan``: outputs, ordering, bad input, resume, kill-and-rerun, families.

Runs are tiny (ViT-S/16 layout with one block at 48 px, 32 built-in scenes, global k = 4) so the
whole file stays fast on two CPU cores; every checkpoint is saved in its method's official format.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet

import dsekit.data.images as images_mod
import dsekit.data.scenes as scenes_mod
import dsekit.scan as scan_mod
from dsekit.backbones import FeatureExtractor, create_backbone, extract_features, list_methods
from dsekit.cli import main
from dsekit.data.images import ImageSampleWarning, load_image_sample
from dsekit.metrics.baselines import BASELINE_METRICS
from dsekit.metrics.dse import TERMS, DSEAccumulator
from dsekit.scan import CSV_COLUMNS, ScanConfig, scan
from dsekit.select import calibrate, select_checkpoints

from _weights import randomize

ARCH = "vit_small_patch16_224"
DEPTH = 1
IMG = 48  # 3 x 3 patches
NUM_IMAGES = 32
GLOBAL_K = 4
METRICS = ("rankme", "dense_rankme")
EXPECTED_COLUMNS = [
    "checkpoint",
    "epoch",
    "inter_class_distance",
    "intra_class_image",
    "intra_class_batch",
    "effective_dimensionality",
    "dse_raw",
    "dse",
]
# epochs written in a scrambled order, with unpadded names so that the file-name order (1200, 300,
# 40, 5) differs from the epoch order
EPOCHS = (300, 5, 1200, 40)
SEEDS = {5: 1, 40: 2, 300: 3, 1200: 4}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------
# helpers: random networks in official checkpoint formats
# --------------------------------------------------------------------------------------------------


def _vit(seed: int) -> nn.Module:
    return randomize(create_backbone(ARCH, img_size=IMG, depth=DEPTH, init_weights=False), seed)


def _head(dim: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "head.mlp.0.weight": torch.randn(16, dim, generator=g),
        "head.mlp.0.bias": torch.zeros(16),
        "head.last_layer.weight_g": torch.ones(32, 1),
        "head.last_layer.weight_v": torch.randn(32, 16, generator=g),
    }


def _dino_checkpoint(model: nn.Module, epoch: int) -> dict:
    """As DINO's ``main_dino.py`` saves it: teacher (backbone.* + head.*), DDP student, training state."""
    backbone = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    head = _head(model.embed_dim, epoch)
    return {
        "student": {f"module.{k}": v for k, v in {**backbone, **head}.items()},
        "teacher": {**backbone, **head},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.0005, "weight_decay": 0.04, "params": [0, 1]}]},
        "epoch": epoch + 1,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=32, epochs=1300, lr=0.0005),
        "dino_loss": {"center": torch.zeros(1, 32)},
    }


def _write_dino(run: Path, epoch: int, seed: int) -> Path:
    path = run / f"checkpoint{epoch}.pth"
    torch.save(_dino_checkpoint(_vit(seed), epoch), path)
    return path


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def _reference_terms(model: nn.Module, images: Tensor, **dse_kwargs: object) -> tuple[dict[str, float], Tensor]:
    """DSE terms of ``model``'s last-layer patch tokens on ``images``, computed without the scan."""
    feats = extract_features(FeatureExtractor(model), images, batch_size=64)
    acc = DSEAccumulator(1024, seed=0, **dse_kwargs)
    acc.update(feats)
    return acc.compute().as_dict(), feats


def _cli_args(run: Path, out: Path, *extra: str) -> list[str]:
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
        "--out",
        str(out),
        *extra,
    ]


# --------------------------------------------------------------------------------------------------
# fixtures: one DINO run and one reference scan of it
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dino_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("dino_run")
    for ep in EPOCHS:
        _write_dino(run, ep, SEEDS[ep])
    (run / "log.txt").write_text('{"epoch": 1200}\n')  # not a checkpoint: ignored by discovery
    (run / "checkpoint.pth").write_bytes(b"")  # DINO's rolling copy has no epoch: ignored too
    return run


@pytest.fixture(scope="module")
def dino_scan(dino_run, tmp_path_factory):
    """The reference scan (with baseline metrics), counting image-sample loads and scene generations."""
    out = tmp_path_factory.mktemp("dino_out")
    cfg = ScanConfig(
        str(dino_run),
        "dino",
        out=str(out),
        model_kwargs={"depth": DEPTH},
        num_images=NUM_IMAGES,
        image_size=IMG,
        global_clusters=GLOBAL_K,
        metrics=METRICS,
    )
    calls = {"load_image_sample": 0, "make_scenes": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan_mod, "load_image_sample", counting("load_image_sample", images_mod.load_image_sample))
        mp.setattr(scenes_mod, "make_scenes", counting("make_scenes", scenes_mod.make_scenes))
        result = scan(cfg, progress=False)
    return cfg, result, calls


# --------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------


def test_scan_writes_csv_with_exact_columns_sorted_by_epoch(dino_scan):
    cfg, result, _ = dino_scan
    assert result.ok and result.computed == len(EPOCHS)
    header, rows = _read_csv(cfg.out_dir / "dse.csv")
    assert list(CSV_COLUMNS) == EXPECTED_COLUMNS
    scored = EXPECTED_COLUMNS[2:] + list(METRICS)
    assert header == EXPECTED_COLUMNS + list(METRICS) + [f"{c}_{s}" for c in scored for s in ("low", "high")]
    assert [int(r["epoch"]) for r in rows] == sorted(EPOCHS)
    for r in rows:  # every value inside its own interval, the interval not empty
        for c in scored:
            assert float(r[f"{c}_low"]) <= float(r[c]) <= float(r[f"{c}_high"]), (c, r)
            assert float(r[f"{c}_low"]) < float(r[f"{c}_high"]), (c, r)
    rep_header, reps = _read_csv(cfg.out_dir / "dse_replicates.csv")
    assert rep_header == ["checkpoint", "replicate", *scored]
    assert len(reps) == cfg.intervals * len(EPOCHS)
    assert [Path(r["checkpoint"]).name for r in rows] == [f"checkpoint{e}.pth" for e in sorted(EPOCHS)]
    for r in rows:
        assert all(math.isfinite(float(r[c])) for c in header[2:])
    # the ScanResult agrees with the file
    assert [res.epoch for res in result.results] == sorted(EPOCHS)
    assert result.dse == pytest.approx([float(r["dse"]) for r in rows], rel=0, abs=0)


def test_scan_numbers_equal_a_direct_computation(dino_scan):
    """The row of one checkpoint equals DSE / RankMe of the original network's features on the sample."""
    cfg, _, _ = dino_scan
    _, rows = _read_csv(cfg.out_dir / "dse.csv")
    row = next(r for r in rows if int(r["epoch"]) == 40)
    images = load_image_sample(None, NUM_IMAGES, 0, IMG).images
    terms, feats = _reference_terms(_vit(SEEDS[40]), images, global_clusters=GLOBAL_K)
    for t in TERMS:
        assert float(row[t]) == pytest.approx(terms[t], rel=1e-6, abs=1e-9), t
    for m in METRICS:
        assert float(row[m]) == pytest.approx(float(BASELINE_METRICS[m](feats)), rel=1e-6), m
    # another checkpoint gives other numbers (the rows are not all the same network)
    other = next(r for r in rows if int(r["epoch"]) == 5)
    assert float(other["dse_raw"]) != float(row["dse_raw"])


def test_selection_json_lambda_candidates_selected(dino_scan):
    cfg, result, _ = dino_scan
    _, rows = _read_csv(cfg.out_dir / "dse.csv")
    sel = json.loads((cfg.out_dir / "selection.json").read_text())
    cal = calibrate(*[[float(r[t]) for r in rows] for t in TERMS[:4]])
    assert cal.lam is not None and sel["lambda"] == pytest.approx(cal.lam, rel=1e-12)
    assert result.lam == pytest.approx(cal.lam, rel=1e-12)
    assert sel["raw"] is False
    assert [float(r["dse"]) for r in rows] == pytest.approx(cal.dse.tolist(), rel=1e-12)
    expected = select_checkpoints(cal.dse, window=cfg.window, top=cfg.top)
    epochs = [int(r["epoch"]) for r in rows]
    assert [c["epoch"] for c in sel["candidates"]] == [epochs[i] for i in expected.candidates]
    assert [c["epoch"] for c in sel["selected"]] == [epochs[i] for i in expected.selected]
    assert sel["candidates"], "a run always has at least one local maximum"
    for c in sel["candidates"]:
        assert set(c) == {"checkpoint", "epoch", "dse"}
        assert c["dse"] == pytest.approx(float(rows[epochs.index(c["epoch"])]["dse"]))
    best = sel["best"]
    assert best["epoch"] == epochs[expected.best]
    assert best["dse"] == max(c["dse"] for c in sel["candidates"])
    assert sel["failed"] == []


def test_plot_and_run_record(dino_scan):
    cfg, result, _ = dino_scan
    png = cfg.out_dir / "dse.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    run = json.loads((cfg.out_dir / "run.json").read_text())
    settings = asdict(cfg)
    settings["metrics"] = list(settings["metrics"])
    settings["layers"] = list(settings["layers"])
    assert run["settings"] == settings
    for lib in ("dsekit", "torch", "timm", "torchvision", "numpy", "python"):
        assert run["versions"][lib]
    import timm

    assert run["versions"]["timm"] == timm.__version__ and run["versions"]["torch"] == torch.__version__
    images = run["images"]
    assert re.fullmatch(r"[0-9a-f]{64}", images["image_hash"])
    assert images["image_hash"] == load_image_sample(None, NUM_IMAGES, 0, IMG).image_hash
    assert images["num_images"] == NUM_IMAGES and images["source"] == "scenes"
    assert [c["epoch"] for c in run["checkpoints"]] == sorted(EPOCHS)
    for c in run["checkpoints"]:
        assert c["status"] == "ok" and c["error"] == ""
        assert set(c["timings"]) >= {"load", "extract", "score"}
        assert all(v >= 0 for v in c["timings"].values())


def test_images_generated_once_per_scan(dino_scan):
    _, result, calls = dino_scan
    assert result.computed == len(EPOCHS) > 1
    assert calls == {"load_image_sample": 1, "make_scenes": 1}


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------


def test_missing_or_empty_folder_is_a_clear_cli_error(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["scan", str(missing), "--method", "dino"]) == 2
    err = capsys.readouterr().err
    assert "dsekit scan: error:" in err and str(missing) in err and "does not exist" in err
    assert not missing.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["scan", str(empty), "--method", "dino"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoints found" in err and str(empty) in err and "empty" in err

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert main(["scan", str(other), "--method", "dino"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoints found" in err and "checkpoint{epoch}.pth" in err and "--glob" in err

    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan(ScanConfig(str(missing), "dino"), progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoints found"):
        scan(ScanConfig(str(empty), "dino"), progress=False)


def test_unknown_method_lists_the_known_ones(dino_run, tmp_path, capsys):
    assert main(["scan", str(dino_run), "--method", "dyno", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'dyno'" in err
    for m in list_methods():
        assert m in err
    assert {"dino", "mocov3", "mae", "barlowtwins", "generic"} <= set(list_methods())
    with pytest.raises(ValueError, match="known methods: .*dino"):
        scan(ScanConfig(str(dino_run), "dyno", out=str(tmp_path / "o")), progress=False)
    assert not (tmp_path / "o").exists()


def test_unknown_metric_is_an_error(dino_run, tmp_path):
    with pytest.raises(ValueError, match="metrics: unknown .*rankme"):
        scan(ScanConfig(str(dino_run), "dino", out=str(tmp_path / "o"), metrics=("rankmee",)), progress=False)


def test_corrupt_checkpoints_are_recorded_and_the_rest_scored(dino_run, dino_scan, tmp_path, capsys):
    cfg, _, _ = dino_scan
    run = tmp_path / "run"
    shutil.copytree(dino_run, run)
    good = (run / "checkpoint40.pth").read_bytes()
    (run / "checkpoint600.pth").write_bytes(good[: len(good) // 2])  # truncated
    (run / "checkpoint800.pth").write_bytes(b"PK\x03\x04 not a checkpoint " * 64)  # corrupt
    out = tmp_path / "out"

    rc = main(_cli_args(run, out))  # with progress and the summary table
    captured = capsys.readouterr()
    assert rc == 1
    assert "2 checkpoint(s) failed: checkpoint600.pth, checkpoint800.pth" in captured.err
    assert "DSE per checkpoint" in captured.err  # the summary table
    err = " ".join(captured.err.split())  # rich wraps long lines
    assert "failed checkpoint600.pth: CheckpointError: cannot read checkpoint" in err
    assert "failed checkpoint800.pth: CheckpointError: cannot read checkpoint" in err

    header, rows = _read_csv(out / "dse.csv")
    # no --metrics: the eight columns, then the interval of each scored one
    assert header == EXPECTED_COLUMNS + [f"{c}_{s}" for c in EXPECTED_COLUMNS[2:] for s in ("low", "high")]
    assert [int(r["epoch"]) for r in rows] == sorted(EPOCHS)
    # the good checkpoints got the same numbers as in the clean scan
    _, ref_rows = _read_csv(cfg.out_dir / "dse.csv")
    for r, ref in zip(rows, ref_rows, strict=True):
        assert [r[c] for c in EXPECTED_COLUMNS[1:]] == [ref[c] for c in EXPECTED_COLUMNS[1:]]

    record = json.loads((out / "run.json").read_text())
    failed = {Path(c["checkpoint"]).name: c for c in record["checkpoints"] if c["status"] == "failed"}
    assert set(failed) == {"checkpoint600.pth", "checkpoint800.pth"}
    assert failed["checkpoint600.pth"]["epoch"] == 600
    for c in failed.values():
        assert "truncated or corrupt" in c["error"]
    sel = json.loads((out / "selection.json").read_text())
    assert {Path(f["checkpoint"]).name for f in sel["failed"]} == set(failed)
    assert all(f["error"] for f in sel["failed"])
    assert (out / "dse.png").read_bytes()[:8] == PNG_MAGIC

    # the Python API reports the same
    result = scan(replace(cfg, run_dir=str(run), out=str(out), metrics=()), progress=False)
    assert not result.ok and result.computed == 0
    assert {Path(r.checkpoint).name for r in result.failed} == set(failed)
    assert all("truncated or corrupt" in r.error for r in result.failed)


def test_unreadable_and_missing_images_are_skipped_counted_and_reported(dino_run, tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    (folder / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(16):
        arr = rng.integers(0, 256, size=(56, 60, 3), dtype=np.uint8)
        Image.fromarray(arr, mode="RGB").save(folder / "a" / f"img{i:02d}.png")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage, not an image" * 8)
    (folder / "a" / "empty.jpg").write_bytes(b"")

    decoded: list[str] = []
    real_decode = images_mod._decode

    def counting_decode(path, *args, **kwargs):
        decoded.append(Path(path).name)
        return real_decode(path, *args, **kwargs)

    monkeypatch.setattr(images_mod, "_decode", counting_decode)
    cfg = ScanConfig(
        str(dino_run),
        "dino",
        out=str(tmp_path / "out"),
        model_kwargs={"depth": DEPTH},
        images=str(folder),
        num_images=20,
        image_size=IMG,
        global_clusters=GLOBAL_K,
    )
    with pytest.warns(UserWarning) as record:
        result = scan(cfg, progress=False)
    sample_warnings = [str(w.message) for w in record if issubclass(w.category, ImageSampleWarning)]
    assert any("skipped 2 unreadable" in m and "bad.png" in m and "empty.jpg" in m for m in sample_warnings)
    assert any("fewer than the 20 asked" in m for m in sample_warnings)
    assert any("asked for 20 images, 16 available" in str(w.message) for w in record)
    assert result.ok and result.computed == len(EPOCHS)

    # every file decoded exactly once for the whole scan, not once per checkpoint
    assert len(decoded) == 18 and len(set(decoded)) == 18

    images = json.loads((cfg.out_dir / "run.json").read_text())["images"]
    assert images["num_images"] == 16 and images["requested"] == 20 and images["available"] == 18
    assert images["num_skipped"] == 2
    assert sorted(s.split(":")[0] for s in images["skipped"]) == ["a/empty.jpg", "bad.png"]
    assert images["source"] == str(folder.resolve())
    for r in result.results:
        assert r.num_images == 16


def test_fewer_images_than_asked_warns(dino_run, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(10):
        Image.fromarray(np.full((50, 50, 3), 20 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = ScanConfig(
        str(dino_run),
        "dino",
        out=str(tmp_path / "out"),
        model_kwargs={"depth": DEPTH},
        images=str(folder),
        num_images=12,
        image_size=IMG,
        global_clusters=GLOBAL_K,
        glob="checkpoint[45]*.pth",
    )
    with pytest.warns(UserWarning) as record:
        result = scan(cfg, progress=False)
    messages = [str(w.message) for w in record]
    assert any("asked for 12 images, 10 available" in m for m in messages)
    assert not any("unreadable" in m for m in messages)
    assert [r.epoch for r in result.results] == [5, 40]
    assert json.loads((cfg.out_dir / "run.json").read_text())["images"]["num_images"] == 10


# --------------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------------


def test_rerun_skips_finished_checkpoints_and_a_changed_setting_recomputes(dino_run, dino_scan, tmp_path, monkeypatch):
    cfg, _, _ = dino_scan
    out = tmp_path / "out"
    shutil.copytree(cfg.out_dir, out)
    loads = []
    real = scan_mod.load_image_sample
    monkeypatch.setattr(scan_mod, "load_image_sample", lambda *a, **k: loads.append(1) or real(*a, **k))

    # same settings: nothing scored, nothing decoded, identical outputs
    again = scan(replace(cfg, out=str(out)), progress=False)
    assert again.computed == 0 and not loads
    assert (out / "dse.csv").read_bytes() == (cfg.out_dir / "dse.csv").read_bytes()
    assert json.loads((out / "selection.json").read_text()) == json.loads((cfg.out_dir / "selection.json").read_text())
    # with nothing decoded, run.json still records the image sample (from the cache)
    ref_images = json.loads((cfg.out_dir / "run.json").read_text())["images"]
    assert json.loads((out / "run.json").read_text())["images"] == ref_images
    # settings that do not change the numbers (forward batch size, device, selection window) are not in the key
    assert scan(replace(cfg, out=str(out), batch_size=5, device="cpu", top=1), progress=False).computed == 0

    # the cache is keyed on the file's identity, not its path: a moved run is still finished
    run = tmp_path / "run"
    shutil.copytree(dino_run, run)
    moved = replace(cfg, run_dir=str(run), out=str(out))
    assert scan(moved, progress=False).computed == 0
    # a checkpoint rewritten with other weights is scored again, and only that one
    _write_dino(run, 300, seed=99)
    changed = scan(moved, progress=False)
    assert changed.computed == 1 and len(loads) == 1
    _, rows = _read_csv(out / "dse.csv")
    _, ref_rows = _read_csv(cfg.out_dir / "dse.csv")
    differs = [int(r["epoch"]) for r, ref in zip(rows, ref_rows, strict=True) if r["dse_raw"] != ref["dse_raw"]]
    assert differs == [300]

    # a setting that changes the numbers recomputes everything
    other = scan(replace(moved, global_clusters=GLOBAL_K - 1), progress=False)
    assert other.computed == len(EPOCHS)
    _, rows = _read_csv(out / "dse.csv")
    assert all(r["inter_class_distance"] != ref["inter_class_distance"] for r, ref in zip(rows, ref_rows, strict=True))
    assert json.loads((out / "run.json").read_text())["settings"]["global_clusters"] == GLOBAL_K - 1
    # so does another image sample; run.json describes the sample each scan was scored on
    fewer = scan(replace(moved, num_images=NUM_IMAGES // 2), progress=False)
    assert fewer.computed == len(EPOCHS) and len(loads) == 3
    record = json.loads((out / "run.json").read_text())
    assert record["settings"]["num_images"] == record["images"]["num_images"] == NUM_IMAGES // 2
    assert record["images"]["image_hash"] != ref_images["image_hash"]
    back = scan(moved, progress=False)  # all cached again, nothing decoded
    assert back.computed == 0 and len(loads) == 3
    record = json.loads((out / "run.json").read_text())
    assert record["settings"]["num_images"] == NUM_IMAGES and record["images"] == ref_images


def _env() -> dict[str, str]:
    env = dict(os.environ)
    threads = str(torch.get_num_threads())  # the same arithmetic as this process
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _results_in(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in cache.glob("checkpoint*.json") if not p.name.endswith(".failed.json")}


def test_killed_scan_resumes_to_the_uninterrupted_outputs(dino_run, dino_scan, tmp_path):
    cfg, _, _ = dino_scan  # the uninterrupted run, same settings
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dsekit", *_cli_args(dino_run, out, "--metrics", *METRICS, "--quiet")]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cache = out / "cache"
    deadline = time.monotonic() + 300
    try:
        while not (cache.is_dir() and _results_in(cache)):
            if proc.poll() is not None:
                pytest.fail(f"scan ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint result appeared in time")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = _results_in(cache)
    assert 1 <= len(done) < len(EPOCHS), "the scan was not killed part-way"
    assert not (out / "dse.csv").exists() and not (out / "selection.json").exists()

    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # the finished checkpoints were skipped: their results are untouched
    after = _results_in(cache)
    assert len(after) == len(EPOCHS)
    assert {k: after[k] for k in done} == done
    assert (out / "dse.csv").read_bytes() == (cfg.out_dir / "dse.csv").read_bytes()
    assert json.loads((out / "selection.json").read_text()) == json.loads((cfg.out_dir / "selection.json").read_text())
    assert (out / "dse.png").read_bytes()[:8] == PNG_MAGIC


def test_moved_run_reuses_results_and_names_the_new_paths(dino_run, dino_scan, tmp_path):
    """A run folder copied elsewhere with its outputs: nothing is recomputed, dse.csv names the new files."""
    cfg, _, _ = dino_scan
    moved = tmp_path / "moved"
    shutil.copytree(dino_run, moved)
    shutil.copytree(cfg.out_dir, moved / "dse")
    again = scan(replace(cfg, run_dir=str(moved), out=str(moved / "dse")), progress=False)
    assert again.ok and again.computed == 0
    _, rows = _read_csv(moved / "dse" / "dse.csv")
    assert [Path(r["checkpoint"]).parent for r in rows] == [moved] * len(EPOCHS)
    assert again.dse == dino_scan[1].dse


# --------------------------------------------------------------------------------------------------
# other families: a ResNet method (SimSiam) and a Swin method (EsViT)
# --------------------------------------------------------------------------------------------------

RESNET_KW = {"layers": [1, 1, 1, 1], "base_width": 16}  # ResNet-50 names, narrower
SWIN_KW = {"window_size": 2, "embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 3, 4]}
SMALL_IMG = 64  # ResNet and Swin: 2 x 2 tokens in the last stage


def _simsiam_encoder(seed: int) -> ResNet:
    """torchvision ResNet-50 layout (one block per stage) with SimSiam's projector as ``fc``."""
    net = ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=16)
    net.fc = nn.Sequential(
        nn.Linear(2048, 32, bias=False),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 16),
        nn.BatchNorm1d(16, affine=False),
    )
    return randomize(net, seed)


def _tv_features(net: ResNet, x: Tensor) -> Tensor:
    with torch.no_grad():
        y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        y = net.layer4(net.layer3(net.layer2(net.layer1(y))))
    return y.flatten(2).transpose(1, 2)


def _small_scan(run: Path, out: Path, method: str, kwargs: dict) -> tuple:
    cfg = ScanConfig(
        str(run),
        method,
        out=str(out),
        model_kwargs=kwargs,
        num_images=NUM_IMAGES,
        image_size=SMALL_IMG,
        global_clusters=GLOBAL_K,
    )
    result = scan(cfg, progress=False)
    _, rows = _read_csv(out / "dse.csv")
    return result, rows


def test_resnet_method_scan(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    encoders = {}
    for ep, seed in ((9, 10), (19, 11), (29, 12)):
        enc = encoders[ep] = _simsiam_encoder(seed)
        predictor = nn.Sequential(nn.Linear(16, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 16))
        state = {
            **{f"module.encoder.{k}": v for k, v in enc.state_dict().items()},
            **{f"module.predictor.{k}": v for k, v in predictor.state_dict().items()},
        }
        ckpt = {
            "epoch": ep + 1,
            "arch": "resnet50",
            "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.05, "params": [0]}]},
        }
        torch.save(ckpt, run / f"checkpoint_{ep:04d}.pth.tar")  # SimSiam's official name
    result, rows = _small_scan(run, tmp_path / "out", "simsiam", RESNET_KW)
    assert result.ok and result.computed == 3
    assert [int(r["epoch"]) for r in rows] == [9, 19, 29]
    images = load_image_sample(None, NUM_IMAGES, 0, SMALL_IMG).images
    feats = _tv_features(encoders[19], images)
    assert feats.shape == (NUM_IMAGES, 4, 2048)
    acc = DSEAccumulator(1024, seed=0, global_clusters=GLOBAL_K)
    acc.update(feats)
    ref = acc.compute().as_dict()
    for t in TERMS:
        assert float(rows[1][t]) == pytest.approx(ref[t], rel=1e-5, abs=1e-7), t
    assert json.loads((tmp_path / "out" / "selection.json").read_text())["best"] is not None


def _to_original_swin(sd: dict[str, Tensor], window: int) -> dict[str, Tensor]:
    """timm Swin names -> the original Swin layout EsViT saves (patch merging at the end of a stage,
    persistent relative_position_index buffers)."""
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        if m:
            k = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        out[k] = v
        if k.endswith("attn.relative_position_bias_table"):
            out[k.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(
                window * window, window * window, dtype=torch.long
            )
    return out


def test_swin_method_scan(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    teachers = {}
    for ep, seed in ((0, 20), (10, 21), (20, 22)):
        teacher = teachers[ep] = randomize(
            create_backbone(
                "swin_tiny_patch4_window7_224",
                img_size=SMALL_IMG,
                init_weights=False,
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
                **SWIN_KW,
            ),
            seed,
        )
        sd = _to_original_swin(teacher.state_dict(), SWIN_KW["window_size"])
        heads = {
            **_head(teacher.num_features, seed),
            **{k.replace("head.", "head_dense."): v for k, v in _head(teacher.num_features, seed).items()},
        }
        ckpt = {
            "teacher": {**sd, **heads},
            "student": {f"module.{k}": v for k, v in {**sd, **heads}.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.0005, "params": [0]}]},
            "epoch": ep + 1,
            "args": argparse.Namespace(
                arch="swin_tiny", cfg="experiments/imagenet/swin/swin_tiny_patch4_window7_224.yaml"
            ),
            "dino_loss": {"center": torch.zeros(1, 32), "center_grid": torch.zeros(1, 32)},
        }
        torch.save(ckpt, run / f"checkpoint{ep:04d}.pth")  # EsViT's official name
    result, rows = _small_scan(run, tmp_path / "out", "esvit", SWIN_KW)
    assert result.ok and result.computed == 3
    assert [int(r["epoch"]) for r in rows] == [0, 10, 20]
    images = load_image_sample(None, NUM_IMAGES, 0, SMALL_IMG).images
    ref, feats = _reference_terms(teachers[10], images, global_clusters=GLOBAL_K)
    assert feats.shape == (NUM_IMAGES, 4, teachers[10].num_features)
    for t in TERMS:
        assert float(rows[1][t]) == pytest.approx(ref[t], rel=1e-5, abs=1e-7), t


def test_building_loading_and_scanning_leave_the_global_rng_alone(tmp_path):
    from dsekit.backbones import create_backbone, load_backbone

    run = tmp_path / "run"
    run.mkdir()
    m = create_backbone("vit_small_patch16_224", img_size=32, depth=1)
    sd = {"backbone." + k: v for k, v in m.state_dict().items()}
    torch.save({"teacher": sd, "student": sd, "epoch": 1}, run / "checkpoint0001.pth")
    torch.manual_seed(123)
    np.random.seed(5)
    state, np_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    create_backbone("vit_small_patch16_224", img_size=32, depth=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    load_backbone(run / "checkpoint0001.pth", "dino", img_size=32, model_kwargs={"depth": 1})
    assert torch.equal(torch.random.get_rng_state(), state)
    scan(
        ScanConfig(
            str(run),
            "dino",
            model_kwargs={"depth": 1},
            num_images=8,
            image_size=32,
            local_clusters=2,
            global_clusters=4,
            images_per_group=4,
            out=str(tmp_path / "out"),
            intervals=2,
        ),
        progress=False,
    )
    assert torch.equal(torch.random.get_rng_state(), state)
    assert np.array_equal(np.random.get_state()[1], np_state)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--window", "-1"], "window: expected >= 0"),
        (["--arch", "vit_nonexistent_patch16"], "unknown timm architecture"),
        (["--layer", "99"], "layer=99 is out of range"),
        (["--seed", str(2**64)], "argument --seed: expected an integer in [0, 2**63 - 1]"),
    ],
)
def test_settings_that_can_only_fail_fail_before_any_checkpoint_is_read(args, message, tmp_path, capsys, monkeypatch):
    import dsekit.backbones.checkpoints as ck
    from dsekit.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint0001.pth").write_bytes(b"not read")
    reads = []
    monkeypatch.setattr(ck, "read_checkpoint", lambda *a, **k: reads.append(a) or {})
    try:
        rc = main(
            ["scan", str(run), "--method", "dino", "--image-size", "32", "--quiet", "--out", str(tmp_path / "o"), *args]
        )
    except SystemExit as exc:  # refused by the parser itself
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert reads == []


@pytest.mark.parametrize("command", ["scan", "probe"])
@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "banana"], "device: 'banana' is not a torch device"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "cuda:999"], "device:"),
    ],
)
def test_bad_devices_get_a_clear_error(command, args, message, tmp_path, capsys):
    from dsekit.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint0001.pth").write_bytes(b"x")
    extra = ["--dataset", "scenes"] if command == "probe" else []
    rc = main([command, str(run), "--method", "dino", *extra, "--quiet", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_run_folder_names_the_folder_and_out(tmp_path, capsys):  # pragma: no cover - needs non-root
    from dsekit.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint0001.pth").write_bytes(b"x")
    run.chmod(0o555)
    try:
        rc = main(["scan", str(run), "--method", "dino", "--quiet"])
    finally:
        run.chmod(0o755)
    err = capsys.readouterr().err
    assert rc == 2 and str(run / "dse") in err and "--out" in err


def test_unwritable_output_folder_names_the_folder_and_out(tmp_path, capsys):
    """A file where the output folder should be: the same path as a read-only folder, testable as root."""
    from dsekit.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint0001.pth").write_bytes(b"x")
    (tmp_path / "blocked").write_text("a file, not a folder")
    rc = main(["scan", str(run), "--method", "dino", "--quiet", "--out", str(tmp_path / "blocked" / "dse")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot write to the output folder" in err and "--out" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["train", "--method", "mocov3", "--epochs", "1"], ["demo", "--quick"]])
def test_train_and_demo_refuse_an_unwritable_output_folder_before_any_work(tmp_path, capsys, command):
    from dsekit.cli import main

    (tmp_path / "blocked").write_text("a file, not a folder")
    out = tmp_path / "blocked" / "run"
    rc = main([*command, "--out", str(out), "--quiet"] if command[0] == "demo" else [*command, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot write to the output folder" in err and str(tmp_path / "blocked") in err
    assert "--out" in err and "Traceback" not in err


def test_report_names_the_file_it_cannot_write(dino_scan, tmp_path, capsys):
    from dsekit.cli import main

    cfg, _, _ = dino_scan
    out = tmp_path / "out"
    shutil.copytree(cfg.out_dir, out)
    (out / "probe.csv").write_text(
        "checkpoint,epoch,dataset,miou\n"
        + "".join(
            f"{r['checkpoint']},{r['epoch']},scenes,0.{i + 1}\n"
            for i, r in enumerate(csv.DictReader(open(out / "dse.csv")))
        )
    )
    (out / "report.json").mkdir()  # something in the way of the report
    rc = main(["report", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "report.json" in err and "Traceback" not in err


def test_partial_weights_are_marked_in_dse_csv_probe_csv_and_the_report(tmp_path):
    from dsekit.backbones import create_backbone
    from dsekit.cli import main
    from dsekit.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    for ep, drop in ((1, False), (2, True)):
        m = create_backbone("vit_small_patch16_224", img_size=32, depth=1)
        sd = {"backbone." + k: v for k, v in m.state_dict().items()}
        if drop:
            del sd["backbone.blocks.0.mlp.fc2.weight"]
        torch.save({"teacher": sd, "student": sd, "epoch": ep}, run / f"checkpoint{ep:04d}.pth")
    out = tmp_path / "out"
    common = [
        "--method",
        "dino",
        "--model-kwarg",
        "depth=1",
        "--image-size",
        "32",
        "--allow-partial",
        "--quiet",
        "--out",
        str(out),
    ]
    with pytest.warns(UserWarning, match="missing keys"):
        assert (
            main(
                [
                    "scan",
                    str(run),
                    *common,
                    "--num-images",
                    "8",
                    "--local-clusters",
                    "2",
                    "--global-clusters",
                    "4",
                    "--images-per-group",
                    "2",
                    "--intervals",
                    "2",
                ]
            )
            == 0
        )
    with pytest.warns(UserWarning, match="missing keys"):
        assert (
            main(
                [
                    "probe",
                    str(run),
                    *common,
                    "--dataset",
                    "scenes",
                    "--num-train",
                    "4",
                    "--num-val",
                    "4",
                    "--epochs",
                    "1",
                ]
            )
            == 0
        )
    for name in ("dse.csv", "probe.csv"):
        _, rows = _read_csv(out / name)
        assert [r["partial"] for r in rows] == ["", "yes"], name
    report = write_report(out)
    assert report["partial_checkpoints"] == [str(run / "checkpoint0002.pth")]
    assert "Partial weights" in (out / "report.md").read_text()


def test_changed_content_is_never_served_from_the_cache(tmp_path):
    """An image rewritten in place with the same size, or a checkpoint changed in its middle, is scored anew."""
    from PIL import Image

    from dsekit.backbones import create_backbone

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"i{i}.bmp")
    run = tmp_path / "run"
    run.mkdir()
    m = create_backbone("vit_small_patch16_224", img_size=32, depth=1)
    sd = {"backbone." + k: v for k, v in m.state_dict().items()}
    torch.save({"teacher": sd, "student": sd, "epoch": 1}, run / "checkpoint0001.pth")
    cfg = ScanConfig(
        str(run),
        "dino",
        model_kwargs={"depth": 1},
        num_images=8,
        image_size=32,
        local_clusters=2,
        global_clusters=4,
        images_per_group=4,
        images=str(images),
        out=str(tmp_path / "out"),
        intervals=0,
    )
    first = scan(cfg, progress=False)
    assert first.computed == 1 and scan(cfg, progress=False).computed == 0  # unchanged: reused
    # an image rewritten in place: same name, same size (BMP), other pixels
    size = (images / "i3.bmp").stat().st_size
    Image.fromarray(255 - np.asarray(Image.open(images / "i3.bmp"))).save(images / "i3.bmp")
    assert (images / "i3.bmp").stat().st_size == size
    again = scan(cfg, progress=False)
    assert again.computed == 1 and again.results[0].terms != first.results[0].terms
    assert scan(cfg, progress=False).computed == 0
    # a checkpoint changed in its middle, size unchanged
    data = bytearray((run / "checkpoint0001.pth").read_bytes())
    sd["backbone.blocks.0.mlp.fc1.weight"] = sd["backbone.blocks.0.mlp.fc1.weight"] * 2
    torch.save({"teacher": sd, "student": sd, "epoch": 1}, run / "checkpoint0001.pth")
    assert len(data) == (run / "checkpoint0001.pth").stat().st_size
    assert scan(cfg, progress=False).computed == 1
