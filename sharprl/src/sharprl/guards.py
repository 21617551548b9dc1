"""Skipping non-finite updates inside compiled code: a step is applied only where everything is finite.

Used by the actor's update (:mod:`sharprl.shac`) and every critic minibatch step (:mod:`sharprl.critic`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def tree_finite(tree) -> jax.Array:
    """() bool: every leaf of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def select(ok: jax.Array, new, old):
    """``new`` where ``ok`` else ``old``, leaf by leaf."""
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
