"""SAM / ASAM transformations: closed-form quadratic, optax.contrib.sam equality, same inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sharprl import sharpness
from sharprl.errors import SharprlError

A = jnp.array([[3.0, 0.5], [0.5, 1.0]])  # positive-definite Hessian of the quadratic


def quad_loss(theta):
    return 0.5 * theta["w"] @ A @ theta["w"]


def test_sam_on_quadratic_matches_closed_form():
    theta = {"w": jnp.array([1.0, -2.0])}
    lr, rho = 0.1, 0.05
    opt = sharpness.sam(optax.sgd(lr), rho)
    g = jax.grad(quad_loss)(theta)
    updates, _ = opt.update(g, opt.init(theta), theta, grad_fn=jax.grad(quad_loss))
    w = np.array([1.0, -2.0])
    a = np.asarray(A)
    gw = a @ w
    expected = w - lr * a @ (w + rho * gw / np.linalg.norm(gw))
    np.testing.assert_allclose(np.asarray(optax.apply_updates(theta, updates)["w"]), expected, rtol=1e-6)


def test_asam_on_quadratic_matches_closed_form():
    theta = {"w": jnp.array([1.0, -2.0])}
    lr, rho, eta = 0.1, 0.5, 0.01
    opt = sharpness.asam(optax.sgd(lr), rho, eta)
    g = jax.grad(quad_loss)(theta)
    updates, _ = opt.update(g, opt.init(theta), theta, grad_fn=jax.grad(quad_loss))
    w = np.array([1.0, -2.0])
    a = np.asarray(A)
    t = np.abs(w) + eta
    gw = a @ w
    eps = rho * t * t * gw / np.linalg.norm(t * gw)
    expected = w - lr * a @ (w + eps)
    np.testing.assert_allclose(np.asarray(optax.apply_updates(theta, updates)["w"]), expected, rtol=1e-6)
    # ASAM's step differs from SAM's: the scaling matters
    sam_eps, _ = sharpness.ascent_direction(rho).update(g, optax.EmptyState(), theta)
    assert not np.allclose(np.asarray(sam_eps["w"]), eps)


def test_sam_equals_optax_contrib_sam_over_several_steps():
    theta0 = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.3)}

    def loss(p):
        return quad_loss(p) + jnp.sin(p["b"]) * p["w"][0] + p["b"] ** 2

    grad = jax.grad(loss)
    lr, rho = 0.05, 0.1
    ours = sharpness.sam(optax.adam(lr), rho)
    ref = optax.contrib.sam(
        optax.adam(lr), optax.chain(optax.contrib.normalize(), optax.sgd(rho)), sync_period=2, opaque_mode=True
    )
    p_ours, p_ref = theta0, theta0
    s_ours, s_ref = ours.init(theta0), ref.init(theta0)
    for _ in range(5):
        u, s_ours = ours.update(grad(p_ours), s_ours, p_ours, grad_fn=grad)
        p_ours = optax.apply_updates(p_ours, u)
        u, s_ref = ref.update(grad(p_ref), s_ref, p_ref, grad_fn=lambda p, _: grad(p))
        p_ref = optax.apply_updates(p_ref, u)
    for k in theta0:
        np.testing.assert_allclose(np.asarray(p_ours[k]), np.asarray(p_ref[k]), rtol=1e-5, atol=1e-7)


def test_rho_zero_is_the_base_optimiser_and_zero_gradient_gives_zero_step():
    theta = {"w": jnp.array([1.0, -2.0])}
    g = jax.grad(quad_loss)(theta)
    opt = sharpness.asam(optax.sgd(0.1), 0.0)
    u, _ = opt.update(g, opt.init(theta), theta, grad_fn=jax.grad(quad_loss))
    np.testing.assert_allclose(np.asarray(u["w"]), -0.1 * np.asarray(g["w"]))
    eps, _ = sharpness.ascent_direction(0.1).update({"w": jnp.zeros(2)}, optax.EmptyState(), theta)
    assert np.all(np.asarray(eps["w"]) == 0.0)


def test_grad_fn_receives_the_perturbed_point_and_errors():
    theta = {"w": jnp.array([1.0, -2.0])}
    seen = []

    def grad_fn(p):
        seen.append(np.asarray(p["w"]))
        return jax.grad(quad_loss)(p)

    g = jax.grad(quad_loss)(theta)
    opt = sharpness.sam(optax.sgd(0.1), 0.2)
    opt.update(g, opt.init(theta), theta, grad_fn=grad_fn)
    assert len(seen) == 1
    assert np.isclose(np.linalg.norm(seen[0] - np.array([1.0, -2.0])), 0.2, rtol=1e-6)
    with pytest.raises(SharprlError, match="grad_fn"):
        opt.update(g, opt.init(theta), theta)
    with pytest.raises(SharprlError, match="rho"):
        sharpness.ascent_direction(-1.0)
    with pytest.raises(SharprlError, match="unknown sharpness mode"):
        sharpness.wrap(optax.sgd(0.1), "bogus", 0.1)
