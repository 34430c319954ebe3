"""``scaleout.*``: settings of learning on several replicas (``learner/merging.py``, ``learner/keyed.py``)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class PerKeySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_dir: str | None = Field(None, description="Folder of the keys' states (None: checkpoint.dir/keys). "
                                "Replicas of one consumer group share it, so a key's model follows its partition.")
    max_keys: int = Field(10_000, ge=1, description="Keys the store may hold; an event of a new key past it is "
                          "dead-lettered (too_many_keys).")
    max_resident_bytes: int = Field(1 << 30, ge=0, description="Learners in memory, all keys together; past "
                                    "it the least recently used keys are saved to the store and dropped.")
    key_memory_bytes: int = Field(8 << 20, ge=1 << 16, description="Each key's replay memory budget (instead of "
                                  "learner.memory_budget_bytes).")
    served_cache_keys: int = Field(256, ge=1, description="Served models of keys not in memory kept for HTTP "
                                   "(read from the store, again when a key's state changes).")


class LearningScaleoutSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "merge", "per_key"] = Field(
        "off", description="off: one learner per model; merge: learner replicas in one consumer group learn "
        "disjoint partitions and merge into one model through the merge channel (lifelong learner on a frozen "
        "encoder only); per_key: one model per event key (the event's 'key' field), each learned where its "
        "partition is, served by key.")
    merge_every_events: int = Field(500, ge=1, description="Events a replica learns between its contributions "
                                    "to a merge.")
    merge_topic: str = Field("lifelong-merge", description="Compacted Kafka topic of contributions and merged "
                             "bases (one partition).")
    merge_dir: str | None = Field(None, description="A local folder as the merge channel instead of the topic "
                                  "(replicas on one machine).")
    replica_id: str | None = Field(None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$",
                                   description="This replica's stable name (None: source.kafka.instance_id, else "
                                   "host-pid at the first start, then the checkpoint's).")
    reducer: Literal["auto", "always", "never"] = Field(
        "auto", description="Whether this replica reduces contributions into bases. auto: while it owns "
        "partition 0 of the events topic (any source but Kafka: always); a new reducer fences the old.")
    merge_wait_s: float = Field(2.0, gt=0, description="How long the reducer waits for the replicas of the "
                                "last round before merging the contributions it has.")
    replay_items: int = Field(1024, ge=0, description="Replay sample (taps, float16) each contribution carries "
                              "to the other replicas.")
    chunk_bytes: int = Field(512 << 10, ge=16 << 10, le=900 << 10, description="Largest record on the merge "
                             "topic; a contribution or base goes in several in one transaction.")
    per_key: PerKeySettings = Field(default_factory=PerKeySettings, description="mode per_key: the keys' store "
                                    "and budgets.")


class ScaleoutSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    learning: LearningScaleoutSettings = Field(default_factory=LearningScaleoutSettings,
                                               description="Learning on several replicas.")


def scaleout_problem(settings: Any) -> str | None:
    """Why ``settings`` cannot run its ``scaleout.learning.mode`` (None: it can)."""
    learning = settings.scaleout.learning
    mode = learning.mode
    if mode == "off":
        return None
    if mode == "merge" and settings.source.kind != "kafka" and learning.merge_dir is None:
        return ("scaleout.learning.mode 'merge' needs source.kind 'kafka' (the merge topic) or "
                "scaleout.learning.merge_dir")
    if settings.role == "predictor" or settings.publishes:
        served = "each replica's merged model" if mode == "merge" else "every key (from the shared key store)"
        return (f"scaleout.learning.mode {mode!r} serves {served} over each replica's own HTTP; publishing snapshots "
                "(role learner or predictor, snapshots.publish) is not supported with it yet")
    if settings.checkpoint.dir is None:
        why = ("a replica checkpoints before each contribution, so a kill -9 never merges an event twice"
               if mode == "merge" else "the keys' states are saved with each checkpoint, and the offsets they hold "
               "keep every event learned once")
        return f"scaleout.learning.mode {mode!r} needs checkpoint.dir: {why}"
    return None
