"""A fast per-event expert served beside a learner's snapshot, mixed by Hedge.

On a drifting, autocorrelated stream (electricity prices, weather) the best predictor of the
next label is often what the last few events said, and a learner that updates once per
micro-batch predicts a whole batch from stale weights. :class:`RecencyMixture` wraps a learner
(its *slow* expert: the served snapshot, EMA included) and adds a *fast* expert: softmax
regression on the taps, one SGD step per event. Inside ``learn_taps`` the batch is
test-then-train event by event, as River's learners are: event ``i`` is predicted (for
``StepStats.correct``) from the slow expert's snapshot taken before the batch and the fast
expert after events ``0 .. i-1``, then learned. Hedge weights the two by their log loss, with
a small fixed share (Herbster and Warmuth) so the mixture can switch back when the stream does.
On a stream where recency carries nothing, the fast expert's weight falls towards the share.

Predictions, live and served, use the same mixture; the served copy freezes the fast head and
the weights with the slow expert's snapshot.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from ..memory.replay import ReplayStore
from .base import ForgetReport, Learner, Predictions, RawInputs, ServingModel, StepStats, TapsLearner
from .encoders import Encoder
from .head import softmax
from .parts import part, with_prefix
from .serving import SnapshotInfo, to_predictions


class SlowSnapshot(ServingModel, Protocol):
    """What the mixture uses of the slow expert's snapshot: its probabilities and its encoder."""

    encoder: Encoder

    def probs(self, taps: np.ndarray) -> np.ndarray: ...


class SlowLearner(Learner, Protocol):
    """What the mixture uses of the learner it wraps (the continual learner, the MLP-initialised one)."""

    @property
    def encoder(self) -> Encoder: ...

    @property
    def memory(self) -> ReplayStore: ...

    def snapshot(self) -> SlowSnapshot: ...


@dataclass(frozen=True)
class RecencyConfig:
    lr: float = 0.5       # the fast expert's SGD step per event
    eta: float = 0.1      # Hedge learning rate (per event, on log loss)
    share: float = 0.01   # weight mixed back uniformly after each event
    max_fast: float = 0.5  # the fast expert's weight in a prediction is at most this


class FastHead:
    """Softmax regression trained by one SGD step per event; a new class's row starts at zero."""

    def __init__(self, dim: int, lr: float) -> None:
        self.lr = lr
        self.weight = np.zeros((0, dim), np.float64)
        self.bias = np.zeros(0, np.float64)

    def grow(self, num_classes: int) -> None:
        extra = num_classes - len(self.bias)
        if extra > 0:
            self.weight = np.vstack([self.weight, np.zeros((extra, self.weight.shape[1]))])
            self.bias = np.concatenate([self.bias, np.zeros(extra)])

    def probs(self, x: np.ndarray, known: int | None = None) -> np.ndarray:
        """Class probabilities over the first ``known`` classes (all by default)."""
        k = len(self.bias) if known is None else known
        return softmax(x @ self.weight[:k].T + self.bias[:k])

    def step(self, x: np.ndarray, y: int, known: int) -> np.ndarray:
        """One SGD step on one event over the first ``known`` classes; returns the pre-step probabilities."""
        p = self.probs(x[None], known)[0]
        grad = p.copy()
        grad[y] -= 1.0
        self.weight[:known] -= self.lr * np.outer(grad, x)
        self.bias[:known] -= self.lr * grad
        return p


def _hedge(weights: np.ndarray, losses: np.ndarray, eta: float, share: float) -> np.ndarray:
    w = weights * np.exp(-eta * (losses - losses.min()))
    w /= w.sum()
    return (1.0 - share) * w + share / len(w)


@dataclass(frozen=True)
class MixtureSnapshot(SnapshotInfo):
    """The served copy: the slow expert's snapshot, a frozen fast head, frozen Hedge weights."""

    slow: SlowSnapshot
    fast_weight: np.ndarray
    fast_bias: np.ndarray
    mix: np.ndarray

    @classmethod
    def of(cls, slow: SlowSnapshot, fast: FastHead, mix: np.ndarray) -> "MixtureSnapshot":
        return cls(slow.version, slow.classes, slow.input_kind, slow.input_dim, slow.events_learned, slow.encoder,
                   slow, fast.weight.copy(), fast.bias.copy(), mix.copy())

    def probs(self, taps: np.ndarray) -> np.ndarray:
        if not self.classes:
            return np.zeros((len(taps), 0), np.float32)
        x = np.asarray(taps, np.float64)
        fast = softmax(x @ self.fast_weight.T + self.fast_bias)
        return (self.mix[0] * self.slow.probs(taps) + self.mix[1] * fast).astype(np.float32)

    def predict_taps(self, taps: np.ndarray) -> Predictions:
        return to_predictions(self.probs(taps), self.classes, self.version)

    def predict_many(self, inputs: RawInputs) -> Predictions:
        return self.predict_taps(self.encoder.encode(inputs))

    def nbytes(self) -> int:
        return int(self.slow.nbytes() + self.fast_weight.nbytes + self.fast_bias.nbytes)


class RecencyMixture(TapsLearner):
    """``learner`` (its snapshot: the slow expert) + a per-event fast head, mixed by Hedge."""

    def __init__(self, learner: SlowLearner, config: RecencyConfig = RecencyConfig()) -> None:
        self.inner, self.config = learner, config
        self.name = learner.name
        self.input_kind, self.input_dim = learner.input_kind, learner.input_dim
        self.fast = FastHead(learner.encoder.dim, config.lr)  # on the taps
        self.hedge = np.full(2, 0.5)  # Hedge weights of (slow, fast)
        self._snap: SlowSnapshot | None = None

    # -- what the wrapped learner says --------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        return self.inner.encoder

    @property
    def memory(self) -> ReplayStore:
        return self.inner.memory

    @property
    def classes(self) -> tuple[str, ...]:
        return self.inner.classes

    @property
    def version(self) -> int:
        return self.inner.version

    @property
    def events_learned(self) -> int:
        return self.inner.events_learned

    def _slow(self) -> SlowSnapshot:
        # Snapshots are immutable: one per version serves learning and live predictions alike.
        if self._snap is None or self._snap.version != self.inner.version:
            self._snap = self.inner.snapshot()
        return self._snap

    def encode(self, inputs: RawInputs, *, learning: bool = False) -> np.ndarray:
        return self.inner.encode(inputs, learning=learning)

    def snapshot(self) -> MixtureSnapshot:
        return MixtureSnapshot.of(self._slow(), self.fast, self._mix())

    def _mix(self) -> np.ndarray:
        fast = min(float(self.hedge[1]), self.config.max_fast)
        return np.array([1.0 - fast, fast])

    def predict_proba_taps(self, taps: np.ndarray) -> np.ndarray:
        """Live class probabilities, shape (n, len(classes))."""
        return self.snapshot().probs(taps)

    def predict_taps(self, taps: np.ndarray) -> Predictions:
        return self.snapshot().predict_taps(taps)

    def learn_event(self, tap: np.ndarray, label: str) -> bool:
        """The fast expert alone learns one event of a class the slow expert knows (test-then-train,
        Hedge updated); the caller hands the slow expert the same events later, in micro-batches, with
        ``inner.learn_taps``. Returns whether the mixture predicted the event right."""
        y = self.inner.classes.index(label)
        known = len(self.inner.classes)
        self.fast.grow(known)
        slow = self._slow().probs(tap[None])
        return bool(self._sequential(np.asarray(tap[None], np.float64), np.array([y]), slow, known)[0])

    def learn_taps(self, taps: np.ndarray, labels: Sequence[str], *, tags: np.ndarray | None = None,
                   sources: np.ndarray | None = None) -> StepStats:
        if len(taps) != len(labels):
            raise ValueError(f"{len(taps)} inputs but {len(labels)} labels")
        known = len(self.inner.classes)
        slow = self._slow().probs(taps) if known and len(labels) else np.zeros((len(labels), known))
        stats = self.inner.learn_taps(taps, labels, tags=tags, sources=sources)
        if not len(labels):
            return stats
        ids = {c: i for i, c in enumerate(self.inner.classes)}
        y = np.array([ids[lab] for lab in labels])
        self.fast.grow(len(ids))
        slow = np.pad(slow, ((0, 0), (0, len(ids) - known)))  # the slow expert knew no class new in this batch
        return dataclasses.replace(stats, correct=self._sequential(np.asarray(taps, np.float64), y, slow, known))

    def _sequential(self, x: np.ndarray, y: np.ndarray, slow: np.ndarray, known: int) -> np.ndarray:
        """Test-then-train event by event over the ``known`` classes of before the batch.

        Classes get ids in order of first appearance, so the classes new in this batch are the
        ids from ``known`` on; as for the slow learner, an event of one of them counts as wrong
        (the fast head learns it all the same)."""
        c = self.config
        correct = np.zeros(len(y), bool)
        for i in range(len(y)):
            if y[i] >= known:
                self.fast.step(x[i], int(y[i]), int(y[i]) + 1)
                continue
            mix = self._mix()
            fast = self.fast.step(x[i], int(y[i]), known)
            correct[i] = (mix[0] * slow[i, :known] + mix[1] * fast).argmax() == y[i]
            losses = -np.log(np.maximum([slow[i, y[i]], fast[y[i]]], 1e-12))
            self.hedge = _hedge(self.hedge, losses, c.eta, c.share)
        return correct

    @property
    def supports_forget(self) -> bool:
        return bool(getattr(self.inner, "supports_forget", False))

    def holds(self, tags: np.ndarray | None = None, sources: np.ndarray | None = None) -> int:
        return int(self.inner.holds(tags, sources))  # type: ignore[attr-defined]

    def may_hold(self, tags: np.ndarray | None = None, sources: np.ndarray | None = None) -> bool:
        return bool(self.inner.may_hold(tags, sources))  # type: ignore[attr-defined]

    def forget(self, tags: np.ndarray | None = None, sources: np.ndarray | None = None) -> ForgetReport:
        """The wrapped learner forgets; the fast head, trained on recent events whatever they were, starts again."""
        report = self.inner.forget(tags, sources)  # type: ignore[attr-defined]
        self.fast = FastHead(self.inner.encoder.dim, self.config.lr)
        self.fast.grow(len(self.inner.classes))
        self.hedge = np.full(2, 0.5)
        self._snap = None
        return report

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = self.inner.state_dict()
        arrays = with_prefix("inner.", arrays) | {"fast.weight": self.fast.weight.copy(),
                                                  "fast.bias": self.fast.bias.copy(), "hedge": self.hedge.copy()}
        return arrays, {"learner": self.name, "recency": True, "version": self.version,
                        "events_learned": self.events_learned, "inner": meta}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if not meta.get("recency"):
            raise ValueError("state is not a recency mixture's")
        self.inner.load_state_dict(part("inner.", arrays), meta["inner"])
        self.fast.weight, self.fast.bias = arrays["fast.weight"].copy(), arrays["fast.bias"].copy()
        self.hedge = arrays["hedge"].copy()
        self._snap = None

    def nbytes(self) -> int:
        return int(self.inner.nbytes() + self.fast.weight.nbytes + self.fast.bias.nbytes)

    def gauges(self) -> dict[str, float]:
        return self.inner.gauges() | {"fast_expert_weight": float(self._mix()[1])}
