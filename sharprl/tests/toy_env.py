"""A tiny differentiable environment (not Brax) for the fast SHAC unit tests.

A damped point mass in ``dim`` dimensions pushed by the action; reward ``-|position|^2``. With
``poison_step`` set, the step taken at that episode time has a finite value but a non-finite
gradient (``sqrt`` at 0), to exercise the skip of non-finite updates. ``calls`` counts traces.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from brax.base import Transform
from brax.envs.base import State

from sharprl.envs import Perturbation, Task


class PointMass:
    def __init__(self, dim: int = 2, poison_step: int = -1):
        self.dim, self.poison_step = dim, poison_step
        self.observation_size, self.action_size = 2 * dim, dim

    def reset(self, rng: jax.Array) -> State:
        pos = jax.random.uniform(rng, (self.dim,), minval=-1.0, maxval=1.0)
        obs = jnp.concatenate([pos, jnp.zeros(self.dim)])  # (2 dim,)
        zero = jnp.zeros(())
        return State(None, obs, zero, zero, {}, {"t": jnp.zeros((), jnp.int32)})

    def step(self, state: State, action: jax.Array) -> State:
        pos, vel = state.obs[: self.dim], state.obs[self.dim :]
        vel = 0.9 * vel + 0.1 * action
        pos = pos + 0.1 * vel
        t = state.info["t"] + 1
        poison = t == self.poison_step
        x = jnp.where(poison, jnp.sum(action) * 0.0, 1.0)
        reward = -jnp.sum(pos**2) + jnp.sqrt(x) - 1.0  # value unchanged, gradient NaN when poisoned
        done = jnp.where(jnp.sum(pos**2) > 25.0, 1.0, 0.0)
        return state.replace(obs=jnp.concatenate([pos, vel]), reward=reward, done=done, info={"t": t})


def toy_task(episode_length: int = 50, poison_step: int = -1) -> Task:
    env = PointMass(poison_step=poison_step)
    return Task("toy", "none", env, env, Perturbation(), episode_length)


@flax.struct.dataclass
class ToyBody:
    """The part of a Brax pipeline state that ``sharprl.envs.healthy_barrier`` reads: link 0's pose."""

    x: Transform  # pos: (1, 3), rot: (1, 4); link 0 = the torso


class TallPointMass(PointMass):
    """A 3-D point mass whose third coordinate is a torso height with Brax Ant's healthy z range.

    Its first coordinate doubles as the torso's tilt (radians about the x axis), for the upright barrier.
    """

    _healthy_z_range = (0.2, 1.0)

    def __init__(self):
        super().__init__(dim=3)

    @staticmethod
    def _with_body(state: State) -> State:
        tilt = state.obs[0]  # the torso's rotation about the world x axis: its up axis has z = cos(tilt)
        rot = jnp.array([jnp.cos(tilt / 2), jnp.sin(tilt / 2), 0.0, 0.0])[None]  # (1, 4) quaternion (w, x, y, z)
        return state.replace(pipeline_state=ToyBody(Transform.create(pos=state.obs[None, :3], rot=rot)))

    def reset(self, rng: jax.Array) -> State:
        return self._with_body(super().reset(rng))

    def step(self, state: State, action: jax.Array) -> State:
        return self._with_body(super().step(state, action))


def tall_task() -> Task:
    env = TallPointMass()
    return Task("tall-toy", "none", env, env, Perturbation(), 50)
