"""brax.training glue for sharprl's baselines: brax's policy networks as sharprl policy kinds, the
task's action noise as a brax ``Wrapper``, and merging of brax's running observation statistics.

Importing this module registers the kinds ``brax_ppo`` and ``brax_apg`` (see
:func:`sharprl.networks.register_policy_kind`): a checkpoint of either is rebuilt with brax's own
``make_ppo_networks`` / ``make_apg_networks`` and inference function, then exposed through sharprl's
``make_policy(params, deterministic) -> policy(obs, key) -> action`` interface with
``params = (normalizer_state, policy_params)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State, Wrapper
from brax.training import types as brax_types
from brax.training.acme import running_statistics
from brax.training.agents.apg import networks as apg_networks
from brax.training.agents.ppo import networks as ppo_networks

from sharprl.envs import Task, noisy_action
from sharprl.networks import (
    Params,
    PolicySpec,
    activation_fn,
    init_normalizer,
    register_policy_kind,
)

PPO_KIND = "brax_ppo"
APG_KIND = "brax_apg"

def brax_networks(spec: PolicySpec):
    """brax.training network bundle a ``brax_ppo`` / ``brax_apg`` spec describes."""
    kwargs = {"preprocess_observations_fn": running_statistics.normalize, "activation": activation_fn(spec.activation)}
    if spec.kind == PPO_KIND:
        return ppo_networks.make_ppo_networks(
            spec.observation_size, spec.action_size, policy_hidden_layer_sizes=spec.hidden_sizes, **kwargs
        )
    return apg_networks.make_apg_networks(
        spec.observation_size, spec.action_size, hidden_layer_sizes=spec.hidden_sizes, **kwargs
    )


def brax_policy_factory(spec: PolicySpec):
    nets = brax_networks(spec)
    module = ppo_networks if spec.kind == PPO_KIND else apg_networks
    brax_make_policy = module.make_inference_fn(nets)

    def make_policy(params: Params, deterministic: bool = False):
        normalizer, policy_params = params
        brax_policy = brax_make_policy((normalizer, policy_params), deterministic=deterministic)

        def policy(obs: jax.Array, key: jax.Array) -> jax.Array:
            return brax_policy(obs, key)[0]  # (..., action_size); brax's extras dropped

        return policy

    def init_params(key: jax.Array) -> Params:
        return init_normalizer(spec.observation_size), nets.policy_network.init(key)

    return make_policy, init_params


register_policy_kind(PPO_KIND, brax_policy_factory)
register_policy_kind(APG_KIND, brax_policy_factory)


# ----------------------------------------------------------------------------------------------------
# Environment: the SHAC task as a brax Env, with its action noise as a wrapper.


class ActionNoiseWrapper(Wrapper):
    """Adds the task's Gaussian action noise (sharprl.envs.noisy_action) with a key carried in info."""

    def __init__(self, env, action_noise: float):
        super().__init__(env)
        self._action_noise = action_noise

    def reset(self, rng: jax.Array) -> State:
        rng, noise_key = jax.random.split(rng)
        state = self.env.reset(rng)
        state.info["action_noise_key"] = noise_key
        return state

    def step(self, state: State, action: jax.Array) -> State:
        key, sub = jax.random.split(state.info["action_noise_key"])
        state = self.env.step(state, noisy_action(action, sub, self._action_noise))
        state.info["action_noise_key"] = key
        return state


def brax_env(task: Task):
    """The task's (physically perturbed) brax env, action-noise wrapped when the task has noise."""
    if task.perturbation.action_noise > 0.0:
        return ActionNoiseWrapper(task.env, task.perturbation.action_noise)
    return task.env


def _count(state) -> jax.Array:
    """A RunningStatisticsState's sample count as float32."""
    count = state.count
    if isinstance(count, brax_types.UInt64):
        return jnp.float32(count.hi) * jnp.float32(2.0**32) + jnp.float32(count.lo)
    return jnp.float32(count)


def merge_statistics(a, b):
    """Welford statistics of the union of the samples behind ``a`` and ``b`` (parallel combine)."""
    n_a, n_b = _count(a), _count(b)
    n = jnp.maximum(n_a + n_b, 1.0)
    delta = b.mean - a.mean  # (obs_size,)
    mean = a.mean + delta * n_b / n  # (obs_size,)
    summed = a.summed_variance + b.summed_variance + delta**2 * n_a * n_b / n  # (obs_size,)
    std = jnp.clip(jnp.sqrt(jnp.maximum(summed, 0.0) / n + a.std_eps), 1e-6, 1e6)  # brax's clip range
    return a.replace(count=a.count + b.count, mean=mean, summed_variance=summed, std=std)


class NullEnv(Env):
    """A do-nothing env with a task's sizes: the ``eval_env`` of brax's APG, whose own evaluator
    cannot be turned off; sharprl evaluates with :func:`sharprl.evaluate.evaluate` instead, so brax's
    per-epoch evaluation costs neither a physics compilation nor physics steps."""

    def __init__(self, observation_size: int, action_size: int):
        self._obs, self._act = observation_size, action_size

    def reset(self, rng: jax.Array) -> State:
        zero = jnp.zeros(())
        return State(zero, jnp.zeros(self._obs), zero, zero, {}, {})

    def step(self, state: State, action: jax.Array) -> State:
        return state.replace(done=jnp.ones(()))  # every episode ends at once

    @property
    def observation_size(self) -> int:
        return self._obs

    @property
    def action_size(self) -> int:
        return self._act

    @property
    def backend(self) -> str:
        return "none"
