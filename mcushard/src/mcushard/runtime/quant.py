"""Quantisation of a Llama decoder for integer (MCU) execution, and its error.

Weights: int8, symmetric, one scale per output channel (row of a [out, in] matrix), rounded either
to nearest ("rtn") or with GPTQ's error feedback ("gptq": columns are rounded in turn and each
rounding error is pushed onto the not-yet-rounded columns through the inverse Hessian of the layer's
calibration inputs; the grid stays per-row int8, so the format is the same as rtn). Per-row scales
keep every reduction along K (the input dimension) a plain integer sum, so a split of K across chips
adds integer partial sums.

Activations: each site has a bit width (8 or 16) in the `QuantScheme`. Vectors every chip holds whole
(RMSNorm outputs) get a dynamic per-vector scale; vectors a tensor-parallel split cuts along K (the
attention output feeding wo, the SwiGLU output feeding w2) and the KV cache get static scales
calibrated on fp32 runs, so that every chip uses the same scale without talking. The residual stream
is int32 with a static scale. See `mcushard.runtime.int8` for the integer step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from mcushard.errors import McushardError
from mcushard.model.config import LlamaConfig
from mcushard.model.weights import Weights, classifier
from mcushard.runtime.generate import BOS, generate
from mcushard.runtime.reference import LlamaFP32

LINEAR = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")  # per-layer matrices [out, in]
RES_BITS = 24  # the residual stream's calibrated maximum maps to 2^(RES_BITS - 2): 2x headroom in int32
NORM_GAIN_BITS = 16  # RMSNorm gains are int16 with one scale per tensor


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def static_scale(max_real: np.ndarray | float, bits: int) -> np.ndarray | float:
    """Real value of one unit at a calibrated site: 12/16-bit sites keep 2x headroom over the
    calibrated maximum (values beyond it would clip; one bit is cheap there), 8-bit sites spend none."""
    return max_real * (2.0 if bits > 8 else 1.0) / qmax(bits)


# ---------------------------------------------------------------- weights


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: w [out, in] -> (q int8 [out, in], scale float32 [out]), w ~ q * scale."""
    amax = np.max(np.abs(w), axis=1)  # [out]
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)  # [out]
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def gptq_rows(w: np.ndarray, x: np.ndarray, damp: float = 0.05, block: int = 32
              ) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ with per-row symmetric int8 scales. w: [out, in]; x: [samples, in] calibration inputs.

    Columns are rounded in order of decreasing input energy (diag of the Hessian); the result is
    returned in the original column order.
    """
    q0, scale = quantize_rows(w)  # the grid (scales) is fixed first; GPTQ only chooses the integers
    x = x.astype(np.float64)
    order = np.argsort(-np.sum(x * x, axis=0), kind="stable")  # [in]
    wt = w[:, order].T.astype(np.float64)  # [in, out] permuted; row i is column i, updated in place
    x = x[:, order]
    k = wt.shape[0]
    h = x.T @ x / max(len(x), 1)  # [in, in]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * np.mean(np.diag(h)) * np.eye(k)
    try:
        hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor [in, in]
    except np.linalg.LinAlgError:
        return q0, scale
    qt = np.empty(wt.shape, np.int8)  # [in, out]
    s = scale.astype(np.float64)  # [out]
    for a in range(0, k, block):
        b = min(a + block, k)
        err = np.empty((b - a, wt.shape[1]))  # [block, out]
        for i in range(a, b):
            qi = np.clip(np.rint(wt[i] / s), -127, 127)  # [out]
            qt[i] = qi
            err[i - a] = (wt[i] - qi * s) / hinv[i, i]
            wt[i + 1:b] -= hinv[i, i + 1:b, None] * err[i - a]
        wt[b:] -= hinv[a:b, b:].T @ err
    out = np.empty_like(q0)
    out[:, order] = qt.T
    return out, scale


@dataclass(frozen=True)
class WeightError:
    """Error of one quantised tensor against its fp32 original."""

    max_rel: float  # max |w - w_q| / max |w|
    mean_rel: float  # mean |w - w_q| / mean |w|
    sqnr_db: float  # 10 log10(sum w^2 / sum (w - w_q)^2)


def weight_error(w: np.ndarray, q: np.ndarray, scale: np.ndarray) -> WeightError:
    err = w - q.astype(np.float64) * scale[:, None]
    noise = float(np.sum(err**2))
    sqnr = math.inf if noise == 0 else 10 * math.log10(float(np.sum(w.astype(np.float64) ** 2)) / noise)
    return WeightError(float(np.max(np.abs(err)) / max(np.max(np.abs(w)), 1e-30)),
                       float(np.mean(np.abs(err)) / max(np.mean(np.abs(w)), 1e-30)), sqnr)


# ---------------------------------------------------------------- scheme and calibration


@dataclass(frozen=True)
class QuantScheme:
    """How a Llama decoder is quantised: weight rounding and the bit width of each activation site."""

    name: str  # label in reports
    weights: Literal["rtn", "gptq"]  # int8 per-row rounding: to nearest, or GPTQ (where calibration allows)
    norm_bits: int  # in-layer RMSNorm outputs (inputs of wq/wk/wv/w1/w3), dynamic per-vector scale
    qkv_bits: int  # q, k, v and the KV cache, static per-head scales
    att_bits: int  # attention output (input of wo, cut along K by a head split), static per-layer scale
    ffn_bits: int  # SwiGLU output h (input of w2, cut along K by a column split), static per-layer scale
    cls_bits: int  # final RMSNorm output (input of the classifier), dynamic per-vector scale

    def __post_init__(self) -> None:
        for site in ("norm_bits", "qkv_bits", "att_bits", "ffn_bits", "cls_bits"):
            if getattr(self, site) not in (8, 12, 16):
                raise McushardError(f"scheme {self.name!r}: {site} must be 8, 12 or 16")
        if self.weights not in ("rtn", "gptq"):
            raise McushardError(f"scheme {self.name!r}: weights must be rtn or gptq")


SCHEMES: dict[str, QuantScheme] = {s.name: s for s in (
    QuantScheme("w8a8-rtn", "rtn", 8, 8, 8, 8, 8),
    QuantScheme("w8a8-gptq", "gptq", 8, 8, 8, 8, 8),
    QuantScheme("w8a16-rtn", "rtn", 16, 16, 16, 16, 16),
    QuantScheme("w8a16-gptq", "gptq", 16, 16, 16, 16, 16),
    QuantScheme("w8a16-gptq-norm8", "gptq", 8, 16, 16, 16, 16),
    QuantScheme("w8a16-gptq-kv8", "gptq", 16, 8, 16, 16, 16),
    QuantScheme("w8a16-gptq-att8", "gptq", 16, 16, 8, 16, 16),
    QuantScheme("w8a16-gptq-ffn8", "gptq", 16, 16, 16, 8, 16),
    QuantScheme("w8a16-gptq-cls8", "gptq", 16, 16, 16, 16, 8),
    QuantScheme("w8a12-rtn", "rtn", 12, 12, 12, 12, 8),
    QuantScheme("w8a12-gptq", "gptq", 12, 12, 12, 12, 8),
)}
# 12-bit activations (in int16 containers on the MCU: same SIMD cost as 16-bit) take two 7-bit digit
# passes in the host simulation's int8 GEMM (16-bit take three; see `kernels`); the classifier input
# is 8-bit. >= 90% agreement on stories260K.
DEFAULT_SCHEME = "w8a12-gptq"


def get_scheme(name: str) -> QuantScheme:
    if name not in SCHEMES:
        raise McushardError(f"unknown quantisation scheme {name!r}; known: {', '.join(SCHEMES)}")
    return SCHEMES[name]


class _MatmulProbe:
    """Stands in for a weight matrix inside LlamaFP32 and records what it multiplies."""

    def __init__(self, matrix: np.ndarray, inputs: list, outputs: list) -> None:
        self.matrix, self.inputs, self.outputs = matrix, inputs, outputs

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        y = self.matrix @ x
        self.inputs.append(np.array(x, np.float32))
        self.outputs.append(y)
        return y


def calibration_budget(cfg: LlamaConfig) -> tuple[int, int]:
    """(samples, tokens each) of fp32 calibration: 8 x 256 for models under 1M weights in the
    blocks, 2 x 32 above (fp32 decode of a large model is slow here; ranges need fewer samples)."""
    small = cfg.n_layers * cfg.dim * (cfg.dim + cfg.hidden_dim) < 10**6
    return (8, min(256, cfg.max_seq_len)) if small else (2, min(32, cfg.max_seq_len))


def probe_fp32(cfg: LlamaConfig, weights: Weights, sequences: list[list[int]] | None = None,
               seed: int = 1000) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[int]]:
    """Run fp32 with every matrix (and the classifier, "cls") recording what it multiplies.

    Teacher-forced over `sequences`, or, when None, over `calibration_budget` samples at
    temperature 1 from BOS (seeds seed, seed+1, ...). Returns ({name: (inputs [samples, in],
    outputs [samples, out])}, the tokens fed in, in order).
    """
    rec: dict[str, tuple[list, list]] = {"cls": ([], [])}
    wrapped = dict(weights)
    for layer in range(cfg.n_layers):
        for kind in LINEAR:
            name = f"layers.{layer}.{kind}"
            rec[name] = ([], [])
            wrapped[name] = _MatmulProbe(weights[name], *rec[name])

    def probed() -> LlamaFP32:
        model = LlamaFP32(cfg, wrapped)
        model.cls = _MatmulProbe(classifier(cfg, weights), *rec["cls"])
        return model

    fed: list[int] = []
    if sequences is None:
        count, length = calibration_budget(cfg)
        for i in range(count):
            fed += [BOS] + generate(probed(), length, 1.0, seed + i)[:-1]
    else:
        for seq in sequences:
            model, seq = probed(), list(seq[: cfg.max_seq_len])
            for pos, token in enumerate(seq):
                model.step(token, pos)
            fed += seq
    if not fed:
        raise McushardError("quantisation needs at least one non-empty calibration sequence")
    return {name: (np.stack(i), np.stack(o)) for name, (i, o) in rec.items()}, fed


@dataclass(frozen=True)
class Calibration:
    """Activation ranges (real units) measured on fp32 runs; they fix the static scales."""

    res_max: float  # max |residual stream| over all positions and layers
    q_max: np.ndarray  # [layers, n_heads] max RoPE pair norm of q (bounds |q| after any rotation)
    k_max: np.ndarray  # [layers, n_kv_heads] the same for k
    v_max: np.ndarray  # [layers, n_kv_heads] max |v|
    att_max: np.ndarray  # [layers] max |attention output| (input of wo)
    h_max: np.ndarray  # [layers] max |SwiGLU output| (input of w2)


def _pair_norm_max(y: np.ndarray, heads: int) -> np.ndarray:
    """y: [samples, heads*hd] (interleaved RoPE pairs) -> [heads] max pair norm."""
    pairs = y.reshape(len(y), heads, -1, 2)  # [samples, heads, hd/2, 2]
    return np.sqrt(np.sum(pairs.astype(np.float64) ** 2, axis=-1)).max(axis=(0, 2))


def calibrate(cfg: LlamaConfig, weights: Weights, probe: dict, tokens: list[int]) -> Calibration:
    """Ranges from a probe of `probe_fp32`; `tokens` are the inputs fed in, in order."""
    x = weights["tok_embeddings"][np.array(tokens)].astype(np.float64)  # [samples, dim]
    res_max = float(np.max(np.abs(x)))
    q_max, k_max, v_max, att_max, h_max = [], [], [], [], []
    for layer in range(cfg.n_layers):
        p = f"layers.{layer}."
        for kind in ("wo", "w2"):
            x = x + probe[p + kind][1]
            res_max = max(res_max, float(np.max(np.abs(x))))
        q_max.append(_pair_norm_max(probe[p + "wq"][1], cfg.n_heads))
        k_max.append(_pair_norm_max(probe[p + "wk"][1], cfg.n_kv_heads))
        v = probe[p + "wv"][1].reshape(-1, cfg.n_kv_heads, cfg.head_dim)  # [samples, n_kv, hd]
        v_max.append(np.max(np.abs(v), axis=(0, 2)))
        att_max.append(float(np.max(np.abs(probe[p + "wo"][0]))))
        h_max.append(float(np.max(np.abs(probe[p + "w2"][0]))))
    tiny = 1e-6
    return Calibration(max(res_max, tiny), np.maximum(np.array(q_max), tiny), np.maximum(np.array(k_max), tiny),
                       np.maximum(np.array(v_max), tiny), np.maximum(np.array(att_max), tiny),
                       np.maximum(np.array(h_max), tiny))


# ---------------------------------------------------------------- the quantised model


@dataclass(frozen=True)
class QuantLlama:
    """A Llama decoder quantised for integer execution (what `LlamaInt8` runs)."""

    cfg: LlamaConfig  # model shape
    scheme: QuantScheme  # rounding and activation bit widths
    q: dict[str, np.ndarray]  # int8 matrices [out, in]: layers.L.<LINEAR>, tok_embeddings, cls
    scale: dict[str, np.ndarray]  # float32 [out] per-row scale of each matrix in `q`
    gain: dict[str, np.ndarray]  # int16 RMSNorm gains [dim]: layers.L.attention_norm, ...ffn_norm, norm
    gain_scale: dict[str, float]  # real value of one unit of each gain
    calib: Calibration  # activation ranges for the static scales
    errors: dict[str, WeightError]  # per quantised matrix

    @property
    def res_scale(self) -> float:
        """Real value of one unit of the int32 residual stream."""
        return self.calib.res_max / 2 ** (RES_BITS - 2)


def prepare_calibration(cfg: LlamaConfig, weights: Weights, sequences: list[list[int]] | None = None
                        ) -> tuple[dict, Calibration]:
    """fp32 probe (see `probe_fp32`) and the activation ranges it gives."""
    probe, fed = probe_fp32(cfg, weights, sequences)
    return probe, calibrate(cfg, weights, probe, fed)


def quantize_weights(cfg: LlamaConfig, weights: Weights, method: str, probe: dict
                     ) -> tuple[dict, dict, dict]:
    """int8 matrices, their per-row scales and errors (see `QuantLlama`); `probe` from `probe_fp32`."""
    q, scale, errors = {}, {}, {}
    mats = {f"layers.{layer}.{k}": weights[f"layers.{layer}.{k}"] for layer in range(cfg.n_layers) for k in LINEAR}
    mats["tok_embeddings"] = weights["tok_embeddings"]
    if not cfg.shared_classifier:
        mats["cls"] = weights["output"]
    for name, w in mats.items():
        # GPTQ needs a full-rank Hessian: at least as many calibration vectors as input columns
        # (stories260K: 2048 >= 172); with fewer (a large model's short calibration) damping would
        # dominate, so those matrices are rounded to nearest
        if method == "gptq" and name != "tok_embeddings" and len(probe[name][0]) >= w.shape[1]:
            q[name], scale[name] = gptq_rows(w, probe[name][0])
        else:
            q[name], scale[name] = quantize_rows(w)
        errors[name] = weight_error(w, q[name], scale[name])
    if cfg.shared_classifier:  # one int8 copy serves both the embedding lookup and the classifier
        q["cls"], scale["cls"] = q["tok_embeddings"], scale["tok_embeddings"]
    return q, scale, errors


def quantize_llama(cfg: LlamaConfig, weights: Weights, scheme: QuantScheme | str = DEFAULT_SCHEME,
                   sequences: list[list[int]] | None = None,
                   prepared: tuple[dict, Calibration] | None = None) -> QuantLlama:
    """Quantise `weights`, calibrated on fp32 runs over `sequences` (default: the model's own samples)
    or on a `prepare_calibration` result."""
    scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
    probe, calib = prepared or prepare_calibration(cfg, weights, sequences)
    q, scale, errors = quantize_weights(cfg, weights, scheme.weights, probe)
    gain, gain_scale = {}, {}
    norms = [f"layers.{layer}.{k}" for layer in range(cfg.n_layers) for k in ("attention_norm", "ffn_norm")]
    for name in norms + ["norm"]:
        g = weights[name].astype(np.float64)
        unit = max(float(np.max(np.abs(g))), 1e-30) / qmax(NORM_GAIN_BITS)
        gain[name] = np.rint(g / unit).astype(np.int16)
        gain_scale[name] = unit
    return QuantLlama(cfg, scheme, q, scale, gain, gain_scale, calib, errors)


# ---------------------------------------------------------------- error report


def _weight_summary(errors: dict[str, WeightError]) -> dict[str, dict[str, float]]:
    """Per matrix kind (wq, ..., tok_embeddings, cls): worst max_rel, mean mean_rel, worst SQNR."""
    kinds: dict[str, list[WeightError]] = {}
    for name, err in errors.items():
        kinds.setdefault(name.split(".")[-1], []).append(err)
    return {k: {"max_rel": max(e.max_rel for e in v), "mean_rel": float(np.mean([e.mean_rel for e in v])),
                "min_sqnr_db": min(e.sqnr_db for e in v)} for k, v in kinds.items()}


def quant_error_report(cfg: LlamaConfig, weights: Weights, steps: int = 256,
                       schemes: list[str] | None = None) -> dict:
    """Teacher-forced top-1 agreement of each scheme's integer model with fp32 along fp32's greedy
    sequence of `steps` tokens from BOS, and the weight error per matrix kind for each rounding."""
    from mcushard.runtime.generate import teacher_forced_top1
    from mcushard.runtime.int8 import LlamaInt8

    steps = min(steps, cfg.max_seq_len)
    names = list(SCHEMES) if schemes is None else schemes
    chosen = [get_scheme(n) for n in names]
    reference = generate(LlamaFP32(cfg, weights), steps)
    prepared = prepare_calibration(cfg, weights)
    by_method: dict[str, QuantLlama] = {}
    rows = []
    for sch in chosen:
        base = by_method.get(sch.weights)
        if base is None:
            base = by_method[sch.weights] = quantize_llama(cfg, weights, sch, prepared=prepared)
        qm = replace(base, scheme=sch)
        top1 = teacher_forced_top1(LlamaInt8(qm), reference)
        rows.append({"scheme": sch.name, "weights": sch.weights, "norm_bits": sch.norm_bits,
                     "qkv_bits": sch.qkv_bits, "att_bits": sch.att_bits, "ffn_bits": sch.ffn_bits,
                     "cls_bits": sch.cls_bits,
                     "agreement": float(np.mean(top1 == np.array(reference)))})
    return {"model": cfg.name, "steps": steps, "schemes": rows,
            "weight_error": {m: _weight_summary(qm.errors) for m, qm in by_method.items()}}


def format_report(report: dict) -> str:
    """The report of `quant_error_report` as two plain-text tables."""
    lines = [f"{report['model']}: teacher-forced top-1 agreement with fp32 over {report['steps']} positions",
             f"{'scheme':<20}{'weights':>8}{'norm':>6}{'qkv':>5}{'att':>5}{'ffn':>5}{'cls':>5}{'agreement':>11}"]
    for r in report["schemes"]:
        lines.append(f"{r['scheme']:<20}{r['weights']:>8}{r['norm_bits']:>6}{r['qkv_bits']:>5}"
                     f"{r['att_bits']:>5}{r['ffn_bits']:>5}{r['cls_bits']:>5}{100 * r['agreement']:>10.1f}%")
    lines.append("weight error (int8, per-row scales): worst max rel / mean rel / worst SQNR")
    for method, kinds in report["weight_error"].items():
        for kind, e in kinds.items():
            lines.append(f"  {method:<5}{kind:<16}{e['max_rel']:>9.4f}{e['mean_rel']:>9.4f}{e['min_sqnr_db']:>8.1f} dB")
    return "\n".join(lines)
