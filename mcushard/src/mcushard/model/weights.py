"""Named weight tensors and seeded random initialisation.

Weights are a plain `dict[str, np.ndarray]` of float32 arrays. Linear weights are stored
`[out_features, in_features]` (llama2.c's and PyTorch's layout), so `y = W @ x`.

Llama names (L = layer index):
  tok_embeddings [vocab, dim]; norm [dim]; output [vocab, dim] (only when not shared)
  layers.L.attention_norm [dim]; layers.L.ffn_norm [dim]
  layers.L.wq [n_heads*head_dim, dim]; layers.L.wk, layers.L.wv [n_kv_heads*head_dim, dim]
  layers.L.wo [dim, n_heads*head_dim]
  layers.L.w1 (gate), layers.L.w3 (up) [hidden_dim, dim]; layers.L.w2 (down) [dim, hidden_dim]
"""

from __future__ import annotations

import numpy as np

from mcushard.errors import McushardError
from mcushard.model.config import BertConfig, LlamaConfig, ModelConfig

Weights = dict[str, np.ndarray]


def llama_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape, in llama2.c file order."""
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings": (cfg.vocab_size, cfg.dim)}
    q_dim = cfg.n_heads * cfg.head_dim
    for layer in range(cfg.n_layers):
        p = f"layers.{layer}."
        shapes |= {
            p + "attention_norm": (cfg.dim,),
            p + "wq": (q_dim, cfg.dim),
            p + "wk": (cfg.kv_dim, cfg.dim),
            p + "wv": (cfg.kv_dim, cfg.dim),
            p + "wo": (cfg.dim, q_dim),
            p + "ffn_norm": (cfg.dim,),
            p + "w1": (cfg.hidden_dim, cfg.dim),
            p + "w2": (cfg.dim, cfg.hidden_dim),
            p + "w3": (cfg.hidden_dim, cfg.dim),
        }
    shapes["norm"] = (cfg.dim,)
    if not cfg.shared_classifier:
        shapes["output"] = (cfg.vocab_size, cfg.dim)
    return shapes


def classifier(cfg: LlamaConfig, weights: Weights) -> np.ndarray:
    """The classifier matrix [vocab, dim]: the embedding when shared."""
    return weights["tok_embeddings"] if cfg.shared_classifier else weights["output"]


def random_llama(cfg: LlamaConfig, seed: int = 0) -> Weights:
    """Seeded random weights with a trained model's scale (std 0.02, norms at 1)."""
    rng = np.random.default_rng(seed)
    weights: Weights = {}
    for name, shape in llama_shapes(cfg).items():
        if name.endswith("norm"):
            weights[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            weights[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    return weights


def random_weights(cfg: ModelConfig, seed: int = 0) -> Weights:
    if isinstance(cfg, LlamaConfig):
        return random_llama(cfg, seed)
    if isinstance(cfg, BertConfig):
        from mcushard.model.bert_weights import random_bert

        return random_bert(cfg, seed)
    raise McushardError(f"unknown model kind {type(cfg).__name__}")


def check_finite(weights: Weights, source: str) -> None:
    for name, array in weights.items():
        if not np.all(np.isfinite(array)):
            raise McushardError(f"{source}: tensor {name!r} holds NaN or infinite values")
