"""Dense (patch-level) features ``(B, N, d)`` from a backbone, uniform across model families.

Every timm model that implements ``forward_intermediates`` is supported the same way:

* ViT-like models (``vit_small_patch16_224``, ``vit_base_patch16_224``, I-JEPA style ViTs without
  class token, models with register tokens, any patch or image size): the patch tokens of the chosen
  block **after the final norm**, prefix (class / register / distillation) tokens dropped, ``N = h*w``.
* CNNs (``resnet50``, ConvNeXt, ...): the chosen stage's ``(d, h, w)`` map flattened row-major to
  ``N = h*w`` vectors of size ``d``. A ConvNeXt built with ``head_norm_first=True`` (VICRegL's, whose
  final norm comes before pooling) gives its last stage after that norm; timm's default ConvNeXt
  normalises only after pooling, so its maps are the raw stage.
* Swin (``swin_tiny_patch4_window7_224``): the chosen stage; the last stage is taken after the final norm.

Any other ``nn.Module`` can be used with a user function ``fn(model, images) -> (B, N, d)``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from functools import partial
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from dsekit.backbones import dinov3_vit
from dsekit.runtime import resolve_device

__all__ = [
    "NAMED_LAYERS",
    "FeatureExtractor",
    "FeatureFn",
    "ImageEmbedder",
    "backbone_recipe",
    "create_backbone",
    "extract_features",
    "meta_tensors",
    "output_shapes",
    "num_feature_layers",
    "tokens_from_intermediate",
]

FeatureFn = Callable[[nn.Module, Tensor], Tensor]
"""A user function ``fn(model, images (B, 3, H, W)) -> features (B, N, d)``."""


class TimmIntermediates(Protocol):
    """A model with timm's ``forward_intermediates`` (torch types other attributes of a module as
    ``Tensor | Module``; the extractor checks that the method exists before it casts to this)."""

    def forward_intermediates(self, x: Tensor, **kwargs: Any) -> Any: ...


class TimmHead(Protocol):
    """A model with timm's ``forward_features`` and ``forward_head`` (``pre_logits=True``: the
    embedding before the classifier)."""

    def forward_features(self, x: Tensor) -> Tensor: ...

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor: ...


# --------------------------------------------------------------------------------------------------
# Pure tensor helpers
# --------------------------------------------------------------------------------------------------


def tokens_from_intermediate(x: Tensor) -> Tensor:
    """Convert one intermediate output to patch features ``(B, N, d)``.

    ``(B, d, h, w)`` maps are flattened row-major to ``(B, h*w, d)``; ``(B, N, d)`` tokens pass through.
    """
    if x.ndim == 4:
        return x.flatten(2).transpose(1, 2)
    if x.ndim == 3:
        return x
    raise ValueError(f"expected an intermediate feature of shape (B, d, h, w) or (B, N, d), got {tuple(x.shape)}")


def _check_features(z: Any, batch: int, source: str) -> Tensor:
    if not isinstance(z, Tensor):
        raise TypeError(f"{source} must return a torch.Tensor of shape (B, N, d), got {type(z).__name__}")
    if z.ndim != 3 or z.shape[0] != batch:
        raise ValueError(f"{source} must return features of shape (B={batch}, N, d), got {tuple(z.shape)}")
    if z.shape[1] < 1 or z.shape[2] < 1:
        raise ValueError(f"{source} returned empty features of shape {tuple(z.shape)}")
    return z


def _check_images(images: Any) -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch (B=0)")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (normalised pixels), got dtype {images.dtype}")
    return images


# --------------------------------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------------------------------


def create_backbone(
    arch: str,
    *,
    img_size: int | tuple[int, int] | None = None,
    init_weights: bool = True,
    empty: bool = False,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build the timm model ``arch`` without a classifier and without pretrained weights, in eval mode.

    Args:
        arch: a timm model name (``vit_small_patch16_224``, ``resnet50``, ...).
        img_size: input size for architectures that are built for one (ViT, Swin, ...); ignored by
            architectures that accept any size (CNNs).
        init_weights: ``False`` skips timm's own weight initialisation where the model allows it
            (``weight_init='skip'``; layers keep PyTorch's default initialisation). This saves seconds
            per model when a checkpoint overwrites every weight anyway.
        empty: the parameters on PyTorch's ``meta`` device: no memory and no values (the buffers,
            computed ones such as RoPE tables among them, are real). A checkpoint's tensors then
            *become* the parameters (:func:`dsekit.backbones.load_into`, which assigns them): a
            memory-mapped checkpoint is never copied. Implies ``init_weights=False``. Its output
            shapes are known without weights (:func:`output_shapes`).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``depth=4``, ``num_heads=12``,
            ``class_token=False``). A ``None`` value reaches the model as ``None`` (e.g.
            ``ls_init_value=None``: a ConvNeXt without layer scale), where ``timm.create_model``
            would drop it and keep the default: such models are built by the architecture's
            timm entry point. ``mlp_layer`` may be named (:data:`NAMED_LAYERS`: ``"mlp"``,
            ``"swiglu_packed"``, ``"swiglu"``), so that settings stay plain JSON.

    The initial weights come from the process-wide RNG's current state, which is left as it was.
    How the model was built is kept on it (:func:`backbone_recipe`).

    Weights are never downloaded: load them with :func:`dsekit.backbones.load_backbone`.
    """
    import timm

    dinov3_vit.register()  # dsekit's own networks, created through timm like the others
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"arch must be a timm model name, got {arch!r}")
    if timm_kwargs.pop("pretrained", False):
        raise ValueError(
            "create_backbone never downloads weights (pretrained=True is not supported); "
            "load a checkpoint with dsekit.backbones.load_backbone instead"
        )
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm architecture {arch!r}{hint}")
    init_weights = init_weights and not empty
    recipe = {
        "arch": arch,
        "img_size": img_size,
        "init_weights": init_weights,
        "empty": empty,
        "kwargs": dict(timm_kwargs),
    }
    kwargs: dict[str, Any] = {"num_classes": 0, **timm_kwargs}
    if isinstance(kwargs.get("mlp_layer"), str):
        kwargs["mlp_layer"] = _named_layer(kwargs["mlp_layer"])
    # timm.create_model drops None-valued kwargs; the entry point passes them on to the model
    create = (
        timm.models.model_entrypoint(arch)
        if any(v is None for v in kwargs.values())
        else partial(timm.create_model, arch)
    )
    optional: list[str] = []  # kwargs dropped again if the architecture does not take them
    if img_size is not None and "img_size" not in kwargs:
        kwargs["img_size"] = img_size
        optional.append("img_size")
    if not init_weights and "weight_init" not in kwargs:
        kwargs["weight_init"] = "skip"
        optional.append("weight_init")
    while True:
        try:
            # layers draw their initial weights from the process-wide RNG: draw them from a fork of
            # it, so that building a backbone leaves the caller's RNG as it was
            with torch.random.fork_rng(devices=[]), _empty_parameters() if empty else nullcontext():
                model = create(pretrained=False, **kwargs)
            break
        except TypeError as err:
            rejected = [k for k in optional if k in str(err)]
            if not rejected:
                raise
            for k in rejected:
                kwargs.pop(k)
                optional.remove(k)
    if not init_weights:
        _zero_skipped_tensors(model)
    model.dsekit_recipe = recipe
    return model.eval()


def _empty_parameters() -> Any:
    """Context in which modules get their parameters on the meta device, their buffers real."""
    from accelerate import init_empty_weights  # the field's helper for exactly this

    return init_empty_weights(include_buffers=False)


def meta_tensors(model: nn.Module) -> list[str]:
    """Names of ``model``'s parameters and buffers on the meta device (without values)."""
    return [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]


def output_shapes(extractor: nn.Module, images: Tensor) -> list[torch.Size]:
    """The shapes of ``extractor(images)`` (one tensor, or a list: one per layer), computed
    without values on the meta device when the model has no weights yet (built ``empty``), else
    by running it on ``images``' device in ``torch.inference_mode``."""
    with torch.inference_mode():
        if meta_tensors(extractor):
            import copy

            out = copy.deepcopy(extractor).to("meta")(images.to("meta"))
        else:
            out = extractor(images)
    return [z.shape for z in (out if isinstance(out, (list, tuple)) else [out])]


#: ``mlp_layer`` values by name (``create_backbone(..., mlp_layer="swiglu_packed")``)
NAMED_LAYERS = ("mlp", "swiglu_packed", "swiglu")


def _named_layer(name: str) -> Any:
    from timm.layers import Mlp, SwiGLU, SwiGLUPacked

    layers = dict(zip(NAMED_LAYERS, (Mlp, SwiGLUPacked, SwiGLU), strict=True))
    if name not in layers:
        raise ValueError(f"mlp_layer: expected one of {', '.join(NAMED_LAYERS)}, got {name!r}")
    return layers[name]


#: parameters that timm allocates with ``torch.empty`` and fills only in its weight initialisation
_SKIPPED_INIT = ("cls_token", "reg_token", "dist_token", "pos_embed", "mask_token")


def _zero_skipped_tensors(model: nn.Module) -> None:
    """Zero what ``weight_init='skip'`` leaves uninitialised (memory garbage, NaN at times): the
    prefix tokens and position embedding, and any other parameter or buffer that is not finite."""
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if t.is_meta:
                continue
            if t.is_floating_point() and (
                name.rsplit(".", 1)[-1] in _SKIPPED_INIT or not bool(torch.isfinite(t).all())
            ):
                t.zero_()


def backbone_recipe(model: nn.Module) -> dict[str, Any] | None:
    """How :func:`create_backbone` built ``model`` (``arch``, ``img_size``, ``init_weights``,
    ``empty`` and the timm ``kwargs`` it was given), to build it again with other kwargs;
    ``None`` for other models."""
    recipe = getattr(model, "dsekit_recipe", None)
    if not isinstance(recipe, dict):
        return None
    return {**recipe, "kwargs": dict(recipe["kwargs"])}


def num_feature_layers(model: nn.Module) -> int | None:
    """Number of selectable layers (blocks / stages) as counted by ``forward_intermediates``.

    Taken from timm's ``feature_info`` (ViT: one per block; ResNet: stem + 4 stages; Swin: 4 stages).
    ``None`` when the model does not say.
    """
    info = getattr(model, "feature_info", None)
    if isinstance(info, (list, tuple)) and len(info) > 0:
        return len(info)
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        return len(blocks)
    return None


# --------------------------------------------------------------------------------------------------
# Extractor
# --------------------------------------------------------------------------------------------------


class FeatureExtractor(nn.Module):
    """Wrap a backbone so that ``extractor(images (B, 3, H, W)) -> (B, N, d)``.

    Args:
        model: a timm model with ``forward_intermediates`` or, with ``fn``, any ``nn.Module``.
        layer: which block / stage to read, as ``forward_intermediates`` indexes them
            (negative counts from the end; default ``-1``: the last). For ResNets index 0 is the stem
            and 1..4 the four stages.
        fn: optional ``fn(model, images) -> (B, N, d)``; when given it replaces ``forward_intermediates``.
        norm: apply the model's final norm (ViT: to the chosen block; Swin: to the last stage), as
            timm's ``forward_intermediates(norm=True)`` does. Default ``True``.
        layers: several blocks / stages read from one forward pass (a layer map): ``forward``
            then returns a list, one ``(B, N_i, d_i)`` tensor per entry of ``layers``, in that
            order (``layer`` is ignored).

    Example:
        >>> model = create_backbone("vit_small_patch16_224", img_size=32, depth=2)
        >>> FeatureExtractor(model)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 4, 384])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: int = -1,
        *,
        fn: FeatureFn | None = None,
        norm: bool = True,
        layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        wanted = [layer] if layers is None else list(layers)
        for v in wanted:
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"layer must be an int (negative counts from the end), got {v!r}")
        if not wanted:
            raise ValueError("layers: expected at least one layer")
        if fn is not None and not callable(fn):
            raise TypeError(f"fn must be callable as fn(model, images) -> (B, N, d), got {fn!r}")
        if fn is not None and layers is not None:
            raise ValueError(
                "layers: a user fn gives one feature array; read several layers with forward_intermediates"
            )
        self.model = model
        self.layer = layer
        self.layers = None if layers is None else tuple(wanted)
        self.fn = fn
        self.norm = norm
        self._kwargs: dict[str, Any] = {}
        self._fmt_fallback = False
        if fn is None:
            forward_intermediates = getattr(model, "forward_intermediates", None)
            if not callable(forward_intermediates):
                raise ValueError(
                    f"{type(model).__name__} has no forward_intermediates(); pass "
                    "fn=lambda model, images: ... returning (B, N, d) features"
                )
            n = num_feature_layers(model)
            for v in wanted:
                if n is not None and not -n <= v < n:
                    raise ValueError(
                        f"layer={v} is out of range for {type(model).__name__} with {n} layers (valid: {-n} .. {n - 1})"
                    )
            # forward_intermediates returns blocks in network order: ask for them sorted, once each
            self._indices = sorted({v % n for v in wanted}) if n is not None else wanted
            self._order = [self._indices.index(v % n) for v in wanted] if n is not None else list(range(len(wanted)))
            self._kwargs = self._intermediate_kwargs(forward_intermediates)

    def _intermediate_kwargs(self, forward_intermediates: Callable[..., Any]) -> dict[str, Any]:
        params = inspect.signature(forward_intermediates).parameters
        wanted: dict[str, Any] = {
            "norm": self.norm,
            "stop_early": True,
            "intermediates_only": True,
            "return_prefix_tokens": False,
        }
        kwargs = {k: v for k, v in wanted.items() if k in params}
        if "output_fmt" in params:
            # token models (ViT family) give (B, N, d) directly; others give NCHW maps
            token_model = getattr(self.model, "num_prefix_tokens", None) is not None
            kwargs["output_fmt"] = "NLC" if token_model else "NCHW"
        return kwargs

    @property
    def uses_fn(self) -> bool:
        """True when features come from the user function rather than ``forward_intermediates``."""
        return self.fn is not None

    def forward(self, images: Tensor) -> Tensor | list[Tensor]:
        """Patch features ``(B, N, d)`` of ``images (B, 3, H, W)`` (a list of them with ``layers``)."""
        images = _check_images(images)
        batch = images.shape[0]
        if self.fn is not None:
            return _check_features(self.fn(self.model, images), batch, "fn(model, images)")
        out = self._intermediates(images)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        if len(out) != len(self._indices):
            raise RuntimeError(f"forward_intermediates returned {len(out)} outputs for {len(self._indices)} layer(s)")
        name = type(self.model).__name__
        feats = [_check_features(tokens_from_intermediate(out[i]), batch, name) for i in self._order]
        return feats if self.layers is not None else feats[0]

    def _intermediates(self, images: Tensor) -> Any:
        kwargs = dict(self._kwargs)
        if self._fmt_fallback:
            kwargs["output_fmt"] = "NCHW"
        indices = list(self._indices)
        model = cast(TimmIntermediates, self.model)  # checked in __init__ (no fn: the method exists)
        try:
            return model.forward_intermediates(images, indices=indices, **kwargs)
        except AssertionError as err:
            if kwargs.get("output_fmt") == "NLC" and "output" in str(err).lower():
                # some token models only emit NCHW maps
                self._fmt_fallback = True
                kwargs["output_fmt"] = "NCHW"
                return model.forward_intermediates(images, indices=indices, **kwargs)
            raise ValueError(
                f"forward_intermediates of {type(self.model).__name__} rejected layer(s) {indices} "
                f"or input {tuple(images.shape)}: {err}"
            ) from err

    def extra_repr(self) -> str:
        src = "fn" if self.fn is not None else "forward_intermediates"
        which = f"layers={list(self.layers)}" if self.layers is not None else f"layer={self.layer}"
        return f"{which}, norm={self.norm}, source={src}"


class ImageEmbedder(nn.Module):
    """``embedder(images (B, 3, H, W)) -> (B, 1, d)``: the backbone's image-level embedding, as
    its own head would read it — timm's ``forward_head(forward_features(x), pre_logits=True)``
    (the class token after the final norm for ViTs with one, the pooled map for CNNs), or the
    module's ``image_embedding(x)`` (dsekit's DINOv3 ViT, Hugging Face models). The singleton
    token axis lets :func:`extract_features` batch it like patch features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        own = getattr(model, "image_embedding", None)
        if not callable(own) and not (
            callable(getattr(model, "forward_head", None)) and callable(getattr(model, "forward_features", None))
        ):
            raise ValueError(f"{type(model).__name__} has neither image_embedding() nor timm's forward_head()")
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        own = getattr(self.model, "image_embedding", None)
        if callable(own):
            z = own(images)
        else:
            timm = cast(TimmHead, self.model)  # checked in __init__: without image_embedding, timm's pair
            z = timm.forward_head(timm.forward_features(images), pre_logits=True)
        if z.ndim != 2:
            z = z.flatten(1)
        return z.unsqueeze(1)


# --------------------------------------------------------------------------------------------------
# Batched extraction
# --------------------------------------------------------------------------------------------------


def _as_extractor(extractor: Any) -> nn.Module | Callable[[Tensor], Tensor]:
    if isinstance(extractor, (FeatureExtractor, ImageEmbedder)):
        return extractor
    if isinstance(extractor, nn.Module):
        return FeatureExtractor(extractor)
    if callable(extractor):
        return extractor
    raise TypeError(f"extractor must be a FeatureExtractor, an nn.Module or a callable, got {type(extractor).__name__}")


def _iter_batches(images: Tensor | Iterable[Any], batch_size: int) -> Iterator[Tensor]:
    if isinstance(images, Tensor):
        _check_images(images)
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
        return
    for i, item in enumerate(images):
        if isinstance(item, (list, tuple)):  # (images, labels) from a DataLoader
            if not item:
                raise ValueError(f"batch {i} of images is empty")
            item = item[0]
        if isinstance(item, dict):
            for key in ("image", "images", "pixel_values"):
                if key in item:
                    item = item[key]
                    break
        if not isinstance(item, Tensor):
            raise TypeError(f"batch {i} of images is a {type(item).__name__}, expected a tensor")
        if item.ndim == 3:
            item = item.unsqueeze(0)
        _check_images(item)
        for start in range(0, item.shape[0], batch_size):
            yield item[start : start + batch_size]


def _resolve_device(extractor: Any, device: str | torch.device | None) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device is not None:
        return resolve_device(device)  # ValueError naming an unknown device or a missing CUDA
    if isinstance(extractor, nn.Module):
        for p in extractor.parameters():
            return p.device
    return torch.device("cpu")


def _has_conv(module: nn.Module) -> bool:
    convs = sum(1 for m in module.modules() if isinstance(m, nn.Conv2d))
    return convs > 1  # a ViT's patch embedding alone does not benefit


def extract_features(
    extractor: FeatureExtractor | nn.Module | Callable[[Tensor], Tensor],
    images: Tensor | Iterable[Any],
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool | None = None,
    progress: bool | str = False,
    out: Sequence[Any] | None = None,
) -> Any:
    """Run ``extractor`` over ``images`` in batches and return CPU float32 features ``(B, N, d)``.

    Args:
        extractor: a :class:`FeatureExtractor`, a timm model (wrapped with the last layer), or any
            callable ``images -> (b, N, d)``. A :class:`FeatureExtractor` with ``layers`` gives
            one array per layer, from one forward pass per batch.
        images: a ``(B, 3, H, W)`` float tensor, or an iterable of such batches (a DataLoader yielding
            ``(images, labels)`` works too).
        batch_size: images per forward pass (larger batches from an iterable are split).
        device: where to run; default: the extractor's current device. The extractor is moved there.
        amp_dtype: run under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``,
            ``torch.float16`` on CUDA); ``None`` runs in the model's own precision.
        channels_last: use channels-last memory for convolutional models; default: on CUDA only.
        progress: show a progress bar (``True``, or a string used as its description).
        out: arrays to fill instead of allocating (one ``(B, N_i, d_i)`` float32 array or tensor
            per layer, e.g. memory-mapped ones; ``images`` a tensor), returned filled.

    Returns:
        Tensor ``(B, N, d)``, float32, on the CPU; with ``layers``, a list of them (or ``out``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    ext = _as_extractor(extractor)
    many = isinstance(ext, FeatureExtractor) and ext.layers is not None
    dev = _resolve_device(ext, device)
    if channels_last is None:
        channels_last = dev.type == "cuda"
    is_module = isinstance(ext, nn.Module)
    use_cl = bool(channels_last) and is_module and _has_conv(ext)  # type: ignore[arg-type]
    if is_module:
        ext.to(dev)  # type: ignore[union-attr]
        if use_cl:
            ext.to(memory_format=torch.channels_last)  # type: ignore[union-attr]
        ext.eval()  # type: ignore[union-attr]

    total = images.shape[0] if isinstance(images, Tensor) else None
    if out is not None and total is None:
        raise ValueError("out: give images as one tensor to fill preallocated arrays")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        desc = progress if isinstance(progress, str) else "features"
        bar = tqdm(total=total, desc=desc, unit="img", leave=False)

    autocast = torch.autocast(device_type=dev.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    buffers: list[Any] | None = list(out) if out is not None else None
    chunks: list[list[Tensor]] = []
    filled = 0
    try:
        with torch.inference_mode(), autocast:
            for batch in _iter_batches(images, batch_size):
                x = batch.to(dev, non_blocking=dev.type == "cuda")
                if use_cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                z = ext(x)
                zs = [
                    _check_features(t, x.shape[0], "extractor").detach().to("cpu", torch.float32)
                    for t in (z if many else [z])
                ]
                if total is not None:
                    if buffers is None:
                        buffers = [torch.empty((total, *t.shape[1:]), dtype=torch.float32) for t in zs]
                    for buf, t in zip(buffers, zs, strict=True):
                        if tuple(t.shape[1:]) != tuple(buf.shape[1:]):
                            raise ValueError(
                                f"feature shape changed between batches: {tuple(buf.shape[1:])} vs {tuple(t.shape[1:])}"
                            )
                        buf[filled : filled + t.shape[0]] = t if isinstance(buf, Tensor) else t.numpy()
                else:
                    chunks.append(zs)
                filled += x.shape[0]
                if bar is not None:
                    bar.update(x.shape[0])
    finally:
        if bar is not None:
            bar.close()

    if total is not None:
        assert buffers is not None
        return buffers if many else buffers[0]
    if not chunks:
        raise ValueError("images is empty: no batch was produced")
    result = []
    for j in range(len(chunks[0])):
        shapes = {tuple(c[j].shape[1:]) for c in chunks}
        if len(shapes) > 1:
            raise ValueError(f"feature shape changed between batches: {sorted(shapes)}")
        result.append(torch.cat([c[j] for c in chunks], dim=0))
    return result if many else result[0]
