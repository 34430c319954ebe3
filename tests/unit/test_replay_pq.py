"""PQCodec (shapes, error, state) and ReplayStore (byte budget, eviction, balanced sampling, state)."""
from __future__ import annotations

from pathlib import Path

from typing import Iterator

import faiss
import numpy as np
import pytest

from lifelong.learner.continual import ContinualConfig, ContinualLearner
from lifelong.learner.encoders import FeatureEncoder
from lifelong.memory.persistence import load_state, save_state
from lifelong.memory.pq import PQCodec
from lifelong.memory.replay import LABEL_BYTES, ReplayStore
from lifelong.memory.replay_items import ExactTaps, PQCodes

DIM, M = 16, 4
RAW_ITEM = DIM * 4 + LABEL_BYTES  # 68 bytes: a float32 tap and its label
CODE_ITEM = M + LABEL_BYTES  # 8 bytes: four one-byte codes and the label
CODEBOOK = DIM * 256 * 4  # M sub-quantisers x 256 centroids x (DIM / M) floats
CENTRES = 3.0 * np.random.default_rng(11).normal(size=(5, DIM))


def blobs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CENTRES), n)
    return (CENTRES[y] + rng.normal(0.0, 0.5, (n, DIM))).astype(np.float32), y


def numbered(n: int, start: int = 0) -> np.ndarray:
    """Taps whose first coordinate is a unique id, so raw items can be told apart after decoding."""
    x = np.random.default_rng(start).normal(size=(n, DIM)).astype(np.float32)
    x[:, 0] = np.arange(start, start + n)
    return x


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread() -> Iterator[None]:
    """Tiny codebooks: one OpenMP thread beats two spinning ones on a busy machine."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def trained() -> tuple[PQCodec, np.ndarray]:
    """A codec trained on 2,000 blob taps (tests must not retrain it)."""
    x, _ = blobs(2000)
    codec = PQCodec(DIM, m=M, train_size=2000, seed=0)
    codec.train(x)
    return codec, x


# -- PQCodec --------------------------------------------------------------------------------
def test_codec_shapes_and_sizes(trained: tuple[PQCodec, np.ndarray]) -> None:
    codec, x = trained
    assert codec.trained and codec.code_size == M
    assert codec.nbytes() == CODEBOOK
    codes = codec.encode(x[:10])
    assert codes.shape == (10, M) and codes.dtype == np.uint8
    decoded = codec.decode(codes)
    assert decoded.shape == (10, DIM) and decoded.dtype == np.float32
    np.testing.assert_array_equal(codec.encode(decoded), codes)  # a centroid encodes to itself


def test_codec_error_is_small_and_reported(trained: tuple[PQCodec, np.ndarray]) -> None:
    codec, x = trained
    error = codec.relative_error(x)
    assert codec.reconstruction_error == pytest.approx(error)
    assert 0.0 < error < 0.05  # observed ~0.014 on these blobs
    assert codec.relative_error(blobs(500, seed=1)[0]) < 0.05  # and on fresh taps of the same blobs
    assert np.isnan(codec.relative_error(np.zeros((0, DIM), np.float32)))


def test_untrained_codec() -> None:
    codec = PQCodec(DIM, m=M)
    assert not codec.trained and codec.nbytes() == 0 and codec.state_dict() == {}
    assert np.isnan(codec.reconstruction_error)
    codec.load_state_dict({})
    assert not codec.trained


def test_codec_state_round_trip_gives_identical_codes(trained: tuple[PQCodec, np.ndarray], tmp_path: Path) -> None:
    codec, x = trained
    save_state(tmp_path / "codec", codec.state_dict(), {})
    twin = PQCodec(DIM, m=M, seed=123)
    twin.load_state_dict(load_state(tmp_path / "codec")[0])
    assert twin.trained and twin.reconstruction_error == codec.reconstruction_error
    probe = blobs(300, seed=2)[0]
    np.testing.assert_array_equal(twin.encode(probe), codec.encode(probe))
    np.testing.assert_array_equal(twin.decode(codec.encode(probe)), codec.decode(codec.encode(probe)))


def test_codec_rejects_bad_shapes(trained: tuple[PQCodec, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="divisible"):
        PQCodec(DIM, m=5)
    with pytest.raises(ValueError, match="codebook"):
        PQCodec(2 * DIM, m=M).load_state_dict(trained[0].state_dict())


def test_codec_seed_makes_training_deterministic() -> None:
    x = blobs(600, seed=3)[0]
    a, b = PQCodec(DIM, m=M, seed=5), PQCodec(DIM, m=M, seed=5)
    a.train(x)
    b.train(x)
    np.testing.assert_array_equal(a.state_dict()["centroids"], b.state_dict()["centroids"])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_codebook_that_cannot_train_does_not_break_learning() -> None:
    config = ContinualConfig(memory_budget_bytes=200_000, pq_m=M, pq_train_size=200, steps_per_batch=1,
                             replay_per_step=8)
    try:
        model = ContinualLearner(FeatureEncoder(DIM, warmup_events=0), config)
    except ValueError:
        return  # rejected up front: fine
    x, y = blobs(1000, seed=12)
    for i in range(0, 1000, 50):
        model.learn_many(x[i:i + 50], [str(v) for v in y[i:i + 50]])
    assert model.events_learned == 1000


# -- ReplayStore: budget ------------------------------------------------------------------------
def test_raw_capacity_comes_from_the_budget() -> None:
    store = ReplayStore(DIM, 10_000)
    assert not store.compressed and store.item_bytes() == RAW_ITEM
    assert store.capacity == 10_000 // RAW_ITEM == 147
    x, y = blobs(400)
    store.add(x, y)
    assert (store.n, store.seen) == (147, 400)
    assert store.nbytes() == 147 * RAW_ITEM <= store.budget_bytes


def test_compressed_capacity_counts_the_codebook(trained: tuple[PQCodec, np.ndarray]) -> None:
    codec, _ = trained
    budget = 40_000
    store = ReplayStore(DIM, budget)
    x, y = blobs(100, seed=4)
    store.add(x, y)
    raw = store.decode(np.arange(100))
    counts = store.class_counts()
    assert store.compress(codec)
    assert store.compressed and isinstance(store.items, PQCodes) and store.items.codec is codec
    assert store.item_bytes() == CODE_ITEM
    assert store.capacity == (budget - CODEBOOK) // CODE_ITEM == 2952
    assert store.nbytes() == 100 * CODE_ITEM + CODEBOOK
    assert store.n == 100 and store.class_counts() == counts
    np.testing.assert_array_equal(store.decode(np.arange(100)), codec.decode(codec.encode(raw)))
    more, more_y = blobs(5000, seed=5)
    store.add(more, more_y)
    assert store.n == store.capacity and store.nbytes() <= budget


def test_exact_taps_until_compress() -> None:
    store = ReplayStore(DIM, 10_000)
    x = numbered(20)
    store.add(x, np.zeros(20, int))
    assert not store.compressed and isinstance(store.items, ExactTaps)
    assert store.item_bytes() == RAW_ITEM and store.capacity == 147
    np.testing.assert_array_equal(store.decode(np.arange(20)), x)  # raw, exactly
    assert sorted(store.state_dict()[0]) == ["labels", "raw"]


def test_compress_needs_a_trained_codec() -> None:
    store = ReplayStore(DIM, 10_000)
    store.add(numbered(5), np.zeros(5, int))
    with pytest.raises(ValueError, match="trained"):
        store.compress(PQCodec(DIM, m=M))
    assert not store.compressed


def test_compress_is_idempotent(trained: tuple[PQCodec, np.ndarray]) -> None:
    codec, _ = trained
    store = ReplayStore(DIM, 40_000)
    store.add(*blobs(200, seed=6))
    assert store.compress(codec)
    arrays, meta = store.state_dict()
    shape = (store.capacity, store.nbytes(), store.class_counts())
    assert not store.compress(codec)
    again, meta_again = store.state_dict()
    assert (store.capacity, store.nbytes(), store.class_counts()) == shape
    np.testing.assert_array_equal(again["codes"], arrays["codes"])
    np.testing.assert_array_equal(again["labels"], arrays["labels"])
    assert meta_again == meta


def test_compress_when_the_codebook_leaves_less_room(trained: tuple[PQCodec, np.ndarray]) -> None:
    codec = PQCodec(DIM, m=16)  # 20-byte items: (20_000 - 16_384) // 20 = 180 < 294 raw items
    codec.train(blobs(1000, seed=7)[0])
    store = ReplayStore(DIM, 20_000)
    store.add(*blobs(300, seed=8))
    assert store.n == 294
    before = store.state_dict()[0]["raw"].copy()
    assert not store.compress(codec)  # codes would hold fewer items than raw taps already do: stay raw, lose nothing
    assert not store.compressed and store.n == 294
    assert store.nbytes() <= store.budget_bytes
    np.testing.assert_array_equal(store.state_dict()[0]["raw"], before)


# -- ReplayStore: eviction and sampling ---------------------------------------------------------------
def flooded() -> ReplayStore:
    """Capacity 30: five items each of classes 0 and 1, then a flood of 200 of class 2."""
    store = ReplayStore(DIM, 30 * RAW_ITEM, seed=3)
    store.add(numbered(10), np.repeat([0, 1], 5))
    store.add(numbered(200, start=10), np.full(200, 2))
    return store


def test_eviction_takes_from_the_largest_class() -> None:
    store = flooded()
    assert store.capacity == store.n == 30 and store.seen == 210
    assert store.class_counts() == {0: 5, 1: 5, 2: 20}
    labels = store.state_dict()[0]["labels"]
    ids = store.decode(np.arange(30))[:, 0]
    assert sorted(ids[labels == 0]) == [0, 1, 2, 3, 4]  # the small classes keep every item
    assert sorted(ids[labels == 1]) == [5, 6, 7, 8, 9]
    store.add(numbered(200, start=300), np.full(200, 3))  # a second flood shares the room of the first
    counts = store.class_counts()
    assert (counts[0], counts[1], counts[2] + counts[3]) == (5, 5, 20)
    assert abs(counts[2] - counts[3]) <= 2


def test_sampling_is_class_balanced() -> None:
    store = flooded()  # 5 / 5 / 20 items
    taps, labels = store.sample(30_000)
    assert taps.shape == (30_000, DIM) and labels.dtype == np.int64
    counts = np.bincount(labels, minlength=3)
    chi2 = float(((counts - 10_000) ** 2 / 10_000).sum())
    assert chi2 < 13.8  # 2 degrees of freedom, p = 0.001
    ids = taps[:, 0].astype(int)
    # Each sampled tap is a stored item of the sampled class, drawn uniformly within the class.
    assert set(ids[labels == 0]) == {0, 1, 2, 3, 4} and set(ids[labels == 1]) == {5, 6, 7, 8, 9}
    per_item = np.unique(ids[labels == 2], return_counts=True)[1]
    assert len(per_item) == 20
    expected = counts[2] / 20
    assert float(((per_item - expected) ** 2 / expected).sum()) < 43.8  # 19 degrees of freedom, p = 0.001


def test_sampling_an_empty_store_or_nothing() -> None:
    store = ReplayStore(DIM, 10_000)
    taps, labels = store.sample(8)
    assert taps.shape == (0, DIM) and labels.shape == (0,)
    store.add(numbered(3), np.zeros(3, int))
    assert store.sample(0)[0].shape == (0, DIM)


# -- ReplayStore: state -----------------------------------------------------------------------------------
def round_trip(store: ReplayStore, folder: Path) -> ReplayStore:
    save_state(folder, *store.state_dict())  # JSON meta: the generator state must survive it
    twin = ReplayStore(DIM, store.budget_bytes, seed=999)
    twin.load_state_dict(*load_state(folder))
    return twin


def assert_same_items(a: ReplayStore, b: ReplayStore) -> None:
    assert (a.n, a.seen, a.compressed, a.capacity, a.nbytes()) == (b.n, b.seen, b.compressed, b.capacity, b.nbytes())
    assert a.class_counts() == b.class_counts()
    np.testing.assert_array_equal(a.state_dict()[0]["labels"], b.state_dict()[0]["labels"])
    # Slots may be renumbered by a round trip; the items, class by class in member order, may not.
    for key in ("raw", "codes"):
        if key in a.state_dict()[0] or key in b.state_dict()[0]:
            np.testing.assert_array_equal(a.state_dict()[0][key], b.state_dict()[0][key])


def test_raw_state_round_trip(tmp_path: Path) -> None:
    store = flooded()
    twin = round_trip(store, tmp_path / "raw")
    assert not twin.compressed
    assert_same_items(twin, store)


def test_compressed_state_round_trip(trained: tuple[PQCodec, np.ndarray], tmp_path: Path) -> None:
    codec, _ = trained
    store = ReplayStore(DIM, 20_000, seed=1)
    store.add(*blobs(250, seed=9))
    assert store.compress(codec)
    store.add(*blobs(600, seed=10))  # fills the 452 slots and evicts
    assert store.n == store.capacity == (20_000 - CODEBOOK) // CODE_ITEM
    twin = round_trip(store, tmp_path / "codes")  # the codes bring their codebook
    assert isinstance(twin.items, PQCodes) and twin.items.codec.trained and twin.items.codec.m == M
    assert_same_items(twin, store)
    np.testing.assert_array_equal(twin.state_dict()[0]["codes"], store.state_dict()[0]["codes"])
    np.testing.assert_array_equal(twin.sample(64)[0], store.sample(64)[0])


def test_state_round_trip_before_eviction_continues_identically(tmp_path: Path) -> None:
    store = ReplayStore(DIM, 30 * RAW_ITEM, seed=3)
    store.add(numbered(20), np.repeat([0, 1, 2, 3], 5))
    twin = round_trip(store, tmp_path / "state")
    for s in (store, twin):
        s.add(numbered(40, start=100), np.repeat([1, 4], 20))
    assert_same_items(twin, store)
    np.testing.assert_array_equal(twin.sample(64)[0], store.sample(64)[0])


def test_state_round_trip_after_evictions_continues_identically(tmp_path: Path) -> None:
    store = flooded()
    store.add(numbered(100, start=300), np.full(100, 3))
    twin = round_trip(store, tmp_path / "state")
    np.testing.assert_array_equal(twin.sample(64)[0], store.sample(64)[0])
    for s in (store, twin):
        s.add(numbered(40, start=500), np.full(40, 0))
    assert_same_items(twin, store)


def test_class_regions_stay_exact_under_growth_and_eviction() -> None:
    # Many classes arriving in bursts force region moves and pool compactions;
    # every region must still hold exactly the slots of its class.
    rng = np.random.default_rng(3)
    store = ReplayStore(DIM, budget_bytes=300 * (DIM * 4 + 4), seed=1)
    for step in range(60):
        labels = rng.integers(0, 5 + step, size=int(rng.integers(1, 40)))
        store.add(rng.normal(size=(len(labels), DIM)).astype(np.float32), labels)
        counts = store.class_counts()
        assert sum(counts.values()) == store.n <= store.capacity
        for c, size in counts.items():
            region = store._pool[store._base[c]: store._base[c] + size]
            assert (store._labels[region] == c).all() and len(set(region.tolist())) == size
    x, y = store.sample(2000)
    assert set(np.unique(y)) <= set(store.class_counts())
    # class-balanced: every present class drawn, none more than ~3x its fair share
    drawn = np.bincount(y, minlength=max(store.class_counts()) + 1)[list(store.class_counts())]
    assert drawn.min() > 0 and drawn.max() < 3 * 2000 / len(drawn)


def test_subquantizers_take_the_largest_even_split() -> None:
    from lifelong.memory.pq import subquantizers

    assert [subquantizers(d, m) for d, m in [(384, 96), (1280, 96), (6, 96), (384, 0), (7, 4)]] == [96, 80, 6, 0, 1]


def test_one_dimensional_subquantisers_give_faiss_codes_by_binary_search() -> None:
    """A tap as narrow as its sub-quantiser count takes the sorted-midpoints path; its codes must be
    FAISS's own (the nearest centroid), ties and values beyond the outer centroids included."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 1, (2000, 12)), rng.integers(-3, 4, (500, 12))]).astype(np.float32)
    codec = PQCodec(12, 12, 8, train_size=2500)
    codec.train(x)
    probe = np.concatenate([x[:300], rng.normal(0, 5, (300, 12))]).astype(np.float32)
    fast = codec.encode(probe)
    assert codec._scalar is not None  # the binary-search path ran
    exact = codec._pq.compute_codes(probe)
    centroids = faiss.vector_to_array(codec._pq.centroids).reshape(12, 256)
    # Equal codes, or (on an exact tie between two centroids) codes at the same distance.
    dist = lambda codes: np.abs(np.take_along_axis(centroids.T, codes.astype(np.int64), 0) - probe)  # noqa: E731
    assert (fast == exact).mean() > 0.99
    np.testing.assert_allclose(dist(fast), dist(exact), atol=1e-6)
