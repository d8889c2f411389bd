"""Backbones: patch features ``(B, N, d)`` from timm models and official SSL checkpoints.

>>> from dsekit.backbones import load_backbone, FeatureExtractor, extract_features
>>> model = load_backbone("run/checkpoint0100.pth", "dino")          # doctest: +SKIP
>>> feats = extract_features(FeatureExtractor(model), images)         # doctest: +SKIP
"""

from dsekit.backbones import methods  # noqa: F401 - importing it registers the built-in methods
from dsekit.backbones.checkpoints import (
    AdaptedStateDict,
    adapt_state_dict,
    load_backbone,
    load_backbone_as,
    load_into,
    load_state_dict_for,
)
from dsekit.backbones.discovery import checkpoint_label, discover_checkpoints, epoch_from_filename
from dsekit.backbones.extract import (
    FeatureExtractor,
    FeatureFn,
    ImageEmbedder,
    backbone_recipe,
    create_backbone,
    extract_features,
    num_feature_layers,
    output_shapes,
    tokens_from_intermediate,
)
from dsekit.backbones.reading import SAFE_GLOBALS, read_checkpoint
from dsekit.backbones.registry import (
    INIT_EPOCH,
    BranchSpec,
    CheckpointError,
    CheckpointKeyError,
    MethodAdapter,
    PartialLoadWarning,
    UnsafeCheckpointError,
    get_adapter,
    list_methods,
    register,
)

__all__ = [
    "INIT_EPOCH",
    "SAFE_GLOBALS",
    "AdaptedStateDict",
    "BranchSpec",
    "CheckpointError",
    "CheckpointKeyError",
    "FeatureExtractor",
    "FeatureFn",
    "ImageEmbedder",
    "MethodAdapter",
    "PartialLoadWarning",
    "UnsafeCheckpointError",
    "adapt_state_dict",
    "backbone_recipe",
    "checkpoint_label",
    "create_backbone",
    "discover_checkpoints",
    "epoch_from_filename",
    "extract_features",
    "get_adapter",
    "list_methods",
    "load_backbone",
    "load_backbone_as",
    "load_into",
    "load_state_dict_for",
    "num_feature_layers",
    "output_shapes",
    "read_checkpoint",
    "register",
    "tokens_from_intermediate",
]
