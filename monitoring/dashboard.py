"""The Grafana dashboard, generated from the panel specs below.

``python -m lifelong.monitoring.dashboard > deploy/grafana/lifelong.json`` regenerates the committed
file; a unit test fails while the two differ. Every query uses only metrics of ``metrics.py``.
Panels read the Prometheus data source chosen in the ``datasource`` variable (default uid
``prometheus``, as provisioned by ``deploy/grafana/provisioning``). Rates use Grafana's
``$__rate_interval``; :func:`expand` substitutes it to evaluate a query outside Grafana.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

DATASOURCE_UID = "prometheus"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE_INTERVAL = "$__rate_interval"
GRID_WIDTH = 24


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    targets: tuple[tuple[str, str], ...]  # (legend, PromQL)
    description: str = ""
    kind: str = "timeseries"              # or "stat"
    width: int = 8
    height: int = 8


def rate(counter: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({counter}[{RATE_INTERVAL}]))"


def quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket[{RATE_INTERVAL}])))"


def _accuracy(model: str) -> Panel:
    metrics = {"current segment": "current", "mean over segments": "mean", "min-ACC": "min",
               "WC-ACC": "worst_case"}
    return Panel(f"Continual accuracy ({model})", "percentunit",
                 tuple((legend, f'lifelong_eval_{name}_accuracy{{model="{model}"}}')
                       for legend, name in metrics.items()),
                 f"Accuracy of the {model} model on each segment's fixed holdout: the current segment, the mean "
                 "over all kept segments, min-ACC (each past segment's lowest since it ended) and WC-ACC.")


ROWS: list[tuple[str, list[Panel]]] = [
    ("Throughput & lag", [
        Panel("Events per second", "cps", (
            ("consumed", rate("lifelong_events_consumed_total")),
            ("learned", rate("lifelong_events_learned_total")),
            ("predicted (unlabelled)", rate("lifelong_events_predicted_total")),
            ("held out for evaluation", rate("lifelong_events_held_out_total"))),
              "Records read from the source; labelled events learned; unlabelled events predicted."),
        Panel("Rejected records per second, by reason", "cps",
              (("{{reason}}", rate("lifelong_events_rejected_total", "reason")),),
              "Records sent to the dead-letter topic; the reason is in the record's headers."),
        Panel("Delayed labels per second, by outcome", "cps", (
            ("{{outcome}}", rate("lifelong_labels_total", "outcome")),
            ("events expired unlabelled", rate("lifelong_pending_expired_total"))),
              "Labels from the labels topic or POST /v1/feedback, joined to a waiting event or not; waiting "
              "events dropped unlabelled (wait limit or store full)."),
        Panel("Delivery faults per second", "cps", (
            ("re-delivered, skipped", rate("lifelong_records_redelivered_total")),
            ("dead letters truncated", rate("lifelong_dead_letters_truncated_total")),
            ("dead letters dropped", rate("lifelong_dead_letters_dropped_total"))),
              "Records read again after a rejoin (skipped, not learned twice); dead letters cut to fit "
              "outputs.max_message_bytes; dead letters given up after outputs.dead_letter_attempts refusals."),
        Panel("Consumer lag", "short", (("{{instance}}", "lifelong_consumer_lag_records"),),
              "Records between each replica's position and the log end of its partitions.", width=12),
        Panel("Assigned partitions", "short", (("{{instance}}", "lifelong_assigned_partitions"),),
              "Kafka partitions each replica consumes now.", width=12),
    ]),
    ("Learning", [
        Panel("Prequential accuracy", "percentunit", (("{{instance}}", "lifelong_prequential_accuracy"),),
              "Test-then-train accuracy over the last window of labelled events."),
        Panel("Learning loss", "short", (("{{instance}}", "lifelong_learn_loss"),),
              "Mean cross-entropy of the last learning step."),
        Panel("Loss window (normalised)", "short", (
            ("mean {{instance}}", "lifelong_loss_window_mean"),
            ("variance {{instance}}", "lifelong_loss_window_variance")),
              "The loss window whose peaks signal a shift and whose plateaus trigger consolidation."),
        Panel("Drift signals per second, by kind", "cps",
              (("{{kind}}", rate("lifelong_drift_events_total", "kind")),),
              "peak: a shift (opens a segment); plateau: learned; consolidation: adapter merged; adwin: ADWIN."),
        Panel("Adapters merged", "short", (("{{instance}}", "lifelong_adapters_merged"),),
              "Adapter pairs merged into the frozen update at loss plateaus."),
        Panel("Learning step latency", "s", (
            ("p50", quantile(0.5, "lifelong_learn_latency_seconds")),
            ("p99", quantile(0.99, "lifelong_learn_latency_seconds"))),
              "Time of one learning step (a micro-batch)."),
        Panel("Events per learning step", "short", (
            ("mean", f"{rate('lifelong_learn_batch_events_sum')} / {rate('lifelong_learn_batch_events_count')}"),
            ("p99", quantile(0.99, "lifelong_learn_batch_events"))),
              "Size of the micro-batches the learner takes."),
        Panel("Checkpoints per second", "cps", (
            ("written", rate("lifelong_checkpoints_total")),
            ("postponed or failed", rate("lifelong_checkpoint_failures_total"))),
              "State and offsets are saved together; offsets are committed only after a checkpoint. Postponed: "
              "outputs not acknowledged; failed: disk full or a write error (the last good one stays)."),
        Panel("Damaged checkpoints skipped at start", "short",
              (("{{instance}}", "lifelong_checkpoint_restore_fallbacks_total"),),
              "Checkpoints that failed their checksums at the last start, skipped for an older valid one."),
        Panel("Checkpoint duration", "s", (
            ("p50", quantile(0.5, "lifelong_checkpoint_seconds")),
            ("p99", quantile(0.99, "lifelong_checkpoint_seconds"))),
              "Time to write one checkpoint."),
        Panel("Checkpoint size", "bytes", (("{{instance}}", "lifelong_checkpoint_bytes"),),
              "Size of the latest checkpoint."),
    ]),
    ("Stability gap", [
        _accuracy("serving"),
        _accuracy("live"),
        Panel("Windowed forgetting WF", "percentunit",
              (("{{model}} WF^{{window}} {{stat}}", "lifelong_eval_forgetting"),),
              "Largest accuracy drop of a past segment within w consecutive evaluations; mean and max over "
              "past segments."),
        Panel("Windowed plasticity WP", "percentunit",
              (("{{model}} WP^{{window}}", "lifelong_eval_plasticity"),),
              "Largest accuracy rise of the current segment within w consecutive evaluations."),
        Panel("Stability gap depth", "percentunit", (("{{model}}", "lifelong_stability_gap_depth"),),
              "Latest drift: accuracy on past segments before it minus the lowest after it."),
        Panel("Stability gap recovery", "short",
              (("{{model}}", "lifelong_stability_gap_recovery_evaluations"),),
              "Evaluations the latest gap took to recover (while open: so far)."),
        Panel("Past- vs present-class accuracy", "percentunit", (
            ("past classes {{model}}", "lifelong_eval_past_class_accuracy"),
            ("present classes {{model}}", "lifelong_eval_present_class_accuracy")),
              "Holdout accuracy on classes absent for a while vs recently seen ones (no drift detector needed)."),
        Panel("Evaluator state", "short", (
            ("segments {{instance}}", "lifelong_eval_segments"),
            ("holdout items {{instance}}", "lifelong_eval_holdout_items")),
              "Segments tracked and held-out events kept for evaluation."),
        Panel("Evaluations per second", "cps", (("evaluations", rate("lifelong_evaluations_total")),),
              "Continual evaluations run (one every evaluation.eval_every learned events)."),
    ]),
    ("Memory", [
        Panel("Replay memory items", "short", (("{{instance}}", "lifelong_replay_items"),),
              "Items in the replay memory (class-balanced)."),
        Panel("Memory", "bytes", (
            ("replay {{instance}}", "lifelong_replay_bytes"),
            ("model {{instance}}", "lifelong_model_memory_bytes"),
            ("process resident {{instance}}", "process_resident_memory_bytes")),
              "Replay memory (codebook included, at most learner.memory_budget_bytes), served model state, "
              "and the whole process."),
        Panel("PQ reconstruction error", "percentunit",
              (("{{instance}}", "lifelong_pq_reconstruction_error"),),
              "Relative squared error of product-quantised taps (empty before the codebook is trained)."),
        Panel("Prototypes and classes", "short", (
            ("prototypes {{instance}}", "lifelong_prototypes"),
            ("classes served {{instance}}", "lifelong_model_classes")),
              "Class prototypes in the index and classes the served model knows."),
        Panel("Events waiting for a label, labels waiting for an event", "short", (
            ("events {{instance}}", "lifelong_pending_labels"),
            ("labels {{instance}}", "lifelong_early_labels")),
              "Unlabelled events whose tap features wait for a delayed label, and labels read before their "
              "event (each at most labels.max_pending)."),
        Panel("Oldest pending event", "s", (("{{instance}}", "lifelong_pending_oldest_age_seconds"),),
              "Age of the oldest event waiting for a label (labels.max_wait_s drops it)."),
    ]),
    ("Serving", [
        Panel("Served model version", "none", (("{{instance}}", "lifelong_model_version"),),
              "Version of the snapshot that answers predictions.", kind="stat", width=6, height=4),
        Panel("Scrape target up", "none", (("{{instance}}", 'up{job="lifelong"}'),),
              "1 while Prometheus scrapes the service.", kind="stat", width=6, height=4),
        Panel("Model", "none", (("{{learner}} ({{input_kind}})", "lifelong_model_info"),),
              "The learner being served.", kind="stat", width=6, height=4),
        Panel("Build", "none", (("version {{version}}", "lifelong_build_info"),),
              "Package version.", kind="stat", width=6, height=4),
        Panel("Predict latency", "s", (
            ("p50", quantile(0.5, "lifelong_predict_latency_seconds")),
            ("p99", quantile(0.99, "lifelong_predict_latency_seconds"))),
              "Time to answer one POST /v1/predict.", width=12),
        Panel("HTTP requests per second", "reqps",
              (("{{route}} {{code}}", rate("lifelong_http_requests_total", "route, code")),),
              "By route and status code.", width=12),
        Panel("Predict micro-batch size", "short", (
            ("mean", f'{rate("lifelong_predict_batch_instances_sum")} / '
                     f'{rate("lifelong_predict_batch_instances_count")}'),
            ("p99", quantile(0.99, "lifelong_predict_batch_instances"))),
              "Instances per model call when concurrent /v1/predict requests are coalesced "
              "(http.batch_max_instances, http.batch_wait_ms).", width=12),
    ]),
    ("Snapshots (learner and predictors)", [
        Panel("Snapshots published and swapped per second", "cps", (
            ("published {{instance}}", rate("lifelong_snapshots_published_total", "instance")),
            ("publish failures {{instance}}", rate("lifelong_snapshot_publish_failures_total", "instance")),
            ("swapped in {{instance}}", rate("lifelong_snapshot_swaps_total", "instance"))),
              "The learner's publish transactions (failed ones are retried with the newest snapshot) and the "
              "predictors' swaps."),
        Panel("Snapshot age on predictors", "s", (("{{instance}}", "lifelong_snapshot_age_seconds"),),
              "Time since the learner last confirmed the served version; /readyz fails past "
              "snapshots.max_staleness_s."),
        Panel("Publish to swap", "s", (
            ("p50", quantile(0.5, "lifelong_snapshot_publish_to_swap_seconds")),
            ("p99", quantile(0.99, "lifelong_snapshot_publish_to_swap_seconds"))),
              "From the learner's publish to a predictor's swap."),
        Panel("Snapshot records refused, by reason", "cps",
              (("{{reason}}", rate("lifelong_snapshot_rejects_total", "reason")),),
              "Records on the snapshot topic that failed a check and were never served (forged, damaged, "
              "another encoder)."),
        Panel("Generation", "none", (("{{instance}}", "lifelong_snapshot_generation"),),
              "Rises with every learner start; predictors follow.", kind="stat", width=8, height=4),
        Panel("Snapshot payload", "bytes", (("{{instance}}", "lifelong_snapshot_payload_bytes"),),
              "Size of the latest snapshot published or served.", kind="stat", width=8, height=4),
    ]),
    ("Forgetting and sources", [
        Panel("Forget requests per second, by outcome", "cps", (
            ("{{outcome}}", rate("lifelong_forget_requests_total", "outcome")),),
              "POST /v1/forget and the forget topic: applied, rejected (malformed, or this service cannot forget), "
              "failed (the learner or the checkpoint failed; a retry is harmless)."),
        Panel("Forget duration", "s", (
            ("p50", quantile(0.5, "lifelong_forget_seconds")),
            ("p99", quantile(0.99, "lifelong_forget_seconds"))),
              "Time to apply one forget request: removal, refit, snapshot and checkpoint (empty before a first "
              "request)."),
        Panel("Forgotten and skipped per second", "cps", (
            ("replay items removed", rate("lifelong_forget_items_total")),
            ("forgotten events skipped", rate("lifelong_forgotten_skipped_total"))),
              "Replay items removed by requests; events and labels of forgotten ids or sources read again and "
              "skipped (never dead-lettered)."),
        Panel("Tombstones", "short", (("{{instance}}", "lifelong_tombstones"),),
              "Forgotten ids and sources remembered (forget.max_tombstones, forget.tombstone_retention_s)."),
        Panel("Events throttled or suspect per second", "cps", (
            ("throttled (source over rate)", rate("lifelong_events_throttled_total")),
            ("suspect (down-weighted)", rate("lifelong_events_suspect_total"))),
              "Events not learned because their source sent more than influence.max_source_rate; learned events "
              "the influence bound down-weighted.", width=16),
    ]),
    ("Learner replicas (scaleout.learning.mode merge)", [
        Panel("Merge round", "none", (("{{instance}}", "lifelong_merge_round"),),
              "Round of the merged base each replica holds; replicas a round or two apart are normal, one that "
              "stays behind has lost the merge channel."),
        Panel("Events in the merged model", "short", (("{{instance}}", "lifelong_merge_events"),),
              "Events every replica's merged contributions learned, as of each replica's base."),
        Panel("Merging over learning time", "percentunit", (
            ("{{instance}}", f'{rate("lifelong_merge_seconds_total", "instance")} / '
                             f'{rate("lifelong_learn_latency_seconds_sum", "instance")}'),),
              "Time spent contributing, reducing and rebasing per second of learning."),
        Panel("Merge messages per second", "cps", (
            ("contributions sent {{instance}}", rate("lifelong_merge_contributions_total", "instance")),
            ("bases written {{instance}}", rate("lifelong_merge_bases_total", "instance")),
            ("refused {{instance}}", rate("lifelong_merge_rejects_total", "instance"))),
              "Contributions each replica sent, bases the reducer wrote, and messages refused as damaged.",
              width=24),
    ]),
    ("Models per key (scaleout.learning.mode per_key)", [
        Panel("Keys", "short", (("in memory {{instance}}", "lifelong_keys_in_memory"),
                                ("stored {{instance}}", "lifelong_keys_stored")),
              "Keys whose learner each replica holds in memory, and keys in the shared key store."),
        Panel("Learners in memory", "bytes", (("{{instance}}", "lifelong_keys_memory_bytes"),),
              "All keys' learners in memory, bounded by scaleout.learning.per_key.max_resident_bytes."),
        Panel("Keys saved and dropped per second", "cps", (
            ("evicted {{instance}}", rate("lifelong_key_evictions_total", "instance")),
            ("conflicts {{instance}}", rate("lifelong_key_conflicts_total", "instance"))),
              "Least recently used keys evicted to the store (read back at their next event); conflicts: a key "
              "learned by two replicas (its events on two partitions)."),
    ]),
]


def _target(index: int, legend: str, expr: str, instant: bool) -> dict[str, Any]:
    return {"refId": chr(ord("A") + index), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
            "range": not instant, "instant": instant}


def _panel(spec: Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    stat = spec.kind == "stat"
    if stat:
        options: dict[str, Any] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                                   "colorMode": "value", "graphMode": "none", "justifyMode": "auto",
                                   "orientation": "auto",
                                   # an _info metric's value is always 1: show its labels instead
                                   "textMode": "name" if spec.targets[0][1].endswith("_info") else "value"}
    else:
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "none"}}
    return {"id": panel_id, "type": spec.kind, "title": spec.title, "description": spec.description,
            "datasource": DATASOURCE, "gridPos": grid,
            "fieldConfig": {"defaults": {"unit": spec.unit}, "overrides": []}, "options": options,
            "targets": [_target(i, legend, expr, stat) for i, (legend, expr) in enumerate(spec.targets)]}


def _panels(rows: list[tuple[str, list[Panel]]]) -> list[dict[str, Any]]:
    """Rows of panels, packed left to right into the 24-column grid."""
    panels: list[dict[str, Any]] = []
    y = 0
    for title, specs in rows:
        panels.append({"id": len(panels) + 1, "type": "row", "title": title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y}})
        y, x, line_height = y + 1, 0, 0
        for spec in specs:
            if x + spec.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel(spec, len(panels) + 1, {"h": spec.height, "w": spec.width, "x": x, "y": y}))
            x, line_height = x + spec.width, max(line_height, spec.height)
        y += line_height
    return panels


def build_dashboard() -> dict[str, Any]:
    """The Grafana dashboard JSON model (schema 39)."""
    datasource_variable = {"type": "datasource", "name": "datasource", "label": "Prometheus", "query": "prometheus",
                           "current": {"selected": False, "text": "Prometheus", "value": DATASOURCE_UID},
                           "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
                           "regex": "", "skipUrlSync": False}
    return {
        "uid": "lifelong", "title": "lifelong", "id": None, "version": 1, "schemaVersion": 39,
        "description": "A service that learns continually from a stream: throughput, learning, stability gap, "
                       "memory, serving.",
        "tags": ["lifelong", "continual-learning", "kafka"], "editable": True, "graphTooltip": 1,
        "timezone": "browser", "refresh": "30s", "time": {"from": "now-1h", "to": "now"},
        "fiscalYearStartMonth": 0, "liveNow": False, "links": [],
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": [datasource_variable]},
        "panels": _panels(ROWS),
    }


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, PromQL) of every target of a dashboard JSON model."""
    return [(p["title"], t["refId"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def expand(expr: str, rate_interval: str = "1m") -> str:
    """A panel query as Grafana sends it, with ``$__rate_interval`` set."""
    return expr.replace(RATE_INTERVAL, rate_interval)


def render() -> str:
    return json.dumps(build_dashboard(), indent=2) + "\n"


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
