"""SHAC's epoch as run by training (critic fitted in a second thread) against the same epoch as one program.

``Learner.epoch_fn`` runs the forward pass, then the actor's backward pass in this thread and the
critic's fit in a second one; ``jax.jit(Learner.epoch)`` compiles the same maths as one program,
which XLA's CPU runtime executes one operation after another. Both are timed here in one process,
alternated round by round (the machine's speed drifts), each round ``--epochs`` epochs of each;
prints the medians and the median of the per-round ratios (pipelined / one program, below 1 = faster).

    python sharprl/benchmarks/bench_epoch_schedule.py [--env ant] [--rounds 14] [--epochs 3] [--horizon H] [--envs N]
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
    args = parser.parse_args()
    enable_compilation_cache()
    base = preset(args.env, "shac")
    cfg = preset(args.env, "shac", horizon=args.horizon or base.horizon, num_envs=args.envs or base.num_envs)
    task = make_task(args.env, episode_length=cfg.episode_length)
    learner = Learner(cfg, task)
    schedules = {"pipelined (training)": learner.epoch_fn, "one program": jax.jit(learner.epoch)}
    states, times = {}, {name: [] for name in schedules}
    for name, epoch in schedules.items():
        state = learner.init(jax.random.PRNGKey(0))
        for _ in range(2):  # compile, and any recompilation on the epoch's own output
            state, _ = epoch(state)
        states[name] = jax.block_until_ready(state)
    for _ in range(args.rounds):
        for name, epoch in schedules.items():
            state, start = states[name], time.perf_counter()
            for _ in range(args.epochs):
                state, _ = epoch(state)
            states[name] = jax.block_until_ready(state)
            times[name].append((time.perf_counter() - start) / args.epochs)
    print(f"task {args.env} ({task.backend}), {cfg.num_envs} envs x horizon {cfg.horizon}, {args.rounds} rounds")
    for name, ts in times.items():
        print(f"{name:<21} median {statistics.median(ts):.4f} s/epoch, best {min(ts):.4f}")
    ratios = [p / o for p, o in zip(*times.values(), strict=True)]
    print(f"ratio pipelined / one program: {statistics.median(ratios):.3f} (median of the rounds' ratios "
          f"{', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
