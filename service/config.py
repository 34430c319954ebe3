"""One settings model: YAML file, then ``LIFELONG_*`` environment overrides.

Precedence (highest first): environment variables, the YAML file, defaults.
Nested fields use ``__`` in environment names, e.g.
``LIFELONG_SOURCE__KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:9092``.
Unknown keys are errors, so a typo never silently falls back to a default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from ..learner.registry import LEARNERS, PRODUCT
from ..learner.text_runtime import AUTO_CPU
from .forget_settings import ForgetSettings, InfluenceSettings, forget_problem
from .scaleout_settings import ScaleoutSettings, scaleout_problem

ENV_PREFIX = "LIFELONG_"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(Section):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated broker addresses.")
    events_topic: str = Field("lifelong-events", description="Topic the events are consumed from.")
    labels_topic: str | None = Field(
        None, description="Topic of delayed labels {id, label}; when set, POST /v1/feedback writes to it too.")
    forget_topic: str | None = Field(None, description="Topic of forget requests ({ids} or {source}, as POST "
                                     "/v1/forget takes), applied and checkpointed before their offset is committed.")
    source_header: str | None = Field(None, min_length=1, description="Kafka record header naming the event's "
                                      "source (it wins over the event's own 'source' field).")
    group_id: str = Field("lifelong", description="Consumer group; replicas in one group split the partitions.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new group starts reading.")
    startup_timeout_s: float = Field(120.0, gt=0, description="How long to retry while no broker answers at start.")
    instance_id: str | None = Field(
        None, description="Static group membership id (one per replica, stable across restarts): a restarted "
        "replica takes its partitions back at once instead of waiting for the session timeout.")
    session_timeout_s: float = Field(10.0, ge=1, le=300, description="How long the group waits for a silent "
                                     "replica before moving its partitions.")
    client_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to the kafka-python consumer as is (security_protocol, ssl_*, sasl_* ...).")


class SourceSettings(Section):
    kind: Literal["demo", "file", "kafka"] = Field(
        "demo", description="demo: the packaged CLINC150 stream; file: a JSONL file; kafka: a topic.")
    path: Path | None = Field(None, description="JSONL (optionally .gz) file for kind=file.")
    batch_size: int = Field(64, ge=1, le=10_000, description="Most records taken in one poll and learning step.")
    poll_timeout_s: float = Field(0.5, gt=0, description="Longest wait for records in one poll.")
    lag_check_s: float = Field(5.0, gt=0, description="Seconds between consumer-lag measurements (Kafka).")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="Kafka consumer settings.")

    @model_validator(mode="after")
    def _path_for_file(self) -> "SourceSettings":
        if self.kind == "file" and self.path is None:
            raise ValueError("source.path is required when source.kind is 'file'")
        return self


LearnerName = Literal[PRODUCT]  # type: ignore[valid-type]  # the registry's product learners


# What plastic_top auto means, by measurement (lifelong bench on fashion-mnist-split, CPU).
AUTO_PLASTIC_TOP = True


class LearnerSettings(Section):
    name: LearnerName = Field(
        "lifelong", description="; ".join(f"{n}: {LEARNERS[n].description}" for n in PRODUCT) + ".")
    input_kind: Literal["text", "features"] = Field("text", description="What events carry.")
    encoder: Literal["auto", "efficientnet-lite0", "mlp", "standardize"] = Field(
        "auto", description="auto: all-MiniLM-L6-v2 for text; for features mlp with a lifelong learner, "
        "standardize otherwise; efficientnet-lite0: frozen ImageNet CNN for images sent as pixel `features` "
        "(needs image_shape); mlp: features only, standardised then a small MLP trained on the first "
        "base_init_events events (a lifelong learner on the standardised features predicts meanwhile), its "
        "bottom then frozen; standardize: features only, running standardisation alone.")
    base_init_events: int = Field(2000, ge=1, description="Labelled events that train the mlp encoder before "
                                  "its bottom freezes.")
    fast_expert: bool = Field(False, description="Mix a per-event softmax regression on the taps (learned "
                              "event by event inside each batch) into every prediction, weighted by Hedge, at most "
                              "half the vote (lifelong): higher prequential accuracy on autocorrelated drifting "
                              "streams, lower accuracy on old concepts.")
    image_shape: tuple[int, ...] | None = Field(None, description="(H, W) or (H, W, C) of an image event's "
                                                "pixel vector (0..255, row-major) for an image encoder.")
    image_side: int = Field(96, ge=32, le=512, multiple_of=32, description="Images are resized to this square "
                            "side for the image encoder (64: about 2.5x faster, 1-2 points less accurate).")
    plastic_top: Literal["auto", "on", "off"] = Field(
        "auto", description="Plasticity below the tap (efficientnet-lite0, lifelong learners): the tap moves "
        "before the network's last block, replay stores those mid-level maps and the last block and head conv "
        "learn through LoRA pairs. auto: on (measured on Fashion-MNIST: served 0.887 against 0.810 for the "
        "linear top; the learner 141 images/s on one CPU thread against 384, the encoder about 100); off: the "
        "linear top on the pooled embedding.")
    feature_dim: int | None = Field(None, ge=1, description="Feature vector width; required when "
                                    "input_kind is 'features'.")
    feature_warmup_events: int = Field(1000, ge=0, description="Events whose statistics standardise features.")
    feature_horizon_events: int = Field(0, ge=0, description="After the warm-up, feature statistics follow the "
                                        "stream over about this many events (lifelong learners; stored taps are "
                                        "re-mapped exactly); 0: frozen after the warm-up.")
    max_tokens: int = Field(128, ge=8, le=512, description="Text is truncated to this many tokens.")
    encoder_runtime: Literal["auto", "torch", "torch-int8", "onnx", "onnx-int8"] = Field(
        "auto", description="How all-MiniLM-L6-v2 runs. torch: fp32 (the reference); torch-int8: linear layers "
        "quantised to int8; onnx / onnx-int8: ONNX Runtime on a graph exported once from the packaged weights "
        "(cached under $LIFELONG_CACHE_DIR or ~/.cache/lifelong/onnx), int8 per output channel. auto: "
        f"{AUTO_CPU} on the CPU, torch on CUDA (by measurement; docs/benchmarks/speed).")
    memory_budget_bytes: int = Field(64 << 20, ge=1 << 16, description="Replay memory budget (lifelong), "
                                     "codebook included.")
    pq_m: int | None = Field(None, ge=0, description="PQ sub-quantisers, i.e. bytes per stored tap (lifelong; 0: "
                             "raw); None: 96, or 0 with plastic_top (exact mid-level maps within the budget).")
    steps_per_batch: int | None = Field(None, ge=1, description="Optimiser steps per micro-batch (lifelong); None: "
                                        "8, or 4 with plastic_top.")
    replay_per_step: int | None = Field(None, ge=0, description="Replayed items mixed into each step (lifelong); "
                                        "None: 256, or 128 with plastic_top.")
    rank: int = Field(8, ge=1, description="LoRA rank of the adapter (lifelong).")
    ema_decay: float = Field(0.99, ge=0, lt=1, description="EMA decay of the served weights after warm-up "
                             "(lifelong; 0.9 during warm-up).")
    seed: int = Field(0, description="Random seed (lifelong).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the encoder and the lifelong "
                                                   "learner's training run; auto: cuda when a GPU is present.")
    lr: float = Field(0.5, gt=0, description="Head learning rate (nmc).")
    head_weight: float = Field(0.5, ge=0, le=1, description="Weight of the head vs. the prototypes in predictions "
                               "(nmc).")
    proto_scale: float = Field(16.0, gt=0, description="Softmax temperature (inverse) over prototype similarities "
                               "(nmc).")
    torch_threads: int | None = Field(None, ge=1, description="CPU threads for torch; None: 1 for feature vectors "
                                      "(tiny products), torch's default otherwise.")

    @model_validator(mode="after")
    def _mlp_for_lifelong_features(self) -> "LearnerSettings":
        entry = LEARNERS[self.name]
        if self.encoder == "mlp" and (self.input_kind != "features" or not entry.continual):
            raise ValueError("learner.encoder mlp needs learner.input_kind 'features' and a lifelong learner")
        if self.encoder == "standardize" and (self.input_kind != "features" or entry.features_only):
            raise ValueError("learner.encoder standardize needs learner.input_kind 'features' and not "
                             f"{self.name!r}, which always learns an MLP encoder")
        if self.fast_expert and not entry.continual:
            raise ValueError(f"learner.fast_expert needs a lifelong learner, not {self.name!r}")
        if self.plastic_top == "on" and (self.encoder != "efficientnet-lite0" or not entry.continual):
            raise ValueError("learner.plastic_top on needs learner.encoder efficientnet-lite0 and a lifelong "
                             f"learner, not encoder {self.encoder!r} with {self.name!r}")
        if entry.features_only and self.input_kind != "features":
            raise ValueError(f"learner.name {self.name!r} needs learner.input_kind 'features'")
        return self

    @property
    def mlp_encoder(self) -> bool:
        """Whether the learner learns an MLP encoder on the standardised features (base-initialisation)."""
        entry = LEARNERS[self.name]
        auto = self.encoder == "auto" and self.input_kind == "features" and entry.continual
        return self.encoder == "mlp" or entry.features_only or auto

    @property
    def deep_top(self) -> bool:
        """Whether the image encoder stops at the mid-level tap and the learner's top is plastic below it."""
        on = self.plastic_top == "on" or (self.plastic_top == "auto" and AUTO_PLASTIC_TOP)
        return on and self.encoder == "efficientnet-lite0" and LEARNERS[self.name].continual

    @model_validator(mode="after")
    def _dim_for_features(self) -> "LearnerSettings":
        if self.encoder == "efficientnet-lite0":
            if self.input_kind != "features" or self.image_shape is None:
                raise ValueError("learner.encoder efficientnet-lite0 needs learner.input_kind 'features' and "
                                 "learner.image_shape")
        elif self.input_kind == "features" and self.feature_dim is None:
            raise ValueError("learner.feature_dim is required when learner.input_kind is 'features'")
        return self


class HttpSettings(Section):
    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    max_instances: int = Field(256, ge=1, description="Most instances in one /v1/predict request.")
    auth_token: SecretStr | None = Field(None, description="If set, /v1/* requires 'Authorization: Bearer <token>' "
                                         "(health, readiness and metrics stay open).")
    batch_max_instances: int = Field(64, ge=1, description="Most instances the predict micro-batcher joins into one "
                                     "model call (1: no coalescing; a larger request still runs, alone).")
    batch_wait_ms: float = Field(0.0, ge=0, le=100, description="How long the batcher waits for more requests "
                                 "to join a batch (0: none; requests already queued still join).")
    max_queued_instances: int = Field(2048, ge=1, description="Instances waiting for prediction; past it "
                                      "/v1/predict answers 503 with Retry-After.")
    request_timeout_s: float = Field(10.0, gt=0, description="Longest a /v1/predict waits for its answer "
                                     "(queue and model); past it 504.")
    keep_alive_s: float = Field(5.0, gt=0, description="Idle keep-alive connections are closed after this long.")
    graceful_shutdown_s: float = Field(10.0, gt=0, description="On SIGTERM, longest wait for in-flight requests "
                                       "before the final checkpoint.")
    header_timeout_s: float = Field(10.0, gt=0, description="Longest a client may take to send a request's "
                                    "headers; past it the connection is answered 408 and closed.")
    body_timeout_s: float = Field(30.0, gt=0, description="Longest a client may take to send a request's body; "
                                  "past it 408.")
    access_log: bool = Field(False, description="Log every HTTP request (method, path, status) at INFO, in "
                             "log_format.")

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> "HttpSettings":
        if self.max_queued_instances < self.max_instances:
            raise ValueError("http.max_queued_instances must be at least http.max_instances")
        return self


class LimitSettings(Section):
    max_record_bytes: int = Field(1_000_000, ge=64, description="Largest record or request body accepted.")
    max_text_chars: int = Field(10_000, ge=1, description="Longest text accepted.")
    max_features: int = Field(65_536, ge=1, description="Widest feature vector accepted.")
    max_json_depth: int = Field(64, ge=2, le=1000, description="Deepest nesting of JSON arrays and objects in a "
                                "record or request; deeper is rejected as too_deep.")
    max_id_chars: int = Field(256, ge=1, le=4096, description="Longest event id or label accepted (events, label "
                              "messages and /v1/feedback alike).")
    max_classes: int = Field(10_000, ge=2, description="Most classes the model learns; an event with a new "
                             "label past it is rejected as too_many_classes (memory grows with every class).")
    dedup_window: int = Field(100_000, ge=0, description="Recent event ids remembered to reject duplicates.")


class LabelSettings(Section):
    max_pending: int = Field(100_000, ge=1, description="Unlabelled events kept waiting for a label.")
    max_wait_s: float = Field(3600.0, gt=0, description="A label later than this after its event is dropped; "
                              "a label that arrives first waits as long for its event.")
    max_queued_feedback: int = Field(10_000, ge=1, description="Labels from HTTP queued for the loop; "
                                     "past it /v1/feedback answers 503.")


class OutputSettings(Section):
    predictions_topic: str | None = Field(
        "lifelong-predictions", description="Kafka topic for predictions on unlabelled events (None: off).")
    dead_letter_topic: str | None = Field(
        "lifelong-dead-letters", description="Kafka topic for rejected records with the reason in headers (None: off).")
    flush_timeout_s: float = Field(10.0, gt=0, description="Longest wait for outputs to be acknowledged "
                                   "before a checkpoint.")
    max_message_bytes: int = Field(1_000_000, ge=1024, description="Largest output message the producer sends "
                                   "(its max_request_size); a dead letter over it carries a truncated payload with "
                                   "the original size and sha256 in headers.")
    dead_letter_attempts: int = Field(5, ge=1, description="Deliveries tried for one dead letter before it is "
                                      "logged, counted (lifelong_dead_letters_dropped_total) and dropped; it never "
                                      "holds the checkpoint back.")


class CheckpointSettings(Section):
    dir: Path | None = Field(Path("lifelong-state"), description="Folder for checkpoints (None: no checkpoints; "
                             "offsets are then committed after each batch).")
    every_s: float = Field(30.0, gt=0, description="Longest time between checkpoints.")
    every_events: int = Field(10_000, ge=1, description="Most records between checkpoints, unless writing them "
                              "that often would take more than max_time_fraction of the time.")
    max_time_fraction: float = Field(0.1, gt=0, le=1, description="Most of the loop's time checkpoints may take: "
                                     "after one that took d seconds, every_events is not acted on before "
                                     "d / max_time_fraction seconds (every_s still bounds the gap; 1: off).")
    keep: int = Field(3, ge=1, le=100, description="Checkpoints kept; a damaged newest one is skipped for the next "
                      "valid one at start.")
    on_unrecoverable: Literal["refuse", "start_empty"] = Field(
        "refuse", description="When checkpoints exist but none is valid: refuse to start (naming the files), or "
        "start from nothing.")


class SnapshotSettings(Section):
    topic: str = Field("lifelong-snapshots", description="Compacted Kafka topic the learner publishes serving "
                       "snapshots to and predictors read them from (roles learner and predictor).")
    dir: str | None = Field(None, description="A local folder as the snapshot channel instead of the Kafka "
                            "topic: a learner and predictors on one machine (say, serving in a process of its "
                            "own, beside a busy learner), with no broker for the snapshots.")
    model_key: str = Field("default", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$",
                           description="Names the model on the topic (its record key); one learner per key.")
    transactional_id: str | None = Field(None, description="The learner's stable Kafka transactional id "
                                         "(None: lifelong-learner-<model_key>); a second learner with the same id "
                                         "fences the first.")
    publish: bool = Field(False, description="Role all publishes its snapshots too (role learner always does).")
    chunk_bytes: int = Field(512 << 10, ge=16 << 10, le=900 << 10, description="Largest record of a snapshot: "
                             "bigger snapshots go in several chunks in one transaction, so no broker or client "
                             "needs its 1 MiB message limits raised.")
    min_interval_s: float = Field(1.0, ge=0, description="Shortest time between two published snapshots (the "
                                  "newest waiting one is sent, those in between are skipped).")
    heartbeat_s: float = Field(1.0, gt=0, description="How often the learner restates its latest version, so "
                               "predictors can tell an idle learner from a lost one.")
    max_bytes: int = Field(256 << 20, ge=1 << 16, description="Largest snapshot a predictor accepts.")
    max_staleness_s: float = Field(30.0, gt=0, description="A predictor's /readyz answers 503 when the learner "
                                   "has not confirmed the served version for this long.")


class EvaluationSettings(Section):
    holdout_fraction: float = Field(0.05, ge=0, lt=1, description="Labelled events held out for continual "
                                    "evaluation instead of learned (hash of the id; 0 disables).")
    per_segment_cap: int = Field(1000, ge=1, description="Most held-out events kept per segment.")
    eval_every: int = Field(500, ge=1, description="Learned events between evaluations (rho).")
    class_absent_window: int = Field(2000, ge=1, description="Events a class must be absent to count as past "
                                     "(class-based stability gap).")


class DebugSettings(Section):
    track_learned_ids: bool = Field(False, description="Keep a per-event-id learn count in the checkpoint "
                                    "(test hook for the exactly-once guarantee).")


class Settings(BaseSettings):
    """Everything the daemon reads; see ``lifelong config docs`` for the reference."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    source: SourceSettings = Field(default_factory=SourceSettings, description="Where events come from.")
    learner: LearnerSettings = Field(default_factory=LearnerSettings, description="The online learner.")
    http: HttpSettings = Field(default_factory=HttpSettings, description="The HTTP server.")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="Bounds on input.")
    labels: LabelSettings = Field(default_factory=LabelSettings, description="Delayed labels.")
    outputs: OutputSettings = Field(default_factory=OutputSettings, description="Kafka outputs.")
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings, description="Checkpoints.")
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings,
                                           description="Continual evaluation.")
    snapshots: SnapshotSettings = Field(default_factory=SnapshotSettings,
                                        description="The snapshot channel between learner and predictors.")
    scaleout: ScaleoutSettings = Field(default_factory=ScaleoutSettings, description="Several replicas.")
    forget: ForgetSettings = Field(default_factory=ForgetSettings, description="Forgetting on request.")
    influence: InfluenceSettings = Field(default_factory=InfluenceSettings, description="What one source may teach.")
    debug: DebugSettings = Field(default_factory=DebugSettings, description="Test hooks.")
    role: Literal["all", "learner", "predictor"] = Field(
        "all", description="all: learn and serve in one process; learner: learn and publish snapshots; "
        "predictor: serve snapshots read from the snapshot topic (no learning, no checkpoints).")
    prequential_window: int = Field(1000, ge=1, description="Labelled events in the prequential accuracy window.")
    publish_every_events: int = Field(256, ge=1, description="Learned events between serving snapshots.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["text", "json"] = Field("text", description="text: one readable line per message; json: one "
                                                "JSON object per line (time, level, logger, message, and the "
                                                "event/topic/partition/offset where there is one).")

    @model_validator(mode="after")
    def _kafka_for_roles(self) -> "Settings":
        # Roles learner and predictor, and role all that publishes, need a snapshot channel: the
        # Kafka topic, or a local folder.
        if (self.role != "all" or self.snapshots.publish) and self.source.kind != "kafka" \
                and self.snapshots.dir is None:
            what = "snapshots.publish" if self.role == "all" else f"role {self.role!r}"
            raise ValueError(f"{what} needs source.kind 'kafka' (the snapshot topic) or snapshots.dir (a folder)")
        problem = scaleout_problem(self) or forget_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def publishes(self) -> bool:
        return self.role == "learner" or (self.role == "all" and self.snapshots.publish)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


def load_settings(path: str | Path | None = None) -> Settings:
    """Effective settings from ``path`` (YAML) and the environment."""
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "yaml_file": path})

    return Settings.model_validate(_FromFile().model_dump())


def _rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str, str]]:
    rows = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += _rows(ann, f"{key}.")
            continue
        env = ENV_PREFIX + key.upper().replace(".", "__")
        default = info.get_default(call_default_factory=True)
        default = str(default) if isinstance(default, Path) else default
        if get_origin(ann) is Literal:
            type_name = " or ".join(repr(a) for a in get_args(ann))
        else:
            type_name = str(ann).replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "").removeprefix("<class '").removesuffix("'>")
        rows.append((key, env, type_name, repr(default), info.description or ""))
    return rows


def settings_reference() -> str:
    """A markdown table of every setting: key, environment variable, type, default, meaning."""
    lines = ["| key | environment variable | type | default | meaning |", "|---|---|---|---|---|"]
    for key, env, typ, default, desc in _rows(Settings):
        typ = typ.replace("|", "\\|")
        lines.append(f"| `{key}` | `{env}` | {typ} | `{default}` | {desc} |")
    return "\n".join(lines)
