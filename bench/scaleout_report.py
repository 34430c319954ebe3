"""scaleout.json's targets and scaleout.md: pure functions of the measured document."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from .faults_report import Target
from .scaleout_learning_report import learning_md, learning_targets

CPU_NOTE = ("Every process (broker, learner, predictors, producer, load generator) shares this machine's "
            "{cpus} CPU cores, so wall-clock throughput cannot grow with more predictors here: two "
            "predictors split the same cores one does. Scaling out needs more cores than that; the figure to "
            "compare between n=1 and n=2 is requests per CPU second of the predictor processes "
            "(req_per_cpu_s), which shows whether a second replica costs extra CPU per request.")


def _check(value: Any, ok: Callable[[Any], bool]) -> bool | None:
    if value is None:
        return None
    try:
        return bool(ok(value))
    except TypeError:
        return None


def _window(doc: Mapping[str, Any], n: int) -> Mapping[str, Any]:
    return next((w for w in doc.get("serving", {}).get("predictors", []) if w.get("n") == n), {})


def cpu_ratio(doc: Mapping[str, Any]) -> float | None:
    """req_per_cpu_s at n=2 over n=1 (1.0: a second predictor costs no extra CPU per request)."""
    one, two = _window(doc, 1).get("req_per_cpu_s"), _window(doc, 2).get("req_per_cpu_s")
    return round(two / one, 3) if one and two is not None else None


def _total(doc: Mapping[str, Any], key: str) -> int | None:
    """``key`` over every request of the run (``KEY_all``), else summed over the load windows and the fault
    phase (None when nothing was measured)."""
    s = doc.get("serving", {})
    if s.get(f"{key}_all") is not None:
        return int(s[f"{key}_all"])
    parts = [w.get(key) for w in s.get("predictors", [])] + [(s.get("faults") or {}).get(key)]
    parts = [p for p in parts if p is not None]
    return int(sum(parts)) if parts else None


def targets(doc: Mapping[str, Any]) -> list[Target]:
    s = doc.get("serving", {})
    f = s.get("faults") or {}
    advanced = f.get("advanced_after_garbage")
    ratio = cpu_ratio(doc)
    kill = (f.get("scenarios") or {}).get("learner_kill") or {}
    resumed = (bool(kill.get("resumed_from_checkpoint")) and kill.get("generation_after", 0) > kill.get(
        "generation_before", 0)) if "generation_after" in kill else None
    return [
        Target("version_regressions", "= 0 (per predictor process, load windows and faults)",
               _total(doc, "version_regressions"), _check(_total(doc, "version_regressions"), lambda v: v == 0)),
        Target("corrupt_snapshots_served", "= 0 (answers with a forged version)", f.get("corrupt_snapshots_served"),
               _check(f.get("corrupt_snapshots_served"), lambda v: v == 0)),
        Target("errors_5xx", "= 0 (load windows and faults; refused connections are `unavailable`)",
               _total(doc, "errors_5xx"), _check(_total(doc, "errors_5xx"), lambda v: v == 0)),
        Target("rejects", "> 0 after the forged records", f.get("rejects_total"),
               _check(f.get("rejects_total"), lambda v: v > 0)),
        Target("advanced_after_garbage", "every predictor swaps a newer real snapshot after the forged records",
               advanced, _check(advanced, lambda v: v is True)),
        Target("learner_resumed", "kill -9: restarts on its checkpoint, predictors move to a higher generation",
               resumed, resumed),
        Target("publish_to_swap_p99_s", "<= 1 s (histogram p99, load windows)", s.get("publish_to_swap_p99_s"),
               _check(s.get("publish_to_swap_p99_s"), lambda v: v <= 1)),
        Target("staleness_p99_s", "<= 3 s (snapshot age every 0.2 s, load windows)", s.get("staleness_p99_s"),
               _check(s.get("staleness_p99_s"), lambda v: v <= 3)),
        Target("ready_within_s", "<= 10 s (every predictor start, process start to /readyz 200)",
               s.get("ready_within_s"), _check(s.get("ready_within_s"), lambda v: v <= 10)),
        Target("req_per_cpu_s_n2_over_n1", ">= 0.85 (n=2 within 15% of n=1)", ratio,
               _check(ratio, lambda v: v >= 0.85)),
    ] + learning_targets(doc)


def _cell(value: Any) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "-"
    return str(value)


def _row(label: str, w: Mapping[str, Any]) -> str:
    return (f"| {label} | {w.get('clients')} | {w['requests']:,} | {_cell(w.get('req_per_s'))} | "
            f"{_cell(w.get('req_per_cpu_s'))} | {_cell(w.get('p50_ms'))} | {_cell(w.get('p99_ms'))} | "
            f"{w.get('version_regressions')} | {w.get('errors_5xx')} | {w.get('unavailable')} | "
            f"{_cell(w.get('mean_batch_instances'))} | {_cell(w.get('idle_cpu_s_per_s'))} | "
            f"{_cell(w.get('req_per_busy_cpu_s'))} |")


def _windows(doc: Mapping[str, Any]) -> list[str]:
    s = doc.get("serving", {})
    lines = ["| predictors | clients | requests | req/s | req per predictor CPU s | p50 ms | p99 ms | version "
             "regressions | 5xx | unavailable | instances per model call | idle CPU s/s per predictor | req per "
             "CPU s above idle |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    return lines + [_row(label, w) for label, w in _labelled(s)]


def _labelled(s: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The load windows in the order they ran, each with its label."""
    rows = [(str(w["n"]), w) for w in s.get("predictors", [])]
    if s.get("n1_with_n2_clients"):
        rows.insert(1, ("1, with n=2's clients", s["n1_with_n2_clients"]))
    return rows


SCENARIO_TITLES = {"garbage": "Forged and garbage snapshot records (plain producer)",
                   "predictor_kill": "kill -9 of a predictor, restarted",
                   "learner_kill": "kill -9 of the learner, restarted on its checkpoint",
                   "broker_restart": "Broker stopped and started again"}
SPAN_KEYS = ("seconds", "requests", "errors_5xx", "unavailable", "version_regressions")


def _faults(doc: Mapping[str, Any]) -> list[str]:
    f = doc.get("serving", {}).get("faults") or {}
    if not f:
        return []
    lines = ["", "## Faults (load on both predictors throughout)", "",
             f"Forged versions answered: {f.get('corrupt_snapshots_served')}; version regressions: "
             f"{f.get('version_regressions')}; 5xx: {f.get('errors_5xx')}; unavailable (connection refused or reset "
             f"by a killed predictor, before the balancer took it out): {f.get('unavailable')}; requests: "
             f"{f.get('requests')}; staleness p99 {_cell(f.get('staleness_p99_s'))} s, max "
             f"{_cell(f.get('staleness_max_s'))} s.", "",
             f"Rejects by reason after the forged records: {_cell(f.get('rejects'))}.", ""]
    for name, part in (f.get("scenarios") or {}).items():
        lines += [f"### {SCENARIO_TITLES.get(name, name)}", "",
                  "- " + ", ".join(f"{k} {_cell(part.get(k))}" for k in SPAN_KEYS if k in part)]
        lines += [f"- {k}: {_cell(v)}" for k, v in part.items() if k not in SPAN_KEYS + ("start", "end")]
        lines.append("")
    return lines


def _serving_md(doc: Mapping[str, Any]) -> list[str]:
    s = doc.get("serving", {})
    if not s:
        return []
    return ["", "## Serving", ""] + _windows(doc) + [
        "", "Instances per model call is how many concurrent requests the predictor's micro-batcher joined into "
        "one model call: a predictor with more clients of its own coalesces more and spends less CPU per request, "
        "so the row of one predictor under the two predictors' clients separates that from the cost of a second "
        "replica.", "",
        f"- publish to swap: p99 {_cell(s.get('publish_to_swap_p99_s'))} s from the predictors' histogram "
        f"(`histogram_quantile` over its buckets), p99 {_cell(s.get('publish_to_swap_sampled_p99_s'))} s sampled "
        f"({s.get('publish_to_swap_samples')} swaps: manifest `created_at` to the first answer with that version)",
        f"- staleness (`lifelong_snapshot_age_seconds`, {s.get('staleness_samples')} readings): p99 "
        f"{_cell(s.get('staleness_p99_s'))} s, max {_cell(s.get('staleness_max_s'))} s",
        f"- ready (process start to `/readyz` 200): " + ", ".join(
            f"{r['why']} {r['seconds']:.1f} s" for r in s.get("ready_s", [])),
        "- CPU seconds in each window (predictors / learner / load generator): " + "; ".join(
            f"{label}: {_cell(w.get('cpu_s'))} / {_cell(w.get('learner_cpu_s'))} / "
            f"{_cell(w.get('load_generator_cpu_s'))}" for label, w in _labelled(s)),
        "- the machine's 1-minute load average at each window's end (other work on it, if above about 2-3, "
        "slows every process here): " + ", ".join(f"{label}: {_cell(w.get('load_average_1m'))}"
                                                 for label, w in _labelled(s))] + _faults(doc)


def _serving_intro(doc: Mapping[str, Any]) -> list[str]:
    z = doc.get("sizes", {})
    return [f"One learner (`run --role learner`) learns elec2 from Kafka "
            f"({_cell(doc.get('feed', {}).get('events'))}"
            f" events produced at {z.get('rate')}/s) and publishes a snapshot at most every second; "
            f"predictors (`run --role predictor`) follow the snapshot topic. {z.get('clients_per_predictor')} "
            f"closed-loop clients per predictor send single-instance `/v1/predict` requests (elec2's held-out "
            f"rows) round-robin over the predictors, {z.get('window_s')} s a window; a third window runs one "
            f"predictor under the two predictors' clients.", "",
            CPU_NOTE.format(cpus=doc.get("cpu_count")), ""]


def render_md(doc: Mapping[str, Any]) -> str:
    where = ", on a real local broker, every process on loopback." if doc.get("serving") else "."
    lines = [f"# Scale-out bench ({'quick' if doc.get('quick') else 'full'} run)", "",
             f"`{doc.get('command', 'lifelong bench --scaleout')}` at commit `{doc.get('commit', '?')}`, "
             f"{doc.get('total_seconds', 0):.0f} s{where}", "",
             *(_serving_intro(doc) if doc.get("serving") else []),
             "| target | wanted | measured | met |", "|---|---|---|---|"]
    serving_keys = {t.key for t in targets({})} - {t.key for t in learning_targets({})}
    for t in targets(doc):
        if t.key in serving_keys and not doc.get("serving"):
            continue  # that part did not run
        met = "n/a" if t.ok is None else ("yes" if t.ok else "**no**")
        lines.append(f"| `{t.key}` | {t.wanted} | {_cell(t.measured)} | {met} |")
    lines += _serving_md(doc) + learning_md(doc)
    lines += ["## Definitions", "",
              "- A version regression is an answer with a lower `model_version` than one the same predictor process "
              "gave before the request was sent (a restarted predictor starts a new sequence; replicas may differ).",
              "- `unavailable`: the balancer's request found no process (connection refused or reset): what a client "
              "sees between a kill -9 and the balancer taking the predictor out; never counted as a 5xx. The "
              "balancer ejects a predictor on a failed connection and puts it back when `/readyz` answers 200; it "
              "does not take out a predictor whose `/readyz` turns 503 as stale (a broker outage longer than "
              "`snapshots.max_staleness_s` does that to every predictor at once, while each keeps answering from "
              "its last snapshot).",
              "- Forged records carry versions from 10^9 up; `corrupt_snapshots_served` counts answers with one.", ""]
    errors = doc.get("errors") or {}
    if errors:
        lines += ["## Did not finish", ""] + [f"- {k}: {v[:500]}" for k, v in errors.items()] + [""]
    failing = [t.key for t in targets(doc) if t.ok is False]
    lines += ["Failing targets: " + (", ".join(f"`{k}`" for k in failing) if failing else "none"), ""]
    return "\n".join(lines)


def render_text(doc: Mapping[str, Any]) -> str:
    rows = [f"{'predictors':>10} {'clients':>7} {'requests':>9} {'req/s':>8} {'req/cpu-s':>10} {'p50 ms':>7} "
            f"{'p99 ms':>7}"]
    s = doc.get("serving", {})
    for w in s.get("predictors", []) + ([s["n1_with_n2_clients"]] if s.get("n1_with_n2_clients") else []):
        rows.append(f"{w['n']:>10} {w.get('clients', '?'):>7} {w['requests']:>9} {_cell(w.get('req_per_s')):>8} "
                    f"{_cell(w.get('req_per_cpu_s')):>10} {_cell(w.get('p50_ms')):>7} {_cell(w.get('p99_ms')):>7}")
    rows.append(f"{'target':<28} {'measured':>14}  met")
    for t in targets(doc):
        rows.append(f"{t.key:<28} {_cell(t.measured):>14}  {'n/a' if t.ok is None else ('yes' if t.ok else 'NO')}")
    rows += [f"{k} did not finish: {v[:300]}" for k, v in (doc.get("errors") or {}).items()]
    return "\n".join(rows)
