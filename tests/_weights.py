"""Seeded random weights for the test models: checkpoints in the official formats hold these."""

from __future__ import annotations

import torch
from torch import nn


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Fill every float parameter and buffer with seeded random values (BN statistics
    included: running variances in [0.5, 1.5), norm weights near 1); returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.state_dict(keep_vars=True).items()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim == 1 and name.endswith("weight"):
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
            elif t.ndim == 1:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(0.05 * torch.randn(t.shape, generator=g))
    return model.eval()
