"""The on-disk layout of the built-in scenes: ``write_scenes`` (PNG images and masks, VOC-like)
and ``read_scenes``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import FORMAT_VERSION, IGNORE_INDEX, SPLITS, SceneConfig, check_split, resolve_config, scene_settings
from .generate import check_n_seed, generate_scenes

__all__ = ["SceneWriteResult", "read_scenes", "write_scenes"]


def _voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 entries, flattened RGB), 255 drawn in light grey."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    pal[IGNORE_INDEX] = (224, 224, 192)
    return pal.reshape(-1).tolist()


@dataclass
class SceneWriteResult:
    """What ``write_scenes`` wrote: the root, the stems per split and the class names."""

    root: Path
    stems: dict[str, list[str]]
    class_names: list[str]

    @property
    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.stems.items()}


def write_scenes(
    out_dir: str | os.PathLike,
    n: int | Mapping[str, int] = 1000,
    *,
    splits: str | Sequence[str] = SPLITS,
    image_size: int | None = None,
    seed: int = 0,
    config: SceneConfig | None = None,
    num_workers: int | None = None,
) -> SceneWriteResult:
    """Write scenes as PNG images and masks in a VOC-like layout under ``out_dir``::

        out_dir/
          images/{split}_{i:05d}.png     RGB scenes
          masks/{split}_{i:05d}.png      palettised PNG, pixel value = class id, 255 = ignore
          ImageSets/Segmentation/{split}.txt   one stem per line
          classes.txt                    one class name per line (line k = class id k)
          scenes.json                    generator settings, counts and ignore index

    Args:
        n: scenes per split, or a mapping ``{split: n}``.
        splits: which splits to write.
    """
    from PIL import Image

    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    for s in splits:
        check_split(s)
    if isinstance(n, Mapping):
        missing = [s for s in splits if s not in n]
        if missing:
            raise ValueError(f"n gives no count for split(s) {missing}; got {dict(n)}")
    counts = {s: (n[s] if isinstance(n, Mapping) else n) for s in splits}
    config = resolve_config(config, image_size)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"output path {root} exists and is not a directory")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    palette = _voc_palette()

    def save(args: tuple[np.ndarray, np.ndarray, str]) -> None:
        img, msk, stem = args
        Image.fromarray(img).save(root / "images" / f"{stem}.png", compress_level=1)
        m = Image.fromarray(msk).convert("P")
        m.putpalette(palette)
        m.save(root / "masks" / f"{stem}.png", optimize=False)

    stems: dict[str, list[str]] = {}
    workers = num_workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for split in splits:
            check_n_seed(counts[split], seed)
            split_stems = [f"{split}_{i:05d}" for i in range(counts[split])]
            for c in range(0, counts[split], 256):  # bounded memory for large sets
                k = min(256, counts[split] - c)
                sc = generate_scenes(k, split, seed=seed, config=config, start=c)
                list(pool.map(save, zip(sc.images, sc.masks, split_stems[c : c + k], strict=True)))
            (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(s + "\n" for s in split_stems))
            stems[split] = split_stems
    names = config.class_names()
    (root / "classes.txt").write_text("".join(c + "\n" for c in names))
    meta = {
        "source": "dsekit.data.scenes",
        "format_version": FORMAT_VERSION,
        "seed": int(seed),
        "counts": {s: len(v) for s, v in stems.items()},
        "ignore_index": IGNORE_INDEX,
        "num_classes": config.num_classes,
        "class_names": names,
        "config": scene_settings("train", 0, config=config)["config"],
    }
    (root / "scenes.json").write_text(json.dumps(meta, indent=2) + "\n")
    return SceneWriteResult(root=root, stems=stems, class_names=names)


def read_scenes(root: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Read back a layout written by ``write_scenes``: images (n, S, S, 3) and masks (n, S, S) uint8."""
    from PIL import Image

    root = Path(root)
    lst = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not lst.is_file():
        raise FileNotFoundError(
            f"{lst} not found; expected the layout written by write_scenes: images/, masks/, "
            f"ImageSets/Segmentation/{{train,val}}.txt, classes.txt under {root}"
        )
    stems = [s for s in lst.read_text().split() if s]
    images, masks = [], []
    for stem in stems:
        with Image.open(root / "images" / f"{stem}.png") as im:
            images.append(np.asarray(im.convert("RGB")))
        with Image.open(root / "masks" / f"{stem}.png") as im:
            masks.append(np.asarray(im))  # palette indices = class ids
    if not stems:
        return np.zeros((0, 0, 0, 3), np.uint8), np.zeros((0, 0, 0), np.uint8)
    return np.stack(images), np.stack(masks)
