"""The self-supervised method objects the training loop drives: DINO and MoCo v3.

Each builds its networks on a timm backbone (heads and projectors from lightly), computes its loss
on a batch of views, updates its teacher / momentum encoder, and writes and reads its official
checkpoint layout. :func:`build_method` picks one for a resolved run.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from ..backbones import create_backbone
from .config import ResolvedConfig

if TYPE_CHECKING:  # only type hints: the settings object the checkpoints store as "args", ...
    from argparse import Namespace

    from lightly.models.modules import DINOProjectionHead

    from ..backbones.extract import TimmHead

__all__ = [
    "DINOMethod",
    "Method",
    "MoCoV3Method",
    "build_method",
    "embed_dim",
    "encode",
    "make_backbone",
    "param_groups",
]


# --------------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------------


def make_backbone(name: str, kwargs: Mapping[str, Any], image_size: int) -> nn.Module:
    """A timm backbone (no classifier) in train mode; ViTs accept any multiple of the patch size."""
    try:
        model = create_backbone(name, img_size=image_size, dynamic_img_size=True, **kwargs)
    except TypeError:  # architectures without dynamic_img_size take any size anyway
        model = create_backbone(name, img_size=image_size, **kwargs)
    return model.train()


def embed_dim(backbone: nn.Module) -> int:
    """The feature width of ``backbone`` (``num_features``, else ``embed_dim``); ``ValueError`` if neither."""
    for attr in ("num_features", "embed_dim"):
        d = getattr(backbone, attr, None)
        if isinstance(d, int) and d > 0:
            return d
    raise ValueError(f"cannot tell the feature width of {type(backbone).__name__}")


def encode(backbone: nn.Module, x: Tensor, head: nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """``(pooled (B, d) [through head], patches (B, N, d))`` of images ``x (B, 3, H, W)``.

    Patch tokens are those of the final norm with prefix tokens dropped (as the scan extracts
    them); CNN maps ``(B, d, h, w)`` are flattened row-major.
    """
    timm = cast("TimmHead", backbone)  # a timm backbone (make_backbone's)
    feats = timm.forward_features(x)
    pooled = timm.forward_head(feats, pre_logits=True)
    if feats.ndim == 4:
        patches = feats.flatten(2).transpose(1, 2)
    else:
        patches = feats[:, int(getattr(backbone, "num_prefix_tokens", 0)) :]
    if head is not None:
        pooled = head(pooled)
    return pooled, patches


def _with_module_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {f"module.{k}": v for k, v in state.items()}


def _without_module_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


# --------------------------------------------------------------------------------------------------
# DINO
# --------------------------------------------------------------------------------------------------


class _MultiCrop(nn.Module):
    """DINO's backbone + head pair (state-dict keys ``backbone.*`` and ``head.*``)."""

    def __init__(self, backbone: nn.Module, head: DINOProjectionHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(head output (B, out_dim), patch tokens (B, N, d))``."""
        return encode(self.backbone, x, self.head)


class DINOMethod:
    """DINO with lightly's ``DINOProjectionHead`` and ``DINOLoss``; EMA teacher."""

    name = "dino"

    def __init__(self, run: ResolvedConfig) -> None:
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        def build() -> _MultiCrop:
            backbone = make_backbone(run.timm_arch, run.timm_kwargs, run.image_size)
            with warnings.catch_warnings():  # lightly's head uses the older weight_norm API
                warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
                head = DINOProjectionHead(
                    embed_dim(backbone),
                    run.hidden_dim,
                    run.bottleneck_dim,
                    run.out_dim,
                    freeze_last_layer=run.cfg.freeze_last_layer,
                )
            return _MultiCrop(backbone, head)

        self.run = run
        self.student = build()
        self.teacher = build()
        self.teacher.load_state_dict(self.student.state_dict())
        deactivate_requires_grad(self.teacher)
        self.criterion = DINOLoss(
            output_dim=run.out_dim,
            warmup_teacher_temp=run.cfg.warmup_teacher_temp,
            teacher_temp=run.cfg.teacher_temp,
            warmup_teacher_temp_epochs=max(1, run.warmup_teacher_temp_epochs),
        )
        n = max(1, run.warmup_teacher_temp_epochs)
        self._temps = (
            np.concatenate(
                [
                    np.linspace(run.cfg.warmup_teacher_temp, run.cfg.teacher_temp, n),
                    np.full(max(0, run.cfg.epochs - n), run.cfg.teacher_temp),
                ]
            )
            if run.warmup_teacher_temp_epochs > 0
            else np.full(run.cfg.epochs, run.cfg.teacher_temp)
        )

    def to(self, device: torch.device) -> None:
        self.student.to(device)
        self.teacher.to(device)
        self.criterion.to(device)

    def trainable(self) -> nn.Module:
        return self.student

    def student_backbone(self) -> nn.Module:
        return self.student.backbone

    def teacher_backbone(self) -> nn.Module:
        return self.teacher.backbone

    def teacher_temp(self, epoch: int) -> float:
        return float(self._temps[min(epoch, len(self._temps) - 1)])

    def step(self, views: Sequence[Tensor], epoch: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        """``(ssl loss, student patch tokens of the global views (2B, N, d), logs)``."""
        b = views[0].shape[0]
        glob = torch.cat(list(views[:2]))
        with torch.no_grad():
            t_out, _ = self.teacher(glob)
        s_glob, patches = self.student(glob)
        s_out = list(s_glob.split(b))
        if len(views) > 2:
            s_loc, _ = self.student(torch.cat(list(views[2:])))
            s_out += list(s_loc.split(b))
        temp = self.teacher_temp(epoch)
        loss = self.criterion(list(t_out.float().split(b)), [s.float() for s in s_out], teacher_temp=temp)
        return loss, patches, {"teacher_temp": temp}

    def before_optimizer_step(self, epoch: int) -> None:
        self.student.head.cancel_last_layer_gradients(epoch)

    def momentum_update(self, m: float) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(self.student, self.teacher, m)

    def checkpoint(self, optimizer: torch.optim.Optimizer, epoch: int, args: Namespace) -> dict[str, Any]:
        return {
            "student": _with_module_prefix(self.student.state_dict()),
            "teacher": self.teacher.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "args": args,
            "dino_loss": self.criterion.state_dict(),
        }

    def load(self, ckpt: Mapping[str, Any]) -> None:
        self.student.load_state_dict(_without_module_prefix(ckpt["student"]))
        self.teacher.load_state_dict(_without_module_prefix(ckpt["teacher"]))
        self.criterion.load_state_dict(ckpt["dino_loss"])


# --------------------------------------------------------------------------------------------------
# MoCo v3
# --------------------------------------------------------------------------------------------------


class _MoCoV3Model(nn.Module):
    """MoCo v3 (keys ``base_encoder.*``, ``momentum_encoder.*``, ``predictor.*``).

    The projector is each encoder's ``head`` (as the official ViT code replaces the classifier).
    """

    def __init__(self, run: ResolvedConfig) -> None:
        from lightly.models.modules import MoCoProjectionHead

        super().__init__()

        def encoder() -> nn.Module:
            backbone = make_backbone(run.timm_arch, run.timm_kwargs, run.image_size)
            backbone.head = MoCoProjectionHead(
                embed_dim(backbone), run.hidden_dim, run.out_dim, num_layers=3, batch_norm=True
            )
            return backbone

        self.base_encoder = encoder()
        self.momentum_encoder = encoder()
        self.predictor = MoCoProjectionHead(run.out_dim, run.hidden_dim, run.out_dim, num_layers=2, batch_norm=True)
        self.momentum_encoder.load_state_dict(self.base_encoder.state_dict())


def _contrastive(q: Tensor, k: Tensor, temperature: float) -> Tensor:
    """MoCo v3's InfoNCE of queries ``q (B, c)`` against keys ``k (B, c)`` (positives on the
    diagonal), scaled by ``2 * temperature`` as the official code."""
    q = nn.functional.normalize(q.float(), dim=1)
    k = nn.functional.normalize(k.float(), dim=1)
    logits = q @ k.T / temperature
    labels = torch.arange(q.shape[0], device=q.device)
    return nn.functional.cross_entropy(logits, labels) * (2 * temperature)


class MoCoV3Method:
    """MoCo v3 with lightly's ``MoCoProjectionHead`` (3-layer projector, 2-layer predictor, BN)."""

    name = "mocov3"

    def __init__(self, run: ResolvedConfig) -> None:
        from lightly.models.utils import deactivate_requires_grad

        self.run = run
        self.model = _MoCoV3Model(run)
        deactivate_requires_grad(self.model.momentum_encoder)
        self._params = nn.ModuleDict({"base_encoder": self.model.base_encoder, "predictor": self.model.predictor})

    def to(self, device: torch.device) -> None:
        self.model.to(device)

    def trainable(self) -> nn.Module:
        return self._params

    def student_backbone(self) -> nn.Module:
        return self.model.base_encoder

    def teacher_backbone(self) -> nn.Module:
        return self.model.momentum_encoder

    def step(self, views: Sequence[Tensor], epoch: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        m = self.model
        b = views[0].shape[0]
        x = torch.cat(list(views[:2]))
        z, patches = encode(m.base_encoder, x, m.base_encoder.get_submodule("head"))
        q1, q2 = m.predictor(z).split(b)
        with torch.no_grad():
            k, _ = encode(m.momentum_encoder, x, m.momentum_encoder.get_submodule("head"))
            k1, k2 = k.split(b)
        t = self.run.cfg.temperature
        return _contrastive(q1, k2, t) + _contrastive(q2, k1, t), patches, {}

    def before_optimizer_step(self, epoch: int) -> None:
        return None

    def momentum_update(self, m: float) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(self.model.base_encoder, self.model.momentum_encoder, m)

    def checkpoint(self, optimizer: torch.optim.Optimizer, epoch: int, args: Namespace) -> dict[str, Any]:
        return {
            "epoch": epoch + 1,
            "arch": self.run.timm_arch,
            "state_dict": _with_module_prefix(self.model.state_dict()),
            "optimizer": optimizer.state_dict(),
            "args": args,
        }

    def load(self, ckpt: Mapping[str, Any]) -> None:
        self.model.load_state_dict(_without_module_prefix(ckpt["state_dict"]))


# --------------------------------------------------------------------------------------------------
# Choice and optimisation
# --------------------------------------------------------------------------------------------------

#: the method objects :func:`build_method` returns
Method = DINOMethod | MoCoV3Method


def build_method(run: ResolvedConfig) -> Method:
    """The method object of ``run`` (its networks built with the current global RNG state)."""
    return DINOMethod(run) if run.cfg.method == "dino" else MoCoV3Method(run)


def param_groups(module: nn.Module) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weights, none on biases and norm parameters (as DINO)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
