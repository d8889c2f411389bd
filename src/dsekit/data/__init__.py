"""Data: the built-in dense scenes and the unlabeled image sample used to score checkpoints."""

from .images import (
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageSample,
    ImageSampleResult,
    ImageSampleWarning,
    find_images,
    load_image_sample,
)
from .scenes import (
    IGNORE_INDEX,
    NUM_CLASSES,
    SceneConfig,
    SceneDataset,
    Scenes,
    SceneWriteResult,
    class_names,
    generate_scenes,
    make_scenes,
    num_classes,
    read_scenes,
    write_scenes,
)

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_CLASSES",
    "ImageSample",
    "ImageSampleResult",
    "ImageSampleWarning",
    "SceneConfig",
    "SceneDataset",
    "SceneWriteResult",
    "Scenes",
    "class_names",
    "find_images",
    "generate_scenes",
    "load_image_sample",
    "make_scenes",
    "num_classes",
    "read_scenes",
    "write_scenes",
]
