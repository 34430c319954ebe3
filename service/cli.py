"""The daemon's sub-commands of ``lifelong``: run, produce, topics, report, config (``lifelong/cli.py`` gathers them)."""
from __future__ import annotations

import argparse
import logging

import yaml
from pydantic import ValidationError

from .config import Settings, load_settings, settings_reference


def _load(path: str | None) -> Settings:
    try:
        return load_settings(path)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise SystemExit("invalid configuration:\n" + "\n".join(lines)) from None
    except (FileNotFoundError, yaml.YAMLError) as exc:
        raise SystemExit(f"cannot read configuration: {exc}") from None


def _with_role(settings: Settings, role: str | None) -> Settings:
    if role is None:
        return settings
    try:
        return Settings.model_validate({**settings.model_dump(), "role": role})
    except ValidationError as exc:
        raise SystemExit("invalid configuration:\n" + "\n".join(
            f"  {e['msg']}" for e in exc.errors(include_url=False))) from None


def cmd_run(args: argparse.Namespace) -> int:
    settings = _with_role(_load(args.config), args.role)
    from .logs import configure_logging

    configure_logging(settings.log_level, settings.log_format, settings.http.access_log)
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: every thread's stack to stderr
    from ..learner.merging import MergeRefused
    from .checkpoint import CheckpointError, UnrecoverableCheckpoint
    from .loop import CheckpointMismatch
    from .runtime import Service  # heavy imports (torch) only when running

    if settings.role == "predictor":
        from .predictor import PredictorService

        return PredictorService(settings).serve()
    try:
        service = Service(settings)
    except (CheckpointError, UnrecoverableCheckpoint, CheckpointMismatch, MergeRefused) as exc:
        # The state cannot be trusted or kept: say so and stop, never start empty silently.
        logging.getLogger("lifelong").error("cannot start: %s", exc)
        raise SystemExit(f"lifelong: cannot start: {exc}") from None
    return service.serve()


def cmd_config_show(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    print(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def cmd_config_docs(args: argparse.Namespace) -> int:
    print(settings_reference())
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from ..stream.files import iter_records
    from ..stream.produce import produce

    try:
        stats = produce(iter_records(args.file, args.label_column, args.text_column), args.bootstrap, args.topic,
                        rate=args.rate, limit=args.limit, key_field=args.key)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"produce failed: {exc}") from None
    print(f"produced {stats.records} records to {args.topic} in {stats.seconds:.2f} s ({stats.rate:.0f} records/s)")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from . import topics

    settings = _load(args.config)
    try:
        if args.topics_command == "create":
            print("\n".join(topics.create(settings, args.partitions, args.replication_factor)))
            return 0
        problems = topics.check(settings)
    except KafkaError as exc:
        raise SystemExit(f"lifelong topics: cannot reach Kafka at {settings.source.kafka.bootstrap_servers}: "
                         f"{exc}") from None
    for line in problems:
        print(f"problem: {line}")
    if not problems:
        print("topics ok")
    return 1 if problems else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    try:
        path = write_report(args.checkpoint, args.out)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"lifelong report: {exc}") from None
    print(f"wrote {path} and {path.parent / 'accuracy.png'}")
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the daemon's sub-commands (run, produce, report, config) to the ``lifelong`` command."""
    run = sub.add_parser("run", help="run the daemon (embedded demo stream unless the config names a source)")
    run.add_argument("--config", help="YAML settings file (LIFELONG_* environment variables override it)")
    run.add_argument("--role", choices=("all", "learner", "predictor"), default=None,
                     help="override the role setting: all (default), learner, predictor")
    run.set_defaults(func=cmd_run)
    prod = sub.add_parser("produce", help="replay a JSONL or CSV stream file into a Kafka topic")
    prod.add_argument("file", help="JSONL (one event per line) or CSV file, optionally .gz")
    prod.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, host:port[,host:port]")
    prod.add_argument("--topic", required=True, help="topic to write to")
    prod.add_argument("--rate", type=float, default=None, help="records per second (default: as fast as possible)")
    prod.add_argument("--limit", type=int, default=None, help="stop after this many records")
    prod.add_argument("--label-column", default=None, help="CSV: label column (default: 'label' or 'class')")
    prod.add_argument("--key", default="id", help="event field whose value keys each record (default: id; "
                      "labels keyed by the same id then reach the same partition); '' for no key")
    prod.add_argument("--text-column", default=None, help="CSV: make text events from this column")
    prod.set_defaults(func=cmd_produce)
    top = sub.add_parser("topics", help="create or check the Kafka topics the configuration names")
    tsub = top.add_subparsers(dest="topics_command", required=True)
    create = tsub.add_parser("create", help="create the missing topics (snapshots compacted)")
    create.add_argument("--config", help="YAML settings file")
    create.add_argument("--partitions", type=int, default=3, help="partitions of events, labels and outputs")
    create.add_argument("--replication-factor", type=int, default=1, help="replicas of each partition")
    create.set_defaults(func=cmd_topics)
    chk = tsub.add_parser("check", help="verify compaction, partition counts and sizes; exit 1 on a problem")
    chk.add_argument("--config", help="YAML settings file")
    chk.set_defaults(func=cmd_topics)
    report = sub.add_parser("report", help="plots and a summary of continual evaluation from a checkpoint")
    report.add_argument("--checkpoint", required=True, help="the checkpoint folder (checkpoint.dir)")
    report.add_argument("--out", required=True, help="folder for report.md and accuracy.png")
    report.set_defaults(func=cmd_report)
    config = sub.add_parser("config", help="inspect configuration")
    csub = config.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print the effective configuration as YAML")
    show.add_argument("--config", help="YAML settings file")
    show.set_defaults(func=cmd_config_show)
    docs = csub.add_parser("docs", help="print the settings reference as a markdown table")
    docs.set_defaults(func=cmd_config_docs)
