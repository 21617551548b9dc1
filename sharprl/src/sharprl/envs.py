"""Brax environments for sharprl: task factory, backend choice and perturbations.

Every task is a real Brax ``PipelineEnv`` so gradients flow through the physics. Actions live in
[-1, 1] for all tasks. Perturbations:

- physical ones (friction, body mass, gravity) edit the Brax ``System`` (:func:`perturb_system`);
  the scales may be traced JAX values, so one compiled evaluation serves a whole sweep;
- additive Gaussian action noise with std ``action_noise * (a_max - a_min)`` (a fraction of the
  action range's width, i.e. ``2 * action_noise`` here), clipped back to [-1, 1], applied in
  :meth:`Task.step` with an explicit key.
"""

from __future__ import annotations

import copy
import dataclasses

import brax.envs
import jax
import jax.numpy as jnp
from brax.envs.base import PipelineEnv, State
from brax.envs.inverted_pendulum import InvertedPendulum

from sharprl.errors import SharprlError

BACKENDS = ("spring", "positional", "generalized", "mjx")

# Backend used when the user gives none: the one whose rollout gradient agrees best with finite differences
# on this machine (`sharprl gradcheck`, 64 envs x 32 steps, along the gradient, steps 1e-2..1e-4; README
# "Which backend's gradient to trust"). hopper: spring and generalized are sound at every step, spring is
# 3.3x faster. ant: none is sound; spring is off by 2-10x, generalized by 1e4-1e5 (|grad| 7e6).
# humanoid: none is sound; generalized is off by 0.3-0.8x (|grad| 3e3), spring and positional by ~1x
# (|grad| 2e5, 3e4). halfcheetah: every backend explodes (|grad| 3e6-2e11); generalized least.
# cartpole (the fast test task, see SmoothCartPole): spring, no contacts, compiles in seconds.
DEFAULT_BACKEND: dict[str, str] = {
    "ant": "spring",
    "hopper": "spring",
    "humanoid": "generalized",
    "halfcheetah": "generalized",
    "cartpole": "spring",
}
TASKS = tuple(DEFAULT_BACKEND)
_ENV_CACHE: dict[tuple[str, str], PipelineEnv] = {}
ACTION_LOW = -1.0  # every task's actions are in [ACTION_LOW, ACTION_HIGH]
ACTION_HIGH = 1.0


class SmoothCartPole(InvertedPendulum):
    """Brax's inverted pendulum (cart-pole balance) with a differentiable reward, for fast tests.

    Brax's own reward is a constant 1 per step, which gives first-order methods no gradient. Here
    ``reward = 1 - (angle / 0.2)^2 - 0.1 * cart_position^2``; the episode still terminates early when
    ``|angle| > 0.2`` rad, and starts from a pole angle and velocities uniform in +-0.05.
    """

    def reset(self, rng: jax.Array) -> State:
        rng_q, rng_qd = jax.random.split(rng)
        q = self.sys.init_q + jax.random.uniform(rng_q, (self.sys.q_size(),), minval=-0.05, maxval=0.05)
        qd = jax.random.uniform(rng_qd, (self.sys.qd_size(),), minval=-0.05, maxval=0.05)
        pipeline_state = self.pipeline_init(q, qd)
        zero = jnp.zeros(())
        return State(pipeline_state, self._get_obs(pipeline_state), zero, zero, {}, {"time_out": zero})

    def step(self, state: State, action: jax.Array) -> State:
        state = super().step(state, action)
        obs = state.obs  # (4,): cart position, pole angle, their velocities
        reward = 1.0 - (obs[1] / 0.2) ** 2 - 0.1 * obs[0] ** 2
        return state.replace(reward=reward)


brax.envs.register_environment("cartpole", SmoothCartPole)


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """Changes to the nominal task, usable in training and in evaluation."""

    action_noise: float = 0.0  # std of additive Gaussian action noise, fraction of the action range width
    friction_scale: float = 1.0  # multiplies every geom's contact friction coefficients
    mass_scale: float = 1.0  # multiplies every body's mass and inertia
    gravity_scale: float = 1.0  # multiplies the gravity vector

    def __post_init__(self) -> None:
        if not self.action_noise >= 0.0:
            raise SharprlError(f"action noise must be >= 0, got {self.action_noise}")
        for name in ("friction_scale", "mass_scale", "gravity_scale"):
            value = getattr(self, name)
            if not value >= 0.0 or (name == "mass_scale" and value == 0.0):
                raise SharprlError(f"{name} must be {'> 0' if name == 'mass_scale' else '>= 0'}, got {value}")

    @property
    def is_nominal(self) -> bool:
        """True when this perturbation changes nothing."""
        return self == Perturbation()


# Backends that simulate "effective" masses ``mass ** (1 - sys.spring_mass_scale)`` (and the same for
# the inertia diagonal): Brax's Ant sets both exponents to 1, so its effective masses are all 1 and
# scaling ``link.inertia`` alone would change nothing there.
EFFECTIVE_MASS_BACKENDS = ("spring", "positional")


def perturb_system(sys, friction_scale=1.0, mass_scale=1.0, gravity_scale=1.0, backend: str = "generalized"):
    """A copy of the Brax ``System`` with friction, masses/inertias and gravity scaled.

    Scales may be Python floats or traced scalars. For ``spring``/``positional`` the mass scale
    multiplies the masses and inertias the backend actually simulates: they are folded into
    ``link.inertia`` with the spring exponents set to 0, so ``mass_scale=1`` simulates exactly the
    nominal system. MuJoCo's fields (``body_mass``, ``body_inertia``, ``opt.gravity``: mjx) are
    edited too, so every backend sees the change.
    """
    mass, inertia = sys.link.inertia.mass, sys.link.inertia.i  # (links,), (links, 3, 3)
    edits = {}
    if backend in EFFECTIVE_MASS_BACKENDS:
        mass = mass ** (1 - sys.spring_mass_scale)
        inertia = inertia ** (1 - sys.spring_inertia_scale)
        edits = {"spring_mass_scale": 0.0, "spring_inertia_scale": 0.0}
    return sys.tree_replace(
        {
            **edits,
            "geom_friction": sys.geom_friction * friction_scale,
            "link.inertia.mass": mass * mass_scale,
            "link.inertia.i": inertia * mass_scale,
            "body_mass": sys.body_mass * mass_scale,
            "body_inertia": sys.body_inertia * mass_scale,
            "gravity": sys.gravity * gravity_scale,
            "opt.gravity": sys.opt.gravity * gravity_scale,
        }
    )


def healthy_barrier(env: PipelineEnv, pipeline_state, margin: float) -> jax.Array:
    """A smooth () penalty, 0 inside the healthy range and 1 at its ends, quadratic within ``margin``.

    Brax's Ant and Humanoid end an episode when the torso height leaves ``healthy_z_range`` (Hopper:
    also its angle leaves ``healthy_angle_range``). That test is a step function, so a gradient
    through the physics never sees it: a first-order learner that bounds forward faster and faster
    is not told that the next bound ends the episode (measured: the collapsed SHAC Ant policy ended
    its episodes after 26-713 steps with the torso above z = 1.0). This barrier gives that boundary
    a gradient. Tasks without a healthy range (cartpole, halfcheetah) get 0.
    """
    z_range = getattr(env, "_healthy_z_range", None)
    if z_range is None:
        return jnp.zeros(())
    if hasattr(env, "_healthy_angle_range"):  # hopper: (z, angle) are q[1], q[2]
        checks = ((pipeline_state.q[1], z_range), (pipeline_state.q[2], env._healthy_angle_range))
    else:  # ant, humanoid: torso height
        checks = ((pipeline_state.x.pos[0, 2], z_range),)
    penalty = jnp.zeros(())
    for value, (low, high) in checks:
        over = jax.nn.relu(value - (high - margin)) / margin
        under = jax.nn.relu((low + margin) - value) / margin
        penalty = penalty + over**2 + under**2
    return penalty


def upright_barrier(env: PipelineEnv, pipeline_state, min_up: float) -> jax.Array:
    """A smooth () penalty on a tilting torso: 0 while its up axis keeps a world-z component >= ``min_up``.

    Quadratic below, 1 when upside down. For the bodies with a torso height range and no angle range
    (Ant, Humanoid): a flipped Ant's torso falls below that range and ends the episode, and the height
    barrier only sees it once the flip is done (measured: 3 of 8 episodes of collapsed Ant policies
    ended on their backs, up axis -0.3 to -0.95). Other tasks get 0.
    """
    if getattr(env, "_healthy_z_range", None) is None or hasattr(env, "_healthy_angle_range"):
        return jnp.zeros(())
    _, x, y, _ = pipeline_state.x.rot[0]  # torso quaternion (w, x, y, z)
    up_z = 1.0 - 2.0 * (x**2 + y**2)  # world-z component of the torso's up axis
    return (jax.nn.relu(min_up - up_z) / (1.0 + min_up)) ** 2


def with_system(env: PipelineEnv, sys) -> PipelineEnv:
    """A shallow copy of ``env`` that simulates ``sys`` (may hold traced values inside jit)."""
    out = copy.copy(env)
    out.sys = sys
    return out


@dataclasses.dataclass(frozen=True)
class Task:
    """A Brax environment with its name, backend, perturbation and episode length."""

    name: str  # task name (one of TASKS)
    backend: str  # Brax physics pipeline (one of BACKENDS)
    env: PipelineEnv  # the Brax env; its System already carries the physical perturbation
    nominal_env: PipelineEnv  # the same env with the unperturbed System
    perturbation: Perturbation  # what was changed from the nominal task
    episode_length: int  # steps after which an episode is truncated (time limit)

    @property
    def observation_size(self) -> int:
        return int(self.env.observation_size)

    @property
    def action_size(self) -> int:
        return int(self.env.action_size)

    def reset(self, key: jax.Array) -> State:
        """Reset one environment (vmap for a batch)."""
        return self.env.reset(key)

    def step(self, state: State, action: jax.Array, key: jax.Array) -> State:
        """Step one environment with ``action: (action_size,)`` plus the task's action noise."""
        return self.env.step(state, noisy_action(action, key, self.perturbation.action_noise))

    def perturbed(self, perturbation: Perturbation) -> Task:
        """The same task under another perturbation (relative to the nominal system)."""
        sys = perturb_system(
            self.nominal_env.sys,
            perturbation.friction_scale,
            perturbation.mass_scale,
            perturbation.gravity_scale,
            self.backend,
        )
        return dataclasses.replace(self, env=with_system(self.nominal_env, sys), perturbation=perturbation)


def noisy_action(action: jax.Array, key: jax.Array, action_noise) -> jax.Array:
    """``action: (..., act)`` plus N(0, (action_noise * range)^2) noise, clipped to the action box."""
    if not (isinstance(action_noise, (int, float)) and action_noise == 0):  # a static zero: no RNG work
        std = action_noise * (ACTION_HIGH - ACTION_LOW)
        action = action + jax.random.normal(key, action.shape, action.dtype) * std  # (..., act)
    return jnp.clip(action, ACTION_LOW, ACTION_HIGH)


def make_task(
    name: str,
    backend: str | None = None,
    perturbation: Perturbation | None = None,
    episode_length: int = 1000,
) -> Task:
    """Build a task; ``backend=None`` picks DEFAULT_BACKEND[name]. SharprlError on bad input."""
    if name not in DEFAULT_BACKEND:
        raise SharprlError(f"unknown env {name!r}: expected one of {', '.join(TASKS)}")
    backend = backend or DEFAULT_BACKEND[name]
    if backend not in BACKENDS:
        raise SharprlError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if episode_length < 1:
        raise SharprlError(f"episode length must be >= 1, got {episode_length}")
    key = (name, backend)
    if key not in _ENV_CACHE:  # one env object per (task, backend): compiled functions can be reused
        _ENV_CACHE[key] = brax.envs.get_environment(name, backend=backend)
    env = _ENV_CACHE[key]
    task = Task(name, backend, env, env, Perturbation(), episode_length)
    return task.perturbed(perturbation or Perturbation())
