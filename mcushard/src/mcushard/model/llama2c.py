"""Reader for llama2.c's legacy checkpoint format.

Layout: seven little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
seq_len), then fp32 tensors: the embedding, each per-layer kind of `FILE_ORDER` stacked over
layers, the final norm, then the RoPE tables (freq_cis_real, freq_cis_imag: seq_len * head_dim / 2
each, unused here: RoPE is recomputed), then the classifier [vocab, dim] when vocab_size in the
header is negative (an unshared classifier). The format has no field for norm_eps or rope_theta:
llama2.c fixes them at 1e-5 and 10000.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mcushard.atomic import write_bytes_atomic
from mcushard.errors import McushardError
from mcushard.model.config import LlamaConfig
from mcushard.model.weights import Weights, check_finite, llama_shapes

HEADER_BYTES = 7 * 4
# per-layer tensors are stored kind by kind, each kind for all layers
FILE_ORDER = ("attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3")


def read_header(path: Path, raw: bytes) -> LlamaConfig:
    if len(raw) < HEADER_BYTES:
        raise McushardError(f"{path}: truncated: {len(raw)} bytes, shorter than the 28-byte header")
    dim, hidden, layers, heads, kv_heads, vocab, seq = (int(v) for v in np.frombuffer(raw[:HEADER_BYTES], "<i4"))
    try:
        return LlamaConfig(
            dim=dim, hidden_dim=hidden, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads,
            vocab_size=abs(vocab), max_seq_len=seq, shared_classifier=vocab > 0, name=path.stem,
        )
    except McushardError as exc:
        raise McushardError(f"{path}: bad header: {exc}") from None


def expected_bytes(cfg: LlamaConfig) -> int:
    """File size the header implies, computed from one layer's shapes so that a forged header with
    billions of layers costs nothing to reject."""
    one_layer = llama_shapes(cfg.replace(n_layers=1))
    per_layer = sum(math.prod(s) for n, s in one_layer.items() if n.startswith("layers."))
    other = sum(math.prod(s) for n, s in one_layer.items() if not n.startswith("layers."))
    floats = other + cfg.n_layers * per_layer + cfg.max_seq_len * cfg.head_dim  # + the RoPE tables
    return HEADER_BYTES + 4 * floats


def load_llama2c(path: str | Path) -> tuple[LlamaConfig, Weights]:
    """Read a llama2.c checkpoint; every inconsistency is a McushardError naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise McushardError(f"{path}: cannot read: {exc.strerror}") from None
    cfg = read_header(path, raw)
    need = expected_bytes(cfg)
    if len(raw) != need:
        what = "truncated" if len(raw) < need else "has trailing bytes"
        raise McushardError(
            f"{path}: {what}: {len(raw)} bytes, the header (dim {cfg.dim}, hidden {cfg.hidden_dim}, "
            f"{cfg.n_layers} layers, vocab {cfg.vocab_size}) needs {need}"
        )
    data = np.frombuffer(raw, dtype="<f4", offset=HEADER_BYTES)
    shapes = llama_shapes(cfg)
    weights: Weights = {}
    offset = 0

    def take(name: str) -> None:
        nonlocal offset
        size = int(np.prod(shapes[name]))
        weights[name] = data[offset:offset + size].reshape(shapes[name]).astype(np.float32)
        offset += size

    take("tok_embeddings")
    for kind in FILE_ORDER:  # each kind for every layer in turn
        for layer in range(cfg.n_layers):
            take(f"layers.{layer}.{kind}")
    take("norm")
    offset += cfg.max_seq_len * cfg.head_dim  # skip the RoPE tables
    if "output" in shapes:
        take("output")
    check_finite(weights, str(path))
    return cfg, weights


def write_llama2c(path: str | Path, cfg: LlamaConfig, weights: Weights) -> None:
    """Write a llama2.c legacy checkpoint atomically (temp file + rename); inverse of `load_llama2c`.

    An unshared classifier is written after the RoPE tables and flagged by a negative vocab_size.
    """
    path = Path(path)
    if cfg.norm_eps != 1e-5 or cfg.rope_theta != 10000.0:
        raise McushardError(
            f"{path}: the llama2.c format fixes norm_eps 1e-5 and rope_theta 10000, "
            f"the model has {cfg.norm_eps} and {cfg.rope_theta}"
        )
    shapes = llama_shapes(cfg)
    for name, shape in shapes.items():
        if name not in weights or tuple(weights[name].shape) != shape:
            got = "missing" if name not in weights else f"shape {tuple(weights[name].shape)}"
            raise McushardError(f"{path}: cannot write tensor {name!r}: {got}, expected {shape}")
    from mcushard.runtime.reference import rope_tables

    cos, sin = rope_tables(cfg)  # [seq, head_dim/2] each
    vocab = cfg.vocab_size if cfg.shared_classifier else -cfg.vocab_size
    header = np.array([cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, vocab,
                       cfg.max_seq_len], dtype="<i4")
    order = ["tok_embeddings"]
    order += [f"layers.{layer}.{kind}" for kind in FILE_ORDER for layer in range(cfg.n_layers)]
    order += ["norm"]
    parts = [header.tobytes()] + [np.ascontiguousarray(weights[n], dtype="<f4").tobytes() for n in order]
    parts += [cos.astype("<f4").tobytes(), sin.astype("<f4").tobytes()]
    if not cfg.shared_classifier:
        parts.append(np.ascontiguousarray(weights["output"], dtype="<f4").tobytes())
    write_bytes_atomic(path, b"".join(parts))

