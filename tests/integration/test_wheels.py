"""Every pinned dependency, test extras included, installs from wheels on each Python the README's
distributions ship (Debian 12: 3.11, Ubuntu 24.04: 3.12, Debian 13: 3.13).

pip resolves the whole set for each Python with --only-binary, as for a machine of that Python: a
pin with no wheel for one of them fails here, not as a source build on a newcomer's machine."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # asks PyPI; pip's cache answers a rerun

ROOT = Path(__file__).resolve().parents[2]
# Ubuntu 22.04 has the oldest glibc of them (2.35): a wheel of any manylinux tag up to it installs.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def requirements() -> list[str]:
    """The build requirements, the dependencies and every extra's, as pyproject.toml has them."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    return [*pyproject["build-system"]["requires"], *project["dependencies"],
            *(r for extra in project["optional-dependencies"].values() for r in extra)]


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_every_pin_installs_from_wheels(python: str, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
           "--python-version", python, *(f"--platform={p}" for p in PLATFORMS), "--target", str(tmp_path / "t"),
           "--disable-pip-version-check", "--quiet", *requirements()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"no wheels for Python {python}:\n{proc.stderr[-4000:]}"
