"""Decode speed of the int8 tinyllama-42m shape split over 8 chip processes, against the same int8
model in one process, both run from this one host process (same process tree, same machine load).

    python mcushard/benchmarks/bench_distributed.py [--tokens N] [--rounds R] [--chips N] [--algorithms A,B]

Prints tokens/s of each and the ratio. Issue target: the 8-process run at >= 0.5x the single process.
The distributed tokens are checked equal to the single-process ones.
"""

from __future__ import annotations

import argparse
import os
import time

from mcushard.hardware.spec import load_hardware
from mcushard.model.config import get_preset
from mcushard.model.weights import random_weights
from mcushard.partition import make_plan
from mcushard.partition.collectives import schedule
from mcushard.partition.plan import AllReduce
from mcushard.runtime.distributed import DistributedLlama
from mcushard.runtime.generate import generate
from mcushard.runtime.int8 import LlamaInt8
from mcushard.runtime.quant import quantize_llama

TARGET_RATIO = 0.5


def tokens_per_s(decoder, steps: int) -> tuple[float, list[int], float]:
    """(tokens/s, tokens, host-process CPU seconds per token) of `steps` greedy tokens."""
    generate(decoder, 2)  # warm-up (caches, BLAS threads); positions 0-1 are rewritten below
    t0, c0 = time.perf_counter(), time.process_time()
    out = generate(decoder, steps)
    return steps / (time.perf_counter() - t0), out, (time.process_time() - c0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chips", type=int, default=8)
    ap.add_argument("--algorithms", default="hierarchical,tree", help="comma-separated all-reduce algorithms")
    ap.add_argument("--model", default="tinyllama-42m")
    args = ap.parse_args()
    cfg = get_preset(args.model)
    # rtn weights and a short calibration: quantisation quality does not change the speed
    ref = LlamaInt8(quantize_llama(cfg, random_weights(cfg, 0), "w8a12-rtn", sequences=[[1, 7, 99, 400]]))
    hw = load_hardware("siracusa")
    single = LlamaInt8(ref.qm)
    algorithms = args.algorithms.split(",")
    plans = {a: make_plan(cfg, args.chips, "tp", a) for a in algorithms}
    clusters = {a: DistributedLlama(plans[a], ref, hw.group_size, timeout_s=300) for a in algorithms}
    best: dict[str, float] = {}
    comm: dict[str, float] = {}
    cpu_ms: dict[str, float] = {}  # CPU per token: the host process (single) or all chips together
    try:
        for _ in range(args.rounds):  # interleaved, best round counts: the machine's load varies a lot
            tps, single_out, cpu = tokens_per_s(single, args.tokens)
            best["single"] = max(best.get("single", 0.0), tps)
            cpu_ms["single"] = 1e3 * cpu
            for a, dist in clusters.items():
                n0, c0 = len(dist.stats.link_bytes), dist.stats.cpu_s
                tps, out, _ = tokens_per_s(dist, args.tokens)
                cpu_ms[a] = 1e3 * (dist.stats.cpu_s - c0) / (len(dist.stats.link_bytes) - n0)
                if out != single_out:
                    raise SystemExit("distributed tokens differ from the single process")
                best[a] = max(best.get(a, 0.0), tps)
                comm[a] = dist.stats.comm_fraction()
    finally:
        for dist in clusters.values():
            dist.close()
    load = os.getloadavg()[0]
    print(f"{cfg.name} int8, {args.tokens} tokens x {args.rounds} interleaved rounds (best counts); load average "
          f"{load:.1f} on {os.cpu_count()} cores; single process: {best['single']:.1f} tokens/s, "
          f"{cpu_ms['single']:.0f} ms CPU per token")
    for a in algorithms:
        ratio = best[a] / best["single"]
        rounds = sum(len(schedule(s.algorithm, s.group, max(s.elements, 1), hw.group_size))
                     for s in plans[a].steps if isinstance(s, AllReduce))
        print(f"  {args.chips} processes, {a:>12} all-reduce: {best[a]:6.1f} tokens/s, ratio {ratio:.2f}x "
              f"(target >= {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'}); "
              f"{100 * comm[a]:.0f}% of chip time in collectives, {rounds} dependent message rounds per token, "
              f"{cpu_ms[a]:.0f} ms CPU per token over all chips")

if __name__ == "__main__":
    main()
