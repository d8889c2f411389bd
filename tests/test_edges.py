"""The edges: small image samples, bad devices and seeds, damaged tables, foreign keys in
``dsekit.json``, memory-mapped checkpoints."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from dsekit.cli import main
from dsekit.metrics.intervals import half_sample_problem
from dsekit.scan import ScanConfig, scan
from test_scan import ARCH, DEPTH, IMG, _write_dino


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("edges_run")
    for ep, seed in ((0, 1), (1, 2)):
        _write_dino(run, ep, seed)
    return run


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------------
# 1. a sample too small for the intervals keeps its DSE
# --------------------------------------------------------------------------------------------------


def test_a_sample_too_small_for_half_samples_keeps_every_dse_and_says_why_once(two_checkpoints, tmp_path):
    # 4 images x 9 patches: DSE's 24 global clusters fit the whole sample (36 patches), not a half (18)
    cfg = ScanConfig(
        str(two_checkpoints),
        "dino",
        arch=ARCH,
        model_kwargs={"depth": DEPTH},
        image_size=IMG,
        num_images=4,
        out=str(tmp_path / "out"),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        result = scan(cfg, progress=False)
    rows = _rows(result.out_dir / "dse.csv")
    assert len(rows) == 2 and all(float(r["dse"]) == float(r["dse"]) for r in rows)
    assert all(r["dse_low"] == "" and r["dse_high"] == "" for r in rows)
    said = [str(w.message) for w in caught if "half-sample intervals" in str(w.message)]
    assert len(set(said)) == 1, said
    assert "4 images x 9 patches" in said[0] and "6 images or more allow them" in said[0]


def test_the_smallest_sample_named_allows_the_intervals():
    cfg = ScanConfig("run", "dino")
    msg = half_sample_problem(4, 9, cfg.dse_settings, cfg.dse_batch_size)
    assert msg is not None and "6 images or more" in msg
    assert half_sample_problem(6, 9, cfg.dse_settings, cfg.dse_batch_size) is None  # 3 images x 9 patches >= 24
    assert half_sample_problem(3, 196, cfg.dse_settings, 1024) is not None  # fewer than 4 images: no half-samples
    assert "4 images or more" in half_sample_problem(3, 196, cfg.dse_settings, 1024)


def test_a_probe_and_report_on_one_validation_image_keep_miou_without_intervals(two_checkpoints, tmp_path):
    out = tmp_path / "out"
    common = ["--method", "dino", "--model-kwarg", f"depth={DEPTH}", "--image-size", str(IMG), "--out", str(out)]
    assert main(["scan", str(two_checkpoints), *common, "--num-images", "8", "--quiet"]) == 0
    probe_args = ["--dataset", "scenes", "--num-train", "4", "--num-val", "1", "--epochs", "1", "--quiet"]
    with pytest.warns(UserWarning, match="1 validation image"):  # the probe writes the report too
        assert main(["probe", str(two_checkpoints), *common, *probe_args]) == 0
    rows = _rows(out / "probe.csv")
    assert len(rows) == 2 and all(0 <= float(r["miou"]) <= 1 and r["miou_low"] == "" for r in rows)
    with pytest.warns(UserWarning, match="1 validation image"):
        assert main(["report", str(out)]) == 0
    entry = json.loads((out / "report.json").read_text())["datasets"]["scenes"]
    assert len(entry["miou"]) == 2 and all(v is None for v in entry["miou_low"])


# --------------------------------------------------------------------------------------------------
# 2. devices and seeds: one line, exit 2, naming the option
# --------------------------------------------------------------------------------------------------

COMMANDS = {
    "dse": lambda run, out: ["dse", str(out / "f.npy")],
    "scan": lambda run, out: ["scan", str(run), "--method", "dino", "--out", str(out)],
    "probe": lambda run, out: ["probe", str(run), "--method", "dino", "--dataset", "scenes", "--out", str(out)],
    "train": lambda run, out: ["train", "--method", "dino", "--out", str(out / "t")],
    "demo": lambda run, out: ["demo", "--quick", "--out", str(out / "d")],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("device", ["banana", "cuda:7", "cuda"])
def test_every_command_refuses_a_bad_device_in_one_line(command, device, two_checkpoints, tmp_path, capsys):
    if device.startswith("cuda") and torch.cuda.is_available() and device == "cuda":
        pytest.skip("CUDA is available here")
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("a machine with 8 GPUs")
    assert main([*COMMANDS[command](two_checkpoints, tmp_path), "--device", device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dsekit {command}: error: --device: '{device}'"), err
    assert not (tmp_path / "t").exists() and not (tmp_path / "d").exists()  # nothing started


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**70)])
def test_every_command_checks_the_seed_range(command, seed, two_checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*COMMANDS[command](two_checkpoints, tmp_path), "--seed", seed])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --seed: expected an integer in [0, 2**63 - 1]" in err


def test_the_api_checks_the_seed_range():
    from dsekit import dse

    with pytest.raises(
        ValueError, match=r"seed: expected an integer in \[0, 2\*\*63 - 1\], got 1180591620717411303424"
    ):
        dse(torch.randn(8, 16, 8), seed=2**70)
    feats = torch.randn(8, 16, 8, generator=torch.Generator().manual_seed(0))
    top = dse(feats, global_clusters=4, seed=2**63 - 1)  # the largest seed is accepted, and is a seed
    assert top.dse_raw == dse(feats, global_clusters=4, seed=2**63 - 1).dse_raw and math.isfinite(top.dse_raw)


# --------------------------------------------------------------------------------------------------
# 3. the report checks the tables it reads
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored(two_checkpoints, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scored") / "out"
    common = ["--method", "dino", "--model-kwarg", f"depth={DEPTH}", "--image-size", str(IMG), "--out", str(out)]
    assert main(["scan", str(two_checkpoints), *common, "--num-images", "8", "--quiet"]) == 0
    probe = ["--dataset", "scenes", "--num-train", "4", "--num-val", "4", "--epochs", "1", "--quiet"]
    assert main(["probe", str(two_checkpoints), *common, *probe]) == 0
    return out


def _damaged(scored: Path, tmp_path: Path, name: str, edit) -> Path:
    out = tmp_path / "out"
    shutil.copytree(scored, out)
    path = out / name
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    return out


def _cell(lines: list[str], row: int, column: str, value: str) -> list[str]:
    header = lines[0].split(",")
    cells = lines[row].split(",")
    cells[header.index(column)] = value
    return [*lines[:row], ",".join(cells), *lines[row + 1 :]]


DAMAGE = {
    "nan dse": ("dse.csv", lambda ls: _cell(ls, 2, "dse", "nan"), r"dse.csv, line 3, column 'dse': expected a finite"),
    "empty term": (
        "dse.csv",
        lambda ls: _cell(ls, 1, "effective_dimensionality", ""),
        r"line 2, column 'effective_dimensionality': expected a finite number, got ''",
    ),
    "nul byte": ("dse.csv", lambda ls: _cell(ls, 1, "dse_raw", "1.0\x00\x00"), r"line 2, column 'dse_raw': a NUL"),
    "short row": (
        "dse.csv",
        lambda ls: [*ls[:2], ",".join(ls[2].split(",")[:5])],
        r"line 3, column '.*': the row ends",
    ),
    "long row": ("dse.csv", lambda ls: [*ls[:2], ls[2] + ",1,2"], r"dse.csv, line 3: more values than the header"),
    "unknown column": (
        "dse.csv",
        lambda ls: [ls[0] + ",mystery", *(x + ",1" for x in ls[1:])],
        r"dse.csv, line 1, column 'mystery': not a column",
    ),
    "nan miou": ("probe.csv", lambda ls: _cell(ls, 1, "miou", "nan"), r"probe.csv, line 2, column 'miou'"),
    "probe nul": (
        "probe.csv",
        lambda ls: _cell(ls, 2, "dataset", "sce\x00nes"),
        r"probe.csv, line 3, column 'dataset'",
    ),
    "probe unknown": (
        "probe.csv",
        lambda ls: [ls[0] + ",extra", *(x + ",1" for x in ls[1:])],
        r"probe.csv, line 1, column 'extra'",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_the_report_refuses_damaged_tables_naming_file_line_and_column(damage, scored, tmp_path, capsys):
    name, edit, message = DAMAGE[damage]
    out = _damaged(scored, tmp_path, name, edit)
    before = (out / "report.json").read_bytes()
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert (out / "report.json").read_bytes() == before  # the earlier report is left as it was


def test_the_undamaged_tables_report(scored, tmp_path):
    out = _damaged(scored, tmp_path, "dse.csv", lambda ls: ls)
    assert main(["report", str(out)]) == 0


# --------------------------------------------------------------------------------------------------
# 4. dsekit.json: only what dsekit train writes there
# --------------------------------------------------------------------------------------------------

GOOD_INFO = {
    "method": "dino",
    "arch": ARCH,
    "model_kwargs": {"depth": DEPTH},
    "image_size": IMG,
    "patch_size": 16,
    "scan_config": {"method": "dino", "arch": ARCH, "model_kwargs": {"depth": DEPTH}, "image_size": IMG},
    "settings": {"method": "dino", "epochs": 2, "model_kwargs": {"depth": DEPTH}},
}
BAD_INFO = {
    "checkpoint_path": (
        {"model_kwargs": {"depth": DEPTH, "checkpoint_path": "evil.pth"}},
        r"model_kwargs\.checkpoint_path",
    ),
    "pretrained_cfg_overlay": ({"model_kwargs": {"pretrained_cfg_overlay": {"file": "x"}}}, "pretrained_cfg_overlay"),
    "path value": ({"model_kwargs": {"depth": DEPTH, "norm_layer": "/tmp/evil/layer"}}, r"norm_layer: '/tmp/evil"),
    "unknown key": ({"hooks": ["x"]}, r"key 'hooks' is not one dsekit train writes"),
    "settings key": ({"settings": {"method": "dino", "exec": "x"}}, r"settings: key 'exec'"),
    "scan_config key": ({"scan_config": {"arch": ARCH, "checkpoint": "x"}}, r"scan_config: key 'checkpoint'"),
    "scan_config kwargs": ({"scan_config": {"model_kwargs": {"checkpoint_path": "x"}}}, r"scan_config\.model_kwargs"),
    "wrong type": ({"image_size": "48"}, r"key 'image_size': expected int"),
    "not an object": ([1, 2], "expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_INFO))
def test_a_run_info_with_keys_dsekit_does_not_write_is_refused_naming_the_key(case, two_checkpoints, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    change, message = BAD_INFO[case]
    info = change if isinstance(change, list) else {**GOOD_INFO, **change}
    (run / "dsekit.json").write_text(json.dumps(info))
    args = ["scan", str(run), "--method", "dino", "--num-images", "8", "--out", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dsekit.json" in err[0] and re.search(message, err[0]), err
    assert not (tmp_path / "out" / "dse.csv").exists()


def test_a_run_info_as_dsekit_writes_it_is_read(two_checkpoints, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    (run / "dsekit.json").write_text(json.dumps(GOOD_INFO))
    assert (
        main(["scan", str(run), "--method", "dino", "--num-images", "8", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    )


# --------------------------------------------------------------------------------------------------
# 5. checkpoints are memory-mapped; safetensors read lazily
# --------------------------------------------------------------------------------------------------


def test_zip_checkpoints_are_memory_mapped_and_legacy_ones_still_read(tmp_path, monkeypatch):
    from dsekit.backbones.reading import read_checkpoint

    sd = {"w": torch.randn(4, 4), "b": torch.zeros(4)}
    torch.save(sd, tmp_path / "zip.pth")
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("mmap", False)) or real(*a, **k))
    for name in ("zip.pth", "legacy.pth"):
        got = read_checkpoint(tmp_path / name)
        assert torch.equal(got["w"], sd["w"]) and torch.equal(got["b"], sd["b"])
    assert calls == [True, False]  # the zip file mapped, the legacy one (torch cannot map it) read whole


def test_a_safetensors_checkpoint_is_read_lazily_tensor_by_tensor(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from dsekit.backbones import reading
    from dsekit.backbones.reading import LazyStateDict, read_checkpoint

    sd = {"backbone.w": torch.randn(3, 3), "head.w": torch.randn(5, 5)}
    save_file(sd, str(tmp_path / "m.safetensors"))
    lazy = read_checkpoint(tmp_path / "m.safetensors", lazy=True)
    assert isinstance(lazy, LazyStateDict) and sorted(lazy) == sorted(sd)
    read = []
    real = reading._read_tensors
    monkeypatch.setattr(reading, "_read_tensors", lambda f, names, t: read.extend(names) or real(f, names, t))
    assert torch.equal(lazy.load(["backbone.w"])["backbone.w"], sd["backbone.w"])
    assert read == ["backbone.w"]  # the head was never read
    eager = read_checkpoint(tmp_path / "m.safetensors")
    assert isinstance(eager, dict) and torch.equal(eager["head.w"], sd["head.w"])


# --------------------------------------------------------------------------------------------------
# 6. a full disk: an error naming the folder, the finished results kept, the rerun resumes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["scan", "probe"])
def test_a_full_disk_stops_with_the_folder_named_and_the_rerun_resumes(
    command, two_checkpoints, tmp_path, capsys, monkeypatch
):
    import errno

    import dsekit.sweep as sweep_mod

    out = tmp_path / "out"
    args = [command, str(two_checkpoints), "--method", "dino", "--model-kwarg", f"depth={DEPTH}"]
    args += ["--image-size", str(IMG), "--out", str(out), "--quiet"]
    args += (
        ["--num-images", "8"] if command == "scan" else ["--dataset", "scenes", "--num-train", "4", "--num-val", "2"]
    )
    real = sweep_mod.write_json_atomic
    writes: list[Path] = []

    def full_after_one(path, obj):
        if writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        writes.append(Path(path))
        real(path, obj)

    monkeypatch.setattr(sweep_mod, "write_json_atomic", full_after_one)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left to write the results in" in err[0] and str(out / "cache") in err[0], err
    assert len(writes) == 1 and writes[0].is_file() and json.loads(writes[0].read_text())["status"] == "ok"
    before = writes[0].stat().st_mtime_ns
    monkeypatch.setattr(sweep_mod, "write_json_atomic", real)
    assert main(args) == 0
    table = out / ("dse.csv" if command == "scan" else "probe.csv")
    assert len([r for r in _rows(table) if r.get("epoch") in ("0", "1")]) == 2
    assert writes[0].stat().st_mtime_ns == before  # the finished checkpoint was not scored again


# --------------------------------------------------------------------------------------------------
# 7. nothing written outside --out and the run folder (the temp folder cleaned on exit)
# --------------------------------------------------------------------------------------------------


def test_the_commands_write_only_to_out_and_clean_their_temp_folder(two_checkpoints, tmp_path):
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    home, tmp, cwd, out = (tmp_path / n for n in ("home", "tmp", "cwd", "out"))
    for d in (home, tmp, cwd):
        d.mkdir()
    env = {
        k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR", "XDG_CACHE_HOME")
    }
    env.update(HOME=str(home), TMPDIR=str(tmp), XDG_CONFIG_HOME=str(home / ".config"))
    common = ["--method", "dino", "--model-kwarg", f"depth={DEPTH}", "--image-size", str(IMG), "--out", str(out)]
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for args in (
        ["scan", str(run), *common, "--num-images", "8", "--quiet"],
        ["probe", str(run), *common, "--dataset", "scenes", "--num-train", "4", "--num-val", "2", "--quiet"],
        ["report", str(out)],
    ):
        done = subprocess.run([sys.executable, "-m", "dsekit", *args], cwd=cwd, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert (out / "dse.csv").is_file() and (out / "report.md").is_file()
    for d in (home, tmp, cwd):
        assert list(d.rglob("*")) == [], (d, list(d.rglob("*")))
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
