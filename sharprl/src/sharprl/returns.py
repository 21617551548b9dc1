"""Training-episode returns of SHAC rollouts: a ring buffer of the last finished episodes."""

from __future__ import annotations

import jax
import jax.numpy as jnp

RETURN_WINDOW = 100  # finished training episodes averaged for the logged training return


def finished_returns(state, traj):
    """Roll raw rewards into per-env episode returns; push finished ones into the ring buffer."""

    def body(carry, inputs):
        ret, buf, count = carry
        reward, done = inputs  # (n,) each
        ret = ret + reward
        slots = (count + jnp.cumsum(done) - 1) % RETURN_WINDOW  # (n,) write positions
        buf = buf.at[jnp.where(done, slots, RETURN_WINDOW)].set(ret, mode="drop")
        return (jnp.where(done, 0.0, ret), buf, count + jnp.sum(done).astype(jnp.int32)), None

    init = (state.episode_return, state.finished_returns, state.finished_count)
    (ret, buf, count), _ = jax.lax.scan(body, init, (traj["raw_reward"], traj["ep_done"]))
    return ret, buf, count


def mean_training_return(state) -> float:
    """Mean raw return of the last (up to RETURN_WINDOW) finished training episodes; nan if none."""
    count = int(state.finished_count)
    if count == 0:
        return float("nan")
    return float(jnp.mean(state.finished_returns[: min(count, RETURN_WINDOW)]))
