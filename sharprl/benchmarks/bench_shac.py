"""SHAC training speed against Brax APG, and the cost of the sharpness step (run by ``make bench``).

Prints, measured in this one run on the same task, backend, horizon and env count:
- env-steps/s of a full SHAC epoch (rollout, actor backward pass, critic iterations) against
  brax.training APG's own per-epoch training throughput (rollout + backward pass, no critic), with
  APG given SHAC's actor widths; ratio SHAC / APG (target >= 1.0);
- seconds per update of SHAC-SAM and SHAC-ASAM against SHAC (targets <= 2.0).

Every timed function is compiled and run twice before timing (the second call can recompile). The
machine's speed drifts (on this VM whole minutes run ~30% slower), so nothing is compared across
time: brax's APG ``train()`` runs its epochs and, from its progress callback between two epochs,
one round of SHAC, SHAC-SAM and SHAC-ASAM updates is timed (their epochs interleaved one by one);
rounds and APG epochs alternate. Ratios are taken per round (SAM / SHAC within the round; SHAC's
round / the APG epoch right after it) and their medians printed. APG's throughput is brax's own
``training/sps`` of each epoch after the first two (which include compilation), so it includes
brax's per-epoch overhead: measured alone, brax APG with 1 update per epoch ran ~15% below its
throughput with 5 (more updates per round favour APG, fewer favour SHAC; 5 is the default).

    python sharprl/benchmarks/bench_shac.py [--env ant] [--updates 5] [--rounds 5] [--horizon H] [--envs N]
        [--shards K] [--cpu-devices D]

``--horizon`` / ``--envs`` replace the preset's window and env count for SHAC and APG alike (e.g.
``--horizon 16 --envs 32``, the setting the README recommends for Ant). SHAC runs as training does:
its envs in ``--shards`` threads (default: one per core, :mod:`sharprl.schedule`). Brax's APG uses
every JAX device, and JAX shows the CPU as one device unless told otherwise: ``--cpu-devices 2``
makes it two (``jax_num_cpu_devices``), so APG splits its envs over both cores with ``pmap`` too.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
from brax.training.agents.apg import networks as apg_networks
from brax.training.agents.apg import train as apg_train

from sharprl.brax_glue import NullEnv
from sharprl.cli import enable_compilation_cache
from sharprl.envs import make_task
from sharprl.networks import activation_fn
from sharprl.schedule import usable_cores
from sharprl.shac import Learner
from sharprl.shac_config import preset


class ShacRounds:
    """SHAC, SHAC-SAM and SHAC-ASAM learners, compiled; ``round()`` times ``updates`` epochs of each."""

    def __init__(self, algos: tuple[str, ...], env: str, updates: int, task, sizes: dict[str, int], shards) -> None:
        self.updates, self.runs = updates, {}
        self.times: dict[str, list[float]] = {algo: [] for algo in algos}  # seconds per epoch, per round
        for algo in algos:
            learner = Learner(preset(env, algo, episode_length=task.episode_length, **sizes), task, shards)
            state = learner.init(jax.random.PRNGKey(0))
            for _ in range(2):  # compile, and any recompilation on the epoch's own output
                state, _ = learner.epoch_fn(state)
            self.runs[algo] = [learner, jax.block_until_ready(state)]

    def round(self) -> None:
        """``updates`` epochs of each algorithm, interleaved epoch by epoch (SHAC, SAM, ASAM, SHAC, ...), so
        a drift in the machine's speed during the round reaches every algorithm alike."""
        spent = dict.fromkeys(self.runs, 0.0)
        for _ in range(self.updates):
            for algo, run in self.runs.items():
                learner, state = run
                start = time.perf_counter()
                state, _ = learner.epoch_fn(state)
                run[1] = jax.block_until_ready(state)
                spent[algo] += time.perf_counter() - start
        for algo, seconds in spent.items():
            self.times[algo].append(seconds / self.updates)


def interleaved(cfg, updates: int, rounds: int, task, shac: ShacRounds) -> list[float]:
    """brax.training APG with SHAC's (``cfg``'s) env count, horizon and actor widths: its env-steps/s
    (training only) in each of ``rounds`` timed epochs, with a round of ``shac`` run between every two
    epochs."""
    sps: list[float] = []
    warmup = 2  # brax's APG epoch compiles twice

    def network_factory(obs_size, action_size, preprocess_observations_fn):
        return apg_networks.make_apg_networks(
            obs_size, action_size, preprocess_observations_fn=preprocess_observations_fn,
            hidden_layer_sizes=cfg.actor_hidden, activation=activation_fn(cfg.activation))

    def progress_fn(it: int, metrics: dict) -> None:  # after APG epoch `it` (it = 0: before training)
        if it > warmup:
            sps.append(float(metrics["training/sps"]))
        if warmup <= it < warmup + rounds:
            shac.round()

    epochs = warmup + rounds
    apg_train.train(
        task.env, episode_length=task.episode_length, policy_updates=epochs * updates,
        horizon_length=cfg.horizon, num_envs=cfg.num_envs, num_evals=epochs + 1, num_eval_envs=1,
        learning_rate=cfg.actor_lr, max_gradient_norm=cfg.grad_norm_clip, normalize_observations=True,
        network_factory=network_factory, progress_fn=progress_fn,
        eval_env=NullEnv(task.observation_size, task.action_size))  # brax's own evaluation: no physics
    return sps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ant", help="sharprl task (default: ant on its default backend)")
    parser.add_argument("--updates", type=int, default=5, help="timed updates per algorithm and round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of APG, SHAC, SAM and ASAM (median)")
    parser.add_argument("--horizon", type=int, default=None, help="window length (default: the preset's)")
    parser.add_argument("--envs", type=int, default=None, help="parallel envs (default: the preset's)")
    parser.add_argument("--shards", type=int, default=None, help="SHAC's env shards (default: one per core)")
    parser.add_argument("--cpu-devices", type=int, default=1, help="JAX CPU devices (brax APG pmaps over them)")
    args = parser.parse_args()
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before JAX makes its CPU client
    enable_compilation_cache()  # compiled graphs persist across runs (SHARPRL_JAX_CACHE=off to disable)
    base = preset(args.env, "shac")
    sizes = {"horizon": args.horizon or base.horizon, "num_envs": args.envs or base.num_envs}
    cfg = preset(args.env, "shac", **sizes)
    task = make_task(args.env, episode_length=cfg.episode_length)
    steps = cfg.num_envs * cfg.horizon
    print(f"task {args.env} ({task.backend}), {cfg.num_envs} envs x horizon {cfg.horizon}, "
          f"episode length {task.episode_length}, {args.updates} timed updates")
    shac = ShacRounds(("shac", "shac-sam", "shac-asam"), args.env, args.updates, task, sizes, args.shards)
    print(f"SHAC: {shac.runs['shac'][0].shards} env shards in as many threads; Brax APG: pmap over "
          f"{jax.local_device_count()} CPU device(s); {usable_cores()} cores")
    apg_sps = interleaved(cfg, args.updates, args.rounds, task, shac)
    shac_sps = [steps / t for t in shac.times["shac"]]
    print("per round, SHAC / APG env-steps/s: " + ", ".join(
        f"{s:.0f}/{a:.0f}" for s, a in zip(shac_sps, apg_sps, strict=True)))
    t_shac = statistics.median(shac.times["shac"])
    print(f"SHAC epoch   {t_shac:8.3f} s  {steps / t_shac:9.0f} env-steps/s (incl. backward pass + critic; median "
          f"of {args.rounds} rounds)")
    print(f"Brax APG              {statistics.median(apg_sps):9.0f} env-steps/s (incl. backward pass; median of "
          f"{args.rounds} epochs, each after one SHAC round)")
    ratio = statistics.median(s / a for s, a in zip(shac_sps, apg_sps, strict=True))
    print(f"ratio SHAC / APG env-steps/s: {ratio:.2f}x (target >= 1.0; median over rounds of SHAC's round / the "
          f"APG epoch right after it)")
    for algo in ("shac-sam", "shac-asam"):
        t = statistics.median(shac.times[algo])
        per_round = [x / y for x, y in zip(shac.times[algo], shac.times["shac"], strict=True)]
        print(f"{algo:<12} {t:8.3f} s/update; ratio to SHAC {statistics.median(per_round):.2f}x (target <= 2.0; "
              f"median of the rounds' ratios {', '.join(f'{r:.2f}' for r in per_round)})")


if __name__ == "__main__":
    main()
