"""The ``offline`` reference of ``lifelong bench``: joint training on every training event, no stream.

What a user compares the online learner with: "retrain a logistic regression every night". A
softmax regression on the same frozen taps, standardised with the statistics of all training
events, fitted to all of them at once (no order, no forgetting). Its L2 penalty is chosen on a
seeded tenth of the training events held out for the purpose; it is then fitted again on all of them. Test events are used only to score it, as for every learner.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

PENALTIES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # L2 on the weights, per training event
MAX_ITER = 300


@dataclass(frozen=True)
class Offline:
    classes: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    l2: float
    seconds: float

    def predict(self, taps: np.ndarray) -> list[str]:
        z = ((np.asarray(taps, np.float32) - self.mean) / self.std) @ self.weight.T + self.bias
        return [self.classes[i] for i in z.argmax(1)]


def _fit(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression with an L2 penalty, by full-batch L-BFGS (as scikit-learn's
    default solver): deterministic, and converged rather than stopped after a guessed number of steps."""
    import torch

    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    w = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=MAX_ITER, tolerance_grad=1e-6, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = torch.nn.functional.cross_entropy(xt @ w.T + b, yt) + l2 * (w * w).sum()
        value.backward()
        return value

    opt.step(loss)
    return w.detach().numpy().copy(), b.detach().numpy().copy()


def train_offline(taps: np.ndarray, labels: Sequence[str], seed: int = 0) -> Offline:
    """The reference model, trained jointly on ``taps`` (training events only) and ``labels``."""
    import torch

    started = time.perf_counter()
    torch.manual_seed(seed)
    classes = tuple(sorted(set(labels)))
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in labels], np.int64)
    x = np.asarray(taps, np.float32)
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-8, std, 1.0).astype(np.float32)
    x = (x - mean) / std
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, len(x) // 10)
    val, fit = order[:n_val], order[n_val:]
    scores = []
    for l2 in PENALTIES:
        w, b = _fit(x[fit], y[fit], len(classes), l2, seed)
        scores.append(float(((x[val] @ w.T + b).argmax(1) == y[val]).mean()))
    l2 = PENALTIES[int(np.argmax(scores))]  # the smallest penalty among the best: the first
    weight, bias = _fit(x, y, len(classes), l2, seed)
    return Offline(classes, mean.astype(np.float32), std, weight, bias, l2, time.perf_counter() - started)
