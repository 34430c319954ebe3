"""Online-LoRA adapter maths, the loss-window drift rule, ADWIN, and consolidation inside the learner."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lifelong.learner.continual import ContinualConfig, ContinualLearner
from lifelong.learner.drift import LossWindow, RiverDetector
from lifelong.learner.encoders import FeatureEncoder
from lifelong.learner.lora import LoRALinear

DIM = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- LoRALinear --------------------------------------------------------------------------------
def test_a_fresh_pair_changes_nothing() -> None:
    weight = randn(6, 8, seed=1)
    layer = LoRALinear(weight, rank=4, alpha=8.0, seed=0)
    assert layer.scale == 2.0
    assert torch.count_nonzero(layer.B) == 0 and torch.count_nonzero(layer.A) == layer.A.numel()
    assert layer.A.abs().max() <= 1 / math.sqrt(8)  # uniform(-1/sqrt(in), 1/sqrt(in))
    x = randn(20, 8, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ weight.T, rtol=0, atol=0)
        torch.testing.assert_close(layer.effective_weight(), weight, rtol=0, atol=0)
    weight.add_(1.0)  # the layer keeps its own copy
    assert not torch.equal(layer.frozen, weight)


def test_the_same_seed_draws_the_same_pair() -> None:
    a, b = LoRALinear(torch.eye(8), rank=2, seed=7), LoRALinear(torch.eye(8), rank=2, seed=7)
    assert torch.equal(a.A, b.A)
    assert not torch.equal(a.A, LoRALinear(torch.eye(8), rank=2, seed=8).A)


def test_merge_keeps_outputs_and_starts_a_fresh_pair() -> None:
    layer = LoRALinear(randn(6, 8, seed=1), rank=4, alpha=8.0, seed=0)
    with torch.no_grad():
        layer.B.copy_(randn(6, 4, seed=3))  # as if trained
    x = randn(50, 8, seed=2)
    with torch.no_grad():
        before, weight = layer(x), layer.effective_weight()
        old_a = layer.A.detach().clone()
    layer.merge()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), before, rtol=0, atol=1e-5)
        torch.testing.assert_close(layer.effective_weight(), weight, rtol=0, atol=1e-6)
        torch.testing.assert_close(layer.frozen, weight, rtol=0, atol=1e-6)
    assert torch.count_nonzero(layer.B) == 0
    assert not torch.equal(layer.A, old_a)
    assert layer.merges == 1


def test_fold_importance_is_a_running_average() -> None:
    layer = LoRALinear(torch.eye(3), rank=1, seed=0)
    fisher = [(torch.full((1, 3), v), torch.full((3, 1), 10 * v)) for v in (3.0, 6.0, 0.0)]
    expected_a = [3.0, 4.5, 3.0]  # 3; (3 + 6) / 2; (3 + 6 + 0) / 3
    for n, ((fa, fb), want) in enumerate(zip(fisher, expected_a), start=1):
        layer.fold_importance(fa, fb)
        assert layer.plateaus == n
        torch.testing.assert_close(layer.omega_A, torch.full((1, 3), want))
        torch.testing.assert_close(layer.omega_B, torch.full((3, 1), 10 * want))
    assert layer.merges == 0  # folding is not merging


def test_adapter_state_round_trip_continues_identically() -> None:
    layer = LoRALinear(randn(3, 3, seed=1), rank=2, seed=4)
    layer.fold_importance(torch.ones(2, 3), torch.ones(3, 2))
    layer.merge()
    arrays, meta = layer.state_dict()
    twin = LoRALinear(torch.eye(3), rank=2, seed=99)
    twin.load_state_dict({k: v.copy() for k, v in arrays.items()}, json.loads(json.dumps(meta)))
    assert (twin.plateaus, twin.merges) == (layer.plateaus, layer.merges) == (1, 1)
    for name in ("frozen", "A", "B", "omega_A", "omega_B"):
        torch.testing.assert_close(getattr(twin, name), getattr(layer, name), rtol=0, atol=0)
    layer.merge()
    twin.merge()  # the next fresh pair comes from the restored generator
    torch.testing.assert_close(twin.A, layer.A, rtol=0, atol=0)


def test_penalty_by_hand() -> None:
    layer = LoRALinear(torch.eye(2), rank=1, seed=0)
    assert layer.penalty().item() == 0.0  # no importance yet
    with torch.no_grad():
        layer.A.copy_(torch.tensor([[1.0, 2.0]]))
        layer.B.copy_(torch.tensor([[3.0], [4.0]]))
        layer.omega_A.copy_(torch.tensor([[0.5, 1.0]]))
        layer.omega_B.copy_(torch.tensor([[2.0], [0.0]]))
    # 0.5 * ((0.5 * 1 + 1 * 4) + (2 * 9 + 0 * 16)) = 0.5 * 22.5
    assert layer.penalty().item() == pytest.approx(11.25)
    layer.penalty().backward()
    torch.testing.assert_close(layer.A.grad, torch.tensor([[0.5, 2.0]]))  # omega * theta
    torch.testing.assert_close(layer.B.grad, torch.tensor([[6.0], [0.0]]))


# -- LossWindow ----------------------------------------------------------------------------------
# Normalised losses, window 3 (plateau: mean < 0.35 and var < 0.01 after a peak; peak: mean above the
# last plateau's mean + max(std, 0.05)). By hand:
#   step 3 mean 1.5, 4: 1.0, 5: 0.6, 6: 0.367 -> nothing (the start counts as a peak, but mean >= 0.35)
#   step 7 [.3 .3 .3] mean 0.3, var 0           -> plateau (reference 0.3 +- 0)
#   step 8 [.3 .3 .3]                            -> nothing (no peak since the plateau)
#   step 9 [.3 .3 1.5] mean 0.7 > 0.3 + 0.05    -> peak
#   steps 10-13 mean 1.1, 1.5, 1.1, 0.7         -> nothing
#   step 14 [.3 .3 .3]                           -> plateau
#   step 15                                      -> nothing
SEQUENCE = [2.0, 1.5, 1.0, 0.5, 0.3, 0.3, 0.3, 0.3, 1.5, 1.5, 1.5, 0.3, 0.3, 0.3, 0.3]
EXPECTED = [("plateau", 7, 0.3), ("peak", 9, 0.7), ("plateau", 14, 0.3)]


def feed(window: LossWindow, values: list[float], n_classes: int = 4) -> list[tuple[str, int, float]]:
    events = []
    for v in values:
        event = window.update(v * math.log(n_classes), n_classes)  # normalises back to v
        if event is not None:
            events.append((event.kind, event.at_step, event.window_mean))
    return events


def test_normalise_divides_by_log_classes() -> None:
    assert LossWindow.normalise(math.log(4), 4) == pytest.approx(1.0)
    assert LossWindow.normalise(3.0, 150) == pytest.approx(3.0 / math.log(150))
    assert LossWindow.normalise(1.0, 1) == LossWindow.normalise(1.0, 0) == pytest.approx(1 / math.log(2))


def test_loss_window_raises_plateau_peak_plateau() -> None:
    window = LossWindow(window=3, plateau_mean=0.35, plateau_var=0.01)
    events = feed(window, SEQUENCE)
    assert [(k, s) for k, s, _ in events] == [(k, s) for k, s, _ in EXPECTED]
    for (_, _, mean), (_, _, want) in zip(events, EXPECTED):
        assert mean == pytest.approx(want)
    assert window.steps == len(SEQUENCE)
    assert window.mean == pytest.approx(0.3) and window.var == pytest.approx(0.0)


def test_no_event_before_the_window_fills_or_on_a_noisy_low_mean() -> None:
    window = LossWindow(window=3, plateau_mean=0.35, plateau_var=0.01)
    assert feed(window, [0.0, 0.0]) == []
    assert math.isnan(window.mean)
    # Mean 0.2 but variance 0.08: not a plateau.
    assert feed(LossWindow(window=3), [0.0, 0.6, 0.0, 0.6, 0.0]) == []


def test_loss_window_state_round_trip() -> None:
    for cut in (4, 8, 10):  # before the first plateau (reference still infinite), after it, after the peak
        window = LossWindow(window=3)
        head = feed(window, SEQUENCE[:cut])
        twin = LossWindow(window=3)
        twin.load_state_dict(json.loads(json.dumps(window.state_dict())))  # the state goes into JSON meta
        rest = feed(window, SEQUENCE[cut:])
        assert feed(twin, SEQUENCE[cut:]) == rest
        assert [e[:2] for e in head + rest] == [e[:2] for e in EXPECTED]


# -- RiverDetector ---------------------------------------------------------------------------------
def test_adwin_flags_an_abrupt_rise_in_errors() -> None:
    rng = np.random.default_rng(0)
    detector = RiverDetector()
    for _ in range(40):
        assert detector.update(np.zeros(25)) is None  # 1,000 correct predictions
    events = [detector.update(rng.random(25) < 0.6) for _ in range(20)]  # then 60% errors
    flagged = [e for e in events if e is not None]
    assert flagged and flagged[0].kind == "adwin"
    assert flagged[0].at_step <= 45  # within five batches of the change


def test_adwin_is_quiet_on_a_stable_stream() -> None:
    rng = np.random.default_rng(1)
    detector = RiverDetector()
    assert all(detector.update(rng.random(25) < 0.2) is None for _ in range(80))
    assert detector.steps == 80


def drifting_errors(seed: int) -> list[np.ndarray]:
    """Batches of 0/1 errors whose rate changes twice, so ADWIN flags (and restarts its window)."""
    rng = np.random.default_rng(seed)
    return [rng.random(25) < rate for rate in [0.1] * 30 + [0.7] * 15 + [0.05] * 30 + [0.5] * 20]


@pytest.mark.parametrize("cut", [10, 40, 44, 70])
def test_adwin_state_round_trip_gives_the_same_later_signals(cut: int) -> None:
    batches = drifting_errors(seed=2)
    detector = RiverDetector()
    for errors in batches[:cut]:
        detector.update(errors)
    arrays, meta = detector.state_dict()
    twin = RiverDetector()
    twin.load_state_dict(arrays, json.loads(json.dumps(meta)))
    def signals(d: RiverDetector) -> list[tuple[int, float] | None]:  # (window_var is NaN: not comparable)
        return [None if (e := d.update(errors)) is None else (e.at_step, e.window_mean) for errors in batches[cut:]]

    later = signals(detector)
    assert signals(twin) == later
    assert sum(e is not None for e in later) >= 1
    assert twin.steps == detector.steps == len(batches)


def test_adwin_state_keeps_only_the_errors_since_its_window_restarted() -> None:
    detector = RiverDetector()
    for errors in drifting_errors(seed=2)[:60]:  # past the first flag
        detector.update(errors)
    _, meta = detector.state_dict()
    assert 0 < meta["errors"] < 60 * 25


def test_adwin_state_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RiverDetector, "MAX_REPLAY", 100)
    detector = RiverDetector()
    for _ in range(50):
        detector.update(np.zeros(25))  # no drift: the window only grows
    arrays, meta = detector.state_dict()
    assert meta["errors"] == 100 and arrays["errors"].nbytes == 13


# -- consolidation inside ContinualLearner ------------------------------------------------------------
CENTRES = 3.0 * np.random.default_rng(1).normal(size=(4, DIM))


def learner() -> ContinualLearner:
    config = ContinualConfig(memory_budget_bytes=200_000, pq_m=0, steps_per_batch=2, replay_per_step=32, seed=0)
    return ContinualLearner(FeatureEncoder(DIM, warmup_events=0), config)


def phase_batch(rng: np.random.Generator, centres: list[int], labels: list[str], n: int = 20
                ) -> tuple[np.ndarray, list[str]]:
    pick = rng.integers(0, len(centres), n)
    return CENTRES[np.asarray(centres)[pick]] + rng.normal(0.0, 1.0, (n, DIM)), [labels[i] for i in pick]


def test_consolidation_on_two_phases() -> None:
    """Labels a and b move to new centres halfway: a loss peak, then a second plateau that consolidates."""
    rng = np.random.default_rng(0)
    model = learner()
    signals = []
    for i in range(36):
        stats = model.learn_many(*phase_batch(rng, [0, 1] if i < 12 else [2, 3], ["a", "b"]))
        signals.append(stats.signals)
    phase1, phase2 = signals[:12], signals[12:]
    assert any("consolidation" in s for s in phase1)  # the start of the stream counts as a shift
    assert "peak" in phase2[0]  # the first batch after the move
    assert "release" in phase2[0]  # no new class came with it: the consolidated importance lets go
    assert any("consolidation" in s for s in phase2[1:])
    for s in signals:
        assert ("consolidation" in s) == ("plateau" in s)  # every plateau consolidates (LoRA on, hard buffer full)
    assert model.adapter.merges == sum("consolidation" in s for s in signals) == 2
    assert model.adapter.plateaus == 1  # gathered again since the release


def test_a_merge_does_not_change_live_or_served_predictions() -> None:
    rng = np.random.default_rng(0)
    model = learner()
    for i in range(18):  # mid-way through the second phase: the pair has trained since the last merge
        model.learn_many(*phase_batch(rng, [0, 1] if i < 12 else [2, 3], ["a", "b"]))
    assert model.adapter.B.abs().max().item() > 0.01
    probe = torch.from_numpy(model.encode(phase_batch(rng, [0, 1, 2, 3], ["a", "b", "c", "d"], n=64)[0]))
    served = model.snapshot().predict_taps(probe.numpy())
    merges = model.adapter.merges
    with torch.no_grad():
        before, weight = model._logits(probe), model.adapter.effective_weight()
    model._consolidate()
    with torch.no_grad():
        torch.testing.assert_close(model._logits(probe), before, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.adapter.effective_weight(), weight, rtol=0, atol=1e-5)
    assert model.adapter.merges == merges + 1
    assert torch.count_nonzero(model.adapter.B) == 0
    after = model.snapshot().predict_taps(probe.numpy())
    assert after.labels == served.labels
    np.testing.assert_array_equal(after.scores, served.scores)  # the EMA is not touched by a merge
    stats = model.learn_many(*phase_batch(rng, [2, 3], ["a", "b"]))  # and learning goes on
    assert stats.correct.mean() > 0.5


def test_a_phase_of_new_classes_raises_a_peak() -> None:
    rng = np.random.default_rng(0)
    model = learner()
    signals, losses = [], []
    for i in range(30):
        phase = ([0, 1], ["a", "b"]) if i < 12 else ([2, 3], ["c", "d"])
        stats = model.learn_many(*phase_batch(rng, *phase))
        signals.append(stats.signals)
        losses.append(stats.loss)
    assert losses[12] > 0.5  # every event of the first phase-2 batch is of a class never seen
    assert any("peak" in s for s in signals[12:])
    assert model.adapter.merges >= 2
    assert not any("release" in s for s in signals)  # new classes: what was consolidated stays protected
    assert model.adapter.plateaus == model.adapter.merges


def relabelled_run(release: bool) -> tuple[ContinualLearner, list[tuple[str, ...]], float]:
    """Same inputs throughout; halfway a and b swap (real drift: known classes change meaning)."""
    rng = np.random.default_rng(0)
    model = ContinualLearner(FeatureEncoder(DIM, warmup_events=0), ContinualConfig(
        memory_budget_bytes=200_000, pq_m=0, steps_per_batch=2, replay_per_step=32, seed=0,
        release_importance=release))
    signals = []
    for i in range(24):
        stats = model.learn_many(*phase_batch(rng, [0, 1], ["a", "b"] if i < 12 else ["b", "a"]))
        signals.append(stats.signals)
    x, y = phase_batch(rng, [0, 1], ["b", "a"], n=400)
    accuracy = float(np.mean(np.array(model.predict_many(x).labels) == np.array(y)))
    return model, signals, accuracy


def test_a_peak_without_a_new_class_releases_the_importance() -> None:
    model, signals, _ = relabelled_run(release=True)
    at = next(i for i, s in enumerate(signals) if "release" in s)
    assert at >= 12 and "peak" in signals[at]  # at the swap's peak, after a consolidation of a and b
    assert any("consolidation" in s for s in signals[:12])
    assert model.consolidated == frozenset({"a", "b"})
    kept, kept_signals, _ = relabelled_run(release=False)
    assert not any("release" in s for s in kept_signals)
    assert kept.adapter.plateaus == kept.adapter.merges  # never released: every plateau's estimate averaged in


def test_a_released_learner_restores_what_it_consolidated() -> None:
    model, _, _ = relabelled_run(release=True)
    arrays, meta = model.state_dict()
    assert meta["consolidated"] == ["a", "b"]
    twin = ContinualLearner(FeatureEncoder(DIM, warmup_events=0), model.config)
    twin.load_state_dict(arrays, meta)
    assert twin.consolidated == model.consolidated
    del meta["consolidated"]  # a state saved before releasing existed: nothing to release until a plateau
    twin.load_state_dict(arrays, meta)
    assert twin.consolidated is None and not twin._relabelled()


def test_release_drops_importance_and_keeps_the_weights() -> None:
    layer = LoRALinear(torch.eye(4), rank=2, seed=0)
    layer.fold_importance(torch.ones(2, 4), torch.ones(4, 2))
    with torch.no_grad():
        layer.B.fill_(0.5)
    weight, merges = layer.effective_weight().clone(), layer.merges
    assert layer.penalty().item() > 0
    layer.release()
    assert layer.penalty().item() == 0 and layer.plateaus == 0 and layer.merges == merges
    torch.testing.assert_close(layer.effective_weight(), weight)
    layer.fold_importance(torch.full((2, 4), 3.0), torch.full((4, 2), 3.0))  # the next plateau starts the average anew
    assert layer.omega_A.max().item() == 3.0
