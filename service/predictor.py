"""Role predictor: serves the snapshots a learner publishes, and learns nothing itself.

Stateless: it keeps no checkpoint. At start it reads the snapshot topic from
the beginning (``read_committed``), swaps in the newest snapshot that passes
every check (``service/follower.py``), then follows the topic. Predictions
answer with the same ``model_version`` as the learner's own; ``/v1/feedback``
is written to the labels topic, keyed by the event id, for the learner to join.
``/readyz`` answers 503 before a first snapshot and whenever the learner has
not confirmed the served version for ``snapshots.max_staleness_s``.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

from kafka.errors import KafkaError

from .. import __version__
from ..monitoring.metrics import Metrics
from ..stream.errors import REASONS
from ..stream.events import LabelMessage
from ..stream.forget_request import ForgetRequest
from ..stream.sinks import KafkaSink, SinkError
from ..stream.snapshot_channel import POLL_RECORDS
from .app import create_app
from .config import Settings
from .follower import SnapshotFollower
from .forgetting import Answer, ForgetRefused
from .loop import FeedbackQueueFull
from .publishing import ChannelReader, channel_name, channel_reader
from .runtime import build_encoder, resolve_device
from .server import run_server
from .snapshot import SnapshotHolder
from .snapshot_wire import REJECT_REASONS, Manifest

log = logging.getLogger(__name__)


class PredictorService:
    def __init__(self, settings: Settings, reader: Callable[[], ChannelReader] | None = None) -> None:
        self.settings = settings
        snap = settings.snapshots
        self.metrics = Metrics(REASONS)
        self.metrics.add_snapshot_channel(REJECT_REASONS)
        self.holder = SnapshotHolder()
        self.encoder = build_encoder(settings, resolve_device(settings))
        self.follower = SnapshotFollower(snap.model_key, self.encoder, max_bytes=snap.max_bytes,
                                         on_reject=lambda reason: self.metrics.snapshot_rejects.labels(reason=reason).inc(),
                                         on_swap=self._swap)
        self.metrics.snapshot_age.set_function(self.follower.age_s)
        self._make_reader = reader or (lambda: channel_reader(settings))
        self._sink: KafkaSink | None = None
        self._sink_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="snapshot-follower", daemon=True)
        self.error: BaseException | None = None
        self.live = False  # read up to the topic's end once
        self.app = create_app(self)

    # -- following the topic -----------------------------------------------------------------
    def _swap(self, snapshot: Any, manifest: Manifest, read_live: bool) -> None:
        self.holder.publish(snapshot)
        m = self.metrics
        m.snapshot_swaps.inc()
        m.model_version.set(manifest.version)
        m.model_classes.set(manifest.classes)
        m.model_bytes.set(snapshot.nbytes())
        m.snapshot_generation.set(manifest.generation)
        m.snapshot_payload_bytes.set(manifest.bytes)
        self.metrics.model_info.info({"learner": manifest.learner, "input_kind": manifest.input_kind})
        if read_live:
            m.publish_to_swap.observe(max(0.0, time.time() - manifest.created_at))
        log.info("serving generation %d version %d (%d classes)", manifest.generation, manifest.version,
                 manifest.classes)

    def _connect(self) -> ChannelReader | None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                return self._make_reader()
            except KafkaError as exc:
                log.warning("snapshot topic not reachable (retrying in %.1f s): %s", delay, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
        return None

    def _follow(self) -> None:
        try:
            reader = self._connect()
            if reader is None:
                return
            try:
                while not self._stop.is_set():
                    self._step(reader)
            finally:
                reader.close()
        except BaseException as exc:  # recorded for /healthz
            self.error = exc
            log.exception("the snapshot follower stopped")
            raise

    def _step(self, reader: ChannelReader) -> None:
        try:
            records = reader.poll(0.2)
            self.follower.take(records, live=self.live)
            if not self.live and len(records) < POLL_RECORDS and reader.caught_up():
                self.live = True
        except (KafkaError, OSError) as exc:  # broker away (kafka-python reconnects), folder unreadable
            log.warning("reading the snapshot channel failed (retrying): %s", exc)
            self._stop.wait(0.5)
            return
        if self.live:
            self.follower.settle()

    # -- the app's ServiceHandle ---------------------------------------------------------------
    def forget(self, request: ForgetRequest) -> Future[Answer]:
        raise ForgetRefused(409, "this replica is a predictor (role predictor), which learns nothing: send it to "
                            "the learner (or to source.kafka.forget_topic)")

    def submit_feedback(self, message: LabelMessage) -> None:
        kafka = self.settings.source.kafka
        if not kafka.labels_topic:
            raise FeedbackQueueFull("this predictor forwards labels to source.kafka.labels_topic, which is not set")
        try:
            with self._sink_lock:
                if self._sink is None:
                    self._sink = KafkaSink(kafka.bootstrap_servers, dict(kafka.client_options),
                                           max_message_bytes=self.settings.outputs.max_message_bytes)
            # Keyed by id: the label lands in the partition its event's key hashes to.
            self._sink.send_now(kafka.labels_topic, message.model_dump_json().encode(), str(message.id).encode(),
                                self.settings.outputs.flush_timeout_s)
        except (SinkError, KafkaError) as exc:
            raise FeedbackQueueFull(f"label not stored: {exc}") from None

    def healthy(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def not_ready(self) -> str | None:
        snap = self.holder.current
        if snap is None or not snap.classes:
            return "no snapshot yet"
        age, limit = self.follower.age_s(), self.settings.snapshots.max_staleness_s
        if not age <= limit:
            return f"stale: the learner last confirmed this version {age:.0f} s ago (limit {limit:g} s)"
        return None

    def latest_version(self) -> int:
        served = self.follower.served
        heard = self.follower.latest_heard
        # Versions rise across generations too, so the newest heard of is the highest version.
        return max(served.version if served else -1, heard[1])

    def describe(self) -> dict[str, Any]:
        served = self.follower.served
        return {"version": __version__, "role": "predictor", "learner": served.learner if served else "",
                "input_kind": self.encoder.kind, "events_learned": served.events_learned if served else 0,
                "pending_labels": 0, "source": "kafka" if self.settings.snapshots.dir is None else "folder",
                "generation": served.generation if served else None,
                "snapshot_age_s": self.follower.age_s() if served else None}

    def serve(self) -> int:
        http = self.settings.http
        log.info("predictor serving on http://%s:%d from %s", http.host, http.port, channel_name(self.settings))

        def stop() -> None:
            self._stop.set()
            self._thread.join(10)
            if self._sink is not None:
                self._sink.close()

        run_server(self.app, http, lambda request_exit: self._thread.start(), stop)
        return 1 if self.error is not None else 0
