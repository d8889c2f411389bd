"""Pure tensor metrics: DSE and its terms, k-means, spectra, baselines (names read lazily)."""

from ..lazy import lazy_exports

_EXPORTS = {
    "BASELINE_METRICS": ".baselines",
    "VIEW_METRICS": ".baselines",
    "alpha_req": ".baselines",
    "dense_rankme": ".baselines",
    "lidar": ".baselines",
    "rankme": ".baselines",
    "TERMS": ".dse",
    "DSEAccumulator": ".dse",
    "DSEResult": ".dse",
    "DSESettings": ".settings",
    "calibrated_dse": ".dse",
    "dse": ".dse",
    "dse_from_labels": ".dse",
    "raw_dse": ".dse",
    "separability": ".dse",
    "KMeansResult": ".kmeans",
    "kmeans": ".kmeans",
    "effective_rank": ".spectra",
    "nuclear_norm": ".spectra",
    "singular_values": ".spectra",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
