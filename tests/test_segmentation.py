"""Tests of the segmentation dataset readers on tiny fake copies of each on-disk layout."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from dsekit.data import scenes as sc
from dsekit.data import segmentation as seg
from dsekit.data.segmentation import (
    DATASETS,
    IGNORE_INDEX,
    DatasetNotFoundError,
    EvalTransform,
    TrainTransform,
    dataset_spec,
    default_train_split,
    get_dataset,
    map_labels,
    read_mask,
)
from dsekit.data.segmentation.cocostuff import COCOSTUFF_SUPERCATEGORIES

H, W = 20, 28  # raw image size of the fake datasets (not square: exercises resize + crop)
S = 16


# ----------------------------------------------------------------------------------------------
# writers of fake layouts
# ----------------------------------------------------------------------------------------------
def _image(path: Path, seed: int, h: int = H, w: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triples): bits 0, 1, 2 of the index go to the top bit of
    red, green, blue, bits 3, 4, 5 to the next bit, and so on."""
    out = []
    for i in range(256):
        rgb, c = [0, 0, 0], i
        for j in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - j)
            c >>= 3
        out += rgb
    return out


def _mask(path: Path, arr: np.ndarray, palette: bool | list[int] = False) -> None:
    """A label PNG: grey ("L", or 16-bit above 255), or with ``palette`` a palette ("P") PNG whose
    indices are ``arr`` (``True``: the VOC colour map, as in ``SegmentationClass/``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(arr)
    if arr.max() > 255:
        Image.fromarray(arr.astype(np.uint16)).save(path)
        return
    if palette is not False:
        im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr, dtype=np.uint8).tobytes())
        im.putpalette(_voc_palette() if palette is True else palette)
    else:
        im = Image.fromarray(arr.astype(np.uint8))
    im.save(path)


def _stripes(values, h: int = H, w: int = W) -> np.ndarray:
    """(h, w) mask whose columns cycle through ``values`` in vertical bands."""
    values = np.asarray(values)
    band = np.arange(w) * len(values) // w
    return np.broadcast_to(values[band], (h, w)).copy()


def _write_list(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{x}\n" for x in lines))


VOC_TRAIN, VOC_VAL = ["2007_000032", "2007_000039"], ["2007_000033", "2008_000001"]


def _voc(root: Path, aug: bool = False) -> Path:
    """VOCtrainval_11-May-2012.tar's tree: JPEG images, palette PNGs with the VOC colour map in
    SegmentationClass/ and SegmentationObject/ (instances, not read), the split lists; with
    ``aug`` the SBD grey PNGs in SegmentationClassAug/ and a DeepLab-style train_aug.txt."""
    voc = root / "VOCdevkit" / "VOC2012"
    for k, i in enumerate(VOC_TRAIN + VOC_VAL):
        _image(voc / "JPEGImages" / f"{i}.jpg", k)
        _mask(voc / "SegmentationClass" / f"{i}.png", _stripes([0, 5, 20, 255][k:] + [0, 5, 20, 255][:k]), palette=True)
        _mask(voc / "SegmentationObject" / f"{i}.png", _stripes([0, 1, 2, 255]), palette=True)
    (voc / "Annotations").mkdir(exist_ok=True)
    _write_list(voc / "ImageSets" / "Segmentation" / "train.txt", VOC_TRAIN)
    _write_list(voc / "ImageSets" / "Segmentation" / "val.txt", VOC_VAL)
    _write_list(voc / "ImageSets" / "Segmentation" / "trainval.txt", VOC_TRAIN + VOC_VAL)
    if aug:
        extra = ["2009_000100", "2010_000200"]
        for k, i in enumerate(extra):
            _image(voc / "JPEGImages" / f"{i}.jpg", 10 + k)
        for i in VOC_TRAIN + VOC_VAL + extra:
            _mask(voc / "SegmentationClassAug" / f"{i}.png", _stripes([0, 7, 255]))
        # DeepLab-style lines; one val id slipped into the list
        lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in VOC_TRAIN + extra + [VOC_VAL[0]]]
        _write_list(voc / "ImageSets" / "SegmentationAug" / "train_aug.txt", lines)
    return voc


def _ade(root: Path, values=(0, 1, 150, 37)) -> Path:
    """ADEChallengeData2016.zip's tree: JPEG images (the second one greyscale, as a few real ones
    are), grey "L" PNG annotations 0..150, and the two text files beside them."""
    base = root / "ADEChallengeData2016"
    for sub, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for k in range(3):
            stem = f"{prefix}_{k + 1:08d}"
            _image(base / "images" / sub / f"{stem}.jpg", k)
            if k == 1:
                with Image.open(base / "images" / sub / f"{stem}.jpg") as im:
                    im.convert("L").save(base / "images" / sub / f"{stem}.jpg")
            _mask(base / "annotations" / sub / f"{stem}.png", _stripes(values))
    (base / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n")
    (base / "sceneCategories.txt").write_text("ADE_train_00000001 airport_terminal\n")
    return base


def _coco(
    root: Path, values=(0, 91, 181, 119, 255), images_beside: bool = False, maps: str = "stuffthingmaps_trainval2017"
) -> Path:
    """COCO 2017 JPEGs (12-digit ids) and the stuffthingmaps (grey "L" PNGs, 0..181 and 255) in
    ``maps``/<split>/: the zip's name, or ``annotations`` as the official set-up unzips it (then
    with mmsegmentation's ``<id>_labelTrainIds.png`` copies beside, as its converter leaves them)."""
    for sub in ("train2017", "val2017"):
        for k in range(3):
            stem = f"{k + 139:012d}"
            img_dir = root / sub if images_beside else root / "images" / sub
            _image(img_dir / f"{stem}.jpg", k)
            _mask(root / maps / sub / f"{stem}.png", _stripes(values))
            if maps == "annotations":
                _mask(root / maps / sub / f"{stem}_labelTrainIds.png", _stripes([7, 255]))
    return root


CITIES = {"train": ["aachen", "bochum"], "val": ["frankfurt"]}


def _cityscapes(root: Path, values=(7, 26, 0, 33, 24), train_ids: bool = False) -> Path:
    """leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip: RGB PNG images, and per image the
    grey "L" labelIds PNG (0..33), the RGBA colour PNG, the 16-bit instanceIds PNG and the polygon
    JSON; with ``train_ids`` also labelTrainIds PNGs (as cityscapesScripts writes them)."""
    from torchvision.datasets import Cityscapes

    colour = {c.id: c.color for c in Cityscapes.classes if c.id >= 0}
    for split, cities in CITIES.items():
        for city in cities:
            for k in range(2):
                stem = f"{city}_{k:06d}_000019"
                gt = root / "gtFine" / split / city
                _image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", k)
                _mask(gt / f"{stem}_gtFine_labelIds.png", _stripes(values))
                ids = _stripes(values)
                rgba = np.zeros(ids.shape + (4,), np.uint8)
                for v in np.unique(ids):
                    rgba[ids == v] = (*colour.get(int(v), (0, 0, 0)), 255)
                Image.fromarray(rgba).save(gt / f"{stem}_gtFine_color.png")
                _mask(gt / f"{stem}_gtFine_instanceIds.png", ids.astype(np.int64) * 1000 + 1000)  # 16-bit
                polygons = f'{{"imgHeight": {H}, "imgWidth": {W}, "objects": []}}'
                (gt / f"{stem}_gtFine_polygons.json").write_text(polygons)
                if train_ids:
                    _mask(gt / f"{stem}_gtFine_labelTrainIds.png", _stripes([3, 255]))
    return root


# ----------------------------------------------------------------------------------------------
# PASCAL VOC
# ----------------------------------------------------------------------------------------------
def test_voc_reads_pairs_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    _voc(tmp_path)
    calls = []
    real = torchvision.datasets.VOCSegmentation

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(torchvision.datasets, "VOCSegmentation", spy)
    ds = get_dataset("voc", tmp_path, "train", image_size=S)
    assert calls, "the VOCdevkit layout should be listed by torchvision's VOCSegmentation"
    assert ds.ids == VOC_TRAIN and len(ds) == 2
    assert (ds.num_classes, ds.ignore_index, len(ds.class_names)) == (21, 255, 21)
    image, mask = ds[0]
    assert image.shape == (3, S, S) and image.dtype == torch.float32
    assert mask.shape == (S, S) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 5, 20, 255}
    # raw read: palette indices are the labels, 255 kept as ignore
    raw_img, raw_mask = ds.read(1)
    assert isinstance(raw_mask, tv_tensors.Mask) and raw_img.shape == (3, H, W)
    expected = _stripes([5, 20, 255, 0])
    assert np.array_equal(raw_mask.numpy(), expected)


def test_voc_palette_is_the_standard_colour_map():
    pal = np.array(_voc_palette()).reshape(256, 3)
    known = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128), 5: (128, 0, 128),
             15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}  # fmt: skip
    for i, rgb in known.items():
        assert tuple(pal[i].tolist()) == rgb, i


def test_voc_masks_are_palette_indices_not_colours(tmp_path):
    voc = _voc(tmp_path)
    path = voc / "SegmentationClass" / f"{VOC_VAL[0]}.png"
    labels = _stripes([20, 255, 0, 5])  # what _voc wrote for this id
    with Image.open(path) as im:
        assert im.mode == "P" and im.getpalette()[: 3 * 21] == _voc_palette()[: 3 * 21]
        naive_rgb, naive_grey = np.array(im.convert("RGB")), np.array(im.convert("L"))
    # opened as colours, the same file gives other numbers: class 20 is (0, 64, 128), 255 is (224, 224, 192)
    assert [naive_rgb[0, x].tolist() for x in (0, 7, W - 1)] == [[0, 64, 128], [224, 224, 192], [128, 0, 128]]
    assert not any(np.array_equal(naive_rgb[..., ch], labels) for ch in range(3))
    assert not np.array_equal(naive_grey, labels)
    ds = get_dataset("voc", tmp_path, "val", image_size=None)
    assert (ds.num_classes, ds.ignore_index, ds.ids[0]) == (21, 255, VOC_VAL[0])
    assert np.array_equal(ds.read(0)[1].numpy(), labels)
    assert np.array_equal(read_mask(path), labels)
    _mask(path, labels, palette=_voc_palette()[::-1])  # other colours, same indices: same labels
    assert np.array_equal(ds.read(0)[1].numpy(), labels)
    with Image.open(path) as im:
        Image.fromarray(np.array(im.convert("RGB"))).save(path)  # a colour-coded copy: refused, not misread
    with pytest.raises(ValueError, match="colour image"):
        ds.read(0)


@pytest.mark.parametrize("sub", ["VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_root_may_be_the_devkit_or_voc2012_folder(tmp_path, sub):
    _voc(tmp_path)
    ds = get_dataset("pascal-voc", tmp_path / sub, "val", image_size=S)
    assert ds.ids == VOC_VAL
    assert get_dataset("voc", tmp_path / sub, "trainval", image_size=None).ids == VOC_TRAIN + VOC_VAL


def test_voc_train_aug(tmp_path):
    _voc(tmp_path, aug=False)
    assert default_train_split("voc", tmp_path) == "train"
    with pytest.raises(DatasetNotFoundError, match="train_aug"):
        get_dataset("voc", tmp_path, "train_aug")
    _voc(tmp_path, aug=True)
    assert default_train_split("voc", tmp_path) == "train_aug"
    with pytest.warns(UserWarning, match="also in"):
        ds = get_dataset("voc", tmp_path, "trainaug", image_size=S)
    assert ds.ids == VOC_TRAIN + ["2009_000100", "2010_000200"]  # the val id was dropped
    assert ds.samples[0][1].parent.name == "SegmentationClassAug"
    assert set(np.unique(ds.read(3)[1].numpy()).tolist()) == {0, 7, 255}
    with Image.open(ds.samples[0][1]) as im:
        assert im.mode == "L"  # SBD masks are grey PNGs with the same label values
    assert np.array_equal(ds.read(0)[1].numpy(), _stripes([0, 7, 255]))


def test_voc_missing_image_is_named(tmp_path):
    voc = _voc(tmp_path)
    (voc / "JPEGImages" / f"{VOC_TRAIN[1]}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=VOC_TRAIN[1]):
        get_dataset("voc", tmp_path, "train")


def test_voc_out_of_range_label_names_file_and_values(tmp_path):
    voc = _voc(tmp_path)
    bad = voc / "SegmentationClass" / f"{VOC_TRAIN[0]}.png"
    _mask(bad, _stripes([0, 21, 254, 3]), palette=True)
    ds = get_dataset("voc", tmp_path, "train", image_size=S)
    ds[1]  # the other file is fine
    with pytest.raises(ValueError, match=r"2007_000032\.png.*21, 254"):
        ds[0]


# ----------------------------------------------------------------------------------------------
# ADE20K
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sub", ["", "ADEChallengeData2016"])
def test_ade20k_shift_and_ignore(tmp_path, sub):
    _ade(tmp_path)
    for split, prefix in (("train", "ADE_train"), ("validation", "ADE_val")):
        ds = get_dataset("ade20k", tmp_path / sub if sub else tmp_path, split, image_size=S)
        assert len(ds) == 3 and ds.ids[0] == f"{prefix}_00000001"
        assert (ds.num_classes, len(ds.class_names), ds.class_names[0]) == (150, 150, "wall")
        _, raw_mask = ds.read(0)
        assert np.array_equal(raw_mask.numpy(), _stripes([255, 0, 149, 36]))  # 0 -> ignore, k -> k-1
        image, mask = ds[2]
        assert image.shape == (3, S, S) and set(mask.unique().tolist()) <= {255, 0, 149, 36}


def test_ade20k_every_value_and_greyscale_images(tmp_path):
    base = _ade(tmp_path)
    row = np.arange(151)
    _image(base / "images" / "validation" / "ADE_val_00000003.jpg", 5, 4, row.size)
    _mask(base / "annotations" / "validation" / "ADE_val_00000003.png", np.tile(row, (4, 1)))
    ds = get_dataset("ade20k", tmp_path, "val", image_size=None)
    assert (ds.num_classes, ds.ignore_index, ds.label_spec) == (150, 255, "0 (ignored) and 1..150")
    with Image.open(ds.samples[2][1]) as im:
        assert im.mode == "L"
    got = ds.read(2)[1].numpy()
    assert got[0].tolist() == [255] + list(range(150)) and (got == got[0]).all()  # 0 -> 255, k -> k - 1
    assert ds.class_names[0] == "wall" and ds.class_names[149] == "flag"
    with Image.open(ds.samples[1][0]) as im:
        assert im.mode == "L"  # a greyscale photo, as a few in ADE20K are
    image, mask = ds.read(1)
    assert image.shape == (3, H, W) and (image[0] == image[2]).all()


def test_ade20k_label_above_150_raises(tmp_path):
    _ade(tmp_path, values=(0, 151, 3, 200))
    ds = get_dataset("ade", tmp_path, "val")
    with pytest.raises(ValueError, match=r"ADE_val_00000001\.png.*151, 200"):
        ds.read(0)


# ----------------------------------------------------------------------------------------------
# COCO-Stuff
# ----------------------------------------------------------------------------------------------
def test_cocostuff_tables():
    fine = np.arange(182)
    used = np.setdiff1d(fine, seg.COCOSTUFF_UNUSED_IDS)
    assert used.size == 171 == len(seg.COCOSTUFF_CLASSES)
    lut = seg.cocostuff_label_map()
    assert np.array_equal(lut[used], np.arange(171))  # order-preserving renumbering
    assert (lut[list(seg.COCOSTUFF_UNUSED_IDS)] == -1).all() and lut[255] == 255
    assert seg.COCOSTUFF_CLASSES[0] == "person" and seg.COCOSTUFF_CLASSES[80] == "banner"
    assert seg.COCOSTUFF_CLASSES[170] == "wood"
    coarse = seg.cocostuff_coarse_ids()
    assert coarse.shape == (182,) and set(coarse.tolist()) == set(range(27))
    names = seg.COCOSTUFF27_CLASSES
    name_of = {n: names[coarse[i]] for i, n in enumerate(seg.COCOSTUFF_FINE_NAMES)}
    assert name_of["person"] == "person" and names.index("person") == 9
    assert name_of["bicycle"] == name_of["boat"] == "vehicle" and names.index("vehicle") == 11
    assert name_of["tv"] == "electronic" and names.index("electronic") == 0
    assert name_of["fog"] == "water" and name_of["railing"] == "structural"
    assert name_of["light"] == "furniture-stuff" and name_of["wood"] == "solid"
    assert name_of["wall-wood"] == "wall" and name_of["clouds"] == "sky"
    assert (coarse[:91] < 12).all() and (coarse[91:] >= 12).all()  # things first, then stuff
    every = [m for _, members in COCOSTUFF_SUPERCATEGORIES for m in members]
    assert sorted(every) == sorted(seg.COCOSTUFF_FINE_NAMES)  # a partition of the 182 names


@pytest.mark.parametrize("images_beside", [False, True])
def test_cocostuff_171_and_27(tmp_path, images_beside):
    _coco(tmp_path, images_beside=images_beside)
    ds = get_dataset("cocostuff", tmp_path, "train", image_size=S)
    assert (len(ds), ds.num_classes, ds.ignore_index) == (3, 171, 255)
    assert ds.ids[0] == "000000000139"
    _, m171 = ds.read(0)
    # person 0 -> 0, banner 91 -> 80, wood 181 -> 170, fog 119 -> 119 - 11 = 108, 255 stays
    assert np.array_equal(m171.numpy(), _stripes([0, 80, 170, 108, 255]))
    assert ds.class_names[108] == "fog"
    ds27 = get_dataset("coco-stuff-27", tmp_path / "stuffthingmaps_trainval2017", "val2017", image_size=S)
    assert (ds27.num_classes, len(ds27.class_names), ds27.name) == (27, 27, "cocostuff27")
    _, m27 = ds27.read(1)
    # person -> 9, banner -> textile 17, wood -> solid 24, fog -> water 26
    assert np.array_equal(m27.numpy(), _stripes([9, 17, 24, 26, 255]))
    image, mask = ds27[2]
    assert image.shape == (3, S, S) and set(mask.unique().tolist()) <= {9, 17, 24, 26, 255}


def test_cocostuff_unused_id_and_image_list(tmp_path):
    _coco(tmp_path, values=(0, 11, 91))  # 11 = "street sign", never annotated
    with pytest.raises(ValueError, match=r"000000000139\.png.*label value\(s\) 11\b"):
        get_dataset("cocostuff", tmp_path, "val").read(0)
    lst = tmp_path / "curated.txt"
    _write_list(lst, ["000000000140", "000000000141"])
    ds = get_dataset("cocostuff27", tmp_path, "train", image_list=lst, image_size=S)
    assert ds.ids == ["000000000140", "000000000141"]
    _write_list(lst, ["000000000140", "999"])
    with pytest.raises(FileNotFoundError, match="999"):
        get_dataset("cocostuff", tmp_path, "train", image_list=lst)


def test_cocostuff_official_setup_annotations_folder(tmp_path):
    _coco(tmp_path, maps="annotations")  # unzip stuffthingmaps_trainval2017.zip -d annotations/
    ds = get_dataset("cocostuff", tmp_path, "val", image_size=S)
    assert ds.ids == ["000000000139", "000000000140", "000000000141"]  # no *_labelTrainIds "samples"
    assert ds.samples[0][1] == tmp_path / "annotations" / "val2017" / "000000000139.png"
    assert np.array_equal(ds.read(0)[1].numpy(), _stripes([0, 80, 170, 108, 255]))
    ds27 = get_dataset("cocostuff27", tmp_path, "train", image_size=S)
    assert np.array_equal(ds27.read(2)[1].numpy(), _stripes([9, 17, 24, 26, 255]))


def test_cocostuff_every_id_171_and_27(tmp_path):
    used = [v for v in range(182) if v not in seg.COCOSTUFF_UNUSED_IDS]
    assert len(used) == 171 and seg.COCOSTUFF_UNUSED_IDS == (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
    _coco(tmp_path)
    row = np.array(used + [255])
    _image(tmp_path / "images" / "val2017" / "000000000139.jpg", 0, 3, row.size)
    path = tmp_path / "stuffthingmaps_trainval2017" / "val2017" / "000000000139.png"
    _mask(path, np.tile(row, (3, 1)))
    with Image.open(path) as im:
        assert im.mode == "L"
    fine = get_dataset("cocostuff", tmp_path, "val", image_size=None).read(0)[1].numpy()
    assert fine[0].tolist() == list(range(171)) + [255] and (fine == fine[0]).all()  # contiguous, in id order
    # labels.txt (1-based): 1 person, 92 banner, 149 road, 157 sky-other, 182 wood
    names = seg.COCOSTUFF_CLASSES
    assert [names[fine[0, used.index(v - 1)]] for v in (1, 92, 149, 157, 182)] == [
        "person", "banner", "road", "sky-other", "wood"]  # fmt: skip
    coarse = get_dataset("cocostuff27", tmp_path, "val", image_size=None).read(0)[1].numpy()[0]
    assert set(coarse.tolist()) == set(range(27)) | {255}
    sup = seg.COCOSTUFF27_CLASSES
    assert [sup[coarse[used.index(v - 1)]] for v in (1, 92, 149, 157, 182)] == [
        "person", "textile", "ground", "sky", "solid"]  # fmt: skip
    _mask(path, np.tile(row, (3, 1)), palette=True)  # an indexed (palette) copy reads the same
    assert np.array_equal(get_dataset("cocostuff", tmp_path, "val", image_size=None).read(0)[1].numpy(), fine)
    for bad in [*seg.COCOSTUFF_UNUSED_IDS, 182, 254]:
        _mask(path, np.full((3, row.size), bad))
        with pytest.raises(ValueError, match=rf"label value\(s\) {bad}\b"):
            get_dataset("cocostuff", tmp_path, "val").read(0)


def test_cocostuff_missing_image_is_named(tmp_path):
    _coco(tmp_path)
    (tmp_path / "images" / "val2017" / "000000000140.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000000000140"):
        get_dataset("cocostuff", tmp_path, "val")


# ----------------------------------------------------------------------------------------------
# Cityscapes
# ----------------------------------------------------------------------------------------------
def test_cityscapes_label_ids_to_train_ids(tmp_path):
    _cityscapes(tmp_path)
    ds = get_dataset("cityscapes", tmp_path, "train", image_size=S)
    assert (len(ds), ds.num_classes, ds.label_type) == (4, 19, "labelIds")
    assert ds.ids == [f"{c}/{c}_{k:06d}_000019" for c in CITIES["train"] for k in range(2)]  # sorted
    assert ds.class_names[0] == "road" and ds.class_names[13] == "car" and ds.class_names[18] == "bicycle"
    _, raw = ds.read(0)
    # road 7 -> 0, car 26 -> 13, unlabeled 0 -> 255, bicycle 33 -> 18, person 24 -> 11
    assert np.array_equal(raw.numpy(), _stripes([0, 13, 255, 18, 11]))
    lut = seg.cityscapes_label_map()
    assert lut[9] == 255 and lut[29] == 255 and lut[11] == 2  # parking, caravan ignored; building 2
    image, mask = ds[3]
    assert image.shape == (3, S, S) and mask.shape == (S, S)


def test_cityscapes_prefers_train_id_files(tmp_path):
    _cityscapes(tmp_path, train_ids=True)
    ds = get_dataset("cityscapes", tmp_path, "val", image_size=S)
    assert ds.label_type == "labelTrainIds" and len(ds) == 2
    assert np.array_equal(ds.read(0)[1].numpy(), _stripes([3, 255]))
    forced = get_dataset("cityscapes", tmp_path, "val", label_type="labelIds")
    assert np.array_equal(forced.read(0)[1].numpy(), _stripes([0, 13, 255, 18, 11]))


# labelIds -> train ids of cityscapesScripts' labels.py; every other id is ignored
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip


def test_cityscapes_every_label_id(tmp_path):
    _cityscapes(tmp_path)
    stem = "frankfurt/frankfurt_000000_000019"
    _image(tmp_path / "leftImg8bit" / "val" / f"{stem}_leftImg8bit.png", 3, 2, 34)
    _mask(tmp_path / "gtFine" / "val" / f"{stem}_gtFine_labelIds.png", np.tile(np.arange(34), (2, 1)))
    ds = get_dataset("cityscapes", tmp_path, "val", image_size=None)
    assert (ds.ids[0], ds.label_type, ds.num_classes, ds.ignore_index) == (stem, "labelIds", 19, 255)
    assert ds.samples[0][1].name.endswith("_gtFine_labelIds.png")
    with Image.open(ds.samples[0][1]) as im, Image.open(str(ds.samples[0][1]).replace("labelIds", "color")) as c:
        assert (im.mode, c.mode) == ("L", "RGBA")
    got = ds.read(0)[1].numpy()
    assert got[0].tolist() == [CITYSCAPES_TRAIN_IDS.get(i, 255) for i in range(34)] and (got == got[0]).all()
    assert ds.class_names == (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
        "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")  # fmt: skip
    # labelTrainIds for only some images: the labelIds of all are used
    _mask(tmp_path / "gtFine" / "val" / f"{stem}_gtFine_labelTrainIds.png", np.zeros((2, 34)))
    assert get_dataset("cityscapes", tmp_path, "val").label_type == "labelIds"


def test_cityscapes_bad_label_id(tmp_path):
    _cityscapes(tmp_path, values=(7, 34))
    ds = get_dataset("cityscapes", tmp_path, "val")
    with pytest.raises(ValueError, match=r"frankfurt_000000_000019_gtFine_labelIds\.png.*34"):
        ds.read(0)


# ----------------------------------------------------------------------------------------------
# the four benchmarks as the probe opens them (default_train_split, then get_dataset)
# ----------------------------------------------------------------------------------------------
BENCHMARKS = {  # name: (writer of the fake copy, train split the probe picks, labels of the val masks)
    "voc": (lambda root: _voc(root, aug=True), "train_aug", {0, 5, 20, 255}),
    "ade20k": (_ade, "train", {255, 0, 149, 36}),
    "cocostuff": (_coco, "train", {0, 80, 170, 108, 255}),
    "cocostuff27": (_coco, "train", {9, 17, 24, 26, 255}),
    "cityscapes": (_cityscapes, "train", {0, 13, 255, 18, 11}),
}


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_benchmark_opened_as_the_probe_does(tmp_path, name):
    write, train_split, val_labels = BENCHMARKS[name]
    write(tmp_path)
    spec = dataset_spec(name)
    assert default_train_split(name, tmp_path) == train_split
    kw = dict(image_size=S, resize=None, transform=EvalTransform(image_size=S, mean=None, std=None), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # VOC: the val id in train_aug.txt
        train = get_dataset(name, tmp_path, train_split, max_samples=2, **kw)
    val = get_dataset(name, tmp_path, "val", max_samples=None, **kw)
    assert train.num_classes == val.num_classes == spec.num_classes and val.class_names == spec.class_names
    assert len(train) == 2 and train.available > 2 and val.record()["num_classes"] == spec.num_classes
    raw = set().union(*(np.unique(val.read(i)[1].numpy()).tolist() for i in range(len(val))))
    assert raw == val_labels
    for ds in (train, val):
        images, masks = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
        assert images.shape == (len(ds), 3, S, S) and masks.shape == (len(ds), S, S) and masks.dtype == torch.int64
        assert set(masks.unique().tolist()) <= set(range(spec.num_classes)) | {IGNORE_INDEX}
    assert set(masks.unique().tolist()) <= val_labels


# ----------------------------------------------------------------------------------------------
# folder and built-in scenes
# ----------------------------------------------------------------------------------------------
def test_folder_reads_the_scene_layout(tmp_path):
    sc.write_scenes(tmp_path, {"train": 3, "val": 2}, image_size=32, seed=1)
    assert default_train_split("folder", tmp_path) == "train"
    ds = get_dataset("folder", tmp_path, "val", image_size=None)
    assert ds.num_classes == sc.NUM_CLASSES and ds.class_names == tuple(sc.class_names())
    assert ds.ids == ["val_00000", "val_00001"]
    images, masks = sc.make_scenes(2, "val", image_size=32, seed=1)
    for i in range(2):
        img, m = ds.read(i)
        assert np.array_equal(img.permute(1, 2, 0).numpy(), images[i])
        assert np.array_equal(m.numpy(), masks[i].astype(np.int64))
    assert len(get_dataset("folder", tmp_path, None)) == 5  # every pair


def test_folder_nested_names_num_classes_and_errors(tmp_path):
    for k, name in enumerate(["a/x", "a/y", "b/z"]):
        _image(tmp_path / "images" / f"{name}.jpg", k)
        _mask(tmp_path / "masks" / f"{name}.png", _stripes([0, 2, 255]))
    inferred = get_dataset("folder", tmp_path)  # no classes.txt, no num_classes: from the masks (0, 2 -> 3)
    assert inferred.class_names == ("class_0", "class_1", "class_2")
    assert inferred.record()["classes_from"] == "masks"
    ds = get_dataset("folder", tmp_path, num_classes=3, image_size=S)
    assert ds.ids == ["a/x", "a/y", "b/z"] and len(ds.class_names) == 3
    assert ds.record()["classes_from"] == "num_classes"
    assert ds[0][1].shape == (S, S)
    assert default_train_split("folder", tmp_path) == "train"
    with pytest.raises(ValueError, match="label value"):
        get_dataset("folder", tmp_path, num_classes=2)[0]  # 2 is out of range for 2 classes
    with pytest.raises(DatasetNotFoundError, match=r"ImageSets/Segmentation/test\.txt"):
        get_dataset("folder", tmp_path, "test", num_classes=3)
    _write_list(tmp_path / "ImageSets" / "Segmentation" / "val.txt", ["b/z.jpg", "a/x"])
    assert get_dataset("folder", tmp_path, "val", num_classes=3).ids == ["b/z", "a/x"]
    (tmp_path / "classes.txt").write_text("bg\nthing\n")
    with pytest.raises(ValueError, match="lists 2 classes"):
        get_dataset("folder", tmp_path, num_classes=3)
    _mask(tmp_path / "masks" / "a/y.png", _stripes([0, 1], h=H + 1))
    with pytest.raises(ValueError, match=r"y\.jpg is \(20, 28\).*y\.png is \(21, 28\)"):
        get_dataset("folder", tmp_path, num_classes=2).read(1)
    _mask(tmp_path / "masks" / "c.png", _stripes([0]))  # a mask without an image
    with pytest.raises(FileNotFoundError, match=r"\bc\b"):
        get_dataset("folder", tmp_path)


def test_folder_without_lists_splits_by_name_hash_whatever_the_disk_order(tmp_path):
    import hashlib

    names = [f"img{k:03d}" for k in range(40)]
    for order, root in ((names, tmp_path / "a"), (names[::-1], tmp_path / "b")):  # written in two orders
        for k, name in enumerate(order):
            _image(root / "images" / f"{name}.jpg", k % 7)
            _mask(root / "masks" / f"{name}.png", _stripes([0, 1]))
    for root in (tmp_path / "a", tmp_path / "b"):
        train = get_dataset("folder", root, "train")
        val = get_dataset("folder", root, "val")
        assert sorted(train.ids + val.ids) == names and not set(train.ids) & set(val.ids)
        expected_val = [n for n in names if int(hashlib.sha256(n.encode()).hexdigest()[:8], 16) / 2**32 < 0.2]
        assert val.ids == expected_val and 0 < len(val) < 20
        assert val.record()["split_from"].startswith("sha256(name) < 0.2")


def test_scenes_entry(rng_state_guard):
    ds = get_dataset("scenes", None, "val", image_size=32, max_samples=3)
    ref = sc.SceneDataset("val", n=3, image_size=32, seed=0)
    assert len(ds) == 3 and ds.num_classes == ref.num_classes and ds.class_names == tuple(ref.classes)
    image, mask = ds[1]
    ref_image, ref_mask = ref[1]
    assert image.shape == (3, 32, 32) and torch.allclose(image, ref_image, atol=1e-6)
    assert torch.equal(mask, ref_mask)
    with pytest.raises(ValueError, match="no root"):
        get_dataset("scenes", "/somewhere")


# ----------------------------------------------------------------------------------------------
# layout errors
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, marks",
    [
        ("voc", ["JPEGImages/", "SegmentationClass/", "ImageSets/", "SegmentationAug/train_aug.txt"]),
        ("ade20k", ["ADEChallengeData2016/", "annotations/", "validation/"]),
        ("cocostuff", ["stuffthingmaps_trainval2017/", "train2017/<id>.png", "images/"]),
        ("cityscapes", ["leftImg8bit/", "gtFine/", "_gtFine_labelIds.png"]),
        ("folder", ["images/", "masks/", "classes.txt"]),
    ],
)
def test_missing_root_or_wrong_layout_shows_tree(tmp_path, name, marks):
    for root in (tmp_path / "nope", tmp_path, None):
        with pytest.raises(FileNotFoundError) as info:
            get_dataset(name, root, "val" if name != "folder" else None)
        msg = str(info.value)
        assert isinstance(info.value, DatasetNotFoundError)
        assert "Expected layout" in msg and "\nROOT/" in msg and msg.count("\n") >= 4, msg
        for mark in marks:
            assert mark in msg, (mark, msg)
    assert "does not exist" in _err(name, tmp_path / "nope")


def _err(name, root) -> str:
    with pytest.raises(FileNotFoundError) as info:
        get_dataset(name, root, "val" if name != "folder" else None)
    return str(info.value)


def test_partial_layout_names_missing_part(tmp_path):
    _ade(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "ADEChallengeData2016" / "annotations" / "validation")
    msg = _err("ade20k", tmp_path)
    assert "annotations/validation" in msg and "Expected layout" in msg
    _cityscapes(tmp_path / "cs")
    shutil.rmtree(tmp_path / "cs" / "gtFine" / "val")
    assert "gtFine/val" in _err("cityscapes", tmp_path / "cs")


def test_bad_split_and_name(tmp_path):
    _ade(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        get_dataset("ade20k", tmp_path, "test")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        get_dataset("imagenet", tmp_path)


# ----------------------------------------------------------------------------------------------
# registry, subsets, label maps
# ----------------------------------------------------------------------------------------------
def test_registry():
    assert set(DATASETS) == {"voc", "ade20k", "cocostuff", "cocostuff27", "cityscapes", "folder", "scenes"}
    for name, n in [("voc", 21), ("ade20k", 150), ("cocostuff", 171), ("cocostuff27", 27), ("cityscapes", 19)]:
        spec = dataset_spec(name)
        assert spec.num_classes == n == len(spec.class_names) and spec.ignore_index == IGNORE_INDEX
        assert len(set(spec.class_names)) == n
        assert "ROOT/" in spec.layout
    assert dataset_spec("VOC2012").name == "voc" and dataset_spec("Coco_Stuff").name == "cocostuff"
    assert len(dataset_spec("scenes").class_names) == sc.NUM_CLASSES


def test_max_samples_is_a_seeded_nested_subset(tmp_path):
    for k in range(12):
        _image(tmp_path / "images" / f"{k:02d}.png", k, 8, 8)
        _mask(tmp_path / "masks" / f"{k:02d}.png", np.zeros((8, 8)))
    kw = dict(num_classes=2, image_size=8)
    a = get_dataset("folder", tmp_path, max_samples=4, seed=3, **kw).ids
    assert a == get_dataset("folder", tmp_path, max_samples=4, seed=3, **kw).ids and a == sorted(a)
    assert a != get_dataset("folder", tmp_path, max_samples=4, seed=4, **kw).ids
    assert set(get_dataset("folder", tmp_path, max_samples=2, seed=3, **kw).ids) <= set(a)
    full = get_dataset("folder", tmp_path, max_samples=50, **kw)
    assert len(full) == 12 == full.available and full.record()["num_samples"] == 12
    with pytest.raises(ValueError, match="max_samples"):
        get_dataset("folder", tmp_path, max_samples=0, **kw)


def test_map_labels_and_read_mask(tmp_path):
    lut = seg.identity_label_map(3)
    assert np.array_equal(map_labels(np.array([[0, 2], [255, 1]], np.uint8), lut), [[0, 2], [255, 1]])
    with pytest.raises(ValueError, match=r"m\.png: label value\(s\) 3, 300, 70000"):
        map_labels(np.array([[0, 3], [300, 70000]], np.int64), lut, "m.png")
    _mask(tmp_path / "wide.png", _stripes([0, 1, 700]))  # 16-bit PNG
    assert read_mask(tmp_path / "wide.png").max() == 700
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 9
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match=r"colour\.png is a RGB colour image"):
        read_mask(tmp_path / "colour.png")
    Image.fromarray(np.full((4, 4, 3), 5, np.uint8)).save(tmp_path / "grey_rgb.png")
    assert (read_mask(tmp_path / "grey_rgb.png") == 5).all()


# ----------------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------------
def _aligned_pair(h: int = 30, w: int = 50):
    """An image whose colour encodes its mask: label 1 red, 2 green, 0 blue, ignore grey; an
    asymmetric pattern, so a flip or shift of one but not the other shows."""
    yy, xx = np.mgrid[0:h, 0:w]
    cell = yy // 6 + (xx // 7) * (xx // 7 + 1) // 2
    mask = np.where(cell % 3 == 0, 1, np.where(cell % 3 == 1, 2, 0))
    mask[:3] = IGNORE_INDEX
    colours = {0: (0, 0, 255), 1: (255, 0, 0), 2: (0, 255, 0), IGNORE_INDEX: (128, 128, 128)}
    img = np.zeros((h, w, 3), np.uint8)
    for v, c in colours.items():
        img[mask == v] = c
    image = tv_tensors.Image(torch.from_numpy(img).permute(2, 0, 1).contiguous())
    return image, tv_tensors.Mask(torch.from_numpy(mask).long()), colours


def _agreement(image: torch.Tensor, mask: torch.Tensor, colours) -> float:
    """Among pixels whose (denormalised) colour is a pure label colour (not blended at an edge),
    the fraction whose label has that colour."""
    mean = torch.tensor(seg.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(seg.IMAGENET_STD).view(3, 1, 1)
    rgb = ((image * std + mean) * 255).permute(1, 2, 0).reshape(-1, 3)
    keys = list(colours)
    table = torch.tensor([colours[k] for k in keys], dtype=torch.float32)
    dist, nearest = torch.cdist(rgb, table).min(1)
    pure = dist < 30
    assert pure.float().mean() > 0.3, "too few pure pixels to judge alignment"
    return float((torch.tensor(keys)[nearest] == mask.reshape(-1))[pure].float().mean())


def test_eval_transform_joint_nearest_and_normalised():
    image, mask, colours = _aligned_pair()
    t = EvalTransform(image_size=S)
    out_img, out_mask = t(image, mask)
    assert out_img.shape == (3, S, S) and out_mask.shape == (S, S) and out_mask.dtype == torch.int64
    assert type(out_img) is torch.Tensor and type(out_mask) is torch.Tensor
    assert set(out_mask.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}  # nearest: no blended labels
    assert _agreement(out_img, out_mask, colours) > 0.97
    # centre crop of the 30 -> 16 resized image: columns of the resized 16 x 27 image, offset 5
    full = torch.nn.functional.interpolate(mask[None, None].float(), size=(16, 26), mode="nearest")[0, 0].long()
    assert torch.equal(out_mask, full[:, 5:21])
    white = tv_tensors.Image(torch.full((3, 20, 20), 255, dtype=torch.uint8))
    norm, _ = t(white, tv_tensors.Mask(torch.zeros(20, 20, dtype=torch.long)))
    expect = (1 - torch.tensor(seg.IMAGENET_MEAN)) / torch.tensor(seg.IMAGENET_STD)
    assert torch.allclose(norm[:, 0, 0], expect, atol=1e-5)
    with pytest.raises(ValueError, match="resize"):
        EvalTransform(image_size=S, resize=S - 1)


def test_train_transform_seeded_aligned_and_private(rng_state_guard):
    image, mask, colours = _aligned_pair(40, 40)
    a, b = TrainTransform(image_size=S, seed=5), TrainTransform(image_size=S, seed=5)
    outs_a = [a(image, mask) for _ in range(6)]
    outs_b = [b(image, mask) for _ in range(6)]
    for (ia, ma), (ib, mb) in zip(outs_a, outs_b, strict=True):
        assert torch.equal(ia, ib) and torch.equal(ma, mb)
        assert ia.shape == (3, S, S) and set(ma.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}
        assert _agreement(ia, ma, colours) > 0.97
    assert len({tuple(m.flatten().tolist()) for _, m in outs_a}) > 1  # the crops differ
    c = TrainTransform(image_size=S, seed=6)
    assert any(not torch.equal(c(image, mask)[1], m) for _, m in outs_a)
    a.set_epoch(1)
    epoch1 = [a(image, mask)[1] for _ in range(6)]
    assert any(not torch.equal(m1, m0) for m1, (_, m0) in zip(epoch1, outs_a, strict=True))
    a.set_epoch(0)
    assert all(torch.equal(a(image, mask)[1], m0) for _, m0 in outs_a)  # epoch 0 replays
    with pytest.raises(ValueError, match="scale"):
        TrainTransform(scale=(0.0, 1.0))
    copy = pickle.loads(pickle.dumps(a))  # goes to DataLoader workers; restarts its stream
    assert copy == a and torch.equal(copy(image, mask)[1], TrainTransform(image_size=S, seed=5)(image, mask)[1])


def test_dataloader_batches(tmp_path):
    _ade(tmp_path)
    ds = get_dataset("ade20k", tmp_path, "train", image_size=S, transform=TrainTransform(image_size=S, seed=1))
    images, masks = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert images.shape == (3, 3, S, S) and masks.shape == (3, S, S) and masks.dtype == torch.int64
