"""`make demo` for mcushard: the main job on built-in data (no download)."""

from __future__ import annotations

import time

import numpy as np

from mcushard.data import shared_file
from mcushard.model.llama2c import load_llama2c
from mcushard.runtime.generate import generate, teacher_forced_top1
from mcushard.runtime.int8 import LlamaInt8
from mcushard.runtime.quant import DEFAULT_SCHEME, quantize_llama
from mcushard.runtime.reference import LlamaFP32

AGREEMENT_STEPS = 256  # positions of fp32's greedy sequence compared (the issue's measure)


def main() -> None:
    path = shared_file("tinyllamas/stories260K.bin")
    cfg, weights = load_llama2c(path)
    start = time.perf_counter()
    qm = quantize_llama(cfg, weights, DEFAULT_SCHEME)
    print(f"== stories260K ({path}): int8 weights + integer execution, scheme {DEFAULT_SCHEME} "
          f"(quantised and calibrated in {time.perf_counter() - start:.1f} s)")
    fp32 = generate(LlamaFP32(cfg, weights), AGREEMENT_STEPS)
    int8 = generate(LlamaInt8(qm), 64)
    same = next((i for i, (a, b) in enumerate(zip(fp32, int8)) if a != b), len(int8))
    print("greedy, 64 tokens from BOS")
    print(f"  fp32: {fp32[:64]}")
    print(f"  int8: {int8}")
    print(f"  identical for the first {same} tokens")
    top1 = teacher_forced_top1(LlamaInt8(qm), fp32)
    agreement = float(np.mean(top1 == np.array(fp32)))
    print(f"teacher-forced top-1 agreement with fp32 over {AGREEMENT_STEPS} positions: {100 * agreement:.1f}% "
          "(target >= 90%; all schemes: mcushard quant-error <model>)")


if __name__ == "__main__":
    main()
