"""Reading stream files: JSONL events as they are, or CSV rows turned into events.

CSV: the label column is ``label`` or ``class`` (or ``--label-column``); a
``--text-column`` makes text events, otherwise every other numeric column is
a feature. The id is an ``id`` column if present, else ``<file stem>-<row>``.
"""
from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import IO, Iterator


def _open(path: Path) -> IO[str]:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _csv_events(path: Path, label_column: str | None, text_column: str | None) -> Iterator[str]:
    with _open(path) as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        label = label_column or next((c for c in ("label", "class") if c in columns), None)
        if label_column and label_column not in columns:
            raise ValueError(f"{path}: no column {label_column!r} (columns: {', '.join(columns)})")
        if text_column and text_column not in columns:
            raise ValueError(f"{path}: no column {text_column!r} (columns: {', '.join(columns)})")
        stem = path.name.split(".")[0]
        for n, row in enumerate(reader):
            event: dict[str, object] = {"id": row.get("id") or f"{stem}-{n}"}
            if text_column:
                event["text"] = row[text_column]
            else:
                event["features"] = [float(row[c]) for c in columns if c not in (label, "id")]
            if label and row.get(label, "") != "":
                event["label"] = row[label]
            yield json.dumps(event)


def iter_records(path: str | Path, label_column: str | None = None, text_column: str | None = None) -> Iterator[str]:
    """One JSON event string per record of a JSONL or CSV file (optionally gzip)."""
    p = Path(path)
    kind = p.name.removesuffix(".gz").rsplit(".", 1)[-1].lower()
    if kind == "csv":
        yield from _csv_events(p, label_column, text_column)
        return
    with _open(p) as fh:
        for line in fh:
            if line.strip():
                yield line.rstrip("\r\n")
