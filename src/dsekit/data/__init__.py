"""Data: the built-in dense scenes, the unlabeled image sample used to score checkpoints, segmentation
readers (names read lazily)."""

from ..lazy import lazy_exports

_EXPORTS = {
    "IMAGE_EXTENSIONS": ".images",
    "IMAGENET_MEAN": ".images",
    "IMAGENET_STD": ".images",
    "ImageSample": ".images",
    "ImageSampleResult": ".images",
    "ImageSampleWarning": ".images",
    "find_images": ".images",
    "load_image_sample": ".images",
    "IGNORE_INDEX": ".scenes",
    "NUM_CLASSES": ".scenes",
    "SceneConfig": ".scenes",
    "SceneDataset": ".scenes",
    "Scenes": ".scenes",
    "SceneWriteResult": ".scenes",
    "class_names": ".scenes",
    "generate_scenes": ".scenes",
    "make_scenes": ".scenes",
    "num_classes": ".scenes",
    "read_scenes": ".scenes",
    "write_scenes": ".scenes",
    "DATASETS": ".segmentation",
    "DatasetNotFoundError": ".segmentation",
    "DatasetSpec": ".segmentation",
    "EvalTransform": ".segmentation",
    "SegmentationDataset": ".segmentation",
    "TrainTransform": ".segmentation",
    "dataset_spec": ".segmentation",
    "default_train_split": ".segmentation",
    "get_dataset": ".segmentation",
    "map_labels": ".segmentation",
    "read_mask": ".segmentation",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
