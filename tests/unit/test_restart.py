"""Restart semantics: checkpoint, crash, restore, replay; pending labels; revokes.

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
from typing import Any, Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lifelong.service.checkpoint import Checkpointer
from lifelong.service.runtime import build_source
from lifelong.stream.sinks import MemorySink
from lifelong.stream.sources import FileSource
from loop_harness import (
    CENTERS, PROBE, DEAD_LETTERS, labelled, stream_lines, valid_labelled_ids, write_lines, make_settings,
    Services, run_to_end, crash, probe_scores, metrics_text, sent_to, predictions_by_id,
    assert_same_learner_state)


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
    assert client.get("/readyz").json() == {"ready": True, "model_version": saved_version, "reason": None}
    model = client.get("/v1/model").json()
    assert model["restored_from_checkpoint"] is True
    assert model["events_learned"] == second.learner.events_learned


def test_no_checkpoint_means_no_restore(tmp_path: Path, services: Services) -> None:
    path = write_lines(tmp_path / "events.jsonl", stream_lines())
    service = services(make_settings(path, tmp_path / "state"))
    assert service.restored is False
    assert service.holder.current is None
    assert service.loop.positions == {}
    # the folder is made (and proved writable) at start, but holds no state yet
    assert list((tmp_path / "state").iterdir()) == []


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
    assert set(ckpt.parts) == {"learner", "pending", "early_labels", "dedup", "prequential", "evaluator", "eval_log",
                              "learned_ids"}
    assert ckpt.offsets == service.loop.positions
    assert ckpt.parts["learner"][1]["events_learned"] == service.learner.events_learned
    assert ckpt.parts["pending"][1]["ids"] == ["u0"]
    assert sorted(ckpt.parts["learned_ids"][1]["counts"]) == sorted(
        k for k, v in (service.loop.learned_ids or {}).items() if v)
    assert service.loop.source.committed == 16  # type: ignore[attr-defined]


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
    tap = first.loop.join.pending._items["u1"].payload.copy()
    crash(first)

    second = services(settings)
    assert second.restored
    assert len(second.loop.join.pending) == 1 and "u1" in second.loop.join.pending
    np.testing.assert_array_equal(second.loop.join.pending._items["u1"].payload, tap)
    assert second.loop.join.pending.oldest_age_s() >= 0.0
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
    assert len(second.loop.join.pending) == 0

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
    assert len(third.loop.join.pending) == 0
    assert third.loop.join.pending.take("u1") == ("duplicate", None)


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
