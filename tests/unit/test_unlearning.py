"""Forgetting on request in the continual learner (``learner.unlearning``): what leaves, and what stays."""
from __future__ import annotations

import numpy as np
import pytest

from lifelong.learner.continual import ContinualConfig, ContinualLearner
from lifelong.learner.encoders import FeatureEncoder
from lifelong.memory.tags import source_tags, tags_of

DIM, CLASSES = 16, 6


def blobs(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(CLASSES, DIM)) * 3
    y = rng.integers(CLASSES, size=n)
    return (centres[y] + rng.normal(size=(n, DIM))).astype(np.float32), [f"c{c}" for c in y]


def learned(n: int = 1200, **config: object) -> tuple[ContinualLearner, np.ndarray, list[str], list[str], list[str]]:
    lr = ContinualLearner(FeatureEncoder(DIM, warmup_events=200), ContinualConfig(forgetting=True, pq_m=0,
                                                                                  **config))  # type: ignore[arg-type]
    x, labels = blobs(n, 0)
    ids = [f"e{i}" for i in range(n)]
    # source "a" sends all of class c0 and every 10th event of the others; "b" the rest
    sources = ["a" if lab == "c0" or i % 10 == 0 else "b" for i, lab in enumerate(labels)]
    for s in range(0, n, 60):
        taps = lr.encode(x[s:s + 60], learning=True)
        lr.learn_taps(taps, labels[s:s + 60], tags=tags_of(ids[s:s + 60]), sources=source_tags(sources[s:s + 60]))
    return lr, x, labels, ids, sources


def accuracy(lr: ContinualLearner, x: np.ndarray, labels: list[str]) -> float:
    pred = lr.snapshot().predict_taps(lr.encode(x)).labels
    return float(np.mean([p == t for p, t in zip(pred, labels)]))


def test_forgetting_a_source_removes_its_items_its_whole_class_and_keeps_the_rest() -> None:
    lr, x, labels, ids, sources = learned()
    test_x, test_labels = blobs(600, 1)
    others = [i for i, t in enumerate(test_labels) if t != "c0"]
    before = accuracy(lr, test_x[others], [test_labels[i] for i in others])
    owned = sum(s == "a" for s in sources)
    report = lr.forget(sources=source_tags(["a"]))
    assert report.items == owned  # every one of its events was still in memory (budget is large)
    assert report.classes_removed == ("c0",) and "c0" not in lr.classes
    assert lr.memory.n == len(ids) - owned == report.refit_items
    assert not np.isin(lr.memory._tags[:lr.memory.n], tags_of([i for i, s in zip(ids, sources) if s == "a"])).any()
    assert len(lr.hard) == 0
    pred = lr.snapshot().predict_taps(lr.encode(test_x)).labels
    assert "c0" not in pred  # the class is gone from the served model
    after = accuracy(lr, test_x[others], [test_labels[i] for i in others])
    assert after >= before - 0.02
    # prototypes are the retained items' means, exactly
    kept = lr.memory.decode(np.arange(lr.memory.n))
    c1 = lr.memory.labels() == lr.classes.index("c1")
    expected = kept[c1] / np.linalg.norm(kept[c1], axis=1, keepdims=True)
    mean = expected.mean(0)
    np.testing.assert_allclose(lr.protos.mean_of(lr.classes.index("c1")), mean / np.linalg.norm(mean), atol=1e-5)
    assert report.version == lr.version == lr.snapshot().version


def test_forgetting_ids_and_unknown_ids_and_learning_on_afterwards() -> None:
    lr, x, labels, ids, _ = learned(600)
    n = lr.memory.n
    report = lr.forget(tags=tags_of(ids[:30] + ["never-seen"]))
    assert report.items == 30 and lr.memory.n == n - 30 and report.classes_removed == ()
    assert lr.forget(tags=tags_of(["never-seen"])).items == 0
    more, more_labels = blobs(120, 5)
    stats = lr.learn_taps(lr.encode(more, learning=True), more_labels, tags=tags_of([f"n{i}" for i in range(120)]))
    assert stats.n == 120 and lr.memory.n == n - 30 + 120
    # the state round-trips with the renumbered classes and tags
    twin = ContinualLearner(FeatureEncoder(DIM, warmup_events=200), lr.config)
    twin.load_state_dict(*lr.state_dict())
    assert twin.classes == lr.classes and twin.memory.n == lr.memory.n
    assert twin.forget(tags=tags_of(["n0", "n1"])).items == 2


def test_a_learner_without_tagged_memory_refuses_to_forget() -> None:
    lr = ContinualLearner(FeatureEncoder(DIM), ContinualConfig(pq_m=0))
    assert not lr.supports_forget
    with pytest.raises(ValueError, match="cannot forget"):
        lr.forget(tags=tags_of(["x"]))


@pytest.mark.parametrize("events, phase", [(600, "base"), (1200, "continual")])
def test_the_daemons_feature_learner_forgets_in_its_base_phase_and_after(events: int, phase: str) -> None:
    from lifelong.learner.registry import LearnerOptions, build

    options = LearnerOptions(continual={"forgetting": True, "pq_m": 0}, base_init={"base_events": 900},
                             fast_expert=True)
    lr = build("lifelong", FeatureEncoder(DIM, warmup_events=200), options)
    x, labels = blobs(events, 0)
    ids = [f"e{i}" for i in range(events)]
    sources = ["a" if lab == "c0" else "b" for lab in labels]
    for s in range(0, events, 60):
        lr.learn_taps(lr.encode(x[s:s + 60], learning=True), labels[s:s + 60], tags=tags_of(ids[s:s + 60]),
                      sources=source_tags(sources[s:s + 60]))
    assert (lr.inner.inner is None) == (phase == "base")
    version = lr.version
    report = lr.forget(sources=source_tags(["a"]), tags=tags_of(ids[1:3]))
    assert (lr.inner.inner is None) == (phase == "base")  # re-learning the base events did not switch early
    assert report.classes_removed == ("c0",) and "c0" not in lr.classes
    assert report.items == sum(s == "a" for s in sources) + sum(labels[i] != "c0" for i in (1, 2))
    assert report.version == lr.version > version
    test_x, test_labels = blobs(300, 1)
    predicted = lr.snapshot().predict_taps(lr.encode(test_x)).labels
    assert "c0" not in predicted
    kept = [i for i, t in enumerate(test_labels) if t != "c0"]
    assert np.mean([predicted[i] == test_labels[i] for i in kept]) > 0.9


def test_the_refit_takes_its_passes_within_its_step_bound() -> None:
    lr, *_ = learned(600, refit_epochs=2.0)
    lr.forget(tags=tags_of(["e1"]))  # 599 items, 2 passes: ceil(1198 / 256) = 5 steps
    assert int(lr.opt.state[lr.head]["step"]) == 5
    capped, *_ = learned(600, refit_epochs=2.0, refit_max_steps=3)
    capped.forget(tags=tags_of(["e1"]))
    assert int(capped.opt.state[capped.head]["step"]) == 3


def test_the_influence_bounds_counts_are_part_of_the_learners_state() -> None:
    lr, *_ = learned(600)
    assert lr.influence.table.volume.sum() > 0  # sources a and b were counted
    twin = ContinualLearner(FeatureEncoder(DIM, warmup_events=200), lr.config)
    twin.load_state_dict(*lr.state_dict())
    np.testing.assert_array_equal(twin.influence.table.keys, lr.influence.table.keys)
    np.testing.assert_allclose(twin.influence.table.volume, lr.influence.table.volume)


def test_only_the_classes_a_request_empties_leave() -> None:
    # A memory of 3 items for 6 classes: most classes hold no item before any request.
    lr, x, labels, ids, _ = learned(240, memory_budget_bytes=3 * (DIM * 4 + 4 + 16))
    held = {lr.classes[c] for c in lr.memory.class_counts()}
    assert lr.memory.n == 3 and len(lr.classes) == CLASSES and len(held) < CLASSES
    victim = lr.memory.labels()[0]
    tags = lr.memory._tags[:lr.memory.n][lr.memory.labels() == victim]
    emptied = lr.classes[victim]
    report = lr.forget(tags=tags)
    assert report.classes_removed == (emptied,)
    assert set(lr.classes) == {f"c{c}" for c in range(CLASSES)} - {emptied}
    assert (lr.protos.counts > 0).all()  # the classes without items kept their prototypes
