"""The one typed error for bad input, with a bounded set of reasons.

Reasons double as Prometheus label values and dead-letter headers, so the set
is closed: add a reason here, never an ad-hoc string elsewhere.
"""
from __future__ import annotations

from typing import Literal, get_args

Reason = Literal[
    "not_json",
    "schema",
    "missing_input",
    "wrong_dimension",
    "non_finite",
    "text_too_long",
    "bad_label",
    "oversized",
    "duplicate_id",
    "wrong_input_kind",
    "too_deep",  # JSON nested past limits.max_json_depth
    "bad_text",  # text or an id that is not encodable UTF-8 (e.g. a lone surrogate)
    "internal_error",  # the record made encoding or learning fail; detail names the exception class
    "too_many_classes",  # a new label past limits.max_classes (the model's memory grows per class)
    "too_many_keys",  # a new key past scaleout.learning.per_key.max_keys
    "key_unavailable",  # the stored state of the event's key cannot be read (damaged)
    "source_over_rate",  # the event's source sent more than influence.max_source_rate events/s (throttled)
    "too_many_ids",  # a forget message on the forget topic with more than forget.max_ids_per_request ids
]
REASONS: tuple[str, ...] = get_args(Reason)


class InvalidEvent(ValueError):
    """Raised for input that cannot be learned from or predicted on.

    ``field`` names the offending field (``""`` for the whole record) and
    ``reason`` is one of :data:`REASONS`; ``detail`` is for humans.
    """

    def __init__(self, reason: Reason, field: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        self.reason: Reason = reason
        self.field = field
        self.detail = detail
        where = f" in field '{field}'" if field else ""
        super().__init__(f"{reason}{where}: {detail}")

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "field": self.field, "detail": self.detail}
