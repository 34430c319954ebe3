"""Rebuild the demo stream from CLINC150's ``data_full.json`` and ``domains.json``.

Usage: ``python -m lifelong.stream.demo.make_clinc150 DATA_DIR OUT.jsonl.gz``

Training utterances, one domain after another in ``domains.json`` order (a
class-incremental stream of 10 segments x 15 intents), shuffled within each
domain with a fixed seed. Out-of-scope utterances are left out.
"""
from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path


def build(data_dir: Path, seed: int = 0) -> list[dict[str, str]]:
    data = json.loads((data_dir / "data_full.json").read_text())
    domains: dict[str, list[str]] = json.loads((data_dir / "domains.json").read_text())
    by_intent: dict[str, list[str]] = {}
    for text, intent in data["train"]:
        by_intent.setdefault(intent, []).append(text)
    rng = random.Random(seed)
    events = []
    for domain, intents in domains.items():
        segment = [(text, intent) for intent in intents for text in by_intent[intent]]
        rng.shuffle(segment)
        events += [{"text": t, "label": i, "domain": domain} for t, i in segment]
    return [{"id": f"clinc-{n:05d}", **e} for n, e in enumerate(events)]


def main(argv: list[str]) -> None:
    data_dir, out = Path(argv[0]), Path(argv[1])
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as fh:
        for event in build(data_dir):
            domain = event.pop("domain")
            fh.write(json.dumps({**event, "segment": domain}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
