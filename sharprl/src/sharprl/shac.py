"""SHAC (Xu et al., ICLR 2022) and its SAM / ASAM variants, as pure JAX functions.

One epoch: roll the current env states ``horizon`` steps with the stochastic actor (a ``lax.scan``
through the differentiable Brax physics), form the short-horizon actor loss (discounted rewards plus
the target critic's value at the end of the window or of a finished episode), take its gradient
w.r.t. the actor (optionally the SAM/ASAM gradient from the same start states, keys and normaliser
statistics), and fit the critic to TD(lambda) targets from the same rollout (``sharprl.critic``; it
needs only the forward pass, so training fits it in a second thread beside the actor's backward
pass: :meth:`Learner.epoch_fn`). Gradients stop at the window's start and at every reset. Episodes
terminate early (value 0) or are truncated at ``episode_length`` (bootstrapped with the target
critic on the observation before the reset). An update whose loss or gradient is not finite is
skipped and counted.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from sharprl import checkpoint, critic, guards, networks, sharpness
from sharprl.envs import Task, healthy_barrier, upright_barrier
from sharprl.errors import SharprlError
from sharprl.evaluate import evaluate
from sharprl.returns import RETURN_WINDOW, finished_returns, mean_training_return
from sharprl.shac_config import SHACConfig


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree, checkpointed for --resume)."""

    actor_params: Any  # flax params of the Gaussian actor
    critic_params: Any  # flax params of the value critic
    target_critic_params: Any  # slowly-updated copy of the critic
    actor_opt_state: Any  # optax state of the (SAM/ASAM-wrapped) actor optimiser
    critic_opt_state: Any  # optax state of the critic optimiser
    normalizer: networks.NormalizerState  # running observation statistics
    env_state: Any  # brax State batched over num_envs
    episode_step: jax.Array  # (num_envs,) int32 steps into the current episode
    episode_return: jax.Array  # (num_envs,) raw return of the current episode so far
    finished_returns: jax.Array  # (RETURN_WINDOW,) ring buffer of finished episodes' returns
    finished_count: jax.Array  # () int32 number of finished episodes so far
    key: jax.Array  # (2,) uint32 PRNG key
    epoch: jax.Array  # () int32 epochs done
    skipped_actor: jax.Array  # () int32 actor updates skipped (non-finite)
    skipped_critic: jax.Array  # () int32 critic updates skipped (non-finite)


@flax.struct.dataclass
class Rollout:
    """One epoch's forward pass: what the actor's backward pass and the critic's fit start from."""

    loss: jax.Array  # () short-horizon actor loss at the current actor
    pullback: Any  # jax.vjp pullback of the loss w.r.t. the actor params (holds the rollout's residuals)
    traj: dict[str, jax.Array]  # (horizon, n) per-step rollout data, no gradient (see rollout_loss)
    env_state: Any  # brax State batched over n: where the next window starts
    episode_step: jax.Array  # (n,) int32 steps into each episode at the window's end
    reset_states: Any  # brax State batched over n: the resets this window used (SAM replays them)
    rollout_key: jax.Array  # (2,) the window's key (SAM's second gradient replays it)
    critic_key: jax.Array  # (2,) key of the critic's minibatch shuffles
    next_key: jax.Array  # (2,) the training state's key for the next epoch


class Learner:
    """The networks, optimisers and jitted epoch function for one (config, task)."""

    def __init__(self, config: SHACConfig, task: Task):
        self.config, self.task = config, task
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
        self._forward, self._actor = jax.jit(self.forward), jax.jit(self.actor_step)
        self._critic, self._combine = jax.jit(self.critic_step), jax.jit(self.combine)
        self._critic_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sharprl-critic")
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
    def rollout_loss(self, actor_params, state: TrainState, reset_states, rng: jax.Array):
        """Short-horizon actor loss and the rollout data the critic needs.

        Depends only on its arguments: calling it twice with the same ``state`` (start env states,
        normaliser, target critic), ``reset_states`` and ``rng`` replays the same noise and resets.
        """
        cfg, task = self.config, self.task
        norm = state.normalizer if cfg.normalize_observations else None
        start = jax.lax.stop_gradient(state.env_state)
        n = cfg.num_envs

        def obs_norm(obs):
            return obs if norm is None else networks.normalize(obs, norm)

        def barriers(pipeline_state):  # () one env's training-only penalties, weighted
            total = cfg.healthy_barrier * healthy_barrier(task.env, pipeline_state, cfg.healthy_margin)
            if cfg.upright_barrier:
                total += cfg.upright_barrier * upright_barrier(task.env, pipeline_state, cfg.upright_min)
            return total

        def step(carry, inputs):
            env_state, ep_step, disc, rew_acc = carry  # (n,) each except env_state
            rng_t, last = inputs
            rng_pol, rng_noise = jax.random.split(rng_t)
            obs = env_state.obs  # (n, obs)
            action = networks.gaussian_action(self.actor, actor_params, obs_norm(obs), rng_pol, False)
            nxt = jax.vmap(task.step)(env_state, action, jax.random.split(rng_noise, n))
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
        (env_state, ep_step, _, _), traj = jax.lax.scan(step, init, (jax.random.split(rng, cfg.horizon), lasts))
        # the target critic's value of every next state in one batched call, not one per step
        next_obs = traj.pop("next_obs")  # (horizon, n, obs)
        value = self.critic.apply(state.target_critic_params, obs_norm(next_obs))  # (horizon, n)
        value = jnp.where(traj.pop("terminated"), 0.0, value)
        loss = -(jnp.sum(traj.pop("window_return")) + jnp.sum(traj.pop("boot_discount") * value))
        traj["next_value"] = jax.lax.stop_gradient(value)  # (horizon, n)
        loss = loss / (cfg.horizon * n)
        return loss, (traj, jax.lax.stop_gradient(env_state), ep_step)

    # ---- one epoch: forward pass, then the actor's backward pass beside the critic's fit ----------
    def forward(self, state: TrainState) -> Rollout:
        """The window's rollout and actor loss, with the pullback that gives the actor gradient."""
        key, k_reset, k_roll, k_critic = jax.random.split(state.key, 4)
        reset_states = jax.vmap(self.task.reset)(jax.random.split(k_reset, self.config.num_envs))
        loss, pullback, (traj, env_state, ep_step) = jax.vjp(
            lambda p: self.rollout_loss(p, state, reset_states, k_roll), state.actor_params, has_aux=True
        )
        return Rollout(loss, pullback, traj, env_state, ep_step, reset_states, k_roll, k_critic, key)

    def actor_step(self, state: TrainState, ro: Rollout) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        """The actor gradient (SAM/ASAM: the gradient at theta + eps from the same starts and keys) and
        the optimiser step; a non-finite loss, gradient or update leaves the actor as it was."""
        (grad,) = ro.pullback(jnp.ones_like(ro.loss))

        def loss_only(p):
            return self.rollout_loss(p, state, ro.reset_states, ro.rollout_key)[0]

        extra = {"grad_fn": jax.grad(loss_only)} if self.config.sharpness else {}
        updates, opt_state = self.actor_opt.update(grad, state.actor_opt_state, state.actor_params, **extra)
        ok = jnp.isfinite(ro.loss) & guards.tree_finite(grad) & guards.tree_finite(updates)
        fields = {
            "actor_params": guards.select(ok, optax.apply_updates(state.actor_params, updates), state.actor_params),
            "actor_opt_state": guards.select(ok, opt_state, state.actor_opt_state),
            "skipped_actor": state.skipped_actor + (~ok).astype(jnp.int32),
        }
        return fields, {"actor_loss": ro.loss, "grad_norm": optax.tree.norm(grad), "update_ok": ok}

    def critic_step(self, state: TrainState, traj: dict, rng: jax.Array) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        """Fit the critic to the window's TD(lambda) targets, move the target critic, update the
        observation statistics and the finished-episode returns. Needs only the forward pass."""
        cfg = self.config
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

    def combine(self, state: TrainState, ro: Rollout, actor: tuple, fitted: tuple) -> tuple[TrainState, dict]:
        """The next training state and the epoch's metrics from the two halves of the epoch."""
        new = state.replace(
            **actor[0], **fitted[0], env_state=ro.env_state, episode_step=ro.episode_step, key=ro.next_key,
            epoch=state.epoch + 1,
        )  # fmt: skip
        return new, {**actor[1], **fitted[1]}

    def epoch(self, state: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
        """One epoch as one pure function (what :meth:`epoch_fn` computes, in one program)."""
        ro = self.forward(state)
        return self.combine(state, ro, self.actor_step(state, ro), self.critic_step(state, ro.traj, ro.critic_key))

    def epoch_fn(self, state: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
        """One epoch, compiled, with the critic's fit in a second thread during the actor's backward pass.

        The fit reads only the forward pass (the target critic's values, the visited observations), so
        running it beside the backward pass changes no number; XLA runs the independent parts of one
        program one after the other on the CPU, two programs in two threads at once.
        """
        ro = self._forward(state)
        fitted = self._critic_thread.submit(lambda: jax.block_until_ready(self._critic(state, ro.traj, ro.critic_key)))
        actor = self._actor(state, ro)
        return self._combine(state, ro.replace(pullback=None, traj=None), actor, fitted.result())


_LEARNERS: dict[tuple, Learner] = {}


def learner_for(config: SHACConfig, task: Task) -> Learner:
    """A Learner, shared by calls with the same config (seed aside) and task, so jitted code is reused."""
    key = (dataclasses.replace(config, seed=0), id(task.env), task.episode_length, task.perturbation)
    hit = _LEARNERS.get(key)
    if hit is None or hit.task.env is not task.env:
        hit = _LEARNERS[key] = Learner(dataclasses.replace(config, seed=0), task)
    return hit


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
