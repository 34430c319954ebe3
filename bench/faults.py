"""``lifelong bench --faults``: delivery under ordinary faults, on a real broker, against the real daemon.

It starts its own Kafka broker (``deploy/kafka/local-kafka``, loopback, a temporary folder),
runs ``lifelong run`` as child processes, and measures:

1. kill -9 three times at random points while events stream in with labels 0-20 s (--quick:
   0-5 s) later on a labels topic, plus a labels-first backlog before the first start and
   another one after a restart -> ``learned_once_fraction``, ``learned_twice``;
2. the broker stopped 30 s (--quick: 10 s) mid-stream -> ``outage_learned_fraction``,
   ``resume_seconds`` (from the broker accepting connections to the daemon consuming again);
3. bad records on the events and the labels topic, and bad HTTP requests -> ``crashes``,
   ``bad_records_dead_lettered_fraction``, ``http_5xx``;
4. 2 MB records -> dead-lettered within the output limit, checkpoints go on, clean stop, restart;
5. checkpoint damage -> ``checkpoint_damage`` {case: outcome}, ``damaged_checkpoints_served``.

It writes OUT/faults.json and OUT/faults.md (targets against measured values).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .faults_report import render_md, targets
from .faults_scenarios import Context, Sizes

SCENARIOS = ("kills", "outage", "bad", "oversized", "damage")
QUICK = Sizes(events=600, backlog=100, rate=40.0, max_delay_s=5.0, outage_s=10.0)
FULL = Sizes(events=3000, backlog=300, rate=60.0, max_delay_s=20.0, outage_s=30.0)


@dataclass(frozen=True)
class FaultOptions:
    out: Path
    quick: bool = False
    input_kind: str | None = None  # None: features with --quick, text otherwise
    scenarios: tuple[str, ...] = SCENARIOS
    seed: int = 0
    workdir: Path | None = None  # None: a temporary folder, removed afterwards
    sizes: Sizes | None = None

    @property
    def kind(self) -> str:
        return self.input_kind or ("features" if self.quick else "text")


def commit_sha() -> str:
    repo = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def _finite(value: Any) -> Any:
    """JSON has no NaN: unmeasured numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def summarise(parts: dict[str, Any]) -> dict[str, Any]:
    """The headline fields of faults.json from the scenarios' own dicts."""
    kills, outage, bad = parts.get("kills"), parts.get("outage"), parts.get("bad")
    oversized, damage = parts.get("oversized"), parts.get("damage")
    twice = [p["learned_twice"] for p in (kills, outage) if p and "learned_twice" in p]
    doc: dict[str, Any] = {
        "learned_once_fraction": kills.get("learned_once_fraction") if kills else None,
        "learned_twice": sum(twice) if twice else None,
        "outage_learned_fraction": outage.get("outage_learned_fraction") if outage else None,
        "resume_seconds": outage.get("resume_seconds") if outage else None,
        "crashes": bad.get("crashes") if bad else None,
        "bad_records_dead_lettered_fraction": bad["dead_letters"]["dead_lettered_fraction"] if bad else None,
        "http_5xx": bad["http"]["http_5xx"] if bad else None,
        "bad_record_kinds": bad.get("kinds") if bad else None,
        "oversized_ok": oversized.get("ok") if oversized else None,
        "checkpoint_damage": {k: v.get("outcome") for k, v in damage["cases"].items()} if damage else None,
        "damaged_checkpoints_served": damage.get("served") if damage else None,
    }
    return doc


def run_faults(opts: FaultOptions, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    from .faults_env import Broker

    say = log or (lambda msg: print(f"[faults] {msg}", file=sys.stderr, flush=True))
    unknown = [s for s in opts.scenarios if s not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    started = time.monotonic()
    tmp = None if opts.workdir else tempfile.TemporaryDirectory(prefix="lifelong-faults-")
    workdir = opts.workdir or Path(tmp.name)  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = opts.sizes or (QUICK if opts.quick else FULL)
    say(f"starting a local broker in {workdir}")
    broker = Broker.start_new(workdir / "kafka")
    ctx = Context(broker, workdir, opts.kind, sizes, opts.seed, say)
    parts: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:
        for name in opts.scenarios:
            say(f"scenario {name}")
            t = time.monotonic()
            first = len(ctx.daemons)
            try:
                parts[name] = _scenario(name)(ctx)
            except (TimeoutError, RuntimeError, OSError, AssertionError) as exc:
                # One scenario failing to run is a result, not the end of the bench.
                errors[name] = f"{type(exc).__name__}: {exc}"[:3000]
                say(f"scenario {name} failed: {errors[name][:500]}")
            say(f"scenario {name}: {time.monotonic() - t:.0f} s")
            ctx.close()
            if name in errors or not _met(name, parts.get(name)):
                keep_logs(ctx.daemons[first:], opts.out / "logs" / name)
    finally:
        ctx.close()
        broker.stop()
        if tmp is not None:
            tmp.cleanup()
    doc = summarise(parts)
    doc.update({"quick": opts.quick, "input_kind": opts.kind, "sizes": sizes.__dict__, "seed": opts.seed,
                "commit": commit_sha(), "command": " ".join(["lifelong", "bench", "--faults"]
                                                            + (["--quick"] if opts.quick else [])),
                "total_seconds": round(time.monotonic() - started, 1), "errors": errors,
                "kills": parts.get("kills"), "outage": parts.get("outage"), "bad_records": parts.get("bad"),
                "http": (parts.get("bad") or {}).get("http"), "oversized": parts.get("oversized"),
                "checkpoint_damage_detail": (parts.get("damage") or {}).get("cases")})
    doc["targets"] = {t.key: {"wanted": t.wanted, "measured": t.measured, "met": t.ok} for t in targets(doc)}
    doc = _finite(doc)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "faults.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (opts.out / "faults.md").write_text(render_md({**doc, "checkpoint_damage": doc["checkpoint_damage_detail"]}))
    return doc


def _met(name: str, part: dict[str, Any] | None) -> bool:
    """Whether a scenario's own targets were met (its daemons' logs are kept when not)."""
    doc = summarise({name: part} if part else {})
    return all(t.ok is not False for t in targets(doc) if t.key != "crashes" or name == "bad")


def keep_logs(daemons: list[Any], folder: Path, tail_bytes: int = 200_000) -> None:
    """The last ``tail_bytes`` of each daemon log, for a reader of a failed run."""
    folder.mkdir(parents=True, exist_ok=True)
    for daemon in daemons:
        for path in daemon.log_paths:
            if path.exists():
                data = path.read_bytes()[-tail_bytes:]
                (folder / path.name).write_bytes(data)


def _scenario(name: str) -> Callable[[Context], dict[str, Any]]:
    if name == "kills":
        from .faults_scenarios import run_kills
        return run_kills
    if name == "outage":
        from .faults_scenarios import run_outage
        return run_outage
    if name == "bad":
        from .faults_bad import run_bad_records
        return run_bad_records
    if name == "oversized":
        from .faults_scenarios import run_oversized
        return run_oversized
    from .faults_damage import run_damage
    return run_damage


def render_text(doc: dict[str, Any]) -> str:
    rows = [f"{'target':<36} {'measured':>14}  met"]
    for t in targets(doc):
        met = "n/a" if t.ok is None else ("yes" if t.ok else "NO")
        rows.append(f"{t.key:<36} {str(t.measured):>14}  {met}")
    if doc.get("errors"):
        rows += [f"scenario {k} did not finish: {v[:300]}" for k, v in doc["errors"].items()]
    return "\n".join(rows)
