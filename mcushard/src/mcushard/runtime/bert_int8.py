"""Integer BERT / MobileBERT encoder, with the integer scheme of `mcushard.runtime.int8`.

int8 weights (symmetric, one scale per output row), integer activations of `bits` (12 or 16, in
int16 containers on an MCU) at every tensor site, exact integer matrix products (`ExactLinear`,
`exact_matmul_f64`), integer softmax (with the padding mask) and ReLU / GELU (Q16 table), and
LayerNorm in integer (int64 sums, integer square root). NoNorm (x * gamma + beta) is a per-channel
requantisation. Every activation site has a static scale calibrated on fp32-like runs (an observing
pass of this same integer model with running maxima), so the tensors a split cuts along K (the
attention context feeding the O projection, the FFN hidden feeding the down projection) use a scale
every chip knows. Requantisation, as in the Llama path, is one float64 multiply of an exact integer
accumulator per element (plus the bias and residual terms), rounded to nearest even and clipped.

The steps mirror `mcushard.runtime.bert`: `attention_partial` over a contiguous range of heads and
`ffn_partial` over a range of intermediate columns return int64 partial sums of the O / down
projection; sums over a partition of heads / columns equal the unsplit sums exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mcushard.errors import McushardError
from mcushard.model.bert_weights import check_bert_weights, ffn_prefixes, hf_family
from mcushard.model.config import BertConfig
from mcushard.model.weights import Weights
from mcushard.runtime.bert import bert_forward, check_inputs, head_rows, norm_eps
from mcushard.runtime.int8 import EXP_FRAC, PROB_FRAC, SILU_FRAC, gelu_q16, softmax_int
from mcushard.runtime.kernels import ExactLinear, exact_matmul_f64
from mcushard.runtime.quant import (
    RES_BITS,
    WeightError,
    qmax,
    quantize_rows,
    static_scale,
    weight_error,
)

Term = tuple[np.ndarray, np.ndarray | float]  # (integer tensor, real value of one unit (per channel or scalar))


@dataclass(frozen=True)
class QuantBert:
    """A BERT / MobileBERT encoder quantised for integer execution (what `BertInt8` runs)."""

    cfg: BertConfig  # model shape
    bits: int  # activation bits at every site (12 or 16)
    q: dict[str, np.ndarray]  # int8 [out, in] per linear layer name (without ".weight")
    scale: dict[str, np.ndarray]  # float32 [out] per-row scales
    weights: Weights  # the fp32 tensors the integer model folds into constants (biases, norms, embeddings)
    ranges: dict[str, float]  # calibrated max |real value| per activation site
    errors: dict[str, WeightError]  # per quantised matrix


def _linear_names(weights: Weights) -> list[str]:
    return [n[: -len(".weight")] for n, a in weights.items() if a.ndim == 2 and n.endswith(".weight")
            and not n.endswith("_embeddings.weight")]


def calibration_inputs(cfg: BertConfig, count: int = 4, seq_len: int = 64, seed: int = 2000) -> list[np.ndarray]:
    """Seeded random token sequences (ids [S]) for calibrating the static activation scales."""
    rng = np.random.default_rng(seed)
    seq_len = min(seq_len, cfg.max_position_embeddings)
    return [rng.integers(0, cfg.vocab_size, seq_len) for _ in range(count)]


def quantize_bert(cfg: BertConfig, weights: Weights, bits: int = 12,
                  inputs: list[np.ndarray] | None = None) -> QuantBert:
    """Per-row int8 weights, then calibrate every activation site on `inputs` (default: random ids)."""
    if bits not in (12, 16):
        raise McushardError(f"BERT int8: activation bits must be 12 or 16, got {bits}")
    check_bert_weights(cfg, weights, f"weights of {cfg.name!r}")
    q, scale, errors = {}, {}, {}
    for name in _linear_names(weights) + ["embeddings.word_embeddings"]:
        w = weights[name + ".weight"]
        q[name], scale[name] = quantize_rows(w)
        errors[name] = weight_error(w, q[name], scale[name])
    observer = BertInt8(QuantBert(cfg, bits, q, scale, weights, {}, errors), observe=True)
    for ids in calibration_inputs(cfg) if inputs is None else inputs:
        observer.forward(ids)
    return QuantBert(cfg, bits, q, scale, weights, dict(observer.ranges), errors)


class BertInt8:
    """Integer encoder; `forward(input_ids, token_type_ids=None, attention_mask=None)` -> float32 [S, H]."""

    def __init__(self, qb: QuantBert, observe: bool = False) -> None:
        self.qb, self.cfg, self.w, self.bits = qb, qb.cfg, qb.weights, qb.bits
        self.observe = observe  # True: record running maxima into `ranges` (calibration pass)
        self.ranges = dict(qb.ranges)
        self._lins: dict[tuple, ExactLinear] = {}

    # ------------------------------------------------------------ building blocks

    def lin(self, name: str, rows: slice = slice(None), cols: slice = slice(None)) -> ExactLinear:
        """The int8 matrix `name` restricted to output rows / input columns (cached)."""
        key = (name, rows.start, rows.stop, cols.start, cols.stop)
        if key not in self._lins:
            self._lins[key] = ExactLinear(self.qb.q[name][rows, cols], self.bits)
        return self._lins[key]

    def dense(self, name: str, x: np.ndarray, s_x: float, rows: slice = slice(None),
              cols: slice = slice(None)) -> Term:
        """Exact accumulators [S, out'] of x [S, in'] and the real value of one unit per output row."""
        acc = self.lin(name, rows, cols)(x.T).T  # [S, out']
        return acc, self.qb.scale[name][rows].astype(np.float64) * s_x

    def to_site(self, site: str, terms: list[Term], offset: np.ndarray | float = 0.0,
                bits: int | None = None) -> tuple[np.ndarray, float]:
        """Requantise sum(int * unit) + offset to the static scale of `site`: (int64 [...], scale)."""
        bits = bits or self.bits
        real = sum(a * u for a, u in terms) + offset  # float64 [...]
        if self.observe:
            self.ranges[site] = max(self.ranges.get(site, 1e-12), float(np.max(np.abs(real))))
        elif site not in self.ranges:
            raise McushardError(f"BERT int8: no calibrated range for site {site!r}")
        s = static_scale(self.ranges[site], bits)
        return np.clip(np.rint(real / s), -qmax(bits), qmax(bits)).astype(np.int64), s

    def norm(self, site: str, norm_name: str, terms: list[Term], offset: np.ndarray) -> tuple[np.ndarray, float]:
        """NoNorm or LayerNorm `norm_name` of sum(terms) + offset, to the output site."""
        gamma = self.w[norm_name + ".weight"].astype(np.float64)  # [W]
        beta = self.w[norm_name + ".bias"].astype(np.float64)  # [W]
        if self.cfg.normalization == "no_norm":  # (sum) * gamma + beta: one per-channel requantisation
            return self.to_site(site, [(a, u * gamma) for a, u in terms], offset * gamma + beta)
        t, s_t = self.to_site(site + ".sum", terms, offset, bits=RES_BITS)  # [S, W] 24-bit
        centred = t - np.sum(t, axis=-1, keepdims=True) // t.shape[-1]  # [S, W]
        var = np.sum(centred * centred, axis=-1) // t.shape[-1]  # [S] exact int64
        eps_units = round(norm_eps(self.cfg, norm_name) / s_t**2)
        std = np.array([max(math.isqrt(int(v) + eps_units), 1) for v in var], np.float64)[:, None]  # [S, 1]
        return self.to_site(site, [(centred, gamma / std)], beta)

    # ------------------------------------------------------------ the encoder, step by step

    def embed(self, ids: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, float]:
        cfg, name = self.cfg, "embeddings.word_embeddings"
        rows = self.qb.scale[name][ids].astype(np.float64)[:, None]  # [S, 1]
        x, s = self.to_site("emb.words", [(self.qb.q[name][ids].astype(np.int64), rows)])  # [S, E]
        if cfg.trigram_input:
            zero = np.zeros_like(x[:1])
            x = np.concatenate([np.concatenate([x[1:], zero]), x, np.concatenate([zero, x[:-1]])], axis=1)
        offset = self.w["embeddings.position_embeddings.weight"][: len(ids)] + \
            self.w["embeddings.token_type_embeddings.weight"][types]  # [S, H]
        if hf_family(cfg) == "mobilebert":
            acc, unit = self.dense("embeddings.embedding_transformation", x, s)
            offset = offset + self.w["embeddings.embedding_transformation.bias"]
            terms = [(acc, unit)]
        else:
            terms = [(x, s)]
        return self.norm("emb", "embeddings.LayerNorm", terms, offset)

    def attention_partial(self, layer: int, qk_in: Term, v_in: Term, keep: np.ndarray,
                          heads: range | None = None) -> Term:
        """Heads `heads` through the O projection without its bias: int64 partial sums [S, A]."""
        cfg, p = self.cfg, f"encoder.layer.{layer}.attention."
        heads = range(cfg.num_heads) if heads is None else heads
        rows = head_rows(cfg, heads)
        proj = {}
        for kind, (x, s) in (("query", qk_in), ("key", qk_in), ("value", v_in)):
            acc, unit = self.dense(p + "self." + kind, x, s, rows=rows)
            y, s_y = self.to_site(f"{layer}.{kind}", [(acc, unit)], self.w[p + f"self.{kind}.bias"][rows])
            proj[kind] = (y.reshape(len(y), len(heads), -1).transpose(1, 0, 2), s_y)  # [nh', S, hd]
        (q, s_q), (k, s_k), (v, s_v) = proj["query"], proj["key"], proj["value"]
        scores = exact_matmul_f64(q, k.transpose(0, 2, 1))  # [nh', S, S]
        ratio = s_q * s_k / math.sqrt(cfg.head_dim) * math.log2(math.e) * (1 << EXP_FRAC)
        probs = softmax_int(scores, ratio, keep[None, None, :])  # [nh', S, S] Q15
        ctx = exact_matmul_f64(probs, v).transpose(1, 0, 2).reshape(len(keep), -1)  # [S, nh'*hd]
        ctx, s_c = self.to_site(f"{layer}.context", [(ctx, s_v / (1 << PROB_FRAC))])
        return self.dense(p + "output.dense", ctx, s_c, cols=rows)

    def ffn_partial(self, layer: int, up: str, down: str, x: Term, cols: slice = slice(None)) -> Term:
        """FFN over intermediate columns `cols` without the down bias: int64 partial sums [S, A]."""
        acc, unit = self.dense(up + ".dense", x[0], x[1], rows=cols)
        bias = self.w[up + ".dense.bias"][cols]
        if self.cfg.hidden_act == "relu":
            h, s_h = self.to_site(f"{layer}.{up}", [(acc, unit)], bias)
            h = np.maximum(h, 0)
        else:
            pre = np.rint((acc * unit + bias) * (1 << SILU_FRAC)).astype(np.int64)  # Q16
            h, s_h = self.to_site(f"{layer}.{up}", [(gelu_q16(pre), 2.0**-SILU_FRAC)])
        return self.dense(down + ".dense", h, s_h, cols=cols)

    def layer(self, layer: int, x: Term, keep: np.ndarray) -> Term:
        cfg, w, p = self.cfg, self.w, f"encoder.layer.{layer}."
        qk_in = v_in = residual = x
        if cfg.use_bottleneck:
            b = p + "bottleneck."
            residual = self.norm(f"{layer}.bin", b + "input.LayerNorm", [self.dense(b + "input.dense", *x)],
                                 w[b + "input.dense.bias"])
            qk_in = residual
            if cfg.key_query_shared_bottleneck:
                qk_in = self.norm(f"{layer}.batt", b + "attention.LayerNorm",
                                  [self.dense(b + "attention.dense", *x)], w[b + "attention.dense.bias"])
        o = self.attention_partial(layer, qk_in, v_in, keep)
        y = self.norm(f"{layer}.att", p + "attention.output.LayerNorm", [o, residual],
                      w[p + "attention.output.dense.bias"])
        for up, down in ffn_prefixes(cfg, layer):
            y = self.norm(f"{layer}.{down}", down + ".LayerNorm", [self.ffn_partial(layer, up, down, y), y],
                          w[down + ".dense.bias"])
        if not cfg.use_bottleneck:
            return y
        o = p + "output.bottleneck."
        return self.norm(f"{layer}.out", o + "LayerNorm", [self.dense(o + "dense", *y), x], w[o + "dense.bias"])

    def forward(self, input_ids, token_type_ids=None, attention_mask=None) -> np.ndarray:
        ids, types, mask = check_inputs(self.cfg, input_ids, token_type_ids, attention_mask)
        keep = mask > 0  # [S] keys that may be attended to
        x = self.embed(ids, types)
        for layer in range(self.cfg.num_layers):
            x = self.layer(layer, x, keep)
        return (x[0] * x[1]).astype(np.float32)  # [S, H]


def bert_quant_error(cfg: BertConfig, weights: Weights, bits_options: tuple[int, ...] = (12, 16),
                     seq_len: int = 64, seed: int = 7) -> dict:
    """Integer vs fp32 encoder outputs on a held-out random sequence, per activation width."""
    ids = calibration_inputs(cfg, 1, seq_len, seed)[0]
    ref = bert_forward(cfg, weights, ids).astype(np.float64)  # [S, H]
    rows = []
    for bits in bits_options:
        out = BertInt8(quantize_bert(cfg, weights, bits)).forward(ids).astype(np.float64)
        cos = np.sum(out * ref, -1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(ref, axis=-1) + 1e-30)
        rows.append({"bits": bits, "rel_error": float(np.linalg.norm(out - ref) / np.linalg.norm(ref)),
                     "max_abs_error": float(np.max(np.abs(out - ref))), "min_token_cosine": float(np.min(cos))})
    return {"model": cfg.name, "seq_len": len(ids), "activations": rows}


def format_bert_report(report: dict) -> str:
    lines = [f"{report['model']}: integer vs fp32 encoder output, random sequence of {report['seq_len']} tokens",
             f"{'activations':<13}{'rel error':>11}{'max abs':>10}{'min token cosine':>18}"]
    for r in report["activations"]:
        lines.append(f"w8a{r['bits']:<10}{r['rel_error']:>11.4f}{r['max_abs_error']:>10.4f}{r['min_token_cosine']:>18.6f}")
    return "\n".join(lines)
