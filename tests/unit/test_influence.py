"""The source influence bound: replay memory per source, the suspect rule, its state."""
from __future__ import annotations

import json

import numpy as np

from lifelong.learner.influence import InfluenceConfig, SourceInfluence
from lifelong.learner.source_table import SourceTable
from lifelong.memory.replay import ReplayStore
from lifelong.memory.tags import NO_SOURCE
from tests.unit.test_forget_memory import consistent

DIM, CLASSES, SOURCES = 8, 10, (11, 12, 13, 14, 15)


# -- replay memory: at most k items of a source ------------------------------------------------------
def _batches(store: ReplayStore, n: int, cap: int | None, seed: int = 0) -> np.ndarray:
    """Learn n events from source 12 (60%), 11 and NO_SOURCE; returns every tap added (row = its tag)."""
    rng = np.random.default_rng(seed)
    taps = rng.normal(size=(n, DIM)).astype(np.float32)
    sources = rng.choice([12, 11, NO_SOURCE], size=n, p=[0.6, 0.3, 0.1])
    for lo in range(0, n, 64):
        b = slice(lo, lo + 64)
        store.add(taps[b], np.arange(lo, min(lo + 64, n)) % 5, tags=np.arange(lo, min(lo + 64, n)),
                  sources=sources[b], max_per_source=cap)
    return taps


def held(store: ReplayStore, source: int) -> int:
    return int((store._sources[:store.n] == source).sum())


def test_a_source_holds_exactly_its_cap_and_the_others_keep_every_item() -> None:
    store = ReplayStore(DIM, 1 << 20, tagged=True)
    taps = _batches(store, 1000, cap=50)
    assert held(store, 12) == 50 and held(store, 11) == 50
    assert store.n == 100 + held(store, NO_SOURCE) and held(store, NO_SOURCE) > 80  # no source: not bounded
    consistent(store)
    slots = np.arange(store.n)  # replaced items took their tags with them
    np.testing.assert_array_equal(store.decode(slots), taps[store._tags[slots]])
    assert (store.labels() == store._tags[:store.n] % 5).all()


def test_a_batch_larger_than_the_cap_keeps_its_last_items() -> None:
    store = ReplayStore(DIM, 1 << 20, tagged=True)
    store.add(np.arange(10)[:, None] * np.ones((10, DIM)), np.arange(10) % 2, tags=np.arange(10),
              sources=np.full(10, 12), max_per_source=3)
    assert sorted(store._tags[:store.n].tolist()) == [7, 8, 9]
    consistent(store)


def test_the_cap_holds_in_a_full_store_and_an_untagged_store_ignores_it() -> None:
    item = DIM * 4 + 4 + 16
    store = ReplayStore(DIM, 120 * item, tagged=True)
    _batches(store, 2000, cap=30)
    assert store.n == 120 and held(store, 12) <= 30 and held(store, 11) <= 30
    consistent(store)
    plain = ReplayStore(DIM, 1 << 20)
    plain.add(np.zeros((100, DIM)), np.zeros(100, np.int64), sources=np.full(100, 12), max_per_source=10)
    assert plain.n == 100


# -- the suspect rule ---------------------------------------------------------------------------------
def confident(y: np.ndarray, p: float = 0.95) -> np.ndarray:
    """A prediction before learning that is ``p`` sure of class ``y``."""
    before = np.full((len(y), CLASSES), (1 - p) / (CLASSES - 1), np.float32)
    before[np.arange(len(y)), y] = p
    return before


def stream(influence: SourceInfluence, batches: int, flip_source: int | None, drift_at: int | None,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights, flipped flags and sources of a stream whose predictions are right (and confident).

    ``flip_source`` labels half of its events as another class; from batch ``drift_at`` every source
    labels every event as the next class (a real concept drift: the model contradicts all of them)."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(batches):
        true = rng.integers(0, CLASSES, 64)
        sources = rng.choice(SOURCES, 64)
        y = (true + 1) % CLASSES if drift_at is not None and b >= drift_at else true.copy()
        flipped = (sources == flip_source) & (rng.random(64) < 0.5)
        y[flipped] = (true[flipped] + rng.integers(1, CLASSES, flipped.sum())) % CLASSES
        out.append((influence.weigh(y, sources, confident(true)).weights, flipped, sources))
    return tuple(np.concatenate(x) for x in zip(*out))  # type: ignore[return-value]


def test_a_flipped_label_source_is_down_weighted_and_the_clean_ones_are_not() -> None:
    influence = SourceInfluence()
    weights, flipped, sources = stream(influence, 60, flip_source=13, drift_at=None)
    assert influence.standing_out_sources().tolist() == [13]
    late = np.arange(len(weights)) >= 64 * 10  # after the first few hundred events of evidence
    assert (weights[late & flipped] == 0).all()
    assert (weights[sources != 13] == 1).all()
    assert (weights[late & (sources == 13) & ~flipped] == 1).all()  # its labels that agree still count


def test_a_clean_drift_across_all_sources_is_not_bounded() -> None:
    influence = SourceInfluence()
    weights, _, _ = stream(influence, 60, flip_source=None, drift_at=20)
    assert (weights == 1).all() and len(influence.standing_out_sources()) == 0
    assert (influence.table.rate()[np.isin(influence.table.keys, SOURCES)] > 0.3).all()  # all contradicted


def test_events_without_a_source_are_never_judged() -> None:
    influence = SourceInfluence(InfluenceConfig(source_step_share=0.1))
    y = np.arange(64) % CLASSES
    w = influence.weigh((y + 1) % CLASSES, np.zeros(64, np.int64), confident(y))
    assert w.uniform and w.remember.all() and w.suspects == 0
    assert (influence.table.keys == 0).all()


def test_the_step_share_caps_a_source_in_a_batch() -> None:
    influence = SourceInfluence(InfluenceConfig(source_step_share=0.25))
    sources = np.r_[np.full(48, 11), np.full(16, 12)]
    w = influence.weigh(np.zeros(64, np.int64), sources, None).weights
    assert w[:48].sum() == np.float32(16) and (w[48:] == 1).all()


def test_the_table_stays_bounded_and_keeps_the_heavy_source() -> None:
    table = SourceTable(size=4, half_life=500)
    rng = np.random.default_rng(0)
    for b in range(100):
        sources = np.r_[np.full(32, 7), rng.integers(100, 10_000, 32)]  # a steady source among a crowd
        rows = table.rows(sources)
        table.observe(rows, np.zeros(64, bool), np.ones(64, bool))
    assert len(table.keys) == 4 and 7 in table.keys.tolist()


def test_state_round_trip_judges_the_same() -> None:
    influence = SourceInfluence()
    stream(influence, 20, flip_source=13, drift_at=None)
    arrays, meta = influence.state_dict()
    json.dumps(meta)
    twin = SourceInfluence()
    twin.load_state_dict(arrays, meta)
    for a, b in zip(stream(influence, 5, 13, None, seed=1), stream(twin, 5, 13, None, seed=1)):
        np.testing.assert_array_equal(a, b)
    counts = lambda t: dict(zip(t.keys.tolist(), t.hits.round(9).tolist()))  # noqa: E731  (rows may be reordered)
    assert counts(twin.table) == counts(influence.table)


def test_a_batch_with_more_sources_than_rows_counts_none_of_the_overflow_in_another_sources_row() -> None:
    from lifelong.learner.source_table import SourceTable

    table = SourceTable(size=4)
    rows = table.rows(np.arange(1, 9, dtype=np.int64))
    assert sorted(rows[rows >= 0].tolist()) == [0, 1, 2, 3] and (rows < 0).sum() == 4
    table.observe(rows, np.ones(8, bool), np.ones(8, bool))
    assert table.hits.sum() == 4 and table.volume.max() == 1  # each tracked source its own event only
