"""The River adapter: River's own estimator checks, a River pipeline, label types, the ``_many`` path.

River's checks run on both learners with the adapter's ``_unit_test_params``
(River's convention for test-sized hyper-parameters): ``nmc`` on River's own
streams, ``lifelong`` on their first events only (one learning step per event
costs it milliseconds, and the checks learn tens of thousands of events).
"""
from __future__ import annotations

import doctest
import functools
import itertools
import pickle
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
from river import checks, datasets, evaluate, metrics, preprocessing

from lifelong.learner import river_adapter
from lifelong.learner.river_adapter import LifelongClassifier

PARAMS = dict(zip(("nmc", "lifelong"), LifelongClassifier._unit_test_params()))
# Events of each River stream a check sees, for lifelong (None: all of them).
SHORT = {"nmc": None, "lifelong": 40}
SHORT_MEMORY = {"nmc": None, "lifelong": 120}
# River's classifier streams, in the order _yield_datasets gives them.
STREAMS = ("phishing", "phishing-np-bool", "image-segments")


def _checks(variant: str) -> list[Callable[..., None]]:
    """River's checks for this variant, as check_estimator runs them (its skips skipped)."""
    model = LifelongClassifier(**PARAMS[variant])
    return [c for c in checks.yield_checks(model) if c.__name__ not in model._unit_test_skips()]


def _case_ids() -> list[tuple[str, int, str]]:
    cases = []
    for variant in PARAMS:
        seen: dict[str, int] = {}
        for i, check in enumerate(_checks(variant)):
            k = seen[check.__name__] = seen.get(check.__name__, -1) + 1
            stream = f"-{STREAMS[k]}" if "dataset" in getattr(check, "keywords", {}) else ""
            cases.append((variant, i, f"{variant}-{check.__name__}{stream}"))
    return cases


def _shortened(check: Callable[..., None], variant: str) -> Callable[..., None]:
    keywords = getattr(check, "keywords", {})
    n = (SHORT_MEMORY if check.__name__ == "check_bounded_memory_growth" else SHORT)[variant]
    if "dataset" not in keywords or n is None:
        return check
    # An iterator, as River's streams are: some checks read on where an earlier islice stopped.
    return functools.partial(check.func, dataset=itertools.islice(keywords["dataset"], n))


@pytest.mark.parametrize("variant,index", [c[:2] for c in _case_ids()], ids=[c[2] for c in _case_ids()])
def test_river_estimator_check(variant: str, index: int, one_thread: None) -> None:
    model = LifelongClassifier(**PARAMS[variant])
    check = _checks(variant)[index]
    _shortened(check, variant)(model.clone())


def test_the_checks_cover_river_s_whole_list() -> None:
    names = {c.__name__ for c in _checks("lifelong")}
    assert {"check_learn_many_matches_learn_one", "check_predict_proba_many_matches_predict_proba_one",
            "check_pickling", "check_bounded_memory_growth", "check_classifier_tracks_seen_labels"} <= names
    # Only a batch_size of 1 promises learn_many == a learn_one loop; River then skips that check.
    assert LifelongClassifier(batch_size=64)._unit_test_skips() == {"check_learn_many_matches_learn_one"}


# -- a River pipeline ---------------------------------------------------------------------------
@pytest.mark.parametrize("variant,events,floor", [
    ("nmc", None, 0.80),  # observed 0.8815 on all 1,250 events; the majority class is 0.56
    ("lifelong", 300, 0.68),  # observed 0.7559 on the first 300; the majority class is 0.557 there
])
def test_progressive_val_score_in_a_pipeline(variant: str, events: int | None, floor: float,
                                             one_thread: None) -> None:
    stream = datasets.Phishing() if events is None else datasets.Phishing().take(events)
    model = preprocessing.StandardScaler() | LifelongClassifier(**PARAMS[variant])
    accuracy = evaluate.progressive_val_score(stream, model, metrics.Accuracy())
    assert accuracy.get() > floor


def test_docstring_example_runs() -> None:
    assert doctest.testmod(river_adapter, raise_on_error=True).attempted > 0


# -- labels -------------------------------------------------------------------------------------
def _blobs(n: int = 60, seed: int = 0) -> tuple[list[dict[str, float]], np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    ids = rng.integers(0, 3, n)
    x = centres[ids] + rng.normal(0.0, 0.3, (n, 3))
    return [{"a": r[0], "b": r[1], "c": r[2]} for r in x], ids


@pytest.mark.parametrize("labels", [(0, 1, 2), (False, True, True), (np.bool_(False), np.bool_(True), np.True_),
                                    ("x", "y", "z"), (1.5, 2.5, 3.5)], ids=["int", "bool", "np-bool", "str", "float"])
def test_labels_come_back_with_their_own_type(labels: tuple[Any, ...], one_thread: None) -> None:
    xs, ids = _blobs()
    ys = [labels[i] for i in ids]
    model = LifelongClassifier(learner="nmc")
    for x, y in zip(xs, ys):
        model.learn_one(x, y)
    predicted = model.predict_one(xs[0])
    assert predicted == ys[0] and type(predicted) is type(ys[0])
    proba = model.predict_proba_one(xs[0])
    assert set(proba) == set(ys) and all(type(k) is type(ys[0]) for k in proba)
    assert sum(proba.values()) == pytest.approx(1.0, abs=1e-12)
    many = model.predict_many(pd.DataFrame(xs[:10])).tolist()
    assert many == ys[:10] and all(type(m) is type(ys[0]) for m in many)


def test_str_and_int_labels_stay_apart(one_thread: None) -> None:
    model = LifelongClassifier(learner="nmc")
    model.learn_one({"a": 1.0}, 1)
    model.learn_one({"a": -1.0}, "1")
    assert set(model.predict_proba_one({"a": 1.0})) == {1, "1"}
    assert model.predict_one({"a": 3.0}) == 1 and model.predict_one({"a": -3.0}) == "1"


def test_predictions_before_any_learning_are_empty() -> None:
    model = LifelongClassifier()
    X = pd.DataFrame([{"a": 1.0}, {"a": 2.0}])
    assert model.predict_proba_one({"a": 1.0}) == {} and model.predict_one({"a": 1.0}) is None
    assert model.predict_many(X).tolist() == [None, None]
    assert model.predict_proba_many(X).shape == (2, 0)


# -- learn_one, learn_many, predict_many --------------------------------------------------------------
def test_learn_one_takes_effect_at_once(one_thread: None) -> None:
    model = LifelongClassifier(**PARAMS["lifelong"])
    model.learn_one({"a": 1.0, "b": 0.0}, "first")
    assert model.predict_one({"a": 1.0, "b": 0.0}) == "first"
    before = model.predict_proba_one({"a": 0.0, "b": 1.0})
    model.learn_one({"a": 0.0, "b": 1.0}, "second")
    after = model.predict_proba_one({"a": 0.0, "b": 1.0})
    assert set(before) == {"first"} and set(after) == {"first", "second"}
    assert model._model is not None and model._model.events_learned == 2


@pytest.mark.parametrize("variant", list(PARAMS))
def test_learn_many_with_batch_size_1_is_a_learn_one_loop(variant: str, one_thread: None) -> None:
    xs, ids = _blobs(40)
    xs[3].pop("b")  # missing keys and NaN cells both count as 0
    one, many = LifelongClassifier(**PARAMS[variant]), LifelongClassifier(**PARAMS[variant])
    for x, y in zip(xs, ids.tolist()):
        one.learn_one(x, y)
    many.learn_many(pd.DataFrame(xs), pd.Series(ids.tolist()))
    probe, _ = _blobs(10, seed=1)
    for x in probe:
        assert many.predict_proba_one(x) == pytest.approx(one.predict_proba_one(x), abs=1e-6)
    assert many._model.events_learned == one._model.events_learned == 40


def test_learn_many_takes_one_step_per_batch_size_rows(one_thread: None) -> None:
    xs, ids = _blobs(100)
    model = LifelongClassifier(**(PARAMS["lifelong"] | {"batch_size": 32}))
    model.learn_many(pd.DataFrame(xs), pd.Series(ids))
    assert (model._model.version, model._model.events_learned) == (4, 100)  # 32 + 32 + 32 + 4
    with pytest.raises(ValueError, match="rows but"):
        model.learn_many(pd.DataFrame(xs), pd.Series(ids[:5]))


@pytest.mark.parametrize("variant", list(PARAMS))
def test_predict_many_equals_predict_one(variant: str, one_thread: None) -> None:
    xs, ids = _blobs(60)
    model = LifelongClassifier(**PARAMS[variant])
    for x, y in zip(xs, ids.tolist()):
        model.learn_one(x, y)
    probe, _ = _blobs(12, seed=2)
    del probe[0]["a"], probe[1]["c"]
    X = pd.DataFrame(probe)  # NaN where a dict lacks a key
    proba = model.predict_proba_many(X)
    assert set(proba.columns) == {0, 1, 2}
    for i, x in enumerate(probe):
        assert proba.iloc[i].to_dict() == pytest.approx(model.predict_proba_one(x), abs=1e-6)
    assert model.predict_many(X).tolist() == [model.predict_one(x) for x in probe]


# -- features --------------------------------------------------------------------------------------------
def test_unknown_keys_are_ignored_and_missing_ones_count_as_zero(one_thread: None) -> None:
    xs, ids = _blobs()
    model = LifelongClassifier(learner="nmc")
    for x, y in zip(xs, ids.tolist()):
        model.learn_one(x, y)
    assert model._schema == ("a", "b", "c")
    x = {"a": 3.0, "b": 0.5, "c": 0.2}
    assert model.predict_proba_one(x | {"d": 100.0, 7: 1.0}) == model.predict_proba_one(x)
    assert model.predict_proba_one({"a": 3.0}) == model.predict_proba_one({"a": 3.0, "b": 0.0, "c": None})
    assert model.predict_proba_one({"a": 3.0}) == model.predict_proba_one({"a": 3.0, "b": float("nan")})
    assert model.predict_proba_one({"a": 3.0}) != model.predict_proba_one(x)


def test_feature_order_does_not_depend_on_the_first_dict(one_thread: None) -> None:
    xs, ids = _blobs(30)
    a, b = LifelongClassifier(**PARAMS["lifelong"]), LifelongClassifier(**PARAMS["lifelong"])
    for x, y in zip(xs, ids.tolist()):
        a.learn_one(x, y)
        b.learn_one(dict(reversed(list(x.items()))), y)
    assert a._schema == b._schema == ("a", "b", "c")
    assert a.predict_proba_one(xs[0]) == b.predict_proba_one(xs[0])


def test_features_given_up_front_fix_the_schema(one_thread: None) -> None:
    model = LifelongClassifier(learner="nmc", features=("a", "b"))
    model.learn_one({"a": 1.0}, "left")  # "b" is known although this event lacks it
    model.learn_one({"b": 1.0}, "right")
    assert model._schema == ("a", "b")
    assert model.predict_one({"b": 2.0}) == "right" and model.predict_one({"a": 2.0}) == "left"


def test_bad_input_and_options_are_named() -> None:
    model = LifelongClassifier(learner="nmc")
    with pytest.raises(TypeError, match="text='colour'"):
        model.learn_one({"colour": "red", "a": 1.0}, True)
    assert model._schema is None  # the next event may still fix it
    with pytest.raises(ValueError, match="no features"):
        LifelongClassifier(learner="nmc").learn_one({"a": None}, True)
    with pytest.raises(TypeError, match="no option"):
        LifelongClassifier(learner="nmc", steps_per_batch=2)
    with pytest.raises(ValueError, match="learner must be"):
        LifelongClassifier(learner="forest")


# -- text -------------------------------------------------------------------------------------------------
def test_a_text_feature_goes_through_the_text_encoder(one_thread: None) -> None:
    train = [("what is my account balance", "balance"), ("how much money do i have", "balance"),
             ("freeze my credit card", "freeze"), ("block my card please", "freeze"),
             ("what's the weather tomorrow", "weather"), ("will it rain today", "weather")]
    model = LifelongClassifier(learner="nmc", text="text")
    for sentence, label in train:
        model.learn_one({"text": sentence, "id": 7}, label)  # other keys are ignored
    probe = ["how much is in my checking account", "lock my debit card", "is it going to be sunny"]
    assert [model.predict_one({"text": s}) for s in probe] == ["balance", "freeze", "weather"]
    twin = pickle.loads(pickle.dumps(model))
    assert twin.predict_proba_one({"text": probe[1]}) == model.predict_proba_one({"text": probe[1]})


def test_learn_one_queues_for_the_slow_learner_and_the_fast_expert_learns_at_once(one_thread: None) -> None:
    xs, ids = _blobs(50)
    small = {k: v for k, v in PARAMS["lifelong"].items() if k != "batch_size"}
    model = LifelongClassifier(batch_size=16, **small)
    for x, y in zip(xs[:40], ids[:40].tolist()):
        model.learn_one(x, y)
    slow = model._model.inner
    assert 0 < len(model._queued) < 16 and slow.events_learned + len(model._queued) == 40
    while len(model._queued) > 10:  # room in the queue for the next event
        model._flush()
    version, queued, before = slow.version, len(model._queued), model.predict_proba_one(xs[45])
    model.learn_one(xs[45], int(ids[45]))  # queued, not yet learned by the slow learner ...
    assert slow.version == version and len(model._queued) == queued + 1
    assert model.predict_proba_one(xs[45]) != before  # ... yet the prediction moved: the fast expert learned it
    model.learn_many(pd.DataFrame(xs[46:]), pd.Series(ids[46:].tolist()))
    assert model._queued == [] and slow.events_learned == 41 + 4  # the queue went first, in order


def test_learn_one_without_the_fast_expert_learns_each_event_as_a_micro_batch(one_thread: None) -> None:
    xs, ids = _blobs(20)
    small = {k: v for k, v in PARAMS["lifelong"].items() if k != "batch_size"}
    model = LifelongClassifier(fast_expert=False, **small)
    for x, y in zip(xs, ids.tolist()):
        model.learn_one(x, y)
    assert model._queued == [] and model._model.events_learned == model._model.version == 20


def test_the_default_learner_keeps_river_s_accuracy_on_phishing_one_event_at_a_time() -> None:
    """The issue's case as a River user runs it; 0.891 observed (river's LogisticRegression 0.893)."""
    model = preprocessing.StandardScaler() | LifelongClassifier()
    assert evaluate.progressive_val_score(datasets.Phishing(), model, metrics.Accuracy()).get() >= 0.88


# -- clone and pickle -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(PARAMS))
def test_pickled_copy_predicts_and_learns_like_the_original(variant: str, one_thread: None) -> None:
    xs, ids = _blobs(60)
    model = LifelongClassifier(**PARAMS[variant])
    for x, y in zip(xs[:30], ids[:30].tolist()):
        model.learn_one(x, y)
    twin = pickle.loads(pickle.dumps(model))
    assert twin._queued == model._queued
    assert twin.predict_proba_one(xs[0]) == model.predict_proba_one(xs[0])
    for x, y in zip(xs[30:], ids[30:].tolist()):
        model.learn_one(x, y)
        twin.learn_one(x, y)
    assert twin.predict_proba_one(xs[0]) == model.predict_proba_one(xs[0])
    fresh = model.clone()
    assert repr(fresh) == repr(model) and fresh.predict_one(xs[0]) is None
