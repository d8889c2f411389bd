"""Pure tensor metrics: DSE and its terms, k-means, spectra, baselines."""

from .dse import TERMS, DSEAccumulator, DSEResult, dse, dse_from_labels
from .kmeans import KMeansResult, kmeans
from .spectra import effective_rank, nuclear_norm, singular_values

__all__ = [
    "TERMS",
    "DSEAccumulator",
    "DSEResult",
    "dse",
    "dse_from_labels",
    "KMeansResult",
    "kmeans",
    "effective_rank",
    "nuclear_norm",
    "singular_values",
]
