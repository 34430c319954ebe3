"""Fixtures that start the real parts: an Apache Kafka broker, Prometheus, the lifelong daemon.

Each binds free loopback ports and is torn down after use; the helpers live in
``harness.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from harness import LOCAL_KAFKA, Broker, Daemon, Prometheus, free_port, http_json, require, start_broker, wait_until


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    require("java")
    require("kcat")
    data_dir = tmp_path_factory.mktemp("kafka")
    yield start_broker(data_dir)
    subprocess.run([str(LOCAL_KAFKA), "stop", "--data-dir", str(data_dir)], capture_output=True, timeout=60)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of the test's own, for tests that stop and start it."""
    require("java")
    data_dir = tmp_path / "kafka"
    data_dir.mkdir()
    yield start_broker(data_dir)
    subprocess.run([str(LOCAL_KAFKA), "stop", "--data-dir", str(data_dir)], capture_output=True, timeout=60)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], Prometheus]]:
    """Start a real Prometheus scraping the given host:port targets every second."""
    started: list[Prometheus] = []

    def start(targets: list[str]) -> Prometheus:
        exe = require("prometheus")
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "lifelong", "static_configs": [{"targets": targets}]}]}
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config))
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen([exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        prom = Prometheus(f"http://127.0.0.1:{port}", proc)
        started.append(prom)
        wait_until(lambda: http_json("GET", f"{prom.url}/-/ready")[0] == 200, 60, "prometheus ready")
        return prom

    yield start
    for prom in started:
        prom.proc.terminate()
        try:
            prom.proc.wait(20)
        except subprocess.TimeoutExpired:
            prom.proc.kill()


@pytest.fixture
def lifelong_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start `lifelong run` as a real process with a config dict (None: the embedded default)."""
    daemons: list[Daemon] = []

    def start(config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Daemon:
        port = free_port()
        args = [sys.executable, "-m", "lifelong.cli", "run"]
        if config is not None:
            cfg = tmp_path / f"lifelong-{len(daemons)}.yaml"
            cfg.write_text(yaml.safe_dump(config))
            args += ["--config", str(cfg)]
        full_env = {**os.environ, "LIFELONG_HTTP__PORT": str(port), "PYTHONUNBUFFERED": "1", **(env or {})}
        log_path = tmp_path / f"lifelong-{len(daemons)}.log"
        proc = subprocess.Popen(args, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=full_env,
                                cwd=tmp_path)
        daemon = Daemon(proc, port, log_path)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()
