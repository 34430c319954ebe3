"""Diagonal Fisher information: what consolidation weighs each adapter parameter by.

Per sample, the squared gradient of the model's own arg-max log-likelihood (the empirical
Fisher of its predictions, needing no labels), averaged over the samples: one backward pass a
sample, so the estimate is per sample and not per batch (which would square a mean gradient).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def diagonal_fisher(logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Mean over the rows of ``x`` of each parameter's squared gradient of -log p(argmax)."""
    fishers = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        out = logits(x[i:i + 1])
        nll = F.cross_entropy(out, out.argmax(1).detach())
        for f, g in zip(fishers, torch.autograd.grad(nll, list(params))):
            f += g**2
    return [f / max(len(x), 1) for f in fishers]
