"""Gram anchoring (DINOv3, Siméoni et al., 2025): ``loss = loss_ssl + w · L_gram``.

``L_gram`` is the mean squared difference between the patch-similarity (Gram) matrices of the
student's patch tokens and of a *Gram teacher*'s, computed on L2-normalised tokens; by default
per image and with negative similarities set to 0 in both matrices, as DINOv3's ``GramLoss``
defaults (``apply_norm=True, img_level=True, remove_neg=True``). ``image_level=False`` computes
one Gram matrix over all the patches of the batch; ``clamp_negative=False`` keeps the negative
similarities.

The Gram teacher is an earlier network, frozen: the backbone of a checkpoint file, or the run's
own EMA teacher copied at a given optimisation step and copied again every ``K`` steps after
(:class:`GramAnchor`). Before that step there is no Gram term.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["GramAnchor", "gram_anchoring_loss", "parse_gram_teacher"]


def _gram(x: Tensor, normalize: bool, image_level: bool) -> Tensor:
    x = x if x.dtype == torch.float64 else x.float()  # as DINOv3's GramLoss: float32 (float64 kept)
    if normalize:
        x = nn.functional.normalize(x, dim=-1)
    if not image_level:
        x = x.flatten(0, 1)
    return x @ x.transpose(-1, -2)


def gram_anchoring_loss(
    student: Tensor, teacher: Tensor, *, clamp_negative: bool = True, image_level: bool = True, normalize: bool = True
) -> Tensor:
    """``mean((G_student − G_teacher)²)`` of the patch-similarity matrices (see the module docstring).

    Args:
        student: ``(B, N, d)`` patch tokens (with gradient).
        teacher: ``(B, N, d')`` patch tokens of the Gram teacher (no gradient is taken through it).
        clamp_negative: negative similarities set to 0 in both matrices.
        image_level: one ``N × N`` matrix per image; False: one ``BN × BN`` matrix for the batch.
        normalize: L2-normalise the tokens first.

    Returns:
        a scalar tensor.
    """
    if student.ndim != 3 or teacher.ndim != 3 or student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"gram_anchoring_loss: expected student and teacher patch tokens (B, N, d) of the same B and N, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    gs = _gram(student, normalize, image_level)
    gt = _gram(teacher.detach(), normalize, image_level)
    if clamp_negative:
        zero = torch.zeros((), dtype=gs.dtype, device=gs.device)
        gs = torch.where(gs < 0, zero, gs)
        gt = torch.where(gt < 0, zero, gt)
    return nn.functional.mse_loss(gs, gt)


def parse_gram_teacher(value: str | int | None) -> tuple[str | None, int | None]:
    """``--gram-teacher``: a checkpoint file (``("path", None)``) or a step (``(None, step)``)."""
    if value is None:
        return None, None
    if isinstance(value, int) and not isinstance(value, bool):
        step = value
    elif isinstance(value, str) and value.strip().isdigit():
        step = int(value)
    elif isinstance(value, str) and value.strip():
        return value, None
    else:
        raise ValueError(f"gram_teacher: expected a checkpoint file or a step >= 0, got {value!r}")
    if step < 0:
        raise ValueError(f"gram_teacher: expected a step >= 0, got {step}")
    return None, step


class GramAnchor(nn.Module):
    """The Gram teacher of a run and its loss term.

    Args:
        weight: ``w`` of ``w · L_gram``.
        teacher: a frozen backbone (from a checkpoint), or None to take the run's own EMA teacher
            at step ``start`` (:meth:`maybe_refresh`).
        start: the step at which the run's teacher is copied (with ``teacher=None``).
        every: copy it again every ``every`` steps after ``start`` (None or 0: never).
        clamp_negative, image_level: as :func:`gram_anchoring_loss`.
    """

    def __init__(
        self,
        weight: float,
        teacher: nn.Module | None = None,
        *,
        start: int | None = None,
        every: int | None = None,
        clamp_negative: bool = True,
        image_level: bool = True,
    ) -> None:
        super().__init__()
        if teacher is None and start is None:
            raise ValueError("gram anchoring needs a teacher: a checkpoint file or a step")
        self.weight = float(weight)
        self.start, self.every = start, every
        self.clamp_negative, self.image_level = clamp_negative, image_level
        self.teacher: nn.Module | None = None
        if teacher is not None:
            self._set(teacher)

    def _set(self, backbone: nn.Module) -> None:
        t = copy.deepcopy(backbone).eval()
        for p in t.parameters():
            p.requires_grad_(False)
        self.teacher = t

    def maybe_refresh(self, step: int, ema_teacher: nn.Module) -> bool:
        """Copy the run's EMA teacher at the start step and every ``every`` steps after it; True
        when it was copied."""
        if self.start is None or step < self.start:
            return False
        due = step == self.start or (self.every and (step - self.start) % self.every == 0)
        if due or self.teacher is None:
            self._set(ema_teacher)
            return True
        return False

    def loss(
        self, student_patches: Tensor, images: Tensor, patches_of: Callable[[nn.Module, Tensor], Tensor]
    ) -> Tensor | None:
        """``L_gram`` of the student's patch tokens against the Gram teacher's on the same images
        (``patches_of(backbone, images) -> (B, N, d)``); None before the teacher exists."""
        if self.teacher is None:
            return None
        with torch.no_grad():
            teacher_patches = patches_of(self.teacher, images)
        return gram_anchoring_loss(
            student_patches, teacher_patches, clamp_negative=self.clamp_negative, image_level=self.image_level
        )
