"""scaleout.learning.mode per_key in process: a model per key, evicted and read back, served by key, once per event."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from lifelong.learner.encoders import make_encoder
from lifelong.learner.keyed import KeyedLearners
from lifelong.learner.registry import build
from lifelong.memory.key_store import KeyStore
from lifelong.service.config import Settings
from lifelong.service.runtime import Service
from lifelong.stream.events import LabelMessage
from lifelong.stream.sinks import MemorySink

from ..loop_harness import Services, crash, run_to_end

DIM = 4
KEYS = ("x", "y", "z")
CENTRES = np.eye(DIM, dtype=np.float32) * 5


def label_of(key: str, centre: int) -> str:
    """Each key names the same centres differently: one model for all keys could not be right."""
    return "abc"[(centre + KEYS.index(key)) % 3]


def events(n: int, seed: int = 0, labelled: bool = True) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        key, centre = KEYS[i % 3], int(rng.integers(0, 3))
        x = CENTRES[centre] + rng.normal(0, 0.3, DIM)
        event = {"id": f"e{i}", "features": [round(float(v), 4) for v in x], "key": key}
        out.append(event | ({"label": label_of(key, centre)} if labelled else {}))
    return out


def write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def keyed_settings(tmp: Path, stream: Path, learner: str = "nmc", **per_key: Any) -> Settings:
    return Settings(
        source={"kind": "file", "path": str(stream), "batch_size": 16, "poll_timeout_s": 0.001},
        learner={"name": learner, "input_kind": "features", "feature_dim": DIM, "encoder": "standardize",
                 "feature_warmup_events": 0},
        checkpoint={"dir": str(tmp / "ckpt"), "every_s": 3600, "every_events": 32},
        evaluation={"holdout_fraction": 0.0}, http={"port": 0}, debug={"track_learned_ids": True},
        publish_every_events=1, scaleout={"learning": {"mode": "per_key", "per_key": per_key}})


@pytest.fixture
def services() -> Any:
    made = Services()
    yield made
    made.close()


def test_each_key_is_served_its_own_model_and_unknown_keys_are_404(tmp_path: Path, services: Services) -> None:
    svc = services(keyed_settings(tmp_path, write(tmp_path / "ev.jsonl", events(300))))
    run_to_end(svc)
    svc.loop.publish()
    client = TestClient(svc.app)
    for key in KEYS:
        instances = [{"features": c.tolist()} for c in CENTRES[:3]]
        answer = client.post("/v1/predict", json={"key": key, "instances": instances})
        assert answer.status_code == 200, answer.text
        assert [p["label"] for p in answer.json()["predictions"]] == [label_of(key, c) for c in range(3)]
    unknown = client.post("/v1/predict", json={"key": "nope", "instances": [{"features": [0.0] * DIM}]})
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    # No event came without a key: no default model either.
    assert client.post("/v1/predict", json={"instances": [{"features": [0.0] * DIM}]}).status_code == 404
    long_key = client.post("/v1/predict", json={"key": "k" * 300, "instances": [{"features": [0.0] * DIM}]})
    assert long_key.status_code == 422
    rows = {r["key"]: r for r in client.get("/v1/keys").json()["keys"]}
    assert {k: r["events_learned"] for k, r in rows.items()} == {"x": 100, "y": 100, "z": 100}
    assert all(r["prequential_accuracy"] > 0.8 for r in rows.values())
    assert client.get("/v1/model").json()["keys"]["keys_stored"] == 3  # saved by the checkpoints


def test_a_key_on_a_service_of_one_model_is_422(tmp_path: Path, services: Services) -> None:
    plain = keyed_settings(tmp_path, write(tmp_path / "ev.jsonl", events(60)))
    plain = plain.model_copy(update={"scaleout": Settings().scaleout})
    svc = services(plain)
    run_to_end(svc)
    svc.loop.publish()
    client = TestClient(svc.app)
    assert client.post("/v1/predict", json={"instances": [{"features": [0.0] * DIM}]}).status_code == 200
    answer = client.post("/v1/predict", json={"key": "x", "instances": [{"features": [0.0] * DIM}]})
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "key"]
    assert client.get("/v1/keys").status_code == 404


def alone(lines: list[dict[str, Any]], key: str, batch: int = 16) -> Any:
    """``key``'s events learned by a learner of its own, in the groups the daemon's batches make."""
    learner = build("nmc", make_encoder("features", feature_dim=DIM, encoder="standardize", warmup_events=0))
    for start in range(0, len(lines), batch):
        group = [e for e in lines[start:start + batch] if e["key"] == key]
        if group:
            learner.learn_many(np.array([e["features"] for e in group], np.float32), [e["label"] for e in group])
    return learner


def test_evicted_keys_come_back_as_if_never_evicted(tmp_path: Path, services: Services) -> None:
    lines = events(240)
    svc = services(keyed_settings(tmp_path, write(tmp_path / "ev.jsonl", lines), max_resident_bytes=0))
    run_to_end(svc)
    keyed = svc.learner
    assert isinstance(keyed, KeyedLearners)
    assert keyed.evictions >= 2 * 14 and len(keyed._resident) == 1  # each batch ends with only the key in use
    probe = CENTRES[:3] + 0.7
    for key in KEYS:
        keyed.use(key)
        want = alone(lines, key)
        got = keyed.active.predict_many(probe)
        np.testing.assert_array_equal(got.scores, want.predict_many(probe).scores)
        assert got.labels == want.predict_many(probe).labels


def test_a_crash_after_evictions_learns_every_event_once_per_key(tmp_path: Path, services: Services) -> None:
    lines = events(400)
    stream = write(tmp_path / "ev.jsonl", lines)
    first = services(keyed_settings(tmp_path, stream, max_resident_bytes=0))
    for _ in range(15):  # 240 records: checkpoints every 32 events, evictions at every step in between
        first.loop.step()
    assert first.learner.evictions > 0  # type: ignore[attr-defined]
    crash(first)  # the events since the last checkpoint are in evicted keys' states, not in the checkpoint
    second = services(keyed_settings(tmp_path, stream, max_resident_bytes=0))
    run_to_end(second)
    second.loop.checkpoint()
    counts = Counter(second.learner.info[k].events for k in KEYS)  # type: ignore[attr-defined]
    assert counts == Counter({134: 1, 133: 2})
    store = KeyStore(tmp_path / "ckpt" / "keys")
    for key in KEYS:
        stored = store.load(key)
        assert stored is not None and stored[1]["info"]["events"] == sum(e["key"] == key for e in lines)


def test_delayed_labels_join_their_events_key(tmp_path: Path, services: Services) -> None:
    lines = events(90, labelled=False)
    svc = services(keyed_settings(tmp_path, write(tmp_path / "ev.jsonl", lines)))
    run_to_end(svc)
    truth = events(90)
    for event in truth:
        svc.loop.submit_feedback(LabelMessage(id=event["id"], label=event["label"]))
    svc.loop.step()
    assert {k: svc.learner.info[k].events for k in KEYS} == {"x": 30, "y": 30, "z": 30}  # type: ignore[attr-defined]
    svc.loop.publish()
    client = TestClient(svc.app)
    answer = client.post("/v1/predict", json={"key": "y", "instances": [{"features": CENTRES[0].tolist()}]})
    assert answer.json()["predictions"][0]["label"] == label_of("y", 0)


def rejected(svc: Service, reason: str) -> float:
    value = svc.metrics.registry.get_sample_value("lifelong_events_rejected_total", {"reason": reason})
    return value or 0.0


def test_keys_past_the_limit_and_damaged_keys_are_dead_letters(tmp_path: Path, services: Services) -> None:
    lines = events(90)
    svc = services(keyed_settings(tmp_path, write(tmp_path / "ev.jsonl", lines), max_keys=2))
    run_to_end(svc)
    assert rejected(svc, "too_many_keys") == 30
    assert {k: i.events for k, i in svc.learner.info.items()} == {"x": 30, "y": 30}  # type: ignore[attr-defined]
    svc.loop.checkpoint()
    store = KeyStore(tmp_path / "ckpt" / "keys")
    (store.path("x") / "tensors.safetensors").write_bytes(b"damaged")
    more = [e | {"id": f"m{i}"} for i, e in enumerate(events(30, seed=1))]
    again = services(keyed_settings(tmp_path, write(tmp_path / "more.jsonl", more), max_keys=2))
    run_to_end(again)
    assert rejected(again, "key_unavailable") == 10  # x's events: its state cannot be read
    assert again.learner.info["y"].events == 30 + 10  # type: ignore[attr-defined]


def test_two_replicas_share_a_key_store_and_a_moved_key_is_read_again(tmp_path: Path) -> None:
    def learners() -> KeyedLearners:
        make = lambda: build("nmc", make_encoder("features", feature_dim=DIM, encoder="standardize",  # noqa: E731
                                                 warmup_events=0))
        return KeyedLearners(make, KeyStore(tmp_path / "keys"), max_keys=10, max_resident_bytes=1 << 30)

    a, b = learners(), learners()
    x = np.array(CENTRES[:3])
    a.use("k")
    a.learn_many(x, ["a", "b", "c"])
    a.advance(("events", 0), 9)
    a.state_dict()  # a's checkpoint, then the partition moves to b
    b.use("k")
    assert b.covered(("events", 0), 9) and not b.covered(("events", 0), 10)
    b.learn_many(x, ["a", "b", "c"])
    b.state_dict()
    a.use("k")  # the partition came back: a reads b's newer state instead of its own
    assert a.info["k"].events == 6 and a.conflicts == 0


def test_per_key_settings_are_refused_where_they_cannot_work(tmp_path: Path) -> None:
    base = {"source": {"kind": "file", "path": str(tmp_path / "x")}, "scaleout": {"learning": {"mode": "per_key"}}}
    with pytest.raises(ValidationError, match="checkpoint.dir"):
        Settings(**base, checkpoint={"dir": None})
    with pytest.raises(ValidationError, match="publishing"):
        Settings(**base, checkpoint={"dir": str(tmp_path)}, snapshots={"publish": True, "dir": str(tmp_path / "s")})


def test_events_waiting_for_labels_follow_a_moved_partition_with_their_key(tmp_path: Path, services: Services) -> None:
    shared = {"key_dir": str(tmp_path / "keys")}
    a = services(keyed_settings(tmp_path / "a", write(tmp_path / "a.jsonl", events(30, labelled=False)), **shared))
    b = services(keyed_settings(tmp_path / "b", write(tmp_path / "b.jsonl", []), **shared))
    run_to_end(a)
    assert len(a.loop.join) == 30
    truth = events(30)
    for event in truth:  # the labels reach b: the group gave it a's partition (below)
        b.loop.submit_feedback(LabelMessage(id=event["id"], label=event["label"]))
    b.loop.step()
    assert len(b.loop.join.early) == 30
    a.loop._source.owns = lambda topic, partition: False  # type: ignore[union-attr]
    a.loop._on_revoke(list(a.loop.positions))
    a.loop.step()  # the revoke checkpoint, then the handoff through the shared key store's folder
    assert len(a.loop.join) == 0
    b.loop.step()
    assert {k: b.learner.info[k].events for k in KEYS} == {"x": 10, "y": 10, "z": 10}  # type: ignore[attr-defined]
    b.loop.publish()
    answer = TestClient(b.app).post("/v1/predict", json={"key": "z", "instances": [{"features": CENTRES[1].tolist()}]})
    assert answer.json()["predictions"][0]["label"] == label_of("z", 1)


@pytest.mark.parametrize("labels_first", [True, False])
def test_a_replay_after_a_crash_learns_each_delayed_label_once_per_key(tmp_path: Path, labels_first: bool) -> None:
    from ..loop_topics import EVENTS, LABELS, TopicsSource, topics_settings

    lines = events(60, labelled=False)
    labels = [{"id": e["id"], "label": t["label"]} for e, t in zip(lines, events(60))]

    def source() -> TopicsSource:
        s = TopicsSource()
        for topic, batch in ((LABELS, labels), (EVENTS, lines)) if labels_first else ((EVENTS, lines), (LABELS, labels)):
            s.produce(topic, batch)
        return s

    settings = topics_settings(tmp_path / "state", learner={"name": "nmc", "input_kind": "features", "feature_dim": DIM,
                                                           "encoder": "standardize", "feature_warmup_events": 0},
                               scaleout={"learning": {"mode": "per_key", "per_key": {"max_resident_bytes": 0}}})
    first = Service(settings, source=source(), sink=MemorySink())
    for _ in range(10):
        first.loop.step()  # joins and evictions, but no checkpoint: "killed" here
    assert sum(i.events for i in first.learner.info.values()) == 60  # type: ignore[attr-defined]
    second = Service(settings, source=source(), sink=MemorySink())  # replays both topics from the start
    for _ in range(10):
        second.loop.step()
    second.loop.checkpoint()
    # The evicted keys' states held records the checkpoint did not: those were skipped, not learned again.
    assert second.metrics.registry.get_sample_value("lifelong_records_redelivered_total") > 0
    store = KeyStore(tmp_path / "state" / "keys")
    counts = {k: store.load(k)[1]["info"]["events"] for k in KEYS}  # type: ignore[index]
    assert counts == {"x": 20, "y": 20, "z": 20}


def test_a_key_is_never_missing_while_another_replica_saves_it(tmp_path: Path) -> None:
    import threading

    store = KeyStore(tmp_path / "keys")
    store.save("k", {"w": np.zeros(4, np.float32)}, {"n": 0})
    done, seen = threading.Event(), []

    def writer() -> None:
        for n in range(1, 200):
            store.save("k", {"w": np.full(4, n, np.float32)}, {"n": n})
        done.set()

    threading.Thread(target=writer).start()
    while not done.is_set():
        got = store.load("k")
        assert got is not None and store.stamp("k") is not None  # never "no such key" mid-save
        seen.append(got[1]["n"])
    assert seen == sorted(seen) and len(store) == 1  # one key, one link; old states removed
    assert len([p for p in (tmp_path / "keys").iterdir()]) == 2  # the link and its state's folder


@pytest.mark.parametrize("budget", [1 << 30, 0])
def test_keys_forget_where_they_hold_the_events_in_memory_or_stored(tmp_path: Path, budget: int) -> None:
    from lifelong.learner.registry import LearnerOptions
    from lifelong.memory.tags import source_tags, tags_of

    make = lambda: build("lifelong", make_encoder("features", feature_dim=DIM, encoder="standardize",  # noqa: E731
                                                  warmup_events=0), LearnerOptions(continual={"forgetting": True}))
    keyed = KeyedLearners(make, KeyStore(tmp_path / "keys"), max_keys=10, max_resident_bytes=budget)
    assert keyed.supports_forget
    lines = events(180)
    for start in range(0, len(lines), 30):
        for key in KEYS:
            group = [e for e in lines[start:start + 30] if e["key"] == key]
            keyed.use(key)
            keyed.learn_taps(keyed.encode(np.array([e["features"] for e in group], np.float32), learning=True),
                             [e["label"] for e in group], tags=tags_of(e["id"] for e in group),
                             sources=source_tags(["u1" if e["label"] == "a" else "u2" for e in group]))
            keyed.evict_over_budget()
    keyed.save_keys()
    ids_of_x = [e["id"] for e in lines if e["key"] == "x"][:5]
    report = keyed.forget(tags=tags_of(ids_of_x))
    assert report.items == 5 and report.keys == 1  # only x held them: y and z were not refit
    report = keyed.forget(sources=source_tags(["u1"]))  # class "a" of every key
    assert report.keys == 3 and sorted(report.classes_removed) == [f"a (key {k})" for k in KEYS]
    assert report.items == sum(e["label"] == "a" for e in lines)
    keyed.save_keys()
    for key in KEYS:
        keyed.use(key)
        assert "a" not in keyed.classes and keyed.active.holds(sources=source_tags(["u1"])) == 0
    named = keyed.forget(tags=tags_of(["never"]), keys=["y", "unknown"])
    assert named.keys == 1 and named.items == 0  # a named key is refit; an unknown one is not made
    assert "unknown" not in keyed.info


def test_a_keyed_forget_stays_within_the_budget_goes_past_a_damaged_key_and_refits_keys_that_lost_items(
        tmp_path: Path) -> None:
    from lifelong.learner.registry import LearnerOptions
    from lifelong.memory.tags import tags_of

    def make(budget: int) -> Any:
        return lambda: build("lifelong", make_encoder("features", feature_dim=DIM, encoder="standardize",
                                                      warmup_events=0),
                             LearnerOptions(continual={"forgetting": True, "pq_m": 0, "memory_budget_bytes": budget}))
    keyed = KeyedLearners(make(1 << 20), KeyStore(tmp_path / "keys"), max_keys=10, max_resident_bytes=0)
    lines = events(120)
    for key in KEYS:
        group = [e for e in lines if e["key"] == key]
        keyed.use(key)
        keyed.learn_taps(keyed.encode(np.array([e["features"] for e in group], np.float32), learning=True),
                         [e["label"] for e in group], tags=tags_of(e["id"] for e in group))
        keyed.evict_over_budget()
    keyed.save_keys()
    target = keyed.store.path("z")
    (target / "tensors.safetensors").write_bytes(b"damaged")
    report = keyed.forget(tags=tags_of([e["id"] for e in lines[:6]]))
    assert report.failed == ("z",) and report.keys == 2 and report.items == 4  # x's and y's two each
    assert len(keyed._resident) == 1  # read one at a time, saved and dropped again
    # a key whose memory evicted items may hold anything it learned: it is refit although it holds none
    small = KeyedLearners(make(8 * (DIM * 4 + 4 + 16)), KeyStore(tmp_path / "small"), max_keys=10,
                          max_resident_bytes=1 << 30)
    small.use("x")
    group = [e for e in lines if e["key"] == "x"]
    small.learn_taps(small.encode(np.array([e["features"] for e in group], np.float32), learning=True),
                     [e["label"] for e in group], tags=tags_of(e["id"] for e in group))
    evicted = [e["id"] for e in group if not small.active.holds(tags=tags_of([e["id"]]))]
    assert evicted and small.forget(tags=tags_of(evicted[:1])).keys == 1
