"""Builds the service from settings and runs it: learning loop thread + HTTP server."""
from __future__ import annotations

import logging
from typing import Any

import uvicorn

from .. import __version__
from ..learner.base import Learner
from ..learner.encoders import make_encoder
from ..learner.nmc import NMCLearner
from ..monitoring.metrics import Metrics
from ..stream.demo import demo_path
from ..stream.errors import REASONS
from ..stream.events import LabelMessage
from ..stream.sources import FileSource, Source
from .app import create_app
from .config import Settings
from .daemon import LearningLoop
from .snapshot import SnapshotHolder

log = logging.getLogger(__name__)


def build_learner(settings: Settings) -> Learner:
    ls = settings.learner
    if ls.torch_threads:
        import torch

        torch.set_num_threads(ls.torch_threads)
    if ls.input_kind == "text":
        encoder = make_encoder("text", max_tokens=ls.max_tokens)
    else:
        encoder = make_encoder("features", feature_dim=ls.feature_dim, warmup_events=ls.feature_warmup_events)
    return NMCLearner(encoder, lr=ls.lr, head_weight=ls.head_weight, proto_scale=ls.proto_scale)


def build_source(settings: Settings) -> Source:
    src = settings.source
    if src.kind == "demo":
        return FileSource(demo_path(), name="demo")
    if src.kind == "file":
        assert src.path is not None  # checked by the settings model
        return FileSource(src.path)
    from ..stream.kafka_source import KafkaSource, KafkaSourceOptions

    k = src.kafka
    return KafkaSource(KafkaSourceOptions(
        bootstrap_servers=k.bootstrap_servers, topic=k.events_topic, group_id=k.group_id,
        auto_offset_reset=k.auto_offset_reset, max_poll_records=src.batch_size,
        startup_timeout_s=k.startup_timeout_s, client_options=dict(k.client_options)))


class Service:
    """One daemon: a source, a learner, the loop that joins them, and the HTTP app."""

    def __init__(self, settings: Settings, learner: Learner | None = None, source: Source | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics(REASONS)
        self.holder = SnapshotHolder()
        self.learner = learner or build_learner(settings)
        self.metrics.model_info.info({"learner": self.learner.name, "input_kind": self.learner.input_kind})
        self.source = source or build_source(settings)
        self.loop = LearningLoop(settings, self.learner, self.source, self.metrics, self.holder)
        self.app = create_app(self)

    # ServiceHandle for the app
    def submit_feedback(self, message: LabelMessage) -> None:
        self.loop.submit_feedback(message)

    def healthy(self) -> bool:
        return self.loop.alive and self.loop.error is None

    def describe(self) -> dict[str, Any]:
        return {"version": __version__, "learner": self.learner.name, "input_kind": self.learner.input_kind,
                "events_learned": self.loop.counters.learned, "events_rejected": self.loop.counters.rejected,
                "pending_labels": len(self.loop.pending), "source": self.settings.source.kind}

    def serve(self) -> int:
        """Run until SIGINT/SIGTERM; returns the process exit code."""
        self.loop.start()
        http = self.settings.http
        server = uvicorn.Server(uvicorn.Config(self.app, host=http.host, port=http.port, log_level="warning",
                                               access_log=False))
        log.info("serving on http://%s:%d (source: %s)", http.host, http.port, self.settings.source.kind)
        try:
            server.run()
        finally:
            self.loop.stop()
            self.source.close()
        return 1 if self.loop.error is not None else 0
