"""A bounded log of continual evaluations, for reports: accuracy per model and segment over time."""
from __future__ import annotations

from typing import Any

import numpy as np


class EvaluationLog:
    """Rows of (events learned, model, segment, accuracy) and drift marks, the oldest dropped past ``max_rows``."""

    def __init__(self, max_rows: int = 20_000, max_marks: int = 1_000) -> None:
        self.max_rows, self.max_marks = max_rows, max_marks
        self.models: list[str] = []
        self._rows: list[tuple[int, int, int, float]] = []
        self.marks: list[tuple[int, str]] = []  # (events learned, signal)

    def add(self, events: int, model: str, accuracies: dict[int, float]) -> None:
        if model not in self.models:
            self.models.append(model)
        m = self.models.index(model)
        self._rows += [(events, m, sid, acc) for sid, acc in accuracies.items() if acc == acc]  # skip NaN
        del self._rows[: max(0, len(self._rows) - self.max_rows)]

    def mark(self, events: int, signal: str) -> None:
        self.marks.append((events, signal))
        del self.marks[: max(0, len(self.marks) - self.max_marks)]

    def series(self, model: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Segment id -> (events, accuracies) for one model."""
        if model not in self.models:
            return {}
        rows = np.array([r for r in self._rows if r[1] == self.models.index(model)], dtype=np.float64)
        if len(rows) == 0:
            return {}
        return {int(sid): (rows[rows[:, 2] == sid, 0], rows[rows[:, 2] == sid, 3]) for sid in np.unique(rows[:, 2])}

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"rows": np.array(self._rows, dtype=np.float64).reshape(-1, 4)}
        return arrays, {"models": list(self.models), "marks": [list(m) for m in self.marks]}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.models = list(meta["models"])
        self._rows = [(int(e), int(m), int(s), float(a)) for e, m, s, a in arrays["rows"].tolist()]
        self.marks = [(int(e), str(k)) for e, k in meta["marks"]]
