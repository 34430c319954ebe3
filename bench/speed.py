"""``lifelong bench --speed``: how fast the real daemon learns, serves, and compares with river.

Parts (each a real component, run in this process unless said otherwise):

- *pipeline*: the daemon's learning loop (``LearningLoop.step``: poll, validate JSON, encode,
  predict-then-learn, publish snapshots) over a JSONL file of the vector and the text stream,
  checkpoints off; events/s over all records read, from the first poll to the last learned.
- *kafka*: the same streams pre-produced into a real broker (bench/speed_kafka.py), then consumed
  by the loop with ``source.kind=kafka``; events/s from the first record polled to the last learned.
- *river*, *encoder*, *adapter* (bench/speed_parts.py): river's logistic regression on the same
  JSON bytes (parse timed on both sides), the text encoder's bound and each of its runtimes, the
  River adapter on Phishing one event at a time.
- *http*: the HTTP app with the loop learning an endless replay of each stream at full speed, and
  a load generator in another process (bench/speed_http.py) posting single-instance
  ``/v1/predict`` requests over keep-alive loopback connections.

Results go to ``DIR/speed.json`` and ``DIR/speed.md`` (bench/speed_report.py).
"""
from __future__ import annotations

import contextlib
import cProfile
import json
import os
import platform
import pstats
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from .speed_common import (PROFILE_EVENTS, SCHEMA, WARMUP_EVENTS, SpeedOptions, StreamData, close_service,
                           drive, finite, logged, settings_summary, speed_settings, stream_data)
from .speed_parts import run_adapter, run_encoder, run_river
from .streams import builtin


def run_pipeline(data: StreamData, opts: SpeedOptions, workdir: Path, profile: bool = False) -> dict[str, Any]:
    """(a) The daemon's loop over a JSONL file of the stream."""
    from ..service.runtime import Service

    path = data.write_jsonl(workdir / f"{data.name}.jsonl")
    settings = speed_settings(data, opts, {"kind": "file", "path": str(path), "poll_timeout_s": 0.01})
    service = Service(settings)
    profiler = cProfile.Profile() if profile else None
    try:
        if profiler is not None:
            profiler.enable()
        result = drive(service, len(data.bodies))
    finally:
        if profiler is not None:
            profiler.disable()
        close_service(service)
    result.update(stream=data.name, settings=settings_summary(settings))
    if profiler is not None:
        stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        result["profile"] = {"stages": stage_times(stats), "functions": top_functions(stats)}
    return result


def profile_pipeline(data: StreamData, opts: SpeedOptions, workdir: Path) -> dict[str, Any]:
    """A second, profiled in-process run over the stream's head: where the time goes."""
    head = data.head(PROFILE_EVENTS[data.kind])
    run = run_pipeline(head, opts, workdir, profile=True)
    return {"events": len(head.bodies), "events_per_s_profiled": run["events_per_s"], **run["profile"]}


# (label, file suffix, function): the loop's stages, by the daemon's own function names.
STAGES = (("poll the source", ("stream/sources.py", "stream/kafka_source.py"), "poll"),
          ("validate records", ("service/intake.py",), "_validate"),
          ("encode", ("learner/continual.py", "learner/nmc.py", "learner/encoders.py"), "encode"),
          ("predict unlabelled", ("service/intake.py",), "_predict"),
          ("predict-then-learn", ("service/intake.py",), "_learn"),
          ("publish snapshots", ("service/loop.py",), "publish"),
          ("commit / checkpoint", ("service/loop.py",), "_after_step"))


def stage_times(stats: dict[Any, Any]) -> list[dict[str, Any]]:
    """Time in each stage of ``LearningLoop.step`` (cumulative, so nested calls count once)."""
    def cum(files: tuple[str, ...], name: str) -> float:
        # The outermost match (largest cumulative time): encode() calls the encoder's encode().
        return max((v[3] for (f, _, n), v in stats.items() if n == name and f.endswith(files)), default=0.0)

    total = cum(("service/loop.py",), "step")
    return [{"stage": label, "seconds": round(cum(files, name), 4),
             "share": round(cum(files, name) / total, 4) if total else None}
            for label, files, name in STAGES] + [{"stage": "step (all)", "seconds": round(total, 4), "share": 1.0}]


def top_functions(stats: dict[Any, Any], n: int = 15) -> list[dict[str, Any]]:
    """The functions where the time went (own time), for "what limits it"."""
    total = sum(v[2] for v in stats.values()) or 1.0
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    out = []
    for (filename, line, name), (_, calls, tottime, cumtime, _) in rows:
        short = "/".join(Path(filename).parts[-2:]) if filename.startswith(("/", ".")) else filename
        out.append({"function": f"{short}:{line}({name})", "calls": calls, "tottime_s": round(tottime, 4),
                    "cumtime_s": round(cumtime, 4), "share": round(tottime / total, 4)})
    return out


def machine(opts: SpeedOptions) -> dict[str, Any]:
    import river
    import torch

    cuda = torch.cuda.is_available()
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "torch": torch.__version__, "river": river.__version__,
            "torch_threads": {"vector": opts.threads("features"), "text": opts.threads("text")},
            "device": opts.device, "cuda": torch.cuda.get_device_name(0) if cuda else None,
            "load_average": list(os.getloadavg())}


@contextlib.contextmanager
def _torch_threads_kept() -> Iterator[None]:
    """Each run sets torch's (process-wide) thread count; leave it as it was."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def compare(doc: dict[str, Any]) -> None:
    """Ratios between parts of one run: ours over river, the loop over the encoder, Kafka over in process."""
    pipe = doc.get("pipeline", {})
    ours, river = pipe.get("vector"), doc.get("river")
    if ours and river:
        river["ours_events_per_s"] = ours["events_per_s"]
        river["ours_prequential_accuracy"] = ours["prequential_accuracy"]
        river["speed_ratio"] = ours["events_per_s"] / river["events_per_s"]
        river["accuracy_delta"] = ours["prequential_accuracy"] - river["prequential_accuracy"]
    encoder, text = doc.get("encoder"), pipe.get("text")
    if encoder and text:
        encoder["loop_over_bound"] = text["learned_per_s"] / encoder["events_per_s"]
    for key, r in (doc.get("kafka") or {}).items():
        if pipe.get(key) and isinstance(r, dict) and r.get("events_per_s"):
            r["over_in_process"] = r["events_per_s"] / pipe[key]["events_per_s"]


def run_speed(opts: SpeedOptions) -> dict[str, Any]:
    """Run the parts in ``opts.parts``; write speed.json and speed.md; return the document."""
    from .speed_report import evaluate_targets, write_markdown

    streams = {"vector": stream_data(builtin(opts.vector_stream), opts.events("features")),
               "text": stream_data(builtin(opts.text_stream), opts.events("text"))}
    streams = {k: d for k, d in streams.items() if k in opts.streams}
    doc: dict[str, Any] = {"schema": SCHEMA, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "quick": opts.quick, "machine": machine(opts), "load_seconds": opts.seconds(),
                           "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()
                                       if k != "log"}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lifelong-speed-") as tmp, _torch_threads_kept():
        work = Path(tmp)
        if "pipeline" in opts.parts:
            # A first pass over a stream's head is not timed: it pays one-off costs (kernel
            # selection per tensor shape, the tokenizer's first calls, thread pools) that a
            # long-running daemon pays once; the later parts run warm as it is.
            for d in streams.values():
                logged(opts, f"warm-up {d.name}", lambda d=d: run_pipeline(d.head(WARMUP_EVENTS[d.kind]), opts, work))
            doc["pipeline"] = {k: logged(opts, f"pipeline {d.name}", lambda d=d: run_pipeline(d, opts, work))
                               for k, d in streams.items()}
        if "river" in opts.parts and "vector" in streams:
            doc["river"] = logged(opts, f"river {streams['vector'].name}", lambda: run_river(streams["vector"]))
        if "encoder" in opts.parts and "text" in streams:
            doc["encoder"] = logged(opts, f"encoder {streams['text'].name}", lambda: run_encoder(streams["text"], opts))
        if "adapter" in opts.parts:
            doc["adapter"] = logged(opts, "river adapter on Phishing", run_adapter)
        if "kafka" in opts.parts and not opts.skip_kafka:
            from .speed_kafka import run_kafka_parts

            doc["kafka"] = run_kafka_parts(streams, opts, work)
        if "http" in opts.parts and not opts.skip_http:
            from .speed_http import run_http

            doc["http"] = {k: logged(opts, f"http {d.name}", lambda d=d: run_http(d, opts)) for k, d in streams.items()}
        if opts.profile and "pipeline" in opts.parts:
            doc["profiles"] = {k: logged(opts, f"profile {d.name}", lambda d=d: profile_pipeline(d, opts, work))
                               for k, d in streams.items()}
    compare(doc)
    doc["total_seconds"] = time.perf_counter() - started
    doc["targets"] = evaluate_targets(doc)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "speed.json").write_text(json.dumps(finite(doc), indent=2) + "\n")
    write_markdown(doc, opts.out / "speed.md")
    return doc
