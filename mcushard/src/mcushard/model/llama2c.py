"""Reader for llama2.c's legacy checkpoint format.

Layout: seven little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
seq_len), then fp32 tensors: the embedding, each per-layer kind of `FILE_ORDER` stacked over layers, the final norm, then the RoPE tables
(freq_cis_real, freq_cis_imag: seq_len * head_dim / 2 each, unused here: RoPE is recomputed), then
the classifier [vocab, dim] when vocab_size in the header is negative (an unshared classifier).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
    floats = sum(int(np.prod(s)) for s in llama_shapes(cfg).values())
    floats += cfg.max_seq_len * cfg.head_dim  # the two RoPE tables of seq_len * head_dim / 2
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
