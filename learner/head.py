"""A linear softmax head trained online by SGD, growing a row per new class.

A new class's row starts from its prototype (scaled to the typical row norm),
so the head predicts a class sensibly from the first example on.
"""
from __future__ import annotations

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class LinearHead:
    def __init__(self, dim: int, lr: float = 0.5, init_norm: float = 4.0) -> None:
        self.dim = dim
        self.lr = lr
        self.init_norm = init_norm
        self.weight = np.zeros((0, dim), np.float32)
        self.bias = np.zeros(0, np.float32)

    @property
    def num_classes(self) -> int:
        return len(self.bias)

    def add_class(self, prototype: np.ndarray) -> None:
        norms = np.linalg.norm(self.weight, axis=1)
        scale = float(norms.mean()) if len(norms) else self.init_norm
        direction = prototype / max(float(np.linalg.norm(prototype)), 1e-12)
        bias = float(self.bias.mean()) if len(self.bias) else 0.0
        self.weight = np.vstack([self.weight, (scale * direction)[None].astype(np.float32)])
        self.bias = np.append(self.bias, np.float32(bias))

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T + self.bias

    def step(self, x: np.ndarray, y: np.ndarray, probs: np.ndarray) -> None:
        """One SGD step of cross-entropy, given the pre-update ``probs`` for ``x``."""
        grad = probs.copy()
        grad[np.arange(len(y)), y] -= 1.0
        grad /= len(y)
        self.weight -= self.lr * (grad.T @ x).astype(np.float32)
        self.bias -= self.lr * grad.sum(0).astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight.copy(), "bias": self.bias.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if state["weight"].shape[1:] != (self.dim,):
            raise ValueError(f"head weight has shape {state['weight'].shape}, expected (C, {self.dim})")
        self.weight = state["weight"].astype(np.float32).copy()
        self.bias = state["bias"].astype(np.float32).copy()
