"""deploy/systemd/: the unit and its GPU drop-in pass `systemd-analyze verify` (and broken copies do not),
its sandbox scores as `systemd-analyze security` says, its settings fit the daemon, and the setting it must
not have (MemoryDenyWriteExecute) really breaks torch.

`systemd-analyze verify` needs ExecStart's binary to exist: the unit is checked as a copy whose ExecStart
names a stand-in executable in a temporary folder, with the arguments unchanged.
"""
from __future__ import annotations

import ctypes
import errno
import json
import re
import sys
from pathlib import Path

import pytest
from deploy_tools import DEPLOY, duration_s, run, setting_env_names, settings_from_env, shutdown_budget_s, tool

SYSTEMD = DEPLOY / "systemd"
UNIT = SYSTEMD / "lifelong.service"
GPU_DROPIN = SYSTEMD / "gpu.conf"
ENV_EXAMPLE = SYSTEMD / "lifelong.env.example"
EXEC = "/opt/lifelong/venv/bin/lifelong"


def systemd_version() -> int:
    """systemd-analyze's release: 252 on Debian 12, 249 on Ubuntu 22.04."""
    result = run(tool("systemd-analyze"), "--version")
    return int(re.match(r"systemd (\d+)", result.stdout).group(1))


# `systemd-analyze security` judges a unit file only from systemd 250 on (--offline, --threshold, --json);
# before it, it asks the running manager about loaded units.
needs_offline_security = pytest.mark.skipif(systemd_version() < 250, reason="systemd-analyze security "
                                            "--offline needs systemd 250+ (Debian 12 has 252)")


def directives(text: str) -> dict[str, list[str]]:
    """'Section.Key' -> every value, in order (systemd's repeated keys add up)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def stage(folder: Path, unit_text: str, dropin: str | None = None) -> Path:
    """The unit in a new ``folder`` with ExecStart on a stand-in executable (+ the drop-in beside it)."""
    stand_in = folder / "bin" / "lifelong"
    stand_in.parent.mkdir(parents=True)
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    path = folder / "lifelong.service"
    path.write_text(unit_text.replace(f"ExecStart={EXEC} ", f"ExecStart={stand_in} "))
    if dropin is not None:
        (folder / "lifelong.service.d").mkdir()
        (folder / "lifelong.service.d" / "gpu.conf").write_text(dropin)
    return path


def verify(path: Path) -> tuple[int, list[str]]:
    """Exit status and the lines about this unit (its drop-ins included) of `systemd-analyze verify`.

    verify exits 0 on an unknown key or a value it cannot parse (it logs and ignores them), so both the
    status and the log count."""
    scope = ["--recursive-errors=no"] if systemd_version() >= 250 else []  # only this unit's errors
    result = run(tool("systemd-analyze"), "verify", "--man=no", *scope, str(path), cwd=path.parent)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "lifelong.service" in line]
    return result.returncode, lines


def security(path: Path, threshold: int = 100) -> tuple[int, dict[str, bool]]:
    """Exit status at ``threshold`` (0-100; the printed level is a tenth of it) and each check's verdict."""
    result = run(tool("systemd-analyze"), "security", "--offline=yes", f"--threshold={threshold}", "--json=short",
                 str(path), cwd=path.parent)
    checks = {item["name"]: bool(item["set"]) for item in json.loads(result.stdout)}
    return result.returncode, checks


def test_unit_verifies_clean(tmp_path: Path) -> None:
    assert f"ExecStart={EXEC} " in UNIT.read_text()
    status, lines = verify(stage(tmp_path, UNIT.read_text()))
    assert status == 0 and not lines, lines


@pytest.mark.parametrize("change, expected", [
    ((f"ExecStart={EXEC} ", "ExecStart=/nonexistent/lifelong "), "is not executable"),
    (("TimeoutStopSec=60", "TimeoutStopSecs=60"), "Unknown key 'TimeoutStopSecs'"),
    (("ProtectSystem=strict", "ProtectSystem=stricter"), "Failed to parse"),
    (("Restart=on-failure", "Restart=sometimes"), "Failed to parse"),
    (("[Service]", "[Servce]"), "Unknown section 'Servce'"),
])
def test_broken_unit_fails_verify(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    text = UNIT.read_text()
    assert change[0] in text
    status, lines = verify(stage(tmp_path, text.replace(*change)))
    assert any(expected in line for line in lines), lines
    if change[0].startswith("ExecStart"):
        assert status != 0


@needs_offline_security
def test_gpu_dropin_verifies_and_opens_only_the_nvidia_devices(tmp_path: Path) -> None:
    base = stage(tmp_path / "base", UNIT.read_text())
    gpu = stage(tmp_path / "gpu", UNIT.read_text(), GPU_DROPIN.read_text())
    status, lines = verify(gpu)
    assert status == 0 and not lines, lines
    _, without = security(base)
    _, with_dropin = security(gpu)
    assert without["PrivateDevices="] and not with_dropin["PrivateDevices="], "the drop-in is loaded"
    dropin = directives(GPU_DROPIN.read_text())
    assert dropin["Service.PrivateDevices"] == ["no"] and dropin["Service.DevicePolicy"] == ["closed"]
    assert all(re.fullmatch(r"/dev/nvidia[-a-z0-9]+ rw", d) for d in dropin["Service.DeviceAllow"])
    (gpu.parent / "lifelong.service.d" / "gpu.conf").write_text(GPU_DROPIN.read_text() + "DevicePolicy=shut\n")
    _, lines = verify(gpu)
    assert any("gpu.conf" in line and "Failed to parse" in line for line in lines), lines


@needs_offline_security
def test_sandbox_exposure(tmp_path: Path) -> None:
    status, checks = security(stage(tmp_path / "unit", UNIT.read_text()), threshold=20)
    assert status == 0, "exposure above 2.0 ('OK' is below 3.9)"
    for name in ("NoNewPrivileges=", "ProtectSystem=", "ProtectHome=", "PrivateTmp=", "PrivateDevices=",
                 "RestrictAddressFamilies=~AF_PACKET", "RestrictAddressFamilies=~…", "LockPersonality=",
                 "SystemCallFilter=~@privileged", "SystemCallFilter=~@mount", "CapabilityBoundingSet=~CAP_SYS_ADMIN",
                 "RestrictNamespaces=~user", "ProtectKernelModules=", "RestrictSUIDSGID=", "User=/DynamicUser="):
        assert checks[name], name
    assert not checks["MemoryDenyWriteExecute="], "torch needs writable+executable memory (see below)"
    # The same unit without its [Service] sandbox scores far worse: the threshold can fail.
    text = UNIT.read_text()
    bare = text[:text.index("NoNewPrivileges=")] + text[text.index("[Install]"):]
    bare_status, _ = security(stage(tmp_path / "bare", bare), threshold=20)
    assert bare_status != 0


def test_unit_fits_the_daemon() -> None:
    unit = directives(UNIT.read_text())
    one = {key: values[-1] for key, values in unit.items()}
    assert one["Service.ExecStart"] == f"{EXEC} run --config /etc/lifelong/lifelong.yaml"
    assert one["Service.Type"] in {"exec", "simple"}
    assert one["Service.EnvironmentFile"] == "-/etc/lifelong/lifelong.env"
    assert one["Service.Restart"] == "on-failure" and duration_s(one["Service.RestartSec"]) > 0
    assert one["Service.KillSignal"] == "SIGTERM"
    assert duration_s(one["Service.TimeoutStopSec"]) >= shutdown_budget_s()
    assert one["Service.StateDirectory"] == "lifelong"
    assert "LIFELONG_CHECKPOINT__DIR=/var/lib/lifelong" in unit["Service.Environment"]
    assert one.get("Service.DynamicUser") == "yes" or one.get("Service.User") not in (None, "root")
    assert "Service.MemoryDenyWriteExecute" not in unit
    assert one["Service.RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"
    assert unit["Service.SystemCallFilter"][0] == "@system-service"
    assert int(one["Service.LimitNOFILE"]) >= 4096
    for name in (v.split("=", 1)[0] for v in unit["Service.Environment"]):
        assert not name.startswith("LIFELONG_") or name in setting_env_names(), name


def test_env_example_names_settings_that_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    active, commented = {}, set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"(#?)(LIFELONG_[A-Z0-9_]+)=(.*)", line.strip())
        if match:
            if match.group(1):
                commented.add(match.group(2))
            else:
                active[match.group(2)] = match.group(3)
    assert active and commented
    assert not (set(active) | commented) - setting_env_names()
    config = tmp_path / "lifelong.yaml"
    config.write_text("{}\n")
    settings = settings_from_env(monkeypatch, active, config)
    assert settings.source.kind == "kafka" and str(settings.checkpoint.dir) == "/var/lib/lifelong"


MDWE_PROBE = """
import ctypes, sys
if sys.argv[1] == "mdwe":
    # PR_SET_MDWE (65), PR_MDWE_REFUSE_EXEC_GAIN (1): the kernel's W^X rule behind MemoryDenyWriteExecute=yes.
    assert ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) == 0
import torch
x = torch.randn(64, 384)
torch.nn.functional.gelu(x)      # the activation of the text encoder's MLP
print("ok")
"""


def mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    # PR_GET_MDWE (66) exists since Linux 6.3.
    return libc.prctl(66, 0, 0, 0, 0) >= 0 or ctypes.get_errno() != errno.EINVAL


@pytest.mark.skipif(not mdwe_supported(), reason="the kernel has no PR_SET_MDWE (Linux 6.3+)")
def test_memory_deny_write_execute_would_break_torch() -> None:
    """Why the unit leaves MemoryDenyWriteExecute off: oneDNN, torch's CPU kernel library, generates code at
    run time; refused writable+executable memory, it fails and every record would be rejected."""
    plain = run(sys.executable, "-c", MDWE_PROBE, "plain", timeout=120)
    assert plain.returncode == 0 and "ok" in plain.stdout, plain.stderr[-2000:]
    refused = run(sys.executable, "-c", MDWE_PROBE, "mdwe", timeout=120)
    assert refused.returncode != 0 and "could not create a primitive" in refused.stderr, refused.stderr[-2000:]
