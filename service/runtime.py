"""Builds the service from settings and runs it: learning loop thread + HTTP server."""
from __future__ import annotations

import logging
import os
import socket
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from threadpoolctl import threadpool_limits

from .. import __version__
from ..learner.base import Learner
from ..learner.encoders import Encoder, make_encoder
from ..learner.keyed import KeyedLearners
from ..learner.registry import LEARNERS, LearnerOptions, build
from ..monitoring.metrics import Metrics
from ..stream.demo import demo_path
from ..stream.errors import REASONS
from ..stream.events import LabelMessage
from ..stream.forget_request import ForgetRequest
from ..stream.sinks import Sink, SinkError
from ..stream.snapshot_channel import ChannelFenced
from ..stream.sources import FileSource, Source, TopicPartition
from .app import create_app
from .checkpoint import Checkpointer
from .config import Settings
from .forgetting import Answer, ForgetRefused
from .loop import FeedbackQueueFull, LearningLoop
from .server import run_server
from .snapshot import SnapshotHolder

log = logging.getLogger(__name__)

# Exit status of a learner fenced by a newer one: a supervisor should not restart it (it would fence
# the newer one back); systemd: RestartPreventExitStatus=3.
EXIT_FENCED = 3


def resolve_device(settings: Settings) -> str:
    import torch

    ls = settings.learner
    if ls.torch_threads:
        torch.set_num_threads(ls.torch_threads)
    elif ls.input_kind == "features" and ls.encoder != "efficientnet-lite0":
        # A model on a few features does tiny matrix products: handing each to a second thread
        # costs more than it saves (measured: 1.2 ms vs 0.2 ms per step on 2 busy cores).
        torch.set_num_threads(1)
    # numpy's BLAS (the MLP encoder's bottom, the standardiser, evaluation) gets no more threads
    # than torch: its pool spins on a barrier while a thread of it waits for a core torch holds
    # (elec2 in process on 2 cores: 7,700 events/s with two BLAS threads, 10,300-11,800 with one).
    threadpool_limits(torch.get_num_threads(), user_api="blas")
    return ls.device if ls.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def build_encoder(settings: Settings, device: str) -> Encoder:
    """The configured frozen encoder (a predictor builds the same one as its learner)."""
    ls = settings.learner
    if ls.encoder == "efficientnet-lite0":
        encoder = make_encoder("features", encoder=ls.encoder, image_shape=ls.image_shape, side=ls.image_side,
                               device=device)
        if ls.deep_top:  # the tap before the last block: the learner's top is plastic from there
            from ..learner.plastic_top import MidImageEncoder

            return MidImageEncoder.like(encoder)  # type: ignore[arg-type]
        return encoder
    if ls.input_kind == "text":
        return make_encoder("text", max_tokens=ls.max_tokens, device=device, runtime=ls.encoder_runtime)
    # Only the lifelong learners re-map what they stored when the statistics move.
    horizon = ls.feature_horizon_events if LEARNERS[ls.name].continual else 0
    return make_encoder("features", feature_dim=ls.feature_dim, warmup_events=ls.feature_warmup_events,
                        horizon_events=horizon)


def build_learner(settings: Settings) -> Learner:
    """The configured learner, built through the registry on the configured encoder (under
    ``scaleout.learning.mode: per_key``, one per key: :func:`build_keyed`)."""
    device = resolve_device(settings)
    if settings.scaleout.learning.mode == "per_key":
        return build_keyed(settings, device)
    encoder = build_encoder(settings, device)
    return build(settings.learner.name, encoder, learner_options(settings, device))  # type: ignore[no-any-return]


def learner_options(settings: Settings, device: str, **continual: Any) -> LearnerOptions:
    ls = settings.learner
    return LearnerOptions(
        seed=ls.seed, device=device, fast_expert=ls.fast_expert,
        continual={"resident_memory": True,  # the daemon's RSS stays flat while its replay memory fills
                   **{k: v for k, v in (("memory_budget_bytes", ls.memory_budget_bytes), ("pq_m", ls.pq_m),
                                        ("steps_per_batch", ls.steps_per_batch),
                                        ("replay_per_step", ls.replay_per_step), ("rank", ls.rank),
                                        ("ema_decay", ls.ema_decay)) if v is not None},
                   # Tagged replay memory (what a forget request removes by id or source), the influence bound.
                   "forgetting": settings.forget.enabled, "influence": settings.influence.learner_fields(),
                   **continual},
        base_init={"base_events": ls.base_init_events} if ls.mlp_encoder else None,
        nmc={"lr": ls.lr, "head_weight": ls.head_weight, "proto_scale": ls.proto_scale})


def build_keyed(settings: Settings, device: str) -> Learner:
    """One learner per key: a frozen encoder (text, images) shared by all, feature standardisation per key."""
    from ..learner.keyed import KeyedLearners
    from ..memory.key_store import KeyStore

    pk = settings.scaleout.learning.per_key
    frozen = settings.learner.input_kind == "text" or settings.learner.encoder == "efficientnet-lite0"
    shared = build_encoder(settings, device) if frozen else None
    # A key's replay memory grows as it fills (not resident at once): most keys are small.
    options = learner_options(settings, device, memory_budget_bytes=pk.key_memory_bytes, resident_memory=False)

    def make() -> Any:
        return build(settings.learner.name, shared or build_encoder(settings, device), options)

    folder = pk.key_dir or str(Path(str(settings.checkpoint.dir)) / "keys")
    return KeyedLearners(make, KeyStore(folder), max_keys=pk.max_keys,  # type: ignore[return-value]
                         max_resident_bytes=pk.max_resident_bytes, served_cache_keys=pk.served_cache_keys)


def keep_checkpointed_encoder(settings: Settings, checkpointer: Checkpointer) -> Settings:
    """``learner.encoder: auto`` on features where the checkpoint holds a learner on standardised features.

    Up to 0.1.0 ``auto`` meant standardisation alone on feature vectors; it now learns an MLP encoder.
    A checkpoint written under the older default still restores: its learner is kept (``standardize``).
    Likewise ``learner.plastic_top: auto`` on images, where the checkpoint holds the linear top (``off``)."""
    ls = settings.learner
    old_features = ls.encoder == "auto" and ls.mlp_encoder and not LEARNERS[ls.name].features_only
    old_images = ls.plastic_top == "auto" and ls.deep_top  # before 0.2 an image learner's top was linear
    if not (old_features or old_images):
        return settings
    from .checkpoint import UnrecoverableCheckpoint

    try:
        ckpt = checkpointer.load()
    except UnrecoverableCheckpoint:
        return settings  # the restore says so, with its own message
    meta = ckpt.parts.get("learner", ({}, {}))[1] if ckpt is not None else {}
    meta = meta.get("inner", meta) if meta.get("recency") else meta  # the fast expert wraps the learner
    if old_images and meta.get("learner") == "lifelong":
        log.warning("checkpoint %s holds a lifelong learner on pooled image taps: keeping it, as "
                    "learner.plastic_top: off", ckpt.path if ckpt else "")
        return settings.model_copy(update={"learner": ls.model_copy(update={"plastic_top": "off"})})
    if not old_features or meta.get("learner") != "lifelong" or meta.get("dim") != ls.feature_dim:
        return settings
    log.warning("checkpoint %s holds a lifelong learner on standardised features (the default before the "
                "MLP encoder): keeping it, as learner.encoder: standardize", ckpt.path if ckpt else "")
    return settings.model_copy(update={"learner": ls.model_copy(update={"encoder": "standardize"})})


def build_source(settings: Settings, offsets: dict[TopicPartition, int],
                 on_revoke: Callable[[list[TopicPartition]], None]) -> Source:
    src = settings.source
    if src.kind in ("demo", "file"):
        path = demo_path() if src.kind == "demo" else src.path
        assert path is not None  # checked by the settings model
        name = "demo" if src.kind == "demo" else Path(path).name
        return FileSource(path, start_offset=offsets.get((name, 0), 0), name=name)
    from ..stream.kafka_source import KafkaSource, KafkaSourceOptions

    k = src.kafka
    topics = (k.events_topic,) + tuple(t for t in (k.labels_topic, k.forget_topic) if t)
    return KafkaSource(KafkaSourceOptions(
        bootstrap_servers=k.bootstrap_servers, topics=topics, group_id=k.group_id,
        auto_offset_reset=k.auto_offset_reset, max_poll_records=src.batch_size,
        startup_timeout_s=k.startup_timeout_s, instance_id=k.instance_id, session_timeout_s=k.session_timeout_s,
        client_options=dict(k.client_options),
        resume_ahead_of_checkpoint=settings.scaleout.learning.mode == "merge"), offsets, on_revoke)


def build_sink(settings: Settings, metrics: Metrics) -> Sink | None:
    out = settings.outputs
    if settings.source.kind != "kafka" or not (out.predictions_topic or out.dead_letter_topic
                                                or settings.source.kafka.labels_topic):
        return None
    from ..stream.kafka_source import retry_with_backoff
    from ..stream.sinks import KafkaSink

    def dropped(topic: str) -> None:
        if topic == out.dead_letter_topic:
            metrics.dead_letters_dropped.inc()

    k = settings.source.kafka
    return retry_with_backoff(
        lambda: KafkaSink(k.bootstrap_servers, dict(k.client_options), max_message_bytes=out.max_message_bytes,
                          max_attempts=out.dead_letter_attempts, on_drop=dropped),
        what="producer", timeout_s=k.startup_timeout_s, initial_s=0.5, max_s=10.0)


class Service:
    """One daemon: a source, a learner, the loop that joins them, and the HTTP app."""

    def __init__(self, settings: Settings, learner: Learner | None = None, source: Source | None = None,
                 sink: Sink | None = None) -> None:
        self.metrics = Metrics(REASONS)
        self.holder = SnapshotHolder()
        ckpt = settings.checkpoint
        checkpointer = Checkpointer(ckpt.dir, ckpt.every_s, ckpt.every_events, keep=ckpt.keep,
                                    on_unrecoverable=ckpt.on_unrecoverable,
                                    max_time_fraction=ckpt.max_time_fraction) if ckpt.dir else None
        if checkpointer is not None:
            checkpointer.check_writable()  # now, not at the first checkpoint minutes later
            if learner is None:
                settings = keep_checkpointed_encoder(settings, checkpointer)
        self.settings = settings
        self.learner = learner or build_learner(settings)
        self.keyed = self.learner if isinstance(self.learner, KeyedLearners) else None
        if self.keyed is not None:
            self.metrics.add_keys()
        self.metrics.model_info.info({"learner": self.learner.name, "input_kind": self.learner.input_kind})
        factory = (lambda offsets, on_revoke: source) if source is not None else (
            lambda offsets, on_revoke: build_source(settings, offsets, on_revoke))
        # Sources and sinks connect in the loop's thread (that may retry for a
        # while); HTTP health answers meanwhile.
        sink_factory = (lambda: sink) if sink is not None else (lambda: build_sink(settings, self.metrics))
        self.loop = LearningLoop(settings, self.learner, factory, self.metrics, self.holder,
                                 sink=sink_factory, checkpointer=checkpointer)
        if settings.publishes:
            from .publishing import Publisher
            from .snapshot_wire import REJECT_REASONS

            self.metrics.add_snapshot_channel(REJECT_REASONS)
            self.metrics.snapshot_age.set(float("nan"))  # a predictor's reading: none here
            self.loop.publisher = Publisher(settings, self.learner.snapshot().encoder, self.learner.name,
                                            self.metrics)
        if settings.scaleout.learning.mode == "merge":
            from .merger import Merger

            self.loop.merger = Merger(settings, self.learner, self.metrics)  # MergeRefused: a learner that can't
            self.loop.intake.on_learned = self.loop.merger.replica.observe
        self._follow_partitions(settings)
        self.restored = self.loop.restore()
        if self.keyed is not None and self.holder.current is None:
            self.loop.publish()  # per_key: the keys another replica stored are served before this one learns
        self.app = create_app(self)

    def _follow_partitions(self, settings: Settings) -> None:
        """Merge and per_key modes: parked events and dedup ids follow a partition the group moves."""
        channel: Any = self.loop.merger
        if self.keyed is not None:
            from .handoff import FolderHandoffs

            folder = Path(self.keyed.store.folder) / ".handoff"
            name = settings.source.kafka.instance_id or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
            channel = FolderHandoffs(folder, name, settings.labels.max_wait_s)
        if channel is not None:
            from .partition_handoff import PartitionHandoff

            self.loop.handoffs = PartitionHandoff(channel, self.loop.intake)

    # ServiceHandle for the app
    def submit_feedback(self, message: LabelMessage) -> None:
        topic = self.settings.source.kafka.labels_topic if self.settings.source.kind == "kafka" else None
        sink = self.loop.connected_sink
        if topic:
            if sink is None:
                raise FeedbackQueueFull("not connected to Kafka yet; retry shortly")
            # Through the labels topic, the label is as durable as any event
            # and is joined exactly once, even across a crash. Acknowledged
            # before the 202, so an accepted label is never lost.
            try:
                # Keyed like its event (per_key: by the event's key), so it reaches the partition of its event.
                sink.send_now(topic, message.model_dump_json(exclude_none=True).encode(),
                              str(message.key or message.id).encode(),
                              self.settings.outputs.flush_timeout_s)
            except SinkError as exc:
                raise FeedbackQueueFull(f"label not stored: {exc}") from None
            return
        self.loop.submit_feedback(message)

    def forget(self, request: ForgetRequest) -> Future[Answer]:
        """Queue a forget request for the learning loop (``service/forgetting.py``)."""
        if self.loop.error is not None:
            raise ForgetRefused(503, "the learning loop has stopped: nothing can be forgotten until a restart")
        return self.loop.forgetting.submit(request)

    def healthy(self) -> bool:
        return self.loop.alive and self.loop.error is None

    def describe(self) -> dict[str, Any]:
        served = self.holder.current
        # Counts describe the served snapshot, so they agree with model_version.
        return {"version": __version__, "learner": self.learner.name, "input_kind": self.learner.input_kind,
                "events_learned": served.events_learned if served else 0,
                "events_rejected": self.loop.counters.rejected,
                "pending_labels": len(self.loop.join), "early_labels": len(self.loop.join.early),
                "source": self.settings.source.kind, "restored_from_checkpoint": self.restored,
                "role": self.settings.role} | ({"merge": self.loop.merger.describe()} if self.loop.merger else {}) \
            | ({"keys": dict(self.keyed.summary)} if self.keyed is not None else {})

    def keys(self, limit: int) -> list[dict[str, Any]] | None:
        """Per-key models' rows for GET /v1/keys (None: this service keeps one model)."""
        return self.keyed.describe(limit) if self.keyed is not None else None

    def not_ready(self) -> str | None:
        snap = self.holder.current
        stored = self.keyed is not None and self.keyed.summary["keys_stored"]
        if stored and snap is not None:
            return None  # per_key: any stored key can be answered, from the key store
        return None if snap is not None and snap.classes else "no model yet"

    def latest_version(self) -> int:
        snap = self.holder.current
        return snap.version if snap is not None else -1

    def serve(self) -> int:
        """Run until SIGINT/SIGTERM or a learning-loop failure; returns the exit code.

        SIGTERM is a normal stop: in-flight requests finish, the loop finishes
        its step and writes a final checkpoint, and the process exits 0.
        """
        log.info("serving on http://%s:%d (role: %s, source: %s)", self.settings.http.host, self.settings.http.port,
                 self.settings.role, self.settings.source.kind)

        def start(request_exit: Callable[[], None]) -> None:
            self.loop.on_failure = request_exit
            self.loop.start()

        def stop() -> None:
            self.loop.stop()
            self.loop.close()

        run_server(self.app, self.settings.http, start, stop)
        if isinstance(self.loop.error, ChannelFenced):
            log.error("exiting: another learner took over snapshots.model_key %r (fenced)",
                      self.settings.snapshots.model_key)
            return EXIT_FENCED
        if self.loop.error is not None:
            log.error("exiting: the learning loop failed: %s", self.loop.error)
            return 1
        return 0
