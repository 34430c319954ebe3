"""PendingStore: joins, duplicates, unknown ids, expiry by age and by capacity."""
from __future__ import annotations

from lifelong.stream.label_join import PendingStore

from manual_clock import ManualClock


def test_take_joins_then_reports_duplicate() -> None:
    store = PendingStore(clock=ManualClock(0.0))
    store.add("e1", "payload-1")
    assert "e1" in store and len(store) == 1
    assert store.take("e1") == ("joined", "payload-1")
    assert "e1" not in store and len(store) == 0
    assert store.take("e1") == ("duplicate", None)


def test_unknown_id() -> None:
    store = PendingStore(clock=ManualClock(0.0))
    store.add("e1", 1)
    assert store.take("nope") == ("unknown_id", None)
    assert len(store) == 1  # the pending entry is untouched


def test_label_after_max_age_is_expired() -> None:
    clock = ManualClock(100.0)
    store = PendingStore(max_age_s=10.0, clock=clock)
    store.add("old", "a")
    clock.now = 105.0
    store.add("young", "b")
    clock.now = 110.0  # exactly max_age: still waiting
    assert store.expire() == 0
    assert store.oldest_age_s() == 10.0
    clock.now = 110.5
    assert store.take("old") == ("expired", None)
    assert store.expired == 1
    assert len(store) == 1
    assert store.take("young") == ("joined", "b")


def test_expire_counts_and_empties() -> None:
    clock = ManualClock(0.0)
    store = PendingStore(max_age_s=1.0, clock=clock)
    for i in range(3):
        store.add(f"e{i}", i)
    clock.now = 5.0
    assert store.expire() == 3
    assert len(store) == 0
    assert store.oldest_age_s() == 0.0
    assert [store.take(f"e{i}")[0] for i in range(3)] == ["expired"] * 3


def test_capacity_eviction_returns_count_and_evicted_is_expired() -> None:
    store = PendingStore(max_items=2, clock=ManualClock(0.0))
    assert store.add("a", 1) == 0
    assert store.add("b", 2) == 0
    assert store.add("c", 3) == 1  # pushes out the oldest, "a"
    assert store.evicted == 1
    assert len(store) == 2
    assert "a" not in store
    assert store.take("a") == ("expired", None)
    assert store.take("b") == ("joined", 2)
    assert store.take("c") == ("joined", 3)


def test_remember_joined_is_bounded() -> None:
    store = PendingStore(clock=ManualClock(0.0), remember_joined=1)
    store.add("a", 1)
    store.add("b", 2)
    store.take("a")
    store.take("b")
    assert store.take("b") == ("duplicate", None)
    assert store.take("a") == ("unknown_id", None)  # forgotten: only one id remembered


def test_readding_an_id_refreshes_its_position() -> None:
    store = PendingStore(max_items=2, clock=ManualClock(0.0))
    store.add("a", 1)
    store.add("b", 2)
    store.add("a", 10)  # "a" is now the newest
    assert store.add("c", 3) == 1
    assert "b" not in store
    assert store.take("a") == ("joined", 10)
