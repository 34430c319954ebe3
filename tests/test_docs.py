"""The README's reference sections stay in step with the code."""
from __future__ import annotations

import re
from pathlib import Path

from lifelong.monitoring.metrics import Metrics
from lifelong.service.config import settings_reference
from lifelong.service.snapshot_wire import REJECT_REASONS
from lifelong.stream.errors import REASONS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_settings_table_matches_the_settings_model() -> None:
    block = re.search(r"<!-- settings:begin -->\n(.*?)\n<!-- settings:end -->", README, re.S)
    assert block is not None, "README lacks the settings block"
    assert block.group(1) == settings_reference(), "run `lifelong config docs` and paste it into the README"


def test_every_metric_is_documented() -> None:
    names = set()
    metrics = Metrics(REASONS)
    metrics.add_snapshot_channel(REJECT_REASONS)
    metrics.add_merge()
    metrics.add_keys()
    for family in metrics.registry.collect():
        if family.name.startswith("process_"):
            continue
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names.add(family.name + suffix)
    missing = sorted(n for n in names if f"`{n}" not in README)
    assert not missing, f"metrics missing from the README: {missing}"


def test_every_rejection_reason_is_documented() -> None:
    assert all(f"`{r}`" in README for r in REASONS)
    assert all(f"`{r}`" in README for r in REJECT_REASONS)


def test_readme_has_exactly_two_setup_commands() -> None:
    """One runs the service, one runs the tests; both in the virtual environment .venv, since the
    distribution's Python refuses pip installs outside one (tests/integration/test_newcomer.py runs
    the first as a newcomer would; tests/run.sh makes and uses the same .venv)."""
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, re.S)
    runnable = [c for c in commands if not c.startswith("curl")]
    assert runnable == ["python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/lifelong run",
                        "bash tests/run.sh"]
