"""The critic's TD(lambda) targets and its minibatch fit."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from test_shac import _leaves_equal

from sharprl import critic


def _reference_targets(reward, done, next_value, gamma, lam):
    """TD(lambda) by its forward definition: a lambda-weighted mix of n-step returns, each cut at a done."""
    horizon, n = reward.shape
    out = np.zeros((horizon, n))
    for t in range(horizon):
        for e in range(n):
            n_step, ret, disc = [], 0.0, 1.0
            for k in range(t, horizon):
                ret += disc * reward[k, e]
                disc *= gamma
                n_step.append(ret + disc * next_value[k, e])  # the (k - t + 1)-step return
                if done[k, e] > 0.5:
                    break
            weights = [(1 - lam) * lam**i for i in range(len(n_step) - 1)] + [lam ** (len(n_step) - 1)]
            out[t, e] = sum(w * g for w, g in zip(weights, n_step))
    return out


def test_td_lambda_targets_match_the_lambda_return_and_its_limits():
    rng = np.random.default_rng(0)
    reward, next_value = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))  # (horizon, n)
    done = np.zeros((6, 3))
    done[2, 1] = done[0, 2] = done[-1] = 1.0  # a cut inside the window, at its first step, and at its end
    for lam in (0.0, 0.5, 0.95, 1.0):
        got = critic.td_lambda_targets(jnp.array(reward), jnp.array(done), jnp.array(next_value), 0.9, lam)
        np.testing.assert_allclose(got, _reference_targets(reward, done, next_value, 0.9, lam), rtol=1e-5, atol=1e-6)
    one_step = critic.td_lambda_targets(jnp.array(reward), jnp.array(done), jnp.array(next_value), 0.9, 0.0)
    np.testing.assert_allclose(one_step, reward + 0.9 * next_value, rtol=1e-6, atol=1e-6)


def test_fit_regresses_the_targets_and_skips_non_finite_steps():
    model = nn.Dense(1)

    def apply(params, x):  # (B, 2) -> (B,)
        return model.apply(params, x)[..., 0]

    x = jax.random.normal(jax.random.PRNGKey(0), (64, 2))  # (B, 2)
    y = x @ jnp.array([1.5, -2.0]) + 0.5  # (B,)
    params = model.init(jax.random.PRNGKey(1), x)
    opt = optax.adam(0.05)
    before = float(jnp.mean((apply(params, x) - y) ** 2))
    fitted, _, skipped, loss = critic.fit(apply, opt, params, opt.init(params), x, y, jax.random.PRNGKey(2), 50, 4)
    after = float(jnp.mean((apply(fitted, x) - y) ** 2))
    assert int(skipped) == 0 and after < 0.05 * before and float(loss) < 0.05 * before, (before, after, float(loss))
    bad, _, skipped, _ = critic.fit(
        apply, opt, params, opt.init(params), x, y.at[0].set(jnp.nan), jax.random.PRNGKey(2), 3, 1
    )  # one full batch per step: every step sees the NaN
    assert int(skipped) == 3 and _leaves_equal(bad, params)
