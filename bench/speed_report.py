"""Targets, the printed table and the generated speed.md of ``lifelong bench --speed``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Target:
    name: str
    unit: str
    at_least: bool          # True: value >= bound meets it; False: value <= bound
    bound: float
    value: Callable[[dict[str, Any]], float | None]
    part: str               # the profile that explains a miss


def _get(doc: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def single_client(level_list: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The load level a single user sees: one client if it ran, else the smallest."""
    if not level_list:
        return None
    return min(level_list, key=lambda lv: lv["clients"])


def _clients_ratio(levels: list[dict[str, Any]] | None, clients: int = 8) -> float | None:
    """p99 at ``clients`` over the single client's: how much concurrency stretches the tail."""
    one, many = single_client(levels), next((lv for lv in levels or [] if lv["clients"] == clients), None)
    if not one or not many or not one.get("p99_ms"):
        return None
    return float(many["p99_ms"]) / float(one["p99_ms"])


TARGETS = (
    Target("vector stream, learn+predict in process", "events/s", True, 20_000,
           lambda d: _get(d, "pipeline", "vector", "events_per_s"), "vector"),
    Target("vector stream, speed vs river LogisticRegression (parse included)", "x", True, 2.0,
           lambda d: _get(d, "river", "speed_ratio"), "vector"),
    Target("vector stream, prequential accuracy minus river's", "", True, 0.0,
           lambda d: _get(d, "river", "accuracy_delta"), "vector"),
    Target("vector stream, through Kafka over in process", "x", True, 0.8,
           lambda d: _get(d, "kafka", "vector", "over_in_process"), "vector"),
    Target("text stream, learned in process", "events/s", True, 350,
           lambda d: _get(d, "pipeline", "text", "learned_per_s"), "text"),
    Target("text stream, learned in process over the encoder alone", "x", True, 0.8,
           lambda d: _get(d, "encoder", "loop_over_bound"), "text"),
    Target("text stream, through Kafka over in process", "x", True, 0.95,
           lambda d: _get(d, "kafka", "text", "over_in_process"), "text"),
    Target("vector /v1/predict p99 while learning (1 client)", "ms", False, 10,
           lambda d: _get(single_client(_get(d, "http", "vector", "levels")), "p99_ms"), "vector"),
    Target("text /v1/predict p99 while learning (1 client)", "ms", False, 50,
           lambda d: _get(single_client(_get(d, "http", "text", "levels")), "p99_ms"), "text"),
    Target("vector /v1/predict p99, 8 clients over 1", "x", False, 2.0,
           lambda d: _clients_ratio(_get(d, "http", "vector", "levels")), "vector"),
    Target("text /v1/predict p99, 8 clients over 1", "x", False, 2.0,
           lambda d: _clients_ratio(_get(d, "http", "text", "levels")), "text"),
    Target("vector /v1/predict p99 while learning, predictor process (1 client)", "ms", False, 10,
           lambda d: _get(single_client(_get(d, "http", "vector", "predictor", "levels")), "p99_ms"), "vector"),
    Target("text /v1/predict p99 while learning, predictor process (1 client)", "ms", False, 50,
           lambda d: _get(single_client(_get(d, "http", "text", "predictor", "levels")), "p99_ms"), "text"),
    Target("vector /v1/predict p99, predictor process, 8 clients over 1", "x", False, 2.0,
           lambda d: _clients_ratio(_get(d, "http", "vector", "predictor", "levels")), "vector"),
    Target("text /v1/predict p99, predictor process, 8 clients over 1", "x", False, 2.0,
           lambda d: _clients_ratio(_get(d, "http", "text", "predictor", "levels")), "text"),
    Target("River adapter on Phishing, one event at a time", "events/s", True, 1000,
           lambda d: _get(d, "adapter", "lifelong", "events_per_s"), "adapter"),
    Target("River adapter on Phishing, accuracy", "", True, 0.88,
           lambda d: _get(d, "adapter", "lifelong", "accuracy"), "adapter"),
)


def evaluate_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        value = t.value(doc)
        met = None if value is None or math.isnan(value) else (value >= t.bound if t.at_least else value <= t.bound)
        out.append({"name": t.name, "unit": t.unit, "target": f"{'>=' if t.at_least else '<='} {t.bound:g}",
                    "value": value, "met": met, "part": t.part})
    return out


def _num(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def result_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, events/s or req/s, accuracy or latency, detail) rows for the table."""
    rows = []
    for key in ("vector", "text"):
        for part, label in (("pipeline", "in process"), ("kafka", "through Kafka")):
            r = _get(doc, part, key)
            if r:
                extra = f", produced at {_num(r['produce_events_per_s'])}/s" if "produce_events_per_s" in r else ""
                rows.append((f"{r['stream']} {label}", f"{_num(r['events_per_s'])} ev/s",
                             f"preq {_num(r['prequential_accuracy'], 3)}",
                             f"{r['events']:,} events, {r['learned']:,} learned in {r['seconds']:.1f} s "
                             f"({_num(r['learned_per_s'])} learned/s){extra}"))
    river = doc.get("river")
    if river:
        ratio = f", ours/river {river['speed_ratio']:.2f}x" if "speed_ratio" in river else ""
        rows.append((f"{river['stream']} river {river['model']}", f"{_num(river['events_per_s'])} ev/s",
                     f"preq {_num(river['prequential_accuracy'], 3)}", f"{river['events']:,} events{ratio}"))
    enc = doc.get("encoder")
    for r in (enc or {}).get("runtimes", []):
        mark = " (the daemon's)" if r["runtime"] == enc["runtime"] else ""
        rows.append((f"{enc['stream']} encoder alone, {r['runtime']}{mark}", f"{_num(r['events_per_s'])} ev/s",
                     f"cosine to fp32 {r['cosine_to_fp32_mean']:.4f} (min {r['cosine_to_fp32_min']:.4f})",
                     f"{enc['events']:,} texts in micro-batches of {enc['batch_size']}"))
    adapter = doc.get("adapter")
    for name in ("lifelong", "river LogisticRegression"):
        r = _get(adapter, name)
        if r:
            rows.append((f"Phishing, StandardScaler | {name} (River adapter)" if name == "lifelong"
                         else f"Phishing, StandardScaler | {name}", f"{_num(r['events_per_s'])} ev/s",
                         f"accuracy {r['accuracy']:.3f}", f"{r['events']:,} events one at a time, {r['seconds']:.2f} s"))
    for key in ("vector", "text"):
        r = _get(doc, "http", key)
        for where, levels in (("learner's process", _get(r, "levels") or []),
                              ("predictor process", _get(r, "predictor", "levels") or [])):
            for lv in levels:
                rows.append((f"{r['stream']} /v1/predict, {where}, {lv['clients']} client(s)",
                             f"{_num(lv['requests_per_s'])} req/s",
                             f"p50 {_num(lv['p50_ms'], 1)} / p99 {_num(lv['p99_ms'], 1)} ms",
                             f"{lv['errors']} errors; learner {_num(lv['learned_per_s_during'])} learned/s meanwhile"))
    return rows


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


def _verdict(met: bool | None) -> str:
    return "not run" if met is None else ("met" if met else "MISSED")


def render_text(doc: dict[str, Any]) -> str:
    rows = result_rows(doc)
    widths = [max([len(r[i]) for r in rows] + [0]) for i in range(3)]
    lines = ["  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths))) + "  " + r[3]
             for r in rows]
    lines.append("")
    for t in doc["targets"]:
        lines.append(f"{_verdict(t['met']):>7}  {t['name']}: {_num(t['value'], 2)} {t['unit']} (target {t['target']})")
    return "\n".join(lines)


def _machine_line(m: dict[str, Any]) -> str:
    device = m["device"] + (f" ({m['cuda']})" if m.get("cuda") and m["device"] != "cpu" else "")
    return (f"{m['cpu_count']} CPUs ({m['processor'] or m['platform']}), device {device}, torch threads "
            f"{m['torch_threads']['vector']} (vector) / {m['torch_threads']['text']} (text), torch {m['torch']}, "
            f"river {m['river']}, Python {m['python']}; load average at start "
            f"{', '.join(f'{x:.1f}' for x in m['load_average'])}")


def markdown(doc: dict[str, Any]) -> str:
    out = ["# Speed", "", "Generated by `lifelong bench --speed`" + (" --quick" if doc["quick"] else "")
           + f" on {doc['started_at']} ({doc['total_seconds']:.0f} s). Machine: {_machine_line(doc['machine'])}.", "",
           "| target | value | goal | |", "|---|---:|---|---|"]
    for t in doc["targets"]:
        out.append(f"| {t['name']} | {_num(t['value'], 2)} {t['unit']} | {t['target']} {t['unit']} | "
                   f"{_verdict(t['met'])} |")
    out += ["", "| run | rate | quality / latency | detail |", "|---|---:|---|---|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in result_rows(doc)]
    profiles = doc.get("profiles") or {}
    missed = {t["part"] for t in doc["targets"] if t["met"] is False}
    for key, prof in profiles.items():
        flag = " (a target it serves is missed)" if key in missed else ""
        out += ["", f"## Where the in-process {key} pipeline spends its time{flag}", "",
                f"cProfile of a second run over {prof['events']:,} events (profiling slows it down: "
                f"{_num(prof['events_per_s_profiled'])} events/s). The loop's stages, cumulative:", "",
                "| stage | s | share of step |", "|---|---:|---:|"]
        out += [f"| {s['stage']} | {s['seconds']:.3f} | {_pct(s['share'])} |" for s in prof["stages"]]
        out += ["", "Functions by own time:", "", "| function | calls | own s | share |", "|---|---:|---:|---:|"]
        out += [f"| `{r['function']}` | {r['calls']:,} | {r['tottime_s']:.3f} | {r['share']:.1%} |"
                for r in prof["functions"]]
    opts = doc["options"]
    out += ["", "## Settings", "",
            f"Streams: {opts['vector_stream']} (vector, batch {opts['vector_batch_size']}) and {opts['text_stream']} "
            f"(text, batch {opts['text_batch_size']}); checkpoints off; the daemon's other defaults (held-out "
            f"fraction for continual evaluation included). Load: closed-loop clients {list(opts['clients'])}, "
            f"{doc['load_seconds']:g} s each after 1 s of warm-up"
            ", single-instance requests, keep-alive, in a separate process. "
            "Every number and the full settings are in `speed.json`.", ""]
    return "\n".join(out)


def write_markdown(doc: dict[str, Any], path: Path) -> Path:
    path.write_text(markdown(doc))
    return path
