"""What the fault bench sends: valid events with separate delayed labels, and bad records.

Pure data, no I/O but reading the packaged demo stream. Each bad record names the dead-letter
reasons that describe it (``lifelong.reason`` must be one of them); a record the daemon learns,
drops silently, or rejects for another reason counts against the target. Reasons come from the
closed set in ``stream/errors.py``.
"""
from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from typing import Literal

Role = Literal["events", "labels"]

DIM = 4
CENTRES = [[3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]]


@dataclass(frozen=True)
class Valid:
    """An event without its label (sent on the events topic) and the label sent apart."""

    id: str
    value: bytes  # the event record, no label in it
    label: str

    def label_record(self) -> bytes:
        return json.dumps({"id": self.id, "label": self.label}).encode()

    def labelled_record(self) -> bytes:
        event = json.loads(self.value)
        return json.dumps({**event, "label": self.label}).encode()


@dataclass(frozen=True)
class Bad:
    kind: str
    role: Role
    value: bytes | None  # None: a record with a null value (a tombstone)
    reasons: frozenset[str]


def feature_events(n: int, prefix: str, seed: int = 0) -> list[Valid]:
    """Events from 3 separable classes in DIM dimensions."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        c = rng.randrange(3)
        features = [round(x + rng.gauss(0, 0.5), 4) for x in CENTRES[c]]
        out.append(Valid(f"{prefix}-{i}", json.dumps({"id": f"{prefix}-{i}", "features": features}).encode(),
                         f"class-{c}"))
    return out


def text_events(n: int, prefix: str, seed: int = 0) -> list[Valid]:
    """Utterances of the packaged CLINC150 demo stream (in its order, from a seeded offset)."""
    from ..stream.demo import demo_path

    with gzip.open(demo_path(), "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    start = random.Random(seed).randrange(len(rows))
    out = []
    for i in range(n):
        row = rows[(start + i) % len(rows)]
        event_id = f"{prefix}-{i}"
        out.append(Valid(event_id, json.dumps({"id": event_id, "text": row["text"]}).encode(), str(row["label"])))
    return out


def valid_events(kind: str, n: int, prefix: str, seed: int = 0) -> list[Valid]:
    return text_events(n, prefix, seed) if kind == "text" else feature_events(n, prefix, seed)


def _j(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _r(*reasons: str) -> frozenset[str]:
    return frozenset(reasons)


def bad_events(input_kind: str, big_bytes: int = 2_000_000) -> list[Bad]:
    """Bad records for the events topic of a daemon that learns ``input_kind`` (text or DIM features)."""
    text = input_kind == "text"
    good = {"text": "what is my balance"} if text else {"features": [1.0, 0.0, 0.0, 0.0]}
    raw_good = '"text": "what is my balance"' if text else '"features": [1.0, 0.0, 0.0, 0.0]'
    other = {"features": [1.0, 0.0, 0.0, 0.0]} if text else {"text": "what is my balance"}
    bad_kind = _r("wrong_input_kind")

    def ev(i: str, **extra: object) -> bytes:
        return _j({"id": f"bad-{i}", **good, **extra})

    def feats(i: str, raw_values: str) -> bytes:
        # Features as raw JSON text: NaN, Infinity and 1e400 are not what json.dumps writes.
        return f'{{"id": "bad-{i}", "features": [{raw_values}]}}'.encode()

    non_finite = _r("non_finite", "wrong_input_kind") if text else _r("non_finite")
    records = [
        ("not_json", b"this is { not json", _r("not_json")),
        ("empty", b"", _r("not_json")),
        ("null_value", None, _r("not_json")),
        ("whitespace_only", b" \n\t  ", _r("not_json")),
        ("bom", b"\xef\xbb\xbf" + ev("bom"), _r("not_json")),
        ("trailing_garbage", ev("tg") + b" }{ trailing", _r("not_json")),
        ("invalid_utf8", b'{"id": "bad-u8", "text": "caf\xe9 \xff\xfe"}', _r("not_json", "bad_text")),
        ("json_number", b"42", _r("schema")),
        ("json_string", b'"just a string"', _r("schema")),
        ("json_null", b"null", _r("schema")),
        ("json_array", b'[{"id": "bad-arr", "text": "x"}]', _r("schema")),
        ("nested_10000", b'{"id": "bad-deep", "features": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
         _r("too_deep")),
        ("nested_past_limit", b'{"id": "bad-deep65", "extra": ' + b"[" * 65 + b"]" * 65 + b"}", _r("too_deep")),
        ("lone_surrogate_text", b'{"id": "bad-ls-text", "text": "wake \\ud800"}', _r("bad_text")),
        ("lone_surrogate_id", b'{"id": "bad-\\udc00", ' + raw_good.encode() + b"}", _r("bad_text")),
        ("lone_surrogate_label", b'{"id": "bad-ls-label", ' + raw_good.encode() + b', "label": "\\udfff"}',
         _r("bad_text", "bad_label")),
        ("record_2mb", ev("2mb", segment="x" * big_bytes), _r("oversized")),
        ("nan", feats("nan", "1, NaN, 0, 0"), non_finite),
        ("infinity", feats("inf", "1, Infinity, 0, 0"), non_finite),
        ("overflow_1e400", feats("1e400", "1e400, 0, 0, 0"), non_finite),
        ("beyond_float32", feats("1e39", "1e39, 0, 0, 0"), non_finite),
        ("huge_int_feature", feats("bigint", str(10 ** 40) + ", 0, 0, 0"), non_finite | _r("schema")),
        ("int_5000_digits_id", b'{"id": ' + b"9" * 5000 + b", " + raw_good.encode() + b"}",
         _r("schema", "not_json")),
        ("features_strings", _j({"id": "bad-fstr", "features": ["a", "b", "c", "d"]}),
         _r("schema", "wrong_input_kind")),
        ("features_nested", _j({"id": "bad-fnest", "features": [[1], [2], [3], [4]]}),
         _r("schema", "wrong_input_kind")),
        ("too_many_features", _j({"id": "bad-fwide", "features": [0.5] * 70_000}),
         _r("wrong_dimension", "wrong_input_kind")),
        ("wrong_kind", _j({"id": "bad-kind", **other}), bad_kind),
        ("text_and_features", _j({"id": "bad-both", "text": "x", "features": [1.0, 0.0, 0.0, 0.0]}),
         _r("missing_input")),
        ("no_input", _j({"id": "bad-noinput", "label": "class-0"}), _r("missing_input")),
        ("missing_id", _j(good), _r("schema")),
        ("empty_id", _j({"id": "", **good}), _r("schema")),
        ("null_id", _j({"id": None, **good}), _r("schema")),
        ("bool_id", _j({"id": True, **good}), _r("schema")),
        ("float_id", _j({"id": 1.5, **good}), _r("schema")),
        ("bool_label", ev("bool-label", label=True), _r("bad_label")),
        ("float_label", ev("float-label", label=1.5), _r("bad_label")),
        ("object_label", ev("obj-label", label={"a": 1}), _r("bad_label")),
        ("id_100kb", _j({"id": "i" * 100_000, **good}), _r("schema")),
        ("label_100kb", ev("big-label", label="l" * 100_000), _r("bad_label")),
        ("extra_keys", ev("extra", colour="red"), _r("schema")),
        ("duplicate_keys", b'{"id": "bad-dup-a", "id": "bad-dup-b", ' + raw_good.encode() + b"}",
         _r("schema", "not_json")),
    ]
    if text:
        records.append(("text_too_long", ev("long", text="word " * 5000), _r("text_too_long")))
    else:
        records.append(("wrong_dimension", _j({"id": "bad-dim", "features": [1.0, 2.0, 3.0]}), _r("wrong_dimension")))
    return [Bad(kind, "events", value, reasons) for kind, value, reasons in records]


def bad_labels(big_bytes: int = 2_000_000) -> list[Bad]:
    """Bad records for the labels topic ({id, label} messages)."""
    records = [
        ("not_json", b"label: cat", _r("not_json")),
        ("empty", b"", _r("not_json")),
        ("null_value", None, _r("not_json")),
        ("whitespace_only", b"\r\n ", _r("not_json")),
        ("bom", b'\xef\xbb\xbf{"id": "bl-bom", "label": "a"}', _r("not_json")),
        ("trailing_garbage", b'{"id": "bl-tg", "label": "a"} x', _r("not_json")),
        ("invalid_utf8", b'{"id": "bl-\xff", "label": "a"}', _r("not_json", "bad_text")),
        ("json_number", b"7", _r("schema")),
        ("json_array", b'[{"id": "bl-arr", "label": "a"}]', _r("schema")),
        ("json_null", b"null", _r("schema")),
        ("nested_10000", b'{"id": "bl-deep", "label": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", _r("too_deep")),
        ("lone_surrogate_id", b'{"id": "bl-\\ud800", "label": "a"}', _r("bad_text")),
        ("lone_surrogate_label", b'{"id": "bl-ls", "label": "wake \\udbff"}', _r("bad_text", "bad_label")),
        ("record_2mb", _j({"id": "bl-2mb", "label": "a", "pad": "p" * big_bytes}), _r("oversized")),
        ("id_100kb", _j({"id": "i" * 100_000, "label": "a"}), _r("schema")),
        ("label_100kb", _j({"id": "bl-biglabel", "label": "l" * 100_000}), _r("bad_label")),
        ("int_5000_digits_id", b'{"id": ' + b"9" * 5000 + b', "label": "a"}', _r("schema", "not_json")),
        ("missing_id", _j({"label": "a"}), _r("schema")),
        ("missing_label", _j({"id": "bl-nolabel"}), _r("bad_label")),
        ("empty_id", _j({"id": "", "label": "a"}), _r("schema")),
        ("bool_id", _j({"id": False, "label": "a"}), _r("schema")),
        ("bool_label", _j({"id": "bl-bool", "label": True}), _r("bad_label")),
        ("null_label", _j({"id": "bl-null", "label": None}), _r("bad_label")),
        ("float_label", _j({"id": "bl-float", "label": 2.5}), _r("bad_label")),
        ("object_label", _j({"id": "bl-obj", "label": {"x": 1}}), _r("bad_label")),
        ("extra_keys", _j({"id": "bl-extra", "label": "a", "score": 1}), _r("schema")),
        ("duplicate_keys", b'{"id": "bl-dup", "label": "a", "label": "b"}', _r("schema", "not_json")),
    ]
    return [Bad(kind, "labels", value, reasons) for kind, value, reasons in records]


# -- HTTP --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HttpCase:
    name: str
    path: str
    body: bytes
    content_type: str = "application/json"


def http_cases(input_kind: str, max_instances: int) -> list[HttpCase]:
    """Bad requests for /v1/predict and /v1/feedback; any 5xx answer (or a dropped connection) is a failure."""
    inst = '{"text": "what is my balance"}' if input_kind == "text" else '{"features": [1, 0, 0, 0]}'
    p, f = "/v1/predict", "/v1/feedback"

    def pred(instances: str) -> bytes:
        return f'{{"instances": [{instances}]}}'.encode()

    cases = [
        (p, "lone_surrogate_text", pred('{"text": "wake \\ud800"}')),
        (p, "lone_surrogate_key", b'{"instances": [{"te\\udc00xt": "a"}]}'),
        (p, "nested_10000", b'{"instances": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
        (p, "non_utf8_body", b'{"instances": [{"text": "\xff\xfe"}]}'),
        (p, "not_json", b"instances=1"),
        (p, "empty_body", b""),
        (p, "json_scalar", b"3"),
        (p, "instances_not_list", b'{"instances": {"text": "x"}}'),
        (p, "instances_empty", b'{"instances": []}'),
        (p, "too_many_instances", pred(",".join([inst] * (max_instances + 1)))),
        (p, "features_strings", pred('{"features": ["a", "b", "c", "d"]}')),
        (p, "features_nan", pred('{"features": [NaN, 0, 0, 0]}')),
        (p, "features_1e400", pred('{"features": [1e400, 0, 0, 0]}')),
        (p, "features_beyond_float32", pred('{"features": [1e39, 0, 0, 0]}')),
        (p, "features_bool", pred('{"features": [true, false, true, false]}')),
        (p, "int_5000_digits", pred('{"features": [' + "9" * 5000 + ", 0, 0, 0]}")),
        (p, "wrong_dimension", pred('{"features": [1, 2, 3]}')),
        (p, "wrong_kind", pred('{"features": [1, 0, 0, 0]}' if input_kind == "text" else '{"text": "x"}')),
        (p, "text_huge", pred(json.dumps({"text": "w " * 200_000}))),
        (p, "body_2mb", pred(json.dumps({"text": "x" * 2_000_000}))),
        (p, "bom", b"\xef\xbb\xbf" + pred(inst)),
        (p, "trailing_garbage", pred(inst) + b"]]"),
        (p, "extra_keys", b'{"instances": [' + inst.encode() + b'], "extra": 1}'),
        (f, "lone_surrogate_id", b'{"id": "\\ud800", "label": "a"}'),
        (f, "lone_surrogate_label", b'{"id": "h-1", "label": "\\udfff"}'),
        (f, "id_100kb", json.dumps({"id": "i" * 100_000, "label": "a"}).encode()),
        (f, "label_100kb", json.dumps({"id": "h-2", "label": "l" * 100_000}).encode()),
        (f, "bool_id", b'{"id": true, "label": "a"}'),
        (f, "object_label", b'{"id": "h-3", "label": {"x": 1}}'),
        (f, "missing_label", b'{"id": "h-4"}'),
        (f, "nested_10000", b'{"id": "h-5", "label": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
        (f, "non_utf8_body", b'{"id": "h-\xff", "label": "a"}'),
        (f, "int_5000_digits", b'{"id": ' + b"9" * 5000 + b', "label": "a"}'),
        (f, "extra_keys", b'{"id": "h-6", "label": "a", "x": 1}'),
        (f, "empty_body", b""),
    ]
    out = [HttpCase(f"{path.rsplit('/', 1)[1]}:{name}", path, body) for path, name, body in cases]
    out.append(HttpCase("predict:wrong_content_type", p, pred(inst), "text/plain"))
    return out
