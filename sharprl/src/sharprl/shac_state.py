"""SHAC's training state and the two records one epoch passes between its compiled parts.

``TrainState`` is what a checkpoint holds; ``Window`` is what all env shards of an epoch share (resets,
keys); ``Rollout`` is one shard's forward pass (:meth:`sharprl.shac.Learner.forward`).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax

from sharprl import networks


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
class Window:
    """What every env shard of one epoch shares: the resets, the per-env keys and the next keys."""

    reset_states: Any  # brax State batched over num_envs: the resets this window uses (SAM replays them)
    env_keys: jax.Array  # (num_envs, 2) one key per env for the whole window (SAM replays them)
    critic_key: jax.Array  # (2,) key of the critic's minibatch shuffles
    next_key: jax.Array  # (2,) the training state's key for the next epoch


@flax.struct.dataclass
class Rollout:
    """One env shard's forward pass: what its backward pass and the critic's fit start from."""

    loss: jax.Array  # () short-horizon actor loss of the shard at the current actor
    pullback: Any  # jax.vjp pullback of the loss w.r.t. the actor params (holds the rollout's residuals)
    traj: dict[str, jax.Array]  # (horizon, m) per-step rollout data of the shard's m envs, no gradient
    env_state: Any  # brax State batched over m: where the shard's next window starts
    episode_step: jax.Array  # (m,) int32 steps into each episode at the window's end
