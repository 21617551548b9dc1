"""SAM and ASAM (Foret et al. 2021; Kwon et al. 2021) as optax gradient transformations.

Two pieces:

- :func:`ascent_direction` maps the gradient ``g`` at ``theta`` to the adversarial step
  ``eps = rho * T^2 g / ||T g||`` with ``T = I`` (SAM) or ``T = diag(|theta|) + eta`` (ASAM).
- :func:`sharpness_aware` wraps a base optimiser: at each ``update`` it computes ``eps``, calls the
  caller's ``grad_fn(theta + eps)`` for the gradient there, and feeds that gradient to the base
  optimiser at ``theta``. The caller closes ``grad_fn`` over the same batch / start states / random
  keys / normaliser statistics as the first gradient, which is what makes the two gradients
  comparable (this is optax.contrib.sam's "opaque mode" with one adversarial step, plus ASAM).

With ``rho = 0`` the wrapper is the base optimiser evaluated on ``grad_fn(theta)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sharprl.errors import SharprlError

GradFn = Callable[[optax.Params], optax.Updates]  # params -> gradient pytree at those params
MODES = ("sam", "asam")


def ascent_direction(rho: float, adaptive: bool = False, eta: float = 0.01) -> optax.GradientTransformation:
    """``g -> eps = rho * T^2 g / ||T g||`` with T = I (SAM) or T = |params| + eta (ASAM).

    ``update(g, state, params)`` needs ``params`` for ASAM. A zero gradient gives ``eps = 0``.
    """
    if rho < 0:
        raise SharprlError(f"rho must be >= 0, got {rho}")
    if adaptive and eta < 0:
        raise SharprlError(f"ASAM eta must be >= 0, got {eta}")

    def init_fn(params: optax.Params) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if adaptive:
            if params is None:
                raise SharprlError("ASAM needs the parameters to scale the ascent step")
            scale = jax.tree.map(lambda p: jnp.abs(p) + eta, params)  # T, same shapes as params
        else:
            scale = jax.tree.map(jnp.ones_like, updates)
        scaled = jax.tree.map(lambda t, g: t * g, scale, updates)  # T g
        norm = optax.tree.norm(scaled)  # ||T g||
        safe = jnp.where(norm > 0, norm, 1.0)
        factor = jnp.where(norm > 0, rho / safe, 0.0)
        eps = jax.tree.map(lambda t, tg: factor * t * tg, scale, scaled)  # rho T^2 g / ||T g||
        return eps, state

    return optax.GradientTransformation(init_fn, update_fn)


class SharpnessAwareState(NamedTuple):
    """State of :func:`sharpness_aware`."""

    inner_state: optax.OptState  # the base optimiser's state
    ascent_state: optax.OptState  # the ascent transformation's state (empty for SAM/ASAM)


def sharpness_aware(
    optimizer: optax.GradientTransformation, ascent: optax.GradientTransformation
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``optimizer`` so each update uses the gradient at ``theta + ascent(g)``.

    Call as ``optimizer.update(g, state, params, grad_fn=grad_fn)`` where ``g`` is the gradient at
    ``params`` and ``grad_fn(p)`` returns the gradient at ``p`` from the same data and randomness.
    The steps before and after ``grad_fn`` are compiled (inlined when the update is itself traced),
    so the update stays cheap when run eagerly around a ``grad_fn`` that dispatches its own compiled
    programs, as :mod:`sharprl.schedule` does.
    """

    @jax.jit
    def ascend(updates, ascent_state, params):  # -> (theta + eps, ascent state)
        eps, ascent_state = ascent.update(updates, ascent_state, params)
        return optax.apply_updates(params, eps), ascent_state

    inner_update = jax.jit(optimizer.update)

    def init_fn(params: optax.Params) -> SharpnessAwareState:
        return SharpnessAwareState(optimizer.init(params), ascent.init(params))

    def update_fn(updates, state: SharpnessAwareState, params=None, *, grad_fn: GradFn | None = None, **extra: Any):
        del extra
        if grad_fn is None or params is None:
            raise SharprlError("sharpness-aware update needs params and grad_fn(params) -> gradient")
        perturbed, ascent_state = ascend(updates, state.ascent_state, params)  # theta + eps
        sharp_grad = grad_fn(perturbed)
        new_updates, inner_state = inner_update(sharp_grad, state.inner_state, params)
        return new_updates, SharpnessAwareState(inner_state, ascent_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sam(optimizer: optax.GradientTransformation, rho: float) -> optax.GradientTransformationExtraArgs:
    """SAM: ``eps = rho g / ||g||``."""
    return sharpness_aware(optimizer, ascent_direction(rho, adaptive=False))


def asam(
    optimizer: optax.GradientTransformation, rho: float, eta: float = 0.01
) -> optax.GradientTransformationExtraArgs:
    """ASAM: ``eps = rho T^2 g / ||T g||``, ``T = |theta| + eta``."""
    return sharpness_aware(optimizer, ascent_direction(rho, adaptive=True, eta=eta))


def wrap(
    optimizer: optax.GradientTransformation, mode: str | None, rho: float, eta: float = 0.01
) -> optax.GradientTransformation:
    """``optimizer`` itself for ``mode=None``, else its SAM/ASAM version."""
    if mode is None:
        return optimizer
    if mode not in MODES:
        raise SharprlError(f"unknown sharpness mode {mode!r}: expected one of {MODES}")
    return sam(optimizer, rho) if mode == "sam" else asam(optimizer, rho, eta)
