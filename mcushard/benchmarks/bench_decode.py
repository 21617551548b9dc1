"""Decode speed of the tinyllama-42m shape (seeded random weights): integer (int8 weights, exact
integer kernels) and fp32 reference, beside a plain-numpy fp32 baseline, all in this one process.

    python mcushard/benchmarks/bench_decode.py [--tokens N] [--scheme NAME]

Prints tokens/s for each and the ratios against the baseline. Issue target: >= 80 tokens/s int8.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from mcushard.model.config import LlamaConfig, get_preset
from mcushard.model.weights import Weights, random_weights
from mcushard.runtime.int8 import LlamaInt8
from mcushard.runtime.quant import quantize_llama
from mcushard.runtime.reference import LlamaFP32

TARGET_INT8_TOKENS_PER_S = 80.0


class NaiveNumpyFP32:
    """The straightforward numpy decode one writes first: a loop over layers and heads, new arrays
    every step, nothing precomputed. Baseline for the ratios."""

    def __init__(self, cfg: LlamaConfig, w: Weights) -> None:
        self.cfg, self.w = cfg, w
        self.keys = [[[] for _ in range(cfg.n_kv_heads)] for _ in range(cfg.n_layers)]  # [layer][head] list of [hd]
        self.values = [[[] for _ in range(cfg.n_kv_heads)] for _ in range(cfg.n_layers)]

    def _norm(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x) + self.cfg.norm_eps) * g

    def _rope(self, v: np.ndarray, pos: int) -> np.ndarray:
        hd = self.cfg.head_dim
        out = v.copy()
        for i in range(0, hd, 2):
            angle = pos / self.cfg.rope_theta ** (i / hd)
            c, s = np.cos(angle), np.sin(angle)
            out[i], out[i + 1] = v[i] * c - v[i + 1] * s, v[i] * s + v[i + 1] * c
        return out

    def step(self, token: int, pos: int) -> np.ndarray:
        cfg, w, hd = self.cfg, self.w, self.cfg.head_dim
        rep = cfg.n_heads // cfg.n_kv_heads
        x = w["tok_embeddings"][token].copy()  # [dim]
        for layer in range(cfg.n_layers):
            p = f"layers.{layer}."
            xb = self._norm(x, w[p + "attention_norm"])
            q, k, v = w[p + "wq"] @ xb, w[p + "wk"] @ xb, w[p + "wv"] @ xb
            out = []
            for g in range(cfg.n_kv_heads):
                self.keys[layer][g].append(self._rope(k[g * hd:(g + 1) * hd], pos))
                self.values[layer][g].append(v[g * hd:(g + 1) * hd])
            for h in range(cfg.n_heads):
                g = h // rep
                qh = self._rope(q[h * hd:(h + 1) * hd], pos)
                scores = np.array([qh @ key for key in self.keys[layer][g]]) / np.sqrt(hd)
                e = np.exp(scores - scores.max())
                out.append((e / e.sum()) @ np.array(self.values[layer][g]))
            x = x + w[p + "wo"] @ np.concatenate(out)
            xb = self._norm(x, w[p + "ffn_norm"])
            gate = w[p + "w1"] @ xb
            x = x + w[p + "w2"] @ (gate / (1 + np.exp(-gate)) * (w[p + "w3"] @ xb))
        return w["tok_embeddings"] @ self._norm(x, w["norm"])


def tokens_per_s(decoder, tokens: int, warmup: int = 2) -> float:
    for pos in range(warmup):
        decoder.step(1 + pos, pos)
    start = time.perf_counter()
    for pos in range(warmup, warmup + tokens):
        decoder.step(1 + pos % 100, pos)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="decode steps timed per decoder")
    parser.add_argument("--scheme", default="w8a12-rtn",
                        help="quantisation scheme; rtn quantises fast and runs the same kernels as the default "
                             "w8a12-gptq")
    args = parser.parse_args()
    cfg = get_preset("tinyllama-42m")
    weights = random_weights(cfg, seed=0)
    t0 = time.perf_counter()
    qm = quantize_llama(cfg, weights, args.scheme, sequences=[list(range(1, 17))])  # 16 calibration tokens
    print(f"tinyllama-42m, {args.tokens} tokens each; quantisation ({args.scheme}) took "
          f"{time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(others' work slows every row alike)")
    results = {
        "numpy fp32 baseline": tokens_per_s(NaiveNumpyFP32(cfg, weights), args.tokens),
        "fp32 reference": tokens_per_s(LlamaFP32(cfg, weights), args.tokens),
        f"int8 ({args.scheme})": tokens_per_s(LlamaInt8(qm), args.tokens),
    }
    base = results["numpy fp32 baseline"]
    for name, rate in results.items():
        print(f"{name:<28}{rate:8.1f} tokens/s   {rate / base:5.2f}x baseline")
    int8_rate = results[f"int8 ({args.scheme})"]
    verdict = "meets" if int8_rate >= TARGET_INT8_TOKENS_PER_S else "misses"
    print(f"int8 / fp32 reference: {int8_rate / results['fp32 reference']:.2f}x; "
          f"int8 {verdict} the {TARGET_INT8_TOKENS_PER_S:.0f} tokens/s target")


if __name__ == "__main__":
    main()
