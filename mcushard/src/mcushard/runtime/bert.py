"""fp32 reference encoder forward for BERT and MobileBERT (HF transformers semantics, eval mode).

One sequence of S tokens at a time, no batch axis. The steps are cut where a tensor-parallel split
will cut them, so an int8 version and a per-chip split can run the same steps on slices:

  block_inputs      bottleneck projections (replicated: every chip needs the full [S, A])
  attention_partial Q/K/V for a range of heads, softmax(QK^T)V, and the O projection restricted to
                    those heads' input columns -> a partial sum over the O projection's K dimension
  attention_finish  sum of partials + O bias + residual, norm
  ffn_partial       up-projection rows `cols`, activation, down-projection columns `cols`
                    -> a partial sum over the down projection's K dimension
  ffn_finish        sum of partials + down bias + residual, norm
  block_output      MobileBERT's output bottleneck [S, A] -> [S, H]

Summing `attention_partial` over a partition of the heads (or `ffn_partial` over a partition of the
intermediate columns) gives the unsplit result. Widths: H hidden, A attention width (bottleneck B in
MobileBERT), E embedding, I intermediate, hd head_dim, nh heads.
"""

from __future__ import annotations

import math
import re

import numpy as np

from mcushard.errors import McushardError
from mcushard.model.bert_weights import check_bert_weights, ffn_prefixes, hf_family
from mcushard.model.config import BertConfig
from mcushard.model.weights import Weights
from mcushard.runtime.reference import softmax

TORCH_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which HF MobileBERT leaves on two norms
_MOBILEBERT_DEFAULT_EPS_NORMS = re.compile(r"embeddings\.LayerNorm|encoder\.layer\.\d+\.output\.LayerNorm")


# --- element-wise and row-wise operations -------------------------------------------------------


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """x: [S, in]; weight: [out, in] (PyTorch layout); bias: [out] or None -> [S, out]."""
    y = x @ weight.T  # [S, out]
    return y if bias is None else y + bias


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """x: [S, W]; gamma, beta: [W] -> [S, W]; biased variance, as torch."""
    mean = np.mean(x, axis=-1, keepdims=True)  # [S, 1]
    centred = x - mean  # [S, W]
    var = np.mean(centred * centred, axis=-1, keepdims=True)  # [S, 1]
    return centred / np.sqrt(var + np.float32(eps)) * gamma + beta


def no_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """MobileBERT's NoNorm: x: [S, W]; gamma, beta: [W] -> [S, W] = x * gamma + beta."""
    return x * gamma + beta


_erf = np.frompyfunc(math.erf, 1, 1)  # exact erf from the standard library (numpy has none)


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU, HF's "gelu": x: [...] -> [...] float32."""
    x64 = x.astype(np.float64)  # [...]
    return (0.5 * x64 * (1.0 + _erf(x64 / math.sqrt(2.0)).astype(np.float64))).astype(np.float32)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0.0))


def activation(cfg: BertConfig, x: np.ndarray) -> np.ndarray:
    """The FFN activation `cfg.hidden_act`: x: [S, I'] -> [S, I']."""
    return gelu(x) if cfg.hidden_act == "gelu" else relu(x)


def norm_eps(cfg: BertConfig, norm_name: str) -> float:
    """The epsilon HF uses for a norm: MobileBERT builds its embedding norm and each block's final
    `output.LayerNorm` without passing layer_norm_eps, so those two keep torch's 1e-5."""
    if hf_family(cfg) == "mobilebert" and _MOBILEBERT_DEFAULT_EPS_NORMS.fullmatch(norm_name):
        return TORCH_LAYER_NORM_EPS
    return cfg.layer_norm_eps


def normalize(cfg: BertConfig, w: Weights, norm_name: str, x: np.ndarray) -> np.ndarray:
    """The norm called `norm_name` (e.g. "embeddings.LayerNorm") applied to x: [S, W] -> [S, W]."""
    gamma, beta = w[norm_name + ".weight"], w[norm_name + ".bias"]  # [W], [W]
    if cfg.normalization == "no_norm":
        return no_norm(x, gamma, beta)
    return layer_norm(x, gamma, beta, norm_eps(cfg, norm_name))


def dense(w: Weights, name: str, x: np.ndarray, rows: slice = slice(None), cols: slice = slice(None),
          bias: bool = True) -> np.ndarray:
    """The linear layer `name` restricted to output rows `rows` and input columns `cols`.

    x: [S, in restricted to cols] -> [S, out restricted to rows]; bias only when asked (a partial sum
    over `cols` must leave the bias to whoever adds the partials up).
    """
    weight = w[name + ".weight"][rows, cols]  # [out', in']
    return linear(x, weight, w[name + ".bias"][rows] if bias else None)


# --- embeddings and masks ---------------------------------------------------------------------


def check_inputs(cfg: BertConfig, input_ids, token_type_ids=None, attention_mask=None):
    """Validate and convert the inputs: returns (ids [S] int64, types [S] int64, mask [S] float32)."""
    ids = np.asarray(input_ids)
    what = f"model {cfg.name!r}"
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise McushardError(f"{what}: input_ids must be a non-empty 1-D list of integers, got shape {ids.shape}")
    if ids.size > cfg.max_position_embeddings:
        raise McushardError(f"{what}: {ids.size} tokens exceed max_position_embeddings {cfg.max_position_embeddings}")
    if ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise McushardError(f"{what}: token ids must lie in [0, {cfg.vocab_size}), got {ids.min()}..{ids.max()}")
    types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
    if types.shape != ids.shape or not np.issubdtype(types.dtype, np.integer):
        raise McushardError(f"{what}: token_type_ids must be {ids.size} integers, got shape {types.shape}")
    if types.min() < 0 or types.max() >= cfg.type_vocab_size:
        raise McushardError(f"{what}: token_type_ids must lie in [0, {cfg.type_vocab_size})")
    mask = np.ones(ids.shape, np.float32) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape or not np.all((mask == 0) | (mask == 1)):
        raise McushardError(f"{what}: attention_mask must be {ids.size} values of 0 or 1")
    return ids.astype(np.int64), types.astype(np.int64), mask.astype(np.float32)


def mask_bias(attention_mask: np.ndarray) -> np.ndarray:
    """attention_mask: [S] of 1 (attend) / 0 (padding) -> additive score bias [S] over keys.

    HF adds the most negative float32 (not -inf), so a row with every key masked stays finite.
    """
    return (np.float32(1.0) - attention_mask) * np.finfo(np.float32).min  # [S]


def trigram(embeds: np.ndarray) -> np.ndarray:
    """MobileBERT's trigram input: embeds [S, E] -> [S, 3E] = [emb(t+1), emb(t), emb(t-1)], zero-padded."""
    zero = np.zeros_like(embeds[:1])  # [1, E]
    following = np.concatenate([embeds[1:], zero])  # [S, E]
    preceding = np.concatenate([zero, embeds[:-1]])  # [S, E]
    return np.concatenate([following, embeds, preceding], axis=1)  # [S, 3E]


def embed(cfg: BertConfig, w: Weights, ids: np.ndarray, types: np.ndarray) -> np.ndarray:
    """ids, types: [S] -> block input [S, H]."""
    x = w["embeddings.word_embeddings.weight"][ids]  # [S, E]
    if cfg.trigram_input:
        x = trigram(x)  # [S, 3E]
    if cfg.trigram_input or cfg.emb_size != cfg.hidden_size:
        x = dense(w, "embeddings.embedding_transformation", x)  # [S, H]
    positions = w["embeddings.position_embeddings.weight"][: ids.size]  # [S, H]
    x = x + positions + w["embeddings.token_type_embeddings.weight"][types]  # [S, H]
    return normalize(cfg, w, "embeddings.LayerNorm", x)  # [S, H]


# --- one encoder block, step by step ----------------------------------------------------------


def block_inputs(cfg: BertConfig, w: Weights, layer: int, x: np.ndarray):
    """x: [S, H] -> (qk_in [S, A], v_in [S, H], residual [S, A]) as HF's Bottleneck returns them.

    Q and K read qk_in, V reads v_in (the block input), and `residual` is what the attention output
    is added to. Without a bottleneck all three are x.
    """
    if not cfg.use_bottleneck:
        return x, x, x
    p = f"encoder.layer.{layer}.bottleneck."
    residual = normalize(cfg, w, p + "input.LayerNorm", dense(w, p + "input.dense", x))  # [S, A]
    if not cfg.key_query_shared_bottleneck:  # only valid when A == H (checked by bert_shapes)
        return x, x, residual
    qk_in = normalize(cfg, w, p + "attention.LayerNorm", dense(w, p + "attention.dense", x))  # [S, A]
    return qk_in, x, residual


def head_rows(cfg: BertConfig, heads: range) -> slice:
    """Rows of Q/K/V (and input columns of O) that belong to a contiguous range of heads."""
    if heads.step != 1 or not 0 <= heads.start <= heads.stop <= cfg.num_heads:
        raise McushardError(f"model {cfg.name!r}: heads {heads} are not a contiguous range in 0..{cfg.num_heads}")
    return slice(heads.start * cfg.head_dim, heads.stop * cfg.head_dim)


def attention_heads(q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """q, k, v: [nh', S, hd]; bias: [S] over keys -> context [nh', S, hd]."""
    scale = np.float32(1.0 / math.sqrt(q.shape[-1]))
    scores = (q @ k.transpose(0, 2, 1)) * scale + bias  # [nh', S, S]
    return softmax(scores) @ v  # [nh', S, hd]


def split_heads(x: np.ndarray, n_heads: int) -> np.ndarray:
    """[S, nh'*hd] -> [nh', S, hd]."""
    return x.reshape(x.shape[0], n_heads, -1).transpose(1, 0, 2)


def attention_partial(cfg: BertConfig, w: Weights, layer: int, qk_in: np.ndarray, v_in: np.ndarray,
                      bias: np.ndarray, heads: range | None = None) -> np.ndarray:
    """Self-attention of `heads` (all by default) through the O projection, without O's bias.

    qk_in: [S, A]; v_in: [S, H]; bias: [S] -> partial O output [S, A]. Sums over disjoint head
    ranges add up to the full O projection (its K dimension is the concatenated heads).
    """
    heads = range(cfg.num_heads) if heads is None else heads
    rows = head_rows(cfg, heads)
    p = f"encoder.layer.{layer}.attention."
    q = split_heads(dense(w, p + "self.query", qk_in, rows=rows), len(heads))  # [nh', S, hd]
    k = split_heads(dense(w, p + "self.key", qk_in, rows=rows), len(heads))  # [nh', S, hd]
    v = split_heads(dense(w, p + "self.value", v_in, rows=rows), len(heads))  # [nh', S, hd]
    context = attention_heads(q, k, v, bias)  # [nh', S, hd]
    context = context.transpose(1, 0, 2).reshape(qk_in.shape[0], -1)  # [S, nh'*hd]
    return dense(w, p + "output.dense", context, cols=rows, bias=False)  # [S, A]


def attention_finish(cfg: BertConfig, w: Weights, layer: int, o_sum: np.ndarray,
                     residual: np.ndarray) -> np.ndarray:
    """o_sum: [S, A] (all heads' partials added) + O bias + residual [S, A] -> normed [S, A]."""
    p = f"encoder.layer.{layer}.attention.output."
    return normalize(cfg, w, p + "LayerNorm", o_sum + w[p + "dense.bias"] + residual)  # [S, A]


def ffn_partial(cfg: BertConfig, w: Weights, up: str, down: str, x: np.ndarray,
                cols: slice = slice(None)) -> np.ndarray:
    """FFN `up`/`down` (prefixes from `ffn_prefixes`) over intermediate columns `cols`, no down bias.

    x: [S, A] -> partial down-projection output [S, A]; disjoint `cols` add up to the full FFN.
    """
    hidden = activation(cfg, dense(w, up + ".dense", x, rows=cols))  # [S, I']
    return dense(w, down + ".dense", hidden, cols=cols, bias=False)  # [S, A]


def ffn_finish(cfg: BertConfig, w: Weights, down: str, down_sum: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """down_sum: [S, A] (partials added) + down bias + residual [S, A] -> normed [S, A]."""
    return normalize(cfg, w, down + ".LayerNorm", down_sum + w[down + ".dense.bias"] + residual)  # [S, A]


def block_output(cfg: BertConfig, w: Weights, layer: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """MobileBERT's output bottleneck: y: [S, A], block input x: [S, H] -> [S, H]. Identity for BERT."""
    if not cfg.use_bottleneck:
        return y
    p = f"encoder.layer.{layer}.output.bottleneck."
    return normalize(cfg, w, p + "LayerNorm", dense(w, p + "dense", y) + x)  # [S, H]


def bert_layer(cfg: BertConfig, w: Weights, layer: int, x: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """One encoder block, unsplit: x: [S, H]; bias: [S] -> [S, H]."""
    qk_in, v_in, residual = block_inputs(cfg, w, layer, x)  # [S, A], [S, H], [S, A]
    o_sum = attention_partial(cfg, w, layer, qk_in, v_in, bias)  # [S, A]
    y = attention_finish(cfg, w, layer, o_sum, residual)  # [S, A]
    for up, down in ffn_prefixes(cfg, layer):
        y = ffn_finish(cfg, w, down, ffn_partial(cfg, w, up, down, y), y)  # [S, A]
    return block_output(cfg, w, layer, y, x)  # [S, H]


def bert_forward(cfg: BertConfig, weights: Weights, input_ids, token_type_ids=None,
                 attention_mask=None) -> np.ndarray:
    """Encoder forward: input_ids [S] (token_type_ids [S], attention_mask [S] of 0/1 optional)
    -> last hidden states [S, H] float32, as HF's `last_hidden_state[0]`."""
    check_bert_weights(cfg, weights, f"weights of {cfg.name!r}")
    ids, types, mask = check_inputs(cfg, input_ids, token_type_ids, attention_mask)  # [S] each
    bias = mask_bias(mask)  # [S]
    x = embed(cfg, weights, ids, types)  # [S, H]
    for layer in range(cfg.num_layers):
        x = bert_layer(cfg, weights, layer, x, bias)  # [S, H]
    return x.astype(np.float32, copy=False)
