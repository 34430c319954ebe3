"""``lifelong bench --scaleout``, learning part: learner replicas that merge into one model.

A stream (CLINC150 by default) is split over N replicas as a topic's partitions would split it:

* ``hash``: by a hash of the event id (every replica sees every domain, a share of it);
* ``domain``: by segment (partitions by domain: replica ``s % N`` learns all of segment ``s``).

Events go in stream order to their replica; once a replica has learned ``merge_every`` events
since its last contribution, every replica that learned anything contributes it, one reduce makes
the next base and every replica rebases onto it (an idle one fast-forwards; ``learner/merging.py``,
``learner/replica.py``): the rounds the service runs through its merge channel, here in one
process on the encoded taps, so the figures are the algorithm's. The served model is replica 0's
snapshot (the reducer's), scored on the test events of the segments seen so far at every true
boundary and every 1,000 events.

Each configuration runs twice: merging, and with no merges at all (every replica alone on its
shard: the *lone* replicas the merged model must beat). The single learner is the same loop with
one replica.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..learner.merging import MergeBase, empty_parts, reduce
from ..learner.registry import LearnerOptions, build
from ..learner.replica import Replica
from .encode import Encoded, encode_stream
from .quality import Evaluation, compute_metrics
from .scaleout_keys import run_per_key
from .streams import BenchStream, builtin

BATCH = 64
EVAL_EVERY = 1000


@dataclass(frozen=True)
class LearningOptions:
    stream: str = "clinc150"
    learners: tuple[int, ...] = (2, 4)
    splits: tuple[str, ...] = ("hash", "domain")
    merge_every: int = 500  # events per replica between merges
    limit: int | None = None  # at most this many training events (a quick run)
    seed: int = 0


def owners(stream: BenchStream, n: int, split: str) -> np.ndarray:
    """The replica of each training event."""
    if split == "hash":
        return np.array([zlib.crc32(i.encode()) % n for i in stream.train.ids])
    if split == "domain":
        return stream.train.segments % n
    raise ValueError(f"unknown split {split!r}; known: hash, domain")


class _Sim:
    """N replicas over one stream's taps, merging or not."""

    def __init__(self, stream: BenchStream, enc: Encoded, n: int, split: str, merge: bool, opts: LearningOptions):
        self.stream, self.enc, self.merge, self.opts = stream, enc, merge, opts
        self.owner = owners(stream, n, split)
        # As the daemon builds them: the replay budget resident from the start, so filling it costs no
        # page faults (they would land on the merges, which add the others' replay samples).
        options = LearnerOptions(seed=opts.seed, continual={"resident_memory": True})
        self.replicas = [Replica(build("lifelong", enc.encoder, options), f"replica-{i}", seed=opts.seed + i)
                         for i in range(n)]
        self.base = MergeBase(0, empty_parts(enc.encoder.dim, enc.encoder.dim))
        self.learn_s = self.merge_s = 0.0

    def merge_round(self) -> None:
        t0 = time.perf_counter()
        # A replica that learned nothing since its last contribution has nothing to send; it fast-forwards.
        contributions = [c for c in (r.contribute() for r in self.replicas if r.events_since) if c is not None]
        self.base = reduce(self.base, contributions)
        for r in self.replicas:
            r.rebase(self.base)
        self.merge_s += time.perf_counter() - t0

    def accuracy(self, replica: int, segments: list[int]) -> tuple[float, ...]:
        te = self.stream.test
        mask = np.isin(te.segments, segments)
        hit = np.zeros(len(te.labels), bool)
        if mask.any():
            predicted = self.replicas[replica].learner.snapshot().predict_taps(self.enc.test[mask]).labels
            hit[mask] = np.array(predicted, object) == np.array(te.labels, object)[mask]
        return tuple(float(hit[te.segments == s].mean()) if s in segments else float("nan")
                     for s in range(self.stream.num_segments))

    def run(self) -> dict[str, Any]:
        tr, n = self.stream.train, len(self.replicas)
        histories: list[list[Evaluation]] = [[] for _ in range(n)]
        seen: list[int] = []
        step, next_eval = BATCH * n, EVAL_EVERY
        for lo in range(0, len(tr), step):
            hi = min(lo + step, len(tr))
            for s in np.unique(tr.segments[lo:hi]).tolist():
                seen += [s] if s not in seen else []
            t0 = time.perf_counter()
            for i, r in enumerate(self.replicas):
                mine = lo + np.flatnonzero(self.owner[lo:hi] == i)
                for at in range(0, len(mine), BATCH):  # micro-batches of the daemon's size, whatever the split
                    idx = mine[at:at + BATCH]
                    labels = [tr.labels[j] for j in idx]
                    r.learner.learn_taps(self.enc.train[idx], labels)
                    r.observe(self.enc.train[idx], labels)
            self.learn_s += time.perf_counter() - t0
            last = hi == len(tr)
            if self.merge and (last or max(r.events_since for r in self.replicas) >= self.opts.merge_every):
                self.merge_round()
            boundary = last or tr.segments[hi] != tr.segments[hi - 1]
            if hi >= next_eval or boundary:
                next_eval += EVAL_EVERY * (hi >= next_eval)
                cur = int(tr.segments[hi - 1])
                for i in range(n):
                    histories[i].append(Evaluation(hi, cur, self.accuracy(i, sorted(seen)), periodic=True,
                                                   boundary=boundary, final=last))
        sizes = np.bincount(self.stream.test.segments, minlength=self.stream.num_segments).tolist()
        metrics = [compute_metrics(h, sizes) for h in histories]
        return {"replicas": [{"final_accuracy": m["final_accuracy"], "min_acc": m["min_acc"]} for m in metrics],
                "learn_seconds": self.learn_s, "merge_seconds": self.merge_s, "merges": self.base.round}


def _means(replica: Replica, classes: tuple[str, ...]) -> np.ndarray:
    ids = [replica.learner.classes.index(c) for c in classes]
    return replica.learner.protos.means()[ids]


def run_learning(opts: LearningOptions, say: Any = print) -> dict[str, Any]:
    """The ``learning`` part of scaleout.json."""
    stream = builtin(opts.stream, opts.seed)
    if opts.limit:
        stream = stream.limited(opts.limit, opts.seed)
    enc = encode_stream(stream, progress=False)
    started = time.perf_counter()
    single = _Sim(stream, enc, 1, "hash", False, opts)
    one = single.run()
    say(f"single learner: final {one['replicas'][0]['final_accuracy']:.4f}")
    reference = single.replicas[0]
    merged, diff = [], 0.0
    for n in opts.learners:
        for split in opts.splits:
            sim = _Sim(stream, enc, n, split, True, opts)
            out = sim.run()
            lone = _Sim(stream, enc, n, split, False, opts).run()
            diff = max(diff, max(float(np.abs(_means(r, reference.learner.classes)
                                              - reference.learner.protos.means()).max()) for r in sim.replicas))
            served = out["replicas"][0]
            row = {"learners": n, "split": split, "final_accuracy": served["final_accuracy"],
                   "min_acc": served["min_acc"], "merges": out["merges"],
                   "merge_fraction": out["merge_seconds"] / max(out["learn_seconds"], 1e-9),
                   "merge_seconds": out["merge_seconds"], "learn_seconds": out["learn_seconds"],
                   "lone": lone["replicas"]}
            merged.append(row)
            say(f"{n} learners, {split} split: final {row['final_accuracy']:.4f}, min-ACC {row['min_acc']:.4f}, "
                f"best lone {max(x['final_accuracy'] for x in lone['replicas']):.4f}, "
                f"merging {100 * row['merge_fraction']:.1f}% of learning")
    per_key = run_per_key(stream, enc, seed=opts.seed, say=say)
    return {"stream": stream.name, "events": len(stream.train), "merge_every_events": opts.merge_every,
            "single": one["replicas"][0] | {"learn_seconds": one["learn_seconds"]}, "merged": merged,
            "prototype_max_abs_diff": diff, "per_key": per_key, "labels_joined_fraction": None,
            "seconds": round(time.perf_counter() - started, 1)}
