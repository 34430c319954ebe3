"""The real parts the fault bench drives: a local Kafka broker, the daemon as a process, a producer.

Everything binds loopback ports. The broker is ``deploy/kafka/local-kafka`` (as in the speed
bench); it can be stopped and started again on the same data folder and ports, which is how an
outage is made. The daemon is ``python -m lifelong.cli run --config FILE``, killed with
SIGKILL or stopped with SIGTERM like any process. Records are produced with kafka-python, and
each send's partition and offset is kept, so a dead letter's source headers can be matched to
the exact record that was sent.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .speed_kafka import LOCAL_KAFKA, free_port, start_local_broker

# Topics that take the 2 MB records of the corpus (the broker's default limit is about 1 MB).
BIG_TOPIC_BYTES = 8 << 20


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll ``check`` until it returns something true; TimeoutError naming ``what`` (and the last value)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not reached within {timeout_s:.0f} s (last: {last!r})")


def stop_process(proc: "subprocess.Popen[bytes]", timeout_s: float) -> int | None:
    """SIGTERM and wait; SIGKILL after ``timeout_s``. The exit status, or None if it had to be killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
            return None
    return proc.returncode


def accepts(host_port: str, timeout_s: float = 0.5) -> bool:
    host, port = host_port.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


# -- the broker --------------------------------------------------------------------------------

@dataclass
class Broker:
    bootstrap: str
    data_dir: Path

    @classmethod
    def start_new(cls, data_dir: Path, partitions: int = 2) -> "Broker":
        broker = start_local_broker(data_dir, partitions=partitions)
        return cls(broker.bootstrap, data_dir)

    def stop(self) -> None:
        subprocess.run([str(LOCAL_KAFKA), "stop", "--data-dir", str(self.data_dir)], capture_output=True, timeout=90)

    def start(self) -> float:
        """Start again on the same data folder (same ports); returns when it first accepted a connection.

        ``local-kafka start`` returns once the broker logged it started; the moment its port
        accepts connections is noted from a thread meanwhile, as the start of a comeback.
        """
        proc = subprocess.Popen([str(LOCAL_KAFKA), "start", "--data-dir", str(self.data_dir)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        accepted: float | None = None
        while proc.poll() is None:
            if accepted is None and accepts(self.bootstrap, 0.2):
                accepted = time.monotonic()
            time.sleep(0.05)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"local-kafka start failed:\n{out}\n{err}")
        return accepted if accepted is not None else time.monotonic()

    def create_topics(self, names: list[str], partitions: int = 2, max_message_bytes: int | None = None) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic

        configs = {"max.message.bytes": str(max_message_bytes)} if max_message_bytes else {}
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            admin.create_topics([NewTopic(n, partitions, 1, topic_configs=configs) for n in names])
        finally:
            admin.close()

    def read(self, topic: str, expect: int | None = None, timeout_s: float = 20.0,
             quiet_s: float = 4.0) -> list["Message"]:
        """Messages of ``topic``: until ``expect`` are read, or nothing new came for ``quiet_s``."""
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(topic, bootstrap_servers=self.bootstrap, group_id=None,
                                 auto_offset_reset="earliest", enable_auto_commit=False,
                                 fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20)
        out: list[Message] = []
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        try:
            while time.monotonic() < deadline:
                batches = consumer.poll(timeout_ms=300)
                for tp, records in batches.items():
                    out += [Message(r.value, r.key, tp.partition, r.offset,
                                    {k: v for k, v in (r.headers or [])}) for r in records]
                if batches:
                    quiet_since = time.monotonic()
                if expect is not None and len(out) >= expect:
                    break
                if time.monotonic() - quiet_since > quiet_s and consumer.assignment():
                    break
        finally:
            consumer.close()
        return out


@dataclass(frozen=True)
class Message:
    value: bytes | None
    key: bytes | None
    partition: int
    offset: int
    headers: dict[str, bytes]

    def header(self, name: str) -> str | None:
        raw = self.headers.get(name)
        return None if raw is None else raw.decode("utf-8", "replace")


@dataclass(frozen=True)
class Sent:
    topic: str
    partition: int
    offset: int


class Producer:
    """kafka-python producer for the bench; keeps going through an outage (records wait in its buffer)."""

    def __init__(self, bootstrap: str) -> None:
        from kafka import KafkaProducer

        self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                       reconnect_backoff_max_ms=500, max_request_size=BIG_TOPIC_BYTES,
                                       delivery_timeout_ms=300_000, request_timeout_ms=15_000,
                                       max_block_ms=120_000)

    def send(self, topic: str, value: bytes | None, key: bytes | None = None) -> Any:
        if value is None and key is None:
            key = b"null-value"  # Kafka takes a record without a value only with a key
        return self._producer.send(topic, value=value, key=key)

    def send_wait(self, topic: str, value: bytes | None, key: bytes | None = None) -> Sent:
        meta = self.send(topic, value, key).get(timeout=120)
        return Sent(meta.topic, meta.partition, meta.offset)

    def flush(self, timeout_s: float = 120.0) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self) -> None:
        self._producer.close(timeout=10)


# -- HTTP --------------------------------------------------------------------------------------

def http(method: str, url: str, body: bytes | None = None, timeout_s: float = 10.0,
         content_type: str = "application/json") -> tuple[int, bytes]:
    """One request; (status, body). A connection error is status 0."""
    req = urllib.request.Request(url, data=body, method=method, headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return 0, b""


def http_json(method: str, url: str, body: Any = None, timeout_s: float = 10.0) -> tuple[int, Any]:
    status, raw = http(method, url, None if body is None else json.dumps(body).encode(), timeout_s)
    try:
        return status, json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode("utf-8", "replace")
    except ValueError:
        return status, raw.decode("utf-8", "replace")


# -- the daemon --------------------------------------------------------------------------------

@dataclass
class Daemon:
    """``lifelong run`` as a child process with its own config file, port and log."""

    config: dict[str, Any]
    workdir: Path
    name: str
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    starts: int = 0
    log_paths: list[Path] = field(default_factory=list)
    args: tuple[str, ...] = ()  # after ``run --config FILE``, e.g. ("--role", "predictor")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Daemon":
        self.port = free_port()
        self.starts += 1
        cfg = {**self.config, "http": {**self.config.get("http", {}), "port": self.port}}
        path = self.workdir / f"{self.name}-{self.starts}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log_path = self.workdir / f"{self.name}-{self.starts}.log"
        self.log_paths.append(log_path)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("LIFELONG_HTTP__PORT", None)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "lifelong.cli", "run", "--config", str(path),
                                          *self.args],
                                         stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                         start_new_session=True)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, every: bool = False) -> str:
        paths = self.log_paths if every else self.log_paths[-1:]
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        """Seconds until /readyz answered 200; RuntimeError if the process exits first."""
        started = time.monotonic()

        def ready() -> bool:
            if not self.running:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode if self.proc else None}")
            return http("GET", f"{self.url}/readyz", timeout_s=2)[0] == 200

        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return time.monotonic() - started
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready within {timeout_s:.0f} s; log tail:\n{self.log()[-3000:]}")

    def wait_exit(self, timeout_s: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def healthy(self) -> bool:
        return self.running and http("GET", f"{self.url}/healthz", timeout_s=3)[0] == 200

    def wait_healthy(self, timeout_s: float, what: str) -> None:
        """Until /healthz answers 200; RuntimeError with the log's tail if the process exits first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                code = self.proc.returncode if self.proc else None
                raise RuntimeError(f"{self.name} exited with {code} ({what}); log tail:\n{self.log()[-3000:]}")
            if self.healthy():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name}: {what} not reached within {timeout_s:.0f} s; log tail:\n{self.log()[-3000:]}")

    def metrics(self) -> dict[str, float]:
        status, raw = http("GET", f"{self.url}/metrics", timeout_s=5)
        if status != 200:
            raise OSError(f"/metrics answered {status}")
        return parse_metrics(raw.decode("utf-8", "replace"))

    def metric(self, name: str, default: float = 0.0) -> float:
        return self.metrics().get(name, default)

    def model(self) -> dict[str, Any]:
        status, body = http_json("GET", f"{self.url}/v1/model", timeout_s=5)
        if status != 200 or not isinstance(body, dict):
            raise OSError(f"/v1/model answered {status}")
        return body

    def kill(self) -> None:
        """SIGKILL: no final checkpoint, no clean leave from the group."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(30)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM and wait; SIGKILL after ``timeout_s`` (then None: it did not stop by itself)."""
        return None if self.proc is None else stop_process(self.proc, timeout_s)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus exposition text as {'name{labels}': value} (labels as written)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out
