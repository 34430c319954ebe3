"""A model per key on a real broker: two replicas in one group sharing a key store, one joining
mid-stream, one killed (-9) and restarted, one leaving; each key's model ends up with each of its
events once, and either replica answers for any key."""
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
TENANTS = [f"t{i}" for i in range(8)]
CENTRES = 3.0 * np.random.default_rng(11).normal(size=(4, DIM))


def label(tenant: str, centre: int) -> str:
    """Each tenant names the centres in its own order: one shared model could not serve them all."""
    return f"c{(centre + TENANTS.index(tenant)) % len(CENTRES)}"


def events(n: int, start: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(start)
    lines, keys = [], []
    for i in range(start, start + n):
        tenant, c = TENANTS[i % len(TENANTS)], int(rng.integers(len(CENTRES)))
        x = CENTRES[c] + 0.4 * rng.normal(size=DIM)
        lines.append(json.dumps({"id": f"e{i}", "key": tenant, "label": label(tenant, c),
                                 "features": [round(float(v), 5) for v in x]}))
        keys.append(tenant)  # the Kafka message key: a tenant's events share a partition
    return lines, keys


def learned(d: Daemon) -> dict[str, int]:
    status, body = http_json("GET", f"{d.url}/v1/keys?limit=100")
    assert status == 200, body
    return {row["key"]: row["events_learned"] for row in body["keys"]}


def predicted(d: Daemon, tenant: str) -> list[str]:
    status, body = http_json("POST", f"{d.url}/v1/predict",
                             {"key": tenant, "instances": [{"features": [float(v) for v in c]} for c in CENTRES]})
    assert status == 200, body
    return [p["label"] for p in body["predictions"]]


def test_keys_follow_their_partitions_through_joins_kills_and_leaves(
        kafka_broker: Broker, lifelong_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    topic = f"ev-{tag}"

    def config(name: str) -> dict[str, Any]:
        # Both replicas share the key store; a small memory budget makes them evict and read back too.
        return replica_config(kafka_broker, topic, f"g-{tag}", name, tmp_path, DIM, {"mode": "per_key", "per_key": {
            "key_dir": str(tmp_path / "keys"), "max_resident_bytes": 8_000}})

    cfg = tmp_path / "topics.yaml"
    cfg.write_text(json.dumps(config("topics")))
    made = subprocess.run([sys.executable, "-m", "lifelong.cli", "topics", "create", "--config", str(cfg),
                           "--partitions", "4"], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    produced: dict[str, int] = {}

    def produce(n: int, start: int) -> None:
        lines, keys = events(n, start)
        kafka_broker.produce(topic, lines, keys)
        for k in keys:
            produced[k] = produced.get(k, 0) + 1

    produce(800, 0)
    a = lifelong_daemon(config("ra"))
    a.wait_ready()
    wait_until(lambda: sum(learned(a).values()) >= 400, 90, "replica a learning alone")
    b = lifelong_daemon(config("rb"))  # joins mid-stream: the group splits the partitions, keys follow
    b.wait_ready()
    wait_until(lambda: b.metric("lifelong_assigned_partitions") == 2 == a.metric("lifelong_assigned_partitions"), 60,
               "the group splitting the partitions")
    produce(800, 800)
    wait_until(lambda: sum(learned(b).values()) >= 200, 90, "replica b learning its keys")
    b.proc.send_signal(signal.SIGKILL)  # mid-stream: its keys' states are as of its last save
    b.proc.wait(30)
    b = lifelong_daemon(config("rb"))
    b.wait_ready()
    produce(800, 1600)
    assert a.stop() == 0  # leaves: saves its keys; b takes every partition and reads them
    produce(400, 2400)
    wait_until(lambda: learned(b) == produced, 120, f"replica b holding every key's events: {learned(b)} "
                                                    f"of {produced}")
    wait_until(lambda: b.metric("lifelong_consumer_lag_records") == 0, 30, "b caught up")
    assert learned(b) == produced  # each key's model: each of its events once, no more
    for tenant in TENANTS:
        assert predicted(b, tenant) == [label(tenant, c) for c in range(len(CENTRES))], tenant
    status, body = http_json("POST", f"{b.url}/v1/predict", {"key": "nobody", "instances": [{"features": [0.0] * DIM}]})
    assert status == 404, body
    assert b.metric("lifelong_keys_stored") == len(TENANTS) and b.metric("lifelong_key_evictions_total") > 0
    assert b.metric("lifelong_key_conflicts_total") == 0  # what the dashboard's per-key row reads
    assert 1 <= b.metric("lifelong_keys_in_memory") <= len(TENANTS) and b.metric("lifelong_keys_memory_bytes") > 0
