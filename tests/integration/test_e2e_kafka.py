"""End to end: kcat produces into a real Kafka broker, `lifelong run` consumes and learns,
a real Prometheus scrapes it."""
from __future__ import annotations

import gzip
import json
import subprocess
import uuid

import pytest
from harness import http_json, require, wait_until

from lifelong.stream.demo import demo_path

pytestmark = pytest.mark.integration

BAD_RECORDS = [
    "this is not json",
    json.dumps({"id": "bad-1"}),                                   # neither text nor features
    json.dumps({"id": "bad-2", "text": "hello", "label": 1.5}),    # a label of the wrong type
    json.dumps({"id": "bad-3", "features": [0.1, 0.2]}),           # features to a text model
    json.dumps({"id": "bad-4", "text": "hello", "extra": True}),   # unknown field
]


def _demo_events(n: int) -> list[str]:
    with gzip.open(demo_path(), "rt") as fh:
        return [next(fh).strip() for _ in range(n)]


def test_kcat_to_kafka_to_lifelong_to_prometheus(kafka_broker, prometheus, lifelong_daemon) -> None:
    n_valid = 400
    lines = _demo_events(n_valid)
    lines[50:50] = BAD_RECORDS
    n_total = len(lines)
    topic = f"events-{uuid.uuid4().hex[:8]}"
    kafka_broker.produce(topic, lines)

    daemon = lifelong_daemon({
        "source": {"kind": "kafka", "batch_size": 64,
                   "kafka": {"bootstrap_servers": kafka_broker.bootstrap, "events_topic": topic,
                             "group_id": f"g-{topic}"}},
        "learner": {"torch_threads": 1},
        "evaluation": {"holdout_fraction": 0.0},
    })
    prom = prometheus([daemon.target])
    daemon.wait_ready(timeout_s=120)

    # Prometheus, scraping the real service, sees every record consumed.
    wait_until(lambda: prom.value("lifelong_events_consumed_total") == n_total, 180,
               f"lifelong_events_consumed_total == {n_total} in Prometheus")
    wait_until(lambda: prom.value("lifelong_events_learned_total") == n_valid, 30, "learned total in Prometheus")
    rejected = {r["metric"]["reason"]: float(r["value"][1])
                for r in prom.query("lifelong_events_rejected_total")}
    assert rejected["not_json"] == 1
    assert rejected["missing_input"] == 1
    assert rejected["bad_label"] == 1
    assert rejected["wrong_input_kind"] == 1
    assert rejected["schema"] == 1
    assert sum(rejected.values()) == len(BAD_RECORDS)
    assert prom.value("lifelong_prequential_accuracy") > 0.5  # 15 classes: chance is 1/15
    assert prom.value('up{job="lifelong"}') == 1

    status, body = http_json("POST", f"{daemon.url}/v1/predict", {"instances": [
        {"text": "please freeze my bank account"}, {"text": "what is the routing number of my bank"}]})
    assert status == 200, body
    assert [p["label"] for p in body["predictions"]] == ["freeze_account", "routing"]
    assert body["model_version"] >= 1

    # The exposition passes Prometheus's own linter.
    status, text = http_json("GET", f"{daemon.url}/metrics")
    lint = subprocess.run([require("promtool"), "check", "metrics"], input=text.encode(), capture_output=True)
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    assert daemon.stop() == 0, daemon.log()
