"""Built-in dense data: handwritten digits on texture photographs, with per-pixel masks.

Every scene is made from real images that ship inside installed packages, so nothing is
downloaded:

* backgrounds are texture photographs bundled in the scikit-image wheel (``brick``, ``grass``,
  ``gravel``, ``ihc`` and ``hubble_deep_field`` from ``skimage/data/``), read straight from the
  package directory;
* foreground objects are the 1797 handwritten digits of scikit-learn's ``load_digits`` (8x8,
  10 classes), upscaled, thresholded into shape masks and painted in a colour that contrasts
  with the background under them.

A scene's background is split into 2-3 regions by a randomly warped Voronoi partition (smooth
boundaries); each region shows a crop of a different texture photo. Class ids:

* ``0 .. T-1``: background textures (``T = len(config.textures)``, 5 by default),
* ``T .. T+9``: digits ``0 .. 9`` (``T``: every digit, with ``SceneConfig(merge_digits=True)``),
* ``IGNORE_INDEX`` (255): the thin anti-aliased rim of each digit (optional).

Train and validation splits are disjoint by construction: they draw from disjoint digit
instances (a fixed, seed-independent, class-stratified 80/20 split of ``load_digits``) and from
disjoint halves of every texture photo (left half for ``train``, right half for ``val``).

Generation is deterministic: scene ``i`` of a split depends only on ``(seed, split, i)`` and
the config, so ``make_scenes(10)`` is a prefix of ``make_scenes(1000)``. Pixel work is
vectorised over chunks of scenes; the decoded photos are cached once per process.

The package holds the generator settings (``config``), the source images (``sources``), the
pixel synthesis (``render``), the generation API (``generate``), the torch dataset (``dataset``)
and the on-disk layout (``layout``); this module re-exports the public API.
"""

from .config import (
    IGNORE_INDEX,
    NUM_CLASSES,
    SPLITS,
    TEXTURES,
    SceneConfig,
    class_names,
    num_classes,
    scene_settings,
)

# IMAGENET_*: re-exported, not in __all__, as before
from .dataset import IMAGENET_MEAN as IMAGENET_MEAN
from .dataset import IMAGENET_STD as IMAGENET_STD
from .dataset import SceneDataset
from .generate import Scenes, generate_scenes, make_scenes
from .layout import SceneWriteResult, read_scenes, write_scenes
from .sources import digit_split_indices, texture_split_bounds

__all__ = [
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "SPLITS",
    "TEXTURES",
    "SceneConfig",
    "Scenes",
    "SceneDataset",
    "SceneWriteResult",
    "class_names",
    "num_classes",
    "digit_split_indices",
    "texture_split_bounds",
    "generate_scenes",
    "make_scenes",
    "write_scenes",
    "read_scenes",
    "scene_settings",
]
