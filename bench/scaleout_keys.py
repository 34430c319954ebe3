"""``lifelong bench --scaleout``, per-key part: a model per key, against each key's model trained alone.

The stream's training events are split into ``keys`` tenants by a hash of the event id, so every
tenant learns the whole task from its share, all at once (interleaved, as tenants on one topic).
The keyed learners (``learner/keyed.py``) take the daemon's batches, grouped by key, with a key
store in a temporary folder; each key's *alone* twin is one learner fed the same groups. Two
memory budgets run: one holding every key, and one holding a single key, which saves and reads
back every other key at every batch (the worst thrash an undersized budget makes; on the first
``evicting_events`` events, since each eviction writes the key's replay memory). Every key's
served model is scored on the test events of the segments seen.
"""
from __future__ import annotations

import tempfile
import time
import zlib
from typing import Any

import numpy as np

from ..learner.keyed import KeyedLearners
from ..learner.registry import LearnerOptions, build
from ..memory.key_store import KeyStore
from .encode import Encoded
from .streams import BenchStream

BATCH = 64
KEY_MEMORY = 8 << 20  # scaleout.learning.per_key.key_memory_bytes' default


def _accuracy(model: Any, stream: BenchStream, enc: Encoded, upto: int) -> float:
    seen = np.unique(stream.train.segments[:upto])
    mask = np.isin(stream.test.segments, seen)
    predicted = model.predict_taps(enc.test[mask]).labels
    return float(np.mean(np.array(predicted, object) == np.array(stream.test.labels, object)[mask]))


def _run(stream: BenchStream, enc: Encoded, keys: int, events: int, budget: int, seed: int) -> dict[str, Any]:
    tr = stream.train
    options = LearnerOptions(seed=seed, continual={"memory_budget_bytes": KEY_MEMORY})
    owner = np.array([zlib.crc32(i.encode()) % keys for i in tr.ids[:events]])
    alone = [build("lifelong", enc.encoder, options) for _ in range(keys)]
    with tempfile.TemporaryDirectory(prefix="lifelong-keys-") as folder:
        keyed = KeyedLearners(lambda: build("lifelong", enc.encoder, options), KeyStore(folder), max_keys=keys,
                              max_resident_bytes=budget)
        keyed_s = alone_s = 0.0
        for lo in range(0, events, BATCH):
            for k in np.unique(owner[lo:lo + BATCH]).tolist():
                idx = lo + np.flatnonzero(owner[lo:lo + BATCH] == k)
                labels = [tr.labels[j] for j in idx]
                t0 = time.perf_counter()
                keyed.use(f"tenant-{k}")
                keyed.learn_taps(enc.train[idx], labels)
                t1 = time.perf_counter()
                alone[k].learn_taps(enc.train[idx], labels)
                keyed_s, alone_s = keyed_s + t1 - t0, alone_s + time.perf_counter() - t1
            t0 = time.perf_counter()
            keyed.evict_over_budget()
            keyed_s += time.perf_counter() - t0
        served = keyed.snapshot()
        got = [_accuracy(served.for_key(f"tenant-{k}"), stream, enc, events) for k in range(keys)]
        want = [_accuracy(a.snapshot(), stream, enc, events) for a in alone]
        return {"events": events, "max_resident_bytes": budget, "evictions": keyed.evictions,
                "final_accuracy_mean": float(np.mean(got)), "alone_accuracy_mean": float(np.mean(want)),
                "max_key_gap": float(np.max(np.abs(np.array(got) - np.array(want)))),
                "keyed_seconds": round(keyed_s, 2), "alone_seconds": round(alone_s, 2)}


def run_per_key(stream: BenchStream, enc: Encoded, keys: int = 4, evicting_events: int = 3000, seed: int = 0,
                say: Any = print) -> dict[str, Any]:
    """The ``per_key`` entry of scaleout.json's ``learning``."""
    runs = []
    for events, budget in ((len(stream.train), 1 << 40), (min(evicting_events, len(stream.train)), 0)):
        run = _run(stream, enc, keys, events, budget, seed)
        runs.append(run)
        say(f"per key ({keys} keys, {events} events, {run['evictions']} evictions): mean final "
            f"{run['final_accuracy_mean']:.4f}, alone {run['alone_accuracy_mean']:.4f}, worst key gap "
            f"{run['max_key_gap']:.4f}")
    return {"keys": keys, "final_accuracy_mean": runs[0]["final_accuracy_mean"],
            "alone_accuracy_mean": runs[0]["alone_accuracy_mean"],
            "accuracy_gap": max(abs(r["final_accuracy_mean"] - r["alone_accuracy_mean"]) for r in runs),
            "runs": runs}
