"""Is a task's gradient through the physics usable? Reverse mode against finite differences.

First-order methods (SHAC, APG) are only as good as the gradient of the return through the simulator,
and Brax's backends differ there (on Ant, ``generalized`` and ``mjx`` explode; ``spring`` is off by a
few times along the gradient: README, "Which backend's gradient to trust"). :func:`check` measures it
for any task and backend the same way: a linear tanh policy ``a = tanh(obs @ W + b)`` rolls
``num_envs`` envs ``horizon`` steps from fixed start states (no resets), the loss is minus the mean
return, and the reverse-mode derivative along the unit direction ``u`` of the gradient itself (the
direction a first-order method steps in; ``|grad|`` is the derivative it predicts there) is compared
with central differences
``(L(theta + e u) - L(theta - e u)) / 2e`` at several step lengths ``e``. A gradient that is wrong in
direction or size (exploding contact gradients, a hidden dependence) shows as a disagreement. A zero
gradient is checked along a random unit direction instead. Two verdicts:

- *sound*: the gradient is finite and the central difference at the smallest step length agrees with
  it within ``tolerance`` (reverse mode computes the derivative that is there);
- *smooth step*: the largest step length from which on every smaller one agrees too. Stiff contact
  can make a correct gradient useful only very locally (the return bends within a tiny step), which
  a first-order learner feels as noise: a sound gradient with a smooth step of 1e-2 is usable at
  step sizes where one with 1e-4 is not.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sharprl.envs import Task
from sharprl.errors import SharprlError


@dataclasses.dataclass(frozen=True)
class GradCheckSpec:
    """What :func:`check` rolls out and compares."""

    num_envs: int = 64  # parallel envs in the rollout
    horizon: int = 32  # steps differentiated through (no resets)
    eps: tuple[float, ...] = (1e-2, 1e-3, 1e-4)  # central-difference step lengths, largest first
    tolerance: float = 0.2  # agreement: |fd - analytic| <= tolerance * max(|fd|, |analytic|)
    policy_scale: float = 0.3  # initial weights ~ N(0, policy_scale^2 / obs_size), so actions are not all 0
    seed: int = 0  # start states, policy and direction

    def __post_init__(self) -> None:
        if self.num_envs < 1 or self.horizon < 1:
            raise SharprlError(f"gradcheck needs num_envs >= 1 and horizon >= 1, got {self.num_envs}, {self.horizon}")
        if not self.eps or not all(e > 0 for e in self.eps) or list(self.eps) != sorted(self.eps, reverse=True):
            raise SharprlError(f"gradcheck step lengths must be > 0 and decreasing, got {self.eps}")


@dataclasses.dataclass(frozen=True)
class GradCheck:
    """One measurement of a task's rollout gradient."""

    env: str  # task name
    backend: str  # Brax pipeline
    num_envs: int  # parallel envs
    horizon: int  # steps differentiated through
    loss: float  # minus the mean return over the window at the policy's parameters
    grad_norm: float  # global L2 norm of d loss / d params
    analytic: float  # reverse-mode directional derivative along u (= grad_norm unless the gradient is 0)
    finite_differences: tuple[tuple[float, float], ...]  # (step length, central difference), largest step first
    rel_errors: tuple[float, ...]  # |fd - analytic| / max(|fd|, |analytic|) per step length (inf: not finite)
    grad_step_s: float  # one jitted value-and-gradient of the rollout, after warm-up
    forward_s: float  # one jitted forward rollout, after warm-up
    sound: bool  # finite gradient that agrees with the central difference at the smallest step length
    smooth_step: float  # largest step length from which on all smaller ones agree (0: none agrees)

    @property
    def grad_env_steps_per_s(self) -> float:
        return self.num_envs * self.horizon / self.grad_step_s

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["finite_differences"] = [list(p) for p in self.finite_differences]
        out["grad_env_steps_per_s"] = self.grad_env_steps_per_s
        return out

    def line(self) -> str:
        fds = ", ".join(f"{fd:.4g} (e={e:g})" for e, fd in self.finite_differences)
        smooth = f"agrees for steps <= {self.smooth_step:g}" if self.smooth_step else "agrees at no step"
        return (
            f"{self.env} ({self.backend}), {self.num_envs} envs x {self.horizon} steps: "
            f"{'SOUND' if self.sound else 'NOT sound'}, {smooth}; |grad| {self.grad_norm:.4g}, "
            f"analytic {self.analytic:.4g} vs finite differences {fds}; relative errors "
            f"{', '.join(f'{x:.2g}' for x in self.rel_errors)}; gradient step {self.grad_step_s:.3f} s "
            f"({self.grad_env_steps_per_s:,.0f} env-steps/s), forward {self.forward_s:.3f} s"
        )


def _timed(fn, *args) -> tuple[Any, float]:
    """Result and seconds of ``fn(*args)``, after two warm-up calls (compile, and any recompilation)."""
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def rollout_loss_fn(task: Task, spec: GradCheckSpec):
    """``loss(params, starts, keys)``: minus the mean undiscounted return of the linear tanh policy."""

    def loss(params, starts, keys):
        def step(states, key_t):  # states: env states batched over num_envs
            action = jnp.tanh(states.obs @ params["w"] + params["b"])  # (n, act)
            nxt = jax.vmap(task.step)(states, action, jax.random.split(key_t, spec.num_envs))
            return nxt, nxt.reward  # (n,)

        _, rewards = jax.lax.scan(step, starts, keys)  # (horizon, n)
        return -jnp.mean(jnp.sum(rewards, axis=0))

    return loss


def check(task: Task, spec: GradCheckSpec = GradCheckSpec()) -> GradCheck:
    """Measure the rollout gradient of ``task`` (see the module docstring)."""
    k_reset, k_w, k_dir, k_roll = jax.random.split(jax.random.PRNGKey(spec.seed), 4)
    starts = jax.jit(jax.vmap(task.reset))(jax.random.split(k_reset, spec.num_envs))
    keys = jax.random.split(k_roll, spec.horizon)  # (horizon, 2)
    obs, act = task.observation_size, task.action_size
    params = {
        "w": jax.random.normal(k_w, (obs, act)) * spec.policy_scale / math.sqrt(obs),  # (obs, act)
        "b": jnp.zeros(act),  # (act,)
    }
    loss = rollout_loss_fn(task, spec)
    try:
        (value, grad), grad_s = _timed(jax.jit(jax.value_and_grad(loss)), params, starts, keys)
    except (ValueError, TypeError, NotImplementedError) as exc:  # e.g. mjx: reverse mode through a while_loop
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SharprlError(f"{task.name} ({task.backend}): no reverse-mode gradient of the rollout: {first}") from None
    forward = jax.jit(loss)
    _, forward_s = _timed(forward, params, starts, keys)
    grad_norm = float(optax.tree.norm(grad))
    if grad_norm > 0 and math.isfinite(grad_norm):
        direction = jax.tree.map(lambda g: g / grad_norm, grad)
    else:  # nothing to follow: a random unit direction (the finite differences then show what was lost)
        raw = optax.tree.random_like(k_dir, params)
        direction = jax.tree.map(lambda d: d / optax.tree.norm(raw), raw)
    analytic = float(optax.tree.vdot(grad, direction))

    def shifted(e: float):
        return jax.tree.map(lambda p, d: p + e * d, params, direction)

    fds = tuple(
        (e, float(forward(shifted(e), starts, keys) - forward(shifted(-e), starts, keys)) / (2 * e)) for e in spec.eps
    )
    errors = tuple(
        abs(fd - analytic) / max(abs(fd), abs(analytic), 1e-12)
        if math.isfinite(fd) and math.isfinite(analytic) and math.isfinite(grad_norm)
        else math.inf
        for _, fd in fds
    )
    agree = [err <= spec.tolerance for err in errors]
    smooth_step = 0.0
    for e, ok in zip(reversed(spec.eps), reversed(agree)):  # from the smallest step up, while they agree
        if not ok:
            break
        smooth_step = e
    return GradCheck(
        env=task.name,
        backend=task.backend,
        num_envs=spec.num_envs,
        horizon=spec.horizon,
        loss=float(value),
        grad_norm=grad_norm,
        analytic=analytic,
        finite_differences=fds,
        rel_errors=errors,
        grad_step_s=grad_s,
        forward_s=forward_s,
        sound=agree[-1],
        smooth_step=smooth_step,
    )
