"""``forget.*`` and ``influence.*``: forgetting on request, and how much any one source may teach."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..learner.influence import InfluenceConfig
from ..learner.registry import LEARNERS
from ..memory.tombstones import WEEK_S


class ForgetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Lifelong learners keep each replay item's event-id tag and source tag "
                          "(16 bytes an item, within learner.memory_budget_bytes), so POST /v1/forget and the "
                          "forget topic can remove events; false: both answer that forgetting is off.")
    tombstone_retention_s: float = Field(WEEK_S, gt=0, description="How long a forgotten id or source keeps its "
                                         "events from being learned again (read again after a restart, resent): "
                                         "at least the events topic's retention (Kafka's default: 7 days).")
    max_tombstones: int = Field(1_000_000, ge=1, description="Forgotten ids remembered (16 bytes each: a 64-bit hash and a time); "
                                "past it the oldest go first (logged).")
    max_ids_per_request: int = Field(10_000, ge=1, description="Most ids in one forget request (HTTP 413 above; on "
                                     "the forget topic a dead letter, too_many_ids).")
    request_timeout_s: float = Field(60.0, gt=0, description="Longest POST /v1/forget waits for the learning loop "
                                     "to apply its request (past it 504; the request is still applied).")
    max_queued_requests: int = Field(16, ge=1, description="Forget requests from HTTP waiting for the learning "
                                     "loop; past it 503 with Retry-After.")


_BOUND = InfluenceConfig()  # the learner's defaults: docs/benchmarks/poison/README.md has their measurements


class InfluenceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_memory_share: float = Field(1.0, gt=0, le=1, description="The most of the replay memory one source "
                                       "may hold (lifelong learners; 1: no bound).")
    source_step_share: float = Field(_BOUND.source_step_share, gt=0, le=1, description="The most of one learning "
                                     "batch's loss weight one source's events carry (lifelong learners; 1: no bound).")
    suspect_weight: float = Field(_BOUND.suspect_weight, ge=0, le=1, description="Loss weight of a suspect event: "
                                  "its label contradicts a confident prediction and its source's rate of such "
                                  "events stands out against the median source's (a real drift raises every "
                                  "source's rate at once). Suspects also stay out of replay memory. 1: no "
                                  "suspect is down-weighted (lifelong_events_suspect_total counts them).")
    suspect_ratio: float = Field(_BOUND.suspect_ratio, gt=1, description="A source stands out at this multiple "
                                 "of the median source's faded suspect rate (and 0.1 above it).")
    suspect_confidence: float = Field(_BOUND.suspect_confidence, gt=0, lt=1, description="How sure of another "
                                      "class the prediction before learning must be for a label to be a suspect.")
    max_source_rate: float = Field(0.0, ge=0, description="Events per second one source may send (a token bucket "
                                   "per source, a second's worth of burst); events over it are not learned or "
                                   "predicted, counted in lifelong_events_throttled_total. 0: no limit. Events "
                                   "without a source are never throttled.")
    dead_letter_throttled: bool = Field(False, description="Send throttled events to the dead-letter topic "
                                        "(reason source_over_rate) instead of only counting them.")

    def learner_fields(self) -> dict[str, Any]:
        """The fields the learner's influence bound takes (``ContinualConfig.influence``); the rate limit is the
        service's own, at intake."""
        return self.model_dump(exclude={"max_source_rate", "dead_letter_throttled"})


def forget_problem(settings: Any) -> str | None:
    """Why ``settings`` cannot consume its forget topic as configured (None: it can)."""
    kafka = settings.source.kafka
    topic = kafka.forget_topic
    if topic is None or settings.source.kind != "kafka":
        return None
    if topic in (kafka.events_topic, kafka.labels_topic):
        return f"source.kafka.forget_topic {topic!r} must differ from the events and labels topics"
    if not settings.forget.enabled:  # its requests would be read, refused and committed: lost
        return "source.kafka.forget_topic needs forget.enabled"
    entry = LEARNERS[settings.learner.name]
    if not (entry.continual and entry.replay):  # likewise: every request would be refused
        return (f"source.kafka.forget_topic needs a learner that can forget (a lifelong learner with replay), "
                f"not {settings.learner.name!r}")
    mode = settings.scaleout.learning.mode
    if mode != "off":  # one partition reaches one replica; per_key: POST /v1/forget to every replica instead
        return f"source.kafka.forget_topic is not supported with scaleout.learning.mode {mode!r} yet"
    return None
