"""dsekit: label-free dense representation quality (DSE) for self-supervised learning."""

__version__ = "0.1.0"

from .metrics.dse import DSEAccumulator, DSEResult, DSESettings, dse, dse_from_labels  # noqa: E402
from .select import calibrate, select_checkpoints  # noqa: E402

__all__ = ["__version__", "dse", "dse_from_labels", "DSEAccumulator", "DSEResult", "DSESettings", "calibrate", "select_checkpoints"]
