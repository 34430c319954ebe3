"""The fault bench's numbers: per-id learn counts, dead-letter matching, targets, faults.md.

Pure functions over what the scenarios collected, so they are unit-tested without a broker.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from .faults_corpus import Bad
from .faults_env import Message, Sent


def learn_stats(counts: Mapping[str, int], labelled_ids: Iterable[str]) -> dict[str, Any]:
    """How often each labelled id was learned: once is the target; never and twice are the failures."""
    ids = list(dict.fromkeys(labelled_ids))
    once = sum(1 for i in ids if counts.get(i, 0) == 1)
    never = [i for i in ids if counts.get(i, 0) == 0]
    twice = [i for i in ids if counts.get(i, 0) > 1]
    wanted = set(ids)
    unexpected = sorted(i for i in counts if i not in wanted)
    return {"labelled": len(ids), "learned_once": once, "never_learned": len(never), "learned_twice": len(twice),
            "once_fraction": once / len(ids) if ids else float("nan"),
            "never_examples": never[:10], "twice_examples": twice[:10], "unexpected_learned": len(unexpected),
            "unexpected_examples": unexpected[:10]}


def match_dead_letters(sent: Sequence[tuple[Bad, Sent]], dead: Sequence[Message]) -> dict[str, Any]:
    """Find each bad record's dead letter by its source headers and check the reason.

    Returns ``{"by_kind": {role:kind: {...}}, "dead_lettered_fraction", "with_expected_reason", "missing": [...],
    "wrong_reason": [...]}``.
    """
    by_source: dict[tuple[str, int, int], Message] = {}
    for message in dead:
        topic = message.header("lifelong.source.topic")
        partition, offset = message.header("lifelong.source.partition"), message.header("lifelong.source.offset")
        if topic is None or partition is None or offset is None:
            continue
        try:
            by_source[(topic, int(partition), int(offset))] = message
        except ValueError:
            continue
    by_kind: dict[str, dict[str, Any]] = {}
    found = right = 0
    for bad, where in sent:
        message = by_source.get((where.topic, where.partition, where.offset))
        reason = message.header("lifelong.reason") if message is not None else None
        ok = reason in bad.reasons
        found += message is not None
        right += ok
        entry: dict[str, Any] = {"dead_lettered": message is not None, "reason": reason,
                                 "expected": sorted(bad.reasons), "ok": ok}
        if message is not None and message.header("lifelong.original.size") is not None:
            entry["truncated_from_bytes"] = int(message.header("lifelong.original.size") or 0)
            entry["dead_letter_bytes"] = len(message.value or b"")
        by_kind[f"{bad.role}:{bad.kind}"] = entry
    n = len(sent)
    return {"by_kind": by_kind, "records": n, "dead_lettered": found, "with_expected_reason": right,
            "dead_lettered_fraction": right / n if n else float("nan"),
            "missing": sorted(k for k, e in by_kind.items() if not e["dead_lettered"]),
            "wrong_reason": sorted(f"{k} ({e['reason']}, expected {'/'.join(e['expected'])})"
                                   for k, e in by_kind.items() if e["dead_lettered"] and not e["ok"])}


@dataclass(frozen=True)
class Target:
    key: str
    wanted: str
    measured: Any
    ok: bool | None  # None: not measured in this run


def _is(value: Any, check: Any) -> bool | None:
    if value is None:
        return None
    try:
        return bool(check(value))
    except TypeError:
        return None


def targets(doc: Mapping[str, Any]) -> list[Target]:
    """Targets against what ``doc`` (faults.json) measured."""
    damage = doc.get("checkpoint_damage") or {}
    served = doc.get("damaged_checkpoints_served")
    kinds = doc.get("bad_record_kinds") or {}
    return [
        Target("learned_once_fraction", "= 1.0 (kill -9 x3, labels 0-D s later, labels-first backlogs)",
               doc.get("learned_once_fraction"), _is(doc.get("learned_once_fraction"), lambda v: v == 1.0)),
        Target("learned_twice", "= 0 (kills and outage)", doc.get("learned_twice"),
               _is(doc.get("learned_twice"), lambda v: v == 0)),
        Target("outage_learned_fraction", "= 1.0", doc.get("outage_learned_fraction"),
               _is(doc.get("outage_learned_fraction"), lambda v: v == 1.0)),
        Target("resume_seconds", "<= 10 s after the broker accepts connections again", doc.get("resume_seconds"),
               _is(doc.get("resume_seconds"), lambda v: v <= 10)),
        Target("crashes", "= 0 over >= 25 bad-record kinds on each topic and HTTP", doc.get("crashes"),
               _is(doc.get("crashes"), lambda v: v == 0 and min(kinds.values() or [0]) >= 25)),
        Target("bad_records_dead_lettered_fraction", "= 1.0, each with its reason",
               doc.get("bad_records_dead_lettered_fraction"),
               _is(doc.get("bad_records_dead_lettered_fraction"), lambda v: v == 1.0)),
        Target("http_5xx", "= 0", doc.get("http_5xx"), _is(doc.get("http_5xx"), lambda v: v == 0)),
        Target("oversized_ok", "dead-lettered (truncated), checkpoints go on, SIGTERM checkpoints, restart not stuck",
               doc.get("oversized_ok"), _is(doc.get("oversized_ok"), lambda v: v is True)),
        Target("damaged_checkpoints_served", f"= 0 over {len(damage)} damage cases", served,
               _is(served, lambda v: v == 0)),
    ]


def _cell(value: Any) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) >= 1 else f"{value:.4g}"
    return str(value)


def _what(doc: Mapping[str, Any]) -> list[str]:
    z = doc.get("sizes") or {}
    if not z:
        return []
    return [f"Kills: {z.get('events')} unlabelled events at {z.get('rate')}/s, each label on the labels topic "
            f"0-{z.get('max_delay_s')} s later, the daemon SIGKILLed {z.get('kills', 3)} times mid-stream and "
            f"restarted; {z.get('backlog')} labels then their events waiting before the first start, as many again "
            f"after a SIGTERM. Outage: the same stream, the broker stopped {z.get('outage_s')} s half-way. "
            "Learn counts are read from the daemon's checkpoint (`debug.track_learned_ids`) after a clean stop."]


def render_md(doc: Mapping[str, Any]) -> str:
    """faults.md: targets vs measured, then the details a reader needs to trust them."""
    lines = [f"# Fault bench ({'quick' if doc.get('quick') else 'full'} run)", "",
             f"`{doc.get('command', 'lifelong bench --faults')}` at commit `{doc.get('commit', '?')}`, "
             f"{doc.get('total_seconds', 0):.0f} s, input {doc.get('input_kind')}, on a real local broker.", "",
             *_what(doc), "", "| target | wanted | measured | met |", "|---|---|---|---|"]
    for t in targets(doc):
        met = "n/a" if t.ok is None else ("yes" if t.ok else "**no**")
        lines.append(f"| `{t.key}` | {t.wanted} | {_cell(t.measured)} | {met} |")
    for title, key in (("Kills and delayed labels", "kills"), ("Broker outage", "outage"),
                       ("Oversized records", "oversized")):
        part = doc.get(key)
        if part:
            lines += ["", f"## {title}", ""] + [f"- {k}: {_cell(v) if not isinstance(v, (list, dict)) else v}"
                                               for k, v in part.items() if k not in ("log_excerpts",)]
            for excerpt in part.get("log_excerpts", [])[:3]:
                lines += ["", "```", excerpt.strip()[-1500:], "```"]
    bad = doc.get("bad_records")
    if bad:
        lines += ["", "## Bad records", "", f"kinds: {doc.get('bad_record_kinds')}; valid events of the same "
                  f"batches learned: {bad.get('valid_learned')} of {bad.get('valid_sent')}; restarts needed: "
                  f"{bad.get('restarts')}", "", "| record | dead-lettered | reason | expected |", "|---|---|---|---|"]
        for kind, e in bad.get("dead_letters", {}).get("by_kind", {}).items():
            mark = "" if e["ok"] else " **x**"
            lines.append(f"| {kind} | {_cell(e['dead_lettered'])} | {e['reason'] or '-'}{mark} | "
                         f"{', '.join(e['expected'])} |")
    http = doc.get("http")
    if http:
        by_status: dict[int, list[str]] = {}
        for name, code in http.get("status", {}).items():
            by_status.setdefault(code, []).append(name)
        lines += ["", "## HTTP", "", f"{http.get('cases')} bad requests to /v1/predict and /v1/feedback; 5xx or "
                  f"dropped: {http.get('failures') or 'none'}.", "", "| status | requests |", "|---|---|"]
        lines += [f"| {code} | {len(names)}: {', '.join(names) if code < 400 or len(names) < 5 else '...'} |"
                  for code, names in sorted(by_status.items())]
        lines += ["", "Slow clients: " + ", ".join(f"{k} {v}" for k, v in (http.get("slow") or {}).items())]
    damage = doc.get("checkpoint_damage")
    if damage:
        lines += ["", "## Checkpoint damage", "", "| case | outcome | expected | events kept | damaged one served | "
                  "detail |", "|---|---|---|---|---|---|"]
        for case, e in damage.items():
            detail = str(e.get("detail", "")).replace("|", "\\|").replace("\n", " ")[-240:]
            kept = (f"{e['events_learned']} of {e['template_events']}" if "events_learned" in e else "-")
            lines.append(f"| {case} | {e.get('outcome')} | {e.get('expected', '-')} | {kept} | "
                         f"{_cell(e.get('served'))} | {detail} |")
    failing = [t.key for t in targets(doc) if t.ok is False]
    lines += ["", "Failing targets: " + (", ".join(f"`{k}`" for k in failing) if failing else "none"), ""]
    return "\n".join(lines)
