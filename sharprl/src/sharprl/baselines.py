"""APG and PPO baselines run by brax.training, behind sharprl's policy interface and checkpoints.

Both algorithms are brax.training's own (``brax.training.agents.apg.train``: first-order, no critic;
``brax.training.agents.ppo.train``: zeroth-order) on the task sharprl.envs builds for SHAC, so the
comparison shares env, backend and perturbation. Their trained parameters are stored with
:mod:`sharprl.checkpoint` under the policy kinds ``brax_ppo`` / ``brax_apg`` (:mod:`sharprl.brax_glue`), so
``sharprl evaluate DIR`` rebuilds them through brax's own inference networks and runs the same
evaluation as for SHAC's actor. Learning curves use that same evaluation (one row of
``metrics.csv`` per evaluation), not brax's internal evaluator.

Resuming (``--resume``): brax.training 0.14.2 has no way to continue a run exactly (the optimiser
state, env states and RNG stream live inside ``train`` and cannot be passed in). What is restored:
- PPO: normaliser statistics, policy and value networks through ``restore_params``; Adam moments and
  env states start afresh; the step budget continues from the checkpoint's env_steps.
- APG: the policy network (through the network factory's ``init``) and the normaliser statistics
  (merged with the new run's own); the learning-rate decay continues where it stopped; Adam
  moments and env states start afresh.
APG's ``train`` hands its callback no parameters, so the parameters for the per-evaluation
checkpoint are read from the caller's frame (``training_state``, brax is pinned ==0.14.2); when that
is not available the run still checkpoints at its end.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from brax.training.acme import running_statistics
from brax.training.agents.apg import networks as apg_networks
from brax.training.agents.ppo import networks as ppo_networks
from brax.training.types import identity_observation_preprocessor

from sharprl import checkpoint
from sharprl.brax_glue import (
    APG_KIND,
    PPO_KIND,
    NullEnv,
    brax_env,
    merge_statistics,
)
from sharprl.envs import Task
from sharprl.errors import SharprlError
from sharprl.evaluate import evaluate
from sharprl.networks import Params, PolicySpec, activation_fn, init_normalizer, policy_factory

ALGOS = ("apg", "ppo")  # the baselines `sharprl train --algo` dispatches here


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """brax.training PPO: Brax's published Ant settings with the env count scaled to a 2-core CPU."""

    num_envs: int = 512  # parallel training envs (Brax's Ant setting: 4096)
    batch_size: int = 256  # trajectories per minibatch (Brax: 2048); batch*minibatches % envs == 0
    unroll_length: int = 5  # env steps per trajectory segment
    num_minibatches: int = 32  # SGD minibatches per collected batch
    num_updates_per_batch: int = 4  # passes over each collected batch
    discounting: float = 0.97  # gamma
    learning_rate: float = 3e-4  # Adam step size (constant)
    entropy_cost: float = 1e-2  # entropy bonus weight
    reward_scaling: float = 10.0  # rewards are multiplied by this inside the loss
    normalize_observations: bool = True  # running mean/std observation normalisation
    policy_hidden_sizes: tuple[int, ...] = (32, 32, 32, 32)  # policy MLP widths (brax default)
    value_hidden_sizes: tuple[int, ...] = (256, 256, 256, 256, 256)  # value MLP widths (brax default)
    activation: str = "swish"  # hidden activation of both MLPs (brax default)
    eval_every_env_steps: int = 200_000  # env steps between evaluations + checkpoints
    eval_episodes: int = 16  # deterministic episodes per evaluation (as SHAC's)

    def __post_init__(self) -> None:
        _positive(self, "num_envs", "batch_size", "unroll_length", "num_minibatches", "num_updates_per_batch",
                  "eval_every_env_steps", "eval_episodes")
        if (self.batch_size * self.num_minibatches) % self.num_envs:
            raise SharprlError(f"PPO: batch_size*num_minibatches ({self.batch_size}*{self.num_minibatches}) "
                               f"must be a multiple of num_envs ({self.num_envs})")


@dataclasses.dataclass(frozen=True)
class APGConfig:
    """brax.training APG with SHAC's horizon and env count (notes: ~1k return on Ant over 1M steps)."""

    num_envs: int = 64  # parallel envs differentiated through
    horizon_length: int = 32  # env steps per gradient (truncated backprop through time)
    learning_rate: float = 1e-3  # initial Adam step size
    schedule_decay: float = 0.997  # learning rate multiplied by this after every update
    adam_b1: float = 0.7  # Adam beta1 (SHAC's)
    adam_b2: float = 0.95  # Adam beta2 (SHAC's)
    max_gradient_norm: float = 1.0  # per-update gradient-norm clip (brax's chain also clips at 1.0 elementwise)
    normalize_observations: bool = True  # running mean/std observation normalisation
    hidden_sizes: tuple[int, ...] = (32, 32, 32, 32)  # policy MLP widths (brax's APG default)
    activation: str = "elu"  # hidden activation (brax's APG default)
    eval_every_env_steps: int = 65_536  # env steps between evaluations + checkpoints (32 updates)
    eval_episodes: int = 16  # deterministic episodes per evaluation (as SHAC's)

    def __post_init__(self) -> None:
        _positive(self, "num_envs", "horizon_length", "eval_every_env_steps", "eval_episodes")


def _positive(config, *names: str) -> None:
    for name in names:
        if getattr(config, name) < 1:
            raise SharprlError(f"{type(config).__name__}.{name} must be >= 1, got {getattr(config, name)}")


def policy_spec(algo: str, config: PPOConfig | APGConfig, task: Task) -> PolicySpec:
    """The PolicySpec stored with a baseline's checkpoints."""
    kind, hidden = (PPO_KIND, config.policy_hidden_sizes) if algo == "ppo" else (APG_KIND, config.hidden_sizes)
    return PolicySpec(task.observation_size, task.action_size, kind, hidden, config.activation)


# ----------------------------------------------------------------------------------------------------
# Shared bookkeeping: evaluation rows, metrics.csv and checkpoints.

RowFn = Callable[[dict[str, Any]], None]


@dataclasses.dataclass
class _Run:
    """Per-run state behind the brax callbacks: what is done so far and where it goes."""

    run_dir: Path
    algo: str
    spec: PolicySpec
    base_meta: dict[str, Any]  # algo, env, backend, seed, config, train_perturbation
    task: Task  # evaluated under its own (training) perturbation
    eval_episodes: int  # episodes per evaluation
    on_row: RowFn
    env_steps_before: int = 0  # env steps done by earlier (resumed-from) runs
    wall_clock_before_s: float = 0.0  # wall clock spent by earlier runs
    rows: int = 0  # metrics.csv data rows so far
    epoch: int = 0  # evaluations done so far
    nonfinite_skipped: int = 0  # checkpoints refused because parameters were not finite
    start_s: float = dataclasses.field(default_factory=time.monotonic)
    last_s: float = dataclasses.field(default_factory=time.monotonic)  # time of the previous row
    last_steps: int = 0  # env steps at the previous row

    def record(self, steps_this_run: int, make_policy, params: Params, train_state: Any, extra: dict) -> None:
        """Evaluate ``params``, append a metrics row, checkpoint (policy + ``train_state``), keep the best."""
        env_steps = self.env_steps_before + int(steps_this_run)
        # Strong-typed leaves: brax's initial parameters hold weak-typed scalars, its later ones do not,
        # and the compiled evaluation would otherwise be built twice.
        policy_params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.asarray(x).dtype), (params[0], params[1]))
        res = evaluate(make_policy, policy_params, self.task, episodes=self.eval_episodes,
                       seed=self.base_meta["seed"] + 1)
        now_s = time.monotonic()
        wall = self.wall_clock_before_s + now_s - self.start_s
        rate = (env_steps - self.last_steps) / max(now_s - self.last_s, 1e-9)  # incl. evaluation time
        self.last_steps, self.last_s = env_steps, now_s
        row = {"epoch": self.epoch, "env_steps": env_steps, "wall_s": round(wall, 3),
               "eval_return": res.mean_return, "eval_return_std": res.std_return,
               "eval_length": res.mean_length, "steps_per_s": round(rate, 1), **extra}
        self.rows = checkpoint.append_metrics(self.run_dir, row)
        self.epoch += 1
        meta = {**self.base_meta, "epoch": self.epoch, "env_steps": env_steps, "wall_s": wall,
                "metrics_rows": self.rows, "nonfinite_checkpoints_skipped": self.nonfinite_skipped}
        policy = {"spec": self.spec, "policy_params": policy_params, "meta": meta}
        try:
            checkpoint.save(self.run_dir, train_state=train_state, **policy)
        except SharprlError:
            self.nonfinite_skipped += 1  # keep the previous checkpoint; reported in the next meta
        else:
            checkpoint.save_best(self.run_dir, eval_return=res.mean_return, **policy)
        self.on_row(row)


def _start(run_dir: Path, base_meta: dict[str, Any], resume: bool) -> tuple[dict[str, Any] | None, int]:
    """Prepare ``run_dir`` for a run described by ``base_meta``; returns (checkpoint meta or None, metrics
    rows to keep). A checkpoint from other settings is refused before anything in ``run_dir`` changes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not checkpoint.has_checkpoint(run_dir):
        checkpoint.start_fresh(run_dir)
        return None, 0
    if not resume:
        raise SharprlError(f"{run_dir}: already holds a checkpoint; pass --resume or another --out")
    meta = checkpoint.load_meta(run_dir)
    checkpoint.check_resumable(run_dir, meta, base_meta)  # algo first, then env, backend, config, perturbation
    checkpoint.truncate_metrics(run_dir, int(meta["metrics_rows"]))
    return meta, int(meta["metrics_rows"])


def _num_evals(env_steps: int, every: int) -> int:
    """brax's num_evals (it counts the initial one) for an evaluation every ``every`` env steps."""
    return max(2, math.ceil(env_steps / every) + 1)


def _base_meta(algo: str, task: Task, seed: int, config) -> dict[str, Any]:
    return {"algo": algo, "env": task.name, "backend": task.backend, "seed": seed,
            "episode_length": task.episode_length, "config": checkpoint.config_json(config),
            "train_perturbation": dataclasses.asdict(task.perturbation)}


def _open_run(run_dir: Path, algo: str, task: Task, seed: int, config, resume: bool,
              on_row: RowFn) -> tuple[dict[str, Any] | None, _Run, Any]:
    """Prepare ``run_dir`` for a baseline run; returns (checkpoint meta or None, its _Run, make_policy)."""
    base_meta = _base_meta(algo, task, seed, config)
    meta, rows = _start(run_dir, base_meta, resume)
    spec = policy_spec(algo, config, task)
    run = _Run(run_dir, algo, spec, base_meta, task, config.eval_episodes, on_row, rows=rows)
    if meta is not None:
        run.env_steps_before = int(meta["env_steps"])
        run.wall_clock_before_s = float(meta.get("wall_s", 0.0))
        run.last_steps = run.env_steps_before
        run.epoch = int(meta["epoch"])
        run.nonfinite_skipped = int(meta.get("nonfinite_checkpoints_skipped", 0))
    return meta, run, policy_factory(spec)[0]


def train_ppo(task: Task, run_dir: Path | str, env_steps: int, *, seed: int = 0,
              config: PPOConfig = PPOConfig(), resume: bool = False, on_row: RowFn = lambda row: None) -> dict:
    """Run brax.training PPO for ``env_steps`` in total; returns the last checkpoint's metadata."""
    from brax.training.agents.ppo import train as ppo_train

    run_dir = Path(run_dir)
    meta, run, make_policy = _open_run(Path(run_dir), "ppo", task, seed, config, resume, on_row)
    network_factory = functools.partial(
        ppo_networks.make_ppo_networks, policy_hidden_layer_sizes=config.policy_hidden_sizes,
        value_hidden_layer_sizes=config.value_hidden_sizes, activation=activation_fn(config.activation))
    value_template = network_factory(task.observation_size, task.action_size).value_network.init(jax.random.PRNGKey(0))
    restore = None
    if meta is not None:
        loaded = checkpoint.load_policy(run_dir)
        value, _ = checkpoint.load_train_state(run_dir, {"value": value_template})
        restore = (loaded.params[0], loaded.params[1], value["value"])
    remaining = env_steps - run.env_steps_before
    if remaining <= 0:
        return checkpoint.load_meta(run_dir) if meta else {}

    def policy_params_fn(step: int, _brax_make_policy, params) -> None:
        if step == 0 and meta is not None:
            return  # the resumed-from checkpoint already evaluated these parameters
        run.record(step, make_policy, params, {"value": params[2]}, {})

    ppo_train.train(
        brax_env(task), num_timesteps=remaining, episode_length=task.episode_length,
        num_envs=config.num_envs, batch_size=config.batch_size, unroll_length=config.unroll_length,
        num_minibatches=config.num_minibatches, num_updates_per_batch=config.num_updates_per_batch,
        discounting=config.discounting, learning_rate=config.learning_rate,
        entropy_cost=config.entropy_cost, reward_scaling=config.reward_scaling,
        normalize_observations=config.normalize_observations, network_factory=network_factory,
        seed=seed + run.epoch, num_evals=_num_evals(remaining, config.eval_every_env_steps),
        run_evals=False, num_eval_envs=1, policy_params_fn=policy_params_fn, restore_params=restore)
    return checkpoint.load_meta(run_dir)


def train_apg(task: Task, run_dir: Path | str, env_steps: int, *, seed: int = 0,
              config: APGConfig = APGConfig(), resume: bool = False, on_row: RowFn = lambda row: None) -> dict:
    """Run brax.training APG for ``env_steps`` in total; returns the last checkpoint's metadata."""
    from brax.training.agents.apg import train as apg_train

    run_dir = Path(run_dir)
    meta, run, make_policy = _open_run(Path(run_dir), "apg", task, seed, config, resume, on_row)
    spec = run.spec
    steps_per_update = config.num_envs * config.horizon_length
    updates_done = run.env_steps_before // steps_per_update
    updates_left = math.ceil(env_steps / steps_per_update) - updates_done
    if updates_left <= 0:
        return checkpoint.load_meta(run_dir) if meta else {}
    updates_per_epoch = max(1, config.eval_every_env_steps // steps_per_update)
    epochs = math.ceil(updates_left / updates_per_epoch)
    saved_norm = saved_policy = None
    if meta is not None:
        saved_norm, saved_policy = checkpoint.load_policy(run_dir).params

    def normalizer(live):
        """Statistics used by the policy: the live ones, merged with the resumed run's; or none."""
        if not config.normalize_observations:
            return init_normalizer(spec.observation_size)
        return live if saved_norm is None else merge_statistics(saved_norm, live)

    def network_factory(obs_size, action_size, preprocess_observations_fn):
        del preprocess_observations_fn  # replaced: normalise with `normalizer(live statistics)`
        pre = (lambda obs, live: running_statistics.normalize(obs, normalizer(live))) \
            if config.normalize_observations else identity_observation_preprocessor
        nets = apg_networks.make_apg_networks(
            obs_size, action_size, preprocess_observations_fn=pre, hidden_layer_sizes=config.hidden_sizes,
            activation=activation_fn(config.activation))
        if saved_policy is None:
            return nets
        return nets.replace(policy_network=dataclasses.replace(nets.policy_network, init=lambda key: saved_policy))

    def progress_fn(it: int, brax_metrics: dict) -> None:
        if it == 0 and meta is not None:
            return
        state = inspect.currentframe().f_back.f_locals.get("training_state")
        if state is None:  # not brax 0.14.2's apg.train frame: evaluated once at the end instead
            return
        live, policy_params = jax.tree_util.tree_map(lambda x: x[0], (state.normalizer_params, state.policy_params))
        extra = {"grad_norm": float(brax_metrics.get("training/grad_norm", math.nan))}
        run.record(it * updates_per_epoch * steps_per_update, make_policy,
                   (normalizer(live), policy_params), None, extra)

    _, (live, policy_params), _ = apg_train.train(
        brax_env(task), episode_length=task.episode_length, policy_updates=epochs * updates_per_epoch,
        horizon_length=config.horizon_length, num_envs=config.num_envs, num_evals=epochs + 1,
        num_eval_envs=1, learning_rate=config.learning_rate * config.schedule_decay**updates_done,
        adam_b=(config.adam_b1, config.adam_b2), schedule_decay=config.schedule_decay,
        max_gradient_norm=config.max_gradient_norm, normalize_observations=config.normalize_observations,
        network_factory=network_factory, progress_fn=progress_fn, seed=seed + run.epoch,
        eval_env=NullEnv(task.observation_size, task.action_size))
    final_steps = epochs * updates_per_epoch * steps_per_update
    if run.last_steps != run.env_steps_before + final_steps:  # the callback could not see the parameters
        run.record(final_steps, make_policy, (normalizer(live), policy_params), None, {"grad_norm": math.nan})
    return checkpoint.load_meta(run_dir)


def config_class(algo: str) -> type[PPOConfig] | type[APGConfig]:
    """The config dataclass of baseline ``algo`` (its defaults are the baseline's settings)."""
    if algo not in ALGOS:
        raise SharprlError(f"unknown baseline {algo!r}: expected one of {', '.join(ALGOS)}")
    return PPOConfig if algo == "ppo" else APGConfig


def train(algo: str, task: Task, run_dir: Path | str, env_steps: int, *, seed: int = 0, resume: bool = False,
          on_row: RowFn = lambda row: None, config: PPOConfig | APGConfig | None = None) -> dict:
    """``sharprl train --algo apg|ppo``: the baseline's default config unless ``config`` is given."""
    config = config or config_class(algo)()
    if env_steps < 1:
        raise SharprlError(f"--env-steps must be >= 1, got {env_steps}")
    fn = train_ppo if algo == "ppo" else train_apg
    return fn(task, run_dir, env_steps, seed=seed, config=config, resume=resume, on_row=on_row)
