"""Merging learner replicas into one model: what a replica contributes, and how contributions reduce.

Replicas of the continual learner learn disjoint shards of one stream (partitions of a topic).
Every so often each sends a :class:`Contribution`, what it learned since the last base it took
(its *reference*), and one reducer folds them into a new :class:`MergeBase` (iterative parameter
mixing, the federated-averaging step):

* class prototypes exactly: sums and counts of the events, added (``sum_i delta_i``): the merged
  prototypes equal one learner's over the same events;
* the adapter by its *effective* weight (``frozen + s B A``), a weighted average of the replicas'
  changes by their events; a replica folds the difference into its frozen part, so ``A`` and ``B``
  are never averaged apart (the average of ``B A`` is not the product of the averages);
* head rows aligned by class *name* (each replica numbers classes in its own order), a row's
  change weighted by the replica's events of that class (by events overall where no replica saw
  the class since the base); a class new to the base takes the count-weighted mean of its rows;
* the EMA copy like the live weights;
* replay: each contribution carries a bounded sample of the taps it learned; every replica adds
  the others' (class-balanced eviction keeps the union within its budget).

Deltas, not states, travel: a replica whose contribution missed a round sends it to the next one,
relative to the base it holds, and nothing is counted twice. Drift windows, hard buffers,
optimiser moments, holdouts and pending labels stay with each replica.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class MergeRefused(ValueError):
    """A learner (or encoder) whose replicas cannot be merged into one model."""


@dataclass
class Parts:
    """The mergeable part of a model, rows by class name (``classes``)."""

    classes: list[str]
    weight: np.ndarray       # (d, d) effective adapter weight (live)
    head: np.ndarray         # (C, e) live head rows
    ema_weight: np.ndarray   # (d, d)
    ema_head: np.ndarray     # (C, e)
    ema_mass: np.ndarray     # (C,)
    proto_sums: np.ndarray   # (C, d) float64
    proto_counts: np.ndarray  # (C,) int64

    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ARRAYS}

    @classmethod
    def of(cls, classes: list[str], arrays: dict[str, np.ndarray]) -> "Parts":
        return cls(list(classes), *(np.asarray(arrays[k]) for k in ARRAYS))

    def copy(self) -> "Parts":
        return Parts.of(self.classes, {k: v.copy() for k, v in self.arrays().items()})


ARRAYS = ("weight", "head", "ema_weight", "ema_head", "ema_mass", "proto_sums", "proto_counts")


def empty_parts(dim: int, embedding_dim: int) -> Parts:
    """A model that learned nothing: the identity adapter, no classes."""
    eye = np.eye(dim, dtype=np.float32)
    return Parts([], eye, np.zeros((0, embedding_dim), np.float32), eye.copy(),
                 np.zeros((0, embedding_dim), np.float32), np.zeros(0, np.float32), np.zeros((0, dim)),
                 np.zeros(0, np.int64))


@dataclass
class Contribution:
    """What one replica learned since its reference base (``base``), as differences where the base
    knew the class (``known``) and as full rows where it did not."""

    replica: str
    seq: int            # the replica's own count of contributions (the reducer merges each once)
    base: int           # the base round it is relative to
    events: int         # events learned since that base
    delta: Parts        # weight/ema_weight: differences; rows: differences where known, else values
    known: np.ndarray   # (C,) bool: the class was in the reference base
    replay_taps: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float16))
    replay_labels: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.replica}#{self.seq}"


@dataclass
class MergeBase:
    """The merged model after ``round`` rounds; ``merged``: each replica's last contribution in it (its
    ``seq``), so a contribution sent again after a restart is never merged twice."""

    round: int
    parts: Parts
    merged: dict[str, int] = field(default_factory=dict)
    events: int = 0  # events all merged contributions learned
    replay: list[Contribution] = field(default_factory=list)  # this round's contributions (for their taps)
    sources: list[tuple[str, int]] = field(default_factory=list)  # this round's (replica, seq)

    def meta(self) -> dict[str, Any]:
        return {"round": self.round, "classes": self.parts.classes, "merged": self.merged, "events": self.events}

    def holds(self, c: Contribution) -> bool:
        """Whether ``c`` (or a later contribution of its replica) is merged in this base."""
        return self.merged.get(c.replica, -1) >= c.seq

    def fresh(self, contributions: list[Contribution]) -> list[Contribution]:
        """Those of ``contributions`` this base does not hold yet, one per replica (its oldest)."""
        out: dict[str, Contribution] = {}
        for c in sorted(contributions, key=lambda c: c.seq):
            if not self.holds(c) and c.replica not in out:
                out[c.replica] = c
        return list(out.values())


def _row_weights(contributions: list[Contribution], names: list[str]) -> dict[str, list[tuple[int, int, float]]]:
    """For each class: (contribution, row, weight) of the rows that change it, weights summing to 1."""
    total = sum(c.events for c in contributions)
    rows: dict[str, list[tuple[int, int, float]]] = {}
    for i, c in enumerate(contributions):
        for r, name in enumerate(c.delta.classes):
            rows.setdefault(name, []).append((i, r, float(c.delta.proto_counts[r])))
    out = {}
    for name in names:
        entries = rows.get(name, [])
        count = sum(w for _, _, w in entries)
        if count > 0:
            out[name] = [(i, r, w / count) for i, r, w in entries if w > 0]
        elif total > 0:  # nobody saw the class since the base: weight by events overall
            out[name] = [(i, r, contributions[i].events / total) for i, r, _ in entries]
        else:
            out[name] = [(i, r, 1.0 / len(entries)) for i, r, _ in entries] if entries else []
    return out


def reduce(base: MergeBase, contributions: list[Contribution]) -> MergeBase:
    """The next base: ``base`` with every contribution it does not hold yet folded in (module docstring)."""
    contributions = base.fresh(contributions)
    old = base.parts
    names = list(old.classes)
    for c in contributions:
        names += [n for n in c.delta.classes if n not in names]
    total = sum(c.events for c in contributions)
    weight, ema_weight = old.weight.astype(np.float64), old.ema_weight.astype(np.float64)
    for c in contributions:
        w = c.events / total if total else 0.0
        weight = weight + w * c.delta.weight
        ema_weight = ema_weight + w * c.delta.ema_weight
    n, e, d = len(names), old.head.shape[1], old.proto_sums.shape[1]
    head, ema_head, mass = np.zeros((n, e)), np.zeros((n, e)), np.zeros(n)
    sums, counts = np.zeros((n, d)), np.zeros(n, np.int64)
    k = len(old.classes)
    head[:k], ema_head[:k], mass[:k] = old.head, old.ema_head, old.ema_mass
    sums[:k], counts[:k] = old.proto_sums, old.proto_counts
    weights = _row_weights(contributions, names)
    indexes = [c.delta.index() for c in contributions]
    for row, name in enumerate(names):
        for i, r, w in weights[name]:
            c = contributions[i]
            # A row the replica's base did not know but this one does (a contribution that missed a
            # round, of a class another replica brought meanwhile) moves the row towards its value.
            stale = row < k and not c.known[r]
            head[row] += w * (c.delta.head[r] - (old.head[row] if stale else 0))
            ema_head[row] += w * (c.delta.ema_head[r] - (old.ema_head[row] if stale else 0))
            mass[row] += w * (c.delta.ema_mass[r] - (old.ema_mass[row] if stale else 0))
        for c, index in zip(contributions, indexes):
            if name in index:
                sums[row] += c.delta.proto_sums[index[name]]
                counts[row] += int(c.delta.proto_counts[index[name]])
    parts = Parts(names, weight.astype(np.float32), head.astype(np.float32), ema_weight.astype(np.float32),
                  ema_head.astype(np.float32), mass.astype(np.float32), sums, counts)
    merged = dict(base.merged) | {c.replica: c.seq for c in contributions}
    return MergeBase(base.round + 1, parts, merged, base.events + total, list(contributions),
                     [(c.replica, c.seq) for c in contributions])
