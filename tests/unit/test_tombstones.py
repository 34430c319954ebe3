"""Tombstones (``memory/tombstones.py``): what was forgotten, bounded, expiring, and saved with the checkpoint."""
from __future__ import annotations

import numpy as np

from lifelong.memory.tags import source_tags, tag_of, tags_of
from lifelong.memory.tombstones import Tombstones

from manual_clock import ManualClock


def test_tombstones_keep_at_most_max_ids_dropping_the_oldest() -> None:
    clock = ManualClock()
    t = Tombstones(retention_s=100.0, max_ids=3, clock=clock)
    assert t.add_ids(tags_of(["a", "b"])) == 0
    clock.now += 1
    assert t.add_ids(tags_of(["c", "d", "e"])) == 2
    hit = t.forgotten(tags_of(["a", "b", "c", "d", "e"]), np.zeros(5, np.int64), np.full(5, clock.now))
    assert hit.tolist() == [False, False, True, True, True]
    assert len(t) == 3 and t.dropped == 2


def test_tombstones_expire_after_retention_ids_and_sources_alike() -> None:
    clock = ManualClock()
    t = Tombstones(retention_s=10.0, max_ids=100, clock=clock)
    t.add_ids(tags_of(["old"]))
    t.add_source(tag_of("feed"), at=clock.now)
    clock.now += 5
    t.add_ids(tags_of(["new"]))
    clock.now += 6  # "old" and the source are 11 s old, "new" 6 s
    assert t.expire() == 2
    hit = t.forgotten(tags_of(["old", "new", "x"]), source_tags([None, None, "feed"]), np.full(3, 0.0))
    assert hit.tolist() == [False, True, False]


def test_a_forgotten_source_covers_only_events_made_before_its_request() -> None:
    t = Tombstones(clock=ManualClock())
    t.add_source(tag_of("feed"), at=500.0)
    hit = t.forgotten(tags_of(["a", "b", "c"]), source_tags(["feed", "feed", "other"]), np.array([499.0, 501.0, 1.0]))
    assert hit.tolist() == [True, False, False]


def test_tombstones_survive_their_state_round_trip() -> None:
    clock = ManualClock()
    t = Tombstones(retention_s=100.0, max_ids=10, clock=clock)
    t.add_ids(tags_of(["a", "b"]))
    t.add_source(tag_of("feed"), at=900.0)
    arrays, meta = t.state_dict()
    back = Tombstones(retention_s=100.0, max_ids=10, clock=clock)
    back.load_state_dict(arrays, meta)
    probe = (tags_of(["a", "b", "c", "d"]), source_tags([None, None, "feed", "feed"]), np.array([0, 0, 899.0, 901.0]))
    assert back.forgotten(*probe).tolist() == [True, True, True, False]
    assert len(back) == 3
    clock.now += 200  # loaded after their retention: gone
    late = Tombstones(retention_s=100.0, max_ids=10, clock=clock)
    late.load_state_dict(arrays, meta)
    assert late.empty


def test_tombstones_cost_sixteen_bytes_each_and_keep_the_newest_under_the_bound() -> None:
    clock = iter(range(1000, 2000))
    t = Tombstones(retention_s=1e9, max_ids=50_000, clock=lambda: float(next(clock)))
    rng = np.random.default_rng(0)
    batches = [rng.integers(-2**62, 2**62, 20_000) for _ in range(3)]
    dropped = [t.add_ids(b) for b in batches]
    assert dropped == [0, 0, 10_000] and len(t) == 50_000
    assert t._tags.nbytes + t._times.nbytes == 16 * 50_000
    assert t.forgotten(batches[2], np.zeros(20_000, np.int64), np.zeros(20_000)).all()
    assert t.forgotten(batches[0], np.zeros(20_000, np.int64), np.zeros(20_000)).sum() == 10_000  # its older half went
    assert all(t.forgets(int(tag), 0, 0.0) for tag in batches[1][:100])


def test_source_tombstones_are_bounded_too() -> None:
    t = Tombstones(retention_s=1e9, max_ids=2, clock=lambda: 1000.0)
    assert [t.add_source(s, at=float(s)) for s in (11, 12, 13)] == [0, 0, 1]
    none = np.zeros(3, np.int64)
    assert t.forgotten(none, np.array([11, 12, 13]), np.array([0.0, 0.0, 0.0])).tolist() == [False, True, True]
