"""SHAC training speed against Brax APG, and the cost of the sharpness step (run by ``make bench``).

Prints, measured in this one run on the same task, backend, horizon and env count:
- env-steps/s of a full SHAC epoch (rollout, actor backward pass, critic iterations) against
  brax.training APG's own per-epoch training throughput (rollout + backward pass, no critic), with
  APG given SHAC's actor widths; ratio SHAC / APG (target >= 1.0);
- seconds per update of SHAC-SAM and SHAC-ASAM against SHAC (targets <= 2.0).

Every timed function is compiled and run twice before timing (the second call can recompile). SHAC,
SHAC-SAM and SHAC-ASAM are timed in interleaved rounds and their medians compared, so a drift in the
machine's load hits all three alike. APG's throughput is brax's ``training/sps`` of its epochs after
the first two (which include compilation).

    python sharprl/benchmarks/bench_shac.py [--env ant] [--updates 5] [--rounds 3]
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
from sharprl.shac import Learner
from sharprl.shac_config import preset


def shac_epochs(algos: tuple[str, ...], env: str, updates: int, rounds: int, task) -> dict[str, float]:
    """Median seconds per epoch (one actor update and its critic iterations) of each algorithm, over
    ``rounds`` interleaved rounds of ``updates`` epochs each (the machine's load drifts between rounds)."""
    runs = {}
    for algo in algos:
        learner = Learner(preset(env, algo, episode_length=task.episode_length), task)
        state = learner.init(jax.random.PRNGKey(0))
        for _ in range(2):  # compile, and any recompilation on the epoch's own output
            state, _ = learner.epoch_fn(state)
        runs[algo] = [learner, jax.block_until_ready(state)]
    times: dict[str, list[float]] = {algo: [] for algo in algos}
    for _ in range(rounds):
        for algo, run in runs.items():
            learner, state = run
            start = time.perf_counter()
            for _ in range(updates):
                state, _ = learner.epoch_fn(state)
            run[1] = jax.block_until_ready(state)
            times[algo].append((time.perf_counter() - start) / updates)
    return {algo: statistics.median(t) for algo, t in times.items()}


def apg_steps_per_s(env: str, updates: int, task) -> float:
    """brax.training APG env-steps/s (training only) with SHAC's env count, horizon and actor widths."""
    cfg = preset(env, "shac")
    sps: list[float] = []

    def network_factory(obs_size, action_size, preprocess_observations_fn):
        return apg_networks.make_apg_networks(
            obs_size, action_size, preprocess_observations_fn=preprocess_observations_fn,
            hidden_layer_sizes=cfg.actor_hidden, activation=activation_fn(cfg.activation))

    def progress_fn(it: int, metrics: dict) -> None:
        if it > 0:
            sps.append(float(metrics["training/sps"]))

    epochs = 4  # the first two compile (brax's APG epoch compiles twice); the last two are timed
    apg_train.train(
        task.env, episode_length=task.episode_length, policy_updates=epochs * updates,
        horizon_length=cfg.horizon, num_envs=cfg.num_envs, num_evals=epochs + 1, num_eval_envs=1,
        learning_rate=cfg.actor_lr, max_gradient_norm=cfg.grad_norm_clip, normalize_observations=True,
        network_factory=network_factory, progress_fn=progress_fn,
        eval_env=NullEnv(task.observation_size, task.action_size))  # brax's own evaluation: no physics
    return statistics.median(sps[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ant", help="sharprl task (default: ant on its default backend)")
    parser.add_argument("--updates", type=int, default=5, help="timed updates per algorithm and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of SHAC, SAM and ASAM (median)")
    args = parser.parse_args()
    enable_compilation_cache()  # compiled graphs persist across runs (SHARPRL_JAX_CACHE=off to disable)
    cfg = preset(args.env, "shac")
    task = make_task(args.env, episode_length=cfg.episode_length)
    steps = cfg.num_envs * cfg.horizon
    print(f"task {args.env} ({task.backend}), {cfg.num_envs} envs x horizon {cfg.horizon}, "
          f"episode length {task.episode_length}, {args.updates} timed updates")
    epoch_s = shac_epochs(("shac", "shac-sam", "shac-asam"), args.env, args.updates, args.rounds, task)
    t_shac = epoch_s["shac"]
    apg_sps = apg_steps_per_s(args.env, args.updates, task)
    shac_sps = steps / t_shac
    print(f"SHAC epoch   {t_shac:8.3f} s  {shac_sps:9.0f} env-steps/s (incl. backward pass + critic; median "
          f"of {args.rounds} rounds)")
    print(f"Brax APG              {apg_sps:9.0f} env-steps/s (incl. backward pass)")
    print(f"ratio SHAC / APG env-steps/s: {shac_sps / apg_sps:.2f}x (target >= 1.0)")
    for algo in ("shac-sam", "shac-asam"):
        t = epoch_s[algo]
        print(f"{algo:<12} {t:8.3f} s/update; ratio to SHAC {t / t_shac:.2f}x (target <= 2.0; median of "
              f"{args.rounds} rounds interleaved with SHAC's)")


if __name__ == "__main__":
    main()
