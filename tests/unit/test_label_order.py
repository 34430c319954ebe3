"""The order-free label join in the loop: labels read before their events wait and join, across a
restart too; outcomes are counted once; re-delivered records are skipped, not duplicates; a failed
commit is retried."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from lifelong.service.runtime import Service
from lifelong.stream.sinks import MemorySink
from loop_harness import CENTERS, DEAD_LETTERS, labelled, metrics_text, sent_to
from loop_topics import EVENTS, LABELS, TopicsSource, topics_settings


def unlabelled(n: int, prefix: str = "u", seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n`` events without labels and their ``n`` label messages."""
    rng = np.random.default_rng(seed)
    events, labels = [], []
    for i in range(n):
        event = labelled(i, rng)
        label = event.pop("label")
        event["id"] = f"{prefix}{i}"
        events.append(event)
        labels.append({"id": event["id"], "label": label})
    return events, labels


def service_on(source: TopicsSource, state: Path | None, sink: MemorySink | None = None, **settings: Any) -> Service:
    return Service(topics_settings(state, **settings), source=source, sink=sink or MemorySink())


def steps(service: Service, n: int = 30) -> None:
    for _ in range(n):
        service.loop.step()


def test_labels_read_before_their_events_are_joined(tmp_path: Path, metric: Callable[..., float]) -> None:
    source = TopicsSource()
    events, labels = unlabelled(150)
    source.produce(LABELS, labels)  # a backlog of labels first, as after a restart
    source.produce(EVENTS, events)
    service = service_on(source, tmp_path / "state")
    steps(service, 25)
    counts = service.loop.learned_ids
    assert counts is not None and sorted(counts) == sorted(e["id"] for e in events)
    assert set(counts.values()) == {1}
    text = metrics_text(service)
    assert metric(text, "lifelong_labels_total", {"outcome": "joined"}) == 150.0
    assert metric(text, "lifelong_labels_total", {"outcome": "unknown_id"}) == 0.0
    assert metric(text, "lifelong_early_labels") == 0.0
    assert len(service.loop.join.early) == 0 and len(service.loop.join.pending) == 0
    # still predicted (outputs do not depend on arrival order)
    assert len(sent_to(service.loop.sink, "lifelong-predictions")) == 150  # type: ignore[arg-type]


def test_early_labels_survive_a_restart(tmp_path: Path) -> None:
    events, labels = unlabelled(40)
    first_source = TopicsSource()
    first_source.produce(LABELS, labels)
    first = service_on(first_source, tmp_path / "state")
    steps(first, 5)
    assert len(first.loop.join.early) == 40
    assert first.loop.checkpoint()
    first.loop.close()

    second_source = TopicsSource()
    second_source.produce(LABELS, labels)  # the same topic, read from the checkpointed offsets on
    second_source.produce(EVENTS, events)
    second = service_on(second_source, tmp_path / "state")
    assert second.restored and len(second.loop.join.early) == 40
    second_source.position = {EVENTS: 0, LABELS: second.loop.positions[(LABELS, 0)]}
    steps(second, 10)
    counts = second.loop.learned_ids
    assert counts is not None and len(counts) == 40 and set(counts.values()) == {1}


def test_outcomes_are_counted_once_when_final(tmp_path: Path, metric: Callable[..., float]) -> None:
    events, labels = unlabelled(3)
    source = TopicsSource()
    source.produce(LABELS, [labels[0], labels[0], {"id": "never", "label": "a"}])  # a second label, an orphan
    service = service_on(source, tmp_path / "state", labels={"max_wait_s": 0.05})
    service.loop.step()
    text = metrics_text(service)
    assert metric(text, "lifelong_labels_total", {"outcome": "duplicate"}) == 1.0
    assert metric(text, "lifelong_labels_total", {"outcome": "unknown_id"}) == 0.0  # still waiting
    assert metric(text, "lifelong_early_labels") == 2.0
    time.sleep(0.1)
    service.loop.step()
    text = metrics_text(service)
    assert metric(text, "lifelong_labels_total", {"outcome": "unknown_id"}) == 2.0  # waited out the limit
    assert metric(text, "lifelong_early_labels") == 0.0
    source.produce(EVENTS, [events[0]])
    service.loop.step()
    assert service.loop.learned_ids == {}  # its label expired: parked, not learned
    assert events[0]["id"] in service.loop.join.pending


def test_an_early_label_for_an_event_with_its_own_label_is_a_duplicate(tmp_path: Path,
                                                                      metric: Callable[..., float]) -> None:
    source = TopicsSource()
    event = labelled(0, np.random.default_rng(0))
    source.produce(LABELS, [{"id": event["id"], "label": "b"}])
    source.produce(EVENTS, [event])
    service = service_on(source, tmp_path / "state")
    steps(service, 3)
    assert service.loop.learned_ids == {event["id"]: 1}
    assert metric(metrics_text(service), "lifelong_labels_total", {"outcome": "duplicate"}) == 1.0
    assert len(service.loop.join.early) == 0


def test_redelivered_records_are_skipped_not_dead_lettered(tmp_path: Path, metric: Callable[..., float]) -> None:
    rng = np.random.default_rng(4)
    source = TopicsSource()
    source.produce(EVENTS, [labelled(i, rng) for i in range(40)])
    sink = MemorySink()
    service = service_on(source, tmp_path / "state", sink=sink)
    steps(service, 3)
    source.rewind(EVENTS, 10)  # the group rejoined at an older committed offset
    steps(service, 3)
    counts = service.loop.learned_ids
    assert counts is not None and len(counts) == 40 and set(counts.values()) == {1}
    assert sent_to(sink, DEAD_LETTERS) == []
    text = metrics_text(service)
    assert metric(text, "lifelong_records_redelivered_total") == 30.0
    assert metric(text, "lifelong_events_rejected_total", {"reason": "duplicate_id"}) == 0.0


def test_a_true_duplicate_at_a_new_offset_is_still_rejected(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    first = labelled(0, rng)
    source = TopicsSource()
    source.produce(EVENTS, [first, labelled(1, rng), {**first, "features": CENTERS["c"]}])
    sink = MemorySink()
    service = service_on(source, tmp_path / "state", sink=sink)
    steps(service, 2)
    dead = sent_to(sink, DEAD_LETTERS)
    assert [dict(m[3])["lifelong.reason"] for m in dead] == [b"duplicate_id"]
    assert dict(dead[0][3])["lifelong.source.offset"] == b"2"


def test_a_failed_commit_is_retried_until_it_holds(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    source = TopicsSource()
    source.produce(EVENTS, [labelled(i, rng) for i in range(20)])
    service = service_on(source, tmp_path / "state", checkpoint={"every_events": 10})
    source.commit_ok = False
    service.loop.step()  # 16 records: a checkpoint is due; its commit fails
    assert service.loop.counters.checkpoints == 1 and source.commits == []
    source.commit_ok = True
    service.loop._last_commit_try = 0.0  # the retry waits a second; do not wait in a test
    service.loop.step()
    assert source.commits and source.commits[0] == {(EVENTS, 0): 16}


def test_revoked_partitions_leave_the_state_once_committed(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    source = TopicsSource()
    source.produce(EVENTS, [labelled(i, rng) for i in range(10)])
    source.produce(LABELS, [{"id": "x", "label": "a"}])
    service = service_on(source, tmp_path / "state")
    service.loop.step()
    assert set(service.loop.positions) == {(EVENTS, 0), (LABELS, 0)}
    source.commit_ok = False
    service.loop._on_revoke([(LABELS, 0)])  # the group hands the labels partition to another replica
    service.loop.step()
    assert (LABELS, 0) in service.loop.positions  # its commit did not hold: kept
    source.commit_ok = True
    service.loop._on_revoke([(LABELS, 0)])
    service.loop.step()
    assert source.commits[-1] == {(EVENTS, 0): 10, (LABELS, 0): 1}
    assert set(service.loop.positions) == {(EVENTS, 0)}  # a later checkpoint does not carry it
