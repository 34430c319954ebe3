"""``nmc``: frozen encoder + class-mean prototypes (FAISS) + an online linear head.

The foundation learner and, later, the floor baseline. Prediction fuses the
head's softmax with a softmax over prototype cosine similarities: prototypes
never forget and know a new class from its first example; the head sharpens
boundaries where it has seen enough data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..memory.prototypes import PrototypeIndex
from .base import InputKind, Predictions, RawInputs, StepStats, TapsLearner
from .encoders import Encoder
from .head import LinearHead, softmax
from .serving import SnapshotInfo, to_predictions, unit


def fused_probs(taps: np.ndarray, head: LinearHead, protos: PrototypeIndex,
                head_weight: float, proto_scale: float) -> np.ndarray:
    """Class probabilities, shape (n, C), from the head and the prototypes."""
    if head.num_classes == 0:
        return np.zeros((len(taps), 0), np.float32)
    p_head = softmax(head.logits(taps))
    p_proto = softmax(proto_scale * protos.similarities(unit(taps)))
    return head_weight * p_head + (1.0 - head_weight) * p_proto


@dataclass(frozen=True)
class NMCSnapshot(SnapshotInfo):
    """Immutable serving view: copies of head and prototypes plus the shared frozen encoder."""

    head: LinearHead
    protos: PrototypeIndex
    head_weight: float
    proto_scale: float

    def probs(self, taps: np.ndarray) -> np.ndarray:
        return fused_probs(taps, self.head, self.protos, self.head_weight, self.proto_scale)

    def predict_taps(self, taps: np.ndarray) -> Predictions:
        return to_predictions(self.probs(taps), self.classes, self.version)

    def predict_many(self, inputs: RawInputs) -> Predictions:
        return self.predict_taps(self.encoder.encode(inputs))

    def nbytes(self) -> int:
        return int(self.head.weight.nbytes + self.head.bias.nbytes + self.protos.nbytes())


class NMCLearner(TapsLearner):
    name = "nmc"

    def __init__(self, encoder: Encoder, *, lr: float = 0.5, head_weight: float = 0.5,
                 proto_scale: float = 16.0) -> None:
        self.encoder = encoder
        self.input_kind: InputKind = encoder.kind
        self.input_dim: int | None = encoder.input_dim
        self.head_weight = head_weight
        self.proto_scale = proto_scale
        self.head = LinearHead(encoder.dim, lr=lr)
        self.protos = PrototypeIndex(encoder.dim)
        self._classes: list[str] = []
        self._class_ids: dict[str, int] = {}
        self.version = 0
        self.events_learned = 0

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def encode(self, inputs: RawInputs, *, learning: bool = False) -> np.ndarray:
        return self.encoder.encode(inputs, learning=learning)

    def _ids_for(self, labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        new: list[str] = []
        for label in labels:
            if label not in self._class_ids:
                self._class_ids[label] = len(self._classes)
                self._classes.append(label)
                new.append(label)
        return np.array([self._class_ids[lab] for lab in labels], dtype=np.int64), new

    def learn_taps(self, taps: np.ndarray, labels: Sequence[str], *, tags: np.ndarray | None = None,
                   sources: np.ndarray | None = None) -> StepStats:
        # tags and sources: kept nowhere (no replay memory to forget from; forgetting refuses this learner)
        if len(taps) != len(labels):
            raise ValueError(f"{len(taps)} inputs but {len(labels)} labels")
        if len(labels) == 0:
            return StepStats(0, 0.0, np.zeros(0), np.zeros(0, bool), (), self.version)
        known = self.head.num_classes
        before = fused_probs(taps, self.head, self.protos, self.head_weight, self.proto_scale)
        y, new = self._ids_for(labels)
        # Prequential: the prediction made before this update; an unseen class is always wrong.
        correct = (before.argmax(1) == y) if known else np.zeros(len(y), bool)
        self.protos.add(unit(taps), y)
        for label in new:
            self.head.add_class(self.protos.mean_of(self._class_ids[label]))
        probs = softmax(self.head.logits(taps))
        losses = -np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12))
        self.head.step(taps, y, probs)
        self.version += 1
        self.events_learned += len(y)
        return StepStats(len(y), float(losses.mean()), losses, correct, tuple(new), self.version)

    def predict_proba_taps(self, taps: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, len(classes))."""
        return fused_probs(taps, self.head, self.protos, self.head_weight, self.proto_scale)

    def predict_taps(self, taps: np.ndarray) -> Predictions:
        return to_predictions(self.predict_proba_taps(taps), self._classes, self.version)



    def snapshot(self) -> NMCSnapshot:
        head = LinearHead(self.head.dim, lr=self.head.lr)
        head.load_state_dict(self.head.state_dict())
        return NMCSnapshot(self.version, self.classes, self.input_kind, self.input_dim, self.events_learned,
                           self.encoder.serving_copy(), head, self.protos.frozen_copy(), self.head_weight,
                           self.proto_scale)

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        arrays |= {f"protos.{k}": v for k, v in self.protos.state_dict().items()}
        arrays |= {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        meta = {"learner": self.name, "encoder": self.encoder.name, "input_kind": self.input_kind,
                "dim": self.encoder.dim, "classes": self._classes, "version": self.version,
                "events_learned": self.events_learned}
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if meta.get("learner") != self.name or meta.get("dim") != self.encoder.dim:
            raise ValueError(f"state is for {meta.get('learner')} dim {meta.get('dim')}, "
                             f"not {self.name} dim {self.encoder.dim}")
        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
        self.head.load_state_dict(part("head."))
        self.protos.load_state_dict(part("protos."))
        self.encoder.load_state_dict(part("encoder."))
        self._classes = list(meta["classes"])
        self._class_ids = {c: i for i, c in enumerate(self._classes)}
        self.version = int(meta["version"])
        self.events_learned = int(meta["events_learned"])

    def nbytes(self) -> int:
        return int(self.head.weight.nbytes + self.head.bias.nbytes + self.protos.nbytes())

    def gauges(self) -> dict[str, float]:
        return {"prototypes": self.protos.num_classes}
