"""``--method timm --arch NAME``: any timm model's state dict, in timm's own layout or in its
family's official layout through the family's timm ``checkpoint_filter_fn``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsekit.backbones import FeatureExtractor, create_backbone, load_backbone
from dsekit.scan import ScanConfig
from dsekit.sweep import build_model

from _weights import randomize

KW = {"depth": 2}
SIZES = {"vit_small_patch14_reg4_dinov2": 56, "eva02_tiny_patch14_224": 56, "vit_small_patch16_dinov3_qkvb": 64}


def _features(model: torch.nn.Module, size: int) -> torch.Tensor:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return FeatureExtractor(model)(x)


@pytest.mark.parametrize(
    "arch", ["vit_small_patch14_reg4_dinov2", "eva02_tiny_patch14_224", "vit_small_patch16_dinov3_qkvb"]
)
def test_timm_layout_loads_as_it_is(tmp_path, arch):
    size = SIZES[arch]
    src = randomize(create_backbone(arch, img_size=size, init_weights=False, **KW), 3)
    path = tmp_path / "model.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    loaded = load_backbone(path, "timm", arch, model_kwargs=KW, img_size=size)
    assert torch.equal(_features(loaded, size), _features(src, size))


def test_official_layout_goes_through_the_family_filter(tmp_path):
    """An official DINOv2 release file under --method timm: timm's filter maps it (timm's own
    position-embedding resampling; --method dinov2 reads it as the official code does)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    from test_dinov import dinov2_sd

    sd = dinov2_sd(regs=4)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(sd, path)
    arch, kw = "vit_small_patch14_reg4_dinov2", {"embed_dim": 128, "num_heads": 2, "depth": 2}
    loaded = load_backbone(path, "timm", arch, model_kwargs=kw, img_size=56)
    ref = create_backbone(arch, img_size=56, init_weights=False, **kw)
    ref.load_state_dict(checkpoint_filter_fn(dict(sd), ref))
    assert torch.equal(_features(loaded, 56), _features(ref, 56))


def test_timm_needs_an_architecture(tmp_path):
    with pytest.raises(ValueError, match="--method timm needs --arch"):
        build_model(ScanConfig(str(tmp_path), "timm"), Path(tmp_path / "x.pth"))
