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
from mcushard.runtime import kernels
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


def float_kernel_decoder(qm) -> LlamaInt8:
    """The same integer decoder with every matrix product on the float-BLAS path of `kernels`
    (the int8 GEMM path off): shows what the int8 weights' smaller memory traffic buys."""
    saved = kernels.INT8_MIN_WEIGHTS
    kernels.INT8_MIN_WEIGHTS = 1 << 62
    try:
        return LlamaInt8(qm)
    finally:
        kernels.INT8_MIN_WEIGHTS = saved


def interleaved_rates(decoders: dict, tokens: int, rounds: int) -> dict[str, tuple[float, float]]:
    """(tokens/s, tokens per CPU second of this process) of each decoder, best of `rounds`
    interleaved rounds (A B C A B C ...), so that a burst of other work on the machine hits every
    decoder alike and the best round shows each one's speed on the least-loaded stretch. Each decoder
    decodes one continuous sequence across rounds. CPU seconds add up all BLAS threads."""
    pos = dict.fromkeys(decoders, 0)
    for name, dec in decoders.items():  # warm-up: first steps allocate caches and buffers
        for _ in range(2):
            dec.step(1 + pos[name], pos[name])
            pos[name] += 1
    best = {name: (0.0, 0.0) for name in decoders}
    per_round = max(tokens // rounds, 1)
    for _ in range(rounds):
        for name, dec in decoders.items():
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(per_round):
                dec.step(1 + pos[name] % 100, pos[name])
                pos[name] += 1
            rate = per_round / (time.perf_counter() - start), per_round / max(time.process_time() - cpu, 1e-9)
            best[name] = max(best[name], rate)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48, help="decode steps timed per decoder")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds; the best one counts")
    parser.add_argument("--scheme", default="w8a12-rtn",
                        help="quantisation scheme; rtn quantises fast and runs the same kernels as the default "
                             "w8a12-gptq")
    args = parser.parse_args()
    cfg = get_preset("tinyllama-42m")
    weights = random_weights(cfg, seed=0)
    t0 = time.perf_counter()
    qm = quantize_llama(cfg, weights, args.scheme, sequences=[list(range(1, 17))])  # 16 calibration tokens
    print(f"tinyllama-42m, {args.tokens} tokens each in {args.rounds} interleaved rounds (best round counts); "
          f"quantisation ({args.scheme}) took {time.perf_counter() - t0:.1f} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    int8_name = f"int8 ({args.scheme})"
    decoders = {"numpy fp32 baseline": NaiveNumpyFP32(cfg, weights), "fp32 reference": LlamaFP32(cfg, weights),
                int8_name: LlamaInt8(qm), int8_name + ", float-BLAS kernels": float_kernel_decoder(qm)}
    results = interleaved_rates(decoders, args.tokens, args.rounds)
    base = results["numpy fp32 baseline"][0]
    for name, (rate, per_cpu_s) in results.items():
        print(f"{name:<40}{rate:8.1f} tokens/s   {rate / base:5.2f}x baseline   ({per_cpu_s:6.1f} tokens per CPU s)")
    int8_rate = results[int8_name][0]
    verdict = "meets" if int8_rate >= TARGET_INT8_TOKENS_PER_S else "misses"
    print(f"int8 / fp32 reference: {int8_rate / results['fp32 reference'][0]:.2f}x; "
          f"int8 {verdict} the {TARGET_INT8_TOKENS_PER_S:.0f} tokens/s target")


if __name__ == "__main__":
    main()
