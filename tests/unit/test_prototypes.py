"""PrototypeIndex: normalised class means, nearest-class search, copies, state."""
from __future__ import annotations

import numpy as np

from lifelong.memory.prototypes import PrototypeIndex


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


EMB = np.array([
    [1.0, 0.0, 0.0],
    [3.0, 1.0, 0.0],
    [0.0, 2.0, 0.0],
    [0.0, 0.0, -1.0],
    [0.0, 2.0, 2.0],
])
IDS = np.array([0, 0, 1, 2, 1])


def built() -> PrototypeIndex:
    index = PrototypeIndex(3)
    index.add(EMB[:2], IDS[:2])
    index.add(EMB[2:], IDS[2:])
    return index


def test_means_are_normalised_class_means() -> None:
    index = built()
    expected = np.array([
        unit(np.array([2.0, 0.5, 0.0])),   # mean of rows 0, 1
        unit(np.array([0.0, 2.0, 1.0])),   # mean of rows 2, 4
        np.array([0.0, 0.0, -1.0]),        # row 3
    ])
    assert index.num_classes == 3
    assert index.counts.tolist() == [2, 2, 1]
    assert index.means().dtype == np.float32
    np.testing.assert_allclose(index.means(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(index.mean_of(1), expected[1], rtol=1e-6)


def test_unseen_class_is_a_zero_row() -> None:
    index = PrototypeIndex(2)
    index.add(np.array([[1.0, 0.0]]), np.array([2]))
    assert index.num_classes == 3
    np.testing.assert_array_equal(index.means(), [[0, 0], [0, 0], [1, 0]])


def test_search_returns_the_nearest_class() -> None:
    index = built()
    queries = unit(np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.6], [0.1, 0.0, -1.0]]))
    sims, ids = index.search(queries, k=1)
    assert ids[:, 0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(sims[:, 0], np.sum(queries * index.means()[[0, 1, 2]], axis=1), rtol=1e-5)
    sims2, ids2 = index.search(queries, k=2)
    assert ids2.shape == (3, 2)
    assert np.all(sims2[:, 0] >= sims2[:, 1])


def test_search_k_is_capped_and_empty_index_returns_empty() -> None:
    empty = PrototypeIndex(3)
    sims, ids = empty.search(np.ones((2, 3), np.float32), k=5)
    assert sims.shape == (2, 0) and ids.shape == (2, 0)
    sims, ids = built().search(unit(np.ones((1, 3))), k=10)
    assert ids.shape == (1, 3)
    assert sorted(ids[0].tolist()) == [0, 1, 2]


def test_similarities_shape_and_values() -> None:
    index = built()
    queries = unit(np.array([[1.0, 1.0, 1.0], [0.0, -1.0, 0.0]])).astype(np.float32)
    sims = index.similarities(queries)
    assert sims.shape == (2, 3)
    np.testing.assert_allclose(sims, queries @ index.means().T, rtol=1e-5, atol=1e-6)


def test_search_reflects_later_adds() -> None:
    index = PrototypeIndex(2)
    index.add(np.array([[1.0, 0.0]]), np.array([0]))
    assert index.search(np.array([[0.0, 1.0]], np.float32))[1][0, 0] == 0
    index.add(np.array([[0.0, 1.0]]), np.array([1]))  # must invalidate the cached FAISS index
    assert index.search(np.array([[0.0, 1.0]], np.float32))[1][0, 0] == 1


def test_frozen_copy_is_independent_of_later_adds() -> None:
    index = built()
    twin = index.frozen_copy()
    before = twin.means().copy()
    index.add(np.array([[0.0, 0.0, 5.0], [5.0, 5.0, 5.0]]), np.array([2, 3]))
    assert index.num_classes == 4
    assert twin.num_classes == 3
    assert twin.counts.tolist() == [2, 2, 1]
    np.testing.assert_array_equal(twin.means(), before)
    q = unit(np.array([[0.0, 0.0, 1.0]]))
    assert index.search(q)[1][0, 0] == 2
    assert twin.search(q)[1][0, 0] == 1  # the twin still has class 2 pointing at -z


def test_counts_property_is_a_copy() -> None:
    index = built()
    index.counts[0] = 99
    assert index.counts.tolist() == [2, 2, 1]


def test_state_dict_round_trip() -> None:
    index = built()
    state = index.state_dict()
    assert set(state) == {"sums", "counts"}
    fresh = PrototypeIndex(3)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.means(), index.means())
    assert fresh.counts.tolist() == index.counts.tolist()
    q = unit(np.random.default_rng(0).normal(size=(4, 3))).astype(np.float32)
    np.testing.assert_array_equal(fresh.similarities(q), index.similarities(q))
    state["sums"][0, 0] = 1000.0  # the loaded state owns its arrays
    np.testing.assert_array_equal(fresh.means(), index.means())


def test_load_state_dict_rejects_wrong_shape() -> None:
    import pytest

    with pytest.raises(ValueError):
        PrototypeIndex(4).load_state_dict(built().state_dict())
    with pytest.raises(ValueError):
        PrototypeIndex(3).load_state_dict({"sums": np.zeros((2, 3)), "counts": np.zeros(3, np.int64)})
