"""Only the backbone's tensors are materialised: backbones built without weights (parameters on
the meta device), the checkpoint's memory-mapped tensors assigned to them (no copy), the heads
never read, models the file does not fill built with weights, and a checkpoint written while it
is scored not cached. The memory figure itself is measured by ``bench/checkpoint_memory.py``."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from dsekit.backbones import (
    CheckpointKeyError,
    FeatureExtractor,
    PartialLoadWarning,
    create_backbone,
    load_backbone,
    load_into,
    output_shapes,
)
from dsekit.backbones.extract import meta_tensors
from dsekit.scan import ScanConfig, scan
from test_scan import ARCH, DEPTH, IMG, _dino_checkpoint, _vit, _write_dino


def _file_backed(t: torch.Tensor, path: Path) -> bool:
    """Whether ``t``'s memory lies in a mapping of the file ``path`` (Linux: /proc/self/maps)."""
    addr, real = t.data_ptr(), str(path.resolve())
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= addr < hi:
            return len(parts) == 6 and parts[5].strip() == real
    return False


linux_only = pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc/self/maps")


def test_an_empty_backbone_has_no_parameter_memory_but_real_buffers_and_known_shapes():
    model = create_backbone("vit_small_patch16_rope_224", img_size=64, depth=2, empty=True)
    assert all(p.is_meta for p in model.parameters())
    assert meta_tensors(model) and not any(b.is_meta for b in model.buffers())  # RoPE tables computed
    real = create_backbone("vit_small_patch16_rope_224", img_size=64, depth=2, init_weights=False)
    x = torch.zeros(2, 3, 64, 64)
    for layers in ([-1], [0, 1]):
        got = output_shapes(FeatureExtractor(model, layers=layers), x)
        assert got == output_shapes(FeatureExtractor(real, layers=layers), x)
    assert output_shapes(FeatureExtractor(real), x) == [torch.Size([2, 16, 384])]
    assert all(p.is_meta for p in model.parameters())  # the shapes were read off a meta copy


@linux_only
def test_a_loaded_backbone_is_the_checkpoints_own_pages_and_the_heads_are_never_touched(tmp_path):
    path = _write_dino(tmp_path, 0, seed=3)
    model = load_backbone(path, "dino", ARCH, model_kwargs={"depth": DEPTH}, img_size=IMG)
    assert not meta_tensors(model)
    params = dict(model.named_parameters())
    assert all(_file_backed(p, path) for p in params.values())  # no copy: the file's mapped pages
    expected = _dino_checkpoint(_vit(3), 0)["teacher"]
    for k, p in params.items():
        assert torch.equal(p, expected[f"backbone.{k}"]), k
    assert all(p.requires_grad for p in params.values())  # as a built model's
    x = torch.randn(2, 3, IMG, IMG)
    torch.testing.assert_close(FeatureExtractor(model)(x), FeatureExtractor(_vit(3))(x))


@linux_only
def test_the_shared_model_of_a_sweep_takes_each_checkpoints_tensors_in_turn(tmp_path):
    a, b = _write_dino(tmp_path, 0, seed=1), _write_dino(tmp_path, 1, seed=2)
    shared = create_backbone(ARCH, img_size=IMG, depth=DEPTH, empty=True)
    for path, seed in ((a, 1), (b, 2)):
        got = load_backbone(path, "dino", shared, assign=True)
        assert got is shared and all(_file_backed(p, path) for p in shared.parameters())
        x = torch.randn(1, 3, IMG, IMG)
        torch.testing.assert_close(FeatureExtractor(shared)(x), FeatureExtractor(_vit(seed))(x))


@linux_only
def test_a_file_its_training_rewrites_each_epoch_is_read_whole_the_others_mapped(tmp_path, monkeypatch):
    import shutil

    net = create_backbone("resnet18", init_weights=True)
    torch.save({"model": {f"backbone.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, tmp_path / "model.pth")
    shutil.copy(tmp_path / "model.pth", tmp_path / "model_3.pth")  # a copy kept per epoch: never rewritten
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("mmap", False)) or real(*a, **k))
    live = load_backbone(tmp_path / "model.pth", "vicreg", "resnet18")  # VICReg's script rewrites it each epoch
    kept = load_backbone(tmp_path / "model_3.pth", "vicreg", "resnet18")
    assert calls == [False, True]
    assert not any(_file_backed(p, tmp_path / "model.pth") for p in live.parameters())
    assert all(_file_backed(p, tmp_path / "model_3.pth") for p in kept.parameters())
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(FeatureExtractor(live)(x), FeatureExtractor(net)(x))


def test_a_ready_model_is_copied_into_unless_assign_is_asked_for():
    src = _vit(5)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    model = _vit(6)
    before = model.patch_embed.proj.weight
    load_into(model, sd)
    assert model.patch_embed.proj.weight is before and torch.equal(before, sd["patch_embed.proj.weight"])
    assert before.data_ptr() != sd["patch_embed.proj.weight"].data_ptr()  # copied: the caller's tensors stay theirs
    load_into(model, sd, assign=True)
    assert model.patch_embed.proj.weight.data_ptr() == sd["patch_embed.proj.weight"].data_ptr()
    assert isinstance(model.patch_embed.proj.weight, nn.Parameter)


def test_half_precision_checkpoints_become_the_models_float32():
    sd = {k: v.half() for k, v in _vit(7).state_dict().items()}
    model = create_backbone(ARCH, img_size=IMG, depth=DEPTH, empty=True)
    load_into(model, sd)
    assert not meta_tensors(model) and {p.dtype for p in model.parameters()} == {torch.float32}
    torch.testing.assert_close(model.patch_embed.proj.weight, sd["patch_embed.proj.weight"].float())


def test_an_empty_model_refuses_a_partial_state_dict_naming_the_keys():
    sd = _vit(1).state_dict()
    del sd["norm.weight"]
    model = create_backbone(ARCH, img_size=IMG, depth=DEPTH, empty=True)
    with pytest.raises(CheckpointKeyError):
        load_into(model, sd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialLoadWarning)
        with pytest.raises(ValueError, match=r"norm\.weight") as err:
            load_into(model, sd, allow_partial=True)
    assert "built without weights" in str(err.value)


def test_a_partial_checkpoint_is_loaded_into_a_model_built_with_weights(tmp_path):
    ckpt = _dino_checkpoint(_vit(2), 0)
    del ckpt["teacher"]["backbone.norm.weight"]
    torch.save(ckpt, tmp_path / "checkpoint0.pth")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_backbone(
            tmp_path / "checkpoint0.pth", "dino", ARCH, model_kwargs={"depth": DEPTH}, img_size=IMG, allow_partial=True
        )
    assert [str(w.message).count("norm.weight") for w in caught if w.category is PartialLoadWarning] == [1]
    assert not meta_tensors(model)
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))  # PyTorch's own initial value
    assert torch.equal(model.norm.bias, ckpt["teacher"]["backbone.norm.bias"])


def test_a_swin_whose_masks_need_weights_is_built_with_them(tmp_path):
    arch, kw = "swin_tiny_patch4_window7_224", {"depths": (2, 2), "num_heads": (2, 4), "embed_dim": 32}
    src = create_backbone(arch, img_size=56, init_weights=True, **kw)
    torch.save(src.state_dict(), tmp_path / "model.pth")
    model = load_backbone(tmp_path / "model.pth", "timm", arch, model_kwargs=kw, img_size=56)
    assert not meta_tensors(model)
    x = torch.randn(1, 3, 56, 56)
    torch.testing.assert_close(FeatureExtractor(model)(x), FeatureExtractor(src)(x))


def test_a_checkpoint_written_while_it_is_scored_is_not_cached_and_is_scored_on_the_rerun(tmp_path, monkeypatch):
    import dsekit.scan as scan_mod

    run = tmp_path / "run"
    run.mkdir()
    for ep, seed in ((0, 1), (1, 2)):
        _write_dino(run, ep, seed)
    cfg = ScanConfig(
        str(run),
        "dino",
        arch=ARCH,
        model_kwargs={"depth": DEPTH},
        image_size=IMG,
        num_images=8,
        out=str(tmp_path / "o"),
    )
    real = scan_mod._score_checkpoint

    def rewritten_meanwhile(cfg, path, *args, **kwargs):
        out = real(cfg, path, *args, **kwargs)
        if path.name == "checkpoint1.pth":
            torch.save(_dino_checkpoint(_vit(9), 1), path)  # a run saving in place
        return out

    monkeypatch.setattr(scan_mod, "_score_checkpoint", rewritten_meanwhile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = scan(cfg, progress=False)
    status = {Path(r.checkpoint).name: r.status for r in first.results}
    assert status == {"checkpoint0.pth": "ok", "checkpoint1.pth": "failed"}
    failed = [r for r in first.results if r.status == "failed"][0]
    assert "was written while it was read" in failed.error and "run the same command again" in failed.error
    cache = Path(cfg.out) / "cache"
    assert not [p for p in cache.glob("checkpoint1.*.json") if not p.name.endswith(".failed.json")]
    monkeypatch.setattr(scan_mod, "_score_checkpoint", real)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second = scan(cfg, progress=False)
    assert [r.status for r in second.results] == ["ok", "ok"]
    assert json.loads((Path(cfg.out) / "run.json").read_text())  # the run's record was written


def test_the_memory_benchmark_runs_on_a_tiny_checkpoint(tmp_path):
    import subprocess

    bench = Path(__file__).resolve().parents[1] / "bench" / "checkpoint_memory.py"
    proc = subprocess.run(
        [sys.executable, str(bench), "--work", str(tmp_path), "--inputs", "tiny", "--json", str(tmp_path / "m.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (row,) = json.loads((tmp_path / "m.json").read_text())["rows"]
    assert row["scan_ok"] and row["scan"]["rc"] == 0 and row["whole_read"]["rc"] == 0
    assert row["file_bytes"] > row["backbone_bytes"] > 0  # the heads are in the file, not in the backbone
    assert row["scan"]["peak_rss"] > 0 and row["met"] == (row["scan"]["peak_rss"] <= row["target_bytes"])
    assert "scan peak GB" in proc.stdout and "target: backbone + 1.5 GB" in proc.stdout
    assert not (tmp_path / "tiny" / "eval" / "training_12499" / "teacher_checkpoint.pth").exists()  # removed
