"""Patch features (B, N, d) from timm backbones and from any nn.Module with a user function."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from dsekit.backbones import (
    FeatureExtractor,
    backbone_recipe,
    create_backbone,
    extract_features,
    num_feature_layers,
    tokens_from_intermediate,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models run fastest (and steadiest on a busy 2-core machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(n: int, size: int, seed: int = 0) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _vit(**kw: object) -> nn.Module:
    return create_backbone("vit_small_patch16_224", **{"img_size": 32, "depth": 3, **kw})


def _manual_vit_tokens(model: nn.Module, x: Tensor, upto: int) -> Tensor:
    """Blocks 0..upto, then the final norm, prefix tokens removed (independent of forward_intermediates)."""
    with torch.no_grad():
        h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for blk in model.blocks[: upto + 1]:
            h = blk(h)
        return model.norm(h)[:, model.num_prefix_tokens :]


# --------------------------------------------------------------------------------------------------
# families
# --------------------------------------------------------------------------------------------------


def test_vit_last_block_after_final_norm_without_class_token() -> None:
    model = _vit()
    x = _images(3, 32)
    with torch.no_grad():
        z = FeatureExtractor(model)(x)
        ref = model.forward_features(x)[:, 1:]  # forward_features ends with the final norm
    assert z.shape == (3, 4, 384)
    assert torch.equal(z, ref)


def test_vit_register_tokens_are_dropped() -> None:
    model = _vit(reg_tokens=4)
    assert model.num_prefix_tokens == 5
    x = _images(2, 32)
    with torch.no_grad():
        z = FeatureExtractor(model)(x)
        ref = model.forward_features(x)[:, 5:]
    assert z.shape == (2, 4, 384) and torch.equal(z, ref)


def test_ijepa_style_vit_without_class_token() -> None:
    model = create_backbone(
        "vit_base_patch16_224", img_size=32, depth=1, class_token=False, global_pool="avg", fc_norm=False
    )
    assert model.num_prefix_tokens == 0 and not isinstance(model.norm, nn.Identity)
    x = _images(2, 32)
    with torch.no_grad():
        z = FeatureExtractor(model)(x)
        ref = model.forward_features(x)
    assert z.shape == (2, 4, 768) and torch.equal(z, ref)


@pytest.mark.parametrize(("patch", "size"), [(8, 48), (14, 28), (16, 64)])
def test_vit_any_patch_and_image_size(patch: int, size: int) -> None:
    model = create_backbone("vit_small_patch16_224", img_size=size, patch_size=patch, depth=1)
    z = FeatureExtractor(model)(_images(1, size))
    assert z.shape == (1, (size // patch) ** 2, 384)


def test_vit_layer_selection_matches_manual_forward() -> None:
    model = _vit()
    x = _images(2, 32)
    for layer, block in ((0, 0), (1, 1), (-1, 2), (-2, 1), (-3, 0)):
        with torch.no_grad():
            z = FeatureExtractor(model, layer=layer)(x)
        assert torch.allclose(z, _manual_vit_tokens(model, x, block), atol=1e-6), layer
    with torch.no_grad():
        assert not torch.allclose(FeatureExtractor(model, layer=0)(x), FeatureExtractor(model)(x))


def test_vit_norm_false_gives_raw_block_output() -> None:
    model = _vit()
    x = _images(2, 32)
    with torch.no_grad():
        raw = FeatureExtractor(model, norm=False)(x)
        normed = FeatureExtractor(model)(x)
    assert torch.allclose(model.norm(raw), normed, atol=1e-6)
    assert not torch.allclose(raw, normed)


def test_resnet50_last_stage_map() -> None:
    model = create_backbone("resnet50", layers=(1, 1, 1, 1), base_width=16)
    x = _images(2, 64)
    with torch.no_grad():
        z = FeatureExtractor(model)(x)
        fmap = model.forward_features(x)
    assert fmap.shape == (2, 2048, 2, 2)
    assert z.shape == (2, 4, 2048)
    # row-major: position n = i * w + j holds fmap[:, :, i, j]
    assert torch.equal(z[:, 1], fmap[:, :, 0, 1]) and torch.equal(z[:, 2], fmap[:, :, 1, 0])
    with torch.no_grad():
        z3 = FeatureExtractor(model, layer=-2)(x)  # layer3
    assert z3.shape == (2, 16, 1024)


def test_swin_last_stage_after_norm() -> None:
    model = create_backbone(
        "swin_tiny_patch4_window7_224",
        img_size=64,
        window_size=2,
        embed_dim=24,
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 3, 4),
    )
    x = _images(2, 64)
    with torch.no_grad():
        z = FeatureExtractor(model)(x)
        ref = model.forward_features(x)  # (B, h, w, C) after the final norm
        raw = FeatureExtractor(model, norm=False)(x)
    assert z.shape == (2, 4, 192)
    assert torch.equal(z, ref.flatten(1, 2))
    assert not torch.allclose(raw, z)
    assert num_feature_layers(model) == 4


def test_other_timm_model_convnext() -> None:
    model = create_backbone("convnext_atto")
    x = _images(1, 64)
    with torch.no_grad():
        z = FeatureExtractor(model)(x)
        ref = model.forward_features(x)
    assert z.shape == (1, 4, 320)
    assert torch.equal(z, ref.flatten(2).transpose(1, 2))


# --------------------------------------------------------------------------------------------------
# user functions and errors
# --------------------------------------------------------------------------------------------------


class _TinyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, kernel_size=4, stride=4)

    def forward(self, x: Tensor) -> Tensor:
        return self.stem(x).mean((2, 3))


def test_any_module_with_user_function() -> None:
    net = _TinyConvNet().eval()
    ext = FeatureExtractor(net, fn=lambda m, x: m.stem(x).flatten(2).transpose(1, 2))
    x = _images(2, 16)
    with torch.no_grad():
        z = ext(x)
    assert z.shape == (2, 16, 8)
    assert torch.equal(z, net.stem(x).flatten(2).transpose(1, 2).detach())
    assert ext.uses_fn


def test_user_function_with_wrong_output_is_rejected() -> None:
    net = _TinyConvNet()
    with pytest.raises(ValueError, match=r"fn\(model, images\) must return features of shape"):
        FeatureExtractor(net, fn=lambda m, x: m(x))(_images(2, 16))
    with pytest.raises(TypeError, match="torch.Tensor"):
        FeatureExtractor(net, fn=lambda m, x: [m(x)])(_images(2, 16))


def test_module_without_forward_intermediates_needs_fn() -> None:
    with pytest.raises(ValueError, match="forward_intermediates.*fn="):
        FeatureExtractor(_TinyConvNet())


def test_layer_out_of_range() -> None:
    model = _vit()
    with pytest.raises(ValueError, match=r"layer=3 is out of range.*-3 \.\. 2"):
        FeatureExtractor(model, layer=3)
    with pytest.raises(ValueError, match="layer=-4"):
        FeatureExtractor(model, layer=-4)
    with pytest.raises(TypeError, match="layer must be an int"):
        FeatureExtractor(model, layer=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.randn(3, 32, 32), "shape"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "float"),
        (torch.zeros(0, 3, 32, 32), "empty"),
    ],
)
def test_bad_images(images: Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FeatureExtractor(_vit(depth=1))(images)


def test_tokens_from_intermediate() -> None:
    fmap = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    z = tokens_from_intermediate(fmap)
    assert z.shape == (2, 4, 3) and torch.equal(z[0, 3], fmap[0, :, 1, 1])
    tok = torch.randn(2, 5, 3)
    assert tokens_from_intermediate(tok) is tok
    with pytest.raises(ValueError, match="expected an intermediate"):
        tokens_from_intermediate(torch.randn(2, 3))


def test_create_backbone_errors() -> None:
    with pytest.raises(ValueError, match="unknown timm architecture 'vit_smal_patch16_224'.*vit_small_patch16_224"):
        create_backbone("vit_smal_patch16_224")
    with pytest.raises(ValueError, match="never downloads"):
        create_backbone("resnet50", pretrained=True)


def test_create_backbone_without_init_builds_the_same_architecture() -> None:
    a = create_backbone("vit_small_patch16_224", img_size=32, depth=1)
    b = create_backbone("vit_small_patch16_224", img_size=32, depth=1, init_weights=False)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert all(torch.isfinite(v).all() for v in b.state_dict().values())
    assert not a.training and not b.training


def test_create_backbone_passes_none_kwargs_and_keeps_its_recipe() -> None:
    """timm.create_model drops None-valued kwargs; ls_init_value=None (no layer scale) must reach ConvNeXt."""
    kw = {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)}
    with_ls = create_backbone("convnext_tiny", init_weights=False, **kw)
    without = create_backbone("convnext_tiny", init_weights=False, ls_init_value=None, head_norm_first=True, **kw)
    assert "stages.0.blocks.0.gamma" in with_ls.state_dict()
    assert not any("gamma" in k for k in without.state_dict()) and "norm_pre.weight" in without.state_dict()
    assert backbone_recipe(without) == {
        "arch": "convnext_tiny",
        "img_size": None,
        "init_weights": False,
        "empty": False,
        "kwargs": {**kw, "ls_init_value": None, "head_norm_first": True},
    }
    assert backbone_recipe(nn.Linear(2, 2)) is None


def test_convnext_final_norm_applies_only_where_the_model_puts_it_before_pooling() -> None:
    """timm's ConvNeXt normalises after pooling (its maps are the raw last stage); built with
    head_norm_first (VICRegL's order) the last stage's maps are read after that norm."""
    kw = {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32), "ls_init_value": None}
    model = create_backbone("convnext_tiny", head_norm_first=True, **kw)
    x = _images(2, 64)
    with torch.no_grad():
        last = model.stages(model.stem(x))
        z = FeatureExtractor(model)(x)
        raw = FeatureExtractor(model, norm=False)(x)
        earlier = FeatureExtractor(model, layer=2)(x)
    ref = nn.functional.layer_norm(last.permute(0, 2, 3, 1), (32,), model.norm_pre.weight, model.norm_pre.bias, 1e-6)
    assert torch.allclose(z, ref.flatten(1, 2), atol=1e-6)
    assert torch.equal(raw, last.flatten(2).transpose(1, 2))
    assert earlier.shape == (2, 16, 24)  # earlier stages: no final norm


# --------------------------------------------------------------------------------------------------
# batched extraction
# --------------------------------------------------------------------------------------------------


def test_extract_features_batches_agree_with_one_pass() -> None:
    model = _vit(depth=2)
    x = _images(7, 32)
    with torch.no_grad():
        ref = FeatureExtractor(model)(x)
    for bs in (1, 3, 7, 100):
        z = extract_features(FeatureExtractor(model), x, batch_size=bs)
        assert z.dtype == torch.float32 and z.device.type == "cpu" and not z.requires_grad
        assert z.shape == (7, 4, 384)
        assert torch.allclose(z, ref, atol=1e-5)


def test_extract_features_from_iterables_and_dataloader() -> None:
    model = _vit(depth=1)
    x = _images(5, 32)
    ref = extract_features(model, x, batch_size=5)  # a bare timm model is wrapped (last layer)
    from_list = extract_features(model, [x[:2], x[2:]], batch_size=4)
    loader = DataLoader(TensorDataset(x, torch.arange(5)), batch_size=2)
    from_loader = extract_features(model, loader, batch_size=8, progress=True)
    assert torch.allclose(from_list, ref, atol=1e-5)
    assert torch.allclose(from_loader, ref, atol=1e-5)


def test_extract_features_sets_eval_mode() -> None:
    model = create_backbone("resnet50", layers=(1, 1, 1, 1), base_width=16)
    x = _images(4, 64)
    with torch.no_grad():
        ref = FeatureExtractor(model)(x)
    model.train()  # batch statistics would change the output
    z = extract_features(FeatureExtractor(model), x, batch_size=2)
    assert not model.training
    assert torch.allclose(z, ref, atol=1e-5)


def test_extract_features_autocast_and_channels_last() -> None:
    model = create_backbone("resnet50", layers=(1, 1, 1, 1), base_width=16)
    x = _images(2, 64)
    ref = extract_features(model, x)
    cl = extract_features(model, x, channels_last=True)
    assert torch.allclose(cl, ref, atol=1e-4, rtol=1e-4)
    bf16 = extract_features(model, x, amp_dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32
    rel = (bf16 - ref).norm() / ref.norm()
    assert 0 < rel < 0.1


def test_extract_features_with_callable() -> None:
    x = _images(3, 16)
    z = extract_features(lambda imgs: imgs.flatten(2).transpose(1, 2)[:, :5], x, batch_size=2)
    assert torch.equal(z, x.flatten(2).transpose(1, 2)[:, :5])


def test_extract_features_errors() -> None:
    model = _vit(depth=1)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(model, _images(2, 32), batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        extract_features(model, [], batch_size=2)
    with pytest.raises(TypeError, match="batch 0 of images"):
        extract_features(model, ["not an image"], batch_size=2)
    with pytest.raises(TypeError, match="extractor must be"):
        extract_features(42, _images(2, 32))  # type: ignore[arg-type]
