"""Loopback load test of /v1/predict while the daemon learns.

Starts ``lifelong run`` as a child process (text: the embedded CLINC150
stream; features: a generated Gaussian stream large enough to keep learning),
waits until it serves, then keeps ``--concurrency`` clients posting
single-instance requests over keep-alive connections for ``--seconds`` and
prints latency percentiles, throughput and the server's batch sizes.

    python -m lifelong.bench.http_load --kind text --concurrency 8 --seconds 20 --wait-ms 0

Compare ``--max-batch 1`` (no coalescing) with the default, and ``--wait-ms``;
``--events N`` learns only N events, so the run measures serving alone.
"""
from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _feature_stream(path: Path, n: int, dim: int, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (classes, dim))
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.normal(0, 1, (n, dim))
    with path.open("w") as fh:
        for i in range(n):
            fh.write('{"id":%d,"features":[%s],"label":"c%d"}\n' % (i, ",".join(f"{v:.3f}" for v in x[i]), y[i]))


def _bodies(kind: str, dim: int, n: int = 512) -> list[bytes]:
    if kind == "features":
        rng = np.random.default_rng(1)
        return [json.dumps({"instances": [{"features": rng.normal(0, 3, dim).round(3).tolist()}]}).encode()
                for _ in range(n)]
    from ..stream.demo import demo_path

    with gzip.open(demo_path(), "rt") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    random.Random(1).shuffle(texts)
    return [json.dumps({"instances": [{"text": t}]}).encode() for t in texts[:n]]


def _config(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    http = {"batch_wait_ms": args.wait_ms, "batch_max_instances": args.max_batch}
    cfg: dict[str, Any] = {"http": http, "checkpoint": {"dir": None}, "log_level": "WARNING",
                           "learner": {"device": "cpu"}}
    if args.threads:
        cfg["learner"]["torch_threads"] = args.threads
    if args.kind == "features":
        path = workdir / "features.jsonl"
        _feature_stream(path, args.events or 300_000, args.dim)
        cfg["source"] = {"kind": "file", "path": str(path)}
        cfg["learner"].update({"input_kind": "features", "feature_dim": args.dim})
    elif args.events:
        from ..stream.demo import demo_path

        path = workdir / "text.jsonl"
        with gzip.open(demo_path(), "rt") as fh:
            path.write_text("".join(line for _, line in zip(range(args.events), fh)))
        cfg["source"] = {"kind": "file", "path": str(path)}
    return cfg


def _client(port: int, bodies: list[bytes], stop: threading.Event, out: list[tuple[float, int]], seed: int) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"content-type": "application/json"}
    while not stop.is_set():
        body = rng.choice(bodies)
        started = time.perf_counter()
        conn.request("POST", "/v1/predict", body, headers)
        resp = conn.getresponse()
        resp.read()
        out.append((time.perf_counter() - started, resp.status))


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"lifelong exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise SystemExit("lifelong never became ready")


def _batch_sizes(port: int) -> tuple[float, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith(("lifelong_predict_batch_instances_sum", "lifelong_predict_batch_instances_count",
                                  "lifelong_events_learned_total"))}
    batches = values.get("lifelong_predict_batch_instances_count", 0.0)
    mean = values.get("lifelong_predict_batch_instances_sum", 0.0) / batches if batches else float("nan")
    return mean, values.get("lifelong_events_learned_total", float("nan"))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cfg_path = workdir / "lifelong.yaml"
        cfg_path.write_text(yaml.safe_dump(_config(args, workdir)))
        port = _free_port()
        env = {**os.environ, "LIFELONG_HTTP__PORT": str(port)}
        code = (f"import sys; sys.setswitchinterval({args.switch_ms / 1000!r}); " if args.switch_ms else "") + \
            f"from lifelong.cli import main; sys.exit(main(['run', '--config', {str(cfg_path)!r}]))"
        proc = subprocess.Popen([sys.executable, "-c", "import sys; " + code], env=env, cwd=workdir)
        try:
            _wait_ready(port, proc)
            bodies = _bodies(args.kind, args.dim)
            learned_before = _batch_sizes(port)[1]
            cpu_before = _cpu_s(proc.pid)
            out: list[tuple[float, int]] = []
            stop = threading.Event()
            threads = [threading.Thread(target=_client, args=(port, bodies, stop, out, i))
                       for i in range(args.concurrency)]
            for t in threads:
                t.start()
            time.sleep(args.seconds)
            stop.set()
            for t in threads:
                t.join()
            server_cpu = _cpu_s(proc.pid) - cpu_before
            mean_batch, learned_after = _batch_sizes(port)
        finally:
            proc.terminate()
            proc.wait(60)
    lat = np.array([s for s, _ in out]) * 1000
    ok = sum(1 for _, code in out if code == 200)
    return {"requests": len(out), "ok": ok, "rps": len(out) / args.seconds, "p50_ms": float(np.percentile(lat, 50)),
            "p90_ms": float(np.percentile(lat, 90)), "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(lat.max()), "mean_batch": mean_batch, "learned_during": learned_after - learned_before,
            "server_cpu_ms_per_request": 1000 * server_cpu / max(len(out), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=("text", "features"), default="features")
    p.add_argument("--dim", type=int, default=64, help="feature width (features)")
    p.add_argument("--events", type=int, default=None, help="events to learn: the generated stream's length "
                   "(features; default 300,000) or the first N of the demo stream (text; default all 15,000)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--wait-ms", type=float, default=0.0, help="http.batch_wait_ms")
    p.add_argument("--max-batch", type=int, default=64, help="http.batch_max_instances")
    p.add_argument("--threads", type=int, default=None, help="learner.torch_threads")
    p.add_argument("--switch-ms", type=float, default=None, help="server's sys.setswitchinterval, in ms")
    args = p.parse_args(argv)
    result = run(args)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
