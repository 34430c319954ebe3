"""``lifelong bench --poison`` on a small synthetic stream: the scenarios, the bound's effect, the files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lifelong.bench.poison import PoisonOptions, clean_events, flip_events, flood_events, render_text, run_poison
from lifelong.bench.streams import BenchStream, Split

CLASSES, SEGMENTS, DIM = 8, 4, 16


def blobs(train_per_class: int = 150, test_per_class: int = 40, seed: int = 0) -> BenchStream:
    """Well separated Gaussian classes, two new ones per segment (class-incremental)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, DIM)) * 3

    def split(per: int, shuffle: bool) -> Split:
        y = np.repeat(np.arange(CLASSES), per)
        order = np.concatenate([rng.permutation(np.flatnonzero(y // 2 == s)) if shuffle else np.flatnonzero(y // 2 == s)
                                for s in range(SEGMENTS)])
        y = y[order]
        x = (centres[y] + rng.normal(size=(len(y), DIM))).astype(np.float32)
        return Split(x, [f"c{c}" for c in y], y // 2, [f"e{i}" for i in range(len(y))])

    return BenchStream("blobs", "features", [f"{2 * s}-{2 * s + 1}" for s in range(SEGMENTS)],
                       split(train_per_class, True), split(test_per_class, False), "synthetic blobs")


def test_the_scenarios_flip_half_of_s0_and_flood_at_ten_times_the_rate() -> None:
    stream = blobs()
    clean = clean_events(stream, seed=0)
    share = (clean.sources == "s0").mean()
    assert 0.15 < share < 0.25
    flip = flip_events(clean, seed=0)
    assert 0.4 < flip.flipped.sum() / (clean.sources == "s0").sum() < 0.6
    assert not flip.flipped[clean.sources != "s0"].any()
    changed = np.array(flip.labels, object) != np.array(clean.labels, object)
    assert (changed == flip.flipped).all()
    flood, name = flood_events(stream, clean, seed=0)
    last = np.array(flood.labels[int(np.flatnonzero(stream.train.segments == SEGMENTS - 1)[0]):], object)
    assert (last == name).sum() == 10 * (np.array(clean.labels, object) == name).sum()


def test_the_bound_takes_back_what_flipped_labels_cost(tmp_path: Path, one_thread: None) -> None:
    doc = run_poison(blobs(), PoisonOptions(out=tmp_path, seed=0, quick=True))
    runs = doc["runs"]
    assert runs["clean_bounded"]["suspects"] == 0 and runs["flip_unbounded"]["suspects"] == 0
    flip = runs["flip_bounded"]
    assert flip["suspects_flipped"] > 0.5 * flip["flipped"] and flip["suspects_flipped"] > 0.9 * flip["suspects"]
    # A stream this short is poisoned mostly before the source stands out (the first few hundred
    # events: their flipped items stay in memory); the bound takes back a good part, not all.
    assert doc["poisoned_accuracy_bounded"] >= doc["poisoned_accuracy_unbounded"] + 0.05
    assert doc["clean_accuracy_bounded"] == doc["clean_accuracy"] == 1.0
    assert abs(doc["flood_change"]) <= 0.02
    written = json.loads((tmp_path / "poison.json").read_text())
    assert written["clean_accuracy"] == doc["clean_accuracy"]
    assert "flipped" in (tmp_path / "poison.md").read_text() and "bounded" in render_text(doc)
