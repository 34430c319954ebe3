"""``lifelong bench --poison``: one source poisons or floods the stream; the learner with and without
the source influence bound (``learner.influence``).

The stream's training events are tagged with synthetic sources ``s0`` .. ``s4`` sending 20%, 35%,
25%, 12% and 8% of them (seeded); ``s0`` is the attacker. The daemon's learner (forgetting on, so
items keep their sources) learns them in stream order, in the daemon's micro-batches, and the
served EMA snapshot is scored on the test split at the end. Runs, same process and seed:

* *clean*: the stream as it is, without and with the bound (``clean_accuracy``, ``clean_accuracy_bounded``);
* *flip* (scenario A): half of ``s0``'s labels flipped to another class the stream has shown so far
  (``poisoned_accuracy_unbounded`` / ``_bounded``);
* *flood* (scenario B): during the last segment ``s0`` also sends copies of that segment's rarest
  class at 10x the class's rate (``flood_accuracy_unbounded`` / ``_bounded``; ``flood_change`` is the
  bounded flood run against the bounded clean run).

The bounded runs use :class:`~lifelong.learner.influence.InfluenceConfig`'s defaults unless a field
is set in ``BOUNDED``; the unbounded runs switch every bound off. Each run also counts the events the
bound down-weighted (``suspects``) and, of them, the flipped ones (``suspects_flipped``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..learner.influence import SourceInfluence, Weighing
from ..learner.registry import LearnerOptions, build
from ..memory.tags import source_tags
from .encode import Encoded, encode_stream
from .quality import daemon_image_encoder
from .run_options import RunOptions
from .streams import BenchStream

BATCH = 64
SHARES = (0.20, 0.35, 0.25, 0.12, 0.08)  # s0 (the attacker) .. s4
FLIPPED = 0.5  # of s0's labels, in scenario A
FLOOD_RATE = 10  # scenario B: the flooded class arrives at this multiple of its own rate
UNBOUNDED = {"source_memory_share": 1.0, "source_step_share": 1.0, "suspect_weight": 1.0}
BOUNDED: dict[str, Any] = {}  # InfluenceConfig's defaults: what the daemon runs
QUICK_EVENTS = 3000


PoisonOptions = RunOptions


@dataclass(frozen=True)
class Events:
    """A run's training events: rows of the encoded train split (repeats for a flood), labels, sources."""

    rows: np.ndarray
    labels: list[str]
    sources: np.ndarray  # source names, object array
    flipped: np.ndarray  # bool: the label was flipped


def assign_sources(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([f"s{k}" for k in rng.choice(len(SHARES), size=n, p=SHARES)], object)


def clean_events(stream: BenchStream, seed: int) -> Events:
    n = len(stream.train)
    return Events(np.arange(n), list(stream.train.labels), assign_sources(n, seed), np.zeros(n, bool))


def flip_events(clean: Events, seed: int) -> Events:
    """Half of ``s0``'s labels become another class among those the stream has shown before the event."""
    rng = np.random.default_rng(seed + 1)
    labels = list(clean.labels)
    first: dict[str, int] = {}
    for i, lab in enumerate(labels):
        first.setdefault(lab, i)
    shown = sorted(first, key=first.get)  # type: ignore[arg-type]  # classes by first appearance
    starts = np.array([first[c] for c in shown])
    flipped = np.zeros(len(labels), bool)
    for i in np.flatnonzero((clean.sources == "s0") & (rng.random(len(labels)) < FLIPPED)):
        known = shown[: int(np.searchsorted(starts, i, side="right"))]
        others = [c for c in known if c != labels[i]]
        if others:
            labels[i], flipped[i] = others[int(rng.integers(len(others)))], True
    return Events(clean.rows, labels, clean.sources, flipped)


def flood_events(stream: BenchStream, clean: Events, seed: int) -> tuple[Events, str]:
    """``s0`` sends copies of the last segment's rarest class, spread over that segment, at 10x its rate."""
    rng = np.random.default_rng(seed + 2)
    segs = stream.train.segments
    last = np.flatnonzero(segs == segs.max())
    window = [clean.labels[i] for i in last]
    names, counts = np.unique(window, return_counts=True)
    flooded = str(names[int(np.argmin(counts))])
    members = last[np.array(window, object) == flooded]
    copies = rng.choice(members, size=(FLOOD_RATE - 1) * len(members))
    at = np.sort(rng.integers(int(last[0]), len(clean.rows) + 1, size=len(copies)))
    rows = np.insert(clean.rows, at, copies)
    labels = np.insert(np.array(clean.labels, object), at, flooded).tolist()
    sources = np.insert(clean.sources, at, "s0")
    return Events(rows, labels, sources, np.zeros(len(rows), bool)), flooded


class _Counting(SourceInfluence):
    """The learner's bound, counting the flipped events among those it down-weighted (bench only)."""

    def __init__(self, inner: SourceInfluence, flipped: np.ndarray) -> None:
        super().__init__(inner.config)
        self.flipped, self.at, self.caught, self.suspects = flipped, 0, 0, 0

    def weigh(self, y: np.ndarray, sources: np.ndarray, before: np.ndarray | None) -> Weighing:
        w = super().weigh(y, sources, before)
        down = w.weights < 1
        self.caught += int((down & self.flipped[self.at:self.at + len(y)]).sum())
        self.suspects += w.suspects
        self.at += len(y)
        return w


def run_once(enc: Encoded, test_labels: list[str], events: Events, influence: dict[str, Any],
             seed: int, device: str) -> dict[str, Any]:
    """Learn ``events`` with one fresh learner; the served snapshot's final accuracy on the test split."""
    lr = build("lifelong", daemon_image_encoder(enc.encoder),
               LearnerOptions(seed=seed, device=device, continual={"forgetting": True, "influence": influence}))
    lr.influence = counting = _Counting(lr.influence, events.flipped)
    t0 = time.perf_counter()
    tags = source_tags(events.sources.tolist())
    correct = 0
    for lo in range(0, len(events.rows), BATCH):
        b = slice(lo, lo + BATCH)
        correct += int(lr.learn_taps(enc.train[events.rows[b]], events.labels[b], sources=tags[b]).correct.sum())
    seconds = time.perf_counter() - t0
    predicted = np.array(lr.snapshot().predict_taps(enc.test).labels, object)
    # prequential: the live model's prediction of each event before learning it, against its label as sent
    return {"accuracy": float((predicted == np.array(test_labels, object)).mean()), "seconds": seconds,
            "prequential": correct / max(1, len(events.rows)),
            "events": len(events.rows), "suspects": counting.suspects, "suspects_flipped": counting.caught,
            "flipped": int(events.flipped.sum())}


def run_poison(stream: BenchStream, opts: PoisonOptions) -> dict[str, Any]:
    if opts.quick and len(stream.train) > QUICK_EVENTS:
        stream = stream.limited(QUICK_EVENTS, opts.seed)
    t0 = time.perf_counter()
    enc = encode_stream(stream, device=opts.device, progress=False)
    clean = clean_events(stream, opts.seed)
    flooded, flood_class = flood_events(stream, clean, opts.seed)
    scenarios = {"clean": clean, "flip": flip_events(clean, opts.seed), "flood": flooded}
    runs = {f"{name}_{bound}": run_once(enc, stream.test.labels, events, config, opts.seed, opts.device)
            for name, events in scenarios.items()
            for bound, config in (("unbounded", UNBOUNDED), ("bounded", BOUNDED))}
    doc = summary(runs) | {"stream": stream.name, "train_events": len(stream.train), "test_events": len(stream.test),
                           "seed": opts.seed, "shares": list(SHARES), "flipped_share": FLIPPED,
                           "flood_rate": FLOOD_RATE, "flood_class": flood_class, "bounded_config": bounded_config(),
                           "runs": runs, "total_seconds": time.perf_counter() - t0}
    write(opts.out, doc)
    return doc


def bounded_config() -> dict[str, Any]:
    from dataclasses import asdict

    from ..learner.influence import InfluenceConfig

    return asdict(InfluenceConfig(**BOUNDED))


def summary(runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    acc = {name: run["accuracy"] for name, run in runs.items()}
    return {"clean_accuracy": acc["clean_unbounded"], "clean_accuracy_bounded": acc["clean_bounded"],
            "poisoned_accuracy_unbounded": acc["flip_unbounded"], "poisoned_accuracy_bounded": acc["flip_bounded"],
            "flood_accuracy_unbounded": acc["flood_unbounded"], "flood_accuracy_bounded": acc["flood_bounded"],
            "flood_change": acc["flood_bounded"] - acc["clean_bounded"],
            "flood_change_unbounded": acc["flood_unbounded"] - acc["clean_unbounded"]}


def write(out: Path, doc: dict[str, Any]) -> None:
    from .poison_report import render_markdown

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "poison.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "poison.md").write_text(render_markdown(doc))


def render_text(doc: dict[str, Any]) -> str:
    from .poison_report import render_text as text

    return text(doc)
