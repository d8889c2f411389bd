"""dsekit: label-free dense representation quality (DSE) for self-supervised learning.

The names below are read lazily: ``import dsekit`` imports no torch until one is used.
"""

__version__ = "0.2.0"

from .lazy import lazy_exports  # noqa: E402

_EXPORTS = {
    "dse": ".metrics.dse",
    "dse_from_labels": ".metrics.dse",
    "DSEAccumulator": ".metrics.dse",
    "DSEResult": ".metrics.dse",
    "DSESettings": ".metrics.settings",
    "calibrate": ".select",
    "select_checkpoints": ".select",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["__version__", *_EXPORTS]
