"""Immutable serving views shared by learners, and the helpers that turn scores into predictions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..memory.prototypes import PrototypeIndex
from .base import InputKind, Predictions, RawInputs
from .encoders import Encoder
from .head import softmax


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def to_predictions(probs: np.ndarray, classes: Sequence[str], version: int) -> Predictions:
    if probs.shape[1] == 0:
        n = len(probs)
        return Predictions([None] * n, np.zeros(n, np.float32), version, np.full(n, -1))
    ids = probs.argmax(1)
    return Predictions([classes[i] for i in ids], probs[np.arange(len(ids)), ids].astype(np.float32), version, ids)


def cosine_probs(h: np.ndarray, head: np.ndarray, scale: float, protos: PrototypeIndex, proto_weight: float,
                 taps: np.ndarray) -> np.ndarray:
    """Softmax over cosine logits of embeddings ``h`` with the head's rows, mixed with the prototypes'
    (over the taps) by ``proto_weight``."""
    p = softmax(scale * unit(h) @ unit(head).T)
    if proto_weight > 0:
        p = (1 - proto_weight) * p + proto_weight * softmax(scale * protos.similarities(unit(taps)))
    return p


@dataclass(frozen=True)
class SnapshotInfo:
    """What every serving snapshot carries: version, classes, input contract, and the frozen encoder."""

    version: int
    classes: tuple[str, ...]
    input_kind: InputKind
    input_dim: int | None
    events_learned: int
    encoder: Encoder


@dataclass(frozen=True)
class ScoredSnapshot(SnapshotInfo):
    """A snapshot that answers from its class probabilities for taps (``probs``)."""

    def probs(self, taps: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_taps(self, taps: np.ndarray) -> Predictions:
        return to_predictions(self.probs(taps), self.classes, self.version)

    def predict_many(self, inputs: RawInputs) -> Predictions:
        return self.predict_taps(self.encoder.encode(inputs))


@dataclass(frozen=True)
class CosineSnapshot(ScoredSnapshot):
    """Serving copy of the continual learner: EMA adapter weight, EMA cosine head, prototypes."""

    weight: np.ndarray
    head: np.ndarray
    protos: PrototypeIndex
    scale: float
    proto_weight: float

    def probs(self, taps: np.ndarray) -> np.ndarray:
        if not self.classes:
            return np.zeros((len(taps), 0), np.float32)
        return cosine_probs(taps @ self.weight.T, self.head, self.scale, self.protos, self.proto_weight, taps)

    def nbytes(self) -> int:
        return int(self.weight.nbytes + self.head.nbytes + self.protos.nbytes())
