"""What HTTP reads under ``scaleout.learning.mode: per_key``: one served model per key.

A :class:`KeyedServing` is immutable like any snapshot: the served models of the
keys in memory when the learning loop published it. A key not among them (its
learner was evicted, or another replica learns it) is read from the key store
through a small shared cache (:class:`StoredModels`) that rereads a key when
its stamp changes, so any replica answers for any stored key, as fresh as that
key's last save. An unknown key is None: the HTTP app answers 404.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Callable, Mapping

import numpy as np

from ..memory.key_store import KeyStore, Stamp
from ..memory.persistence import DamagedState
from .base import InputKind, Predictions, RawInputs, ServingModel

log = logging.getLogger(__name__)

DEFAULT_KEY = ""  # the model of events that carry no key


class StoredModels:
    """Served models of stored keys, built on demand, at most ``capacity`` at once (LRU)."""

    def __init__(self, store: KeyStore, load: Callable[[str], ServingModel | None], capacity: int) -> None:
        self.store = store
        self._load = load  # key -> its served model from the store (None: not stored)
        self.capacity = capacity
        self._cache: OrderedDict[str, tuple[Stamp, ServingModel]] = OrderedDict()
        self._lock = threading.Lock()  # HTTP threads and the learning loop's publishes share it

    def get(self, key: str) -> ServingModel | None:
        try:
            stamp = self.store.stamp(key)
        except DamagedState:
            return None
        if stamp is None:
            return None
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == stamp:
                self._cache.move_to_end(key)
                return hit[1]
        try:
            model = self._load(key)  # outside the lock: seconds for a large state, others keep reading
        except (OSError, DamagedState, KeyError, ValueError, TypeError):
            log.warning("the stored state of a key could not be read for serving", exc_info=True)
            return None
        if model is None:
            return None
        with self._lock:
            self._cache[key] = (stamp, model)
            self._cache.move_to_end(key)
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return model

    def __len__(self) -> int:
        return len(self._cache)


class KeyedServing:
    """The served models by key; itself serves the default key (events and requests without one)."""

    keyed = True

    def __init__(self, models: Mapping[str, ServingModel], stored: StoredModels | None, *, version: int,
                 events_learned: int, keys: int, input_kind: InputKind, input_dim: int | None) -> None:
        self._models = dict(models)
        self._stored = stored
        self.version = version
        self.events_learned = events_learned
        self.keys = keys  # keys this replica holds or has learned (the store may hold more)
        self.input_kind = input_kind
        self.input_dim = input_dim
        default = self._models.get(DEFAULT_KEY)
        # Ready once any key has a model; the default key's classes when it has one.
        self.classes: tuple[str, ...] = default.classes if default is not None else tuple(
            sorted({c for m in self._models.values() for c in m.classes}))

    def for_key(self, key: str) -> ServingModel | None:
        model = self._models.get(key)
        if model is not None:
            return model
        return self._stored.get(key) if self._stored is not None else None

    def _default(self) -> ServingModel:
        model = self.for_key(DEFAULT_KEY)
        if model is None:
            raise LookupError("no model for events without a key: give 'key'")
        return model

    def predict_many(self, inputs: RawInputs) -> Predictions:
        return self._default().predict_many(inputs)

    def predict_taps(self, taps: np.ndarray) -> Predictions:
        return self._default().predict_taps(taps)

    def nbytes(self) -> int:
        return sum(m.nbytes() for m in self._models.values())
