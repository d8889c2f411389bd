"""Watch DSE during training, and raise a dense-degradation alarm.

* :class:`DSEMonitor`, framework-free: ``monitor.update(model, step)`` computes DSE of the
  model's patch features on a fixed held-out set of unlabeled images (every ``every``
  calls), records it and returns the terms.
* :class:`DSEMonitorCallback`, a PyTorch Lightning callback around it: every
  ``every_n_epochs`` it logs ``dse``, ``dse_raw`` and the four terms with
  ``pl_module.log`` so that ``ModelCheckpoint(monitor="dse", mode="max")`` and
  ``EarlyStopping(monitor="dse", mode="max")`` can use them.

The logged ``dse`` is ``S + lam · M_dim`` with a fixed ``lam`` (default 1: the raw
per-batch score), so values stay comparable across evaluations; the run-level λ of the
paper is calibrated afterwards by ``dsekit scan`` over the saved checkpoints.

Dense-degradation alarm: when DSE has stayed below its best value by more than
``margin`` for ``patience`` consecutive evaluations, a :class:`DenseDegradationWarning`
names the best evaluation (step and checkpoint, when known).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..backbones.extract import FeatureExtractor, extract_features
from ..metrics.dse import DSEAccumulator, DSESettings, calibrated_dse

# DSEMonitorCallback is built on first access (the module's __getattr__, below)
__all__ = ["DSEMonitor", "DSEMonitorCallback", "DenseDegradationWarning", "Evaluation"]  # noqa: F822

FeatureFn = Callable[[nn.Module, Tensor], Tensor]


class DenseDegradationWarning(UserWarning):
    """DSE has stayed below its best for several evaluations."""


@dataclass
class Evaluation:
    """One DSE evaluation during training."""

    step: int
    dse: float
    dse_raw: float
    inter_class_distance: float
    intra_class_image: float
    intra_class_batch: float
    effective_dimensionality: float
    checkpoint: str | None = None

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """The logged values: ``dse``, ``dse_raw`` and the four terms."""
        keys = (
            "dse",
            "dse_raw",
            "inter_class_distance",
            "intra_class_image",
            "intra_class_batch",
            "effective_dimensionality",
        )
        return {prefix + k: getattr(self, k) for k in keys}


@dataclass
class DSEMonitor:
    """DSE of a model on fixed held-out images, recorded over training.

    Args:
        images: ``(n, 3, H, W)`` preprocessed held-out images (fixed for the whole run).
        every: evaluate on every ``every``-th call of :meth:`update` (others return None).
        layer: block/stage read by :class:`~dsekit.backbones.FeatureExtractor` (default last).
        feature_fn: ``fn(model, images) -> (B, N, d)`` instead of the extractor.
        batch_size: images per forward pass.
        lam: weight of ``M_dim`` in the logged ``dse`` (1: the raw score).
        margin: how far below the best DSE counts as degraded.
        patience: consecutive degraded evaluations before the alarm.
        seed, local_clusters, global_clusters, images_per_group, normalize, dse_batch_size:
            DSE settings (see :func:`dsekit.dse`).
    """

    images: Tensor
    every: int = 1
    layer: int = -1
    feature_fn: FeatureFn | None = None
    batch_size: int = 64
    lam: float = 1.0
    margin: float = 0.01
    patience: int = 3
    seed: int = 0
    local_clusters: int = DSESettings.local_clusters
    global_clusters: int = DSESettings.global_clusters
    images_per_group: int = DSESettings.images_per_group
    normalize: bool = DSESettings.normalize
    dse_batch_size: int = 1024
    history: list[Evaluation] = field(default_factory=list)
    _calls: int = 0
    _alarmed_at: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.ndim != 4 or self.images.shape[0] == 0:
            shape = tuple(self.images.shape) if isinstance(self.images, Tensor) else type(self.images).__name__
            raise ValueError(f"images: expected a non-empty (n, 3, H, W) tensor of held-out images, got {shape}")
        if self.every < 1 or self.patience < 1 or self.margin < 0:
            raise ValueError(
                f"every and patience must be >= 1 and margin >= 0, got {self.every}, {self.patience}, {self.margin}"
            )

    # ----------------------------------------------------------------- computing

    @torch.no_grad()
    def compute(self, model: nn.Module) -> dict[str, float]:
        """DSE terms of ``model`` on the held-out images (model left in its original mode)."""
        was_training = model.training
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        try:
            model.eval()
            if self.feature_fn is not None:
                fn = self.feature_fn
                extractor: Any = lambda x: fn(model, x)  # noqa: E731
            else:
                extractor = FeatureExtractor(model, self.layer)
            feats = extract_features(extractor, self.images, batch_size=self.batch_size, device=device)
        finally:
            model.train(was_training)
        settings = DSESettings(self.local_clusters, self.global_clusters, self.images_per_group, self.normalize)
        acc = DSEAccumulator(self.dse_batch_size, seed=self.seed, settings=settings)
        acc.update(feats.to(device))
        return acc.compute().as_dict()

    def update(self, model: nn.Module, step: int, checkpoint: str | None = None) -> Evaluation | None:
        """Evaluate (every ``every``-th call), record, check the alarm; returns the evaluation or None."""
        self._calls += 1
        if (self._calls - 1) % self.every:
            return None
        t = self.compute(model)
        terms = {
            k: float(t[k])
            for k in ("inter_class_distance", "intra_class_image", "intra_class_batch", "effective_dimensionality")
        }
        ev = Evaluation(
            step=int(step),
            dse=calibrated_dse(terms, self.lam),
            dse_raw=calibrated_dse(terms, None),
            checkpoint=checkpoint,
            **terms,
        )
        self.history.append(ev)
        self._check_alarm()
        return ev

    # ----------------------------------------------------------------- state

    @property
    def best(self) -> Evaluation | None:
        """The evaluation with the highest DSE so far (earliest on ties)."""
        return max(self.history, key=lambda e: e.dse) if self.history else None

    @property
    def degraded_for(self) -> int:
        """Consecutive latest evaluations more than ``margin`` below the best."""
        best = self.best
        n = 0
        for ev in reversed(self.history):
            if best is None or ev.dse >= best.dse - self.margin:
                break
            n += 1
        return n

    @property
    def alarm(self) -> bool:
        return self.degraded_for >= self.patience

    def _check_alarm(self) -> None:
        if not self.alarm:
            self._alarmed_at = None
            return
        best = self.best
        assert best is not None
        if self._alarmed_at == best.step:
            return  # already warned for this best; warn again only once a new best has come and gone
        self._alarmed_at = best.step
        where = f"step {best.step}" + (f" ({best.checkpoint})" if best.checkpoint else "")
        warnings.warn(
            f"dense degradation: DSE has stayed more than {self.margin} below its best ({best.dse:.4f}) for "
            f"{self.degraded_for} evaluations; the best dense representation so far is at {where}",
            DenseDegradationWarning,
            stacklevel=3,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"history": [asdict(e) for e in self.history], "calls": self._calls, "alarmed_at": self._alarmed_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [Evaluation(**e) for e in state["history"]]
        self._calls = int(state["calls"])
        self._alarmed_at = state.get("alarmed_at")


def _lightning_callback_base() -> type:
    """``lightning.pytorch.Callback`` when the unified package is in use, else ``pytorch_lightning``'s."""
    import sys

    if "lightning" in sys.modules:
        import lightning.pytorch as lp

        return lp.Callback
    try:
        import pytorch_lightning as pl
    except ImportError:
        try:
            import lightning.pytorch as lp
        except ImportError as exc:  # pragma: no cover - optional dependency
            raise ImportError("DSEMonitorCallback needs PyTorch Lightning: pip install 'dsekit[lightning]'") from exc
        return lp.Callback
    return pl.Callback


def _make_callback_class() -> type:
    base = _lightning_callback_base()

    class DSEMonitorCallback(base):  # type: ignore[misc, valid-type]
        """Lightning callback logging DSE every ``every_n_epochs`` training epochs.

        Args:
            monitor: a :class:`DSEMonitor` (its ``every`` is ignored; use ``every_n_epochs``).
            every_n_epochs: evaluate at the end of every n-th training epoch.
            model_fn: picks the backbone from the LightningModule (default: its ``backbone``
                attribute when present, else the module itself).
            prefix: prefix of the logged names (default none: ``dse``, ``dse_raw``, terms).
        """

        def __init__(
            self,
            monitor: DSEMonitor,
            every_n_epochs: int = 1,
            model_fn: Callable[[Any], nn.Module] | None = None,
            prefix: str = "",
        ) -> None:
            super().__init__()
            if every_n_epochs < 1:
                raise ValueError(f"every_n_epochs: expected >= 1, got {every_n_epochs}")
            self.monitor = monitor
            self.monitor.every = 1
            self.every_n_epochs = every_n_epochs
            self.model_fn = model_fn
            self.prefix = prefix

        def _backbone(self, pl_module: Any) -> nn.Module:
            if self.model_fn is not None:
                return self.model_fn(pl_module)
            return getattr(pl_module, "backbone", pl_module)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if (trainer.current_epoch + 1) % self.every_n_epochs:
                return
            ckpt = None
            for cb in getattr(trainer, "checkpoint_callbacks", []) or []:
                ckpt = getattr(cb, "last_model_path", None) or ckpt
            ev = self.monitor.update(self._backbone(pl_module), trainer.global_step, checkpoint=ckpt)
            if ev is not None:
                for name, value in ev.metrics(self.prefix).items():
                    pl_module.log(name, value, on_step=False, on_epoch=True, prog_bar=name == self.prefix + "dse")

        def state_dict(self) -> dict[str, Any]:
            return self.monitor.state_dict()

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            self.monitor.load_state_dict(state_dict)

    return DSEMonitorCallback


def __getattr__(name: str) -> Any:
    # the Lightning callback is built on first use, so Lightning stays an optional dependency
    if name == "DSEMonitorCallback":
        cls = _make_callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
