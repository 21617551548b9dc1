"""Episode returns of a policy, nominal or under a perturbation.

``evaluate(make_policy, params, task, perturbation, episodes, seed)`` runs ``episodes`` episodes in
parallel (one env each, no resets) for at most ``task.episode_length`` steps and returns the mean
and std of the undiscounted episode return. The compiled rollout takes the parameters, the
perturbation's values and the seed as arguments, so repeated evaluations (during training, or over a
robustness sweep) reuse one compilation per (policy factory, task, episodes, determinism).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sharprl.envs import Perturbation, Task, noisy_action, perturb_system, with_system
from sharprl.errors import SharprlError
from sharprl.networks import MakePolicy, Params


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Summary of an evaluation."""

    mean_return: float  # mean undiscounted episode return
    std_return: float  # population std over episodes
    mean_length: float  # mean episode length in steps
    returns: tuple[float, ...]  # every episode's return
    episodes: int  # number of episodes
    seed: int  # the seed used
    perturbation: Perturbation  # what was applied

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["returns"] = list(self.returns)
        return out


_CACHE: dict[tuple, tuple[Any, Any]] = {}


def _compiled_rollout(make_policy: MakePolicy, task: Task, episodes: int, deterministic: bool):
    key = (id(make_policy), id(task.nominal_env), task.episode_length, episodes, deterministic)
    hit = _CACHE.get(key)
    if hit is not None and hit[0][0] is make_policy and hit[0][1] is task.nominal_env:
        return hit[1]
    base_env = task.nominal_env

    def rollout(params, scales, action_noise, rng):
        # scales: (3,) friction, mass, gravity; action_noise: () fraction of the action range
        env = base_env  # (a non-Brax test env without a System takes no physical perturbation)
        if hasattr(base_env, "sys"):
            env = with_system(base_env, perturb_system(base_env.sys, scales[0], scales[1], scales[2], task.backend))
        policy = make_policy(params, deterministic)
        rng_reset, rng_run = jax.random.split(rng)
        state = jax.vmap(env.reset)(jax.random.split(rng_reset, episodes))

        def step(carry, rng_t):
            state, alive, ret, length = carry  # alive, ret, length: (episodes,)
            rng_pol, rng_noise = jax.random.split(rng_t)
            action = policy(state.obs, rng_pol)  # (episodes, act)
            action = noisy_action(action, rng_noise, action_noise)
            state = jax.vmap(env.step)(state, action)
            reward = jnp.where(alive, jnp.nan_to_num(state.reward), 0.0)
            ret, length = ret + reward, length + alive
            alive = alive & (state.done < 0.5) & jnp.all(jnp.isfinite(state.obs), axis=-1)
            return (state, alive, ret, length), None

        init = (state, jnp.ones(episodes, bool), jnp.zeros(episodes), jnp.zeros(episodes))
        (_, _, ret, length), _ = jax.lax.scan(step, init, jax.random.split(rng_run, task.episode_length))
        return ret, length  # (episodes,) each

    compiled = jax.jit(rollout)
    _CACHE[key] = ((make_policy, base_env), compiled)
    return compiled


def evaluate(
    make_policy: MakePolicy,
    params: Params,
    task: Task,
    perturbation: Perturbation | None = None,
    episodes: int = 16,
    seed: int = 0,
    deterministic: bool = True,
) -> EvalResult:
    """Mean/std return over ``episodes`` episodes; the same seed gives the same numbers.

    ``perturbation`` is applied relative to the task's nominal system (``None``: the task's own
    perturbation, e.g. the one it was trained under).
    """
    if episodes < 1:
        raise SharprlError(f"episodes must be >= 1, got {episodes}")
    pert = task.perturbation if perturbation is None else perturbation
    rollout = _compiled_rollout(make_policy, task, episodes, deterministic)
    scales = jnp.array([pert.friction_scale, pert.mass_scale, pert.gravity_scale], jnp.float32)
    ret, length = rollout(params, scales, jnp.float32(pert.action_noise), jax.random.PRNGKey(seed))
    ret, length = np.asarray(ret, np.float64), np.asarray(length, np.float64)
    return EvalResult(
        mean_return=float(ret.mean()),
        std_return=float(ret.std()),
        mean_length=float(length.mean()),
        returns=tuple(float(r) for r in ret),
        episodes=episodes,
        seed=seed,
        perturbation=pert,
    )
