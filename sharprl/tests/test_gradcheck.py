"""The gradient check: agrees on a smooth task, catches a wrong gradient, and its CLI."""

from __future__ import annotations

import json

import jax
import pytest
from toy_env import PointMass, toy_task
from typer.testing import CliRunner

from sharprl.cli import app
from sharprl.envs import Perturbation, Task
from sharprl.errors import SharprlError
from sharprl.gradcheck import GradCheckSpec, check

SPEC = GradCheckSpec(num_envs=8, horizon=10)


class HiddenActionPointMass(PointMass):
    """The point mass whose physics hides the action from reverse mode (a wrong gradient)."""

    def step(self, state, action):
        return super().step(state, jax.lax.stop_gradient(action))


def test_smooth_task_agrees_with_finite_differences():
    res = check(toy_task(), SPEC)
    assert res.sound and res.smooth_step == SPEC.eps[0] and max(res.rel_errors) < 0.02
    assert res.grad_norm > 0 and res.analytic == pytest.approx(res.grad_norm)  # along the gradient itself
    for _, fd in res.finite_differences:
        assert fd == pytest.approx(res.analytic, rel=0.02)


def test_a_hidden_gradient_is_not_sound():
    env = HiddenActionPointMass()
    res = check(Task("hidden", "none", env, env, Perturbation(), 50), SPEC)
    assert res.analytic == 0.0 and res.grad_norm == 0.0
    assert not res.sound and res.smooth_step == 0.0 and res.rel_errors == pytest.approx((1.0,) * 3)


def test_same_seed_same_numbers():
    a, b = check(toy_task(), SPEC), check(toy_task(), SPEC)
    assert (a.analytic, a.finite_differences) == (b.analytic, b.finite_differences)


class RipplingPointMass(PointMass):
    """The point mass with a fast ripple in the reward: a correct gradient (reverse mode and small steps
    agree) that a step of 1e-2 no longer predicts, as stiff contact does."""

    def step(self, state, action):
        nxt = super().step(state, action)
        return nxt.replace(reward=nxt.reward + 0.05 * jax.numpy.sin(300.0 * jax.numpy.sum(action)))


def test_a_stiff_return_is_sound_but_only_smooth_for_small_steps():
    env = RipplingPointMass()
    res = check(Task("rippling", "none", env, env, Perturbation(), 50), SPEC)
    assert res.sound and 0.0 < res.smooth_step < SPEC.eps[0], res.line()


def test_spec_rejects_empty_rollouts_and_unordered_steps():
    with pytest.raises(SharprlError, match="horizon"):
        GradCheckSpec(horizon=0)
    with pytest.raises(SharprlError, match="decreasing"):
        GradCheckSpec(eps=(1e-3, 1e-2))


def test_cli_gradcheck_on_the_cartpole():
    result = CliRunner().invoke(app, ["gradcheck", "--env", "cartpole", "--envs", "4", "--horizon", "8", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["env"] == "cartpole" and out["backend"] == "spring" and out["sound"] is True
    assert len(out["finite_differences"]) == 3 and out["grad_env_steps_per_s"] > 0
    bad = CliRunner().invoke(app, ["gradcheck", "--env", "cartpole", "--envs", "0"])
    assert bad.exit_code == 2 and "num_envs" in bad.output and "Traceback" not in bad.output
