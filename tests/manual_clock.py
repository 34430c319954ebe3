"""A clock the test sets by hand: pass it where code takes ``clock=`` (or patch a module's time with it)."""
from __future__ import annotations


class ManualClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
