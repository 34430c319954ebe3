"""Two daemons (in process, file sources) that learn disjoint shards and merge through a folder channel."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lifelong.learner.merging import MergeRefused
from lifelong.service.config import Settings
from lifelong.service.runtime import Service
from lifelong.stream.events import LabelMessage

DIM = 6
CENTRES = {c: 4.0 * np.random.default_rng(i).normal(size=DIM) for i, c in enumerate("abcd")}


def shard(path: Path, classes: str, n: int, seed: int, start: int) -> int:
    rng = np.random.default_rng(seed)
    with path.open("w") as fh:
        for i in range(n):
            label = classes[i % len(classes)]
            x = CENTRES[label] + rng.normal(0, 0.5, DIM)
            fh.write(json.dumps({"id": f"e{start + i}", "features": [round(float(v), 4) for v in x],
                                 "label": label}) + "\n")
    return n


def settings(tmp: Path, name: str, events: Path, reducer: str, **learning: Any) -> Settings:
    return Settings(
        source={"kind": "file", "path": str(events), "batch_size": 16, "poll_timeout_s": 0.01},
        learner={"input_kind": "features", "feature_dim": DIM, "encoder": "standardize", "feature_warmup_events": 0},
        checkpoint={"dir": str(tmp / name), "every_s": 3600, "every_events": 10**6},
        evaluation={"holdout_fraction": 0.0}, http={"port": 0},
        scaleout={"learning": {"mode": "merge", "merge_dir": str(tmp / "merge"), "replica_id": name,
                               "reducer": reducer, "merge_every_events": 40, "merge_wait_s": 0.2, **learning}})


def drive(services: list[Service], rounds: int = 400) -> None:
    for s in services:
        s.loop._merged(s.loop.merger.connect(5.0))  # type: ignore[union-attr]
    for _ in range(rounds):
        if sum(s.loop.step() for s in services) == 0 and all(s.loop.source.exhausted for s in services):
            break


def finish(services: list[Service]) -> None:
    """Graceful stops, the reducer's last: every replica's last events reach a base."""
    for s in sorted(services, key=lambda s: s.loop._reducer()):
        s.loop.merger.finish(s.loop._reducer(), s.loop.checkpoint)  # type: ignore[union-attr]
    for s in services:  # the others take the last base
        s.loop.merger.step(False, s.loop.checkpoint)  # type: ignore[union-attr]


def counts(s: Service) -> dict[str, int]:
    c = s.learner.protos.state_dict()["counts"]  # type: ignore[attr-defined]
    return dict(zip(s.learner.classes, c.tolist()))


def test_two_replicas_on_disjoint_shards_end_with_one_model_that_counts_every_event_once(tmp_path: Path) -> None:
    n = shard(tmp_path / "a.jsonl", "ab", 200, 1, 0) + shard(tmp_path / "b.jsonl", "cd", 160, 2, 1000)
    a = Service(settings(tmp_path, "ra", tmp_path / "a.jsonl", "always"))
    b = Service(settings(tmp_path, "rb", tmp_path / "b.jsonl", "never"))
    drive([a, b])
    finish([a, b])
    for s in (a, b):
        merge = s.describe()["merge"]
        assert merge["events_merged"] == n and not merge["pending"], merge
        assert counts(s) == {"a": 100, "b": 100, "c": 80, "d": 80}
    probe = np.stack([CENTRES[c] for c in "abcd"])
    for s in (a, b):
        assert s.learner.snapshot().predict_taps(s.learner.encode(probe)).labels == list("abcd")


def test_a_restarted_replica_sends_its_checkpointed_contribution_and_nothing_counts_twice(tmp_path: Path) -> None:
    n = shard(tmp_path / "a.jsonl", "ab", 120, 3, 0) + shard(tmp_path / "b.jsonl", "cd", 120, 4, 1000)
    a = Service(settings(tmp_path, "ra", tmp_path / "a.jsonl", "always"))
    b = Service(settings(tmp_path, "rb", tmp_path / "b.jsonl", "never"))
    for s in (a, b):
        s.loop.merger.connect(5.0)  # type: ignore[union-attr]
    sent = b.loop.merger._send  # type: ignore[union-attr]
    b.loop.merger._send = lambda: None  # type: ignore[union-attr,method-assign]  # "killed" right after its checkpoint
    while b.loop.merger.replica.pending is None:  # type: ignore[union-attr]
        b.loop.step()
    del sent
    # kill -9: the process is gone; a new one restores the checkpoint written before the send
    b2 = Service(settings(tmp_path, "rb", tmp_path / "b.jsonl", "never"))
    assert b2.restored and b2.loop.merger.replica.pending is not None  # type: ignore[union-attr]
    drive([a, b2])
    finish([a, b2])
    assert a.describe()["merge"]["events_merged"] == n
    assert counts(a) == counts(b2) == {"a": 60, "b": 60, "c": 60, "d": 60}


def test_a_learner_that_cannot_merge_is_refused_at_start(tmp_path: Path) -> None:
    shard(tmp_path / "a.jsonl", "ab", 10, 5, 0)
    s = settings(tmp_path, "ra", tmp_path / "a.jsonl", "always")
    s = s.model_copy(update={"learner": s.learner.model_copy(update={"fast_expert": True})})
    with pytest.raises(MergeRefused, match="cannot merge"):
        Service(s)


def test_merge_settings_that_cannot_work_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs source.kind 'kafka'"):
        Settings(scaleout={"learning": {"mode": "merge"}})
    with pytest.raises(ValueError, match="needs checkpoint.dir"):
        Settings(checkpoint={"dir": None}, scaleout={"learning": {"mode": "merge", "merge_dir": str(tmp_path)}})
    with pytest.raises(ValueError, match="publishing"):
        Settings(snapshots={"publish": True, "dir": str(tmp_path)},
                 scaleout={"learning": {"mode": "merge", "merge_dir": str(tmp_path)}})


def test_a_replica_restarted_after_its_contribution_was_merged_takes_the_base_and_sends_nothing(
        tmp_path: Path) -> None:
    n = shard(tmp_path / "a.jsonl", "ab", 80, 6, 0) + shard(tmp_path / "b.jsonl", "cd", 80, 7, 1000)
    a = Service(settings(tmp_path, "ra", tmp_path / "a.jsonl", "always"))
    b = Service(settings(tmp_path, "rb", tmp_path / "b.jsonl", "never"))
    for s in (a, b):
        s.loop.merger.connect(5.0)  # type: ignore[union-attr]
    while b.loop.merger.contributions is not None and b.loop.merger.replica.seq == 0:  # type: ignore[union-attr]
        b.loop.step()  # until its first contribution is checkpointed and sent
    b.loop.checkpoint()
    sent = b.loop.merger.metrics.merge_contributions._value.get()  # type: ignore[union-attr]
    while not a.loop.merger.base.merged.get("rb", -1) >= 0:  # type: ignore[union-attr]
        a.loop.step()  # the reducer merges it; b is "killed" before it reads the base back
    b2 = Service(settings(tmp_path, "rb", tmp_path / "b.jsonl", "never"))
    assert b2.loop.merger.replica.pending is not None  # type: ignore[union-attr]
    drive([a, b2])
    finish([a, b2])
    assert b2.loop.merger.metrics.merge_contributions._value.get() >= 1  # type: ignore[union-attr]
    assert sent == 1 and a.describe()["merge"]["events_merged"] == n
    assert counts(a) == counts(b2) == {"a": 40, "b": 40, "c": 40, "d": 40}


def test_events_waiting_for_labels_follow_a_partition_to_the_replica_that_reads_their_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    lines = [{"id": f"u{i}", "features": [round(float(v), 4) for v in CENTRES["abcd"[i % 4]] + rng.normal(0, .5, DIM)]}
             for i in range(40)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    shard(tmp_path / "b.jsonl", "abcd", 80, 9, 1000)
    a = Service(settings(tmp_path, "ra", tmp_path / "a.jsonl", "never"))
    b = Service(settings(tmp_path, "rb", tmp_path / "b.jsonl", "always"))
    drive([a, b])
    assert len(a.loop.join) == 40 and len(b.loop.join) == 0  # a parked its unlabelled events
    for i in range(40):  # their labels reach b: the group moved a's partition there (below)
        b.loop.submit_feedback(LabelMessage(id=f"u{i}", label="abcd"[i % 4]))
    b.loop.step()
    assert len(b.loop.join.early) == 40  # waiting for events b never read
    a.loop._source.owns = lambda topic, partition: False  # type: ignore[union-attr]  # the group's new assignment
    a.loop._on_revoke(list({tp for tp in a.loop.positions}))
    a.loop.step()  # the revoke checkpoint, then the hand-off
    assert len(a.loop.join) == 0
    learned = b.loop.counters.learned
    b.loop._source.owns = lambda topic, partition: True  # type: ignore[union-attr]  # b owns it now
    assert "u7" not in b.loop.validator.recent_ids
    b.loop.step()
    assert b.loop.counters.learned == learned + 40 and len(b.loop.join.early) == 0
    assert all(f"u{i}" in b.loop.validator.recent_ids for i in range(40))  # a resent u7 is a duplicate at b too
    assert b.metrics.registry.get_sample_value("lifelong_labels_total", {"outcome": "joined"}) == 40
