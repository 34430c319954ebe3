"""The ``lifelong`` command line."""
from __future__ import annotations

import argparse
import logging
import sys

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


def cmd_run(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.log_level != "DEBUG":
        # Client libraries narrate every connection at INFO; keep their warnings.
        for name in ("kafka", "faiss.loader", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    from .runtime import Service  # heavy imports (torch) only when running

    return Service(settings).serve()


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
                        rate=args.rate, limit=args.limit)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"produce failed: {exc}") from None
    print(f"produced {stats.records} records to {args.topic} in {stats.seconds:.2f} s ({stats.rate:.0f} records/s)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.checkpoint:
        from .bench_checkpoint import run

        result = run(items=args.items)
        for key, value in result.items():
            print(f"{key}: {value:,.3f}" if isinstance(value, float) and not value.is_integer() else f"{key}: {value:,.0f}")
        return 0
    raise SystemExit("lifelong bench: give --checkpoint (quality and speed benchmarks are not built yet)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lifelong", description="A service that learns continually from an event stream.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon (embedded demo stream unless the config names a source)")
    run.add_argument("--config", help="YAML settings file (LIFELONG_* environment variables override it)")
    run.set_defaults(func=cmd_run)
    prod = sub.add_parser("produce", help="replay a JSONL or CSV stream file into a Kafka topic")
    prod.add_argument("file", help="JSONL (one event per line) or CSV file, optionally .gz")
    prod.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, host:port[,host:port]")
    prod.add_argument("--topic", required=True, help="topic to write to")
    prod.add_argument("--rate", type=float, default=None, help="records per second (default: as fast as possible)")
    prod.add_argument("--limit", type=int, default=None, help="stop after this many records")
    prod.add_argument("--label-column", default=None, help="CSV: label column (default: 'label' or 'class')")
    prod.add_argument("--text-column", default=None, help="CSV: make text events from this column")
    prod.set_defaults(func=cmd_produce)
    bench = sub.add_parser("bench", help="benchmarks that print numbers")
    bench.add_argument("--checkpoint", action="store_true", help="checkpoint size and write/restore time")
    bench.add_argument("--items", type=int, default=100_000, help="replay items in the checkpoint benchmark")
    bench.set_defaults(func=cmd_bench)
    config = sub.add_parser("config", help="inspect configuration")
    csub = config.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print the effective configuration as YAML")
    show.add_argument("--config", help="YAML settings file")
    show.set_defaults(func=cmd_config_show)
    docs = csub.add_parser("docs", help="print the settings reference as a markdown table")
    docs.set_defaults(func=cmd_config_docs)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
