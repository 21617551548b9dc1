"""SHAC (Xu et al., ICLR 2022) and its SAM / ASAM variants, as pure JAX functions.

One epoch: roll the current env states ``horizon`` steps with the stochastic actor (a ``lax.scan``
through the differentiable Brax physics), form the short-horizon actor loss (discounted rewards plus
the target critic's value at the end of the window or of a finished episode), take its gradient
w.r.t. the actor (optionally the SAM/ASAM gradient from the same start states, keys and normaliser
statistics), and fit the critic to TD(lambda) targets from the same rollout (``sharprl.critic``).
Training runs the epoch's parts in threads (:mod:`sharprl.schedule`): the envs in shards, each with
its own forward and backward pass, and the critic's fit beside the backward passes. Gradients stop
at the window's start and at every reset. Episodes terminate early (value 0) or are truncated at
``episode_length`` (bootstrapped with the target critic on the observation before the reset). An
update whose loss or gradient is not finite is skipped and counted.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sharprl import checkpoint, critic, guards, networks, schedule, sharpness
from sharprl.envs import Task, healthy_barrier, upright_barrier
from sharprl.errors import SharprlError
from sharprl.evaluate import evaluate
from sharprl.returns import RETURN_WINDOW, finished_returns, mean_training_return
from sharprl.shac_config import SHACConfig
from sharprl.shac_state import Rollout, TrainState, Window


class Learner:
    """The networks, optimisers and epoch function for one (config, task).

    ``shards``: the envs are split into this many equal shards, each rolled out and differentiated in
    its own thread (:mod:`sharprl.schedule`); the same maths up to float rounding for any count. None:
    one per CPU core this process may use (:func:`schedule.default_shards`).
    """

    def __init__(self, config: SHACConfig, task: Task, shards: int | None = None):
        self.config, self.task = config, task
        self.shards = schedule.check_shards(config.num_envs, shards)
        self.shard_envs = config.num_envs // self.shards  # m: envs per shard
        self.spec = networks.PolicySpec(
            observation_size=task.observation_size,
            action_size=task.action_size,
            hidden_sizes=tuple(config.actor_hidden),
            activation=config.activation,
            log_std_init=config.log_std_init,
            layer_norm=config.layer_norm,
        )
        self.actor = networks.make_actor(self.spec)
        self.critic = networks.ValueCritic(tuple(config.critic_hidden), config.activation, config.layer_norm)
        self.make_policy, _ = networks.policy_factory(self.spec)
        critic_updates = config.epochs * config.critic_iterations * config.critic_minibatches
        self.actor_opt = sharpness.wrap(
            self._adam(config.actor_lr, config.epochs), config.sharpness, config.rho, config.asam_eta
        )
        critic_mode = config.sharpness if config.critic_sharpness else None
        self.critic_opt = sharpness.wrap(
            self._adam(config.critic_lr, critic_updates), critic_mode, config.rho, config.asam_eta
        )
        self.epoch_fn = schedule.ThreadedEpoch(self)  # state -> (state, metrics), compiled parts in threads
        self.reset_fn = jax.jit(jax.vmap(task.reset))  # (num_envs, 2) keys -> batched env state

    def _adam(self, lr: float, steps: int) -> optax.GradientTransformation:
        schedule = optax.linear_schedule(lr, self.config.final_lr, max(steps, 1))
        return optax.chain(
            optax.clip_by_global_norm(self.config.grad_norm_clip),
            optax.adam(schedule, b1=self.config.adam_b1, b2=self.config.adam_b2),
        )

    def init(self, key: jax.Array) -> TrainState:
        cfg = self.config
        k_actor, k_critic, k_env, key = jax.random.split(key, 4)
        dummy = jnp.zeros((1, self.spec.observation_size))
        actor_params = self.actor.init(k_actor, dummy)
        critic_params = self.critic.init(k_critic, dummy)
        env_state = self.reset_fn(jax.random.split(k_env, cfg.num_envs))
        zeros = jnp.zeros(cfg.num_envs)
        state = TrainState(
            actor_params,
            critic_params,
            critic_params,
            self.actor_opt.init(actor_params),
            self.critic_opt.init(critic_params),
            networks.init_normalizer(self.spec.observation_size),
            env_state,
            jnp.zeros(cfg.num_envs, jnp.int32),
            zeros,
            jnp.zeros(RETURN_WINDOW),
            jnp.int32(0),
            key,
            jnp.int32(0),
            jnp.int32(0),
            jnp.int32(0),
        )
        # Python-scalar leaves (the normaliser's std_eps) as the weakly typed arrays epoch() returns,
        # so the second epoch call does not trace the whole epoch again.
        return jax.tree.map(jnp.asarray, state)

    def policy_params(self, state: TrainState) -> tuple[Any, Any]:
        """What ``make_policy`` takes: (normaliser statistics, actor params)."""
        return state.normalizer, state.actor_params

    # ---- the actor loss over one short-horizon window -------------------------------------------
    def rollout_loss(self, actor_params, state: TrainState, reset_states, env_keys: jax.Array):
        """Short-horizon actor loss and the rollout data the critic needs, for the n envs of
        ``state.env_state`` (all of them or one shard), with ``env_keys`` (n, 2) one key per env.

        Depends only on its arguments: calling it twice with the same ``state`` (start env states,
        normaliser, target critic), ``reset_states`` and ``env_keys`` replays the same noise and resets;
        an env's noise depends only on its own key, so a shard of the envs replays its part of the batch.
        """
        cfg, task = self.config, self.task
        norm = state.normalizer if cfg.normalize_observations else None
        start = jax.lax.stop_gradient(state.env_state)
        n = env_keys.shape[0]

        def obs_norm(obs):
            return obs if norm is None else networks.normalize(obs, norm)

        def barriers(pipeline_state):  # () one env's training-only penalties, weighted
            total = cfg.healthy_barrier * healthy_barrier(task.env, pipeline_state, cfg.healthy_margin)
            if cfg.upright_barrier:
                total += cfg.upright_barrier * upright_barrier(task.env, pipeline_state, cfg.upright_min)
            return total

        def step(carry, inputs):
            env_state, ep_step, disc, rew_acc = carry  # (n,) each except env_state
            keys_t, last = inputs  # (n, 2) this step's key per env
            k_pol, k_env = jnp.moveaxis(jax.vmap(jax.random.split)(keys_t), 1, 0)  # (n, 2) each
            obs = env_state.obs  # (n, obs)
            action = jax.vmap(lambda o, k: networks.gaussian_action(self.actor, actor_params, o, k, False))(
                obs_norm(obs), k_pol
            )  # (n, act)
            nxt = jax.vmap(task.step)(env_state, action, k_env)
            finite = jnp.all(jnp.isfinite(nxt.obs), axis=-1) & jnp.isfinite(nxt.reward)  # (n,)
            reward = jnp.where(finite, nxt.reward, 0.0)  # (n,) raw
            shaped = reward  # (n,)
            if cfg.healthy_barrier or cfg.upright_barrier:
                shaped = reward - jnp.where(finite, jax.vmap(barriers)(nxt.pipeline_state), 0.0)
            ep_step = ep_step + 1
            terminated = (nxt.done > 0.5) | ~finite
            done = terminated | (ep_step >= cfg.episode_length)
            rew_acc = rew_acc + disc * shaped * cfg.reward_scale
            cut = done | last  # windows end here: the window's return, plus the bootstrapped value
            new_env = jax.tree.map(
                lambda r, x: jnp.where(done.reshape((n,) + (1,) * (x.ndim - 1)), r, x), reset_states, nxt
            )
            out = {
                "obs": jax.lax.stop_gradient(obs),  # (n, obs) raw, for the normaliser and critic
                "next_obs": jnp.where(finite[:, None], nxt.obs, 0.0),  # (n, obs) before any reset, differentiable
                "window_return": jnp.where(cut, rew_acc, 0.0),  # (n,) differentiable
                "boot_discount": jnp.where(cut, cfg.gamma * disc, 0.0),  # (n,) weight of V(next_obs), 0 if terminated
                "terminated": terminated,  # (n,)
                "reward": jax.lax.stop_gradient(shaped * cfg.reward_scale),  # (n,) what the losses optimise
                "raw_reward": jax.lax.stop_gradient(reward),  # (n,)
                "done": cut.astype(jnp.float32),  # (n,) 1 where the critic target must bootstrap
                "ep_done": done,  # (n,) episode finished (terminated or truncated)
            }
            disc = jnp.where(done, 1.0, disc * cfg.gamma)
            rew_acc = jnp.where(done, 0.0, rew_acc)
            return (new_env, jnp.where(done, 0, ep_step), disc, rew_acc), out

        if cfg.remat:  # recompute each step's forward pass in the backward pass instead of storing it
            step = jax.checkpoint(step, prevent_cse=False)
        lasts = jnp.arange(cfg.horizon) == cfg.horizon - 1
        init = (start, state.episode_step, jnp.ones(n), jnp.zeros(n))
        step_keys = jax.vmap(lambda k: jax.random.split(k, cfg.horizon))(env_keys)  # (n, horizon, 2)
        step_keys = jnp.swapaxes(step_keys, 0, 1)  # (horizon, n, 2)
        (env_state, ep_step, _, _), traj = jax.lax.scan(step, init, (step_keys, lasts))
        # the target critic's value of every next state in one batched call, not one per step
        next_obs = traj.pop("next_obs")  # (horizon, n, obs)
        value = self.critic.apply(state.target_critic_params, obs_norm(next_obs))  # (horizon, n)
        value = jnp.where(traj.pop("terminated"), 0.0, value)
        loss = -(jnp.sum(traj.pop("window_return")) + jnp.sum(traj.pop("boot_discount") * value))
        traj["next_value"] = jax.lax.stop_gradient(value)  # (horizon, n)
        loss = loss / (cfg.horizon * n)
        return loss, (traj, jax.lax.stop_gradient(env_state), ep_step)

    # ---- one epoch: per shard a forward pass, then the actor's backward pass beside the critic's fit --
    def prepare(self, state: TrainState) -> Window:
        """The epoch's resets and keys, shared by all shards (and by SAM's second gradient)."""
        key, k_reset, k_roll, k_critic = jax.random.split(state.key, 4)
        n = self.config.num_envs
        reset_states = jax.vmap(self.task.reset)(jax.random.split(k_reset, n))
        return Window(reset_states, jax.random.split(k_roll, n), k_critic, key)

    def shard_inputs(self, state: TrainState, window: Window, index: jax.Array) -> tuple[TrainState, Any, jax.Array]:
        """Shard ``index``'s envs: the state with its start env states, its resets and its keys."""
        m = self.shard_envs

        def part(tree):
            return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, index * m, m), tree)

        sub = state.replace(env_state=part(state.env_state), episode_step=part(state.episode_step))
        return sub, part(window.reset_states), part(window.env_keys)

    def forward(self, state: TrainState, window: Window, index: jax.Array) -> Rollout:
        """Shard ``index``'s rollout and actor loss, with the pullback that gives its actor gradient."""
        sub, resets, keys = self.shard_inputs(state, window, index)
        loss, pullback, (traj, env_state, ep_step) = jax.vjp(
            lambda p: self.rollout_loss(p, sub, resets, keys), state.actor_params, has_aux=True
        )
        return Rollout(loss, pullback, traj, env_state, ep_step)

    def backward(self, ro: Rollout) -> Any:
        """The shard's actor gradient, from its forward pass's residuals."""
        return ro.pullback(jnp.ones_like(ro.loss))[0]

    def shard_grad(self, actor_params, state: TrainState, window: Window, index: jax.Array) -> Any:
        """Shard ``index``'s actor gradient at ``actor_params`` from the epoch's starts, resets and keys."""
        sub, resets, keys = self.shard_inputs(state, window, index)
        return jax.grad(lambda p: self.rollout_loss(p, sub, resets, keys)[0])(actor_params)

    def actor_step(self, state: TrainState, loss, grad, grad_fn: Callable | None = None) -> tuple[dict, dict]:
        """The optimiser step from the loss and gradient at theta (SAM/ASAM: ``grad_fn(p)`` gives the
        gradient at p from the same starts and keys); a non-finite loss, gradient or update leaves the
        actor as it was."""
        extra = {"grad_fn": grad_fn} if self.config.sharpness else {}
        updates, opt_state = self.actor_opt.update(grad, state.actor_opt_state, state.actor_params, **extra)
        return self.actor_finish(state, loss, grad, updates, opt_state)

    def actor_finish(self, state: TrainState, loss, grad, updates, opt_state) -> tuple[dict, dict]:
        """The actor's new fields from the optimiser's output, or its old ones if anything is not finite."""
        ok = jnp.isfinite(loss) & guards.tree_finite(grad) & guards.tree_finite(updates)
        fields = {
            "actor_params": guards.select(ok, optax.apply_updates(state.actor_params, updates), state.actor_params),
            "actor_opt_state": guards.select(ok, opt_state, state.actor_opt_state),
            "skipped_actor": state.skipped_actor + (~ok).astype(jnp.int32),
        }
        return fields, {"actor_loss": loss, "grad_norm": optax.tree.norm(grad), "update_ok": ok}

    def critic_step(self, state: TrainState, trajs: tuple, rng: jax.Array) -> tuple[dict, dict]:
        """Fit the critic to the window's TD(lambda) targets, move the target critic, update the
        observation statistics and the finished-episode returns. Needs only the forward passes."""
        cfg = self.config
        traj = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *trajs)  # (horizon, num_envs, ...)
        obs = traj["obs"].reshape(-1, traj["obs"].shape[-1])  # (horizon * n, obs)
        targets = critic.td_lambda_targets(traj["reward"], traj["done"], traj["next_value"], cfg.gamma, cfg.td_lambda)
        params, opt_state, skipped, loss = critic.fit(
            self.critic.apply, self.critic_opt, state.critic_params, state.critic_opt_state,
            networks.normalize(obs, state.normalizer) if cfg.normalize_observations else obs,
            targets.reshape(-1), rng, cfg.critic_iterations, cfg.critic_minibatches,
            sharpness=bool(cfg.critic_sharpness and cfg.sharpness),
        )  # fmt: skip
        ret, finished, count = finished_returns(state, traj)
        fields = {
            "critic_params": params,
            "critic_opt_state": opt_state,
            "target_critic_params": optax.incremental_update(
                params, state.target_critic_params, 1.0 - cfg.target_critic_alpha
            ),
            "skipped_critic": state.skipped_critic + skipped,
            "normalizer": networks.update_normalizer(state.normalizer, obs)
            if cfg.normalize_observations
            else state.normalizer,
            "episode_return": ret,
            "finished_returns": finished,
            "finished_count": count,
        }
        return fields, {"critic_loss": loss}

    def combine(
        self, state: TrainState, window: Window, ros: tuple, actor: tuple, fitted: tuple
    ) -> tuple[TrainState, dict]:
        """The next training state and the epoch's metrics from the shards' end states and the two updates."""
        joined = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[(ro.env_state, ro.episode_step) for ro in ros])
        new = state.replace(
            **actor[0], **fitted[0], env_state=joined[0], episode_step=joined[1], key=window.next_key,
            epoch=state.epoch + 1,
        )  # fmt: skip
        return new, {**actor[1], **fitted[1]}

    def epoch(self, state: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
        """One epoch as one pure function (what :attr:`epoch_fn` computes with its parts in threads)."""
        window = self.prepare(state)
        ros = [self.forward(state, window, i) for i in range(self.shards)]

        def grad_fn(p):
            return schedule.tree_mean([self.shard_grad(p, state, window, i) for i in range(self.shards)])

        loss, grad = schedule.tree_mean([ro.loss for ro in ros]), schedule.tree_mean([self.backward(ro) for ro in ros])
        actor = self.actor_step(state, loss, grad, grad_fn)
        fitted = self.critic_step(state, tuple(ro.traj for ro in ros), window.critic_key)
        return self.combine(state, window, ros, actor, fitted)


_LEARNERS: dict[tuple, Learner] = {}


def learner_for(config: SHACConfig, task: Task) -> Learner:
    """A Learner, shared by calls with the same config (seed aside) and task, so jitted code is reused."""
    key = (dataclasses.replace(config, seed=0), id(task.env), task.episode_length, task.perturbation)
    hit = _LEARNERS.get(key)
    if hit is None or hit.task.env is not task.env:
        hit = _LEARNERS[key] = Learner(dataclasses.replace(config, seed=0), task)
    return hit


def clear_learners() -> None:
    """Forget the shared Learners (their compiled programs can then be freed)."""
    _LEARNERS.clear()


ProgressFn = Callable[[dict[str, Any]], None]


def train(
    config: SHACConfig,
    task: Task,
    progress_fn: ProgressFn | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
) -> tuple[networks.MakePolicy, Any, list[dict[str, Any]]]:
    """Train SHAC / SHAC-SAM / SHAC-ASAM; returns ``(make_policy, policy_params, metrics rows)``.

    With ``run_dir``, metrics go to ``metrics.csv`` and checkpoints (policy + full training state) are
    written every ``checkpoint_every_epochs`` epochs and at the end, the best-evaluated policy to
    ``best/`` (:func:`checkpoint.save_best`); ``resume=True`` continues from
    the last checkpoint there (the metrics rows after it are dropped and recomputed).
    """
    learner = learner_for(config, task)
    state = learner.init(jax.random.PRNGKey(config.seed))
    rows: list[dict[str, Any]] = []
    wall_offset_s = 0.0
    meta_base = {
        "algo": config.algo,
        "env": task.name,
        "backend": task.backend,
        "episode_length": task.episode_length,
        "train_perturbation": dataclasses.asdict(task.perturbation),
        "config": checkpoint.config_json(config),
    }
    if run_dir is not None and resume and checkpoint.has_checkpoint(run_dir):
        state, meta = checkpoint.load_train_state(run_dir, state)
        checkpoint.check_resumable(run_dir, meta, meta_base)
        checkpoint.truncate_metrics(run_dir, int(meta["metrics_rows"]))
        rows = checkpoint.read_metrics(run_dir)
        wall_offset_s = float(meta["wall_s"])
    elif run_dir is not None and checkpoint.has_checkpoint(run_dir):
        raise SharprlError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")
    elif run_dir is not None:
        checkpoint.start_fresh(run_dir)
    start_s = time.perf_counter()
    last_s, last_steps = start_s, int(state.epoch) * config.env_steps_per_epoch
    while int(state.epoch) < config.epochs:
        state, m = learner.epoch_fn(state)
        epoch = int(state.epoch)
        now_s = time.perf_counter()
        env_steps = epoch * config.env_steps_per_epoch
        row: dict[str, Any] = {
            "epoch": epoch,
            "env_steps": env_steps,
            "wall_s": round(wall_offset_s + now_s - start_s, 3),
            "train_return": mean_training_return(state),
            "eval_return": "",
            "eval_return_std": "",
            "eval_length": "",
            "actor_loss": float(m["actor_loss"]),
            "critic_loss": float(m["critic_loss"]),
            "grad_norm": float(m["grad_norm"]),
            "skipped_actor": int(state.skipped_actor),
            "skipped_critic": int(state.skipped_critic),
            "steps_per_s": round((env_steps - last_steps) / max(now_s - last_s, 1e-9), 1),
        }
        last_s, last_steps = now_s, env_steps
        if epoch == config.epochs or (config.eval_every_epochs and epoch % config.eval_every_epochs == 0):
            res = evaluate(
                learner.make_policy,
                learner.policy_params(state),
                task,
                episodes=config.eval_episodes,
                seed=config.seed + 1,
            )
            row["eval_return"], row["eval_return_std"] = res.mean_return, res.std_return
            row["eval_length"] = res.mean_length  # below episode_length: episodes ended early
        rows.append(row)
        if run_dir is not None:
            checkpoint.append_metrics(run_dir, row)
            meta = {
                **meta_base,
                "epoch": epoch,
                "env_steps": env_steps,
                "metrics_rows": len(rows),
                "wall_s": row["wall_s"],
            }
            policy = {"spec": learner.spec, "policy_params": learner.policy_params(state), "meta": meta}
            if row["eval_return"] != "":
                checkpoint.save_best(run_dir, eval_return=row["eval_return"], **policy)
            if epoch % config.checkpoint_every_epochs == 0 or epoch == config.epochs:
                checkpoint.save(run_dir, train_state=state, **policy)
        if progress_fn is not None:
            progress_fn(row)
    return learner.make_policy, learner.policy_params(state), rows
