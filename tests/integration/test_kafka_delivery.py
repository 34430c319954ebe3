"""Delivery against the real broker: dead letters, crashes, outages, delayed labels, replicas."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness import Broker, http_json, learned_counts, wait_until

pytestmark = pytest.mark.integration

DIM = 4


def features_config(broker: Broker, topic: str, state_dir: Path, **extra: Any) -> dict[str, Any]:
    kafka = {"bootstrap_servers": broker.bootstrap, "events_topic": topic, "group_id": f"g-{topic}",
             **extra.pop("kafka", {})}
    config: dict[str, Any] = {
        "source": {"kind": "kafka", "batch_size": 50, "poll_timeout_s": 0.2, "lag_check_s": 0.5, "kafka": kafka},
        "learner": {"input_kind": "features", "feature_dim": DIM, "feature_warmup_events": 100},
        "checkpoint": {"dir": str(state_dir), "every_s": 0.5, "every_events": 200},
        "outputs": {"predictions_topic": f"{topic}-predictions", "dead_letter_topic": f"{topic}-dead"},
        "debug": {"track_learned_ids": True},
        "evaluation": {"holdout_fraction": 0.0},  # these tests count deliveries: learn every valid event
    }
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def blob_events(n: int, prefix: str, seed: int = 0, labelled: bool = True) -> list[str]:
    """Events from 3 separable classes in DIM dimensions."""
    rng = random.Random(seed)
    centres = [[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0]]
    out = []
    for i in range(n):
        c = rng.randrange(3)
        event: dict[str, Any] = {"id": f"{prefix}-{i}", "features": [x + rng.gauss(0, 0.5) for x in centres[c]]}
        if labelled:
            event["label"] = f"class-{c}"
        out.append(json.dumps(event))
    return out


def model_info(daemon: Any) -> dict[str, Any]:
    status, body = http_json("GET", f"{daemon.url}/v1/model")
    assert status == 200
    return body


def events_learned(daemon: Any) -> int:
    return int(model_info(daemon)["events_learned"])


PROBES = {"instances": [{"features": [3, 0, 0, 0]}, {"features": [0, 3, 0, 0]}, {"features": [0, 0, 3, 0]},
                        {"features": [1, 1, 1, 0]}]}


def test_every_kind_of_bad_record_goes_to_the_dead_letter_topic(kafka_broker, lifelong_daemon, tmp_path) -> None:
    topic = f"bad-{uuid.uuid4().hex[:8]}"
    valid = blob_events(60, "ok")
    bad = {
        "not_json": "this is { not json",
        "schema": json.dumps({"id": "s1", "features": [1, 2, 3, 4], "colour": "red"}),
        "missing_input": json.dumps({"id": "m1", "label": "class-0"}),
        "wrong_dimension": json.dumps({"id": "w1", "features": [1, 2, 3]}),
        "non_finite": '{"id": "n1", "features": [1, NaN, 3, 4]}',
        "text_too_long": json.dumps({"id": "t1", "text": "x" * 300}),
        "bad_label": json.dumps({"id": "l1", "features": [1, 2, 3, 4], "label": 1.5}),
        "oversized": json.dumps({"id": "o1", "features": [1.0] * 800}),
        "duplicate_id": valid[0],
    }
    records = valid[:30] + list(bad.values()) + valid[30:]
    kafka_broker.produce(topic, records)
    daemon = lifelong_daemon(features_config(kafka_broker, topic, tmp_path / "state",
                                             limits={"max_text_chars": 100, "max_record_bytes": 4000}))
    daemon.wait_ready()
    wait_until(lambda: daemon.metric("lifelong_events_consumed_total") == len(records), 60, "all consumed")
    wait_until(lambda: events_learned(daemon) == len(valid), 30, "valid events learned and served")
    assert daemon.metric("lifelong_events_learned_total") == len(valid)

    def all_dead_letters() -> list[dict[str, Any]] | None:
        messages = kafka_broker.consume(f"{topic}-dead")
        return messages if len(messages) == len(bad) else None

    dead = wait_until(all_dead_letters, 30, "dead letters")
    by_reason = {}
    for message in dead:
        headers = dict(zip(message["headers"][::2], message["headers"][1::2]))
        by_reason[headers["lifelong.reason"]] = (message["payload"], headers)
        assert headers["lifelong.source.topic"] == topic
        assert int(headers["lifelong.source.offset"]) >= 0
    assert set(by_reason) == set(bad)
    for reason, original in bad.items():
        assert by_reason[reason][0] == original, reason  # the original bytes, untouched
    assert by_reason["wrong_dimension"][1]["lifelong.field"] == "features"
    for reason in bad:
        assert daemon.metric(f'lifelong_events_rejected_total{{reason="{reason}"}}') == 1


def test_kill_9_at_random_points_learns_every_event_exactly_once(kafka_broker, lifelong_daemon, tmp_path) -> None:
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    n = 3000
    events = blob_events(n, "e")
    source_file = tmp_path / "events.jsonl"
    source_file.write_text("\n".join(events) + "\n")
    # The producer runs at a steady rate while the daemon is killed again and again.
    producer = subprocess.Popen([sys.executable, "-m", "lifelong.cli", "produce", str(source_file),
                                 "--bootstrap", kafka_broker.bootstrap, "--topic", topic, "--rate", "300"])
    config = features_config(kafka_broker, topic, tmp_path / "state")
    rng = random.Random(7)
    kills = 0
    daemon = lifelong_daemon(config)
    try:
        while kills < 4:
            wait_until(lambda: daemon.proc.poll() is None and http_json("GET", f"{daemon.url}/healthz")[0] == 200,
                       60, "daemon up")
            time.sleep(rng.uniform(1.0, 3.0))
            daemon.proc.kill()  # SIGKILL: no final checkpoint, no clean leave
            daemon.proc.wait(10)
            kills += 1
            daemon = lifelong_daemon(config)
        assert producer.wait(60) == 0
        daemon.wait_ready()
        wait_until(lambda: events_learned(daemon) == n, 120, f"{n} events learned")
        status, before = http_json("POST", f"{daemon.url}/v1/predict", PROBES)
        assert status == 200
        assert daemon.stop() == 0, daemon.log()
    finally:
        producer.kill()

    counts = learned_counts(tmp_path / "state")
    assert len(counts) == n
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}

    # Predictions after a restart equal those before it: the checkpoint is the whole state.
    daemon = lifelong_daemon(config)
    daemon.wait_ready()
    status, after = http_json("POST", f"{daemon.url}/v1/predict", PROBES)
    assert after == before


def test_broker_down_30s_mid_stream_recovers_without_loss(own_broker, lifelong_daemon, tmp_path) -> None:
    topic = f"outage-{uuid.uuid4().hex[:8]}"
    daemon = lifelong_daemon(features_config(own_broker, topic, tmp_path / "state"))
    own_broker.produce(topic, blob_events(500, "a"))
    daemon.wait_ready()
    wait_until(lambda: events_learned(daemon) == 500, 60, "first half learned")

    own_broker.stop()
    time.sleep(30)
    assert daemon.proc.poll() is None, daemon.log()
    assert http_json("GET", f"{daemon.url}/healthz")[0] == 200
    status, body = http_json("POST", f"{daemon.url}/v1/predict", PROBES)
    assert status == 200  # serving goes on while the broker is away
    own_broker.start()

    own_broker.produce(topic, blob_events(500, "b", seed=1))
    wait_until(lambda: events_learned(daemon) == 1000, 120, "second half learned after the outage")
    assert daemon.stop() == 0, daemon.log()
    counts = learned_counts(tmp_path / "state")
    assert len(counts) == 1000 and set(counts.values()) == {1}


def test_delayed_labels_join_within_the_wait_limit_and_expire_after(kafka_broker, lifelong_daemon,
                                                                   tmp_path) -> None:
    topic = f"labels-{uuid.uuid4().hex[:8]}"
    config = features_config(kafka_broker, topic, tmp_path / "state", kafka={"labels_topic": f"{topic}-labels"},
                             labels={"max_wait_s": 8.0})
    daemon = lifelong_daemon(config)
    kafka_broker.produce(topic, blob_events(100, "warm"))  # a model to predict with
    daemon.wait_ready()
    wait_until(lambda: events_learned(daemon) == 100, 60, "warm-up learned")

    unlabelled = blob_events(200, "u", seed=3, labelled=False)
    truth = {json.loads(e)["id"]: f"class-{c}" for e, c in zip(unlabelled, _classes(200, 3))}
    kafka_broker.produce(topic, unlabelled)
    wait_until(lambda: daemon.metric("lifelong_events_predicted_total") == 200, 60, "all predicted")
    assert daemon.metric("lifelong_pending_labels") == 200

    ids = list(truth)
    random.Random(1).shuffle(ids)
    on_time, late = ids[:150], ids[150:]
    labels = [json.dumps({"id": i, "label": truth[i]}) for i in on_time]
    labels.append(json.dumps({"id": on_time[0], "label": truth[on_time[0]]}))  # a duplicate
    kafka_broker.produce(f"{topic}-labels", labels)
    wait_until(lambda: events_learned(daemon) == 250, 60, "on-time labels learned")
    time.sleep(9)  # past the wait limit
    kafka_broker.produce(f"{topic}-labels", [json.dumps({"id": i, "label": truth[i]}) for i in late])
    wait_until(lambda: daemon.metric('lifelong_labels_total{outcome="expired"}') == 50, 60, "late labels expired")
    assert daemon.metric('lifelong_labels_total{outcome="joined"}') == 150
    assert daemon.metric('lifelong_labels_total{outcome="duplicate"}') == 1
    assert events_learned(daemon) == 250
    assert daemon.metric("lifelong_pending_labels") == 0

    predictions = kafka_broker.consume(f"{topic}-predictions")
    payloads = [json.loads(m["payload"]) for m in predictions]
    assert {p["id"] for p in payloads} == set(truth)
    assert all(isinstance(p["model_version"], int) and p["label"] in {"class-0", "class-1", "class-2"}
               for p in payloads)
    accuracy = sum(p["label"] == truth[p["id"]] for p in payloads) / len(payloads)
    assert accuracy > 0.9


def _classes(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append(rng.randrange(3))
        for _ in range(4):  # blob_events draws one class and four gaussians per event
            rng.gauss(0, 0.5)
    return out


def test_two_replicas_split_partitions_and_one_takes_over(kafka_broker, lifelong_daemon, tmp_path) -> None:
    topic = f"group-{uuid.uuid4().hex[:8]}"
    a = lifelong_daemon(features_config(kafka_broker, topic, tmp_path / "a"))
    b = lifelong_daemon(features_config(kafka_broker, topic, tmp_path / "b"))
    for d in (a, b):
        wait_until(lambda d=d: d.metric("lifelong_assigned_partitions") == 1, 90, "each replica owns a partition")

    kafka_broker.produce(topic, blob_events(1000, "x"), keys=[f"x-{i}" for i in range(1000)])  # both partitions
    wait_until(lambda: a.metric("lifelong_events_consumed_total") + b.metric("lifelong_events_consumed_total")
               == 1000, 60, "first batch consumed by the group")
    assert a.metric("lifelong_events_consumed_total") > 0 and b.metric("lifelong_events_consumed_total") > 0
    assert a.stop() == 0, a.log()

    wait_until(lambda: b.metric("lifelong_assigned_partitions") == 2, 90, "survivor owns both partitions")
    kafka_broker.produce(topic, blob_events(1000, "y", seed=1))
    wait_until(lambda: events_learned(b) == 2000 - len(learned_counts(tmp_path / "a")), 90, "rest learned by b")
    assert b.stop() == 0, b.log()

    counts_a, counts_b = learned_counts(tmp_path / "a"), learned_counts(tmp_path / "b")
    assert set(counts_a) & set(counts_b) == set()  # a clean hand-over repeats nothing
    assert len(counts_a) + len(counts_b) == 2000
    assert set(counts_a.values()) | set(counts_b.values()) == {1}
