"""``lifelong bench --soak N``: bounded memory and a steady rate over a long run of the real loop.

The daemon's learning loop (``LearningLoop.step``: validate, encode, predict-then-learn, publish
snapshots, checkpoints into a temporary folder on the daemon's own schedule) learns N events of a
built-in stream, replayed with fresh ids when the stream is shorter (elec2's 40,782 training rows, CLINC150's
15,000 utterances). Every tenth of the run it records the process's resident memory and the rate
over that tenth. Targets: RSS after the first tenth grows by at most 5% to the end; the last tenth's
rate is at least 0.9 of the first's (after the first tenth's one-off costs: the MLP encoder's switch,
the PQ codebook, the replay memory filling up to its budget).
"""
from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .speed_common import SpeedOptions, close_service, finite, speed_settings, stream_data
from .speed_http import ReplaySource
from .streams import builtin

SOAK_SCHEMA = 1
RSS_GROWTH_MAX = 0.05
RATE_RATIO_MIN = 0.9
BATCH_SIZE = {"features": 500, "text": 64}  # as the speed bench's pipeline part


@dataclass
class SoakOptions:
    events: int = 1_000_000
    stream: str = "elec2"
    out: Path = Path("docs/benchmarks/soak")
    device: str = "cpu"
    checkpoint_every_events: int | None = None  # None: the daemon's default
    log: Callable[[str], None] = field(default=lambda line: print(line, flush=True))


def rss_bytes() -> int:
    """The process's resident set now (Linux /proc; elsewhere the peak, which can only grow)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _settings(opts: SoakOptions, data: Any, ckpt_dir: str) -> Any:
    settings = speed_settings(data, SpeedOptions(device=opts.device, vector_batch_size=BATCH_SIZE["features"],
                                                 text_batch_size=BATCH_SIZE["text"]),
                              {"kind": "file", "path": "replay"})
    checkpoint = {"dir": ckpt_dir} | ({"every_events": opts.checkpoint_every_events}
                                      if opts.checkpoint_every_events else {})
    return settings.model_validate(settings.model_dump(mode="json") | {
        "checkpoint": settings.checkpoint.model_dump(mode="json") | checkpoint})


def run_soak(opts: SoakOptions) -> dict[str, Any]:
    from ..service.runtime import Service

    data = stream_data(builtin(opts.stream), None)
    marks = [round(opts.events * k / 10) for k in range(1, 11)]
    rows: list[dict[str, Any]] = []
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with tempfile.TemporaryDirectory(prefix="lifelong-soak-") as ckpt:
        settings = _settings(opts, data, ckpt)
        service = Service(settings, source=ReplaySource(data.bodies))
        loop = service.loop
        read, t0 = 0, time.perf_counter()
        last_t, last_read, last_learned = t0, 0, 0
        try:
            for mark in marks:
                while read < mark:
                    read += loop.step()
                now = time.perf_counter()
                learner = loop.learner
                rows.append({"events": read, "seconds": round(now - t0, 3), "rss_bytes": rss_bytes(),
                             "events_per_s": (read - last_read) / (now - last_t),
                             "learned_per_s": (loop.counters.learned - last_learned) / (now - last_t),
                             "learner_bytes": int(learner.nbytes()),
                             "replay_items": int(getattr(getattr(learner, "memory", None), "n", 0) or 0),
                             "checkpoints": loop.counters.checkpoints})
                opts.log(f"soak {opts.stream}: {read:,} events, {rows[-1]['events_per_s']:,.0f} ev/s, "
                         f"RSS {rows[-1]['rss_bytes'] / 2**20:,.0f} MiB")
                last_t, last_read, last_learned = now, read, loop.counters.learned
        finally:
            close_service(service)
        preq = loop.prequential
    doc = {"schema": SOAK_SCHEMA, "started_at": started_at, "stream": opts.stream, "events": read,
           "stream_events": len(data.bodies), "passes": read / len(data.bodies), "device": opts.device,
           "batch_size": BATCH_SIZE[data.kind], "total_seconds": time.perf_counter() - t0,
           "learned": loop.counters.learned, "rejected": loop.counters.rejected,
           "prequential_accuracy": preq.total_correct / preq.total if preq.total else None,
           "deciles": rows, "cpu_count": os.cpu_count()}
    doc["targets"] = soak_targets(rows)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"soak-{opts.stream}.json").write_text(json.dumps(finite(doc), indent=2) + "\n")
    (opts.out / f"soak-{opts.stream}.md").write_text(render_markdown(doc))
    return doc


def soak_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    first, last = rows[0], rows[-1]
    growth = (last["rss_bytes"] - first["rss_bytes"]) / first["rss_bytes"]
    ratio = last["events_per_s"] / first["events_per_s"] if first["events_per_s"] else float("nan")
    return [{"target": "RSS growth from the first tenth to the end", "value": growth, "goal": f"<= {RSS_GROWTH_MAX}",
             "met": growth <= RSS_GROWTH_MAX},
            {"target": "events/s of the last tenth over the first", "value": ratio, "goal": f">= {RATE_RATIO_MIN}",
             "met": ratio >= RATE_RATIO_MIN}]


def render_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Soak: {doc['stream']}", "",
             f"`lifelong bench --soak {doc['events']} --stream {doc['stream']}` on {doc['started_at']} "
             f"({doc['total_seconds']:.0f} s, {doc['cpu_count']} CPUs, device {doc['device']}): the daemon's loop "
             f"over {doc['passes']:.1f} passes of the stream's {doc['stream_events']:,} events, micro-batches of "
             f"{doc['batch_size']}, checkpoints on; prequential accuracy {doc['prequential_accuracy'] or 0:.3f}.", "",
             "| target | value | goal | |", "|---|---:|---|---|"]
    lines += [f"| {t['target']} | {t['value']:.3f} | {t['goal']} | {'met' if t['met'] else 'MISSED'} |"
              for t in doc["targets"]]
    lines += ["", "| events | s | RSS MiB | events/s (this tenth) | learner MiB | replay items |",
              "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['events']:,} | {r['seconds']:,.0f} | {r['rss_bytes'] / 2**20:,.1f} | {r['events_per_s']:,.0f} "
              f"| {r['learner_bytes'] / 2**20:,.1f} | {r['replay_items']:,} |" for r in doc["deciles"]]
    return "\n".join(lines) + "\n"


def render_text(doc: dict[str, Any]) -> str:
    return "\n".join(f"{t['target']}: {t['value']:.3f} ({t['goal']}: {'met' if t['met'] else 'MISSED'})"
                     for t in doc["targets"])
