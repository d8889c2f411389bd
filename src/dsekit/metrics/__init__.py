"""Pure tensor metrics: DSE and its terms, k-means, spectra, baselines."""

from .baselines import BASELINE_METRICS, VIEW_METRICS, alpha_req, dense_rankme, lidar, rankme
from .dse import TERMS, DSEAccumulator, DSEResult, DSESettings, calibrated_dse, dse, dse_from_labels, raw_dse, separability
from .kmeans import KMeansResult, kmeans
from .spectra import effective_rank, nuclear_norm, singular_values

__all__ = [
    "BASELINE_METRICS",
    "VIEW_METRICS",
    "alpha_req",
    "dense_rankme",
    "lidar",
    "rankme",
    "TERMS",
    "DSEAccumulator",
    "DSEResult",
    "DSESettings",
    "calibrated_dse",
    "raw_dse",
    "separability",
    "dse",
    "dse_from_labels",
    "KMeansResult",
    "kmeans",
    "effective_rank",
    "nuclear_norm",
    "singular_values",
]
