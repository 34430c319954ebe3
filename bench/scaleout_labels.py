"""``lifelong bench --scaleout``, learning part: delayed labels on two merging replicas (a real broker).

Events go to the events topic without their label; each label follows ``delay`` events later on
the labels topic, keyed by the event's id (so it lands in the partition of its event, and the
group gives both to the same replica). One replica learns alone at first, a second joins half way
(the group moves half the partitions, with the unlabelled events already parked on the first), and
at the end the second leaves gracefully. ``labels_joined_fraction``: labels joined to their event,
over all replicas, per label sent.
"""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from .faults_env import Broker, Daemon, Producer, wait_for

DIM = 4
PARTITIONS = 4


def _config(bootstrap: str, tag: str, name: str, state: Path) -> dict[str, Any]:
    return {
        "source": {"kind": "kafka", "batch_size": 50, "poll_timeout_s": 0.2, "lag_check_s": 0.5,
                   "kafka": {"bootstrap_servers": bootstrap, "events_topic": f"labels-{tag}-events",
                             "labels_topic": f"labels-{tag}-labels", "group_id": f"labels-{tag}",
                             "instance_id": name, "session_timeout_s": 6, "startup_timeout_s": 60}},
        "learner": {"input_kind": "features", "feature_dim": DIM, "encoder": "standardize",
                    "feature_warmup_events": 0, "torch_threads": 1},
        "outputs": {"predictions_topic": None, "dead_letter_topic": None},
        "evaluation": {"holdout_fraction": 0.0},
        "checkpoint": {"dir": str(state / name), "every_s": 2},
        "scaleout": {"learning": {"mode": "merge", "merge_topic": f"labels-{tag}-merge", "replica_id": name,
                                  "merge_every_events": 200, "merge_wait_s": 1.0}}}


def _label(producer: Producer, cfg: dict[str, Any], j: int, classes: int) -> None:
    """The delayed label of event ``j``, keyed like its event."""
    value = json.dumps({"id": f"e{j}", "label": f"c{j % classes}"}).encode()
    producer.send(cfg["source"]["kafka"]["labels_topic"], value, f"e{j}".encode())


def _send(producer: Producer, cfg: dict[str, Any], start: int, n: int, delay: int, rng: np.random.Generator,
          centres: np.ndarray) -> None:
    """Events ``start .. start+n-1``; after each, the label of the event ``delay`` before it."""
    k = cfg["source"]["kafka"]
    for i in range(start, start + n):
        c = i % len(centres)
        x = centres[c] + 0.4 * rng.normal(size=DIM)
        producer.send(k["events_topic"], json.dumps({"id": f"e{i}", "features": [round(float(v), 5) for v in x]}
                                                    ).encode(), f"e{i}".encode())
        if i >= delay:
            _label(producer, cfg, i - delay, len(centres))


def run_labels(workdir: Path, bootstrap: str | None, events: int = 4000, delay: int = 300,
               say: Callable[[str], None] = print) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    broker = None if bootstrap else Broker.start_new(workdir / "kafka", partitions=PARTITIONS)
    address = bootstrap or broker.bootstrap  # type: ignore[union-attr]
    daemons: list[Daemon] = []
    try:
        cfg = _config(address, tag, "topics", workdir)
        (workdir / "labels-topics.yaml").write_text(yaml.safe_dump(cfg))
        made = subprocess.run([sys.executable, "-m", "lifelong.cli", "topics", "create", "--config",
                               str(workdir / "labels-topics.yaml"), "--partitions", str(PARTITIONS)],
                              capture_output=True, text=True, timeout=120)
        if made.returncode != 0:
            raise RuntimeError(f"topics create failed: {made.stderr}")
        producer, rng = Producer(address), np.random.default_rng(0)
        centres = 3.0 * np.random.default_rng(7).normal(size=(4, DIM))
        a = Daemon(_config(address, tag, "ra", workdir), workdir, "labels-ra").start()
        daemons.append(a)
        # Not /readyz: a replica has no model before its first label. Its partitions: events and labels.
        wait_for(lambda: a.metric("lifelong_assigned_partitions") == 2 * PARTITIONS, 180, "a in the group")
        _send(producer, cfg, 0, events // 2, delay, rng, centres)
        producer.flush()
        b = Daemon(_config(address, tag, "rb", workdir), workdir, "labels-rb").start()
        daemons.append(b)
        wait_for(lambda: b.metric("lifelong_assigned_partitions") == PARTITIONS == a.metric(
            "lifelong_assigned_partitions"), 180, "the group splitting the partitions")
        say("second replica joined; the rest of the stream")
        _send(producer, cfg, events // 2, events - events // 2, delay, rng, centres)
        for j in range(events - delay, events):  # the last labels
            _label(producer, cfg, j, len(centres))
        producer.flush()
        producer.close()

        def counted() -> tuple[float, float]:
            ms = [d.metrics() for d in (a, b)]
            return (sum(m.get('lifelong_labels_total{outcome="joined"}', 0.0) for m in ms),
                    sum(m.get("lifelong_early_labels", 0.0) for m in ms))

        # Every label read: joined, or waiting for an event the other replica holds (a lag gauge of 0
        # can be a reading from before the last records were produced).
        wait_for(lambda: sum(counted()) >= events, 180, "every label read by a replica")
        try:  # a label read before its event (the events topic behind the labels topic) joins when it comes
            wait_for(lambda: counted()[1] == 0, 60, "no label waiting for its event")
        except TimeoutError:
            pass  # some never join: measured as they are
        joined, early = counted()
        b.stop()
        model = a.model()
        return {"events": events, "label_delay_events": delay, "labels_sent": events, "labels_joined": int(joined),
                "labels_joined_fraction": joined / events, "labels_waiting_for_their_event": int(early),
                "events_merged": model.get("merge", {}).get("events_merged")}
    finally:
        for d in daemons:
            if d.running:
                d.stop()
        if broker is not None:
            broker.stop()
