"""The learning loop's outputs: dead letters and predictions to the sink, configured topics only,
counting without a sink, and a failed flush that holds back the checkpoint and the commit."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from lifelong.service.checkpoint import Checkpointer
from lifelong.stream.sinks import MemorySink, SinkError
from loop_harness import (
    CENTERS, PREDICTIONS, DEAD_LETTERS, labelled, stream_lines, write_lines, make_settings, Services,
    metrics_text, sent_to)


# -- outputs ---------------------------------------------------------------------------------------

def test_dead_letters_and_predictions_go_to_the_sink(tmp_path: Path, services: Services) -> None:
    rng = np.random.default_rng(1)
    lines: list[Any] = [labelled(i, rng) for i in range(30)]
    lines += ["{broken", {"id": "w", "features": [1, 2, 3], "label": "a"},
              {"id": "u-a", "features": CENTERS["a"]}, {"id": "u-c", "features": [0.1, 0.0, 4.7, 0.3]}]
    path = write_lines(tmp_path / "events.jsonl", lines)
    sink = MemorySink()
    service = services(make_settings(path, tmp_path / "state", source={"batch_size": 64}), sink=sink)
    assert service.loop.step() == 34

    dead = sent_to(sink, DEAD_LETTERS)
    assert [(m[1], m[2]) for m in dead] == [(b"{broken", None), (json.dumps(lines[31]).encode(), None)]
    assert dead[0][3] == [
        ("lifelong.reason", b"not_json"),
        ("lifelong.field", b""),
        ("lifelong.detail", dead[0][3][2][1]),
        ("lifelong.source.topic", b"events.jsonl"),
        ("lifelong.source.partition", b"0"),
        ("lifelong.source.offset", b"30"),
    ]
    headers = dict(dead[1][3])
    assert headers["lifelong.reason"] == b"wrong_dimension"
    assert headers["lifelong.field"] == b"features"
    assert headers["lifelong.detail"] == b"3 values, expected 4"
    assert headers["lifelong.source.offset"] == b"31"

    preds = sent_to(sink, PREDICTIONS)
    assert [m[2] for m in preds] == [b"u-a", b"u-c"]  # keyed by event id
    assert all(m[3] == [] for m in preds)
    values = [json.loads(m[1]) for m in preds]
    version = service.learner.version
    assert values[0]["id"] == "u-a" and values[0]["label"] == "a"
    assert values[1]["id"] == "u-c" and values[1]["label"] == "c"
    assert all(v["model_version"] == version and 0.0 < v["score"] <= 1.0 for v in values)
    assert len(sink.sent) == 4
    assert len(service.loop.join.pending) == 2


@pytest.mark.parametrize("outputs, want_topics", [
    ({"predictions_topic": None, "dead_letter_topic": None}, []),
    ({"predictions_topic": None}, [DEAD_LETTERS]),
    ({"dead_letter_topic": None}, [PREDICTIONS]),
    ({"predictions_topic": "preds", "dead_letter_topic": "dlq"}, ["dlq", "preds"]),
])
def test_outputs_are_sent_only_to_configured_topics(tmp_path: Path, services: Services,
                                                    outputs: dict[str, Any], want_topics: list[str]) -> None:
    rng = np.random.default_rng(2)
    lines: list[Any] = [labelled(i, rng) for i in range(6)] + ["nope", {"id": "u", "features": CENTERS["b"]}]
    path = write_lines(tmp_path / "events.jsonl", lines)
    sink = MemorySink()
    service = services(make_settings(path, tmp_path / "state", outputs=outputs), sink=sink)
    service.loop.step()
    assert [m[0] for m in sink.sent] == want_topics
    # counted and parked for a label whatever is configured
    assert service.loop.counters.rejected == 1
    assert "u" in service.loop.join.pending


def test_without_a_sink_nothing_is_sent_but_everything_is_counted(tmp_path: Path, services: Services) -> None:
    rng = np.random.default_rng(3)
    path = write_lines(tmp_path / "events.jsonl", [labelled(i, rng) for i in range(6)] + ["nope"])
    service = services(make_settings(path, tmp_path / "state"))  # file source: build_sink gives None
    service.loop.step()
    assert service.loop.sink is None
    assert service.loop.counters.rejected == 1


class FlakySink(MemorySink):
    def __init__(self) -> None:
        super().__init__()
        self.failing = True
        self.flushes = 0

    def flush(self, timeout_s: float) -> None:
        self.flushes += 1
        if self.failing:
            raise SinkError("broker away")


def test_a_failed_flush_postpones_the_checkpoint_and_the_commit(tmp_path: Path, services: Services,
                                                                metric: Callable[..., float]) -> None:
    path = write_lines(tmp_path / "events.jsonl", stream_lines())
    sink = FlakySink()
    service = services(make_settings(path, tmp_path / "state"), sink=sink)
    service.loop.step()
    service.loop.step()  # due: the flush fails
    assert sink.flushes == 1
    assert service.loop.counters.checkpoints == 0
    assert Checkpointer(tmp_path / "state").load() is None
    assert service.loop.source.committed == 0  # type: ignore[attr-defined]
    assert metric(metrics_text(service), "lifelong_checkpoint_failures_total") == 1.0
    sink.failing = False
    service.loop.step()  # still due: retried
    assert service.loop.counters.checkpoints == 1
    assert service.loop.source.committed == 24  # type: ignore[attr-defined]
    ckpt = Checkpointer(tmp_path / "state").load()
    assert ckpt is not None and ckpt.offsets == service.loop.positions
    assert metric(metrics_text(service), "lifelong_checkpoints_total") == 1.0


def test_a_failed_checkpoint_write_keeps_the_loop_going_and_is_retried(tmp_path: Path, services: Services,
                                                                       metric: Callable[..., float],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from lifelong.service.checkpoint import CheckpointWriteError

    path = write_lines(tmp_path / "events.jsonl", stream_lines())
    service = services(make_settings(path, tmp_path / "state"))
    ckpt = service.loop.checkpointer
    assert ckpt is not None
    real_save = ckpt.save

    def full_disk(*args: object, **kwargs: object) -> object:
        raise CheckpointWriteError("could not write a checkpoint: [Errno 28] No space left on device")

    monkeypatch.setattr(ckpt, "save", full_disk)
    service.loop.step()
    service.loop.step()  # due: the write fails
    assert service.loop.counters.checkpoints == 0
    assert service.loop.source.committed == 0  # type: ignore[attr-defined]
    assert metric(metrics_text(service), "lifelong_checkpoint_failures_total") == 1.0
    learned = service.loop.counters.learned
    service.loop.step()  # still learning meanwhile
    assert service.loop.counters.learned > learned
    monkeypatch.setattr(ckpt, "save", real_save)
    ckpt._failed_at = None  # type: ignore[attr-defined]  # do not wait out the retry pause in a test
    service.loop.step()
    assert service.loop.counters.checkpoints == 1
    assert service.loop.source.committed == service.loop.positions[("events.jsonl", 0)]  # type: ignore[attr-defined]
