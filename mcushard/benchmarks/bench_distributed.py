"""Decode speed of the int8 tinyllama-42m shape split over 8 chip processes, against the same int8
model in one process, both run from this one host process (same process tree, same machine load).

    python mcushard/benchmarks/bench_distributed.py [--tokens N] [--chips N] [--algorithms A,B]

Prints tokens/s of each and the ratio. Issue target: the 8-process run at >= 0.5x the single process.
The distributed tokens are checked equal to the single-process ones.
"""

from __future__ import annotations

import argparse
import time

from mcushard.hardware.spec import load_hardware
from mcushard.model.config import get_preset
from mcushard.model.weights import random_weights
from mcushard.partition import make_plan
from mcushard.runtime.distributed import DistributedLlama
from mcushard.runtime.generate import generate
from mcushard.runtime.int8 import LlamaInt8
from mcushard.runtime.quant import quantize_llama

TARGET_RATIO = 0.5


def tokens_per_s(decoder, steps: int) -> tuple[float, list[int]]:
    generate(decoder, 2)  # warm-up (caches, BLAS threads); positions 0-1 are rewritten below
    t0 = time.perf_counter()
    out = generate(decoder, steps)
    return steps / (time.perf_counter() - t0), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--chips", type=int, default=8)
    ap.add_argument("--algorithms", default="hierarchical,tree", help="comma-separated all-reduce algorithms")
    ap.add_argument("--model", default="tinyllama-42m")
    args = ap.parse_args()
    cfg = get_preset(args.model)
    # rtn weights and a short calibration: quantisation quality does not change the speed
    ref = LlamaInt8(quantize_llama(cfg, random_weights(cfg, 0), "w8a12-rtn", sequences=[[1, 7, 99, 400]]))
    hw = load_hardware("siracusa")
    single_tps, single_out = tokens_per_s(LlamaInt8(ref.qm), args.tokens)
    print(f"{cfg.name} int8, {args.tokens} tokens; single process: {single_tps:.1f} tokens/s")
    for algorithm in args.algorithms.split(","):
        plan = make_plan(cfg, args.chips, "tp", algorithm)
        with DistributedLlama(plan, ref, hw.group_size, timeout_s=300) as dist:
            dist_tps, dist_out = tokens_per_s(dist, args.tokens)
            comm = dist.stats.comm_fraction()
        if dist_out != single_out:
            raise SystemExit("distributed tokens differ from the single process")
        ratio = dist_tps / single_tps
        print(f"  {args.chips} processes, {algorithm:>12} all-reduce: {dist_tps:6.1f} tokens/s, ratio {ratio:.2f}x "
              f"(target >= {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'}); "
              f"chips spent {100 * comm:.0f}% of their step time in collectives")

if __name__ == "__main__":
    main()
