import jax
import jax.numpy as jnp
import numpy as np


def test_brax_env_steps_and_differentiates():
    from brax import envs

    env = envs.get_environment("inverted_pendulum", backend="spring")
    state = jax.jit(env.reset)(jax.random.PRNGKey(0))

    def total_reward(action):
        s = env.step(state, action)
        return s.reward + jnp.sum(s.obs)

    g = jax.grad(total_reward)(jnp.zeros(env.action_size))
    assert g.shape == (env.action_size,)
    assert np.all(np.isfinite(np.asarray(g)))
