"""Tests of the built-in scenes: determinism, content, split disjointness, on-disk layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsekit.data import scenes as sc
from dsekit.data.scenes import (
    IGNORE_INDEX,
    NUM_CLASSES,
    TEXTURES,
    SceneConfig,
    SceneDataset,
    class_names,
    digit_split_indices,
    generate_scenes,
    make_scenes,
    num_classes,
    read_scenes,
    texture_split_bounds,
    write_scenes,
)
from dsekit.data.scenes import sources as scene_sources

T = len(TEXTURES)
S = 64  # small scenes keep the tests fast


@pytest.fixture(scope="module")
def train64():
    return generate_scenes(24, "train", image_size=S, seed=0)


@pytest.fixture(scope="module")
def val64():
    return generate_scenes(24, "val", image_size=S, seed=0)


# ---------------------------------------------------------------------------------------------
# classes and shapes
# ---------------------------------------------------------------------------------------------
def test_class_names_and_count():
    names = class_names()
    assert names[:T] == list(TEXTURES)
    assert names[T:] == [f"digit_{d}" for d in range(10)]
    assert num_classes() == NUM_CLASSES == T + 10 == len(names)
    sub = SceneConfig(textures=("grass", "brick"), regions_per_scene=(1, 2))
    assert class_names(sub) == ["grass", "brick"] + [f"digit_{d}" for d in range(10)]
    assert num_classes(sub) == 12


@pytest.mark.parametrize("size", [32, 224])
def test_shapes_and_dtypes(size):
    images, masks = make_scenes(3, "train", image_size=size, seed=1)
    assert images.shape == (3, size, size, 3) and images.dtype == np.uint8
    assert masks.shape == (3, size, size) and masks.dtype == np.uint8
    values = set(np.unique(masks).tolist())
    assert values <= set(range(NUM_CLASSES)) | {IGNORE_INDEX}


def test_every_scene_has_textures_and_digits(train64):
    for i in range(len(train64)):
        m = train64.masks[i]
        present = set(np.unique(m).tolist())
        tex = {c for c in present if c < T}
        dig = {c for c in present if T <= c < T + 10}
        assert tex and dig, f"scene {i} lacks texture or digit pixels: {present}"
        # the classes present are exactly those the metadata says were drawn
        assert tex <= set(train64.texture_ids[i][train64.texture_ids[i] >= 0].tolist())
        assert dig <= {T + lab for lab in train64.digit_labels[i][train64.digit_labels[i] >= 0].tolist()}
        n_regions = int((train64.texture_ids[i] >= 0).sum())
        assert SceneConfig().regions_per_scene[0] <= n_regions <= SceneConfig().regions_per_scene[1]
        n_digits = int((train64.digit_indices[i] >= 0).sum())
        assert SceneConfig().digits_per_scene[0] <= n_digits <= SceneConfig().digits_per_scene[1]


def test_all_classes_occur_over_many_scenes():
    _, masks = make_scenes(60, "train", image_size=32, seed=5)
    assert set(np.unique(masks).tolist()) == set(range(NUM_CLASSES)) | {IGNORE_INDEX}


def test_digit_pixels_lie_inside_their_boxes(train64):
    for i in range(len(train64)):
        m = train64.masks[i]
        allowed = np.zeros((S, S), dtype=bool)
        for label, box in zip(train64.digit_labels[i], train64.digit_boxes[i], strict=True):
            if label < 0:
                continue
            y0, x0, y1, x1 = box
            region = np.zeros((S, S), dtype=bool)
            region[y0:y1, x0:x1] = True
            allowed |= region
        for c in range(T, T + 10):  # a digit class only appears inside boxes of digits with that label
            boxes = [b for lab, b in zip(train64.digit_labels[i], train64.digit_boxes[i], strict=True) if lab == c - T]
            inside = np.zeros((S, S), dtype=bool)
            for y0, x0, y1, x1 in boxes:
                inside[y0:y1, x0:x1] = True
            assert not ((m == c) & ~inside).any()
        assert not ((m == IGNORE_INDEX) & ~allowed).any()


def test_ignore_border_option():
    cfg = SceneConfig(image_size=48, ignore_border=False)
    _, masks = make_scenes(6, "train", seed=0, config=cfg)
    assert IGNORE_INDEX not in np.unique(masks)
    _, masks_ig = make_scenes(6, "train", seed=0, config=SceneConfig(image_size=48))
    assert IGNORE_INDEX in np.unique(masks_ig)
    # ignore only replaces labels on the rim; elsewhere the two masks agree
    keep = masks_ig != IGNORE_INDEX
    assert np.array_equal(masks[keep], masks_ig[keep])


# ---------------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------------
def test_same_seed_same_scenes(train64):
    again = generate_scenes(24, "train", image_size=S, seed=0)
    assert np.array_equal(again.images, train64.images)
    assert np.array_equal(again.masks, train64.masks)
    assert np.array_equal(again.digit_indices, train64.digit_indices)


def test_different_seed_or_split_differs(train64, val64):
    other = generate_scenes(24, "train", image_size=S, seed=1)
    assert not np.array_equal(other.images, train64.images)
    assert not np.array_equal(other.masks, train64.masks)
    assert not np.array_equal(val64.images, train64.images)


def test_scene_i_does_not_depend_on_n_or_start(train64):
    few = generate_scenes(5, "train", image_size=S, seed=0)
    assert np.array_equal(few.images, train64.images[:5])
    assert np.array_equal(few.masks, train64.masks[:5])
    mid = generate_scenes(6, "train", image_size=S, seed=0, start=10)
    assert np.array_equal(mid.images, train64.images[10:16])
    assert np.array_equal(mid.texture_boxes, train64.texture_boxes[10:16])


def test_process_rng_untouched():
    np_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    make_scenes(4, "val", image_size=32, seed=3)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]


# ---------------------------------------------------------------------------------------------
# train / val disjointness
# ---------------------------------------------------------------------------------------------
def test_digit_pools_are_disjoint_stratified_and_complete():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train, val = digit_split_indices("train"), digit_split_indices("val")
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(labels.size))
    val_counts = np.bincount(labels[val], minlength=10)
    assert val_counts.min() >= 30 and 0.15 < val.size / labels.size < 0.25


def test_scenes_draw_digits_from_their_own_pool(train64, val64):
    used_train = np.unique(train64.digit_indices[train64.digit_indices >= 0])
    used_val = np.unique(val64.digit_indices[val64.digit_indices >= 0])
    assert np.isin(used_train, digit_split_indices("train")).all()
    assert np.isin(used_val, digit_split_indices("val")).all()
    assert np.intersect1d(used_train, used_val).size == 0
    # no digit instance is used twice within one scene
    for row in train64.digit_indices:
        row = row[row >= 0]
        assert np.unique(row).size == row.size


def test_texture_crops_stay_in_their_half(train64, val64):
    names = SceneConfig().textures
    for name in names:
        tr, va = texture_split_bounds(name, "train"), texture_split_bounds(name, "val")
        assert tr[3] <= va[1]  # train columns end where val columns begin
    for scenes, split in ((train64, "train"), (val64, "val")):
        for tid_row, box_row in zip(scenes.texture_ids, scenes.texture_boxes, strict=True):
            for tid, (y0, x0, y1, x1) in zip(tid_row, box_row, strict=True):
                if tid < 0:
                    continue
                by0, bx0, by1, bx1 = texture_split_bounds(names[tid], split)
                assert by0 <= y0 < y1 <= by1 and bx0 <= x0 < x1 <= bx1


@pytest.mark.parametrize("split, marked", [("train", "val"), ("val", "train")])
def test_no_pixel_comes_from_the_other_split_half(monkeypatch, split, marked):
    """Paint the other split's half of every photo a colour the scenes cannot produce otherwise:
    with colour jitter off, it must never show up. As a control, the own half must show up."""
    marker = np.array([255, 0, 255], dtype=np.uint8)  # digits are painted dark or bright grey-ish
    original = scene_sources.texture_photo

    bounds = {(n, h): texture_split_bounds(n, h) for n in TEXTURES for h in ("train", "val")}

    def painted(name: str, half: str) -> np.ndarray:
        arr = original(name).copy()
        y0, x0, y1, x1 = bounds[name, half]
        arr[y0:y1, x0:x1] = marker
        return arr

    cfg = SceneConfig(image_size=48, brightness_jitter=0.0, contrast_jitter=0.0, tint_jitter=0.0)

    def count_marker(half: str) -> int:
        monkeypatch.setattr(scene_sources, "texture_photo", lambda name: painted(name, half))
        scene_sources.texture_bank.cache_clear()
        try:
            s = generate_scenes(20, split, seed=2, config=cfg)
        finally:
            monkeypatch.setattr(scene_sources, "texture_photo", original)
            scene_sources.texture_bank.cache_clear()
        hit = (s.images == marker).all(-1)
        return int(hit.sum())

    assert count_marker(marked) == 0
    assert count_marker(split) > 0  # control: the test can see the half that is used


# ---------------------------------------------------------------------------------------------
# torch dataset
# ---------------------------------------------------------------------------------------------
def test_scene_dataset_items(train64):
    ds = SceneDataset("train", n=24, image_size=S, seed=0)
    assert len(ds) == 24 and ds.num_classes == NUM_CLASSES and ds.ignore_index == IGNORE_INDEX
    image, mask = ds[3]
    assert image.shape == (3, S, S) and image.dtype == torch.float32
    assert mask.shape == (S, S) and mask.dtype == torch.int64
    assert torch.equal(mask, torch.from_numpy(train64.masks[3].astype(np.int64)))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    raw = torch.from_numpy(train64.images[3]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(image, (raw - mean) / std)
    with pytest.raises(IndexError):
        ds[24]


def test_scene_dataset_joint_transform(train64):
    from torchvision.transforms import v2

    ds = SceneDataset("train", n=4, image_size=S, seed=0, transform=v2.RandomHorizontalFlip(p=1.0))
    image, mask = ds[1]
    assert image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy(train64.images[1][:, ::-1].copy()).permute(2, 0, 1))
    assert torch.equal(mask, torch.from_numpy(train64.masks[1][:, ::-1].astype(np.int64)))


# ---------------------------------------------------------------------------------------------
# on-disk layout
# ---------------------------------------------------------------------------------------------
def test_write_scenes_round_trip(tmp_path: Path):
    out = tmp_path / "scenes"
    res = write_scenes(out, {"train": 4, "val": 3}, image_size=40, seed=7)
    assert res.counts == {"train": 4, "val": 3}
    assert (out / "classes.txt").read_text().splitlines() == class_names()
    meta = json.loads((out / "scenes.json").read_text())
    assert meta["ignore_index"] == IGNORE_INDEX and meta["counts"] == {"train": 4, "val": 3}
    for split, n in (("train", 4), ("val", 3)):
        stems = (out / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert stems == [f"{split}_{i:05d}" for i in range(n)]
        images, masks = make_scenes(n, split, image_size=40, seed=7)
        for i, stem in enumerate(stems):
            with Image.open(out / "images" / f"{stem}.png") as im:
                assert im.mode == "RGB"
                assert np.array_equal(np.asarray(im), images[i])
            with Image.open(out / "masks" / f"{stem}.png") as im:
                assert im.mode == "P"  # palettised like VOC: pixel value = class id
                assert np.array_equal(np.asarray(im), masks[i])
        back_images, back_masks = read_scenes(out, split)
        assert np.array_equal(back_images, images) and np.array_equal(back_masks, masks)


def test_write_scenes_chunks_match_one_call(tmp_path: Path, monkeypatch):
    # writing in several chunks gives the same scenes as generating them in one call
    out = tmp_path / "w"
    write_scenes(out, 300, splits="val", image_size=16, seed=1)
    images, masks = make_scenes(300, "val", image_size=16, seed=1)
    back_images, back_masks = read_scenes(out, "val")
    assert np.array_equal(back_images, images) and np.array_equal(back_masks, masks)
    assert not (out / "ImageSets" / "Segmentation" / "train.txt").exists()


def test_read_scenes_missing_layout(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="ImageSets"):
        read_scenes(tmp_path, "train")


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "test"}, "split"),
        ({"n": -1}, "n must"),
        ({"seed": -3}, "seed"),
        ({"image_size": 8}, "image_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"n": 2, "split": "train", "image_size": 32, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_scenes(args["n"], args["split"], image_size=args["image_size"], seed=args["seed"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"textures": ("brick", "marble")}, "marble"),
        ({"regions_per_scene": (2, 9)}, "regions_per_scene"),
        ({"digits_per_scene": (0, 2)}, "digits_per_scene"),
        ({"digit_size": (0.5, 0.2)}, "digit_size"),
        ({"texture_crop": (0.0, 1.0)}, "texture_crop"),
        ({"contrast_jitter": 1.5}, "jitter"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SceneConfig(**kwargs)


def test_textures_are_read_from_the_installed_package():
    import skimage

    data_dir = Path(skimage.__file__).resolve().parent / "data"
    for name, fname in TEXTURES.items():
        assert (data_dir / fname).is_file(), f"{fname} is not bundled with scikit-image"
        photo = scene_sources.texture_photo(name)
        assert photo.ndim == 3 and photo.shape[2] == 3 and photo.dtype == np.uint8
        assert min(photo.shape[:2]) >= 256


def test_merged_digits_and_thicker_strokes():
    base = sc.SceneConfig(
        image_size=64, textures=("gravel", "tissue", "stars"), digits_per_scene=(1, 1), digit_size=(0.6, 0.9)
    )
    merged = sc.SceneConfig(**{**base.__dict__, "merge_digits": True})
    thick = sc.SceneConfig(**{**base.__dict__, "merge_digits": True, "digit_threshold": 0.2})
    assert merged.class_names() == ["gravel", "tissue", "stars", "digit"] and merged.num_classes == 4
    a = sc.generate_scenes(6, "train", config=base)
    m = sc.generate_scenes(6, "train", config=merged)
    t = sc.generate_scenes(6, "train", config=thick)
    assert np.array_equal(a.images, m.images)  # the same scenes, only the labels merged
    digit = (a.masks >= 3) & (a.masks != sc.IGNORE_INDEX)
    assert np.array_equal(digit, m.masks == 3) and set(np.unique(m.masks)) <= {0, 1, 2, 3, sc.IGNORE_INDEX}
    assert (t.masks == 3).sum() > (m.masks == 3).sum()  # a lower threshold: thicker strokes
    with pytest.raises(ValueError, match="digit_threshold"):
        sc.SceneConfig(digit_threshold=0.99)
