"""An in-process stand-in for the two-topic Kafka consumer (events + labels), for the loop's unit tests.

It behaves like the real source where the learning loop can tell: records carry
topic, partition and offset; poll hands out at most ``max_records`` in the order
they were produced; commits are recorded and can be made to fail; already
consumed records can be handed out again (a rejoin after an outage).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lifelong.service.config import Settings
from loop_harness import merged_settings
from lifelong.stream.sources import Record, TopicPartition

EVENTS, LABELS = "events", "labels"


class TopicsSource:
    def __init__(self, start: dict[TopicPartition, int] | None = None) -> None:
        self.log: dict[str, list[Record]] = {EVENTS: [], LABELS: []}
        self.position = {EVENTS: 0, LABELS: 0}
        for (topic, _), offset in (start or {}).items():
            self.position[topic] = offset
        self.commits: list[dict[TopicPartition, int]] = []
        self.commit_ok = True
        self.order: list[str] = []  # which topic each produced record went to, in order
        self.skipped = 0

    @property
    def exhausted(self) -> bool:
        return False

    def produce(self, topic: str, values: list[Any]) -> None:
        for value in values:
            raw = value if isinstance(value, bytes) else (value if isinstance(value, str) else json.dumps(value)).encode()
            self.log[topic].append(Record(raw, topic, 0, len(self.log[topic])))
            self.order.append(topic)

    def poll(self, max_records: int, timeout_s: float = 0.0) -> list[Record]:
        out: list[Record] = []
        # Interleave the topics in production order, from each topic's position.
        seen = {EVENTS: 0, LABELS: 0}
        for topic in self.order:
            offset = seen[topic]
            seen[topic] += 1
            if offset >= self.position[topic] and len(out) < max_records:
                out.append(self.log[topic][offset])
                self.position[topic] = offset + 1
        return out

    def rewind(self, topic: str, offset: int) -> None:
        """Hand records out again from ``offset`` (what a rejoin at an old committed offset does)."""
        self.position[topic] = offset

    def commit(self, offsets: dict[TopicPartition, int]) -> bool:
        if not self.commit_ok:
            return False
        self.commits.append(dict(offsets))
        return True

    def lag(self) -> int | None:
        return sum(len(self.log[t]) - self.position[t] for t in self.log)

    def assigned(self) -> int:
        return 2

    def close(self) -> None:
        return None


def topics_settings(state_dir: Path | None, **overrides: Any) -> Settings:
    """A features learner fed from the two topics (kind kafka, so the labels topic is read)."""
    base: dict[str, Any] = {
        "source": {"kind": "kafka", "batch_size": 16, "poll_timeout_s": 0.001,
                   "kafka": {"events_topic": EVENTS, "labels_topic": LABELS}},
        "learner": {"name": "nmc", "input_kind": "features", "feature_dim": 4, "feature_warmup_events": 10},
        "evaluation": {"holdout_fraction": 0.0},
        "checkpoint": {"dir": str(state_dir) if state_dir else None, "every_s": 3600.0, "every_events": 10_000},
        "debug": {"track_learned_ids": True},
        "publish_every_events": 1,
    }
    return merged_settings(base, overrides)
