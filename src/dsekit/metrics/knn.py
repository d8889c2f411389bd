"""Image-level quality: weighted k-NN classification of image embeddings, with bootstrap
intervals over the evaluated images.

The protocol is DINO's k-NN evaluation (Caron et al., 2021): embeddings L2-normalised, cosine
similarity of each test image to every training image, the ``k`` most similar vote for their
label with weight ``exp(similarity / temperature)``, the label with the largest total wins
(ties: the smallest label). Defaults: ``k = 20``, ``temperature = 0.07``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .intervals import percentile_interval

__all__ = ["AccuracyBootstrap", "accuracy_bootstrap", "knn_predict"]


def knn_predict(
    train: Tensor,
    train_labels: Tensor,
    test: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> Tensor:
    """Weighted k-NN labels of ``test`` (see the module docstring).

    Args:
        train: ``(n, d)`` embeddings of the labelled images.
        train_labels: ``(n,)`` integer labels ``0 .. C-1``.
        test: ``(m, d)`` embeddings to classify.
        k: neighbours (at most ``n``); temperature: of the vote weights.
        num_classes: ``C`` (default: the largest training label + 1).
        chunk: test images per similarity block (memory ``chunk · n``).

    Returns:
        ``(m,)`` int64 predicted labels.
    """
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(
            f"knn: expected (n, d) and (m, d) embeddings, got {tuple(train.shape)} and {tuple(test.shape)}"
        )
    labels = torch.as_tensor(train_labels, dtype=torch.long)
    if labels.shape != (train.shape[0],) or train.shape[0] == 0:
        raise ValueError(
            f"knn: expected one label per training embedding, got {tuple(labels.shape)} for {train.shape[0]}"
        )
    if int(labels.min()) < 0:
        raise ValueError("knn: labels must be >= 0")
    if not (isinstance(k, int) and k >= 1) or not temperature > 0:
        raise ValueError(f"knn: expected k >= 1 and temperature > 0, got k={k!r}, temperature={temperature!r}")
    C = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    k = min(k, train.shape[0])
    a = torch.nn.functional.normalize(train.float(), dim=1)
    out = torch.empty(test.shape[0], dtype=torch.long)
    for lo in range(0, test.shape[0], chunk):
        b = torch.nn.functional.normalize(test[lo : lo + chunk].float(), dim=1)
        sim, idx = (b @ a.T).topk(k, dim=1)
        votes = torch.zeros(b.shape[0], C)
        votes.scatter_add_(1, labels[idx], (sim / temperature).exp())
        out[lo : lo + chunk] = votes.argmax(dim=1)
    return out


@dataclass(frozen=True)
class AccuracyBootstrap:
    """Accuracy of T checkpoints on the same n images, with percentile intervals.

    Attributes:
        accuracy, low, high: ``(T,)``.
        replicates: ``(R, T)``; column t and column u share their resample of the images.
        confidence: the nominal coverage; images: n.
    """

    accuracy: np.ndarray
    low: np.ndarray
    high: np.ndarray
    replicates: np.ndarray
    confidence: float
    images: int


def accuracy_bootstrap(
    correct: np.ndarray, *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> AccuracyBootstrap:
    """Bootstrap intervals of accuracy over the images (``scipy.stats.bootstrap``, percentile).

    ``correct``: ``(T, n)`` booleans, one row per checkpoint on the same images; the images are
    resampled with replacement, the same resample for every checkpoint (paired)."""
    from scipy.stats import bootstrap

    c = np.asarray(correct, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] < 2:
        raise ValueError(f"correct: expected (T, n) with n >= 2 images, got shape {c.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a level in (0, 1), got {confidence!r}")
    T, n = c.shape

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        flat = idx.reshape(-1, idx.shape[-1])
        acc = c[:, flat].mean(axis=-1)  # (T, B)
        return acc.reshape(T, *idx.shape[:-1])

    res = bootstrap(
        (np.arange(n),),
        statistic,
        n_resamples=int(n_resamples),
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(int(seed)),
    )
    reps = np.asarray(res.bootstrap_distribution).reshape(T, -1).T  # (R, T)
    low, high = percentile_interval(reps, confidence, axis=0)
    return AccuracyBootstrap(c.mean(axis=1), low, high, reps, float(confidence), n)
