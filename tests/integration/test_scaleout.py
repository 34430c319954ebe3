"""Serving scale-out on a real broker: a learner publishes snapshots, predictors serve them.

Every process is a real `lifelong run --role ...`; faults are real (kill -9, a
broker restart, forged records on the snapshot topic written by another client).
What must hold throughout: a predictor never serves a lower (generation,
version) than it served before, never serves a snapshot that fails a check,
and never answers 5xx to a valid request.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from harness import Broker, Daemon, http_json, wait_until

pytestmark = pytest.mark.integration

DIM = 4
CENTERS = 3.0 * np.random.default_rng(5).normal(size=(3, DIM))


def events(n: int, start: int = 0, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    lines, keys = [], []
    for i in range(start, start + n):
        c = i % len(CENTERS)
        x = CENTERS[c] + 0.5 * rng.normal(size=DIM)
        lines.append(json.dumps({"id": f"e{i}", "features": [round(float(v), 5) for v in x], "label": f"c{c}"}))
        keys.append(f"e{i}")
    return lines, keys


class Cluster:
    """One learner and its predictors on topics of their own."""

    def __init__(self, broker: Broker, start: Callable[..., Daemon], tmp: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.broker, self._start, self.tmp = broker, start, tmp
        self.events_topic, self.labels_topic, self.snapshot_topic = f"ev-{tag}", f"lab-{tag}", f"snap-{tag}"
        self.base = {
            "source": {"kind": "kafka", "batch_size": 50,
                       "kafka": {"bootstrap_servers": broker.bootstrap, "events_topic": self.events_topic,
                                 "labels_topic": self.labels_topic, "group_id": f"g-{tag}", "startup_timeout_s": 60,
                                 "session_timeout_s": 6}},
            "learner": {"input_kind": "features", "feature_dim": DIM, "feature_warmup_events": 50,
                        "torch_threads": 1},
            "evaluation": {"holdout_fraction": 0.0},
            "publish_every_events": 50,
            "snapshots": {"topic": self.snapshot_topic, "max_staleness_s": 4, "heartbeat_s": 0.5,
                          "min_interval_s": 0.2},
        }
        self.create_topics()

    def config(self, **sections: Any) -> dict[str, Any]:
        cfg = json.loads(json.dumps(self.base))
        for key, value in sections.items():
            cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
        return cfg

    def create_topics(self) -> None:
        cfg = self.tmp / f"topics-{self.events_topic}.yaml"
        cfg.write_text(json.dumps(self.config(outputs={"predictions_topic": None, "dead_letter_topic": None})))
        out = subprocess.run([sys.executable, "-m", "lifelong.cli", "topics", "create", "--config", str(cfg),
                              "--partitions", "2"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr

    def learner(self, state: str = "state", **sections: Any) -> Daemon:
        return self._start(self.config(role="learner", checkpoint={"dir": str(self.tmp / state), "every_s": 1},
                                       outputs={"predictions_topic": None, "dead_letter_topic": None}, **sections))

    def predictor(self) -> Daemon:
        return self._start(self.config(role="predictor"))

    def pair(self, n_events: int) -> tuple[Daemon, Daemon]:
        """A learner that has events to learn, and a predictor once the learner serves."""
        learner = self.learner()
        self.produce(n_events)
        learner.wait_ready(120)
        predictor = self.predictor()
        predictor.wait_ready(60)
        return learner, predictor

    def produce(self, n: int, start: int = 0) -> None:
        lines, keys = events(n, start)
        self.broker.produce(self.events_topic, lines, keys=keys)


@pytest.fixture
def cluster(kafka_broker: Broker, lifelong_daemon: Callable[..., Daemon], tmp_path: Path) -> Cluster:
    return Cluster(kafka_broker, lifelong_daemon, tmp_path)


def predict(daemon: Daemon, min_version: int | None = None) -> tuple[int, Any]:
    x = CENTERS[1].round(4).tolist()
    headers = {"content-type": "application/json"}
    if min_version is not None:
        headers["X-Lifelong-Min-Version"] = str(min_version)
    req = urllib.request.Request(f"{daemon.url}/v1/predict", data=json.dumps({"instances": [{"features": x}]}).encode(),
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def model(daemon: Daemon) -> dict[str, Any]:
    status, body = http_json("GET", f"{daemon.url}/v1/model")
    assert status == 200
    return dict(body)


class Watcher:
    """Polls a predictor's answers from a thread: every (generation, version) it served, every status."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon, self.served, self.statuses = daemon, [], []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                status, body = predict(self.daemon)
                info = model(self.daemon) if status == 200 else None
            except (OSError, AssertionError):
                continue  # the process is being killed or restarted
            self.statuses.append(status)
            if info is not None:
                self.served.append((info["generation"], body["model_version"]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def assert_monotonic(self) -> None:
        versions = [v for _, v in self.served]
        assert versions == sorted(versions), "model_version went down"
        assert not [s for s in self.statuses if s >= 500 and s != 503], self.statuses


def test_a_predictor_serves_the_learners_snapshots_and_forwards_labels(cluster: Cluster) -> None:
    learner = cluster.learner()
    cluster.produce(600)
    learner.wait_ready(120)
    predictor = cluster.predictor()
    ready_s = predictor.wait_ready(60)
    wait_until(lambda: model(learner)["events_learned"] == 600, 120, "600 events learned")
    wait_until(lambda: predict(predictor)[1]["model_version"] == model(learner)["model_version"], 20,
               "the predictor catches up with the learner")
    status, body = predict(predictor)
    assert status == 200 and body["predictions"][0]["label"] == "c1"
    assert model(predictor)["role"] == "predictor" and model(predictor)["generation"] == 1
    assert ready_s < 30  # the target (10 s) is measured by the bench; here: a loose ceiling for a busy CI
    # Read-your-writes: a version not published yet is a 409; the served one answers.
    served = body["model_version"]
    assert predict(predictor, min_version=served)[0] == 200
    assert predict(predictor, min_version=served + 10_000)[0] == 409
    # Feedback through a predictor is written to the labels topic, keyed by the event id.
    status, _ = http_json("POST", f"{predictor.url}/v1/feedback", {"id": "e-late", "label": "c2"})
    assert status == 202
    labels = cluster.broker.consume(cluster.labels_topic)
    assert [(m["key"], json.loads(m["payload"])["label"]) for m in labels] == [("e-late", "c2")]
    assert predictor.metric("lifelong_snapshot_swaps_total") >= 1


def test_kill_9_of_the_learner_then_of_a_predictor_never_moves_a_predictor_back(cluster: Cluster) -> None:
    learner, predictor = cluster.pair(400)
    watcher = Watcher(predictor)
    wait_until(lambda: model(learner)["events_learned"] == 400, 120, "400 events learned")
    before = model(predictor)["model_version"]
    learner.proc.kill()  # no final checkpoint, no final publish
    learner.proc.wait(10)
    restarted = cluster.learner()
    cluster.produce(300, start=400)
    restarted.wait_ready(120)
    wait_until(lambda: model(predictor)["generation"] == 2, 60, "the predictor serves generation 2")
    wait_until(lambda: model(restarted)["events_learned"] == 700, 120, "700 events learned")
    assert model(predictor)["model_version"] > before
    predictor.proc.kill()
    predictor.proc.wait(10)
    watcher.stop()
    again = cluster.predictor()
    assert again.wait_ready(60) < 30
    assert model(again)["generation"] == 2 and model(again)["model_version"] >= watcher.served[-1][1]
    watcher.assert_monotonic()
    assert sorted(set(g for g, _ in watcher.served)) == [1, 2]


def test_forged_and_truncated_snapshot_records_are_refused_and_never_served(cluster: Cluster) -> None:
    from kafka import KafkaProducer

    from lifelong.stream.snapshot_channel import SnapshotReader

    learner, predictor = cluster.pair(300)
    wait_until(lambda: model(learner)["events_learned"] == 300, 120, "300 events learned")
    reader = SnapshotReader(cluster.broker.bootstrap, cluster.snapshot_topic)  # heartbeats never let it idle
    records = []
    while not records or not reader.caught_up():
        records += reader.poll(0.5)
    reader.close()
    manifest = json.loads([r for r in records if r.key == b"default"][-1].value)
    chunk = [r for r in records if r.key == b"default/chunk/0"][-1]
    forged = 10**9
    producer = KafkaProducer(bootstrap_servers=cluster.broker.bootstrap)
    headers = [("lifelong.generation", str(manifest["generation"]).encode()),
               ("lifelong.version", str(forged).encode()), ("lifelong.index", b"0")]
    producer.send(cluster.snapshot_topic, key=b"default/chunk/0", value=chunk.value[: len(chunk.value) // 2],
                  headers=headers)  # truncated
    producer.send(cluster.snapshot_topic, key=b"default", value=json.dumps({**manifest, "version": forged}).encode())
    producer.send(cluster.snapshot_topic, key=b"default", value=b"\x00garbage")
    producer.send(cluster.snapshot_topic, key=b"default", value=json.dumps({**manifest, "version": forged + 1,
                                                                            "sha256": "0" * 64}).encode())
    producer.flush()
    producer.close()
    wait_until(lambda: predictor.metric('lifelong_snapshot_rejects_total{reason="checksum"}') >= 1
               and predictor.metric('lifelong_snapshot_rejects_total{reason="bad_manifest"}') >= 1, 20,
               "the forged records are rejected")
    assert predict(predictor)[1]["model_version"] < forged
    # A predictor started now reads the forgeries from the start too, and serves the real snapshot.
    fresh = cluster.predictor()
    fresh.wait_ready(60)
    assert predict(fresh)[1]["model_version"] == manifest["version"] or predict(fresh)[1]["model_version"] < forged
    assert fresh.metric('lifelong_snapshot_rejects_total{reason="checksum"}') >= 1
    # And a learner restarted now continues above the real version, not the forged one.
    learner.stop()
    restarted = cluster.learner()
    restarted.wait_ready(120)
    wait_until(lambda: model(predictor)["generation"] == 2, 60, "generation 2 served")
    assert manifest["version"] <= model(predictor)["model_version"] < forged


def test_a_predictor_is_unready_once_the_learner_is_silent_and_ready_again_when_it_returns(cluster: Cluster) -> None:
    learner, predictor = cluster.pair(200)
    learner.stop()  # SIGTERM: a clean stop, no more heartbeats
    wait_until(lambda: http_json("GET", f"{predictor.url}/readyz")[0] == 503, 30, "stale after max_staleness_s")
    status, body = http_json("GET", f"{predictor.url}/readyz")
    assert "stale" in body["reason"]
    assert predict(predictor)[0] == 200  # still answers whoever calls it directly
    cluster.learner().wait_ready(120)
    predictor.wait_ready(60)


def test_a_second_learner_with_the_same_transactional_id_fences_the_first(cluster: Cluster) -> None:
    first = cluster.learner(state="a")
    cluster.produce(200)
    first.wait_ready(120)
    second = cluster.learner(state="b")  # same model key, same transactional id, a state of its own
    wait_until(lambda: "partitions assigned" in second.log(), 120, "the second learner consumes")
    cluster.produce(200, start=200)  # past the offsets the first one committed: the second learns them
    second.wait_ready(120)
    # The zombie's next publish fails: it stops with an error instead of learning unseen.
    wait_until(lambda: first.proc.poll() is not None, 60, "the fenced learner exits")
    assert first.proc.returncode == 3  # EXIT_FENCED: a supervisor must not restart it
    assert "fenced" in first.log().lower()
    assert second.proc.poll() is None


def test_a_broker_restart_is_survived_by_learner_and_predictor(own_broker: Broker, lifelong_daemon: Callable[..., Daemon],
                                                               tmp_path: Path) -> None:
    cluster = Cluster(own_broker, lifelong_daemon, tmp_path)
    learner, predictor = cluster.pair(200)
    watcher = Watcher(predictor)
    before = model(predictor)["model_version"]
    own_broker.stop()
    own_broker.start()
    cluster.produce(300, start=200)
    wait_until(lambda: model(predictor)["model_version"] > before, 120, "a new version after the restart")
    watcher.stop()
    watcher.assert_monotonic()
    assert learner.proc.poll() is None and predictor.proc.poll() is None


def test_topics_check_finds_labels_partitioned_unlike_events(kafka_broker: Broker, tmp_path: Path) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    tag = uuid.uuid4().hex[:8]
    cfg = {"source": {"kind": "kafka", "kafka": {"bootstrap_servers": kafka_broker.bootstrap,
                                                 "events_topic": f"ev-{tag}", "labels_topic": f"lab-{tag}"}},
           "snapshots": {"topic": f"snap-{tag}"}}
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))

    def lifelong(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lifelong.cli", "topics", *args, "--config", str(path)],
                              capture_output=True, text=True, timeout=60)

    missing = lifelong("check")
    assert missing.returncode == 1 and "does not exist" in missing.stdout
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    admin.create_topics([NewTopic(f"lab-{tag}", 3, 1), NewTopic(f"snap-{tag}", 1, 1)])  # not compacted
    admin.close()
    assert lifelong("create", "--partitions", "2").returncode == 0
    out = lifelong("check")
    assert out.returncode == 1
    assert "3 partitions" in out.stdout and "not compacted" in out.stdout
