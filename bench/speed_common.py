"""What the speed bench's parts share: options, the streams as the daemon reads them, settings, helpers.

The in-process run (``speed.py``), the Kafka run (``speed_kafka.py``) and the HTTP load
(``speed_http.py``) all import this; none of them imports another, so there is no circle.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..service.config import Settings
from .streams import BenchStream

SCHEMA = 1
WARMUP_EVENTS = {"features": 5_000, "text": 256}  # the untimed first pass over a stream's head
PROFILE_EVENTS = {"features": 50_000, "text": 256}  # the profiled second run reads at most this many


@dataclass
class SpeedOptions:
    out: Path = Path("docs/benchmarks/speed")
    quick: bool = False
    skip_kafka: bool = False
    skip_http: bool = False
    bootstrap: str | None = None            # an existing broker; None: start a local one
    device: str = "cpu"
    vector_stream: str = "elec2"
    text_stream: str = "clinc150"
    vector_events: int | None = None         # None: the whole stream (quick: 2,000)
    text_events: int | None = None           # None: 1,000 (quick: 128)
    vector_batch_size: int = 500
    text_batch_size: int = 64
    torch_threads: int | None = None         # None: 1 for the vector stream, every core for text
    load_seconds: float | None = None        # per load level; None: 10 (quick: 2)
    clients: tuple[int, ...] = (1, 8)
    profile: bool = False
    parts: tuple[str, ...] = ("pipeline", "kafka", "river", "encoder", "adapter", "http")
    streams: tuple[str, ...] = ("vector", "text")
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))

    def events(self, kind: str) -> int | None:
        if kind == "features":
            return self.vector_events or (2000 if self.quick else None)
        return self.text_events or (128 if self.quick else 1000)

    def seconds(self) -> float:
        return self.load_seconds or (2.0 if self.quick else 10.0)

    def threads(self, kind: str) -> int:
        return self.torch_threads or (1 if kind == "features" else os.cpu_count() or 1)


@dataclass(frozen=True)
class StreamData:
    """One benchmark stream as the daemon reads it: JSON event bodies without their ``id``."""

    name: str
    kind: str                 # 'features' | 'text'
    dim: int | None
    bodies: list[bytes]       # b'"features":[...],"label":"1"}'
    ids: list[str]

    def head(self, n: int) -> "StreamData":
        return StreamData(self.name, self.kind, self.dim, self.bodies[:n], self.ids[:n])

    def lines(self) -> list[bytes]:
        return [b'{"id":' + json.dumps(i).encode() + b"," + body for i, body in zip(self.ids, self.bodies)]

    def write_jsonl(self, path: Path) -> Path:
        path.write_bytes(b"".join(line + b"\n" for line in self.lines()))
        return path


def stream_data(stream: BenchStream, limit: int | None) -> StreamData:
    """The training events of ``stream`` in stream order (its first ``limit``)."""
    n = len(stream.train) if limit is None else min(limit, len(stream.train))
    labels, inputs = stream.train.labels[:n], stream.train.inputs[:n]
    if stream.kind == "features":
        rows = np.asarray(inputs, np.float32)
        # str(np.float32) is the shortest text that reads back as the same float32.
        bodies = [('"features":[%s],"label":%s}' % (",".join(map(str, row)), json.dumps(lab))).encode()
                  for row, lab in zip(rows, labels)]
        dim: int | None = rows.shape[1]
    else:
        bodies = [('"text":%s,"label":%s}' % (json.dumps(t), json.dumps(lab))).encode()
                  for t, lab in zip(inputs, labels)]
        dim = None
    return StreamData(stream.name, stream.kind, dim, bodies, list(stream.train.ids[:n]))


def speed_settings(data: StreamData, opts: SpeedOptions, source: dict[str, Any]) -> Settings:
    """The daemon's defaults but for the source, the learner's input, threads, device; no checkpoints."""
    batch = opts.vector_batch_size if data.kind == "features" else opts.text_batch_size
    learner: dict[str, Any] = {"input_kind": data.kind, "torch_threads": opts.threads(data.kind), "device": opts.device}
    if data.dim is not None:
        learner["feature_dim"] = data.dim
    return Settings.model_validate({"source": {"batch_size": batch, **source}, "learner": learner,
                                    "checkpoint": {"dir": None}})


def settings_summary(settings: Settings) -> dict[str, Any]:
    s = settings.model_dump(mode="json")
    return {"source": {k: s["source"][k] for k in ("kind", "batch_size", "poll_timeout_s")},
            "learner": s["learner"], "checkpoint_dir": s["checkpoint"]["dir"],
            "holdout_fraction": s["evaluation"]["holdout_fraction"],
            "publish_every_events": s["publish_every_events"],
            "http": {k: v for k, v in s["http"].items() if k.startswith("batch_") or k == "max_queued_instances"}}


def close_service(service: Any) -> None:
    service.loop.close()
    service.app.state.batcher.close()


def drive(service: Any, total: int, timeout_s: float = 3600.0) -> dict[str, Any]:
    """Step the service's loop until ``total`` records were read; events/s from the first record."""
    loop = service.loop
    read, first = 0, None
    give_up = time.monotonic() + timeout_s
    while read < total:
        started = time.perf_counter()
        n = loop.step()
        if n and first is None:
            first = started
        read += n
        if time.monotonic() > give_up:
            raise TimeoutError(f"read {read} of {total} records in {timeout_s:.0f} s")
    seconds = time.perf_counter() - (first if first is not None else time.perf_counter())
    preq = loop.prequential
    return {"events": read, "learned": loop.counters.learned, "rejected": loop.counters.rejected,
            "seconds": seconds, "events_per_s": read / seconds if seconds > 0 else 0.0,
            "learned_per_s": loop.counters.learned / seconds if seconds > 0 else 0.0,
            "prequential_accuracy": preq.total_correct / preq.total if preq.total else float("nan")}


def finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def logged(opts: SpeedOptions, what: str, run: Callable[[], Any]) -> Any:
    opts.log(f"{what} ...")
    started = time.perf_counter()
    result = run()
    opts.log(f"{what}: done in {time.perf_counter() - started:.1f} s")
    return result
