"""Restoring the service from damaged checkpoints: fall back to an older valid one (counted), refuse to
start when none is valid or the folder is unusable (the message names the files), never serve damage."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml

from lifelong.service.checkpoint import CheckpointError, UnrecoverableCheckpoint
from lifelong.service.loop import CheckpointMismatch
from loop_harness import Services, make_settings, metrics_text, run_to_end, stream_lines, write_lines


def numbered(state: Path) -> list[Path]:
    return sorted(p for p in state.iterdir() if p.name.startswith("ckpt-"))


def two_checkpoints(tmp_path: Path, services: Services) -> tuple[Path, int]:
    """A state folder with two checkpoints; returns the events file and the older one's learned count."""
    path = write_lines(tmp_path / "events.jsonl", stream_lines())
    service = services(make_settings(path, tmp_path / "state", checkpoint={"every_events": 10_000}))
    for _ in range(3):
        service.loop.step()
    assert service.loop.checkpoint()
    older = service.learner.events_learned
    run_to_end(service)
    assert service.loop.checkpoint()
    service.loop.close()
    assert len(numbered(tmp_path / "state")) >= 2 and service.learner.events_learned > older
    return path, older


def overwrite_quarter(tensors: Path) -> None:
    data = bytearray(tensors.read_bytes())
    start = len(data) // 2
    data[start:start + len(data) // 4] = b"\x7f" * (len(data) // 4)
    tensors.write_bytes(bytes(data))


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, services: Services,
                                                                    metric: Callable[..., float]) -> None:
    path, older = two_checkpoints(tmp_path, services)
    overwrite_quarter(numbered(tmp_path / "state")[-1] / "tensors.safetensors")
    service = services(make_settings(path, tmp_path / "state"))
    assert service.restored and service.learner.events_learned == older
    assert metric(metrics_text(service), "lifelong_checkpoint_restore_fallbacks_total") == 1.0
    snap = service.holder.current
    assert snap is not None and snap.events_learned == older  # what is served is the valid one


def test_a_deleted_latest_link_does_not_start_from_nothing(tmp_path: Path, services: Services) -> None:
    path, _ = two_checkpoints(tmp_path, services)
    newest = services.made[-1].learner.events_learned
    (tmp_path / "state" / "latest").unlink()
    service = services(make_settings(path, tmp_path / "state"))
    assert service.restored and service.learner.events_learned == newest


def test_no_valid_checkpoint_refuses_to_start_unless_told(tmp_path: Path, services: Services) -> None:
    path, _ = two_checkpoints(tmp_path, services)
    for folder in numbered(tmp_path / "state"):
        (folder / "meta.json").write_text("{ garbage")
    with pytest.raises(UnrecoverableCheckpoint, match="meta.json"):
        services(make_settings(path, tmp_path / "state"))
    service = services(make_settings(path, tmp_path / "state", checkpoint={"on_unrecoverable": "start_empty"}))
    assert not service.restored and service.learner.events_learned == 0


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path: Path, services: Services) -> None:
    path, _ = two_checkpoints(tmp_path, services)
    with pytest.raises(CheckpointMismatch, match="does not fit this configuration"):
        services(make_settings(path, tmp_path / "state", learner={"name": "lifelong"}))


def test_an_unusable_checkpoint_folder_is_found_at_start(tmp_path: Path, services: Services) -> None:
    path = write_lines(tmp_path / "events.jsonl", stream_lines())
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(CheckpointError, match="afile"):
        services(make_settings(path, tmp_path / "afile" / "state"))


def run_cli(tmp_path: Path, state: Path, events: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "lifelong.yaml"
    config.write_text(yaml.safe_dump({
        "source": {"kind": "file", "path": str(events)},
        "learner": {"name": "nmc", "input_kind": "features", "feature_dim": 4},
        "checkpoint": {"dir": str(state)}, "http": {"port": 0}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELONG_")}
    return subprocess.run([sys.executable, "-m", "lifelong.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env=env)


def test_the_command_refuses_with_a_message_naming_the_files(tmp_path: Path, services: Services) -> None:
    path, _ = two_checkpoints(tmp_path, services)
    for folder in numbered(tmp_path / "state"):
        (folder / "tensors.safetensors").write_bytes(b"")
    done = run_cli(tmp_path, tmp_path / "state", path)
    assert done.returncode != 0
    assert "cannot start" in done.stderr and "tensors.safetensors" in done.stderr
    assert "start_empty" in done.stderr  # the way out is named
    assert "Traceback" not in done.stderr
