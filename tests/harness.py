"""Helpers that start the real parts: an Apache Kafka broker, Prometheus, the lifelong daemon.

Each binds free loopback ports and is torn down after use. The tools come from
`bash tests/run.sh` (apt: Java, Maven, prometheus, kcat; Maven: Kafka jars); a
missing tool fails the test with that hint rather than skipping it, so a CI
run can never pass by testing less.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# One polling helper and one free-port finder for the package's benches and these tests.
from lifelong.bench.faults_env import stop_process
from lifelong.bench.faults_env import wait_for as wait_until  # noqa: F401 (re-exported to the tests)
from lifelong.bench.speed_kafka import free_port

REPO = Path(__file__).resolve().parents[1]
LOCAL_KAFKA = REPO / "deploy" / "kafka" / "local-kafka"
SHARED_DATA = REPO.parent / "shared" / "data"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"'{tool}' is not installed: run `bash tests/run.sh`, which installs what the tests need")
    return path


def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    ctype_json = raw[:1] in (b"{", b"[")
    return status, json.loads(raw) if ctype_json else raw.decode()


# -- Kafka ----------------------------------------------------------------------------

@dataclass
class Broker:
    bootstrap: str
    data_dir: Path

    def produce(self, topic: str, lines: list[str], keys: list[str] | None = None) -> None:
        """Produce one message per line with kcat, an independent client.

        Without keys kcat's sticky partitioner may put a whole quick burst on one partition; with
        ``keys`` (hashed to partitions) a burst spreads over all of them.
        """
        if keys is None:
            payload, key_args = "".join(line + "\n" for line in lines), []
        else:
            payload, key_args = "".join(f"{k}\t{line}\n" for k, line in zip(keys, lines)), ["-K", "\t"]
        subprocess.run([require("kcat"), "-b", self.bootstrap, "-P", "-t", topic, *key_args], input=payload.encode(),
                       check=True, timeout=60)

    def stop(self) -> None:
        subprocess.run([str(LOCAL_KAFKA), "stop", "--data-dir", str(self.data_dir)], capture_output=True,
                       check=True, timeout=60)

    def start(self) -> None:
        """Start again on the same data dir (same ports, same topics)."""
        started = subprocess.run([str(LOCAL_KAFKA), "start", "--data-dir", str(self.data_dir)], capture_output=True,
                                 text=True, timeout=240)
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip().splitlines()[-1] == self.bootstrap

    def consume(self, topic: str) -> list[dict[str, Any]]:
        out = subprocess.run([require("kcat"), "-b", self.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e",
                              "-J", "-q"], capture_output=True, check=True, timeout=60)
        return [json.loads(line) for line in out.stdout.decode().splitlines() if line.strip()]


# -- Prometheus -----------------------------------------------------------------------

@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]

    def query(self, expr: str) -> list[dict[str, Any]]:
        qs = urllib.parse.urlencode({"query": expr})
        status, body = http_json("GET", f"{self.url}/api/v1/query?{qs}")
        if status != 200 or body.get("status") != "success":
            raise ValueError(f"query {expr!r} failed: {status} {body}")
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


# -- the lifelong daemon --------------------------------------------------------------

@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 120) -> float:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lifelong exited with {self.proc.returncode}:\n{self.log()}")
            return http_json("GET", f"{self.url}/readyz", timeout=2)[0] == 200
        try:
            wait_until(ready, timeout_s, "lifelong /readyz")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- daemon log (tail) ---\n{self.log()[-6000:]}") from None
        return time.monotonic() - self.started_at

    def metric(self, name: str) -> float:
        status, text = http_json("GET", f"{self.url}/metrics")
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def stop(self, timeout_s: float = 30) -> int:
        stop_process(self.proc, timeout_s)
        return int(self.proc.returncode)  # -9 when it had to be killed


def start_broker(data_dir: Path, partitions: int = 2) -> Broker:
    cmd = [str(LOCAL_KAFKA), "start", "--port", str(free_port()), "--controller-port", str(free_port()),
           "--data-dir", str(data_dir), "--partitions", str(partitions)]
    started = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    if started.returncode != 0:
        pytest.fail(f"local-kafka start failed:\n{started.stdout}\n{started.stderr}")
    return Broker(started.stdout.strip().splitlines()[-1], data_dir)


def checkpoint_meta(state_dir: Path) -> dict[str, Any]:
    """The metadata of the latest checkpoint in a daemon's checkpoint folder."""
    from lifelong.memory.persistence import load_state

    return load_state(state_dir / "latest")[1]


def learned_counts(state_dir: Path) -> dict[str, int]:
    return checkpoint_meta(state_dir)["parts"]["learned_ids"]["counts"]


def replica_config(broker: Broker, topic: str, group: str, name: str, state: Path, dim: int,
                   learning: dict[str, Any]) -> dict[str, Any]:
    """A learner replica on feature vectors of ``dim`` in consumer group ``group`` (scale-out tests)."""
    return {
        "source": {"kind": "kafka", "batch_size": 50, "poll_timeout_s": 0.2, "lag_check_s": 0.5,
                   "kafka": {"bootstrap_servers": broker.bootstrap, "events_topic": topic, "group_id": group,
                             "instance_id": name, "session_timeout_s": 6, "startup_timeout_s": 60}},
        "learner": {"input_kind": "features", "feature_dim": dim, "encoder": "standardize",
                    "feature_warmup_events": 0, "torch_threads": 1},
        "outputs": {"predictions_topic": None, "dead_letter_topic": None},
        "evaluation": {"holdout_fraction": 0.0},
        "checkpoint": {"dir": str(state / name), "every_s": 1},
        "scaleout": {"learning": learning}}
