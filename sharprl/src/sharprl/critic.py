"""SHAC's critic: TD(lambda) targets from one window's rollout, and the minibatch fit to them.

Pure functions of arrays (no Learner state), so the fit can run as its own compiled program beside the
actor's backward pass: it needs only the window's forward pass (:meth:`sharprl.shac.Learner.forward`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sharprl.guards import select, tree_finite

ApplyFn = Callable[[Any, jax.Array], jax.Array]  # (critic params, (..., obs)) -> (...) values


def td_lambda_targets(
    reward: jax.Array, done: jax.Array, next_value: jax.Array, gamma: float, lam: float
) -> jax.Array:
    """(horizon, n) TD(lambda) targets of the states visited in a window.

    ``reward``: (horizon, n) the reward of each step; ``done``: (horizon, n) 1 where the step ends the
    window or the episode (the target bootstraps from ``next_value`` alone there); ``next_value``:
    (horizon, n) the target critic's value of the state each step reaches (0 where it terminated).
    ``lam = 0`` gives one-step TD targets, ``lam = 1`` the discounted return to the window's end
    plus the discounted value there.
    """

    def back(next_return, inputs):
        r, d, v = inputs  # (n,) each
        blended = (1.0 - lam) * v + lam * next_return
        target = r + gamma * jnp.where(d > 0.5, v, blended)
        return target, target

    _, targets = jax.lax.scan(back, next_value[-1], (reward, done, next_value), reverse=True)
    return targets


def fit(
    apply_fn: ApplyFn,
    optimizer: optax.GradientTransformation,
    params: Any,
    opt_state: Any,
    obs: jax.Array,
    targets: jax.Array,
    rng: jax.Array,
    iterations: int,
    minibatches: int,
    sharpness: bool = False,
) -> tuple[Any, Any, jax.Array, jax.Array]:
    """``iterations`` shuffled passes of ``minibatches`` steps of ``optimizer`` on the squared error.

    ``obs``: (B, obs) normalised observations; ``targets``: (B,). A step whose loss or update is not
    finite is skipped. ``sharpness``: ``optimizer`` is a SAM/ASAM wrapper (it gets a ``grad_fn`` on the
    same minibatch). Returns ``(params, opt_state, skipped steps (), mean loss of the last pass ())``.
    """
    batch = obs.shape[0] // minibatches

    def loss_fn(p, x, y):
        return jnp.mean((apply_fn(p, x) - y) ** 2)

    def minibatch(carry, idx):
        p, state, skipped = carry
        x, y = obs[idx], targets[idx]  # (batch, obs), (batch,)
        loss, grad = jax.value_and_grad(loss_fn)(p, x, y)
        extra = {"grad_fn": lambda q: jax.grad(loss_fn)(q, x, y)} if sharpness else {}
        updates, new_state = optimizer.update(grad, state, p, **extra)
        ok = jnp.isfinite(loss) & tree_finite(updates)
        p = select(ok, optax.apply_updates(p, updates), p)
        return (p, select(ok, new_state, state), skipped + (~ok).astype(jnp.int32)), loss

    perms = jax.vmap(lambda k: jax.random.permutation(k, obs.shape[0]))(jax.random.split(rng, iterations))
    idx = perms[:, : batch * minibatches].reshape(-1, batch)  # (iterations * minibatches, batch)
    (params, opt_state, skipped), losses = jax.lax.scan(minibatch, (params, opt_state, jnp.int32(0)), idx)
    return params, opt_state, skipped, losses[-minibatches:].mean()

