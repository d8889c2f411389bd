"""DSE as a training regulariser: ``loss = loss_ssl - beta * DSE(student patch features)``.

The value is the estimator's per-batch score (:func:`dsekit.metrics.dse.dse`, ``dse_raw``
for ``lam = 1``) computed with gradient: the same seeded k-means (run without gradient,
centroids detached) and the same term functions (:func:`dsekit.metrics.dse.dse_terms`).
Gradient flows through the singular values (cluster nuclear norms, effective ranks), the
distances of the patches to the fixed centroids and the scale ``s``.

``M_dim`` is computed exactly as the estimator computes it: the mean normalised effective
rank of the ``B × d`` matrices holding one (randomly permuted) patch per image. The paper
authors' released regulariser differs from their estimator here (one effective rank of all
``B·N`` patches, normalised by ``min(B·N, d)``, i.e. ``d``); dsekit keeps the two identical, so the
quantity that is optimised is the quantity that is monitored.

Precision: float32 features are scored in float32 throughout, the spectra included (the
estimator forms and decomposes its Gram matrices in float64); singular values below the
float32 rounding level count as zero. float64 features stay float64.

Gradient safety (collapsed or partly collapsed features give finite gradients):

* singular values come from :mod:`dsekit.metrics.spectra`, whose gradient (``U diag(g) Vᵀ``
  in effect) needs no ``1 / (σᵢ - σⱼ)`` and stays finite for repeated or zero singular
  values;
* the effective rank guards ``p log p`` at ``p = 0`` and an all-zero spectrum;
* the L2 normalisation here passes zero gradient to zero-length patch vectors (instead of
  ``1 / eps``); the norms in ``s`` and ``torch.cdist`` give zero gradient at zero length /
  distance;
* when the patches have numerically no spread (``s ≈ 0``) the cluster terms are defined
  as 0 (no division by ``s``), as in the estimator.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn

from ..metrics.dse import (
    ClusterAssignments,
    DSESettings,
    DSETerms,
    as_features,
    cluster_assignments,
    dse_terms,
    raw_dse,
)
from ..metrics.kmeans import make_generator

__all__ = ["ClusterAssignments", "DSERegularizer", "cluster_assignments", "dse_with_grad", "safe_normalize"]

_NORM_EPS = 1e-12


def safe_normalize(z: Tensor, eps: float = _NORM_EPS) -> Tensor:
    """L2-normalise the last dimension; zero-length vectors map to 0 with zero gradient.

    Values equal ``F.normalize(z, dim=-1)`` bit for bit wherever ``‖z‖ > eps``.
    """
    norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    # dividing by +inf gives 0 and passes 0 gradient to z and to the norm: one large operation
    return z / torch.where(norm > eps, norm, torch.full_like(norm, math.inf))


def dse_with_grad(
    features: Tensor,
    settings: DSESettings | None = None,
    *,
    local_clusters: int | None = None,
    global_clusters: int | None = None,
    images_per_group: int | None = None,
    normalize: bool | None = None,
    n_init: int | None = None,
    generator: torch.Generator,
    assignments: ClusterAssignments | None = None,
) -> DSETerms:
    """Differentiable DSE terms of one batch.

    Args:
        features: (B, N, d) float tensor, may require grad. float64 stays float64, other
            float types are computed in float32 (autocast is disabled inside).
        settings: the estimator's settings (default :class:`dsekit.metrics.dse.DSESettings`).
        local_clusters, global_clusters, images_per_group, normalize, n_init: override one
            setting of ``settings``, as in :func:`dsekit.metrics.dse.dse`.
        generator: private generator on ``features.device`` (k-means and ``M_dim``'s
            permutation); with a fresh generator seeded ``s`` the value equals
            ``dse(features, seed=s)`` up to float rounding.
        assignments: fixed cluster assignments to use instead of running k-means (then
            ``generator`` only draws the ``M_dim`` permutation).

    Returns:
        :class:`dsekit.metrics.dse.DSETerms` (0-d tensors); ``terms.dse(lam)`` is the score.
    """
    if not isinstance(features, Tensor):
        raise ValueError(f"features: expected a torch tensor of shape (B, N, d), got {type(features).__name__}")
    st = (settings or DSESettings()).with_overrides(
        local_clusters=local_clusters,
        global_clusters=global_clusters,
        images_per_group=images_per_group,
        normalize=normalize,
        n_init=n_init,
    )
    with _autocast_off(features.device.type):
        z = as_features(features)
        B, N, _ = z.shape
        st.check(B, N)
        if st.normalize:
            z = safe_normalize(z)
        if assignments is None:
            assignments = cluster_assignments(z, st, generator=generator)
        elif tuple(assignments.local_labels.shape) != (B, N):
            raise ValueError(
                f"assignments: local_labels of shape {tuple(assignments.local_labels.shape)} do not match "
                f"features of shape {tuple(z.shape)}"
            )
        return dse_terms(z, assignments.local_labels, assignments.global_blocks, generator)


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    available = getattr(torch.amp, "is_autocast_available", None)
    if available is not None and not available(device_type):
        return contextlib.nullcontext()
    if available is None and device_type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def _gather_with_grad(features: Tensor) -> Tensor:
    """Concatenate every rank's features along the batch (rank order); gradient to the local shard."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features.contiguous()), dim=0)


class DSERegularizer(nn.Module):
    """DSE of a batch of dense features, with gradient, for ``loss = loss_ssl - beta * dse``.

    ``forward(features (B, N, d)) -> dse`` (0-d float tensor, float32 or float64), the
    estimator's per-batch score ``M_inter - (M_intra_batch + M_intra_image) / 2 + lam · M_dim``
    computed with the estimator's own k-means and term functions (k-means without gradient,
    centroids detached; see the module docstring for the gradient path and its safety).
    ``M_dim`` is computed as the estimator does (per-position, one-patch-per-image ``B × d``
    matrices), not as in the paper authors' regulariser (one effective rank over all ``B·N``
    patches normalised by ``d``). :meth:`loss` returns ``-beta * dse``; the terms of the
    last call are kept as floats in :attr:`last_terms` for logging.

    Randomness (k-means seeding, ``M_dim``'s permutation) comes from a private generator
    seeded with ``seed`` on the first call's device and advanced by every call: successive
    calls differ, runs are reproducible, the process-wide RNG is never touched. The first
    call's value equals ``dsekit.dse(features, seed=seed, ...).dse_raw`` (``lam = 1``).

    Features of lower precision (bf16/fp16, autocast) are computed in float32 with autocast
    disabled inside; the result is float32.

    Under DDP each rank scores its own features by default. With ``gather=True`` every
    rank's features are all-gathered (``torch.distributed.nn.functional.all_gather``, with
    gradient flowing back to each rank's own shard; all ranks need the same ``(B, N, d)``)
    and every rank computes the DSE of the whole global batch. The gather's backward sums
    the gradients of the identical per-rank copies (``world_size ×`` the gradient of the
    global DSE for the local shard), which DDP's gradient averaging brings back to exactly
    the gradient of the global DSE.

    Args:
        beta: weight of the regulariser in :meth:`loss`.
        lam: weight of ``M_dim`` (the paper uses 1).
        local_clusters, global_clusters, images_per_group, normalize, n_init: the estimator's
            settings (default: :class:`dsekit.metrics.dse.DSESettings`'s), kept in :attr:`settings`.
        seed: seed of the private generator (``None``: fresh entropy).
        gather: all-gather features across DDP ranks first.

    Example::

        reg = DSERegularizer(beta=1e-3)
        loss = loss_ssl + reg.loss(patch_tokens)   # = loss_ssl - 1e-3 * DSE
        loss.backward()
        log(reg.last_terms)
    """

    def __init__(
        self,
        beta: float = 0.001,
        lam: float = 1.0,
        *,
        local_clusters: int = DSESettings.local_clusters,
        global_clusters: int = DSESettings.global_clusters,
        images_per_group: int = DSESettings.images_per_group,
        normalize: bool = DSESettings.normalize,
        seed: int | None = 0,
        n_init: int = DSESettings.n_init,
        gather: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("beta", beta), ("lam", lam)):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
        for name, value, low in (
            ("local_clusters", local_clusters, 1),
            ("global_clusters", global_clusters, 2),
            ("images_per_group", images_per_group, 1),
            ("n_init", n_init, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        self.beta = float(beta)
        self.lam = float(lam)
        self.settings = DSESettings(local_clusters, global_clusters, images_per_group, bool(normalize), n_init)
        self.seed = seed
        self.gather = bool(gather)
        self.last_terms: dict[str, float] = {}
        self._generator: torch.Generator | None = None

    # ------------------------------------------------------------------ randomness

    def _generator_for(self, device: torch.device | str) -> torch.Generator:
        """The private generator on ``device`` (created from ``seed`` on first use or on a device change)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        g = self._generator
        if g is None or g.device != device:
            g = self._generator = make_generator(self.seed, device)
        return g

    def get_rng_state(self) -> Tensor | None:
        """State of the private generator (``None`` before the first call), e.g. for checkpoints."""
        return None if self._generator is None else self._generator.get_state()

    def set_rng_state(self, state: Tensor, device: torch.device | str = "cpu") -> None:
        """Restore a state from :meth:`get_rng_state` for the generator on ``device``."""
        self._generator_for(device).set_state(state)

    # ------------------------------------------------------------------ forward

    def terms(self, features: Tensor) -> DSETerms:
        """Differentiable DSE terms of ``features`` (B, N, d) (gathered first if ``gather``)."""
        if not isinstance(features, Tensor):
            raise ValueError(f"features: expected a torch tensor of shape (B, N, d), got {type(features).__name__}")
        if self.gather:
            features = _gather_with_grad(features)
        return dse_with_grad(features, self.settings, generator=self._generator_for(features.device))

    def forward(self, features: Tensor) -> Tensor:
        """DSE (0-d tensor with gradient) of ``features`` (B, N, d)."""
        terms = self.terms(features)
        value = terms.dse(self.lam)
        self.last_terms = _as_floats(terms, value)
        return value

    def loss(self, features: Tensor) -> Tensor:
        """``-beta * DSE(features)``: add it to the self-supervised loss."""
        return -self.beta * self(features)

    def extra_repr(self) -> str:
        st = self.settings
        return (
            f"beta={self.beta}, lam={self.lam}, local_clusters={st.local_clusters}, "
            f"global_clusters={st.global_clusters}, images_per_group={st.images_per_group}, "
            f"normalize={st.normalize}, seed={self.seed}, n_init={st.n_init}, gather={self.gather}"
        )


def _as_floats(terms: DSETerms, value: Tensor) -> dict[str, float]:
    """The terms as floats (one host sync): the estimator's :data:`TERMS`, ``dse`` (with
    ``lam``), ``scale`` and ``degenerate`` (1.0 when the patches had no spread)."""
    names = ("inter_class_distance", "intra_class_image", "intra_class_batch", "effective_dimensionality")
    parts = [getattr(terms, n) for n in names] + [value, terms.scale]
    values = torch.stack([t.detach().to(value.dtype) for t in parts]).tolist()
    out = dict(zip(names, values[:4], strict=True))
    out["dse_raw"] = raw_dse(
        out["inter_class_distance"], out["intra_class_image"], out["intra_class_batch"], out["effective_dimensionality"]
    )
    out["dse"], out["scale"] = values[4], values[5]
    out["degenerate"] = float(terms.degenerate)
    return out
