"""Exact removal from the memories (groundwork of forgetting on request): tagged replay items, prototype sums."""
from __future__ import annotations

import numpy as np
import pytest

from lifelong.memory.pq import PQCodec
from lifelong.memory.prototypes import PrototypeIndex
from lifelong.memory.replay import ReplayStore

DIM = 8


def filled(n: int, budget: int = 1 << 20, seed: int = 0) -> tuple[ReplayStore, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    store = ReplayStore(DIM, budget, seed=seed, tagged=True)
    taps = rng.normal(size=(n, DIM)).astype(np.float32)
    labels = np.arange(n) % 3
    store.add(taps, labels, tags=np.arange(1, n + 1), sources=np.arange(n) % 2)
    return store, taps, labels


def consistent(store: ReplayStore) -> None:
    """Every item belongs to exactly one class region, and the regions hold n items."""
    assert sum(store.class_counts().values()) == store.n
    members = np.concatenate([store._pool[store._base[c]: store._base[c] + store._size[c]]
                              for c in range(len(store._size))])
    assert sorted(members.tolist()) == list(range(store.n))
    assert all(store._labels[s] == c for c in range(len(store._size))
               for s in store._pool[store._base[c]: store._base[c] + store._size[c]])


def test_forgetting_events_removes_exactly_their_items() -> None:
    store, taps, labels = filled(100)
    gone = store.forget(tags=np.array([5, 17, 999]))
    assert store.n == 98 and gone.exact
    np.testing.assert_array_equal(np.sort(gone.labels), np.sort(labels[[4, 16]]))
    np.testing.assert_array_equal(gone.taps[np.argsort(gone.labels)], taps[[4, 16]][np.argsort(labels[[4, 16]])])
    kept = set(store._tags[:store.n].tolist())
    assert kept == set(range(1, 101)) - {5, 17}
    consistent(store)
    # Each kept tag still decodes to its own tap: the moves kept items and tags together.
    slots = np.arange(store.n)
    np.testing.assert_array_equal(store.decode(slots), taps[store._tags[slots] - 1])


def test_forgetting_a_source_removes_all_of_its_items_and_survives_a_restore() -> None:
    store, taps, _ = filled(60)
    gone = store.forget(sources=np.array([1]))
    assert len(gone.labels) == 30 and store.n == 30 and set(store._sources[:30].tolist()) == {0}
    consistent(store)
    twin = ReplayStore(DIM, 1 << 20, tagged=True)
    twin.load_state_dict(*store.state_dict())
    assert twin.forget(tags=np.array([1])).labels.tolist() == [0] and twin.n == 29
    consistent(twin)


def test_forgetting_after_evictions_keeps_the_store_consistent_and_sampling_only_kept_items() -> None:
    store, _, _ = filled(400, budget=40 * (DIM * 4 + 4 + 16))  # room for 40: most items were evicted
    assert store.n == 40
    held = store._tags[:40].copy()
    gone = store.forget(tags=held[::2])
    assert len(gone.labels) == 20 and store.n == 20
    consistent(store)
    store.add(np.zeros((5, DIM), np.float32), np.zeros(5, np.int64), tags=np.full(5, 7777))
    consistent(store)
    assert store.n == 25


def test_codes_are_forgotten_too_but_say_they_are_not_exact() -> None:
    store, taps, _ = filled(300)
    codec = PQCodec(DIM, m=4)
    codec.train(taps)
    assert store.compress(codec)
    gone = store.forget(tags=np.array([1, 2]))
    assert not gone.exact and len(gone.labels) == 2 and store.n == 298
    consistent(store)


def test_an_untagged_store_refuses_to_forget() -> None:
    store = ReplayStore(DIM, 1 << 20)
    with pytest.raises(ValueError, match="tagged"):
        store.forget(tags=np.array([1]))


def test_subtracting_from_prototypes_gives_the_means_without_those_embeddings() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, DIM)).astype(np.float32), rng.normal(size=(20, DIM)).astype(np.float32)
    only_a, both = PrototypeIndex(DIM), PrototypeIndex(DIM)
    only_a.add(a, np.arange(50) % 2)
    both.add(a, np.arange(50) % 2)
    both.add(b, np.full(20, 1))
    both.add(b[:3], np.full(3, 2))  # a class whose every embedding goes
    both.subtract(b, np.full(20, 1))
    both.subtract(b[:3], np.full(3, 2))
    np.testing.assert_allclose(both.means()[:2], only_a.means(), atol=1e-12)
    assert both.counts.tolist() == [25, 25, 0] and not both.means()[2].any()
    with pytest.raises(ValueError, match="more embeddings"):
        both.subtract(b[:1], np.array([2]))


def test_relabel_renumbers_classes_and_keeps_every_item() -> None:
    store, taps, labels = filled(60)
    store.forget(tags=np.flatnonzero(labels == 1) + 1)  # class 1 is empty now
    before = {int(t): int(c) for t, c in zip(store._tags[:store.n], store.labels())}
    store.relabel(np.array([0, -1, 1]))
    after = {int(t): int(c) for t, c in zip(store._tags[:store.n], store.labels())}
    assert after == {t: (0 if c == 0 else 1) for t, c in before.items()}
    consistent(store)
    assert set(store.class_counts()) == {0, 1}
    with pytest.raises(ValueError):
        store.relabel(np.array([-1, 0]))


def test_a_full_untagged_state_restores_into_a_tagged_store_class_balanced() -> None:
    """Upgrading: a full memory saved before tags (16 bytes less an item) must not refuse to restore."""
    budget = 100 * (DIM * 4 + 4)
    old = ReplayStore(DIM, budget, seed=0)
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    old.add(np.random.default_rng(0).normal(size=(100, DIM)).astype(np.float32), labels)
    assert old.n == 100 == old.capacity
    new = ReplayStore(DIM, budget, seed=0, tagged=True)
    new.load_state_dict(*old.state_dict())
    assert new.n == new.capacity == 100 * (DIM * 4 + 4) // (DIM * 4 + 4 + 16)
    counts = new.class_counts()
    assert counts[2] == 10 and counts[1] == 20 and counts[0] == new.n - 30  # the largest class gave way
    assert new.lost == 100 - new.n and new.seen == 100
    consistent(new)
    kept = new.decode(np.arange(new.n))
    assert all(any(np.array_equal(k, t) for t in old.decode(np.arange(100))) for k in kept[:5])


def test_a_source_at_its_cap_replaces_its_own_items_of_the_same_class_and_never_empties_a_class() -> None:
    store = ReplayStore(DIM, 1 << 20, seed=0, tagged=True)
    x = np.zeros((1, DIM), np.float32)
    for i, c in enumerate([0, 2, 2, 2]):  # source 7 fills its cap of 4; its class-0 item is class 0's only one
        store.add(x, np.array([c]), np.array([i + 1]), np.array([7]), max_per_source=4)
    for i in range(5):  # then it sends class 1 only
        store.add(x, np.array([1]), np.array([200 + i]), np.array([7]), max_per_source=4)
    labels = store._labels[:store.n]
    assert store.n == 4 and sorted(labels.tolist()) == [0, 1, 2, 2]  # one class-2 item made room, then class 1
    store.add(x, np.array([2]), np.array([300]), np.array([7]), max_per_source=4)  # replaces one of its class-2 items
    assert sorted(store._labels[:store.n].tolist()) == [0, 1, 2, 2]
    consistent(store)
    assert store.lost == 6 and store.seen == 10
