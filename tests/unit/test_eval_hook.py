"""The evaluation hook exports defined numbers only: no series at 0 for 'not defined yet'."""
from __future__ import annotations

import numpy as np

from lifelong.learner.continual import ContinualConfig, ContinualLearner
from lifelong.learner.encoders import FeatureEncoder
from lifelong.monitoring.metrics import Metrics
from lifelong.service.config import EvaluationSettings
from lifelong.service.eval_hook import EvaluationHook
from lifelong.service.snapshot import SnapshotHolder
from lifelong.stream.errors import REASONS


def test_undefined_scores_stay_absent_and_defined_ones_are_exported(metric) -> None:
    metrics = Metrics(REASONS)
    hook = EvaluationHook(EvaluationSettings(holdout_fraction=0.5, eval_every=50), metrics)
    learner = ContinualLearner(FeatureEncoder(4, warmup_events=0),
                               ContinualConfig(pq_m=0, steps_per_batch=1, replay_per_step=8))
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 3
    for i in range(12):
        y = rng.integers(0, 2, 20)
        taps = (centres[y] + rng.normal(0, 0.3, (20, 4))).astype(np.float32)
        ids, labels = [f"e{i}-{j}" for j in range(20)], [f"c{k}" for k in y]
        learn = hook.hold_out(ids, taps, labels)
        keep = np.flatnonzero(learn)
        stats = learner.learn_taps(taps[keep], [labels[k] for k in keep])
        hook.after_learn(stats, [labels[k] for k in keep], learner, SnapshotHolder())
    text = metrics.exposition().decode()
    assert metric(text, "lifelong_evaluations_total") >= 1
    assert metric(text, "lifelong_eval_current_accuracy", {"model": "serving"}) > 0.9
    assert metric(text, "lifelong_eval_current_accuracy", {"model": "live"}) > 0.9
    # One segment so far: min-ACC and forgetting are undefined and must not appear (not even as 0).
    assert 'lifelong_eval_min_accuracy{' not in text
    assert 'lifelong_eval_forgetting{' not in text
    assert metric(text, "lifelong_events_held_out_total") > 0
