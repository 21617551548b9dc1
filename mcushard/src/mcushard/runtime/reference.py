"""fp32 reference decoder for Llama-style models, following llama2.c's `run.c` step by step.

One token per `step` call with a KV cache (autoregressive decoding). RoPE rotates interleaved pairs
(x[2i], x[2i+1]) as llama2.c does.
"""

from __future__ import annotations

import numpy as np

from mcushard.model.config import LlamaConfig
from mcushard.model.weights import Weights, classifier


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    # x: [..., dim], weight: [dim]
    ms = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return (x / np.sqrt(ms + np.float32(eps))) * weight


def rope_tables(cfg: LlamaConfig, positions: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables [positions, head_dim // 2] in fp32 as run.c computes them."""
    positions = cfg.max_seq_len if positions is None else positions
    pair = np.arange(0, cfg.head_dim, 2, dtype=np.float32)  # [head_dim/2]
    freq = (1.0 / np.power(np.float32(cfg.rope_theta), pair / np.float32(cfg.head_dim))).astype(np.float32)
    pos = np.arange(positions, dtype=np.float32)[:, None]  # [positions, 1]
    angle = (pos * freq[None, :]).astype(np.float32)  # [seq, head_dim/2]
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x: [heads, head_dim]; cos, sin: [head_dim/2] for one position."""
    x0, x1 = x[:, 0::2], x[:, 1::2]  # [heads, head_dim/2] each
    out = np.empty_like(x)
    out[:, 0::2] = x0 * cos - x1 * sin
    out[:, 1::2] = x0 * sin + x1 * cos
    return out


def silu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, n_rep: int) -> np.ndarray:
    """One query position against positions 0..T-1.

    q: [n_heads, hd]; k_cache, v_cache: [n_kv_heads, T, hd]; returns [n_heads, hd].
    Query head h reads kv head h // n_rep (GQA).
    """
    n_heads, hd = q.shape
    qg = q.reshape(-1, n_rep, hd)  # [n_kv, n_rep, hd]
    scores = np.einsum("grd,gtd->grt", qg, k_cache) / np.float32(np.sqrt(hd))  # [n_kv, n_rep, T]
    probs = softmax(scores.astype(np.float32))
    return np.einsum("grt,gtd->grd", probs, v_cache).reshape(n_heads, hd).astype(np.float32)


class LlamaFP32:
    """fp32 decoder with a KV cache; `step(token, pos)` returns the logits [vocab].

    The cache holds `cache_len` positions (default and at most the model's `max_seq_len`), so a
    config with a huge context does not allocate it for a short generation.
    """

    def __init__(self, cfg: LlamaConfig, weights: Weights, cache_len: int | None = None) -> None:
        self.cfg = cfg
        self.w = weights
        self.cls = classifier(cfg, weights)  # [vocab, dim]
        cache_len = cfg.max_seq_len if cache_len is None else min(cache_len, cfg.max_seq_len)
        self.cos, self.sin = rope_tables(cfg, cache_len)  # [cache_len, hd/2]
        shape = (cfg.n_layers, cfg.n_kv_heads, cache_len, cfg.head_dim)
        self.k_cache = np.zeros(shape, np.float32)  # [layers, n_kv, seq, hd]
        self.v_cache = np.zeros(shape, np.float32)

    def step(self, token: int, pos: int) -> np.ndarray:
        cfg, w = self.cfg, self.w
        hd, n_rep = cfg.head_dim, cfg.n_heads // cfg.n_kv_heads
        x = w["tok_embeddings"][token].copy()  # [dim]
        for layer in range(cfg.n_layers):
            p = f"layers.{layer}."
            xb = rmsnorm(x, w[p + "attention_norm"], cfg.norm_eps)  # [dim]
            q = (w[p + "wq"] @ xb).reshape(cfg.n_heads, hd)  # [n_heads, hd]
            k = (w[p + "wk"] @ xb).reshape(cfg.n_kv_heads, hd)  # [n_kv, hd]
            v = (w[p + "wv"] @ xb).reshape(cfg.n_kv_heads, hd)  # [n_kv, hd]
            q = apply_rope(q, self.cos[pos], self.sin[pos])
            k = apply_rope(k, self.cos[pos], self.sin[pos])
            self.k_cache[layer, :, pos] = k
            self.v_cache[layer, :, pos] = v
            att = attention(q, self.k_cache[layer, :, : pos + 1], self.v_cache[layer, :, : pos + 1], n_rep)
            x = x + w[p + "wo"] @ att.reshape(-1)  # [dim]
            xb = rmsnorm(x, w[p + "ffn_norm"], cfg.norm_eps)  # [dim]
            h = silu(w[p + "w1"] @ xb) * (w[p + "w3"] @ xb)  # [hidden]
            x = x + w[p + "w2"] @ h  # [dim]
        x = rmsnorm(x, w["norm"], cfg.norm_eps)
        return self.cls @ x  # [vocab]
