"""ContinualEvaluator on streams with known boundaries and hand-computed scores."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from lifelong.memory.persistence import load_state, save_state
from lifelong.monitoring.evaluator import ContinualEvaluator, ModelScores

ITEMS = 10  # holdout items per segment; accuracies are multiples of 1/ITEMS


def items(segment: int, n: int = ITEMS) -> tuple[np.ndarray, list[str]]:
    """Holdout items whose single tap encodes (segment, index); the label names the segment."""
    return np.array([[segment * 1000 + i] for i in range(n)], dtype=np.float64), [f"s{segment}"] * n


class Scripted:
    """A predict function right on the first ``round(acc * n)`` items of each segment, wrong on the rest."""

    def __init__(self, n: int = ITEMS) -> None:
        self.n = n
        self.acc: dict[int, float] = {}

    def __call__(self, taps: np.ndarray) -> list[str]:
        out = []
        for tap in taps[:, 0].astype(int):
            seg, i = divmod(tap, 1000)
            out.append(f"s{seg}" if i < round(self.acc[seg] * self.n) else "wrong")
        return out


def run(ev: ContinualEvaluator, model: Scripted, plan: list, n: int = ITEMS) -> ModelScores:
    """Play ``plan``: ``("drift", segment)`` opens a segment and fills its holdout, a dict evaluates."""
    scores = None
    for step_no, step in enumerate(plan):
        if isinstance(step, tuple):
            ev.open_segment(at_event=1000 * step_no)
            ev.add_holdout(*items(step[1], n))
        else:
            model.acc = step
            scores = ev.evaluate({"m": model}, events_learned=500 * (step_no + 1))["m"]
    return scores


def fresh(n: int = ITEMS, **kwargs) -> ContinualEvaluator:
    ev = ContinualEvaluator(**kwargs)
    ev.add_holdout(*items(0, n))
    return ev


def test_gap_depth_recovery_min_acc_wc_acc_and_wp_by_hand() -> None:
    ev = fresh()
    s = run(ev, Scripted(), [{0: 0.6}, {0: 0.9}, ("drift", 1),
                             {0: 0.5, 1: 0.2}, {0: 0.7, 1: 0.6}, {0: 0.9, 1: 0.8}])
    assert s.current_accuracy == pytest.approx(0.8)
    assert s.mean_accuracy == pytest.approx(0.85)
    assert s.min_acc == pytest.approx(0.5)                       # segment 0's lowest since it ended
    assert s.wc_acc == pytest.approx(0.8 / 2 + 0.5 / 2)
    assert s.wf10_mean == s.wf10_max == pytest.approx(0.4)      # anchor 0.9 then 0.5
    assert s.wp10 == s.wp100 == pytest.approx(0.6)              # segment 1: 0.2 -> 0.8
    (gap,) = s.gaps
    assert (gap.at_event, gap.before, gap.depth) == (2000, pytest.approx(0.9), pytest.approx(0.4))
    assert gap.recovery == 3                                    # 0.5, 0.7, then 0.9 >= 0.9 - 0.02
    assert math.isnan(s.past_class_accuracy) and math.isnan(s.present_class_accuracy)


def test_gap_is_unrecovered_until_within_eps_and_then_frozen() -> None:
    ev, model = fresh(recovery_eps=0.05), Scripted()
    s = run(ev, model, [{0: 1.0}, ("drift", 1), {0: 0.6, 1: 0.5}, {0: 0.9, 1: 0.5}])
    assert s.gaps[0].recovery is None and s.gaps[0].depth == pytest.approx(0.4)
    model.acc = {0: 1.0, 1: 0.5}                                # 1.0 >= 1.0 - 0.05: recovered
    s = ev.evaluate({"m": model}, 5000)["m"]
    assert (s.gaps[0].recovery, s.gaps[0].evaluations) == (3, 3)
    model.acc = {0: 0.0, 1: 0.5}                                # later drops belong to no gap
    s = ev.evaluate({"m": model}, 5500)["m"]
    assert (s.gaps[0].depth, s.gaps[0].recovery, s.gaps[0].evaluations) == (pytest.approx(0.4), 3, 3)


def test_three_segments_wf_mean_and_max_min_acc_wc_acc_and_two_gaps() -> None:
    s = run(fresh(), Scripted(), [{0: 1.0}, ("drift", 1), {0: 0.8, 1: 1.0}, ("drift", 2),
                                  {0: 0.8, 1: 0.5, 2: 0.5}, {0: 0.6, 1: 0.9, 2: 0.6}])
    # Segment 0: anchor 1.0, then 0.8 0.8 0.6 -> drop 0.4, min 0.6.
    # Segment 1: anchor 1.0, then 0.5 0.9     -> drop 0.5, min 0.5.
    assert (s.wf10_mean, s.wf10_max) == (pytest.approx(0.45), pytest.approx(0.5))
    assert (s.wf100_mean, s.wf100_max) == (pytest.approx(0.45), pytest.approx(0.5))
    assert s.min_acc == pytest.approx(0.55)
    assert s.wc_acc == pytest.approx(0.6 / 3 + (2 / 3) * 0.55)
    assert s.wp10 == pytest.approx(0.1)
    first, second = s.gaps
    assert (first.before, first.depth, first.recovery) == (pytest.approx(1.0), pytest.approx(0.4), None)
    # Second drift: before = mean(0.8, 1.0); afterwards mean(0.8, 0.5) = 0.65, mean(0.6, 0.9) = 0.75.
    assert (second.before, second.depth, second.recovery) == (pytest.approx(0.9), pytest.approx(0.25), None)


def test_window_length_separates_wf10_from_wf100() -> None:
    # A slow decline of 0.05 per evaluation for 12 evaluations after the end: 1.0 -> 0.4.
    plan = [{0: 1.0}, ("drift", 1)] + [{0: 1.0 - 0.05 * k, 1: 1.0} for k in range(1, 13)]
    s = run(fresh(20), Scripted(20), plan, n=20)
    assert s.wf10_max == pytest.approx(9 * 0.05)               # 10 consecutive evaluations span 9 steps
    assert s.wf100_max == pytest.approx(0.6)                   # from the pre-drift anchor down to 0.4
    assert s.min_acc == pytest.approx(0.4)


def test_single_segment_has_no_past_scores() -> None:
    s = run(fresh(), Scripted(), [{0: 0.3}])
    assert s.wc_acc == s.current_accuracy == pytest.approx(0.3)
    assert all(math.isnan(v) for v in (s.min_acc, s.wf10_mean, s.wf100_max, s.wp10))
    assert s.gaps == ()


def test_route_fraction_and_stability() -> None:
    ev = ContinualEvaluator(holdout_fraction=0.05, seed=7)
    routed = [ev.route(f"evt-{i}") for i in range(20_000)]
    assert abs(np.mean(routed) - 0.05) < 0.006                  # 4 standard errors
    assert routed[:2000] == [ContinualEvaluator(seed=7).route(f"evt-{i}") for i in range(2000)]
    assert routed[:2000] != [ContinualEvaluator(seed=8).route(f"evt-{i}") for i in range(2000)]
    # Golden values: a changed hash would re-route held-out events into training after a restart.
    assert [i for i in range(300) if ev.route(f"evt-{i}")] == GOLDEN_ROUTED
    assert not any(ContinualEvaluator(holdout_fraction=0.0).route(f"evt-{i}") for i in range(5000))


GOLDEN_ROUTED = [27, 38, 67, 77, 119, 120, 135, 136, 148, 276, 278, 289, 293]


def test_reservoir_is_capped_and_samples_the_whole_segment() -> None:
    ev = ContinualEvaluator(per_segment_cap=50, seed=3)
    for start in range(0, 500, 37):
        n = min(37, 500 - start)
        ids = np.arange(start, start + n)
        ev.add_holdout(ids[:, None].astype(float), [f"c{i % 3}" for i in ids])
    taps, labels = ev.holdout()
    kept = taps[:, 0].astype(int)
    assert len(kept) == len(labels) == 50 and len(set(kept)) == 50
    assert labels == [f"c{i % 3}" for i in kept]                # taps and labels move together
    assert kept.max() >= 250 and kept.min() < 250               # not just the first 50


def test_closed_segment_holdouts_never_change() -> None:
    ev = ContinualEvaluator(per_segment_cap=20, seed=1)
    ev.add_holdout(*items(0, 30))
    ev.open_segment(100)
    before = ev.holdout(0)
    for k in range(5):
        ev.add_holdout(*items(1 + k, 30))                       # overflows segment 1's reservoir
    ev.evaluate({"m": lambda x: ["s0"] * len(x)}, 500)
    after = ev.holdout(0)
    np.testing.assert_array_equal(before[0], after[0])
    assert before[1] == after[1]
    assert len(ev.holdout(1)[1]) == 20


def test_due_every_eval_every_learned_events() -> None:
    ev = ContinualEvaluator(eval_every=500)
    assert not ev.due(499) and ev.due(500)
    ev.evaluate({}, 520)
    assert not ev.due(1019) and ev.due(1020)


def test_oldest_segment_is_dropped_and_empty_segments_are_not_kept() -> None:
    ev = fresh(max_segments=3)
    ev.open_segment(10)
    ev.open_segment(20)                                         # segment 1 still empty: restarted, not kept
    assert ev.n_segments == 2
    for seg in (1, 2, 3):
        ev.add_holdout(*items(seg))
        ev.open_segment(100 * seg)
    assert ev.n_segments == 3                                   # segments 2, 3 and the new empty one
    assert ev.holdout(0)[1] == ["s2"] * ITEMS


def test_class_based_past_and_present_accuracy() -> None:
    ev = ContinualEvaluator(class_absent_window=100)
    ev.observe_labels(["x", "y"], 50)
    ev.observe_labels(["y"], 180)
    ev.observe_labels(["w"], 100)                               # absent exactly W at 200: past
    labels = ["x"] * 4 + ["y"] * 5 + ["z"] * 2 + ["w"] * 2        # z was never learned: neither
    ev.add_holdout(np.arange(7, dtype=float)[:, None], labels[:7])
    ev.open_segment(150)
    ev.add_holdout(np.arange(7, 13, dtype=float)[:, None], labels[7:])
    right = {0, 1, 2, 4, 9, 10, 11}                             # x: 3 of 4, y: 1 of 5, z: 2 of 2, w: 1 of 2
    predict = lambda taps: [labels[int(t)] if int(t) in right else "?" for t in taps[:, 0]]  # noqa: E731
    s = ev.evaluate({"m": predict}, 200)["m"]
    assert s.past_class_accuracy == pytest.approx((3 + 1) / 6)
    assert s.present_class_accuracy == pytest.approx(1 / 5)


def _nan_equal(a: ModelScores, b: ModelScores) -> None:
    np.testing.assert_equal(dataclasses.astuple(a), dataclasses.astuple(b))


def test_state_round_trip_gives_identical_scores(tmp_path) -> None:
    ev, model = ContinualEvaluator(per_segment_cap=15, class_absent_window=300, seed=5), Scripted(25)
    ev.add_holdout(*items(0, 25))
    ev.observe_labels(["s0"], 100)
    run(ev, model, [{0: 0.9}, ("drift", 1), {0: 0.4, 1: 0.5}], n=25)   # reservoirs overflow
    ev.add_holdout(*items(1, 25))
    save_state(tmp_path / "ev", *ev.state_dict())               # safetensors + JSON, as checkpoints do
    twin = ContinualEvaluator(per_segment_cap=15, class_absent_window=300, seed=5)
    twin.load_state_dict(*load_state(tmp_path / "ev"))
    json.dumps(ev.state_dict()[1], allow_nan=False)             # strict JSON, no NaN in meta
    for step in range(3):
        model.acc = {0: 0.2 * step, 1: 0.3 + 0.2 * step}
        extra = items(1, 25)
        for e in (ev, twin):
            e.add_holdout(*extra)                               # same RNG state, same reservoir draws
        _nan_equal(ev.evaluate({"m": model}, 2000 + step)["m"], twin.evaluate({"m": model}, 2000 + step)["m"])
        if step == 1:
            ev.open_segment(2100)
            twin.open_segment(2100)
    np.testing.assert_array_equal(ev.holdout()[0], twin.holdout()[0])


def test_fixed_subset_keeps_min_acc_unbiased_where_redrawing_biases_it_down() -> None:
    """Items differ (each is right or wrong for good); the model never changes, so nothing is forgotten."""
    pool_size, subset, evaluations, p = 4000, 100, 30, 0.7
    fixed, redrawn = [], []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        right = rng.random(pool_size) < p
        truth = float(right.mean())
        predict = lambda taps: ["y" if right[int(t)] else "n" for t in taps[:, 0]]  # noqa: E731
        ev = ContinualEvaluator(per_segment_cap=subset, seed=seed)
        ev.add_holdout(np.arange(pool_size, dtype=float)[:, None], ["y"] * pool_size)
        ev.open_segment(pool_size)
        for k in range(evaluations):
            s = ev.evaluate({"m": predict}, 500 * (k + 1))["m"]
        kept = ev.holdout(0)[0][:, 0].astype(int)
        assert s.min_acc == pytest.approx(right[kept].mean())   # every evaluation saw the same items
        fixed.append(s.min_acc - truth)
        draws = [right[rng.choice(pool_size, subset, replace=False)].mean() for _ in range(evaluations)]
        redrawn.append(min(draws) - truth)
    # One subset's accuracy has a standard error of about 0.046, so 12 seeds average to within ~0.013.
    assert abs(np.mean(fixed)) < 0.03
    assert np.mean(redrawn) < -0.06                             # expected about -2 standard errors
