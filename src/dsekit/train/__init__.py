"""Training-time tools: the DSE regulariser and Gram anchoring (exported here).

The self-supervised trainer is :mod:`dsekit.train.ssl` (settings in :mod:`dsekit.train.config`,
methods in :mod:`dsekit.train.methods`, views in :mod:`dsekit.train.views`); the DSE monitor is
:mod:`dsekit.train.monitor`.
"""

from .gram import GramAnchor, gram_anchoring_loss
from .regularizer import ClusterAssignments, DSERegularizer, cluster_assignments, dse_with_grad, safe_normalize

__all__ = ["ClusterAssignments", "DSERegularizer", "GramAnchor", "cluster_assignments", "dse_with_grad",
           "gram_anchoring_loss", "safe_normalize"]
