"""`make demo` for mcushard: the main job on built-in data (no download).

model -> int8 execution -> cost model (the paper's figures) -> distributed run on chip processes ->
ONNX export of each chip's shard, all on the shipped stories260K and the built-in hardware preset.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

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
    paper_figures()
    distributed(path, int8)
    export(cfg, weights)


def paper_figures() -> None:
    from mcushard.explore import reproduce_cmd

    print("\n== cost model, siracusa preset: the paper's figures beside the model's (mcushard reproduce)")
    reproduce_cmd("siracusa", as_json=False)


def distributed(path: Path, int8: list[int]) -> None:
    from mcushard.runtime.run import run_model

    chips, steps = 4, 16
    print(f"\n== stories260K on {chips} chip processes, tensor parallel, hierarchical all-reduce (mcushard run)")
    _, tokens, summary = run_model(str(path), chips, "tp", "hierarchical", steps, "", 0, "siracusa", 120.0)
    print(summary)
    same = "bit-identical to" if tokens == int8[:steps] else "DIFFERENT from"
    print(f"tokens {tokens}: {same} the single-process int8 run")


def export(cfg, weights) -> None:
    from mcushard.export.onnx import export_plan, run_exported
    from mcushard.partition import make_plan
    from mcushard.runtime.reference import LlamaFP32

    chips, tokens = 2, [1, 461, 461, 401, 401, 378, 455, 473]
    print(f"\n== ONNX export: one graph per chip for {chips} chips (mcushard export), run with onnxruntime")
    model = LlamaFP32(cfg, weights)
    reference = np.stack([model.step(t, pos) for pos, t in enumerate(tokens)])  # [S, vocab]
    with tempfile.TemporaryDirectory() as tmp:
        manifest = export_plan(make_plan(cfg, chips, "tp", "hierarchical"), weights, tmp)
        files = sorted(p.name for p in Path(tmp).iterdir())
        logits = run_exported(tmp, tokens)  # [S, vocab], all-reduces in numpy
    print(f"wrote {', '.join(files)} ({manifest.name} lists the plan)")
    print(f"max |shards - whole model| over {len(tokens)} positions: {np.abs(logits - reference).max():.2e}")


if __name__ == "__main__":
    main()
