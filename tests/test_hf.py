"""Hugging Face ``transformers`` folders (``save_pretrained`` of random-weight models): base and
task models, safetensors and ``pytorch_model.bin``, ``Trainer`` runs, read offline and compared
with the model's own ``last_hidden_state`` (patch part) to 1e-4; the errors a user meets."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from dsekit.backbones import CheckpointError, FeatureExtractor, discover_checkpoints, load_backbone  # noqa: E402
from dsekit.backbones.detect import detect_checkpoint  # noqa: E402
from dsekit.backbones.hf import MODEL_TYPES  # noqa: E402

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TYPES = {
    "dinov2": (transformers.Dinov2Config, {"image_size": 56, "patch_size": 14}),
    "dinov2_with_registers": (
        transformers.Dinov2WithRegistersConfig,
        {"image_size": 56, "patch_size": 14, "num_register_tokens": 4},
    ),
    "dinov3_vit": (transformers.DINOv3ViTConfig, {"image_size": 64, "patch_size": 16, "num_register_tokens": 4}),
    "vit": (transformers.ViTConfig, {"image_size": 64, "patch_size": 16}),
    "vit_mae": (transformers.ViTMAEConfig, {"image_size": 64, "patch_size": 16, "mask_ratio": 0.0}),
    "ijepa": (transformers.IJepaConfig, {"image_size": 64, "patch_size": 16}),
}
TASKS = {
    "dinov2": "Dinov2ForImageClassification",
    "vit": "ViTForImageClassification",
    "vit_mae": "ViTMAEForPreTraining",
}


def _save(folder: Path, model_type: str, task: str | None = None, seed: int = 0) -> Path:
    cls, kw = TYPES[model_type]
    config = cls(**SMALL, **kw)
    model_class = getattr(transformers, task) if task else transformers.AutoModel._model_mapping[cls]
    torch.manual_seed(seed)
    model = model_class(config)
    model.save_pretrained(folder)
    return folder


def _reference(folder: Path, model_type: str, x: torch.Tensor, hidden_layer: int | None = None) -> torch.Tensor:
    """The model's own output: ``last_hidden_state`` (or a hidden state after the final norm),
    class and register tokens dropped; MAE without masking (mask_ratio 0, identity noise)."""
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
    cfg = model.config
    kw: dict = {}
    if model_type == "vit_mae":
        n = (x.shape[-1] // cfg.patch_size) ** 2
        kw["noise"] = torch.arange(n).float().expand(x.shape[0], n)
    if model_type in ("vit", "vit_mae", "ijepa") and x.shape[-1] != cfg.image_size:
        kw["interpolate_pos_encoding"] = True
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=hidden_layer is not None, **kw)
        t = (
            out.last_hidden_state
            if hidden_layer is None
            else getattr(model, MODEL_TYPES[model_type].norm)(out.hidden_states[hidden_layer + 1])
        )
    prefix = (0 if model_type == "ijepa" else 1) + int(getattr(cfg, "num_register_tokens", 0) or 0)
    return t[:, prefix:]


def _features(folder: Path, size: int, layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    model = load_backbone(folder, "hf", img_size=size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return FeatureExtractor(model, layer)(x), x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Nothing here may reach a hub: any connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("model_type", sorted(TYPES))
def test_base_model_folders_equal_the_models_own_tokens(tmp_path, model_type):
    folder = _save(tmp_path / model_type, model_type)
    native = TYPES[model_type][1]["image_size"]
    for size in (native, native + 2 * TYPES[model_type][1]["patch_size"]):
        got, x = _features(folder, size)
        ref = _reference(folder, model_type, x)
        assert got.shape == ref.shape
        assert _rel(got, ref) < 1e-4
    assert detect_checkpoint(folder).method == "hf"


@pytest.mark.parametrize("model_type", sorted(TASKS))
def test_task_model_folders_read_their_backbone(tmp_path, model_type):
    """A folder saved from a task model (classifier, MAE's decoder): the backbone under its
    prefix is read and the heads left out."""
    folder = _save(tmp_path / model_type, model_type, TASKS[model_type])
    got, x = _features(folder, TYPES[model_type][1]["image_size"])
    assert _rel(got, _reference(folder, model_type, x)) < 1e-4


def test_intermediate_blocks_after_the_final_norm(tmp_path):
    folder = _save(tmp_path / "m", "dinov2_with_registers")
    for layer in (0, 1):
        got, x = _features(folder, 56, layer)
        assert _rel(got, _reference(folder, "dinov2_with_registers", x, hidden_layer=layer)) < 1e-4


def test_pytorch_model_bin_is_read_weights_only(tmp_path):
    from safetensors.torch import load_file

    folder = _save(tmp_path / "m", "dinov2")
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    got, x = _features(folder, 56)
    assert _rel(got, _reference(folder, "dinov2", x)) < 1e-4


def test_trainer_run_is_found_by_step_and_scanned(tmp_path):
    """checkpoint-<step>/ folders (model, optimizer, trainer_state.json) -> steps; dse.csv
    counts them in a ``step`` column; the training state is not part of the identity."""
    run = tmp_path / "run"
    for step in (100, 200):
        folder = _save(run / f"checkpoint-{step}", "vit", seed=step)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (folder / "optimizer.pt").write_bytes(b"not read")
    assert [s for _, s in discover_checkpoints(run, "hf")] == [100, 200]
    from dsekit.scan import ScanConfig, scan

    result = scan(ScanConfig(str(run), "auto", num_images=8, image_size=64, intervals=0), progress=False)
    assert result.ok and result.computed == 2
    header = (run / "dse" / "dse.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["checkpoint", "step"]
    (run / "checkpoint-200" / "optimizer.pt").write_bytes(b"changed, still not weights")
    again = scan(ScanConfig(str(run), "auto", num_images=8, image_size=64, intervals=0), progress=False)
    assert again.computed == 0


def test_a_single_model_folder_is_a_run_of_one(tmp_path):
    folder = _save(tmp_path / "m", "ijepa")
    assert discover_checkpoints(folder, "hf") == [(folder, None)]


def test_unknown_model_type_is_named(tmp_path):
    folder = _save(tmp_path / "m", "vit")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "swin"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model_type 'swin' is not one --method hf reads; supported: dinov2"):
        load_backbone(folder, "hf", img_size=64)


def test_a_folder_with_a_task_head_only_is_refused(tmp_path):
    from safetensors.torch import save_file

    folder = _save(tmp_path / "m", "vit", "ViTForImageClassification")
    save_file(
        {"classifier.weight": torch.zeros(2, 32), "classifier.bias": torch.zeros(2)}, str(folder / "model.safetensors")
    )
    with pytest.raises(CheckpointError, match="task head only"):
        load_backbone(folder, "hf", img_size=64)
    with pytest.raises(CheckpointError, match="task head only"):
        detect_checkpoint(folder, methods=["hf"])


def test_without_transformers_the_extra_is_named(tmp_path, monkeypatch):
    import sys

    folder = _save(tmp_path / "m", "vit")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r'pip install "dsekit\[hf\]"'):
        load_backbone(folder, "hf", img_size=64)


@pytest.mark.parametrize("case", ["unknown type", "head only", "no transformers"])
def test_errors_are_one_line_at_the_command_line(tmp_path, capsys, monkeypatch, case):
    import sys

    from dsekit.cli import main

    folder = _save(tmp_path / "m", "vit", "ViTForImageClassification")
    if case == "unknown type":
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "swin"}))
        expected = "model_type 'swin'"
    elif case == "head only":
        from safetensors.torch import save_file

        save_file({"classifier.weight": torch.zeros(2, 32)}, str(folder / "model.safetensors"))
        expected = "task head only"
    else:
        monkeypatch.setitem(sys.modules, "transformers", None)
        expected = 'pip install "dsekit[hf]"'
    code = main(["scan", str(folder), "--method", "hf", "--image-size", "64", "--num-images", "4", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (1, 2) and expected in "\n".join(err) and "Traceback" not in "\n".join(err)
