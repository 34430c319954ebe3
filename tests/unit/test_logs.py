"""Operator basics: `lifelong --version`, JSON logs (the daemon's and uvicorn's access log alike)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from lifelong import __version__
from lifelong.bench.faults_env import wait_for
from lifelong.bench.speed_kafka import free_port
from lifelong.service.logs import configure_logging

from http_harness import labelled_events, write_lines


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_version() -> None:
    out = subprocess.run([sys.executable, "-m", "lifelong.cli", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"lifelong {__version__}"


def test_json_lines_carry_level_logger_message_and_the_records_place(restore_logging: None,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json", access_log=False)
    log = logging.getLogger("lifelong.test")
    log.warning("rejected %s", "r1", extra={"topic": "ev", "partition": 1, "offset": 42})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    log.debug("not at INFO")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(x["level"], x["message"]) for x in lines] == [("WARNING", "rejected r1"), ("ERROR", "failed")]
    assert lines[0]["logger"] == "lifelong.test" and (lines[0]["topic"], lines[0]["partition"],
                                                      lines[0]["offset"]) == ("ev", 1, 42)
    assert "ValueError: boom" in lines[1]["exception"] and lines[1]["time"].endswith("Z")


def test_the_daemon_logs_json_with_an_access_log(tmp_path: Path) -> None:
    import urllib.request

    events = write_lines(tmp_path / "events.jsonl", labelled_events(40, seed=0))
    port = free_port()
    env = {**os.environ, "LIFELONG_LOG_FORMAT": "json", "LIFELONG_HTTP__ACCESS_LOG": "true",
           "LIFELONG_HTTP__PORT": str(port), "LIFELONG_SOURCE__KIND": "file", "LIFELONG_SOURCE__PATH": str(events),
           "LIFELONG_LEARNER__NAME": "nmc", "LIFELONG_LEARNER__INPUT_KIND": "features",
           "LIFELONG_LEARNER__FEATURE_DIM": "4", "LIFELONG_CHECKPOINT__DIR": str(tmp_path / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "lifelong.cli", "run"], env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, cwd=tmp_path)
    try:
        def ready() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
            except OSError:
                return False
        wait_for(ready, 120, "the daemon ready")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is JSON
    assert proc.returncode == 0
    assert any(x["logger"] == "lifelong.service.runtime" and "serving on" in x["message"] for x in lines)
    access = [x for x in lines if x["logger"] == "uvicorn.access"]
    assert access and "GET /readyz" in access[-1]["message"] and "200" in access[-1]["message"]
