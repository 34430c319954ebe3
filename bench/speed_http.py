"""The speed bench's serving part: ``/v1/predict`` latency while the learner runs at full speed.

The learner runs in the bench's process: the daemon's loop learning an endless replay of the stream
(each pass with fresh ids, or they would be rejected as duplicates). Requests go first to the real
HTTP app under uvicorn in that same process (role all, one interpreter lock for both), then to a
predictor process of its own (``lifelong run --role predictor``) that follows the learner's
snapshots through a local folder (``snapshots.dir``), as a deployment that keeps serving off the
learner's lock runs it. The load generator is another process (this module's
``main``, standard library only), so its threads do not share the server's interpreter lock:
``clients`` threads, each with one keep-alive connection, post single-instance requests back to
back (closed loop) for a warm-up and then the timed ``seconds``. It prints ``start`` when the timed
window opens and a JSON summary when it ends, so the server side can count the events learned in
exactly that window.
"""
from __future__ import annotations

import argparse
import http.client
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..stream.sources import Record, TopicPartition

if TYPE_CHECKING:
    from .speed_common import SpeedOptions, StreamData


class ReplaySource:
    """The stream's events again and again, each with a fresh integer id; never exhausted."""

    exhausted = False
    skipped = 0

    def __init__(self, bodies: list[bytes]) -> None:
        self._bodies = bodies
        self._n = 0

    def poll(self, max_records: int, timeout_s: float = 0.0) -> list[Record]:
        out = []
        for _ in range(max_records):
            body = self._bodies[self._n % len(self._bodies)]
            out.append(Record(b'{"id":%d,' % self._n + body, "replay", 0, self._n))
            self._n += 1
        return out

    def commit(self, offsets: dict[TopicPartition, int]) -> bool:
        return True

    def lag(self) -> int | None:
        return None

    def assigned(self) -> int:
        return 1

    def close(self) -> None:
        pass


def request_bodies(data: "StreamData", n: int = 512, seed: int = 1) -> list[str]:
    """Single-instance /v1/predict bodies made of the stream's own inputs."""
    rng = random.Random(seed)
    picks = [data.bodies[rng.randrange(len(data.bodies))] for _ in range(min(n, len(data.bodies)))]
    inputs = [json.loads(b"{" + body) for body in picks]
    key = "features" if data.kind == "features" else "text"
    return [json.dumps({"instances": [{key: e[key]}]}) for e in inputs]


def run_http(data: "StreamData", opts: "SpeedOptions") -> dict[str, Any]:
    """Serve ``data``'s model while learning it endlessly; one load level per entry of ``opts.clients``,
    first from the learner's own process (role all), then from a predictor process beside it."""
    import tempfile

    from .speed_common import settings_summary, speed_settings

    settings = speed_settings(data, opts, {"kind": "file", "path": "replay"})
    with tempfile.TemporaryDirectory(prefix="lifelong-speed-http-") as tmp:
        bodies = Path(tmp) / "bodies.json"
        bodies.write_text(json.dumps(request_bodies(data)))
        levels = _in_process_levels(data, opts, settings, bodies)
        predictor = _predictor_levels(data, opts, settings, bodies, Path(tmp))
    return {"stream": data.name, "levels": levels, "predictor": predictor, "settings": settings_summary(settings)}


def _learning(service: Any, data: "StreamData", ready: Any) -> None:
    """Wait for a served model past the same untimed head as the pipeline part: one-off costs such as
    the MLP encoder's switch (seconds, once per model) are not serving latency."""
    from .speed_common import WARMUP_EVENTS

    warm = WARMUP_EVENTS[data.kind]
    _wait(lambda: ready() and service.holder.current is not None and bool(service.holder.current.classes)
          and service.loop.counters.learned >= warm, 300, f"a served model past its first {warm} events")


def _in_process_levels(data: "StreamData", opts: "SpeedOptions", settings: Any, bodies: Path) -> list[dict[str, Any]]:
    """Role all: the HTTP app in the learner's process, sharing its interpreter lock."""
    import uvicorn

    from ..service.runtime import Service
    from ..service.server import SignalFreeServer
    from .speed_common import close_service
    from .speed_kafka import free_port

    service = Service(settings, source=ReplaySource(data.bodies))
    port = free_port()
    # The daemon's own protocol (header deadline), so the bench measures what users get.
    server = SignalFreeServer(uvicorn.Config(service.app, host="127.0.0.1", port=port, log_level="warning",
                                             access_log=False, http=service.app.state.http_protocol))
    thread = threading.Thread(target=server.run, name="bench-http", daemon=True)
    try:
        thread.start()
        service.loop.start()
        _learning(service, data, lambda: server.started)
        levels = [_load_level(service, port, bodies, clients, opts.seconds()) for clients in opts.clients]
    finally:
        server.should_exit = True
        thread.join(30)
        service.loop.stop()
        close_service(service)
    if service.loop.error is not None:
        raise RuntimeError(f"the learning loop failed during the load test: {service.loop.error}")
    return levels


def _predictor_levels(data: "StreamData", opts: "SpeedOptions", settings: Any, bodies: Path,
                      tmp: Path) -> dict[str, Any]:
    """A predictor process (``lifelong run --role predictor``) following the learner through a snapshot
    folder (``snapshots.dir``) on the same machine: the learner's loop cannot hold its interpreter lock."""
    from ..service.runtime import Service
    from .faults_env import Daemon, stop_process
    from .speed_common import close_service

    folder = tmp / "snapshots"
    learner_settings = settings.model_copy(update={"snapshots": settings.snapshots.model_copy(
        update={"publish": True, "dir": str(folder)})})
    service = Service(learner_settings, source=ReplaySource(data.bodies))
    config = {**learner_settings.model_dump(mode="json"), "role": "predictor"}
    predictor = Daemon(config, tmp, "predictor")
    try:
        service.loop.start()
        _learning(service, data, lambda: True)
        predictor.start()
        startup_s = predictor.wait_ready()
        levels = [_load_level(service, predictor.port, bodies, clients, opts.seconds()) for clients in opts.clients]
    finally:
        if predictor.proc is not None:
            stop_process(predictor.proc, 30)
        service.loop.stop()
        close_service(service)
    if service.loop.error is not None:
        raise RuntimeError(f"the learning loop failed during the load test: {service.loop.error}")
    return {"levels": levels, "channel": "snapshots.dir", "startup_s": startup_s,
            "min_interval_s": learner_settings.snapshots.min_interval_s}


def _wait(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout_s:.0f} s")
        time.sleep(0.05)


def _load_level(service: Any, port: int, bodies: Path, clients: int, seconds: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "lifelong.bench.speed_http", "--port", str(port), "--bodies", str(bodies),
           "--clients", str(clients), "--seconds", str(seconds)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "start":
            raise RuntimeError(f"load generator failed to start: {line!r}")
        learned0, t0 = service.loop.counters.learned, time.perf_counter()
        result = json.loads(proc.stdout.readline())
        learned1, t1 = service.loop.counters.learned, time.perf_counter()
        proc.wait(60)
    result["learned_per_s_during"] = (learned1 - learned0) / (t1 - t0)
    return result


# -- the load generator (its own process) ---------------------------------------------------------
def _client(port: int, bodies: list[str], opens: float, closes: float, seed: int,
            latencies: list[float], statuses: dict[int, int]) -> None:
    rng = random.Random(seed)
    headers = {"content-type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while (started := time.perf_counter()) < closes:
        try:
            conn.request("POST", "/v1/predict", rng.choice(bodies), headers)
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            status = 0  # a connection error
        if started >= opens:
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    conn.close()


def summarise(latencies_s: list[float], statuses: dict[int, int], clients: int, seconds: float) -> dict[str, Any]:
    lat = sorted(x * 1000 for x in latencies_s)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    return {"clients": clients, "seconds": seconds, "requests": len(lat), "ok": statuses.get(200, 0),
            "errors": len(lat) - statuses.get(200, 0), "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "requests_per_s": len(lat) / seconds, "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": lat[-1] if lat else float("nan"), "mean_ms": sum(lat) / len(lat) if lat else float("nan")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="closed-loop /v1/predict load generator (lifelong bench --speed)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bodies", required=True, help="JSON list of request bodies")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    args = p.parse_args(argv)
    bodies = json.loads(Path(args.bodies).read_text())
    opens = time.perf_counter() + args.warmup
    closes = opens + args.seconds
    latencies: list[list[float]] = [[] for _ in range(args.clients)]
    statuses: list[dict[int, int]] = [{} for _ in range(args.clients)]
    threads = [threading.Thread(target=_client, args=(args.port, bodies, opens, closes, i, latencies[i], statuses[i]))
               for i in range(args.clients)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, opens - time.perf_counter()))
    print("start", flush=True)
    for t in threads:
        t.join()
    merged: dict[int, int] = {}
    for s in statuses:
        for k, v in s.items():
            merged[k] = merged.get(k, 0) + v
    summary = summarise([x for part in latencies for x in part], merged, args.clients, args.seconds)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
