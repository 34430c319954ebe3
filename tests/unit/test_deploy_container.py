"""deploy/container/: the Containerfile passes hadolint, has the shape the other deploy files rely on, its
HEALTHCHECK tells a healthy server from a sick one, and its build context keeps what `pip install .` needs.

No container engine runs on the development machine: the image is linted and checked here, never built.
"""
from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Iterator

import pytest
from deploy_tools import DEPLOY, IMAGE_UID, REPO, run, setting_env_names, tool

CONTAINERFILE = DEPLOY / "container" / "Containerfile"
IGNORE_FILE = DEPLOY / "container" / "Containerfile.dockerignore"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        word, _, rest = (pending + line).strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        pending = ""
    return out


def hadolint(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """hadolint on ``path`` with an empty configuration (no user or project config can ignore rules)."""
    config = cwd / "hadolint.yaml"
    config.write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    return run(tool("hadolint"), "--config", str(config), "--format", "json", "--failure-threshold", "style",
               "--no-color", str(path), cwd=cwd, env=env)


def test_containerfile_passes_hadolint_without_findings(tmp_path: Path) -> None:
    version = run(tool("hadolint"), "--version")
    assert version.returncode == 0 and "2.15.1" in version.stdout, version.stdout + version.stderr
    result = hadolint(CONTAINERFILE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == [], result.stdout
    # An inline `# hadolint ignore=` must say why, on the comment line above it.
    lines = CONTAINERFILE.read_text().splitlines()
    for n, line in enumerate(lines):
        if "hadolint ignore=" in line:
            assert n and lines[n - 1].startswith("#") and len(lines[n - 1].split()) > 3, f"unjustified: {line}"


def test_hadolint_flags_a_broken_variant(tmp_path: Path) -> None:
    text = CONTAINERFILE.read_text()
    broken = (text.replace("USER 10001:10001", "USER root")
              .replace("COPY --from=builder", "RUN apt-get update && apt-get install -y curl\nCOPY --from=builder"))
    assert broken.count("apt-get") == 2 and "USER root" in broken
    path = tmp_path / "Containerfile"
    path.write_text(broken)
    result = hadolint(path, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    # Pin apt versions, clean apt lists, --no-install-recommends, last USER root.
    assert {"DL3008", "DL3009", "DL3015", "DL3002"} <= codes, codes


def test_containerfile_shape() -> None:
    steps = instructions(CONTAINERFILE.read_text())
    words = [word for word, _ in steps]
    (base,) = [args for word, args in steps if word == "ARG" and args.startswith("PYTHON_IMAGE=")]
    # Pinned to a patch release of 3.11 on Debian bookworm (the machine the tests run on).
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    froms = [args for word, args in steps if word == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"], froms
    runtime = steps[words.index("FROM", words.index("FROM") + 1):]
    builder = steps[:len(steps) - len(runtime)]
    assert any(word == "RUN" and "pip install --no-cache-dir /src" in args for word, args in builder)
    assert ("COPY", ". /src") in builder
    assert ("COPY", "--from=builder /opt/lifelong/venv /opt/lifelong/venv") in runtime
    assert not any(word == "RUN" and "pip" in args for word, args in runtime), "the runtime stage installs nothing"

    users = [args for word, args in runtime if word == "USER"]
    assert users and users[-1] == f"{IMAGE_UID}:{IMAGE_UID}", "numeric (Kubernetes' runAsNonRoot checks it)"
    assert f"--uid {IMAGE_UID}" in " ".join(args for word, args in runtime if word == "RUN")
    env = " ".join(args for word, args in runtime if word == "ENV")
    variables = dict(re.findall(r"([A-Z][A-Z0-9_]*)=(\S+)", env))
    assert variables["LIFELONG_CHECKPOINT__DIR"] == "/var/lib/lifelong"
    assert variables["LIFELONG_HTTP__HOST"] == "0.0.0.0"
    assert variables["LIFELONG_HTTP__PORT"] == "8000"
    assert variables["PATH"].startswith("/opt/lifelong/venv/bin:")
    unknown = {k for k in variables if k.startswith("LIFELONG_")} - setting_env_names()
    assert not unknown, unknown
    assert ("VOLUME", '["/var/lib/lifelong"]') in runtime
    assert ("EXPOSE", "8000") in runtime
    assert ("STOPSIGNAL", "SIGTERM") in runtime
    assert ("ENTRYPOINT", '["lifelong", "run"]') in runtime
    assert runtime[-1] == ("CMD", "[]")
    (check,) = [args for word, args in runtime if word == "HEALTHCHECK"]
    assert "/healthz" in check and check.split("CMD ", 1)[1].startswith("[")


def healthcheck_argv() -> list[str]:
    check = dict(instructions(CONTAINERFILE.read_text()))["HEALTHCHECK"]
    argv = json.loads(check.split("CMD ", 1)[1])
    assert argv[0] == "python"  # the venv's, first on PATH
    return [sys.executable, *argv[1:]]


@pytest.fixture
def health_server() -> Iterator[tuple[int, list[int]]]:
    """A local server whose /healthz answers the status at the head of the list."""
    statuses = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            status = statuses[0] if self.path == "/healthz" else 404
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], statuses
    server.shutdown()
    server.server_close()


def test_healthcheck_tells_healthy_from_stopped(health_server: tuple[int, list[int]]) -> None:
    port, statuses = health_server
    argv = healthcheck_argv()
    env = {**os.environ, "LIFELONG_HTTP__PORT": str(port)}
    assert run(*argv, env=env, timeout=30).returncode == 0
    statuses[0] = 503  # the learning loop has stopped
    assert run(*argv, env=env, timeout=30).returncode != 0
    closed = {**os.environ, "LIFELONG_HTTP__PORT": "1"}  # nothing listens
    assert run(*argv, env=closed, timeout=30).returncode != 0


def ignore_patterns() -> list[str]:
    lines = [line.strip() for line in IGNORE_FILE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore matching, for patterns without '!' exceptions: a pattern is a path from the
    context root ('*' within a segment, '**' across segments); a match on a folder drops all under it."""
    def regex(pattern: str) -> str:
        out = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
            out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        return out
    pieces = path.split("/")
    prefixes = ["/".join(pieces[:n]) for n in range(1, len(pieces) + 1)]
    return any(re.fullmatch(regex(p), prefix) for p in patterns for prefix in prefixes)


def test_build_context_keeps_the_package_and_drops_the_rest() -> None:
    patterns = ignore_patterns()
    assert not any(p.startswith("!") for p in patterns), "ignored() does not model '!' exceptions"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    kept = {path for path in tracked if not ignored(path, patterns)}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    assert {"pyproject.toml", project["project"]["readme"]} <= kept
    root = setuptools["package-dir"]["lifelong"]
    for package in setuptools["packages"]:
        folder = Path(root, *package.split(".")[1:]).as_posix().removeprefix("./")
        prefix = "" if folder == "." else folder + "/"
        modules = [p for p in tracked if p.startswith(prefix) and p.endswith(".py") and "/" not in p[len(prefix):]]
        assert prefix + "__init__.py" in modules, package
        assert set(modules) <= kept, f"{package}: {sorted(set(modules) - kept)}"
    for package, globs in setuptools["package-data"].items():
        folder = Path(root, *package.split(".")[1:]).as_posix().removeprefix("./")
        prefix = "" if folder == "." else folder + "/"
        for glob in globs:
            matches = [p for p in tracked if p.startswith(prefix) and Path(p[len(prefix):]).match(glob)]
            assert matches and set(matches) <= kept, f"{package}: {glob}"
    dropped = set(tracked) - kept
    assert {p for p in tracked if p.startswith(("tests/", "docs/", "deploy/"))} <= dropped
    for path in (".git/HEAD", "deploy/kafka/libs/kafka.jar", "py_spy-0.4.3-py2.py3-none-any.whl",
                 "stream/__pycache__/events.cpython-311.pyc", "lifelong-state/latest", ".venv/bin/python"):
        assert ignored(path, patterns), path
    assert not ignored("stream/demo/clinc150.jsonl.gz", patterns)
