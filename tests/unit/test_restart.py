"""Restart semantics: checkpoint, crash, restore, replay; outputs; revokes.

A "crash" is dropping a Service without a checkpoint; the next Service with
the same settings restores the checkpoint and re-reads the file from its
offsets. The test hook ``debug.track_learned_ids`` counts how often each id
was learned in the state that survives.
"""
from __future__ import annotations

import gc
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lifelong.service.checkpoint import Checkpointer
from lifelong.service.config import Settings
from lifelong.service.runtime import Service, build_source
from lifelong.stream.sinks import MemorySink, SinkError
from lifelong.stream.sources import FileSource

DIM = 4
CENTERS = {"a": [5.0, 0.0, 0.0, 0.0], "b": [0.0, 5.0, 0.0, 0.0], "c": [0.0, 0.0, 5.0, 0.0]}
PROBE = np.array([[4.0, 0.5, 0.0, 0.0], [0.0, 4.5, 1.0, 0.0], [0.5, 0.0, 4.0, 1.0], [1.0, 1.0, 1.0, 1.0]],
                 np.float32)
PREDICTIONS = "lifelong-predictions"
DEAD_LETTERS = "lifelong-dead-letters"


def labelled(i: int, rng: np.random.Generator) -> dict[str, Any]:
    label = "abc"[i % 3]
    x = np.array(CENTERS[label]) + rng.normal(0, 0.4, DIM)
    return {"id": f"e{i}", "features": [round(float(v), 4) for v in x], "label": label}


def stream_lines(n: int = 60, seed: int = 0) -> list[Any]:
    """``n`` labelled events with unlabelled events, bad records and a true duplicate mixed in."""
    rng = np.random.default_rng(seed)
    lines: list[Any] = [labelled(i, rng) for i in range(n)]
    extras: list[tuple[int, Any]] = [
        (3, "this is not json"),
        (9, {"id": "u0", "features": CENTERS["a"]}),
        (13, {"id": "w", "features": [1, 2, 3], "label": "a"}),          # wrong dimension
        (22, {"id": "u1", "features": [0.2, 4.8, 0.1, 0.0]}),
        (27, {"id": "e2", "features": [9, 9, 9, 9], "label": "c"}),        # duplicate of a checkpointed id
        (33, {"id": "t", "text": "hello", "label": "b"}),                  # wrong input kind
        (41, {"id": "e15", "features": [1, 1, 1, 1], "label": "a"}),       # duplicate of a replayed id
        (50, {"id": "u2", "features": [0.0, 0.3, 5.1, 0.0]}),
        (58, ""),                                                          # blank: skipped, still a line
        (62, {"id": "u3", "features": [4.9, 0.2, 0.0, 0.1]}),
    ]
    for at, line in extras:
        lines.insert(at, line)
    return lines


def valid_labelled_ids(lines: list[Any]) -> list[str]:
    seen: set[str] = set()
    out = []
    for line in lines:
        if isinstance(line, dict) and "label" in line and len(line.get("features") or []) == DIM:
            if line["id"] not in seen:
                out.append(line["id"])
            seen.add(line["id"])
    return out


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def make_settings(path: Path, ckpt_dir: Path | None, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "source": {"kind": "file", "path": str(path), "batch_size": 8, "poll_timeout_s": 0.001},
        "learner": {"name": "nmc", "input_kind": "features", "feature_dim": DIM, "feature_warmup_events": 20},
        "evaluation": {"holdout_fraction": 0.0},
        "checkpoint": {"dir": str(ckpt_dir) if ckpt_dir else None, "every_s": 3600.0, "every_events": 16},
        "debug": {"track_learned_ids": True},
        "publish_every_events": 1,
    }
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return Settings(**base)


class Services:
    """Builds services and closes their sources at the end of a test."""

    def __init__(self) -> None:
        self.made: list[Service] = []

    def __call__(self, settings: Settings, **kwargs: Any) -> Service:
        service = Service(settings, **kwargs)
        self.made.append(service)
        return service

    def close(self) -> None:
        for service in self.made:
            service.loop.close()


@pytest.fixture
def services() -> Iterator[Services]:
    made = Services()
    yield made
    made.close()


def run_to_end(service: Service, max_steps: int = 200) -> None:
    for _ in range(max_steps):
        service.loop.step()
        if service.loop.source.exhausted:
            return
    raise AssertionError("source never exhausted")


def crash(service: Service) -> None:
    """Lose everything since the last checkpoint (the file handle is closed, nothing is saved)."""
    service.loop.close()


def probe_scores(service: Service) -> tuple[np.ndarray, list[str | None], int]:
    snap = service.holder.current
    assert snap is not None
    preds = snap.predict_many(PROBE)
    return preds.scores.copy(), list(preds.labels), preds.model_version


def metrics_text(service: Service) -> str:
    return service.metrics.exposition().decode()


def sent_to(sink: MemorySink, topic: str) -> list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]]:
    return [m for m in sink.sent if m[0] == topic]


def predictions_by_id(sink: MemorySink) -> dict[str, dict[str, Any]]:
    return {json.loads(m[1])["id"]: json.loads(m[1]) for m in sent_to(sink, PREDICTIONS)}


def assert_same_learner_state(got: Service, want: Service) -> None:
    got_arrays, got_meta = got.learner.state_dict()
    want_arrays, want_meta = want.learner.state_dict()
    assert got_meta == want_meta
    assert set(got_arrays) == set(want_arrays)
    for key in want_arrays:
        np.testing.assert_array_equal(got_arrays[key], want_arrays[key], err_msg=key)


# -- crash and restore -------------------------------------------------------------------------------

@pytest.mark.parametrize("source_from", ["service", "build_source"])
def test_crash_after_a_checkpoint_then_restore_learns_every_event_exactly_once(
        tmp_path: Path, services: Services, source_from: str) -> None:
    lines = stream_lines()
    path = write_lines(tmp_path / "events.jsonl", lines)
    expected_ids = valid_labelled_ids(lines)
    settings = make_settings(path, tmp_path / "state")

    # the reference: the whole file, no crash
    ref_sink = MemorySink()
    ref = services(make_settings(path, tmp_path / "ref-state"), sink=ref_sink)
    assert ref.restored is False
    run_to_end(ref)

    # learn part of the file; a checkpoint after 16 records; 8 more records learned, not saved
    sink1 = MemorySink()
    first = services(settings, sink=sink1)
    assert first.restored is False
    first.loop.step()
    assert first.loop.counters.checkpoints == 0
    first.loop.step()
    assert first.loop.counters.checkpoints == 1
    checkpointed_events = first.learner.events_learned
    checkpointed_positions = dict(first.loop.positions)
    assert checkpointed_positions == {("events.jsonl", 0): 16}
    first.loop.step()
    assert first.loop.counters.checkpoints == 1
    assert first.learner.events_learned > checkpointed_events
    crash(first)
    del first

    sink2 = MemorySink()
    if source_from == "service":
        second = services(settings, sink=sink2)
    else:
        ckpt = Checkpointer(tmp_path / "state").load()
        assert ckpt is not None
        source = build_source(settings, ckpt.offsets, lambda partitions: None)
        assert isinstance(source, FileSource)
        second = services(settings, source=source, sink=sink2)
    assert second.restored is True
    assert second.loop.positions == checkpointed_positions
    assert second.learner.events_learned == checkpointed_events
    assert second.loop.counters.learned == checkpointed_events
    run_to_end(second)

    learned = second.loop.learned_ids
    assert learned is not None
    assert dict(learned) == {event_id: 1 for event_id in expected_ids}
    assert second.learner.events_learned == len(expected_ids) == 60
    assert ref.loop.learned_ids == learned

    # the same model as without the crash, bit for bit
    assert_same_learner_state(second, ref)
    got_scores, got_labels, got_version = probe_scores(second)
    want_scores, want_labels, want_version = probe_scores(ref)
    np.testing.assert_array_equal(got_scores, want_scores)
    assert got_labels == want_labels == ["a", "b", "c", got_labels[3]]
    assert got_version == want_version
    assert second.loop.prequential.state_dict()["pos"].tolist() == ref.loop.prequential.state_dict()["pos"].tolist()
    assert second.loop.validator.recent_ids.state_dict() == ref.loop.validator.recent_ids.state_dict()

    # outputs are at-least-once: what was sent before and after the crash covers the reference,
    # and an event predicted on both sides of the crash got the same prediction
    before, after, want = predictions_by_id(sink1), predictions_by_id(sink2), predictions_by_id(ref_sink)
    assert set(want) == {"u0", "u1", "u2", "u3"}
    assert {**before, **after} == want
    assert set(before) & set(after) == {"u1"}  # read after the checkpoint, before the crash
    for event_id in set(before) & set(after):
        assert before[event_id] == after[event_id]
    ref_rejects = [(m[3][0][1], m[1]) for m in sent_to(ref_sink, DEAD_LETTERS)]
    rejects = {(m[3][0][1], m[1]) for m in sent_to(sink1, DEAD_LETTERS) + sent_to(sink2, DEAD_LETTERS)}
    assert rejects == set(ref_rejects)
    assert sorted(r for r, _ in ref_rejects) == sorted(
        [b"not_json", b"wrong_dimension", b"duplicate_id", b"wrong_input_kind", b"duplicate_id"])


def test_restart_after_a_clean_end_learns_nothing_twice(tmp_path: Path, services: Services) -> None:
    lines = stream_lines()
    path = write_lines(tmp_path / "events.jsonl", lines)
    settings = make_settings(path, tmp_path / "state")
    first = services(settings)
    run_to_end(first)
    assert first.loop.checkpoint()
    learned = first.learner.events_learned
    scores = probe_scores(first)[0]
    crash(first)

    second = services(settings)
    assert second.restored
    run_to_end(second)
    assert second.learner.events_learned == learned
    assert second.loop.learned_ids is not None and set(second.loop.learned_ids.values()) == {1}
    np.testing.assert_array_equal(probe_scores(second)[0], scores)
    assert second.loop.counters.rejected == 0  # nothing was re-read


def test_the_restored_snapshot_predicts_like_the_checkpointed_learner(tmp_path: Path, services: Services) -> None:
    path = write_lines(tmp_path / "events.jsonl", stream_lines())
    settings = make_settings(path, tmp_path / "state")
    first = services(settings)
    first.loop.step()
    first.loop.step()
    assert first.loop.counters.checkpoints == 1
    saved = first.learner.snapshot().predict_many(PROBE)
    saved_scores, saved_labels, saved_version = saved.scores.copy(), list(saved.labels), saved.model_version
    saved_classes = first.learner.classes
    first.loop.step()  # learned, never saved
    moved = first.learner.snapshot().predict_many(PROBE).scores
    assert not np.array_equal(moved, saved_scores)
    crash(first)

    second = services(settings)
    assert second.restored
    snap = second.holder.current
    assert snap is not None  # published on restore, before any step
    assert snap.version == saved_version
    assert snap.classes == saved_classes
    preds = snap.predict_many(PROBE)
    np.testing.assert_array_equal(preds.scores, saved_scores)
    assert list(preds.labels) == saved_labels
    assert preds.model_version == saved_version
    client = TestClient(second.app)
    assert client.get("/readyz").json() == {"ready": True, "model_version": saved_version}
    model = client.get("/v1/model").json()
    assert model["restored_from_checkpoint"] is True
    assert model["events_learned"] == second.learner.events_learned


def test_no_checkpoint_means_no_restore(tmp_path: Path, services: Services) -> None:
    path = write_lines(tmp_path / "events.jsonl", stream_lines())
    service = services(make_settings(path, tmp_path / "state"))
    assert service.restored is False
    assert service.holder.current is None
    assert service.loop.positions == {}
    assert not (tmp_path / "state").exists()


def test_without_a_checkpoint_dir_offsets_are_committed_after_every_batch(tmp_path: Path,
                                                                          services: Services) -> None:
    path = write_lines(tmp_path / "events.jsonl", stream_lines())
    source = FileSource(path)
    service = services(make_settings(path, None), source=source)
    assert service.loop.checkpointer is None
    assert service.restored is False
    service.loop.step()
    assert source.committed == 8
    service.loop.step()
    assert source.committed == 16
    assert service.loop.counters.checkpoints == 0  # nothing saved, only committed
    assert service.loop.state_parts()["learned_ids"][1]["counts"]


def test_checkpoint_contents_match_the_loop(tmp_path: Path, services: Services) -> None:
    path = write_lines(tmp_path / "events.jsonl", stream_lines())
    service = services(make_settings(path, tmp_path / "state"))
    service.loop.step()
    service.loop.step()
    ckpt = Checkpointer(tmp_path / "state").load()
    assert ckpt is not None
    assert set(ckpt.parts) == {"learner", "pending", "dedup", "prequential", "evaluator", "eval_log", "learned_ids"}
    assert ckpt.offsets == service.loop.positions
    assert ckpt.parts["learner"][1]["events_learned"] == service.learner.events_learned
    assert ckpt.parts["pending"][1]["ids"] == ["u0"]
    assert sorted(ckpt.parts["learned_ids"][1]["counts"]) == sorted(
        k for k, v in (service.loop.learned_ids or {}).items() if v)
    assert service.loop.source.committed == 16  # type: ignore[attr-defined]


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
    assert len(service.loop.pending) == 2


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
    assert "u" in service.loop.pending


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


# -- pending labels across a restart ------------------------------------------------------------------

def test_a_pending_label_survives_a_restart(tmp_path: Path, services: Services,
                                            metric: Callable[..., float]) -> None:
    rng = np.random.default_rng(4)
    lines: list[Any] = [labelled(i, rng) for i in range(30)] + [{"id": "u1", "features": [0.3, 4.6, 0.0, 0.2]}]
    path = write_lines(tmp_path / "events.jsonl", lines)
    settings = make_settings(path, tmp_path / "state", source={"batch_size": 64},
                             checkpoint={"every_events": 31})
    first = services(settings)
    assert first.loop.step() == 31
    assert first.loop.counters.checkpoints == 1
    tap = first.loop.pending._items["u1"].payload.copy()
    crash(first)

    second = services(settings)
    assert second.restored
    assert len(second.loop.pending) == 1 and "u1" in second.loop.pending
    np.testing.assert_array_equal(second.loop.pending._items["u1"].payload, tap)
    assert second.loop.pending.oldest_age_s() >= 0.0
    run_to_end(second)  # nothing left to read
    assert second.learner.events_learned == 30
    version = second.learner.version

    client = TestClient(second.app)
    resp = client.post("/v1/feedback", json={"id": "u1", "label": "b"})
    assert resp.status_code == 202
    second.loop.step()
    text = metrics_text(second)
    assert metric(text, "lifelong_labels_total", {"outcome": "joined"}) == 1.0
    assert second.learner.events_learned == 31
    assert second.learner.version == version + 1
    assert second.loop.learned_ids is not None
    assert second.loop.learned_ids["u1"] == 1
    assert set(second.loop.learned_ids.values()) == {1}
    assert len(second.loop.pending) == 0

    # once more: a duplicate, learned once
    assert client.post("/v1/feedback", json={"id": "u1", "label": "b"}).status_code == 202
    second.loop.step()
    assert metric(metrics_text(second), "lifelong_labels_total", {"outcome": "duplicate"}) == 1.0
    assert second.loop.learned_ids["u1"] == 1

    # and after a checkpoint and another restart, the join is remembered
    assert second.loop.checkpoint()
    crash(second)
    third = services(settings)
    assert third.learner.events_learned == 31
    assert third.loop.learned_ids is not None and third.loop.learned_ids["u1"] == 1
    assert len(third.loop.pending) == 0
    assert third.loop.pending.take("u1") == ("duplicate", None)


def test_a_label_joined_while_the_stream_is_idle_is_checkpointed_within_every_s(
        tmp_path: Path, services: Services) -> None:
    rng = np.random.default_rng(5)
    lines: list[Any] = [labelled(i, rng) for i in range(12)] + [{"id": "u1", "features": CENTERS["b"]}]
    path = write_lines(tmp_path / "events.jsonl", lines)
    settings = make_settings(path, tmp_path / "state", source={"batch_size": 64},
                             checkpoint={"every_s": 1e-6, "every_events": 10_000})
    service = services(settings)
    service.loop.step()
    assert service.loop.counters.checkpoints == 1  # due by time
    assert TestClient(service.app).post("/v1/feedback", json={"id": "u1", "label": "b"}).status_code == 202
    service.loop.step()  # the join is learned; every_s has long passed
    assert service.learner.events_learned == 13
    ckpt = Checkpointer(tmp_path / "state").load()
    assert ckpt is not None
    assert ckpt.parts["learner"][1]["events_learned"] == 13


# -- revoke -------------------------------------------------------------------------------------------

def test_a_revoke_makes_the_next_step_checkpoint(tmp_path: Path, services: Services) -> None:
    path = write_lines(tmp_path / "events.jsonl", stream_lines())
    settings = make_settings(path, tmp_path / "state", checkpoint={"every_events": 10_000})
    service = services(settings)
    loop = service.loop
    loop.step()
    assert loop.counters.checkpoints == 0
    assert not loop.checkpointer.due()  # type: ignore[union-attr]
    loop._on_revoke([("events.jsonl", 0)])
    assert loop.counters.checkpoints == 0  # only flagged; the loop acts after its step
    loop.step()
    assert loop.counters.checkpoints == 1
    assert loop.source.committed == 16  # type: ignore[attr-defined]
    ckpt = Checkpointer(tmp_path / "state").load()
    assert ckpt is not None and ckpt.offsets == {("events.jsonl", 0): 16}
    loop.step()
    assert loop.counters.checkpoints == 1  # the flag was cleared


def test_a_revoke_checkpoints_even_when_no_record_was_read(tmp_path: Path, services: Services) -> None:
    rng = np.random.default_rng(6)
    path = write_lines(tmp_path / "events.jsonl", [labelled(i, rng) for i in range(5)])
    service = services(make_settings(path, tmp_path / "state", checkpoint={"every_events": 10_000}))
    run_to_end(service)
    assert service.loop.step() == 0
    assert service.loop.counters.checkpoints == 0
    service.loop._on_revoke([])
    assert service.loop.step() == 0
    assert service.loop.counters.checkpoints == 1


# -- build_source --------------------------------------------------------------------------------------

def test_build_source_resumes_a_file_at_the_checkpointed_offset(tmp_path: Path) -> None:
    lines = stream_lines()
    path = write_lines(tmp_path / "events.jsonl", lines)
    settings = make_settings(path, tmp_path / "state")
    fresh = build_source(settings, {}, lambda partitions: None)
    other = build_source(settings, {("other.jsonl", 0): 5}, lambda partitions: None)
    resumed = build_source(settings, {("events.jsonl", 0): 16}, lambda partitions: None)
    try:
        assert isinstance(resumed, FileSource)
        assert resumed.committed == 16
        assert [r.offset for r in fresh.poll(1)] == [0]
        assert [r.offset for r in other.poll(1)] == [0]
        first = resumed.poll(1)[0]
        assert first.offset == 16
        assert first.value == json.dumps(lines[16]).encode()
    finally:
        for source in (fresh, other, resumed):
            source.close()


def test_build_source_leaves_no_file_open_when_it_resumes(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "events.jsonl", stream_lines())
    settings = make_settings(path, tmp_path / "state")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = build_source(settings, {("events.jsonl", 0): 16}, lambda partitions: None)
        gc.collect()
    source.close()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
