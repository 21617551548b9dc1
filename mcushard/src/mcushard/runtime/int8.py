"""Integer Llama decode as an MCU runs it: int8 weights, 8/12/16-bit activations (int8/int16 on the
MCU), exact integer accumulation, requantisation.

What is integer and what is not:
- integer: every matrix product (int8 weights x 8/12/16-bit activations, exact int64 results via
  `kernels`), the int32 residual stream and its additions, RMSNorm (int64 sum of squares, integer
  square root, integer division to the output grid), RoPE (Q14 cos/sin tables), attention scores
  and the probability-weighted sum of V (Q15 probabilities), softmax (exp2 of a Q10 fixed-point
  argument via a 1024-entry Q20 table and shifts, integer normalisation), SiLU and GELU (Q24 sigmoid / normal-CDF
  tables with linear interpolation over a Q16 argument), the SwiGLU product.
- float: only the requantisation multipliers, one float64 multiply per output element (per-channel
  weight scale x activation scale / output scale) followed by round-to-nearest-even and clipping,
  and the final logits (accumulator x scales) handed to the sampler. The scales are constants except
  the dynamic per-vector scale of RMSNorm outputs, a scalar computed from integers.

The step is written as the pieces a tensor-parallel split cuts: `attention_heads` works on any subset
of heads, `swiglu_columns` on any subset of FFN columns, the row-split projections wo and w2 give int64
partial sums (`ExactLinear` on a K slice) that are added as integers before `residual_add` requantises
them once, so a split across chips is bit-exact (issue 4 reuses these functions per chip).

Each decode step on one vector runs as one compiled kernel (`runtime.compiled`, numba) when that is
available: the same arithmetic in the same order, equal bit for bit; the numpy code here is the
reference and the fallback.
"""

from __future__ import annotations

import math

import numpy as np

from mcushard.model.config import LlamaConfig
from mcushard.model.weights import Weights
from mcushard.runtime import compiled
from mcushard.runtime.kernels import ExactLinear, exact_matmul_f64, max_abs
from mcushard.runtime.quant import (
    DEFAULT_SCHEME,
    RES_BITS,
    QuantLlama,
    qmax,
    quantize_llama,
    static_scale,
)
from mcushard.runtime.reference import rope_tables

ROPE_FRAC = 14  # RoPE cos/sin tables in Q14
EXP_FRAC = 10  # softmax argument in Q10 units of log2
EXP_ONE = 1 << 20  # exp2 table values in Q20
PROB_FRAC = 15  # probabilities in Q15
SILU_FRAC = 16  # SiLU argument and result in Q16
SIG_FRAC = 24  # sigmoid table in Q24
SIG_STEP_SHIFT = 12  # the sigmoid table has one entry per 2^12 Q16 units (1/16)
SIG_RANGE = 16  # the sigmoid table spans [-16, 16]; saturates outside
GATE_CLIP = 1 << 26  # |gate| < 1024: silu (< 2^26) x up accumulator (< 2^33) fits int64
RES_CLIP = 2 ** (RES_BITS + 1) - 1  # residual clipped to 26 bits: int64 sums of squares cannot overflow

EXP2_TABLE = np.rint(EXP_ONE * 2.0 ** (-np.arange(1 << EXP_FRAC) / (1 << EXP_FRAC))).astype(np.int64)  # [1024]
_sig_x = np.arange(-SIG_RANGE, SIG_RANGE + 2 / 16, 1 / 16)  # [514]: one extra entry for the top edge
SIGMOID_TABLE = np.rint((1 << SIG_FRAC) / (1.0 + np.exp(-_sig_x))).astype(np.int64)  # [514] Q24
# the standard normal CDF, for GELU(x) = x * Phi(x)
PHI_TABLE = np.rint((1 << SIG_FRAC) * 0.5 * (1.0 + np.vectorize(math.erf)(_sig_x / math.sqrt(2.0)))).astype(np.int64)


def clamp(x: np.ndarray, limit: int) -> np.ndarray:
    """x clipped to [-limit, limit] (np.clip's dtype checks cost more than the work on short vectors)."""
    return np.minimum(np.maximum(x, -limit), limit)


def clamp_(x: np.ndarray, limit: int) -> np.ndarray:
    """`clamp` in place (x must be a fresh array the caller owns); returns x."""
    np.maximum(x, -limit, out=x)
    return np.minimum(x, limit, out=x)


def requantize(acc: np.ndarray, ratio: np.ndarray | float, bits: int, scale: float | None = None) -> np.ndarray:
    """round(acc * ratio) clipped to signed `bits`; acc: exact integer accumulators. With `scale`, the
    ratio is (ratio * scale), that product rounded first (a static ratio times a dynamic scale)."""
    if compiled.ENABLED and scale is not None and acc.ndim == 1 and np.shape(ratio) == acc.shape:
        out = np.empty(acc.shape, np.int64)
        compiled.requantize_scaled(acc, ratio, scale, qmax(bits), out)
        return out
    if scale is not None:
        ratio = ratio * scale
    t = np.multiply(acc, ratio)  # float64, a fresh array: rounded and clipped in place
    np.rint(t, out=t)
    return clamp_(t, qmax(bits)).astype(np.int64)


def rmsnorm_int(x: np.ndarray, gain: np.ndarray, eps_units: int, bits: int) -> tuple[np.ndarray, float]:
    """Integer RMSNorm with a dynamic per-vector output scale.

    x: int64 [dim] residual units; gain: int16 [dim]. Returns (y int64 [dim] in [-qmax, qmax],
    scale) where the real output is y * scale * gain_unit (multiply by the gain tensor's unit).
    """
    if compiled.ENABLED and x.ndim == 1:
        y = np.empty(x.shape, np.int64)
        return y, compiled.rmsnorm_int(x, gain, eps_units, qmax(bits), y)
    ss = int(np.dot(x, x))  # exact: |x| < 2^26, dim < 2^11
    rms = max(math.isqrt(ss // x.shape[0] + eps_units), 1)
    num = np.multiply(x, gain, dtype=np.int64)  # [dim], |.| < 2^41
    peak = max_abs(num)
    if peak == 0:
        return np.zeros_like(x), 1.0
    q = qmax(bits)
    num *= 2 * q  # in place: y = (2 q num + peak) // (2 peak) = round(num * q / peak), integer
    num += peak
    num //= 2 * peak
    return num, peak / (rms * q)


def residual_rmsnorm(x: np.ndarray, partial_sum: np.ndarray, ratio: np.ndarray, gain: np.ndarray, eps_units: int,
                     bits: int) -> tuple[np.ndarray, np.ndarray, float]:
    """`residual_add(x, partial_sum, ratio)` and the `rmsnorm_int` of the result: (x', y, scale)."""
    if compiled.ENABLED:
        x_out, y = np.empty(x.shape, np.int64), np.empty(x.shape, np.int64)
        scale = compiled.residual_rmsnorm(x, partial_sum, ratio, RES_CLIP, gain, eps_units, qmax(bits), x_out, y)
        return x_out, y, scale
    x = residual_add(x, partial_sum, ratio)
    return (x, *rmsnorm_int(x, gain, eps_units, bits))


def rope_rotation(cos_q: np.ndarray, sin_q: np.ndarray) -> np.ndarray:
    """Q14 rotation matrices [[cos, -sin], [sin, cos]] of cos_q, sin_q int64 [..., hd/2]: int64 [..., hd/2, 2, 2]
    (decoders build them once for every position)."""
    return np.stack([np.stack([cos_q, -sin_q], -1), np.stack([sin_q, cos_q], -1)], -2)


def rope_int(x: np.ndarray, cos_q: np.ndarray, sin_q: np.ndarray, bits: int) -> np.ndarray:
    """Rotate interleaved pairs with Q14 tables. x: int64 [heads, hd]; cos_q, sin_q: int64 [hd/2]."""
    return rope_rotate(x, rope_rotation(cos_q, sin_q), bits)


def rope_rotate(x: np.ndarray, rot: np.ndarray, bits: int) -> np.ndarray:
    """`rope_int` with the rotation built: x: int64 [heads, hd]; rot: int64 [hd/2, 2, 2] (`rope_rotation`).
    Each pair becomes (x0 cos - x1 sin + half) >> 14, (x0 sin + x1 cos + half) >> 14, in one int64 matmul."""
    if compiled.ENABLED and x.ndim == 2:
        out = np.empty(x.shape, np.int64)
        compiled.rope_rotate(x, rot, ROPE_FRAC, qmax(bits), out)
        return out
    out = np.matmul(rot, x.reshape(x.shape[0], -1, 2, 1)).reshape(x.shape)  # [heads, hd]
    out += 1 << (ROPE_FRAC - 1)
    out >>= ROPE_FRAC
    return clamp_(out, qmax(bits))


def qkv_rope_cache(acc: np.ndarray, ratio: np.ndarray, scale: float, bits: int, rot: np.ndarray, n_q_rows: int,
                   k_cache: np.ndarray, v_cache: np.ndarray, pos: int) -> np.ndarray:
    """The q/k/v accumulators acc [(n_q_rows + 2 P) * dlen] of P KV heads (or head slices of dlen
    dims) requantised with (ratio * scale) to `bits`, q and k rotated by rot [dlen/2, 2, 2]; k and v
    written to row `pos` of k_cache, v_cache [P, seq, dlen]. Returns q int64 [n_q_rows, dlen]."""
    n_p, dlen = k_cache.shape[0], k_cache.shape[2]
    if compiled.ENABLED:
        q = np.empty((n_q_rows, dlen), np.int64)
        compiled.qkv_rope_cache(acc, ratio, scale, qmax(bits), rot, ROPE_FRAC, n_q_rows, k_cache, v_cache, pos, q)
        return q
    qkv = requantize(acc, ratio, bits, scale)
    n_qk = (n_q_rows + n_p) * dlen
    qk = rope_rotate(qkv[:n_qk].reshape(-1, dlen), rot, bits)  # [n_q_rows + P, dlen]
    k_cache[:, pos] = qk[n_q_rows:]
    v_cache[:, pos] = qkv[n_qk:].reshape(n_p, dlen)
    return qk[:n_q_rows]


def softmax_int(scores: np.ndarray, log2_ratio: np.ndarray | float, keep: np.ndarray | None = None) -> np.ndarray:
    """Fixed-point softmax over the last axis.

    scores: int64 [..., T] exact accumulators; log2_ratio: [..., 1] real log2 units per accumulator
    unit; keep: bool [..., T] or broadcastable, False for masked keys (probability 0; a row with no
    key kept gets uniform probabilities). Returns int64 Q15 probabilities [..., T].
    """
    if keep is None:
        top = np.maximum.reduce(scores, axis=-1, keepdims=True)
    else:
        keep = np.broadcast_to(keep, scores.shape)
        top = np.max(np.where(keep, scores, np.iinfo(np.int64).min), axis=-1, keepdims=True)
        top = np.where(np.any(keep, axis=-1, keepdims=True), top, scores[..., :1])
    t = np.multiply(top - scores, log2_ratio)  # float64 [..., T]
    d = np.rint(t, out=t).astype(np.int64)
    if keep is not None:
        none_kept = ~np.any(keep, axis=-1, keepdims=True)
        d = np.where(keep, d, 62 << EXP_FRAC)
        d = np.where(none_kept, 0, d)
    shift = np.minimum(d >> EXP_FRAC, 62)
    np.bitwise_and(d, (1 << EXP_FRAC) - 1, out=d)
    e = EXP2_TABLE.take(d)  # [..., T]
    e >>= shift  # the max is EXP_ONE exactly
    total = np.add.reduce(e, axis=-1, keepdims=True)
    e <<= PROB_FRAC
    e += total // 2
    e //= total
    return e


def softmax_units(score_ratio: np.ndarray | float) -> np.ndarray | float:
    """Q10 log2 units of the softmax argument per score accumulator unit (`softmax_int`'s log2_ratio)."""
    return score_ratio * math.log2(math.e) * (1 << EXP_FRAC)


def attention_heads(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, score_ratio: np.ndarray,
                    out_ratio: np.ndarray, bits: int, cache_max: int | None = None,
                    log2_ratio: np.ndarray | None = None) -> np.ndarray:
    """Integer attention of one query position for a group of heads.

    q: int64 [n_kv, n_rep, hd]; k_cache, v_cache: integer-valued [n_kv, T, hd]; q and the caches are all
    at qkv bits, |.| <= cache_max (scanned when None); score_ratio: [n_kv, n_rep, 1] real score (already / sqrt(hd)) per
    accumulator unit; out_ratio: [n_kv, n_rep, 1] output units per (Q15 prob x v) unit; log2_ratio:
    `softmax_units(score_ratio)` when the caller keeps it. Returns int64 [n_kv, n_rep, hd] at `bits`.
    """
    if log2_ratio is None:
        log2_ratio = softmax_units(score_ratio)
    if compiled.ENABLED and cache_max is not None and np.ndim(log2_ratio) == np.ndim(out_ratio) == 3:
        out = np.empty(q.shape, np.int64)
        compiled.attention_heads(q, k_cache, v_cache, k_cache.shape[1], log2_ratio, out_ratio, qmax(bits), EXP2_TABLE,
                                 EXP_FRAC, PROB_FRAC, out)
        return out
    # k @ q^T reads each head's cache rows [T, hd] in place (q @ k^T would copy the cache transposed)
    scores = exact_matmul_f64(k_cache, q.swapaxes(1, 2), cache_max, cache_max)  # [n_kv, T, n_rep]
    scores = scores.swapaxes(1, 2)  # [n_kv, n_rep, T]
    probs = softmax_int(scores, log2_ratio)  # Q15 [.., T]
    out = exact_matmul_f64(probs, v_cache, a_max=1 << PROB_FRAC, b_max=cache_max)  # [n_kv, n_rep, hd]
    return requantize(out, out_ratio, bits)


def gated_q16(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """x * f(x) for a Q16 argument, Q16 result; f from a Q24 table over [-16, 16] (linear interpolation
    between entries 1/16 apart, saturating outside). x: int64 [...] -> int64 [...]."""
    step = 1 << SIG_STEP_SHIFT
    u = clamp(x, SIG_RANGE << SILU_FRAC)
    u += SIG_RANGE << SILU_FRAC  # [0, 2 SIG_RANGE] in Q16
    idx = u >> SIG_STEP_SHIFT
    np.bitwise_and(u, step - 1, out=u)  # the fraction
    f = _table_steps(table).take(idx)  # table[idx + 1] - table[idx]
    f *= u
    f += step // 2
    f >>= SIG_STEP_SHIFT
    f += table.take(idx)  # Q24
    f *= x
    f += 1 << (SIG_FRAC - 1)
    f >>= SIG_FRAC
    return f


_STEPS: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id(table) -> (table, its steps)


def _table_steps(table: np.ndarray) -> np.ndarray:
    """table[i + 1] - table[i] (int64 [len - 1]) of an interpolation table, made once per table."""
    hit = _STEPS.get(id(table))
    if hit is None or hit[0] is not table:
        hit = _STEPS[id(table)] = (table, np.diff(table))
    return hit[1]


_SILU_SHIFTS = np.array([SILU_FRAC, SIG_STEP_SHIFT, SIG_FRAC, SIG_RANGE], np.int64)


def silu_q16(x: np.ndarray) -> np.ndarray:
    """SiLU(x) = x * sigmoid(x), Q16 in and out."""
    return gated_q16(x, SIGMOID_TABLE)


def gelu_q16(x: np.ndarray) -> np.ndarray:
    """GELU(x) = x * Phi(x) (the erf form), Q16 in and out."""
    return gated_q16(x, PHI_TABLE)


def swiglu_columns(gate_acc: np.ndarray, up_acc: np.ndarray, gate_ratio: np.ndarray,
                   out_ratio: np.ndarray, bits: int, scale: float | None = None) -> np.ndarray:
    """h = silu(gate) * up on any subset of FFN columns.

    gate_acc, up_acc: int64 [cols] accumulators; gate_ratio: [cols] Q16 units per gate accumulator
    unit; out_ratio: [cols] output units per (Q16 silu x up accumulator) unit; with `scale`, both
    ratios are times scale (the products rounded first). Returns int64 [cols].
    """
    if compiled.ENABLED and scale is not None:
        out = np.empty(gate_acc.shape, np.int64)
        compiled.swiglu_columns(gate_acc, up_acc, gate_ratio, out_ratio, scale, GATE_CLIP, SIGMOID_TABLE,
                                _table_steps(SIGMOID_TABLE), _SILU_SHIFTS, qmax(bits), out)
        return out
    if scale is not None:
        gate_ratio, out_ratio = gate_ratio * scale, out_ratio * scale
    g = np.multiply(gate_acc, gate_ratio)
    np.rint(g, out=g)
    gate = clamp_(g, GATE_CLIP).astype(np.int64)  # Q16
    h = silu_q16(gate)
    h *= up_acc
    return requantize(h, out_ratio, bits)


def residual_add(x: np.ndarray, partial_sum: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """x + requantised (summed) projection output. x, partial_sum: int64 [dim]; ratio: [dim]."""
    if compiled.ENABLED:
        out = np.empty(x.shape, np.int64)
        compiled.residual_add(x, partial_sum, ratio, RES_CLIP, out)
        return out
    t = np.multiply(partial_sum, ratio)
    y = np.rint(t, out=t).astype(np.int64)
    y += x
    return clamp_(y, RES_CLIP)


def scaled_logits(acc: np.ndarray, ratio: np.ndarray, scale: float) -> tuple[np.ndarray, int]:
    """float32 logits acc * (ratio * scale) of classifier accumulators acc int64 [rows], and the index of
    the first largest one."""
    if compiled.ENABLED:
        out = np.empty(acc.shape, np.float32)
        return out, compiled.scaled_logits(acc, ratio, scale, out)
    logits = (acc * (ratio * scale)).astype(np.float32)
    return logits, int(np.argmax(logits))


class LlamaInt8:
    """Integer decoder with a KV cache; `step(token, pos)` returns float32 logits [vocab]."""

    def __init__(self, qm: QuantLlama) -> None:
        cfg, sch = qm.cfg, qm.scheme
        self.qm, self.cfg, self.scheme = qm, cfg, sch
        # fused matrices (rows concatenated; per-row scales make that exact): qkv, and w1 with w3
        self.lin = {"cls": ExactLinear(qm.q["cls"], sch.cls_bits)}
        for layer in range(cfg.n_layers):
            p = f"layers.{layer}."
            self.lin[p + "qkv"] = ExactLinear(np.concatenate([qm.q[p + k] for k in ("wq", "wk", "wv")]), sch.norm_bits)
            self.lin[p + "w13"] = ExactLinear(np.concatenate([qm.q[p + "w1"], qm.q[p + "w3"]]), sch.norm_bits)
            self.lin[p + "wo"] = ExactLinear(qm.q[p + "wo"], sch.att_bits)
            self.lin[p + "w2"] = ExactLinear(qm.q[p + "w2"], sch.ffn_bits)
        s_res = qm.res_scale
        self.eps_units = round(cfg.norm_eps / s_res**2)
        self.emb_ratio = qm.scale["tok_embeddings"].astype(np.float64) / s_res  # [vocab]
        cos, sin = rope_tables(cfg)  # [seq, hd/2]
        cos_q = np.rint(cos * (1 << ROPE_FRAC)).astype(np.int64)
        sin_q = np.rint(sin * (1 << ROPE_FRAC)).astype(np.int64)
        self.rot_q = rope_rotation(cos_q, sin_q)  # [seq, hd/2, 2, 2]
        hd, n_rep = cfg.head_dim, cfg.n_heads // cfg.n_kv_heads
        c = qm.calib
        s_q = static_scale(c.q_max, sch.qkv_bits)  # [layers, n_heads]
        s_k = static_scale(c.k_max, sch.qkv_bits)  # [layers, n_kv]
        s_v = static_scale(c.v_max, sch.qkv_bits)  # [layers, n_kv]
        s_att = static_scale(c.att_max, sch.att_bits)  # [layers]
        self.s_h = static_scale(c.h_max, sch.ffn_bits)  # [layers]
        self.layers = []
        for layer in range(cfg.n_layers):
            p = f"layers.{layer}."
            sc = {k: qm.scale[p + k].astype(np.float64) for k in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")}
            g1, g2 = qm.gain_scale[p + "attention_norm"], qm.gain_scale[p + "ffn_norm"]
            sq = s_q[layer].reshape(cfg.n_kv_heads, n_rep, 1)  # [n_kv, n_rep, 1]
            self.layers.append({
                # multiply by the dynamic norm scale at run time to get the requantisation ratio
                "qkv": np.concatenate([sc["wq"] / np.repeat(s_q[layer], hd), sc["wk"] / np.repeat(s_k[layer], hd),
                                       sc["wv"] / np.repeat(s_v[layer], hd)]) * g1,  # [q_dim + 2 kv_dim]
                "score": sq * s_k[layer][:, None, None] / math.sqrt(hd),  # [n_kv, n_rep, 1]
                "att": np.broadcast_to(s_v[layer][:, None, None] / (s_att[layer] * (1 << PROB_FRAC)),
                                       (cfg.n_kv_heads, n_rep, 1)),  # [n_kv, n_rep, 1]
                "wo": sc["wo"] * s_att[layer] / s_res,  # [dim]
                "gate": sc["w1"] * g2 * (1 << SILU_FRAC),  # [hidden]
                "up": sc["w3"] * g2 / ((1 << SILU_FRAC) * self.s_h[layer]),  # [hidden]
                "w2": sc["w2"] * self.s_h[layer] / s_res,  # [dim]
            })
        self.cls_ratio = qm.scale["cls"].astype(np.float64) * qm.gain_scale["norm"]  # [vocab]
        shape = (cfg.n_layers, cfg.n_kv_heads, cfg.max_seq_len, hd)
        self.k_cache = np.zeros(shape)  # [layers, n_kv, seq, hd] integers held in float64 for BLAS
        self.v_cache = np.zeros(shape)

    @classmethod
    def from_fp32(cls, cfg: LlamaConfig, weights: Weights, scheme: str | None = None) -> LlamaInt8:
        """Quantise fp32 weights (calibrated on the model's own fp32 samples) and build the decoder."""
        return cls(quantize_llama(cfg, weights, scheme or DEFAULT_SCHEME))

    def embed(self, token: int) -> np.ndarray:
        """int64 [dim] residual units of the token's int8 embedding row."""
        return np.rint(self.qm.q["tok_embeddings"][token] * self.emb_ratio[token]).astype(np.int64)

    def attention_block(self, layer: int, x: np.ndarray, pos: int) -> np.ndarray:
        """Returns the wo partial sums int64 [dim] over all heads (a chip would do its own heads)."""
        cfg, sch, lp = self.cfg, self.scheme, self.layers[layer]
        p, hd = f"layers.{layer}.", cfg.head_dim
        y, s_y = rmsnorm_int(x, self.qm.gain[p + "attention_norm"], self.eps_units, sch.norm_bits)
        q = qkv_rope_cache(self.lin[p + "qkv"].trusted(y), lp["qkv"], s_y, sch.qkv_bits, self.rot_q[pos], cfg.n_heads,
                           self.k_cache[layer], self.v_cache[layer], pos)  # [n_heads, hd]; k, v cached
        att = attention_heads(q.reshape(cfg.n_kv_heads, -1, hd), self.k_cache[layer, :, : pos + 1],
                              self.v_cache[layer, :, : pos + 1], lp["score"], lp["att"], sch.att_bits,
                              qmax(sch.qkv_bits))
        return self.lin[p + "wo"].trusted(att.reshape(-1))

    def ffn_block(self, layer: int, x: np.ndarray) -> np.ndarray:
        """Returns the w2 partial sums int64 [dim] over all FFN columns."""
        sch, lp, p = self.scheme, self.layers[layer], f"layers.{layer}."
        y, s_y = rmsnorm_int(x, self.qm.gain[p + "ffn_norm"], self.eps_units, sch.norm_bits)
        gate_up = self.lin[p + "w13"].trusted(y)  # [2 hidden]
        hidden = self.cfg.hidden_dim
        h = swiglu_columns(gate_up[:hidden], gate_up[hidden:], lp["gate"], lp["up"], sch.ffn_bits, s_y)
        return self.lin[p + "w2"].trusted(h)

    def step(self, token: int, pos: int) -> np.ndarray:
        x = self.embed(token)  # [dim] int64, residual units
        for layer in range(self.cfg.n_layers):
            x = residual_add(x, self.attention_block(layer, x, pos), self.layers[layer]["wo"])
            x = residual_add(x, self.ffn_block(layer, x), self.layers[layer]["w2"])
        y, s_y = rmsnorm_int(x, self.qm.gain["norm"], self.eps_units, self.scheme.cls_bits)
        return scaled_logits(self.lin["cls"].trusted(y), self.cls_ratio, s_y)[0]  # [vocab] float32
