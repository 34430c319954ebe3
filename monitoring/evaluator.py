"""Task-free continual evaluation: fixed per-segment holdouts, scored every rho learned events.

docs/algorithms.md section 4. A *segment* spans two drift peaks (or true boundaries). A hash-chosen
fraction of labelled events goes to the current segment's holdout instead of being learned; every
``eval_every`` learned events each model is scored on every segment's holdout. Definitions, per model
(a segment with an empty holdout has no accuracy, NaN, and that evaluation does not count for it):

- current / mean accuracy: on the newest segment / mean over all kept segments.
- min-ACC: mean over past segments of the lowest accuracy at an evaluation strictly after the segment
  ended (De Lange et al.); past segments not yet evaluated since are left out; NaN if none.
- WC-ACC: current / K + (1 - 1/K) * min-ACC, K = kept segments; the current accuracy when K = 1.
- WF^w: a past segment's series is its last accuracy before it ended (the anchor: without it the drop
  at the drift itself would be invisible), then every accuracy after. WF^w = max(0, max a_i - a_j over
  i < j <= i + w - 1): the largest drop inside w consecutive evaluations; mean and max over past
  segments with two values or more (NaN if none). WP^w: max(0, max a_j - a_i) likewise over the current
  segment's series (NaN below two values).
- Drift gap, one per open_segment: ``before`` = mean accuracy at the model's last evaluation over the
  segments scored there (all past once the drift opens a new one); after each later evaluation, the
  mean over the same segments. depth = before - lowest such mean (signed; NaN until an evaluation
  follows); recovery = evaluations after the drift up to and including the first with mean >= before -
  recovery_eps (None until then); a recovered gap stops updating. A drift before any evaluation leaves
  no gap; the last ``max_gaps`` gaps per model are kept.
- Class-based variant (no detector): a class is *past* once absent from the learned stream for at least
  W = class_absent_window events, *present* if seen more recently, neither if never learned; scored
  over every holdout item.

Memory is bounded: at most ``per_segment_cap`` items per holdout (seeded reservoir) and, per model and
segment, the last max(WINDOWS) - 1 accuracies plus running extremes. Past ``max_segments`` segments the
oldest is *dropped* (holdout and scores), not merged: merging would redraw the merged holdout.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .continual_metrics import NAN, min_acc, nanmax, nanmean, wc_acc

WINDOWS = (10, 100)               # w of WF^w and WP^w; ModelScores names one field per window
_KEEP = max(WINDOWS) - 1          # a pair inside a window of w evaluations is at most w - 1 apart
_PRESENT, _PAST = 1, 2            # class states; 0 = never learned
Predict = Callable[[np.ndarray], Sequence[str]]


@dataclass(frozen=True)
class DriftGap:
    at_event: int
    before: float                 # mean accuracy on the then-existing segments just before the drift
    depth: float                  # before - lowest mean since; NaN until an evaluation follows
    recovery: int | None          # evaluations until back within recovery_eps; None while not
    evaluations: int              # evaluations counted since the drift (frozen once recovered)


@dataclass(frozen=True)
class ModelScores:
    current_accuracy: float
    mean_accuracy: float
    min_acc: float
    wc_acc: float
    wf10_mean: float
    wf10_max: float
    wf100_mean: float
    wf100_max: float
    wp10: float
    wp100: float
    past_class_accuracy: float
    present_class_accuracy: float
    gaps: tuple[DriftGap, ...]


def _rate(hits: np.ndarray) -> float:
    return float(hits.mean()) if len(hits) else NAN


class _Track:
    """One model's scores on one segment, in O(max(WINDOWS)) memory whatever the stream length."""

    def __init__(self) -> None:
        self.recent: list[float] = []
        self.n_open = 0           # accuracies recorded while the segment was current
        self.n_closed = 0         # ... and after it ended
        self.last = NAN           # accuracy at the model's latest evaluation
        self.min_after = NAN
        self.wf = [NAN] * len(WINDOWS)
        self.wp = [NAN] * len(WINDOWS)

    def add(self, acc: float, closed: bool) -> None:
        # Values of this series before acc; WF's series starts at the anchor (last value while open).
        k = self.n_closed + (self.n_open > 0) if closed else self.n_open
        for i, w in enumerate(WINDOWS):
            prev = self.recent[len(self.recent) - min(w - 1, k):]
            if not prev:
                continue
            if closed:
                self.wf[i] = nanmax([self.wf[i], max(0.0, max(prev) - acc)])
            else:
                self.wp[i] = nanmax([self.wp[i], max(0.0, acc - min(prev))])
        if closed:
            self.min_after = acc if math.isnan(self.min_after) else min(self.min_after, acc)
            self.n_closed += 1
        else:
            self.n_open += 1
        self.recent = (self.recent + [acc])[-_KEEP:]

    def to_array(self) -> np.ndarray:
        return np.array([self.last, self.min_after, *self.wf, *self.wp, *self.recent], dtype=np.float64)

    @classmethod
    def from_array(cls, values: np.ndarray, n_open: int, n_closed: int) -> _Track:
        t, n, v = cls(), len(WINDOWS), np.asarray(values, dtype=np.float64).tolist()
        t.last, t.min_after, t.wf, t.wp, t.recent = v[0], v[1], v[2:2 + n], v[2 + n:2 + 2 * n], v[2 + 2 * n:]
        t.n_open, t.n_closed = n_open, n_closed
        return t


@dataclass
class _Gap:
    at_event: int
    segments: list[int]
    before: float
    min_after: float = NAN
    n_after: int = 0
    recovery: int | None = None

    def update(self, value: float, eps: float) -> None:
        if self.recovery is not None or math.isnan(value):
            return
        self.n_after += 1
        self.min_after = value if math.isnan(self.min_after) else min(self.min_after, value)
        if value >= self.before - eps:
            self.recovery = self.n_after

    def public(self) -> DriftGap:
        return DriftGap(self.at_event, self.before, self.before - self.min_after, self.recovery, self.n_after)


class _Segment:
    """A segment's holdout: a reservoir of at most ``cap`` items, frozen once the segment ends."""

    def __init__(self, sid: int, start: int, end: int | None = None, seen: int = 0) -> None:
        self.id, self.start, self.end, self.seen = sid, start, end, seen
        self.taps: np.ndarray | None = None
        self.codes = np.zeros(0, np.int32)   # label ids into the evaluator's class table
        # Per item, its event-id tag and source tag (memory.tags; 0: unknown), what a forget request matches.
        self.tags = np.zeros((0, 2), np.int64)

    def add(self, taps: np.ndarray, codes: np.ndarray, cap: int, rng: np.random.Generator,
            tags: np.ndarray) -> None:
        if self.taps is not None and taps.shape[1:] != self.taps.shape[1:]:
            raise ValueError(f"holdout taps have shape {taps.shape[1:]}, expected {self.taps.shape[1:]}")
        free = min(max(0, cap - len(self.codes)), len(codes))
        self.taps = taps[:free].copy() if self.taps is None else np.concatenate([self.taps, taps[:free]])
        self.codes = np.concatenate([self.codes, codes[:free]]).astype(np.int32)
        self.tags = np.concatenate([self.tags, tags[:free]])
        self.seen += free
        rest = len(codes) - free
        if rest:
            # Algorithm R: the n-th item seen replaces a random slot with probability cap / n.
            slots = rng.integers(0, self.seen + 1 + np.arange(rest))
            for k in np.flatnonzero(slots < cap):
                self.taps[slots[k]], self.codes[slots[k]] = taps[free + k], codes[free + k]
                self.tags[slots[k]] = tags[free + k]
            self.seen += rest

    def remove(self, hit: np.ndarray) -> int:
        """Drop the items ``hit`` marks (a forget request); returns how many went."""
        if self.taps is not None and hit.any():
            self.taps, self.codes, self.tags = self.taps[~hit], self.codes[~hit], self.tags[~hit]
        return int(hit.sum())


class ContinualEvaluator:
    """Per-segment holdouts and the stability-gap metrics of docs/algorithms.md section 4."""

    def __init__(self, *, holdout_fraction: float = 0.05, per_segment_cap: int = 1000, eval_every: int = 500,
                 max_segments: int = 100, class_absent_window: int = 2000, recovery_eps: float = 0.02,
                 max_gaps: int = 10, seed: int = 0) -> None:
        if not 0.0 <= holdout_fraction < 1.0:
            raise ValueError("holdout_fraction must be in [0, 1)")
        if min(per_segment_cap, eval_every, max_segments, class_absent_window, max_gaps) <= 0:
            raise ValueError("caps, windows and eval_every must be positive")
        self.holdout_fraction, self.per_segment_cap, self.eval_every = holdout_fraction, per_segment_cap, eval_every
        self.max_segments, self.class_absent_window = max_segments, class_absent_window
        self.recovery_eps, self.max_gaps, self.seed = recovery_eps, max_gaps, seed
        # A keyed hash, not hash(): the same events stay held out across processes and restarts.
        self._key = f"lifelong-holdout-{seed}".encode()
        self._rng = np.random.default_rng(seed)
        self._segments = [_Segment(0, 0)]
        self._next_id = 1
        self._classes: list[str] = []
        self._codes: dict[str, int] = {}
        self._last_seen: dict[str, int] = {}
        self._tracks: dict[str, dict[int, _Track]] = {}
        self._gaps: dict[str, list[_Gap]] = {}
        self._last_eval_at = 0
        self.last_accuracies: dict[str, dict[int, float]] = {}  # per model, segment id -> accuracy (for logs)

    @property
    def n_segments(self) -> int:
        return len(self._segments)

    def segment_starts(self) -> dict[int, int]:
        """Segment id -> the learned-event count at which it opened."""
        return {s.id: s.start for s in self._segments}

    def holdout(self, index: int = -1) -> tuple[np.ndarray | None, list[str]]:
        """A copy of one kept segment's holdout (-1: the current one)."""
        seg = self._segments[index]
        return (None if seg.taps is None else seg.taps.copy()), [self._classes[c] for c in seg.codes]

    def route(self, event_id: str) -> bool:
        """True if this labelled event goes to the holdout instead of being learned."""
        if self.holdout_fraction <= 0.0:
            return False
        digest = hashlib.blake2b(event_id.encode(), digest_size=8, key=self._key).digest()
        return int.from_bytes(digest, "big") < self.holdout_fraction * 2.0 ** 64

    def add_holdout(self, taps: np.ndarray, labels: list[str], tags: np.ndarray | None = None,
                    sources: np.ndarray | None = None) -> None:
        """Hold these out; ``tags`` and ``sources`` (``memory.tags`` of their ids and sources) let :meth:`forget`
        find them later."""
        taps = np.asarray(taps)
        if len(taps) != len(labels):
            raise ValueError(f"{len(taps)} taps but {len(labels)} labels")
        codes = np.array([self._code(label) for label in labels], dtype=np.int32)
        zeros = np.zeros(len(labels), np.int64)
        pairs = np.stack([zeros if tags is None else tags, zeros if sources is None else sources], 1).astype(np.int64)
        self._segments[-1].add(taps, codes, self.per_segment_cap, self._rng, pairs)

    def forget(self, tags: np.ndarray, sources: np.ndarray) -> int:
        """Remove held-out items of these event-id tags or source tags (0 never matches); returns how many."""
        tags, sources = np.asarray(tags, np.int64), np.asarray(sources, np.int64)
        sources = sources[sources != 0]
        return sum(seg.remove(np.isin(seg.tags[:, 0], tags) | np.isin(seg.tags[:, 1], sources))
                   for seg in self._segments)

    def observe_labels(self, labels: Iterable[str], events_learned: int) -> None:
        """Note the labels of a learned batch ending at ``events_learned`` (the class-based variant)."""
        for label in labels:
            self._last_seen[label] = events_learned

    def open_segment(self, at_event: int) -> None:
        """Close the current segment at a drift peak and start a new one."""
        self._record_gaps(at_event)
        cur = self._segments[-1]
        if cur.seen == 0:
            cur.start = at_event  # nothing held out since the last peak: restart it, keep no empty segment
            return
        cur.end = at_event
        self._segments.append(_Segment(self._next_id, at_event))
        self._next_id += 1
        if len(self._segments) > self.max_segments:
            self._drop(self._segments.pop(0))

    def due(self, events_learned: int) -> bool:
        return events_learned - self._last_eval_at >= self.eval_every

    def evaluate(self, models: dict[str, Predict], events_learned: int) -> dict[str, ModelScores]:
        self._last_eval_at = events_learned
        state = self._class_states(events_learned)
        return {name: self._evaluate_one(name, predict, state) for name, predict in models.items()}

    def _code(self, label: str) -> int:
        if label not in self._codes:
            self._codes[label] = len(self._classes)
            self._classes.append(label)
        return self._codes[label]

    def _class_states(self, events_learned: int) -> np.ndarray:
        def state(label: str) -> int:
            if label not in self._last_seen:
                return 0
            return _PAST if events_learned - self._last_seen[label] >= self.class_absent_window else _PRESENT
        return np.array([state(c) for c in self._classes], dtype=np.int8)

    def _record_gaps(self, at_event: int) -> None:
        for name, tracks in self._tracks.items():
            ids = [s.id for s in self._segments if s.id in tracks and not math.isnan(tracks[s.id].last)]
            if ids:
                gaps = self._gaps.setdefault(name, [])
                gaps.append(_Gap(at_event, ids, nanmean(tracks[i].last for i in ids)))
                del gaps[:-self.max_gaps]

    def _drop(self, seg: _Segment) -> None:
        for tracks in self._tracks.values():
            tracks.pop(seg.id, None)
        for gaps in self._gaps.values():
            for gap in gaps:
                gap.segments = [i for i in gap.segments if i != seg.id]

    def _hits(self, predict: Predict, seg: _Segment) -> np.ndarray:
        if seg.taps is None or not len(seg.codes):
            return np.zeros(0, dtype=bool)
        preds = np.asarray(list(predict(seg.taps)), dtype=object)
        if len(preds) != len(seg.codes):
            raise ValueError(f"predict returned {len(preds)} labels for {len(seg.codes)} items")
        return (preds == np.asarray(self._classes, dtype=object)[seg.codes]).astype(bool)

    def _evaluate_one(self, name: str, predict: Predict, state: np.ndarray) -> ModelScores:
        tracks = self._tracks.setdefault(name, {})
        accs, hits = {}, []
        for seg in self._segments:
            hit = self._hits(predict, seg)
            track = tracks.setdefault(seg.id, _Track())
            track.last = accs[seg.id] = _rate(hit)
            if len(hit):
                track.add(track.last, closed=seg.end is not None)
            hits.append(hit)
        self.last_accuracies[name] = dict(accs)
        for gap in self._gaps.get(name, []):
            gap.update(nanmean(accs[i] for i in gap.segments if i in accs), self.recovery_eps)
        codes = np.concatenate([s.codes for s in self._segments])
        return self._scores(name, accs, np.concatenate(hits), state[codes])

    def _scores(self, name: str, accs: dict[int, float], hits: np.ndarray, item_state: np.ndarray) -> ModelScores:
        tracks = self._tracks[name]
        cur, past = self._segments[-1], [tracks[s.id] for s in self._segments[:-1]]
        current, k = accs[cur.id], len(self._segments)
        low = min_acc(t.min_after for t in past)
        wf = [f(t.wf[i] for t in past) for i in range(len(WINDOWS)) for f in (nanmean, nanmax)]
        return ModelScores(
            current, nanmean(accs.values()), low, wc_acc(current, low, k),
            *wf, *tracks[cur.id].wp, _rate(hits[item_state == _PAST]), _rate(hits[item_state == _PRESENT]),
            tuple(g.public() for g in self._gaps.get(name, [])))

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays (safetensors-friendly: numbers only) and JSON-able meta (no NaN, no pickle)."""
        arrays: dict[str, np.ndarray] = {}
        for s in self._segments:
            if s.taps is not None and len(s.codes):
                arrays[f"segment.{s.id}.taps"], arrays[f"segment.{s.id}.labels"] = s.taps.copy(), s.codes.copy()
                arrays[f"segment.{s.id}.tags"] = s.tags.copy()
        models = list(self._tracks)
        for m, name in enumerate(models):
            arrays |= {f"track.{m}.{sid}": t.to_array() for sid, t in self._tracks[name].items()}
            if self._gaps.get(name):
                arrays[f"gaps.{m}"] = np.array([[g.before, g.min_after] for g in self._gaps[name]])
        meta = {
            "segments": [[s.id, s.start, s.end, s.seen] for s in self._segments], "next_id": self._next_id,
            "rng": self._rng.bit_generator.state, "last_eval_at": self._last_eval_at,
            "classes": list(self._classes), "last_seen": dict(self._last_seen), "models": models,
            "tracks": [[[sid, t.n_open, t.n_closed] for sid, t in self._tracks[n].items()] for n in models],
            "gaps": [[[g.at_event, g.segments, g.n_after, g.recovery] for g in self._gaps.get(n, [])]
                     for n in models],
        }
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self._segments = []
        for sid, start, end, seen in meta["segments"]:
            seg = _Segment(sid, start, end, seen)
            if f"segment.{sid}.taps" in arrays:
                seg.taps = np.array(arrays[f"segment.{sid}.taps"])
                seg.codes = np.array(arrays[f"segment.{sid}.labels"], dtype=np.int32)
                # Saved before forgetting: tags unknown (0), so forget requests cannot find these items.
                seg.tags = np.array(arrays.get(f"segment.{sid}.tags", np.zeros((len(seg.codes), 2), np.int64)))
            self._segments.append(seg)
        self._next_id, self._last_eval_at = int(meta["next_id"]), int(meta["last_eval_at"])
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = meta["rng"]
        self._classes = list(meta["classes"])
        self._codes = {c: i for i, c in enumerate(self._classes)}
        self._last_seen = {c: int(v) for c, v in meta["last_seen"].items()}
        self._tracks, self._gaps = {}, {}
        for m, name in enumerate(meta["models"]):
            self._tracks[name] = {sid: _Track.from_array(arrays[f"track.{m}.{sid}"], n_open, n_closed)
                                  for sid, n_open, n_closed in meta["tracks"][m]}
            floats = arrays.get(f"gaps.{m}", np.zeros((0, 2)))
            self._gaps[name] = [_Gap(at, list(segs), float(f[0]), float(f[1]), n_after, recovery)
                                for (at, segs, n_after, recovery), f in zip(meta["gaps"][m], floats)]
