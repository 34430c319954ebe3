"""What a benchmark over one stream, run in process, is told (``--forget``, ``--poison``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunOptions:
    out: Path
    seed: int = 0
    quick: bool = False  # at most 3,000 training events
    device: str = "cpu"
