"""A lifelong learner behind River's classifier API, for River pipelines and ``evaluate``.

River hands a classifier one dict per event (``learn_one``) or a pandas
DataFrame (``learn_many``); our learners take dense batches. The adapter fixes a
feature order once and turns each dict into a vector:

- the order is the sorted keys of the first event learned (or ``features``,
  given up front). Keys outside it are ignored later on: the encoder's width is
  fixed. A missing key, ``None`` or NaN counts as 0, River's sparse convention.
- ``text="name"`` sends the string under that key through the frozen text
  encoder instead (a missing one reads as ""); other keys are ignored.

Labels keep their own type (bool, int, str ...): the learner sees them as
"0", "1", ... in order of first appearance, and the adapter maps them back.
"""
from __future__ import annotations

import math
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Hashable, Iterator, Sequence

import numpy as np
from river import base

from .continual import ContinualConfig, ContinualLearner
from .encoders import FeatureEncoder, TextEncoder
from .nmc import NMCLearner
from .registry import LearnerOptions, build

if TYPE_CHECKING:
    import pandas as pd  # the _many methods take DataFrames; the _one path works without pandas

# The fast expert under learn_one: the slow learner lags its queue (up to batch_size events), so
# Hedge may hand the fast one the whole vote (the daemon caps it at half); a smaller step than the
# daemon's as River's logistic regression takes. On Phishing: 0.895 against 0.871 with the daemon's.
FAST_EXPERT = {"lr": 0.1, "max_fast": 1.0}

# Hyper-parameters each learner takes through ``**options`` (seed and device have their own).
OPTIONS = {"lifelong": {f.name for f in fields(ContinualConfig)} - {"seed", "device"},
           "nmc": {"lr", "head_weight", "proto_scale"}}


def _number(value: Any, key: Hashable) -> float:
    if _missing(value):
        return 0.0
    if isinstance(value, str):
        raise TypeError(f"feature {key!r} is a string: encode it upstream, or pass text={key!r} for free text")
    return float(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _schema(x: dict) -> tuple:
    """The keys that carry a value, in an order that does not depend on the dict's order."""
    keys = sorted((k for k, v in x.items() if not _missing(v)), key=repr)
    for k in keys:
        _number(x[k], k)  # a string fails here, before the schema is fixed
    if not keys:
        raise ValueError("the first event learned has no features: pass features=(...) to fix them up front")
    return tuple(keys)


class LifelongClassifier(base.MiniBatchClassifier):
    """A lifelong learner (``lifelong`` or ``nmc``) as a River classifier.

    ``learn_many`` learns a DataFrame in micro-batches of ``batch_size`` rows, in
    order. ``learn_one`` with the lifelong learner does not pay a micro-batch's
    steps per event: the event is learned at once by a fast expert (softmax
    regression on the taps, one SGD step per event, mixed into predictions by
    Hedge: ``fast_expert``) and queued for the slow learner, which learns its
    queue as one micro-batch of ``batch_size`` events (an event of a new class
    empties the queue at once). With ``batch_size=1`` every ``learn_one`` is a
    micro-batch of its own, and ``learn_many`` a ``learn_one`` loop exactly.
    Predictions use the live weights, not the EMA snapshot the daemon serves.

    Parameters
    ----------
    learner
        "lifelong" (Online-LoRA adapter, cosine head, replay) or "nmc" (prototypes + linear head).
    text
        Key of a free-text feature to encode with all-MiniLM-L6-v2; None: numeric features.
    features
        The feature keys, in order; None: the sorted keys of the first event learned.
    batch_size
        Largest micro-batch ``learn_many`` hands the learner, and the slow learner's
        queue under ``learn_one``.
    fast_expert
        Mix the per-event fast expert into predictions (lifelong only; None: on).
        Off, ``learn_one`` learns each event as a micro-batch of its own at once.
    warmup_events
        Events whose statistics standardise numeric features (then frozen).
    max_tokens
        Text is truncated to this many tokens.
    seed
        Random seed of the lifelong learner.
    device
        "cpu" or "cuda", for the text encoder and the lifelong learner.
    options
        The learner's hyper-parameters: ``ContinualConfig`` fields for "lifelong"
        (``steps_per_batch``, ``replay_per_step``, ``memory_budget_bytes``, ``pq_m`` ...),
        ``lr``, ``head_weight``, ``proto_scale`` for "nmc".

    Examples
    --------
    >>> from river import datasets, evaluate, metrics, preprocessing
    >>> from lifelong.learner.river_adapter import LifelongClassifier
    >>> model = preprocessing.StandardScaler() | LifelongClassifier(learner="nmc")
    >>> evaluate.progressive_val_score(datasets.Phishing(), model, metrics.Accuracy())
    Accuracy: 88.15%

    """

    def __init__(self, learner: str = "lifelong", text: str | None = None, features: tuple | None = None,
                 batch_size: int = 64, warmup_events: int = 1000, max_tokens: int = 128, seed: int = 0,
                 device: str = "cpu", fast_expert: bool | None = None, **options: Any) -> None:
        if learner not in OPTIONS:
            raise ValueError(f"learner must be one of {sorted(OPTIONS)}, not {learner!r}")
        unknown = set(options) - OPTIONS[learner]
        if unknown:
            raise TypeError(f"{learner} takes no option(s) {sorted(unknown)}; it takes {sorted(OPTIONS[learner])}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        if features is not None and not features:
            raise ValueError("features, when given, must name at least one feature")
        self.learner, self.text, self.features = learner, text, features
        self.batch_size, self.warmup_events, self.max_tokens = batch_size, warmup_events, max_tokens
        self.seed, self.device, self.fast_expert, self.options = seed, device, fast_expert, options
        self._queue: list[Any] = []  # learn_one's inputs the slow learner has not learned yet, in order
        self._queued: list[str] = []
        self._schema: tuple | None = tuple(features) if features is not None else None
        self._labels: list[Any] = []  # original labels; the learner knows label i as str(i)
        self._label_ids: dict[Any, str] = {}
        self._model: ContinualLearner | NMCLearner | None = None  # built at the first label

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        # Small enough for River's checks to run in seconds (one step of a few replayed items per event).
        yield {"learner": "nmc", "batch_size": 1}
        yield {"batch_size": 1, "steps_per_batch": 1, "replay_per_step": 8, "hard_buffer": 8,
               "memory_budget_bytes": 20_000}

    @property
    def _multiclass(self) -> bool:
        return True

    def _unit_test_skips(self) -> set[str]:
        # Larger micro-batches take one step per batch, not one per row (as River's linear models).
        return set() if self.batch_size == 1 else {"check_learn_many_matches_learn_one"}

    # -- building ---------------------------------------------------------------------
    def _build(self) -> ContinualLearner | NMCLearner:
        if self.text is not None:
            encoder: Any = TextEncoder(max_tokens=self.max_tokens, device=self.device)
        else:
            assert self._schema is not None
            encoder = FeatureEncoder(len(self._schema), warmup_events=self.warmup_events)
        # Through the registry, as the daemon builds them (pq_m fitted to the tap width alike).
        key = "nmc" if self.learner == "nmc" else "continual"
        return build(self.learner, encoder, LearnerOptions(  # type: ignore[no-any-return]
            seed=self.seed, device=self.device, fast_expert=self._fast, recency=FAST_EXPERT, **{key: dict(self.options)}))

    @property
    def _fast(self) -> bool:
        return self.learner == "lifelong" and self.fast_expert is not False

    def _label_keys(self, ys: Sequence[Any]) -> list[str]:
        for y in ys:
            if y not in self._label_ids:
                self._label_ids[y] = str(len(self._labels))
                self._labels.append(y)
        return [self._label_ids[y] for y in ys]

    # -- inputs -----------------------------------------------------------------------
    def _one(self, x: dict) -> Any:
        if self.text is not None:
            return [self._text(x.get(self.text))]
        assert self._schema is not None
        return np.array([[_number(x.get(k), k) for k in self._schema]])

    def _many(self, X: pd.DataFrame) -> Any:
        if self.text is not None:
            column = X[self.text].tolist() if self.text in X.columns else [None] * len(X)
            return [self._text(v) for v in column]
        assert self._schema is not None
        rows = X.reindex(columns=list(self._schema))
        try:
            values = rows.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):  # a string column: the per-row path names it
            return np.array([[_number(v, k) for k, v in zip(self._schema, row)] for row in rows.itertuples(False)])
        return np.where(np.isnan(values), 0.0, values)

    def _text(self, value: Any) -> str:
        if _missing(value):
            return ""
        if not isinstance(value, str):
            raise TypeError(f"text feature {self.text!r} must be a string, not {type(value).__name__}")
        return value

    # -- learning ---------------------------------------------------------------------
    def _learn(self, inputs: Any, ys: Sequence[Any]) -> None:
        if self._model is None:
            self._model = self._build()
        self._flush()
        self._model.learn_many(inputs, self._label_keys(ys))

    def _flush(self) -> None:
        """The slow learner learns learn_one's queue as one micro-batch. The feature statistics learn
        from it here too, once per micro-batch as under ``learn_many`` (per event, each move of the
        mapping would re-map the whole replay memory)."""
        if not self._queued:
            return
        assert self._model is not None
        parts, labels = self._queue, self._queued
        self._queue, self._queued = [], []
        inputs = sum(parts, []) if self.text is not None else np.concatenate(parts)
        self._model.inner.learn_taps(self._model.encode(inputs, learning=True), labels)  # type: ignore[union-attr]

    def learn_one(self, x: dict, y: base.typing.ClfTarget, **kwargs: Any) -> None:
        if self._schema is None and self.text is None:
            self._schema = _schema(x)
        inputs = self._one(x)
        if self._model is None:
            self._model = self._build()
        label = self._label_keys([y])[0]
        if not self._fast or self.batch_size == 1 or label not in self._model.classes:
            self._learn(inputs, [y])  # a class the slow learner must know before the fast one can
            return
        self._model.learn_event(self._model.encode(inputs)[0], label)  # type: ignore[union-attr]
        self._queue.append(inputs)
        self._queued.append(label)
        if len(self._queued) >= self.batch_size:
            self._flush()

    def learn_many(self, X: pd.DataFrame, y: pd.Series, **kwargs: Any) -> None:
        if len(X) != len(y):
            raise ValueError(f"{len(X)} rows but {len(y)} labels")
        if not len(X):
            return
        if self._schema is None and self.text is None:
            self._schema = _schema(X.iloc[0].to_dict())
        labels = y.tolist()
        self._flush()  # learn_one's queue first: the learner sees events in order
        for start in range(0, len(X), self.batch_size):
            chunk = X.iloc[start:start + self.batch_size]
            self._learn(self._many(chunk), labels[start:start + self.batch_size])

    # -- predicting -------------------------------------------------------------------
    def _probs(self, inputs: Any) -> np.ndarray:
        assert self._model is not None
        p = self._model.predict_proba_taps(self._model.encode(inputs)).astype(np.float64)
        return p / p.sum(axis=1, keepdims=True)  # exact to float64 rounding, as River expects

    def _classes(self) -> list[Any]:
        return [self._labels[int(c)] for c in self._model.classes] if self._model is not None else []

    def predict_proba_one(self, x: dict, **kwargs: Any) -> dict[base.typing.ClfTarget, float]:
        if self._model is None or not self._model.classes:
            return {}
        return dict(zip(self._classes(), self._probs(self._one(x))[0].tolist()))

    def predict_one(self, x: dict, **kwargs: Any) -> base.typing.ClfTarget | None:
        if self._model is None or not self._model.classes:
            return None
        return self._classes()[int(self._probs(self._one(x))[0].argmax())]

    def predict_proba_many(self, X: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
        import pandas as pd

        if self._model is None or not self._model.classes:
            return pd.DataFrame(index=X.index)
        return pd.DataFrame(self._probs(self._many(X)), index=X.index, columns=self._classes())

    def predict_many(self, X: pd.DataFrame, **kwargs: Any) -> pd.Series:
        import pandas as pd

        if self._model is None or not self._model.classes:
            return pd.Series([None] * len(X), index=X.index, dtype=object)
        classes = self._classes()
        return pd.Series([classes[i] for i in self._probs(self._many(X)).argmax(axis=1)], index=X.index,
                         dtype=object)

    # -- pickling: the learner travels as its state_dict (it holds threads, FAISS and torch objects) --
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model"] = None if self._model is None else self._model.state_dict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved = state.pop("_model")
        self.__dict__.update(state)
        self._model = None
        if saved is not None:
            self._model = self._build()
            self._model.load_state_dict(*saved)
