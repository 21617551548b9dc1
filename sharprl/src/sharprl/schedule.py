"""How one SHAC epoch's compiled parts are run on the CPU's cores.

XLA's CPU runtime runs the independent parts of one program one after the other, but two programs
dispatched from two Python threads at once (measured in the README). So an epoch is split into
programs that threads can overlap:

- the envs are split into ``shards`` equal groups; each group's forward pass (``jax.vjp`` of its
  rollout loss) and then its backward pass run in their own thread; the actor gradient is the mean
  of the shards' (the loss is a mean over envs, and every env's noise comes from its own key, so any
  shard count computes the same gradient up to float rounding);
- the critic's fit needs only the forward passes, so it runs in another thread beside the backward
  passes;
- SAM/ASAM's second gradient is sharded the same way: the optax transformation calls a ``grad_fn``
  that runs the shards' gradient programs in the threads and returns their mean.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import jax

from sharprl.errors import SharprlError

if TYPE_CHECKING:
    from sharprl.shac import Learner
    from sharprl.shac_state import TrainState


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_shards(num_envs: int) -> int:
    """One shard per CPU core this process may use, lowered to the largest divisor of ``num_envs``."""
    return max(k for k in range(1, min(usable_cores(), num_envs) + 1) if num_envs % k == 0)


def check_shards(num_envs: int, shards: int | None) -> int:
    """``shards`` if it splits ``num_envs`` evenly; :func:`default_shards` for None."""
    if shards is None:
        return default_shards(num_envs)
    if shards < 1 or num_envs % shards:
        raise SharprlError(f"cannot split {num_envs} envs into {shards} equal shards")
    return shards


def tree_mean(trees: list) -> Any:
    """Leaf-wise mean of equally shaped pytrees."""
    return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]) / len(xs), *trees)


class ThreadedEpoch:
    """``state -> (state, metrics)``: :meth:`Learner.epoch` with its parts compiled once and run in threads."""

    def __init__(self, learner: Learner):
        self.learner, k = learner, learner.shards
        self.prepare, self.forward = jax.jit(learner.prepare), jax.jit(learner.forward)
        self.backward, self.shard_grad = jax.jit(learner.backward), jax.jit(learner.shard_grad)
        self.actor, self.critic = jax.jit(learner.actor_step), jax.jit(learner.critic_step)
        self.combine, self.mean = jax.jit(learner.combine), jax.jit(tree_mean)
        self.finish = jax.jit(learner.actor_finish)
        self.shard_pool = ThreadPoolExecutor(max_workers=k, thread_name_prefix="sharprl-shard")
        self.critic_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sharprl-critic")

    def _each_shard(self, fn) -> list:
        """``[fn(0), ..., fn(shards - 1)]``, one thread each, every result computed before returning."""
        return list(self.shard_pool.map(lambda i: jax.block_until_ready(fn(i)), range(self.learner.shards)))

    def __call__(self, state: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
        window = self.prepare(state)
        ros = self._each_shard(lambda i: self.forward(state, window, i))
        trajs = tuple(ro.traj for ro in ros)
        fitted = self.critic_pool.submit(lambda: jax.block_until_ready(self.critic(state, trajs, window.critic_key)))
        grads = self._each_shard(lambda i: self.backward(ros[i]))
        loss, grad = self.mean([ro.loss for ro in ros]), self.mean(grads)
        if self.learner.config.sharpness:  # the optax update runs eagerly around the sharded grad_fn

            def grad_fn(params):
                return self.mean(self._each_shard(lambda i: self.shard_grad(params, state, window, i)))

            opt = self.learner.actor_opt.update(grad, state.actor_opt_state, state.actor_params, grad_fn=grad_fn)
            actor = self.finish(state, loss, grad, *opt)
        else:
            actor = self.actor(state, loss, grad)
        done = [ro.replace(pullback=None, traj=None) for ro in ros]
        return self.combine(state, window, done, actor, fitted.result())
