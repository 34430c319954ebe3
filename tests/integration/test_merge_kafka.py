"""Learner replicas that merge, on a real broker: a replica joining mid-stream, one killed (-9) and
restarted mid-merge, the reducer killed (-9) and the role moving with partition 0, one leaving; every
event ends up counted once in the surviving model."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from harness import Broker, Daemon, http_json, replica_config, wait_until

pytestmark = pytest.mark.integration

DIM = 4
TOTAL = 2600  # events produced in all
CENTRES = 3.0 * np.random.default_rng(7).normal(size=(4, DIM))


def events(n: int, start: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(start)
    lines, keys = [], []
    for i in range(start, start + n):
        c = i % len(CENTRES)
        x = CENTRES[c] + 0.4 * rng.normal(size=DIM)
        lines.append(json.dumps({"id": f"e{i}", "features": [round(float(v), 5) for v in x], "label": f"c{c}"}))
        keys.append(f"e{i}")
    return lines, keys


def merge_info(d: Daemon) -> dict[str, Any]:
    status, body = http_json("GET", f"{d.url}/v1/model")
    assert status == 200, body
    return body["merge"]


def test_replicas_join_die_and_leave_and_every_event_counts_once(
        kafka_broker: Broker, lifelong_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    topic, merge_topic = f"ev-{tag}", f"merge-{tag}"

    def config(name: str) -> dict[str, Any]:
        return replica_config(kafka_broker, topic, f"g-{tag}", name, tmp_path, DIM, {
            "mode": "merge", "merge_topic": merge_topic, "replica_id": name, "merge_every_events": 50,
            "merge_wait_s": 1.0})

    cfg = tmp_path / "topics.yaml"
    cfg.write_text(json.dumps(config("topics")))
    made = subprocess.run([sys.executable, "-m", "lifelong.cli", "topics", "create", "--config", str(cfg),
                           "--partitions", "4"], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0 and merge_topic in made.stdout + made.stderr, made.stderr

    kafka_broker.produce(topic, *events(600, 0))
    a = lifelong_daemon(config("ra"))
    a.wait_ready()
    wait_until(lambda: merge_info(a)["events_merged"] >= 300, 90, "replica a merging alone")
    b = lifelong_daemon(config("rb"))  # joins mid-stream: the group splits the partitions
    b.wait_ready()
    wait_until(lambda: b.metric("lifelong_assigned_partitions") == 2 == a.metric("lifelong_assigned_partitions"), 60,
               "the group splitting the partitions")
    kafka_broker.produce(topic, *events(600, 600))
    wait_until(lambda: b.metric("lifelong_merge_contributions_total") >= 1, 90, "replica b contributing")
    b.proc.send_signal(signal.SIGKILL)  # mid-stream, somewhere in a merge cycle
    b.proc.wait(30)
    b = lifelong_daemon(config("rb"))  # the same replica, from its checkpoint
    b.wait_ready()
    kafka_broker.produce(topic, *events(600, 1200))
    wait_until(lambda: merge_info(a)["events_merged"] + merge_info(b)["events_merged"] >= 2 * 1500, 120,
               "both replicas merging the stream")
    a.proc.send_signal(signal.SIGKILL)  # the reducer this time: b takes its partitions and the role
    a.proc.wait(30)
    kafka_broker.produce(topic, *events(400, 1800))
    wait_until(lambda: merge_info(b)["reducer"] and merge_info(b)["events_merged"] >= 1900, 120,
               "replica b reducing once the group gave it a's partitions")
    a = lifelong_daemon(config("ra"))  # back from its checkpoint; takes partition 0 and the role again
    a.wait_ready()
    wait_until(lambda: a.metric("lifelong_assigned_partitions") == 2, 60, "replica a back in the group")
    kafka_broker.produce(topic, *events(400, 2200))
    wait_until(lambda: merge_info(a)["events_merged"] >= 2400 and merge_info(a)["reducer"], 120,
               "replica a reducing again")
    assert b.stop() == 0  # leaves: hands its last events on before exiting
    def settled() -> bool:
        m = merge_info(a)
        return m["events_merged"] + m["events_unmerged"] == TOTAL and not m["pending"]
    wait_until(settled, 120, f"replica a holding every event once: {merge_info(a)}")
    m = merge_info(a)
    assert m["events_in_model"] == TOTAL, m  # merged ones and a's own unmerged tail, each once
    assert m["round"] >= 10 and a.metric("lifelong_merge_rejects_total") == 0, m
    # What the dashboard's merge row reads (the monitoring test runs no merging replica).
    assert a.metric("lifelong_merge_round") == m["round"] and a.metric("lifelong_merge_events") == m["events_merged"]
    assert a.metric("lifelong_merge_bases_total") >= 1 and a.metric("lifelong_merge_contributions_total") >= 1
    assert a.metric("lifelong_merge_seconds_total") > 0
    status, body = http_json("POST", f"{a.url}/v1/predict",
                             {"instances": [{"features": [float(v) for v in c]} for c in CENTRES]})
    assert status == 200 and [p["label"] for p in body["predictions"]] == ["c0", "c1", "c2", "c3"], body
