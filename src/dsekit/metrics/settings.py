"""The estimator's settings, with the paper's defaults: the one place they are written.

Pure Python (no torch), so that the command line can show the defaults without importing the
estimator.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["KMEANS_SEEDING_TRIALS", "DSESettings"]

# Candidates per new centre in the k-means++ seeding of the estimator's k-means (scikit-learn
# draws 2 + ln k = 5 for 24 clusters). With 16, a single seeding misses a small cluster far
# less often, which cuts DSE's seed-to-seed spread on unevenly sized clusters by an order of
# magnitude (``bench/dse_speed.py``) for about 7 % more time than 5.
KMEANS_SEEDING_TRIALS = 16


@dataclass(frozen=True)
class DSESettings:
    """The estimator's settings, with the paper's defaults (SPEC §2–§4); every DSE computation
    in the package (estimator, accumulator, regulariser, monitor, scan) takes them from here.

    Attributes:
        local_clusters: k of the per-image k-means (``M_intra_image``).
        global_clusters: k of the per-group k-means (``M_intra_batch``, ``M_inter``).
        images_per_group: consecutive images clustered together (the last group may be smaller).
        normalize: L2-normalise every patch first.
        n_init: k-means restarts (best inertia kept).
        seeding_trials: candidates per new centre in the k-means++ seeding.
    """

    local_clusters: int = 3
    global_clusters: int = 24
    images_per_group: int = 8
    normalize: bool = True
    n_init: int = 1
    seeding_trials: int = KMEANS_SEEDING_TRIALS

    def with_overrides(self, **overrides: Any) -> DSESettings:
        """A copy with the given settings replaced (``None`` values keep the current one)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **given) if given else self

    def check(self, B: int, N: int) -> None:
        """``ValueError`` when these settings cannot score a batch of ``B`` images of ``N`` patches."""
        if self.local_clusters < 1:
            raise ValueError(f"local_clusters: expected >= 1, got {self.local_clusters}")
        if self.global_clusters < 2:
            raise ValueError(
                f"global_clusters: expected >= 2 (M_inter needs another centroid), got {self.global_clusters}"
            )
        if self.images_per_group < 1:
            raise ValueError(f"images_per_group: expected >= 1, got {self.images_per_group}")
        if N < self.local_clusters:
            raise ValueError(
                f"local_clusters: {self.local_clusters} clusters need at least as many patches per image, got N = {N}"
            )
        g = self.images_per_group
        smallest = min(B, g) if B % g == 0 else B % g
        if smallest * N < self.global_clusters:
            raise ValueError(
                f"global_clusters: {self.global_clusters} clusters need at least as many patches per group, "
                f"but a group of {smallest} image(s) x {N} patches has {smallest * N} (images_per_group={g}, B={B})"
            )


#: the largest seed every generator dsekit uses accepts (torch's and numpy's)
SEED_MAX = 2**63 - 1


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` as an int; ``ValueError`` naming ``name`` unless it is an integer in ``[0, SEED_MAX]``."""
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise ValueError(f"{name}: expected an integer in [0, 2**63 - 1], got {seed!r}")
    value = operator.index(seed)  # ints and numpy integers
    if not 0 <= value <= SEED_MAX:
        raise ValueError(f"{name}: expected an integer in [0, 2**63 - 1], got {value}")
    return value
