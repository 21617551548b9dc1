"""SHAC's epoch as training runs it (env shards and the critic's fit in threads) against one program.

``Learner.epoch_fn`` (:mod:`sharprl.schedule`) splits the envs into shards, each with its forward and
backward pass in its own thread, and fits the critic in another thread beside the backward passes;
``jax.jit(Learner.epoch)`` of a one-shard learner compiles the same maths as one program, which XLA's
CPU runtime executes one operation after another. Timed in one process, alternated round by round
(the machine's speed drifts), each round ``--epochs`` epochs of each schedule: threaded with
``--shards`` shards (default: one per core), threaded with one shard (the critic thread alone), and
one program. Prints the medians and the median of the per-round ratios to one program (below 1 =
faster).

    python sharprl/benchmarks/bench_epoch_schedule.py [--env ant] [--rounds 14] [--epochs 3] [--horizon H]
        [--envs N] [--shards K]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from sharprl.cli import enable_compilation_cache
from sharprl.envs import make_task
from sharprl.shac import Learner
from sharprl.shac_config import preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ant", help="sharprl task (default: ant on its default backend)")
    parser.add_argument("--rounds", type=int, default=14, help="alternated rounds (median)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per schedule and round")
    parser.add_argument("--horizon", type=int, default=None, help="window length (default: the preset's)")
    parser.add_argument("--envs", type=int, default=None, help="parallel envs (default: the preset's)")
    parser.add_argument("--shards", type=int, default=None, help="env shards when threaded (default: one per core)")
    args = parser.parse_args()
    enable_compilation_cache()
    base = preset(args.env, "shac")
    cfg = preset(args.env, "shac", horizon=args.horizon or base.horizon, num_envs=args.envs or base.num_envs)
    task = make_task(args.env, episode_length=cfg.episode_length)
    sharded, single = Learner(cfg, task, shards=args.shards), Learner(cfg, task, shards=1)
    schedules = {
        f"threaded, {sharded.shards} shards": (sharded, sharded.epoch_fn),
        "threaded, 1 shard": (single, single.epoch_fn),
        "one program": (single, jax.jit(single.epoch)),
    }
    states, times = {}, {name: [] for name in schedules}
    for name, (learner, epoch) in schedules.items():
        state = learner.init(jax.random.PRNGKey(0))
        for _ in range(2):  # compile, and any recompilation on the epoch's own output
            state, _ = epoch(state)
        states[name] = jax.block_until_ready(state)
    for _ in range(args.rounds):
        for name, (_, epoch) in schedules.items():
            state, start = states[name], time.perf_counter()
            for _ in range(args.epochs):
                state, _ = epoch(state)
            states[name] = jax.block_until_ready(state)
            times[name].append((time.perf_counter() - start) / args.epochs)
    print(f"task {args.env} ({task.backend}), {cfg.num_envs} envs x horizon {cfg.horizon}, {args.rounds} rounds")
    for name, ts in times.items():
        print(f"{name:<21} median {statistics.median(ts):.4f} s/epoch, best {min(ts):.4f}")
    for name in list(schedules)[:2]:
        ratios = [t / o for t, o in zip(times[name], times["one program"], strict=True)]
        print(f"ratio {name} / one program: {statistics.median(ratios):.3f} (median of the rounds' ratios "
              f"{', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
