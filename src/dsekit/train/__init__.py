"""Training-time tools: the DSE regulariser."""

from .regularizer import ClusterAssignments, DSERegularizer, cluster_assignments, dse_with_grad, safe_normalize

__all__ = ["ClusterAssignments", "DSERegularizer", "cluster_assignments", "dse_with_grad", "safe_normalize"]
