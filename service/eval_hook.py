"""Wires the continual evaluator into the learning loop and exports its numbers.

Labelled events whose id hashes into the holdout fraction are kept for
evaluation instead of learned; drift peaks open segments; every
``eval_every`` learned events the serving (EMA) snapshot and the live learner
are scored on every segment's holdout.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from prometheus_client import Gauge

from ..learner.base import Learner, StepStats
from ..memory.tags import tags_of
from ..monitoring.evaluator import WINDOWS, ContinualEvaluator, ModelScores
from ..monitoring.history import EvaluationLog
from ..monitoring.metrics import Metrics
from .config import EvaluationSettings
from .snapshot import SnapshotHolder


def _set(gauge: Gauge, value: float | None, **labels: str) -> None:
    # NaN means "not defined yet" (no past segment, no drift): leave the series
    # absent rather than export NaN, so dashboards and alerts see no data.
    # (.labels() alone would create the series at 0, so only call it here.)
    if value is not None and math.isfinite(value):
        gauge.labels(**labels).set(value)


class EvaluationHook:
    def __init__(self, settings: EvaluationSettings, metrics: Metrics) -> None:
        self.metrics = metrics
        self.enabled = settings.holdout_fraction > 0
        self.evaluator = ContinualEvaluator(
            holdout_fraction=settings.holdout_fraction, per_segment_cap=settings.per_segment_cap,
            eval_every=settings.eval_every, class_absent_window=settings.class_absent_window)
        self.log = EvaluationLog()

    def hold_out(self, ids: Sequence[str], taps: np.ndarray, labels: Sequence[str],
                 sources: np.ndarray | None = None) -> np.ndarray:
        """Keep the hash-chosen events for evaluation (with the tags of their ids and ``sources``, the source tags,
        which a forget request matches); returns the mask of those to learn."""
        if not self.enabled:
            return np.ones(len(ids), bool)
        held = np.array([self.evaluator.route(i) for i in ids], bool)
        if held.any():
            index = np.flatnonzero(held)
            self.evaluator.add_holdout(taps[held], [labels[i] for i in index], tags_of(ids[i] for i in index),
                                       None if sources is None else np.asarray(sources, np.int64)[held])
            self.metrics.events_held_out.inc(int(held.sum()))
        return ~held

    def forget(self, tags: np.ndarray, sources: np.ndarray) -> int:
        """Remove held-out events of these id tags or source tags; returns how many went."""
        gone = self.evaluator.forget(tags, sources)
        if gone:
            self._export_holdout()
        return gone

    def _export_holdout(self) -> None:
        self.metrics.eval_holdout.set(sum(len(self.evaluator.holdout(i)[1]) for i in range(self.evaluator.n_segments)))

    def after_learn(self, stats: StepStats, labels: Sequence[str], learner: Learner, holder: SnapshotHolder) -> None:
        if not self.enabled:
            return
        self.evaluator.observe_labels(labels, learner.events_learned)
        for signal in stats.signals:
            if signal in ("peak", "consolidation"):
                self.log.mark(learner.events_learned, signal)
        if "peak" in stats.signals:
            self.evaluator.open_segment(learner.events_learned)
        if not self.evaluator.due(learner.events_learned):
            return
        serving = learner.snapshot()  # the model that would be served now (EMA weights)
        models = {"serving": lambda x: serving.predict_taps(x).labels,
                  "live": lambda x: learner.predict_taps(x).labels}
        for name, scores in self.evaluator.evaluate(models, learner.events_learned).items():  # type: ignore[arg-type]
            self._export(name, scores)
            self.log.add(learner.events_learned, name, self.evaluator.last_accuracies[name])
        self.metrics.evaluations.inc()
        self.metrics.eval_segments.set(self.evaluator.n_segments)
        self._export_holdout()

    def state_parts(self) -> dict[str, tuple[dict[str, np.ndarray], dict[str, object]]]:
        return {"evaluator": self.evaluator.state_dict(), "eval_log": self.log.state_dict()}

    def load_parts(self, parts: dict[str, tuple[dict[str, np.ndarray], dict[str, object]]]) -> None:
        if "evaluator" in parts:
            self.evaluator.load_state_dict(*parts["evaluator"])  # type: ignore[arg-type]
        if "eval_log" in parts:
            self.log.load_state_dict(*parts["eval_log"])  # type: ignore[arg-type]

    def _export(self, model: str, s: ModelScores) -> None:
        m = self.metrics
        _set(m.eval_current, s.current_accuracy, model=model)
        _set(m.eval_mean, s.mean_accuracy, model=model)
        _set(m.eval_min, s.min_acc, model=model)
        _set(m.eval_worst_case, s.wc_acc, model=model)
        for w in WINDOWS:
            _set(m.eval_forgetting, getattr(s, f"wf{w}_mean"), model=model, window=str(w), stat="mean")
            _set(m.eval_forgetting, getattr(s, f"wf{w}_max"), model=model, window=str(w), stat="max")
            _set(m.eval_plasticity, getattr(s, f"wp{w}"), model=model, window=str(w))
        _set(m.eval_past_class, s.past_class_accuracy, model=model)
        _set(m.eval_present_class, s.present_class_accuracy, model=model)
        if s.gaps:
            gap = s.gaps[-1]
            _set(m.gap_depth, gap.depth, model=model)
            recovery = gap.recovery if gap.recovery is not None else gap.evaluations
            _set(m.gap_recovery, float(recovery), model=model)
