"""Training-time tools: the DSE regulariser and Gram anchoring (exported here, read lazily).

The self-supervised trainer is :mod:`dsekit.train.ssl` (settings in :mod:`dsekit.train.config`,
methods in :mod:`dsekit.train.methods`, views in :mod:`dsekit.train.views`); the DSE monitor is
:mod:`dsekit.train.monitor`.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "ClusterAssignments": ".regularizer",
    "DSERegularizer": ".regularizer",
    "cluster_assignments": ".regularizer",
    "dse_with_grad": ".regularizer",
    "safe_normalize": ".regularizer",
    "GramAnchor": ".gram",
    "gram_anchoring_loss": ".gram",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
