"""One learner per key on one shared frozen encoder (``scaleout.learning.mode: per_key``).

Each key (a tenant, a product, a site) has its own adapter, head, replay memory,
prototypes and prequential accuracy. The learning loop picks a key with
:meth:`KeyedLearners.use`; the Learner verbs then act on that key's learner, so
the intake's stages (validate, encode, learn, park, join) run unchanged per key.

Learners stay in memory while used and go to the key store
(``memory/key_store.py``) when the process-wide budget binds, least recently
used first; a checkpoint saves every key learned since its last save there. The
store is also where a replica finds a key whose partition moved to it: a key
whose stored stamp changed since it was read is read again.

Exactly once without a two-phase write: a key's saved state carries, per input
partition, the next offset it has taken, and the offsets below it of events it
parked (waiting for their labels, not learned). A record below that offset and
not parked is in the key already, whatever the checkpoint's own offsets say, so
a replay after a crash, an eviction after the last checkpoint, or the
partition's next owner skips it for that key (:meth:`covered`); a parked one is
parked again.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..memory.key_store import KeyStore, Stamp
from ..memory.persistence import DamagedState
from .base import ForgetReport, Learner, Predictions, RawInputs, StepStats
from .keyed_serving import DEFAULT_KEY, KeyedServing, StoredModels

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
FADING = 0.999  # per-key prequential accuracy weighs about the last 1,000 events
MAX_PARKED = 100_000  # a key's parked offsets kept (the oldest go first: their labels are long overdue)


class KeyRefused(Exception):
    """A key this process cannot take now; ``reason`` is a dead-letter reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class KeyInfo:
    """What a key's summary holds, with or without its learner in memory."""

    events: int = 0
    version: int = 0
    classes: int = 0
    hits: float = 0.0  # faded count of events predicted right before they were learned
    seen: float = 0.0

    @property
    def accuracy(self) -> float | None:
        return self.hits / self.seen if self.seen else None

    def learned(self, stats: StepStats, classes: int) -> None:
        fade = FADING ** stats.n
        self.hits = self.hits * fade + float(np.sum(stats.correct))
        self.seen = self.seen * fade + stats.n
        self.events += stats.n
        self.version = stats.version
        self.classes = classes


@dataclass
class _Resident:
    learner: Learner
    positions: dict[TopicPartition, int]
    stamp: Stamp | None  # the stored write this learner started from or last made
    info: KeyInfo
    dirty: bool = False  # learned since the last save
    unpublished: bool = True  # learned since the last snapshot
    nbytes: int = 0
    parked: dict[tuple[str, int, int], None] = field(default_factory=dict)  # (topic, partition, offset), in order


class KeyedLearners:
    """The Learner verbs on the key chosen by :meth:`use`, plus what the keys need in common."""

    def __init__(self, make: Callable[[], Learner], store: KeyStore, *, max_keys: int, max_resident_bytes: int,
                 served_cache_keys: int = 256) -> None:
        self._make = make
        self._spare: Learner | None = make()  # the first new key's learner; tells the name and input
        self.name = self._spare.name
        self.supports_forget = bool(getattr(self._spare, "supports_forget", False))
        self.input_kind = self._spare.input_kind
        self.input_dim = self._spare.input_dim
        self.store = store
        self.max_keys = max_keys
        self.max_resident_bytes = max_resident_bytes
        self._resident: OrderedDict[str, _Resident] = OrderedDict()  # least recently used first
        self.info: dict[str, KeyInfo] = {}  # every key this process learned or read
        self._served: dict[str, Any] = {}  # the resident keys' last snapshots
        self.stored = StoredModels(store, self._load_served, served_cache_keys)
        self._active: _Resident | None = None
        self.version = 0  # rises with every step of any key (the aggregate snapshot's version)
        self.events_learned = 0
        self.evictions = 0
        self.conflicts = 0
        self._stored_count = len(store)
        self.summary: dict[str, int] = self._summary()  # replaced at each snapshot: HTTP threads read it

    def _summary(self) -> dict[str, int]:
        return {"keys_in_memory": len(self._resident), "keys_known": len(self.info), "keys_stored": self._stored_count,
                "keys_bytes_in_memory": self.resident_bytes(), "key_evictions": self.evictions,
                "key_conflicts": self.conflicts}

    # -- choosing a key --------------------------------------------------------------
    def use(self, key: str) -> None:
        """Make ``key`` the one the Learner verbs act on (read from the store, or new); :class:`KeyRefused`."""
        entry = self._resident.get(key)
        stamp = self.store.stamp(key)
        if entry is not None and stamp != entry.stamp:
            # Another replica saved this key since: its partition moved here. Its state is the newer.
            if entry.dirty:
                self.conflicts += 1
                log.warning("key %r was learned here and saved by another replica too: keep the events of a key in "
                            "one partition (the Kafka message key); taking the stored state", key)
            del self._resident[key]
            entry = None
        if entry is None:
            entry = self._read(key, stamp)
            self._resident[key] = entry
            entry.unpublished = True  # the next snapshot serves it from memory
        self._resident.move_to_end(key)
        self._active = entry

    def _read(self, key: str, stamp: Stamp | None) -> _Resident:
        if stamp is None:
            if self._stored_count + sum(e.stamp is None for e in self._resident.values()) >= self.max_keys:
                raise KeyRefused("too_many_keys", f"a new key past scaleout.learning.per_key.max_keys={self.max_keys}")
            learner, self._spare = self._spare or self._make(), None
            return _Resident(learner, {}, None, self.info.setdefault(key, KeyInfo()))
        try:
            stored = self.store.load(key)
            if stored is None:  # removed between the stamp and the read
                return self._read(key, None)
            arrays, meta, stamp = stored
            learner = self._make()
            learner.load_state_dict(arrays, meta["learner"])
            info = KeyInfo(**meta["info"])
            positions = {(str(t), int(p)): int(o) for t, p, o in meta["positions"]}
            parked = dict.fromkeys((str(t), int(p), int(o)) for t, p, o in meta.get("parked", []))
        except (OSError, DamagedState, KeyError, ValueError, TypeError) as exc:
            raise KeyRefused("key_unavailable", f"the stored state of this key cannot be read: {exc}") from exc
        self.info[key] = info
        return _Resident(learner, positions, stamp, info, dirty=False, nbytes=learner.nbytes(), parked=parked)

    def _load_served(self, key: str) -> Any:
        """A stored key's served model, for HTTP (any thread): a learner of its own, never a resident one."""
        stored = self.store.load(key)
        if stored is None:
            return None
        learner = self._make()
        learner.load_state_dict(stored[0], stored[1]["learner"])
        return learner.snapshot() if learner.classes else None

    @property
    def active(self) -> Learner:
        if self._active is None:
            raise RuntimeError("no key in use: call use(key) first")
        return self._active.learner

    # -- exactly once per key -----------------------------------------------------------
    def covered(self, tp: TopicPartition, offset: int) -> bool:
        """Whether the key in use has taken the record at ``offset`` of ``tp`` already (and not only parked it)."""
        a = self._active
        return a is not None and 0 <= offset < a.positions.get(tp, 0) and (*tp, offset) not in a.parked

    def advance(self, tp: TopicPartition, offset: int, parked: bool = False) -> None:
        """The key in use has taken the record at ``offset`` of ``tp``: learned it (or refused it), or ``parked``
        it to wait for its label."""
        a = self._active
        if a is None or offset < 0:
            return
        a.positions[tp] = max(offset + 1, a.positions.get(tp, 0))
        if parked:
            a.parked[(*tp, offset)] = None
            a.dirty = True  # a save must hold it, or a replay would take the event for learned
            while len(a.parked) > MAX_PARKED:
                del a.parked[next(iter(a.parked))]

    def learned_parked(self, tp: TopicPartition, offset: int) -> None:
        """A parked event of the key in use was learned (its label came)."""
        if self._active is not None:
            self._active.parked.pop((*tp, offset), None)

    # -- the Learner verbs, on the key in use ----------------------------------------------
    @property
    def classes(self) -> tuple[str, ...]:
        return self.active.classes if self._active is not None else ()

    def encode(self, inputs: RawInputs, *, learning: bool = False) -> np.ndarray:
        return self.active.encode(inputs, learning=learning)

    def learn_taps(self, taps: np.ndarray, labels: Sequence[str], *, tags: np.ndarray | None = None,
                   sources: np.ndarray | None = None) -> StepStats:
        entry = self._active
        stats = self.active.learn_taps(taps, labels, tags=tags, sources=sources)
        assert entry is not None
        entry.info.learned(stats, len(entry.learner.classes))
        entry.dirty = entry.unpublished = True
        entry.nbytes = entry.learner.nbytes()
        self.version += 1
        self.events_learned += stats.n
        return stats

    def predict_taps(self, taps: np.ndarray) -> Predictions:
        return self.active.predict_taps(taps)

    def learn_many(self, inputs: RawInputs, labels: Sequence[str]) -> StepStats:
        return self.learn_taps(self.encode(inputs, learning=True), labels)

    def predict_many(self, inputs: RawInputs) -> Predictions:
        return self.predict_taps(self.encode(inputs))

    # -- forgetting ------------------------------------------------------------------------
    def forget(self, tags: np.ndarray | None = None, sources: np.ndarray | None = None,
               keys: Sequence[str] | None = None) -> ForgetReport:
        """Forget in each of ``keys`` (refit whether or not they hold the events), or, with no keys, in every
        key, in memory or stored, that may hold them (``may_hold``: its memory holds one, or is no longer a
        record of all it learned): refitting every tenant on every request would cost a refit per key.
        Keys are read one at a time and saved again within the memory budget; a key whose stored state
        cannot be read is reported in ``failed``, and the others go on."""
        started = time.perf_counter()
        found, unreadable = self.store.scan()
        stored = set(found)
        names = [k for k in keys if k in self._resident or k in stored] if keys is not None \
            else sorted(set(self._resident) | stored)
        failed = [] if keys is not None else unreadable
        active = self._active
        items = refit = changed = 0
        removed: list[str] = []
        try:
            for key in names:
                try:
                    report = self._forget_key(key, tags, sources, named=keys is not None)
                except KeyRefused as exc:
                    log.error("forget: key %r cannot be read, so it still holds what it learned: %s", key, exc)
                    failed.append(key)
                    continue
                finally:
                    self.evict_over_budget()  # never more keys in memory than learning would keep
                if report is not None:
                    items, refit, changed = items + report.items, refit + report.refit_items, changed + 1
                    removed += [f"{c} (key {key})" for c in report.classes_removed]
        finally:
            self._active = active if any(e is active for e in self._resident.values()) else None
        return ForgetReport(items, tuple(removed), time.perf_counter() - started, self.version, refit, changed,
                            tuple(failed))

    def _forget_key(self, key: str, tags: np.ndarray | None, sources: np.ndarray | None,
                    named: bool) -> ForgetReport | None:
        self.use(key)
        entry = self._active
        assert entry is not None
        if not named and not entry.learner.may_hold(tags, sources):  # type: ignore[attr-defined]
            return None
        report: ForgetReport = entry.learner.forget(tags, sources)  # type: ignore[attr-defined]
        entry.info.classes, entry.info.version = len(entry.learner.classes), report.version
        entry.dirty = entry.unpublished = True
        entry.nbytes = entry.learner.nbytes()
        self.version += 1
        return report

    # -- memory ---------------------------------------------------------------------------
    def resident_bytes(self) -> int:
        return sum(e.nbytes for e in self._resident.values())

    def nbytes(self) -> int:
        return self.resident_bytes()

    def evict_over_budget(self) -> int:
        """Save and drop least recently used learners while over the budget (never the key in use)."""
        evicted = 0
        while len(self._resident) > 1 and self.resident_bytes() > self.max_resident_bytes:
            key, entry = next(iter(self._resident.items()))
            if entry is self._active:
                self._resident.move_to_end(key)
                continue
            try:
                self._save(key, entry)
            except OSError as exc:  # disk full: keep it in memory, over budget, and say so
                log.error("could not save key %r to evict it (kept in memory): %s", key, exc)
                return evicted
            del self._resident[key]
            self._served.pop(key, None)
            evicted += 1
        self.evictions += evicted
        return evicted

    def _save(self, key: str, entry: _Resident) -> None:
        if not entry.dirty:
            return
        arrays, meta = entry.learner.state_dict()
        positions = [[t, p, o] for (t, p), o in sorted(entry.positions.items())]
        info = entry.info
        was_new = entry.stamp is None
        parked = [list(p) for p in entry.parked]
        entry.stamp = self.store.save(key, arrays, {"learner": meta, "positions": positions, "parked": parked, "info": {
            "events": info.events, "version": info.version, "classes": info.classes, "hits": info.hits,
            "seen": info.seen}})
        entry.dirty = False
        self._stored_count += was_new

    # -- snapshots, state, monitoring -------------------------------------------------------
    def snapshot(self) -> KeyedServing:
        for key, entry in self._resident.items():
            if entry.unpublished and entry.learner.classes:
                self._served[key] = entry.learner.snapshot()
                entry.unpublished = False
        self.summary = self._summary()
        return KeyedServing(self._served, self.stored, version=self.version, events_learned=self.events_learned,
                            keys=len(self.info), input_kind=self.input_kind, input_dim=self.input_dim)

    def save_keys(self) -> None:
        """Save every key learned since its last save (OSError: not all went)."""
        for key, entry in list(self._resident.items()):
            self._save(key, entry)
        self._stored_count = len(self.store)

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Save every key learned since its last save (OSError: the checkpoint must not be written), then the
        process's own counters: the keys' states live in the store, not in the checkpoint."""
        self.save_keys()
        return {}, {"keyed": 1, "learner": self.name, "version": self.version, "events_learned": self.events_learned,
                    "evictions": self.evictions}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if meta.get("keyed") != 1 or meta.get("learner") != self.name:
            raise ValueError(f"state is for {meta.get('learner')} (keyed: {meta.get('keyed')}), not keyed {self.name}")
        self.version, self.events_learned = int(meta["version"]), int(meta["events_learned"])
        self.evictions = int(meta.get("evictions", 0))
        self._resident.clear()
        self._served.clear()
        self._active = None

    def describe(self, limit: int = 100) -> list[dict[str, Any]]:
        """The keys this process learned or read, most events first (at most ``limit``)."""
        # Any thread: list() copies under the GIL while the learning loop may add keys.
        rows = sorted(list(self.info.items()), key=lambda kv: -kv[1].events)[:limit]
        return [{"key": k, "events_learned": i.events, "model_version": i.version, "classes": i.classes,
                 "prequential_accuracy": i.accuracy, "in_memory": k in self._resident} for k, i in rows]

    def gauges(self) -> dict[str, float]:
        inner = [e.learner.gauges() for e in self._resident.values()]
        total = {name: float(sum(g.get(name, 0) for g in inner)) for name in
                 ("replay_items", "replay_bytes", "adapters_merged", "prototypes")}
        return total | {"pq_error": float("nan"), **self._summary()}


__all__ = ["DEFAULT_KEY", "KeyRefused", "KeyedLearners", "KeyInfo"]
