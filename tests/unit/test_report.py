"""`lifelong report`: the evaluation log survives a checkpoint and becomes a plot and a summary."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifelong.monitoring.evaluator import ContinualEvaluator
from lifelong.monitoring.history import EvaluationLog
from lifelong.service.checkpoint import Checkpointer
from lifelong.cli import main


def test_log_is_bounded_and_round_trips() -> None:
    log = EvaluationLog(max_rows=5, max_marks=2)
    log.add(100, "serving", {0: 0.9, 1: float("nan")})
    log.add(200, "serving", {0: 0.8, 1: 0.5})
    log.add(300, "live", {0: 0.7, 1: 0.6, 2: 0.4})
    for e in (1, 2, 3):
        log.mark(e, "peak")
    assert log.marks == [(2, "peak"), (3, "peak")]
    x, y = log.series("serving")[0]
    assert x.tolist() == [200.0] and y.tolist() == [0.8]  # the oldest row went; NaN never stored
    twin = EvaluationLog()
    twin.load_state_dict(*log.state_dict())
    assert twin.series("live")[2][1].tolist() == [0.4] and twin.marks == log.marks


def write_checkpoint(folder: Path) -> None:
    evaluator = ContinualEvaluator(holdout_fraction=0.5, eval_every=1)
    evaluator.add_holdout(np.zeros((4, 2), np.float32), ["a", "a", "b", "b"])
    evaluator.open_segment(500)
    evaluator.add_holdout(np.ones((4, 2), np.float32), ["c", "c", "d", "d"])
    log = EvaluationLog()
    for events, accs in ((400, {0: 0.95}), (600, {0: 0.70, 1: 0.50}), (800, {0: 0.90, 1: 0.85})):
        log.add(events, "serving", accs)
    log.mark(500, "peak")
    Checkpointer(folder).save({"learner": ({}, {"events_learned": 800}), "evaluator": evaluator.state_dict(),
                               "eval_log": log.state_dict()}, {})


def test_report_writes_a_plot_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_checkpoint(tmp_path / "state")
    assert main(["report", "--checkpoint", str(tmp_path / "state"), "--out", str(tmp_path / "out")]) == 0
    png = (tmp_path / "out" / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    md = (tmp_path / "out" / "report.md").read_text()
    assert "800 events learned; 2 segments kept; 1 drift peaks" in md
    assert "| serving | 0 | 0 | 0.900 | 0.700 |" in md  # lowest after segment 0 ended at event 500
    assert "| serving | 1 | 500 | 0.850 | (current) |" in md


def test_report_without_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no checkpoint in"):
        main(["report", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
