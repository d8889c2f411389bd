"""Tests of the unlabeled image sample: discovery, selection, decoding, preprocessing, errors."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsekit.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageSample,
    ImageSampleWarning,
    default_resize,
    find_images,
    load_image_sample,
)
from dsekit.data.scenes import make_scenes


def _rgb(seed: int, h: int = 40, w: int = 52) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, mode="RGB")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """An ImageFolder-like tree: 12 readable images, one corrupt, one non-image, hidden files."""
    root = tmp_path_factory.mktemp("imgs")
    (root / "cat").mkdir()
    (root / "dog" / "nested").mkdir(parents=True)
    (root / ".cache").mkdir()
    for i in range(5):
        _rgb(i).save(root / "cat" / f"c{i}.png")
    for i in range(4):
        _rgb(10 + i).save(root / "dog" / f"d{i}.JPG", quality=95)  # upper-case extension
    _rgb(20).save(root / "dog" / "nested" / "n0.jpeg")
    grey = np.tile(np.arange(0, 240, 6, dtype=np.uint8), (30, 1))  # (30, 40) gradient
    Image.fromarray(grey, mode="L").save(root / "grey.png")
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(root / "alpha.webp")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 4)
    (root / "notes.txt").write_text("not an image")
    _rgb(30).save(root / ".hidden.png")
    _rgb(31).save(root / ".cache" / "x.png")
    return root


READABLE = 12  # 5 cat + 4 dog + 1 nested + grey + alpha


def test_find_images_recursive_sorted_case_insensitive(tree):
    names = find_images(tree)
    assert names == sorted(names)
    assert len(names) == READABLE + 1  # the corrupt .jpg is an image file by name
    assert "dog/d0.JPG" in names and "dog/nested/n0.jpeg" in names and "broken.jpg" in names
    assert not any(n.endswith(".txt") or "/." in "/" + n for n in names)


def test_loads_all_readable_and_reports_the_broken_file(tree):
    with pytest.warns(ImageSampleWarning) as record:
        res = load_image_sample(tree, num_images=50, seed=0, image_size=32)
    messages = [str(w.message) for w in record]
    skip = [m for m in messages if "unreadable" in m]
    fewer = [m for m in messages if "fewer" in m]
    assert len(skip) == 1 and "skipped 1 unreadable" in skip[0] and "broken.jpg" in skip[0]
    assert len(fewer) == 1 and "12" in fewer[0] and "50" in fewer[0]
    assert len(res) == READABLE and res.images.shape == (READABLE, 3, 32, 32)
    assert res.images.dtype == torch.float32 and torch.isfinite(res.images).all()
    assert res.num_skipped == 1 and res.skipped[0][0] == "broken.jpg"
    assert res.requested == 50 and res.available == READABLE + 1 and res.shortfall == 50 - READABLE
    assert sorted(res.names) == sorted(n for n in find_images(tree) if n != "broken.jpg")
    assert all(p.is_file() and p.is_absolute() for p in res.paths)
    assert [p.relative_to(tree).as_posix() for p in res.paths] == res.names
    rec = res.record()
    assert rec["num_skipped"] == 1 and rec["image_hash"] == res.image_hash and rec["num_images"] == READABLE


def test_unreadable_files_are_replaced_to_reach_the_count(tree):
    # asking for every readable image must succeed whatever the permutation does with the
    # broken file: it is skipped and the next file in the permutation takes its place
    for seed in range(4):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = load_image_sample(tree, num_images=READABLE, seed=seed, image_size=16)
        assert len(res) == READABLE
        assert not any("fewer" in str(w.message) for w in caught)
        assert "broken.jpg" not in res.names


@pytest.mark.filterwarnings("ignore::dsekit.data.images.ImageSampleWarning")
def test_selection_is_deterministic_and_seeded(tree):
    kw = dict(num_images=5, image_size=24)
    a = load_image_sample(tree, seed=3, **kw)
    b = load_image_sample(tree, seed=3, **kw, num_workers=1)
    c = load_image_sample(tree, seed=4, **kw)
    assert a.names == b.names and torch.equal(a.images, b.images)
    assert a.image_hash == b.image_hash
    assert a.names != c.names and a.image_hash != c.image_hash
    assert len(set(a.names)) == 5


@pytest.mark.filterwarnings("ignore::dsekit.data.images.ImageSampleWarning")
def test_hash_depends_on_relative_paths_and_sizes(tree, tmp_path):
    kw = dict(num_images=4, seed=1, image_size=16)
    ref = load_image_sample(tree, **kw)
    copy = tmp_path / "elsewhere"
    shutil.copytree(tree, copy)
    moved = load_image_sample(copy, **kw)
    assert moved.names == ref.names and moved.image_hash == ref.image_hash
    # rewrite one of the chosen files with a different size: the hash changes
    target = copy / moved.names[0]
    with Image.open(target) as im:
        fmt = im.format
    _rgb(99, h=70, w=90).save(target, format=fmt)
    changed = load_image_sample(copy, **kw)
    assert changed.names == ref.names and changed.image_hash != ref.image_hash


def test_preprocessing_resize_and_centre_crop(tmp_path):
    # 20 x 40 image whose pixel (y, x) encodes x and y: with nearest resize to the same shorter
    # side the centre crop must be columns 12..27 and rows 2..17
    y, x = np.mgrid[0:20, 0:40]
    arr = np.stack([x * 6, y * 12, np.full_like(x, 77)], axis=-1).astype(np.uint8)
    Image.fromarray(arr, mode="RGB").save(tmp_path / "grid.png")
    res = load_image_sample(
        tmp_path, num_images=1, image_size=16, resize=20, interpolation="nearest", mean=None, std=None
    )
    got = (res.images[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(got, arr[2:18, 12:28])


def test_default_resize_and_normalisation(tmp_path):
    assert default_resize(224) == 256 and default_resize(32) == 37 and default_resize(448) == 512
    colour = np.array([255, 0, 128], dtype=np.uint8)
    Image.fromarray(np.tile(colour, (50, 70, 1)), mode="RGB").save(tmp_path / "solid.png")
    res = load_image_sample(tmp_path, num_images=1, image_size=32)
    assert res.settings["resize"] == 37 and res.settings["interpolation"] == "bicubic"
    expected = (torch.tensor(colour / 255.0) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(res.images[0].mean(dim=(1, 2)).double(), expected, atol=1e-5, rtol=0)
    assert res.images[0].std(dim=(1, 2)).max() < 1e-5


@pytest.mark.filterwarnings("ignore::dsekit.data.images.ImageSampleWarning")
def test_grayscale_and_alpha_become_rgb(tree):
    res = load_image_sample(tree, num_images=50, image_size=16, mean=None, std=None, seed=0)
    grey = res.images[res.names.index("grey.png")]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert grey.std() > 0.05  # the gradient survived
    alpha = res.images[res.names.index("alpha.webp")]
    torch.testing.assert_close(alpha.mean(dim=(1, 2)), torch.tensor([200 / 255, 0.0, 0.0]), atol=2 / 255, rtol=0)


@pytest.mark.filterwarnings("ignore::dsekit.data.images.ImageSampleWarning")
def test_half_precision_output(tree):
    res = load_image_sample(tree, num_images=2, image_size=16, dtype=torch.bfloat16)
    assert res.images.dtype == torch.bfloat16


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_image_sample(missing, num_images=2)


def test_not_a_directory(tmp_path):
    f = tmp_path / "file.png"
    _rgb(0).save(f)
    with pytest.raises(NotADirectoryError, match="file.png"):
        load_image_sample(f, num_images=2)


def test_directory_without_images(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.md").write_text("no images")
    with pytest.raises(FileNotFoundError) as info:
        load_image_sample(tmp_path, num_images=2)
    msg = str(info.value)
    assert str(tmp_path) in msg and ".jpg" in msg and ".png" in msg and ".webp" in msg


def test_directory_with_only_unreadable_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"garbage")
    (tmp_path / "b.jpg").write_bytes(b"")
    with pytest.warns(ImageSampleWarning, match="skipped 2"):
        with pytest.raises(ValueError, match="could be decoded"):
            load_image_sample(tmp_path, num_images=2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_images": 0}, "num_images"),
        ({"seed": -1}, "seed"),
        ({"image_size": 64, "resize": 32}, "resize"),
        ({"interpolation": "cubic"}, "interpolation"),
        ({"mean": (0.5, 0.5, 0.5), "std": None}, "mean and std"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageSample(**kwargs)


def test_default_source_is_the_builtin_scenes():
    res = load_image_sample(None, num_images=6, seed=2, image_size=32)
    assert res.source == "scenes" and len(res) == 6 and res.paths == [] and res.num_skipped == 0
    images, _ = make_scenes(6, "train", image_size=32, seed=2)
    raw = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(res.images, (raw - mean) / std)
    again = load_image_sample(None, num_images=6, seed=2, image_size=32)
    other = load_image_sample(None, num_images=6, seed=3, image_size=32)
    bigger = load_image_sample(None, num_images=7, seed=2, image_size=32)
    assert again.image_hash == res.image_hash
    assert len({res.image_hash, other.image_hash, bigger.image_hash}) == 3
    assert res.settings["scenes"]["split"] == "train"


def test_sixteen_bit_grey_is_rescaled_not_saturated(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 48).astype(np.uint16), (40, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    res = load_image_sample(tmp_path, num_images=1, image_size=32, mean=None, std=None)
    img = res.images[0]
    assert torch.equal(img[0], img[2])
    assert img.min() < 0.2 and img.max() > 0.8 and 0.3 < img.mean() < 0.7


def test_symlink_loops_do_not_hang(tmp_path):
    (tmp_path / "a").mkdir()
    _rgb(1).save(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    assert find_images(tmp_path) == ["a/x.png"]


def test_dangling_link_link_loop_and_fifo_are_skipped_and_counted_by_the_scan(tmp_path, capsys):
    """None of them may abort the scan, print a traceback or hang (a FIFO named *.jpg blocks a reader)."""
    import os
    import threading

    import torch
    from PIL import Image

    from dsekit.backbones import create_backbone
    from dsekit.cli import main

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images / f"ok{i}.png")
    os.symlink(images / "gone.png", images / "dangling.png")
    os.symlink(images / "loop.jpg", images / "loop.jpg")
    os.mkfifo(images / "pipe.jpg")
    run = tmp_path / "run"
    run.mkdir()
    m = create_backbone("vit_small_patch16_224", img_size=32, depth=1)
    sd = {"backbone." + k: v for k, v in m.state_dict().items()}
    torch.save({"teacher": sd, "student": sd, "epoch": 1}, run / "checkpoint0001.pth")
    rc: list[int] = []
    t = threading.Thread(
        target=lambda: rc.append(
            main(
                [
                    "scan",
                    str(run),
                    "--method",
                    "dino",
                    "--model-kwarg",
                    "depth=1",
                    "--image-size",
                    "32",
                    "--images",
                    str(images),
                    "--num-images",
                    "9",
                    "--local-clusters",
                    "2",
                    "--global-clusters",
                    "4",
                    "--images-per-group",
                    "2",
                    "--intervals",
                    "0",
                    "--quiet",
                    "--out",
                    str(tmp_path / "out"),
                ]
            )
        ),
        daemon=True,
    )
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "the scan hung"
    assert rc == [0]
    assert "Traceback" not in capsys.readouterr().err
    run_json = __import__("json").loads((tmp_path / "out" / "run.json").read_text())
    assert run_json["images"]["skipped"] == [
        "dangling.png: FileNotFoundError: No such file or directory",
        "loop.jpg: OSError: Too many levels of symbolic links",
        "pipe.jpg: not a regular file",
    ]
    assert run_json["images"]["num_images"] == 6 and run_json["images"]["num_skipped"] == 3
