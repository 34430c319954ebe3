"""The speed bench through a real Kafka broker.

A broker is started with ``deploy/kafka/local-kafka`` (Apache Kafka 4.x, KRaft, loopback, free
ports, a temporary data folder) unless ``--bootstrap`` names one. Each stream is produced into a
fresh topic first (timed apart: that is the producer's speed, not the daemon's), then the daemon's
loop consumes it with ``source.kind=kafka`` in a fresh consumer group. The clock starts when the
first poll hands over records (the group join before it is not the daemon's steady speed) and
stops when the last record has been learned.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..stream.sources import Record, Source, TopicPartition

if TYPE_CHECKING:
    from .speed_common import SpeedOptions, StreamData

LOCAL_KAFKA = Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "local-kafka"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalBroker:
    """A single-node broker that ``local-kafka`` started; ``stop`` ends it."""

    bootstrap: str
    data_dir: Path

    def stop(self) -> None:
        subprocess.run([str(LOCAL_KAFKA), "stop", "--data-dir", str(self.data_dir)], capture_output=True, timeout=90)


def start_local_broker(data_dir: Path, partitions: int = 1, timeout_s: float = 240) -> LocalBroker:
    """Start a broker on free loopback ports; raises RuntimeError with its output if it cannot."""
    if shutil.which("java") is None:
        raise RuntimeError("java not found: the local broker needs it (see deploy/kafka/README.md), "
                           "or give --bootstrap HOST:PORT, or --skip-kafka")
    cmd = [str(LOCAL_KAFKA), "start", "--port", str(free_port()), "--controller-port", str(free_port()),
           "--data-dir", str(data_dir), "--partitions", str(partitions)]
    started = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if started.returncode != 0:
        raise RuntimeError(f"local-kafka start failed:\n{started.stdout}\n{started.stderr}")
    return LocalBroker(started.stdout.strip().splitlines()[-1], data_dir)


class FirstRecordClock:
    """A source that notes when its first non-empty poll returned."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.first: float | None = None

    @property
    def exhausted(self) -> bool:
        return self.source.exhausted

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        records = self.source.poll(max_records, timeout_s)
        if records and self.first is None:
            self.first = time.perf_counter()
        return records

    @property
    def skipped(self) -> int:
        return self.source.skipped

    def commit(self, offsets: dict[TopicPartition, int]) -> bool:
        return self.source.commit(offsets)

    def lag(self) -> int | None:
        return self.source.lag()

    def assigned(self) -> int:
        return self.source.assigned()

    def close(self) -> None:
        self.source.close()


def run_kafka(data: "StreamData", opts: "SpeedOptions", bootstrap: str) -> dict[str, Any]:
    """Produce the stream into a fresh topic, then time the daemon's loop consuming and learning it."""
    from ..stream.produce import produce
    from .speed_common import close_service, settings_summary, speed_settings
    from ..service.runtime import Service, build_source

    topic = f"speed-{data.name}-{uuid.uuid4().hex[:8]}"
    lines = [line.decode() for line in data.lines()]
    produced = produce(lines, bootstrap, topic)
    kafka = {"bootstrap_servers": bootstrap, "events_topic": topic, "group_id": f"{topic}-g",
             "auto_offset_reset": "earliest", "startup_timeout_s": 60}
    settings = speed_settings(data, opts, {"kind": "kafka", "kafka": kafka})
    source = FirstRecordClock(build_source(settings, {}, lambda partitions: None))
    service = Service(settings, source=source)
    try:
        read = 0
        give_up = time.monotonic() + 1800
        while read < produced.records:
            read += service.loop.step()
            if time.monotonic() > give_up:
                raise TimeoutError(f"consumed {read} of {produced.records} records from {topic}")
        ended = time.perf_counter()
    finally:
        close_service(service)
    assert source.first is not None
    seconds = ended - source.first
    loop = service.loop
    preq = loop.prequential
    return {"stream": data.name, "topic": topic, "events": read, "learned": loop.counters.learned,
            "rejected": loop.counters.rejected, "seconds": seconds, "events_per_s": read / seconds,
            "learned_per_s": loop.counters.learned / seconds,
            "prequential_accuracy": preq.total_correct / preq.total if preq.total else float("nan"),
            "produce_seconds": produced.seconds, "produce_events_per_s": produced.rate,
            "settings": settings_summary(settings)}


def run_kafka_parts(streams: dict[str, "StreamData"], opts: "SpeedOptions", workdir: Path) -> dict[str, Any]:
    """Every stream through one broker: the one given, else a local one started and stopped here."""
    from .speed_common import logged

    broker = None
    if opts.bootstrap is None:
        broker = logged(opts, "kafka broker start", lambda: start_local_broker(workdir / "kafka"))
    bootstrap = opts.bootstrap or broker.bootstrap
    try:
        out: dict[str, Any] = {k: logged(opts, f"kafka {d.name}", lambda d=d: run_kafka(d, opts, bootstrap))
                               for k, d in streams.items()}
    finally:
        if broker is not None:
            broker.stop()
    out["broker"] = "local-kafka (started by the bench)" if broker is not None else opts.bootstrap
    return out
