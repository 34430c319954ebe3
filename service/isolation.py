"""Per-record failure isolation: a batch that fails is split until the failing records stand alone.

The learning loop applies each stage (encode, learn, predict) to a whole batch,
because that is what makes it fast. When a stage raises, the cause is nearly
always one record (a text the tokenizer cannot take, values the model cannot
score); bisecting finds it in about log2(batch) extra calls, the rest of the
batch goes through, and only the culprit becomes a dead letter. A record that
fails alone is rejected however it fails, so no record can stop the loop, and a
restart cannot meet the same failure again (its dead letter is committed with
the batch).

``apply`` must change nothing when it raises, or change only what applying it
again cannot double (the encode and predict stages are pure; learning is
applied only after its inputs passed every check the learner would make).
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def isolate(items: Sequence[T], apply: Callable[[Sequence[T]], None],
            reject: Callable[[T, Exception], None]) -> int:
    """Apply ``apply`` to ``items``, bisecting on failure; ``reject`` each item that fails alone.

    Returns how many items were rejected. Only ``Exception`` is caught: an
    interrupt or ``SystemExit`` still stops the loop.
    """
    if not items:
        return 0
    try:
        apply(items)
        return 0
    except Exception as exc:  # noqa: BLE001 - any failure of one record must stay that record's
        if len(items) == 1:
            log.warning("record rejected: %s: %s", type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            reject(items[0], exc)
            return 1
        log.info("a batch of %d failed (%s: %s); bisecting to find the record", len(items), type(exc).__name__, exc)
    mid = len(items) // 2
    return isolate(items[:mid], apply, reject) + isolate(items[mid:], apply, reject)


def describe(exc: BaseException, limit: int = 500) -> str:
    """``Class: message`` for a dead letter's detail, safe to encode."""
    text = f"{type(exc).__name__}: {exc}"
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
