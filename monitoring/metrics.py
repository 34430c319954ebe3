"""Every Prometheus metric the service exports, defined in this one module.

Names follow Prometheus conventions: the ``lifelong_`` prefix, base units,
``_total`` on counters. Label values come from closed sets (reasons,
outcomes, routes), never from event ids, class names or segments.
"""
from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.exposition import generate_latest

from .. import __version__

# Buckets bracket the targets: learning steps of tens to hundreds of events,
# single predictions in a few milliseconds (vector) to tens (text on CPU).
LEARN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PREDICT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

LABEL_OUTCOMES = ("joined", "unknown_id", "duplicate", "expired", "invalid")
DRIFT_KINDS = ("peak", "plateau", "consolidation", "release", "adwin")
SWAP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HTTP_ROUTES = ("/v1/predict", "/v1/feedback", "/v1/forget", "/v1/model", "/v1/keys", "/healthz", "/readyz",
               "/metrics", "other")
FORGET_OUTCOMES = ("applied", "rejected", "failed")
# A forget request removes, refits and checkpoints: tens of milliseconds to a minute.
FORGET_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The service's metrics on their own registry (one per service instance)."""

    def __init__(self, reasons: Iterable[str], registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        # Unprefixed, as the client names them: stock process dashboards and alerts find them.
        ProcessCollector(registry=r)
        self.build_info = Info("lifelong_build", "Package version.", registry=r)
        self.build_info.info({"version": __version__})
        self.model_info = Info("lifelong_model", "The learner and encoder being served.", registry=r)

        self.events_consumed = Counter("lifelong_events_consumed_total", "Records read from the source.", registry=r)
        self.events_learned = Counter("lifelong_events_learned_total", "Labelled events learned.", registry=r)
        self.events_predicted = Counter("lifelong_events_predicted_total",
                                        "Unlabelled stream events predicted.", registry=r)
        self.events_rejected = Counter("lifelong_events_rejected_total", "Records rejected, by reason.",
                                       ["reason"], registry=r)
        for reason in reasons:
            self.events_rejected.labels(reason=reason)
        self.labels = Counter("lifelong_labels_total", "Delayed labels received, by outcome.",
                              ["outcome"], registry=r)
        for outcome in LABEL_OUTCOMES:
            self.labels.labels(outcome=outcome)
        self.pending_expired = Counter("lifelong_pending_expired_total",
                                       "Unlabelled events dropped unlabelled (wait limit or store full).", registry=r)
        self.pending_oldest_age = Gauge("lifelong_pending_oldest_age_seconds",
                                        "Age of the oldest event waiting for a label.", registry=r)
        self.pending_labels = Gauge("lifelong_pending_labels", "Unlabelled events waiting for a label.", registry=r)
        self.early_labels = Gauge("lifelong_early_labels", "Labels waiting for their event (read before it).",
                                  registry=r)
        self.redelivered = Counter("lifelong_records_redelivered_total",
                                   "Records read again at an offset this state has already taken (after a "
                                   "rejoin or a failed commit); skipped, not learned twice.", registry=r)
        self.dead_letters_truncated = Counter("lifelong_dead_letters_truncated_total",
                                              "Dead letters whose payload was cut to fit outputs.max_message_bytes.",
                                              registry=r)
        self.dead_letters_dropped = Counter("lifelong_dead_letters_dropped_total",
                                            "Dead letters given up after outputs.dead_letter_attempts deliveries "
                                            "(logged; they never hold a checkpoint back).", registry=r)

        self.prequential_accuracy = Gauge("lifelong_prequential_accuracy",
                                          "Test-then-train accuracy over the last window of labelled events.",
                                          registry=r)
        self.loss = Gauge("lifelong_learn_loss", "Mean cross-entropy of the last learning step.", registry=r)
        self.loss_window_mean = Gauge("lifelong_loss_window_mean",
                                      "Mean of the normalised loss window (drift signal).", registry=r)
        self.loss_window_variance = Gauge("lifelong_loss_window_variance",
                                          "Variance of the normalised loss window (drift signal).", registry=r)
        self.drift_events = Counter("lifelong_drift_events_total", "Drift signals, by kind.", ["kind"], registry=r)
        for kind in DRIFT_KINDS:
            self.drift_events.labels(kind=kind)
        self.replay_items = Gauge("lifelong_replay_items", "Items in the replay memory.", registry=r)
        self.replay_bytes = Gauge("lifelong_replay_bytes", "Bytes of the replay memory, codebook included.",
                                  registry=r)
        self.pq_error = Gauge("lifelong_pq_reconstruction_error",
                              "Relative squared error of PQ-decoded taps (NaN before the codebook).", registry=r)
        self.adapters_merged = Gauge("lifelong_adapters_merged", "Adapter pairs merged at loss plateaus.",
                                     registry=r)
        self.prototypes = Gauge("lifelong_prototypes", "Class prototypes in the index.", registry=r)
        self.learn_latency = Histogram("lifelong_learn_latency_seconds", "Time of one learning step (a batch).",
                                       buckets=LEARN_BUCKETS, registry=r)
        self.learn_batch_size = Histogram("lifelong_learn_batch_events", "Events in one learning step.",
                                          buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r)

        self.predict_latency = Histogram("lifelong_predict_latency_seconds", "Time to answer one /v1/predict.",
                                         buckets=PREDICT_BUCKETS, registry=r)
        self.predict_batch_size = Histogram("lifelong_predict_batch_instances",
                                            "Instances in one micro-batch of /v1/predict requests.",
                                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.http_requests = Counter("lifelong_http_requests_total", "HTTP requests, by route and status code.",
                                     ["route", "code"], registry=r)

        self.consumer_lag = Gauge("lifelong_consumer_lag_records",
                                  "Records between the consumer's position and the log end.", registry=r)
        self.assigned_partitions = Gauge("lifelong_assigned_partitions",
                                         "Kafka partitions this replica consumes now.", registry=r)
        self.checkpoints = Counter("lifelong_checkpoints_total", "Checkpoints written.", registry=r)
        self.checkpoint_failures = Counter("lifelong_checkpoint_failures_total",
                                           "Checkpoints postponed (outputs not acknowledged) or failed (write "
                                           "error, disk full); the last good one stays and it is retried.",
                                           registry=r)
        self.checkpoint_fallbacks = Counter("lifelong_checkpoint_restore_fallbacks_total",
                                            "Damaged checkpoints skipped at start for an older valid one.",
                                            registry=r)
        self.checkpoint_seconds = Histogram("lifelong_checkpoint_seconds", "Time to write one checkpoint.",
                                            buckets=LEARN_BUCKETS, registry=r)
        self.checkpoint_bytes = Gauge("lifelong_checkpoint_bytes", "Size of the latest checkpoint.", registry=r)

        # Continual evaluation (monitoring/evaluator.py), for model="serving" (EMA) and model="live".
        ev = ["model"]
        self.eval_current = Gauge("lifelong_eval_current_accuracy", "Accuracy on the current segment's holdout.",
                                  ev, registry=r)
        self.eval_mean = Gauge("lifelong_eval_mean_accuracy", "Mean accuracy over every segment's holdout.", ev,
                               registry=r)
        self.eval_min = Gauge("lifelong_eval_min_accuracy",
                              "min-ACC: mean over past segments of each one's lowest accuracy since it ended.",
                              ev, registry=r)
        self.eval_worst_case = Gauge("lifelong_eval_worst_case_accuracy",
                                     "WC-ACC: (1/K) current + (1 - 1/K) min-ACC.", ev, registry=r)
        self.eval_forgetting = Gauge("lifelong_eval_forgetting",
                                     "Windowed forgetting WF^w over past segments (stat: mean or max).",
                                     ["model", "window", "stat"], registry=r)
        self.eval_plasticity = Gauge("lifelong_eval_plasticity", "Windowed plasticity WP^w of the current segment.",
                                     ["model", "window"], registry=r)
        self.gap_depth = Gauge("lifelong_stability_gap_depth",
                               "Depth of the latest stability gap: accuracy on past segments before the drift "
                               "minus the lowest after it.", ev, registry=r)
        self.gap_recovery = Gauge("lifelong_stability_gap_recovery_evaluations",
                                  "Evaluations the latest gap took to recover (while open: so far).", ev, registry=r)
        self.eval_past_class = Gauge("lifelong_eval_past_class_accuracy",
                                     "Accuracy on holdout items of classes absent for a while (no detector needed).",
                                     ev, registry=r)
        self.eval_present_class = Gauge("lifelong_eval_present_class_accuracy",
                                        "Accuracy on holdout items of recently seen classes.", ev, registry=r)
        self.eval_segments = Gauge("lifelong_eval_segments", "Segments the evaluator tracks.", registry=r)
        self.eval_holdout = Gauge("lifelong_eval_holdout_items", "Held-out events kept for evaluation.", registry=r)
        self.evaluations = Counter("lifelong_evaluations_total", "Continual evaluations run.", registry=r)
        self.events_held_out = Counter("lifelong_events_held_out_total",
                                       "Labelled events held out for evaluation instead of learned.", registry=r)

        self._add_forgetting(r)

        self.model_version = Gauge("lifelong_model_version", "Version of the model being served.", registry=r)
        self.model_classes = Gauge("lifelong_model_classes", "Classes the served model knows.", registry=r)
        self.model_bytes = Gauge("lifelong_model_memory_bytes", "Bytes held by the served model's state.",
                                 registry=r)

    def _add_forgetting(self, r: CollectorRegistry) -> None:
        """Forgetting on request (service/forgetting.py) and the per-source influence bound at intake."""
        self.forget_requests = Counter("lifelong_forget_requests_total", "Forget requests (HTTP and the forget "
                                       "topic), by outcome: applied, rejected (malformed, or forgetting off), "
                                       "failed (the learner or the checkpoint failed; retry).", ["outcome"],
                                       registry=r)
        for outcome in FORGET_OUTCOMES:
            self.forget_requests.labels(outcome=outcome)
        self.forget_items = Counter("lifelong_forget_items_total", "Replay items removed by forget requests.",
                                    registry=r)
        self.forget_seconds = Histogram("lifelong_forget_seconds", "Time to apply one forget request (removal, "
                                        "refit, snapshot, checkpoint).", buckets=FORGET_BUCKETS, registry=r)
        self.forgotten_skipped = Counter("lifelong_forgotten_skipped_total", "Events and labels not learned "
                                         "because their id or source was forgotten (never dead-lettered).",
                                         registry=r)
        self.events_suspect = Counter("lifelong_events_suspect_total", "Learned events the influence bound "
                                      "down-weighted as suspect.", registry=r)
        self.events_throttled = Counter("lifelong_events_throttled_total", "Events not learned because their "
                                        "source sent more than influence.max_source_rate events/s.", registry=r)
        self.tombstones = Gauge("lifelong_tombstones", "Forgotten ids and sources remembered (forget.*).",
                                registry=r)

    def add_snapshot_channel(self, reject_reasons: Iterable[str]) -> None:
        """The snapshot channel's metrics (roles that publish or read it)."""
        r = self.registry
        self.snapshots_published = Counter("lifelong_snapshots_published_total",
                                           "Serving snapshots published to the snapshot topic.", registry=r)
        self.snapshot_publish_failures = Counter("lifelong_snapshot_publish_failures_total",
                                                 "Publish transactions that did not commit (retried with the "
                                                 "newest snapshot).", registry=r)
        self.snapshot_generation = Gauge("lifelong_snapshot_generation",
                                         "Generation of the latest snapshot published or served (rises with "
                                         "every learner start).", registry=r)
        self.snapshot_payload_bytes = Gauge("lifelong_snapshot_payload_bytes",
                                            "Size of the latest snapshot published or served.", registry=r)
        self.snapshot_rejects = Counter("lifelong_snapshot_rejects_total",
                                        "Snapshot records read and refused, by reason; never served.",
                                        ["reason"], registry=r)
        for reason in reject_reasons:
            self.snapshot_rejects.labels(reason=reason)
        self.snapshot_swaps = Counter("lifelong_snapshot_swaps_total", "Snapshots swapped in for serving.",
                                      registry=r)
        self.snapshot_age = Gauge("lifelong_snapshot_age_seconds",
                                  "Time since the learner last confirmed the served version as its latest "
                                  "(heartbeat or publish); NaN before a first snapshot.", registry=r)
        self.publish_to_swap = Histogram("lifelong_snapshot_publish_to_swap_seconds",
                                         "From a snapshot's publication (learner clock) to its swap into "
                                         "serving here.", buckets=SWAP_BUCKETS, registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def add_merge(self) -> None:
        """A merging replica's metrics (scaleout.learning.mode merge)."""
        r = self.registry
        self.merge_round = Gauge("lifelong_merge_round", "Round of the merged base this replica holds.", registry=r)
        self.merge_events = Gauge("lifelong_merge_events", "Events every replica's merged contributions learned, "
                                  "as of the base this replica holds.", registry=r)
        self.merge_contributions = Counter("lifelong_merge_contributions_total", "Contributions this replica sent.",
                                           registry=r)
        self.merge_bases = Counter("lifelong_merge_bases_total", "Merged bases this replica wrote as the reducer.",
                                   registry=r)
        self.merge_rejects = Counter("lifelong_merge_rejects_total", "Merge-channel messages refused (damaged, "
                                     "another format); never merged.", registry=r)
        self.merge_seconds = Counter("lifelong_merge_seconds_total", "Time spent contributing, reducing and "
                                     "rebasing (compare with learning time).", registry=r)

    def add_keys(self) -> None:
        """Per-key models' metrics (scaleout.learning.mode per_key); no label per key (unbounded)."""
        r = self.registry
        self.keys_in_memory = Gauge("lifelong_keys_in_memory", "Keys whose learner is in this replica's memory.",
                                    registry=r)
        self.keys_stored = Gauge("lifelong_keys_stored", "Keys in the key store (all replicas).", registry=r)
        self.keys_memory_bytes = Gauge("lifelong_keys_memory_bytes", "Bytes of the learners in memory, all keys "
                                       "(bounded by scaleout.learning.per_key.max_resident_bytes).", registry=r)
        self.key_evictions = Counter("lifelong_key_evictions_total", "Learners saved to the key store and dropped "
                                     "from memory (least recently used first).", registry=r)
        self.key_conflicts = Counter("lifelong_key_conflicts_total", "Keys learned here that another replica saved "
                                     "too (a key's events on two partitions).", registry=r)

    def set_keys(self, gauges: dict[str, float]) -> None:
        """The per-key gauges from the keyed learner's numbers (it keeps the running totals of the counters)."""
        self.keys_in_memory.set(gauges["keys_in_memory"])
        self.keys_stored.set(gauges["keys_stored"])
        self.keys_memory_bytes.set(gauges["keys_bytes_in_memory"])
        for counter, name in ((self.key_evictions, "key_evictions"), (self.key_conflicts, "key_conflicts")):
            counter.inc(max(0.0, gauges[name] - counter._value.get()))
