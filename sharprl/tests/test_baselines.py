"""brax.training APG / PPO baselines: training writes sharprl checkpoints that the shared evaluation loads.

The training runs are tiny (cartpole, a few envs, one or two evaluation epochs) and shared through
module-scoped fixtures: what costs time here is compiling brax's training step, not running it.
"""

from __future__ import annotations

import csv
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from brax.training.acme import running_statistics
from brax.training.agents.apg import networks as apg_networks
from brax.training.agents.ppo import networks as ppo_networks

from sharprl import baselines, checkpoint
from sharprl.brax_glue import ActionNoiseWrapper, brax_policy_factory, merge_statistics
from sharprl.envs import Perturbation, make_task
from sharprl.errors import SharprlError
from sharprl.evaluate import evaluate
from sharprl.networks import PolicySpec, init_normalizer
from sharprl.overrides import parse_overrides

EPISODE_LENGTH = 40
TINY_PPO = baselines.PPOConfig(num_envs=8, batch_size=8, num_minibatches=4, unroll_length=5,
                               num_updates_per_batch=2, eval_every_env_steps=160, eval_episodes=4)
TINY_APG = baselines.APGConfig(num_envs=4, horizon_length=8, eval_every_env_steps=64, eval_episodes=4)


@pytest.fixture(scope="module")
def task():
    return make_task("cartpole", episode_length=EPISODE_LENGTH)


@pytest.fixture(scope="module")
def ppo_dir(task, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo")
    rows = []
    baselines.train_ppo(task, out, 160, seed=0, config=TINY_PPO, on_row=rows.append)
    assert len(rows) == 2  # the initial policy and the one after the single epoch
    return out


@pytest.fixture(scope="module")
def apg_dir(task, tmp_path_factory):
    out = tmp_path_factory.mktemp("apg")
    baselines.train_apg(task, out, 64, seed=0, config=TINY_APG)
    return out


def _rows(run_dir):
    with open(run_dir / checkpoint.METRICS_FILE, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("which", ["ppo_dir", "apg_dir"])
def test_checkpoint_loads_into_shared_evaluation(which, task, request):
    run_dir = request.getfixturevalue(which)
    rows = _rows(run_dir)
    assert {"epoch", "env_steps", "wall_s", "eval_return", "eval_return_std", "steps_per_s"} <= set(rows[0])
    steps = [int(r["env_steps"]) for r in rows]
    assert steps[0] == 0 and steps[-1] >= (160 if which == "ppo_dir" else 64) and steps == sorted(steps)
    loaded = checkpoint.load_policy(run_dir)
    assert loaded.spec.kind == ("brax_ppo" if which == "ppo_dir" else "brax_apg")
    assert loaded.meta["env_steps"] == steps[-1] and loaded.meta["metrics_rows"] == len(rows)
    # The same evaluation, seed and episodes give exactly the last logged return: the checkpoint
    # holds the parameters that were evaluated.
    res = evaluate(loaded.make_policy, loaded.params, task, episodes=4, seed=1)
    assert np.isfinite(res.mean_return)
    assert res.mean_return == pytest.approx(float(rows[-1]["eval_return"]), rel=1e-5)
    # Observation statistics were collected during training and saved with the weights.
    assert int(loaded.params[0].count.lo) > 0
    best = checkpoint.load_meta(run_dir / checkpoint.BEST_DIR)  # the best evaluation's policy, kept apart
    top = max(rows, key=lambda r: float(r["eval_return"]))
    assert best["eval_return"] == float(top["eval_return"]) and best["env_steps"] == int(top["env_steps"])


def test_ppo_resume_continues_steps_and_rows(ppo_dir, task, tmp_path):
    run_dir = tmp_path / "resumed"
    run_dir.mkdir()
    for name in (checkpoint.CHECKPOINT_FILE, checkpoint.METRICS_FILE):
        (run_dir / name).write_bytes((ppo_dir / name).read_bytes())
    before = _rows(run_dir)
    with pytest.raises(SharprlError, match="--resume"):
        baselines.train_ppo(task, run_dir, 320, config=TINY_PPO)
    with pytest.raises(SharprlError, match="algo"):
        baselines.train_apg(task, run_dir, 320, config=TINY_APG, resume=True)
    meta = baselines.train_ppo(task, run_dir, 320, config=TINY_PPO, resume=True)
    after = _rows(run_dir)
    assert after[: len(before)] == before and len(after) == len(before) + 1  # no re-evaluation of step 0
    assert int(after[-1]["env_steps"]) >= 320 and int(after[-1]["epoch"]) == int(before[-1]["epoch"]) + 1
    assert float(after[-1]["wall_s"]) > float(before[-1]["wall_s"])
    assert meta["env_steps"] == int(after[-1]["env_steps"])
    # A finished budget is a no-op.
    assert baselines.train_ppo(task, run_dir, 320, config=TINY_PPO, resume=True)["epoch"] == meta["epoch"]


@pytest.mark.parametrize("kind", ["brax_ppo", "brax_apg"])
def test_policy_kind_matches_brax_inference(kind):
    spec = PolicySpec(5, 2, kind, (16, 8), "swish" if kind == "brax_ppo" else "elu")
    make_policy, init_params = brax_policy_factory(spec)
    norm, policy_params = init_params(jax.random.PRNGKey(3))
    obs = jax.random.normal(jax.random.PRNGKey(4), (7, 5)) * 3.0  # (batch, obs)
    norm = running_statistics.update(norm, obs)  # non-trivial statistics
    if kind == "brax_ppo":
        nets = ppo_networks.make_ppo_networks(5, 2, running_statistics.normalize, policy_hidden_layer_sizes=(16, 8))
        brax_make = ppo_networks.make_inference_fn(nets)
    else:
        nets = apg_networks.make_apg_networks(5, 2, running_statistics.normalize, hidden_layer_sizes=(16, 8))
        brax_make = apg_networks.make_inference_fn(nets)
    key = jax.random.PRNGKey(5)
    for deterministic in (True, False):
        ours = make_policy((norm, policy_params), deterministic)(obs, key)  # (batch, act)
        theirs = brax_make((norm, policy_params), deterministic=deterministic)(obs, key)[0]
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-6)
        assert ours.shape == (7, 2) and bool(jnp.all(jnp.abs(ours) <= 1.0))


def test_merge_statistics_equals_one_pass():
    data = jax.random.normal(jax.random.PRNGKey(0), (50, 3)) * jnp.array([1.0, 5.0, 0.1]) + 2.0  # (n, obs)
    a = running_statistics.update(init_normalizer(3), data[:20])
    b = running_statistics.update(init_normalizer(3), data[20:])
    both = running_statistics.update(init_normalizer(3), data)
    merged = merge_statistics(a, b)
    for field in ("mean", "std", "summed_variance"):
        np.testing.assert_allclose(getattr(merged, field), getattr(both, field), rtol=1e-4, atol=1e-5)
    assert int(merged.count.lo) == 50
    fresh = merge_statistics(a, init_normalizer(3))  # a new run's empty statistics change nothing
    np.testing.assert_allclose(fresh.std, a.std, rtol=1e-6)


def test_action_noise_wrapper(task):
    noisy = make_task("cartpole", episode_length=EPISODE_LENGTH, perturbation=Perturbation(action_noise=0.5))
    env = ActionNoiseWrapper(noisy.env, 0.5)
    state = jax.jit(env.reset)(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    action = jnp.full((task.action_size,), 0.2)  # (act,)
    s1, s2 = step(state, action), step(state, action)
    np.testing.assert_array_equal(s1.obs, s2.obs)  # the noise key travels in the state: reproducible
    clean = jax.jit(noisy.env.step)(state, action)
    assert not np.allclose(s1.obs, clean.obs)  # but the action was perturbed
    assert not np.array_equal(step(s1, action).info["action_noise_key"], s1.info["action_noise_key"])
    assert baselines.brax_env(task) is task.env  # nominal task: no wrapper


def test_bad_configs_are_sharprl_errors(task, tmp_path):
    with pytest.raises(SharprlError, match="multiple of num_envs"):
        dataclasses.replace(TINY_PPO, num_envs=7)
    with pytest.raises(SharprlError, match="horizon_length"):
        dataclasses.replace(TINY_APG, horizon_length=0)
    with pytest.raises(SharprlError, match="unknown baseline"):
        baselines.train("sac", task, tmp_path, 100)
    with pytest.raises(SharprlError, match="env-steps"):
        baselines.train("ppo", task, tmp_path, 0)
    apg = parse_overrides(["horizon_length=16", "num_envs=32", "hidden_sizes=[64, 64]"], baselines.APGConfig, {})
    assert baselines.APGConfig(**apg) == baselines.APGConfig(horizon_length=16, num_envs=32, hidden_sizes=(64, 64))
    with pytest.raises(SharprlError, match="FIELD one of"):
        parse_overrides(["seed=3"], baselines.PPOConfig, {})


def test_cli_train_ppo_then_evaluate(ppo_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sharprl.cli import app

    # The fixture's configuration through --set, so the persistent compilation cache serves brax's
    # training step.
    monkeypatch.setenv("SHARPRL_JAX_CACHE", str(jax.config.jax_compilation_cache_dir or "off"))
    out = tmp_path / "cli-ppo"
    tiny = [f"--set={name}={getattr(TINY_PPO, name)}" for name in
            ("num_envs", "batch_size", "num_minibatches", "unroll_length", "num_updates_per_batch",
             "eval_every_env_steps", "eval_episodes")]
    args = ["train", "--env", "cartpole", "--algo", "ppo", "--env-steps", "160", "--episode-length",
            str(EPISODE_LENGTH), "--out", str(out), "--quiet", *tiny]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert checkpoint.load_meta(out)["config"] == json.loads(json.dumps(dataclasses.asdict(TINY_PPO)))
    assert "done:" in result.output and "eval return" in result.output
    rows = _rows(out)
    assert int(rows[-1]["env_steps"]) == 160
    result = CliRunner().invoke(app, ["evaluate", str(out), "--episodes", "4", "--seed", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["mean_return"] == pytest.approx(float(rows[-1]["eval_return"]), rel=1e-5)
    again = CliRunner().invoke(app, args)  # an existing run without --resume: one-line error, exit 2
    assert again.exit_code == 2 and "--resume" in again.output
    other = CliRunner().invoke(app, [*args, "--resume", "--set", "learning_rate=1e-3"])  # other settings
    assert other.exit_code == 2 and "cannot resume" in other.output
    unknown = CliRunner().invoke(app, [*args, "--set", "horizon_length=8"])  # an APG field, not PPO's
    assert unknown.exit_code == 2 and "FIELD one of" in unknown.output
