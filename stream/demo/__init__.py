"""The embedded demo stream: CLINC150 training utterances ordered by domain.

CLINC150 (Larson et al., 2019) is licensed CC BY 3.0; see ``LICENSE`` and
``ATTRIBUTION.md`` beside this file. ``make_clinc150.py`` rebuilds the file
from the original ``data_full.json`` and ``domains.json``.
"""
from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

DEMO_FILE = "clinc150_by_domain.jsonl.gz"


def demo_path() -> Path:
    """Filesystem path of the packaged demo stream (JSONL, gzip)."""
    with as_file(files(__name__) / DEMO_FILE) as path:
        return Path(path)
