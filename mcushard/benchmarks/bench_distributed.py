"""Decode speed of the int8 tinyllama-42m shape split over 8 chip processes, against the same int8
model in one process, both run from this one host process (same process tree, same machine load).

    python mcushard/benchmarks/bench_distributed.py [--tokens N] [--rounds R] [--chips N] [--algorithms A,B]

Prints tokens/s of each and the ratio. Issue target: the 8-process run at >= 0.5x the single process.
The distributed tokens are checked equal to the single-process ones.

It also prints the best ratio this machine allows before any message is sent: the chips' own
programs (every compute step of the plan, collectives replaced by nothing) run hot in this process,
one chip after another, give the chips' CPU per token; 8 processes on C cores need at least that
CPU / C of wall time per token, whatever the messaging costs. Then the messages alone: the same 8
processes carry out the plan's collectives and nothing else (compute steps only set vectors of the
right size), and the bound adds their CPU per token.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from mcushard.hardware.spec import load_hardware
from mcushard.model.config import get_preset
from mcushard.model.weights import random_weights
from mcushard.partition import make_plan
from mcushard.partition.collectives import schedule
from mcushard.partition.plan import AllReduce
from mcushard.runtime.distributed import ClusterModel, DistributedLlama
from mcushard.runtime.generate import generate
from mcushard.runtime.int8 import LlamaInt8
from mcushard.runtime.llama_chip import LlamaChip
from mcushard.runtime.llama_shard import llama_shards
from mcushard.runtime.quant import quantize_llama

TARGET_RATIO = 0.5


def greedy(decoder, steps: int) -> list[int]:
    """`steps` greedy tokens: the chips decode them among themselves (`DistributedLlama.greedy`), the
    single process through `generate`."""
    return decoder.greedy(steps) if isinstance(decoder, DistributedLlama) else generate(decoder, steps)


def tokens_per_s(decoder, steps: int) -> tuple[float, list[int], float]:
    """(tokens/s, tokens, host-process CPU seconds per token) of `steps` greedy tokens."""
    greedy(decoder, 2)  # warm-up (caches, BLAS threads); positions 0-1 are rewritten below
    t0, c0 = time.perf_counter(), time.process_time()
    out = greedy(decoder, steps)
    return steps / (time.perf_counter() - t0), out, (time.process_time() - c0) / steps


class ComputeOnlyChip(LlamaChip):
    """A chip program with its collectives replaced by nothing (a partial sum stands for the sum; the
    lookup gives every chip the token's row, so no chip skips its norms on a zero vector)."""

    def __init__(self, chip: int, shard, ref: LlamaInt8) -> None:
        super().__init__(chip, None, shard)
        self.embedding = ref.qm.q["tok_embeddings"]  # int8 [vocab, dim], only to feed the timing

    def allreduce(self, step, vector, exclusive=False, proven_max=None):
        return self.embedding[self.token].astype("int64") if step.label == "lookup" else vector

    def take_bytes_sent(self) -> dict[int, int]:
        return {}


class MessagesOnlyChip(LlamaChip):
    """A chip program that carries out every collective of the plan and computes nothing: the compute
    steps only set the vectors the collectives send (zeros of the right size)."""

    def _lookup(self) -> None:
        self.row = np.zeros(self.s.cfg.dim, np.int64)

    def _wo(self) -> None:
        self.psum, self.psum_bound = np.zeros(self.s.cfg.dim, np.int64), 0

    _ffn_down = _wo

    def _argmax(self) -> None:
        self.key = np.zeros(1, np.int64)

    def _nothing(self) -> None:
        pass

    _attention_norm = _qkv = _attend = _ffn_norm = _ffn_up = _residual = _final_norm = _classifier = _nothing


def messages_only_ms(plan, ref: LlamaInt8, group_size: int, tokens: int) -> float:
    """CPU ms per token of all chip processes when they carry out the plan's collectives only."""
    with ClusterModel(plan, ref.cfg, MessagesOnlyChip, llama_shards(plan, ref, group_size), group_size,
                      timeout_s=300) as cluster:
        for pos in range(2):  # warm-up: the routes of every collective are bound on first use
            cluster._request("step", 7, pos)
        c0 = cluster.stats.cpu_s
        for pos in range(tokens):
            cluster._request("step", 7, pos)
        return 1e3 * (cluster.stats.cpu_s - c0) / tokens


def chips_compute_ms(plan, ref: LlamaInt8, group_size: int, tokens: int) -> float:
    """CPU ms per token of all chips' compute steps, each chip run hot (`tokens` steps in a row, after
    a warm-up) in this process: a lower bound on the chips' CPU in any real run."""
    total_s = 0.0
    for chip, shard in enumerate(llama_shards(plan, ref, group_size)):
        program = ComputeOnlyChip(chip, shard, ref)
        for pos in range(4):  # warm-up: onnxruntime sessions, buffers
            program.handle(("step", 7, pos))
        c0 = time.process_time()
        for pos in range(tokens):
            program.handle(("step", 7, pos))
        total_s += time.process_time() - c0
    return 1e3 * total_s / tokens


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
        compute_ms = min(chips_compute_ms(plans[algorithms[0]], ref, hw.group_size, args.tokens)
                         for _ in range(args.rounds))
        message_ms = {a: min(messages_only_ms(plans[a], ref, hw.group_size, args.tokens) for _ in range(args.rounds))
                      for a in algorithms}
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

    cores = len(os.sched_getaffinity(0))
    single_ms = 1e3 / best["single"]
    print(f"  bound: the {args.chips} chips' compute alone, hot, costs {compute_ms:.1f} ms CPU per token; on {cores} "
          f"cores that allows at most {cores * single_ms / compute_ms:.2f}x before any message (single process "
          f"{single_ms:.1f} ms per token)")
    for a in algorithms:
        print(f"  bound with the {a} messages alone ({message_ms[a]:.1f} ms CPU per token over all chips): at most "
              f"{cores * single_ms / (compute_ms + message_ms[a]):.2f}x")


if __name__ == "__main__":
    main()
