"""``lifelong topics create|check``: the topics a deployment needs, with the settings that matter.

- events and labels: the same partition count, so a label keyed by its event's
  id lands in the partition of the event (``lifelong produce`` keys by id) and
  reaches the learner replica that parked the event;
- forget requests: one partition, applied in order;
- predictions and dead letters: plain;
- snapshots: compacted (the latest record of every key is kept for good, so a
  predictor that starts a month later still finds the latest snapshot), one
  partition by default, and a ``max.message.bytes`` that holds one chunk.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import Settings

SNAPSHOT_OVERHEAD = 64 << 10  # headers, key and batch framing around one chunk


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    role: str = ""


def planned(settings: Settings, partitions: int, snapshot_partitions: int = 1) -> list[TopicSpec]:
    k, out, snap = settings.source.kafka, settings.outputs, settings.snapshots
    specs = [TopicSpec(k.events_topic, partitions, role="events")]
    if k.labels_topic:
        specs.append(TopicSpec(k.labels_topic, partitions, role="labels"))
    if k.forget_topic:  # one partition: requests are applied in the order they were made
        specs.append(TopicSpec(k.forget_topic, 1, role="forget requests"))
    for name, role in ((out.predictions_topic, "predictions"), (out.dead_letter_topic, "dead letters")):
        if name:
            specs.append(TopicSpec(name, partitions, role=role))
    merging = settings.scaleout.learning
    if merging.mode == "merge" and merging.merge_dir is None:  # one partition: chunks in order, one reader path
        specs.append(TopicSpec(merging.merge_topic, 1, role="merge", configs=_compacted(merging.chunk_bytes)))
    if snap.dir is not None:
        return specs  # the snapshot channel is a local folder
    specs.append(TopicSpec(snap.topic, snapshot_partitions, role="snapshots", configs=_compacted(snap.chunk_bytes)))
    return specs


def _compacted(chunk_bytes: int) -> dict[str, str]:
    return {"cleanup.policy": "compact", "max.message.bytes": str(max(1048588, chunk_bytes + SNAPSHOT_OVERHEAD)),
            # A segment must roll before compaction can clean it; ten minutes bounds how many
            # old records a starting reader reads past.
            "segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1"}


def _admin(settings: Settings) -> Any:
    from kafka.admin import KafkaAdminClient

    k = settings.source.kafka
    return KafkaAdminClient(bootstrap_servers=k.bootstrap_servers.split(","), client_id="lifelong-topics",
                            **dict(k.client_options))


def create(settings: Settings, partitions: int, replication: int) -> list[str]:
    """Create the missing topics; returns one line per topic."""
    from kafka.admin import NewTopic

    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        lines, new = [], []
        for spec in planned(settings, partitions):
            if spec.name in existing:
                lines.append(f"exists   {spec.name} ({spec.role})")
                continue
            new.append(NewTopic(spec.name, spec.partitions, replication, topic_configs=spec.configs))
            lines.append(f"created  {spec.name} ({spec.role}, {spec.partitions} partitions"
                         + (", compacted" if spec.configs else "") + ")")
        if new:
            admin.create_topics(new, timeout_ms=30000)
        return lines
    finally:
        admin.close()


def check(settings: Settings) -> list[str]:
    """What is wrong with the topics (empty: all good)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        specs = planned(settings, 1)
        problems = [f"{s.name} ({s.role}) does not exist" for s in specs if s.name not in existing]
        present = [s for s in specs if s.name in existing]
        counts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics([s.name for s in present])}
        k = settings.source.kafka
        if k.labels_topic and {k.events_topic, k.labels_topic} <= set(counts):
            if counts[k.events_topic] != counts[k.labels_topic]:
                problems.append(f"{k.labels_topic} has {counts[k.labels_topic]} partitions, {k.events_topic} "
                                f"{counts[k.events_topic]}: a label keyed by id would land in another partition "
                                "than its event")
        snap = settings.snapshots.topic
        if snap in counts and settings.snapshots.dir is None:
            res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, snap)], config_filter="all")
            problems += _snapshot_problems(settings, _configs_of(res, snap))
        return problems
    finally:
        admin.close()


def _configs_of(response: Any, topic: str) -> dict[str, str]:
    """{key: value} out of describe_configs' nested answer."""
    for by_name in (response or {}).values():
        if isinstance(by_name, dict) and topic in by_name:
            return {key: str(v.get("value") if isinstance(v, dict) else v) for key, v in by_name[topic].items()}
    return {}


def _snapshot_problems(settings: Settings, configs: dict[str, str]) -> list[str]:
    topic, problems = settings.snapshots.topic, []
    if "compact" not in configs.get("cleanup.policy", ""):
        problems.append(f"{topic} is not compacted (cleanup.policy={configs.get('cleanup.policy')}): the latest "
                        "snapshot would be deleted by retention")
    if "delete" in configs.get("cleanup.policy", ""):
        problems.append(f"{topic} also deletes by retention: the latest snapshot could be lost")
    need = settings.snapshots.chunk_bytes + SNAPSHOT_OVERHEAD
    have = int(configs.get("max.message.bytes", "0") or 0)
    if have and have < need:
        problems.append(f"{topic} max.message.bytes={have} is below one chunk ({need}); lower "
                        "snapshots.chunk_bytes or raise it")
    return problems
