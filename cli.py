"""The ``lifelong`` command: the daemon's sub-commands and the benchmarks', gathered here.

This module sits above both packages: ``service`` never imports ``bench``; each
registers its own sub-commands (``service/cli.py``: run, produce, report, config;
``bench/cli.py``: bench).
"""
from __future__ import annotations

import argparse
import sys

from . import __version__
from .bench import cli as bench_cli
from .service import cli as service_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lifelong", description="A service that learns continually from an event stream.")
    p.add_argument("--version", action="version", version=f"lifelong {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    service_cli.register(sub)
    bench_cli.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
