"""The README's first set-up command, run as a newcomer runs it: in a fresh clone, with the
distribution's own Python first on PATH (one that refuses pip installs outside a virtual
environment, PEP 668), copied from the README itself, until POST /v1/predict answers.

The clone is of the repository's committed HEAD: uncommitted work is not in it. The install takes
minutes (torch's CUDA build is about 4 GB from PyPI; pip's cache serves a rerun)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import free_port, http_json

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DISTRO_PYTHON = Path("/usr/bin/python3")
INSTALL_AND_READY_S = 1800
STOP_S = 60


def first_setup_command(readme: str) -> str:
    """The first ```bash block of the README's "Set up" section."""
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", setup, re.S)[0]


def distro_python_problem() -> str | None:
    if not DISTRO_PYTHON.exists():
        return f"no {DISTRO_PYTHON}"
    probe = subprocess.run([str(DISTRO_PYTHON), "-c", "import sys, sysconfig, pathlib; print(sys.version_info >= "
                            "(3, 11), (pathlib.Path(sysconfig.get_path('stdlib')) / 'EXTERNALLY-MANAGED').exists())"],
                           capture_output=True, text=True, check=True)
    new_enough, managed = probe.stdout.split()
    if new_enough != "True":
        return f"{DISTRO_PYTHON} is older than 3.11 (the README names python3.11 for that case)"
    if managed != "True":
        return f"{DISTRO_PYTHON} is not marked EXTERNALLY-MANAGED: not a distribution's Python"
    return None


def test_readme_first_command_serves_predictions_from_a_fresh_clone(tmp_path: Path) -> None:
    problem = distro_python_problem()
    if problem is not None:
        pytest.skip(problem)
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    clone = tmp_path / "lifelong"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    try:
        command = first_setup_command((clone / "README.md").read_text())
        port = free_port()
        env = {k: v for k, v in os.environ.items()
               if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE")}
        env.update(PATH=f"{DISTRO_PYTHON.parent}:{os.environ.get('PATH', '/bin')}",
                   LIFELONG_HTTP__PORT=str(port), PYTHONUNBUFFERED="1")
        assert shutil.which("python3", path=env["PATH"]) == str(DISTRO_PYTHON)
        log_path = tmp_path / "newcomer.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(["bash", "-c", command], cwd=clone, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        start = time.monotonic()
        try:
            status, body = None, None
            while time.monotonic() - start < INSTALL_AND_READY_S:
                assert proc.poll() is None, (
                    f"`{command}` exited {proc.returncode}:\n{log_path.read_text(errors='replace')[-6000:]}")
                try:
                    status, body = http_json("POST", f"http://127.0.0.1:{port}/v1/predict",
                                             {"instances": [{"text": "freeze my card"}]})
                except OSError:
                    status = None
                if status == 200:
                    break
                time.sleep(2)
            tail = log_path.read_text(errors="replace")[-6000:]
            assert status == 200, f"no answer in {INSTALL_AND_READY_S} s from `{command}` ({status} {body}):\n{tail}"
            [prediction] = body["predictions"]
            assert isinstance(prediction["label"], str) and body["model_version"] >= 1, body
            ready_s = time.monotonic() - start
            stopped_s = stop_group(proc)
            assert stopped_s is not None, f"still running {STOP_S} s after SIGTERM:\n{tail}"
            print(f"`{command}`: predictions after {ready_s:.0f} s, stopped {stopped_s:.1f} s after SIGTERM",
                  file=sys.stderr)
        finally:
            stop_group(proc)
    finally:
        shutil.rmtree(clone, ignore_errors=True)  # its .venv is gigabytes: not kept with pytest's tmp dirs


def stop_group(proc: subprocess.Popen[bytes]) -> float | None:
    """SIGTERM to the command's process group (bash, pip or the service): the seconds until all of it
    ended, or None if it outlasted STOP_S and was killed."""
    start = time.monotonic()
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return 0.0
    while time.monotonic() - start < STOP_S:
        proc.poll()
        if not live_members(proc.pid):
            return time.monotonic() - start
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return None


def live_members(pgid: int) -> list[int]:
    """The group's processes that have not exited: a zombie counts as gone (one whose parent died is
    reparented to PID 1, which need not reap it)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(stat.parent.name))
    return pids
