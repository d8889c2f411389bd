"""Figures and reports of a run: the DSE curve of a scan."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["plot_dse_curve"]

_TERM_LABELS = {
    "inter_class_distance": "M_inter",
    "intra_class_image": "M_intra (image)",
    "intra_class_batch": "M_intra (batch)",
    "effective_dimensionality": "M_dim",
}


def plot_dse_curve(results: Sequence[Any], dse: Sequence[float], selection: dict[str, Any], path: str | Path) -> Path:
    """DSE over epochs (candidates marked, the selection starred) above its four terms.

    Args:
        results: objects with ``checkpoint``, ``epoch`` and ``terms`` (a dict of the four terms).
        dse: calibrated DSE per result.
        selection: as written to ``selection.json`` (``candidates``, ``best``, ``lambda``).
        path: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r.epoch if r.epoch is not None else i for i, r in enumerate(results)]
    index = {r.checkpoint: i for i, r in enumerate(results)}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True, height_ratios=[3, 2])
    top.plot(x, dse, "-o", color="C0", ms=4, label="DSE")
    cand = [index[c["checkpoint"]] for c in selection.get("candidates", []) if c["checkpoint"] in index]
    if cand:
        top.plot([x[i] for i in cand], [dse[i] for i in cand], "o", mfc="none", mec="C3", ms=11, mew=1.5,
                 label="candidates (local maxima)")
    best = selection.get("best")
    if best and best["checkpoint"] in index:
        i = index[best["checkpoint"]]
        top.plot([x[i]], [dse[i]], "*", color="C3", ms=16, label=f"selected (epoch {x[i]})")
    lam = selection.get("lambda")
    top.set_ylabel("DSE" + (f"  (λ = {lam:.3g})" if lam is not None else "  (raw)"))
    top.legend(loc="best", fontsize=8)
    top.grid(alpha=0.3)
    for j, (term, label) in enumerate(_TERM_LABELS.items()):
        bottom.plot(x, [r.terms[term] for r in results], "-", color=f"C{j + 1}", label=label)
    bottom.set_xlabel("epoch")
    bottom.set_ylabel("terms")
    bottom.legend(loc="best", fontsize=8, ncol=2)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
