"""The numpy MiniLM embedder against reference embeddings from the real sentence-transformers pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aura.embedding import MODEL_FILES, TextEmbedder, default_embedder, default_model_dir

REFERENCE = json.loads((Path(__file__).parent.parent / "fixtures" / "minilm_reference.json").read_text())
SENTENCES: list[str] = REFERENCE["sentences"]
EXPECTED = np.asarray(REFERENCE["embeddings"], dtype=np.float32)


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return default_embedder()


def test_reference_covers_truncation_and_short_texts() -> None:
    assert max(REFERENCE["untruncated_tokens"]) > 256
    assert min(REFERENCE["untruncated_tokens"]) <= 5


def test_embed_matches_sentence_transformers(embedder: TextEmbedder) -> None:
    # Batches of 3 in token-count order: every batch pads, the last one a 37-token text to the 256-token limit.
    got = embedder.embed(SENTENCES, batch_size=3)
    assert got.dtype == np.float32
    assert got.shape == (len(SENTENCES), 384)
    assert np.min(np.sum(got * EXPECTED, axis=1)) > 0.9999
    assert np.max(np.abs(got - EXPECTED)) < 5e-6


@pytest.mark.parametrize("row", range(len(SENTENCES)))
def test_embed_query_matches_sentence_transformers(embedder: TextEmbedder, row: int) -> None:
    got = embedder.embed_query(SENTENCES[row])
    assert got.dtype == np.float32
    assert got.shape == (384,)
    assert float(got @ EXPECTED[row]) > 0.9999
    assert np.max(np.abs(got - EXPECTED[row])) < 5e-6


def test_embed_keeps_input_order_and_unit_norm(embedder: TextEmbedder) -> None:
    order = [5, 0, 6, 3, 0]
    got = embedder.embed([SENTENCES[i] for i in order], batch_size=2)
    np.testing.assert_allclose(got, EXPECTED[order], atol=5e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_embed_of_nothing_is_empty(embedder: TextEmbedder) -> None:
    got = embedder.embed([])
    assert got.shape == (0, 384)
    assert got.dtype == np.float32


def test_model_identity(embedder: TextEmbedder) -> None:
    assert embedder.dim == 384
    assert embedder.model_name == "sentence-transformers/all-MiniLM-L6-v2"
    assert default_embedder() is embedder


def test_load_from_explicit_directory() -> None:
    explicit = TextEmbedder.load(str(default_model_dir()))
    np.testing.assert_allclose(explicit.embed_query(SENTENCES[1]), EXPECTED[1], atol=5e-6)


@pytest.mark.parametrize(
    ("texts", "batch_size", "error", "match"),
    [
        ("one text", 32, TypeError, "use embed_query"),
        (["a"], 0, ValueError, "batch_size must be at least 1, got 0"),
    ],
)
def test_embed_rejects_invalid_arguments(
    embedder: TextEmbedder, texts: object, batch_size: int, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        embedder.embed(texts, batch_size=batch_size)  # type: ignore[arg-type]


@pytest.mark.parametrize("missing", MODEL_FILES)
def test_load_names_a_missing_model_file(tmp_path: Path, missing: str) -> None:
    with pytest.raises(FileNotFoundError, match=f"lacks {missing}"):
        TextEmbedder.load(_model_dir(tmp_path, {missing: None}))


@pytest.mark.parametrize(
    ("file_name", "text", "match"),
    [
        ("config.json", '{"hidden_act": "relu", "hidden_size": 384}', "erf GELU"),
        ("config.json", "{not json", "is not valid JSON"),
        ("1_Pooling/config.json", '{"pooling_mode_cls_token": true}', "mean pooling only"),
    ],
)
def test_load_rejects_a_different_model(tmp_path: Path, file_name: str, text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TextEmbedder.load(_model_dir(tmp_path, {file_name: text}))


def _model_dir(tmp_path: Path, changes: dict[str, str | None]) -> Path:
    """Link the packaged model files into tmp_path, leaving out (None) or rewriting the files named in `changes`."""
    for name in MODEL_FILES:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name not in changes:
            target.symlink_to(default_model_dir() / name)
        elif changes[name] is not None:
            target.write_text(changes[name])
    return tmp_path
