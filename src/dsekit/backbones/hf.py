"""Hugging Face ``transformers`` vision backbones: local model folders and ``Trainer`` runs.

A model folder (``config.json`` and ``model.safetensors`` — sharded or not — or
``pytorch_model.bin``, read with ``weights_only=True``) is read fully offline: the network is
built from ``config.json`` with ``AutoModel.from_config`` (nothing touches a hub) and its
weights are loaded by dsekit's own safe reader, strictly. A run of ``Trainer`` folders
``checkpoint-<step>/`` is discovered by step (:func:`discover_hf`).

The network runs as the model type's own code; :class:`HFBackbone` gives it timm's feature API
(``forward_intermediates``): the patch tokens of a block after the model's final norm, the class
and register tokens dropped, in image order. For the last block they are the patch part of the
model's own ``last_hidden_state``. Supported model types: see :data:`MODEL_TYPES`. ``vit_mae``
runs without masking (``mask_ratio = 0`` and ``noise = arange``, so that no token is shuffled).

``transformers`` is an optional dependency (``pip install "dsekit[hf]"``).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dsekit.backbones.discovery import pattern_checkpoints
from dsekit.backbones.registry import CheckpointError, MethodAdapter, PartialLoadWarning, StateDict

__all__ = ["MODEL_TYPES", "HFBackbone", "build_hf_backbone", "discover_hf", "hf_remap", "require_transformers"]


@dataclass(frozen=True)
class _ModelType:
    """What differs between the supported model types: their prefix tokens, final norm and how
    the base model is built."""

    registers: bool  #: ``config.num_register_tokens`` tokens follow the class token
    class_token: bool = True
    norm: str = "layernorm"  #: attribute of the final norm
    build_kwargs: tuple[tuple[str, Any], ...] = ()  #: extra arguments of the base model class


#: the model types ``--method hf`` reads
MODEL_TYPES: dict[str, _ModelType] = {
    "dinov2": _ModelType(registers=False),
    "dinov2_with_registers": _ModelType(registers=True),
    "dinov3_vit": _ModelType(registers=True, norm="norm"),
    "vit": _ModelType(registers=False, build_kwargs=(("add_pooling_layer", False),)),
    "vit_mae": _ModelType(registers=False),
    "ijepa": _ModelType(registers=False, class_token=False),
}
#: keys of task models that are not the backbone (heads, poolers, MAE's decoder)
_HEADS = re.compile(r"^(classifier|pooler|decoder|head|heads|lm_head|fc_norm)\.")


def require_transformers() -> Any:
    """The ``transformers`` module, or an ``ImportError`` naming the extra that installs it."""
    try:
        import transformers
    except ImportError:
        raise ImportError('--method hf needs the Hugging Face transformers library: pip install "dsekit[hf]"') from None
    return transformers


def _model_type(config: dict[str, Any], source: Path) -> str:
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"checkpoint {source}: config.json's model_type {model_type!r} is not one --method hf reads; "
            f"supported: {', '.join(MODEL_TYPES)}",
            source,
        )
    return str(model_type)


class HFBackbone(nn.Module):
    """A ``transformers`` base model with timm's ``forward_intermediates``.

    Its state dict is the base model's under ``hf.``. ``image_size``: the input size, passed on
    as ``interpolate_pos_encoding=True`` to models that need it for sizes other than the
    trained one.
    """

    def __init__(self, model: nn.Module, model_type: str, image_size: int | None = None) -> None:
        super().__init__()
        spec = MODEL_TYPES[model_type]
        config: Any = model.config  # a transformers PretrainedConfig; its fields depend on the model type
        self.hf = model
        self.model_type = model_type
        self.patch_size = int(config.patch_size)
        self.num_prefix_tokens = int(spec.class_token) + (
            int(getattr(config, "num_register_tokens", 0) or 0) if spec.registers else 0
        )
        self._norm_name = spec.norm
        depth = int(config.num_hidden_layers)
        self.feature_info = [
            {"module": f"layer.{i}", "num_chs": int(config.hidden_size), "reduction": self.patch_size}
            for i in range(depth)
        ]
        trained = getattr(config, "image_size", None)
        self._extra: dict[str, Any] = {}
        if (
            "interpolate_pos_encoding" in _forward_parameters(model)
            and image_size is not None
            and image_size != trained
        ):
            self._extra["interpolate_pos_encoding"] = True

    def _run(self, x: Tensor, hidden: bool) -> Any:
        extra = dict(self._extra)
        if self.model_type == "vit_mae":  # no masking, no shuffling: tokens in image order
            n = (x.shape[-2] // self.patch_size) * (x.shape[-1] // self.patch_size)
            extra["noise"] = torch.arange(n, device=x.device, dtype=torch.float32).expand(x.shape[0], n)
        return self.hf(pixel_values=x, output_hidden_states=hidden, return_dict=True, **extra)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        norm: bool = True,
        output_fmt: str = "NLC",
        intermediates_only: bool = True,
        stop_early: bool = True,
        return_prefix_tokens: bool = False,
    ) -> list[Tensor]:
        """Patch tokens of blocks ``indices`` (timm's convention), after the final norm when
        ``norm``: ``(B, rows·cols, d)`` (``"NLC"``) or ``(B, d, rows, cols)`` (``"NCHW"``)."""
        n = len(self.feature_info)
        if indices is None:
            indices = [n - 1]
        wanted = list(range(n - indices, n)) if isinstance(indices, int) else [i % n for i in indices]
        only_last = wanted == [n - 1] and norm
        out = self._run(x, hidden=not only_last)
        final = getattr(self.hf, self._norm_name)
        rows, cols = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = []
        for i in wanted:
            if only_last:
                t = out.last_hidden_state
            else:
                t = out.hidden_states[i + 1]  # [0] is the embeddings' output
                t = final(t) if norm else t
            t = t[:, self.num_prefix_tokens :]
            if output_fmt == "NCHW":
                t = t.reshape(t.shape[0], rows, cols, -1).permute(0, 3, 1, 2)
            tokens.append(t)
        return tokens

    def forward(self, x: Tensor) -> Tensor:
        """The model's ``last_hidden_state`` ``(B, N, d)``, every token."""
        return self._run(x, hidden=False).last_hidden_state

    def image_embedding(self, x: Tensor) -> Tensor:
        """The image-level embedding ``(B, d)``: the class token of ``last_hidden_state`` (after the
        final norm), or the mean of its patch tokens for models without one (I-JEPA)."""
        h = self.forward(x)
        return h[:, 0] if MODEL_TYPES[self.model_type].class_token else h[:, self.num_prefix_tokens :].mean(dim=1)


def _forward_parameters(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def build_hf_backbone(
    path: Path, model_kwargs: dict[str, Any], image_size: int | None, *, load: bool = False, allow_partial: bool = False
) -> HFBackbone:
    """The base model of the folder ``path``, in eval mode, offline: built from ``config.json``
    with random weights, or with ``load`` its weights read by ``transformers``' own loader
    (``from_pretrained``: safetensors, or ``torch.load(weights_only=True)``; a task model's
    prefix and heads handled as ``AutoModel`` handles them), strictly: a backbone weight the
    folder lacks is an error unless ``allow_partial``. ``model_kwargs`` override ``config.json``."""
    transformers = require_transformers()
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: cannot read config.json ({err})", path) from err
    model_type = _model_type(config, path)
    overrides = {**model_kwargs, **({"mask_ratio": 0.0} if model_type == "vit_mae" else {})}
    build = dict(MODEL_TYPES[model_type].build_kwargs)
    with torch.random.fork_rng(devices=[]), _quiet(transformers):  # random init leaves the caller's RNG alone
        try:
            cfg = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, **overrides)
        except (OSError, ValueError, TypeError) as err:
            raise CheckpointError(
                f"checkpoint {path}: config.json does not describe a {model_type} model ({err})", path
            ) from err
        if not load:
            model = transformers.AutoModel.from_config(cfg, dtype=torch.float32, **build)
            return HFBackbone(model.eval(), model_type, image_size).eval()
        try:
            model, info = transformers.AutoModel.from_pretrained(
                str(path), config=cfg, local_files_only=True, output_loading_info=True, dtype=torch.float32, **build
            )
        except (OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(err)}", path) from err
    missing = sorted(info.get("missing_keys", ()))
    mismatched = [str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys", ())]
    if missing or mismatched:
        what = "; ".join(
            f"{t} ({len(k)}): {', '.join(k[:10])}" for t, k in (("missing", missing), ("mismatched", mismatched)) if k
        )
        heads = "" if not missing or len(missing) < len(model.state_dict()) else " (a folder with a task head only?)"
        message = f"checkpoint {path} does not fit the {model_type} model its config.json describes: {what}{heads}"
        if not allow_partial:
            raise CheckpointError(message + "; pass --allow-partial to load what fits", path)
        warnings.warn(message, PartialLoadWarning, stacklevel=3)
    return HFBackbone(model.eval(), model_type, image_size).eval()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


class _quiet:
    """transformers' loading report and progress bars off for the block (their settings restored)."""

    def __init__(self, transformers: Any) -> None:
        self.logging = transformers.utils.logging

    def __enter__(self) -> None:
        self.level = self.logging.get_verbosity()
        self.bars = self.logging.is_progress_bar_enabled()
        self.logging.set_verbosity_error()
        self.logging.disable_progress_bar()

    def __exit__(self, *exc: Any) -> None:
        self.logging.set_verbosity(self.level)
        if self.bars:
            self.logging.enable_progress_bar()


def hf_remap(state_dict: StateDict, model: nn.Module | None, source: Path | None = None) -> StateDict:
    """A folder's weights -> :class:`HFBackbone`'s names: the task model's base-model prefix
    (``dinov2.``, ``vit.``, ...) removed, heads dropped, ``hf.`` added."""
    keys = list(state_dict)
    if model is not None and isinstance(getattr(model, "hf", None), nn.Module):
        prefix = getattr(model.hf, "base_model_prefix", "")
    else:
        prefix = next((k.split(".", 1)[0] for k in keys if re.match(r"^[^.]+\.embeddings\.", k)), "")
    if prefix and any(k.startswith(f"{prefix}.embeddings.") for k in keys):
        state_dict = {k[len(prefix) + 1 :]: v for k, v in state_dict.items() if k.startswith(prefix + ".")}
    out = {f"hf.{k}": v for k, v in state_dict.items() if not _HEADS.match(k)}
    if not any(k.startswith("hf.embeddings.") for k in out):
        where = f"checkpoint {source}" if source is not None else "checkpoint"
        raise CheckpointError(
            f"{where} holds no backbone weights (no embeddings.*; found "
            f"{', '.join(sorted({k.split('.')[0] for k in keys}))}): "
            "a folder with a task head only",
            source,
        )
    return out


def hf_architecture(
    state_dict: StateDict, checkpoint: Any = None, source: Path | None = None
) -> tuple[str, dict] | None:
    """``("hf:<model_type>", {})`` for a Hugging Face folder (the network is built from its
    ``config.json``, not named)."""
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict) or config.get("model_type") not in MODEL_TYPES:
        return None
    return f"hf:{config['model_type']}", {}


_STEP = re.compile(r"^checkpoint-(\d+)$")


def discover_hf(root: Path, adapter: MethodAdapter) -> list[tuple[Path, int | None]]:
    """A ``Trainer`` run's ``checkpoint-<step>/`` model folders, by step; the run folder itself
    when it is a model folder and holds no checkpoint folder, or holds a final model saved after
    the last one (its ``trainer_state.json`` says at which step); else nothing."""
    found = [(p, s) for p, s in pattern_checkpoints(root, adapter) if (p / "config.json").is_file()]
    if (root / "config.json").is_file():
        step = _trainer_step(root)
        if not found or (step is not None and step not in {s for _, s in found}):
            found.append((root, step))
    return found


def _trainer_step(folder: Path) -> int | None:
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    step = state.get("global_step") if isinstance(state, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None
