"""The small learner API every learner implements (River's verbs, tensors inside).

Inputs are a list of strings (text encoders) or a 2-D float array (feature
encoders). ``encode`` runs the frozen part once; ``learn_taps`` and
``predict_taps`` work on its output, so a delayed label can be learned from
stored tap features without keeping raw text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

InputKind = Literal["text", "features"]
RawInputs = Sequence[str] | np.ndarray


@dataclass(frozen=True)
class StepStats:
    """What one learning step did; monitoring records it, the learner keeps nothing of it."""

    n: int
    loss: float
    losses: np.ndarray
    correct: np.ndarray  # prediction made *before* the update was right (prequential)
    new_classes: tuple[str, ...]
    version: int
    signals: tuple[str, ...] = ()  # drift signals this step raised: peak, plateau, consolidation, adwin
    window_mean: float = float("nan")  # normalised loss window, for monitoring
    window_var: float = float("nan")
    suspects: int = 0  # events down-weighted by the source influence bound (``influence``)


@dataclass(frozen=True)
class ForgetReport:
    """What one forget request changed in a learner."""

    items: int  # replay items removed (their events' own taps)
    classes_removed: tuple[str, ...]  # classes none of whose retained events is left: gone from the model
    seconds: float  # the whole request: removal, refit, prototypes, served copy
    version: int  # the learner's version from which no forgotten event is held
    refit_items: int = 0  # the retained items the plastic weights were refit on
    keys: int = 0  # per_key mode: the keys whose learners forgot (and were refit)
    failed: tuple[str, ...] = ()  # per_key mode: keys whose stored state could not be read (not forgotten)


@dataclass(frozen=True)
class Predictions:
    labels: list[str | None]
    scores: np.ndarray
    model_version: int
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@runtime_checkable
class ServingModel(Protocol):
    """An immutable view of a learner that HTTP readers may use from any thread."""

    version: int
    classes: tuple[str, ...]
    input_kind: InputKind
    input_dim: int | None
    events_learned: int

    def predict_many(self, inputs: RawInputs) -> Predictions: ...

    def predict_taps(self, taps: np.ndarray) -> Predictions: ...

    def nbytes(self) -> int: ...


class Learner(Protocol):
    name: str
    input_kind: InputKind
    input_dim: int | None
    version: int
    events_learned: int

    @property
    def classes(self) -> tuple[str, ...]: ...

    def encode(self, inputs: RawInputs, *, learning: bool = False) -> np.ndarray: ...

    def learn_taps(self, taps: np.ndarray, labels: Sequence[str], *, tags: np.ndarray | None = None,
                   sources: np.ndarray | None = None) -> StepStats:
        """``tags``, ``sources``: the events' id and source tags (``memory.tags``); a learner that can forget
        keeps them with what it stores, the others ignore them."""
        ...

    def predict_taps(self, taps: np.ndarray) -> Predictions: ...

    def learn_many(self, inputs: RawInputs, labels: Sequence[str]) -> StepStats: ...

    def predict_many(self, inputs: RawInputs) -> Predictions: ...

    def snapshot(self) -> ServingModel: ...

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]: ...

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None: ...

    def nbytes(self) -> int: ...

    def gauges(self) -> dict[str, float]:
        """Numbers for monitoring (replay items and bytes, PQ error, merges, prototypes)."""
        ...


class TapsLearner:
    """The raw-input verbs, written once on top of ``encode`` and the ``_taps`` verbs."""

    def encode(self, inputs: RawInputs, *, learning: bool = False) -> np.ndarray:
        raise NotImplementedError

    def learn_taps(self, taps: np.ndarray, labels: Sequence[str], *, tags: np.ndarray | None = None,
                   sources: np.ndarray | None = None) -> StepStats:
        raise NotImplementedError

    def predict_taps(self, taps: np.ndarray) -> Predictions:
        raise NotImplementedError

    def learn_many(self, inputs: RawInputs, labels: Sequence[str]) -> StepStats:
        if len(inputs) != len(labels):
            raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
        return self.learn_taps(self.encode(inputs, learning=True), labels)

    def predict_many(self, inputs: RawInputs) -> Predictions:
        return self.predict_taps(self.encode(inputs))
