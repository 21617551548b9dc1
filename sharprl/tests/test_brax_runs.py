"""Real Brax runs on the tiny cartpole task: CLI train/evaluate, resume after a kill, perturbations."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from sharprl import checkpoint, shac
from sharprl.cli import app
from sharprl.envs import (
    DEFAULT_BACKEND,
    Perturbation,
    healthy_barrier,
    make_task,
    perturb_system,
    upright_barrier,
)
from sharprl.evaluate import evaluate
from sharprl.networks import PolicySpec, policy_factory
from sharprl.shac_config import preset

EPOCHS = 20
STEPS = EPOCHS * 16 * 8  # cartpole preset: 16 envs x horizon 8 per epoch
LENGTH = 200
runner = CliRunner()


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cartpole") / "run"
    args = ["train", "--env", "cartpole", "--algo", "shac-asam", "--env-steps", str(STEPS), "--out", str(out)]
    result = runner.invoke(app, [*args, "--episode-length", str(LENGTH), "--quiet"])
    return out, result


def test_cli_train_writes_metrics_and_checkpoint(cli_run):
    out, result = cli_run
    assert result.exit_code == 0, result.output
    assert "done:" in result.output and "eval return" in result.output
    rows = checkpoint.read_metrics(out)
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert rows[-1]["eval_return"] != "" and int(rows[-1]["env_steps"]) == STEPS
    meta = checkpoint.load_meta(out)
    assert (meta["epoch"], meta["algo"], meta["env"], meta["backend"]) == (EPOCHS, "shac-asam", "cartpole", "spring")


def test_resume_after_a_kill_loses_no_epoch_and_matches_the_uninterrupted_run(cli_run, tmp_path):
    out, _ = cli_run
    config = preset("cartpole", "shac-asam", env_steps=STEPS, episode_length=LENGTH)
    task = make_task("cartpole", episode_length=LENGTH)

    def kill_at_15(row):
        if row["epoch"] == 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        shac.train(config, task, kill_at_15, run_dir=tmp_path)
    assert checkpoint.load_meta(tmp_path)["epoch"] == 10 and len(checkpoint.read_metrics(tmp_path)) == 15
    _, params, rows = shac.train(config, task, run_dir=tmp_path, resume=True)
    assert [int(r["epoch"]) for r in checkpoint.read_metrics(tmp_path)] == list(range(1, EPOCHS + 1))
    reference = checkpoint.load_policy(out).params
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    result = runner.invoke(app, ["train", "--env", "cartpole", "--algo", "shac-asam", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--resume" in result.output  # a finished run is not overwritten


def test_cli_evaluate_is_deterministic_and_takes_perturbations(cli_run):
    out, _ = cli_run
    first = runner.invoke(app, ["evaluate", str(out), "--episodes", "4", "--json"])
    second = runner.invoke(app, ["evaluate", str(out), "--episodes", "4", "--json"])
    assert first.exit_code == 0, first.output
    a, b = json.loads(first.output.strip().splitlines()[-1]), json.loads(second.output.strip().splitlines()[-1])
    assert a["returns"] == b["returns"] and a["algo"] == "shac-asam" and len(a["returns"]) == 4
    other = runner.invoke(app, ["evaluate", str(out), "--episodes", "4", "--json", "--seed", "1"])
    assert json.loads(other.output.strip().splitlines()[-1])["returns"] != a["returns"]
    noisy = runner.invoke(app, ["evaluate", str(out), "--episodes", "4", "--action-noise", "0.3", "--mass", "1.5"])
    assert noisy.exit_code == 0 and "return" in noisy.output and "noise 0.3" in noisy.output
    best = runner.invoke(app, ["evaluate", str(out / checkpoint.BEST_DIR), "--episodes", "4", "--json"])
    assert best.exit_code == 0, best.output  # the best-evaluated policy (here the only evaluation's)
    assert json.loads(best.output.strip().splitlines()[-1])["returns"] == a["returns"]


def test_cli_evaluate_on_another_backend_than_the_one_trained_on(cli_run):
    out, _ = cli_run
    other = runner.invoke(app, ["evaluate", str(out), "--episodes", "4", "--json", "--backend", "positional"])
    assert other.exit_code == 0, other.output
    got = json.loads(other.output.strip().splitlines()[-1])
    assert (got["backend"], got["trained_backend"]) == ("positional", "spring") and len(got["returns"]) == 4
    nominal = runner.invoke(app, ["evaluate", str(out), "--episodes", "4", "--json"]).output
    nominal = json.loads(nominal.strip().splitlines()[-1])
    assert got["returns"] != nominal["returns"]  # other contact and integration: other episodes
    text = runner.invoke(app, ["evaluate", str(out), "--episodes", "2", "--backend", "positional"]).output
    assert "(positional; trained on spring)" in text
    bad = runner.invoke(app, ["evaluate", str(out), "--backend", "bullet"])
    assert bad.exit_code == 2 and "unknown backend 'bullet'" in bad.output and "Traceback" not in bad.output


def test_cli_trains_under_a_perturbation_and_resumes_only_under_the_same(cli_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(cli_run[0], out)
    metrics = (out / checkpoint.METRICS_FILE).read_text()
    args = ["train", "--env", "cartpole", "--algo", "shac-asam", "--env-steps", str(STEPS), "--out", str(out)]
    refused = runner.invoke(app, [*args, "--episode-length", str(LENGTH), "--resume", "--mass", "1.2"])
    assert refused.exit_code == 2 and "cannot resume: checkpoint train_perturbation" in refused.output
    assert (out / checkpoint.METRICS_FILE).read_text() == metrics  # nothing saved was touched
    perturbed = tmp_path / "perturbed"
    args = ["train", "--env", "cartpole", "--algo", "shac", "--env-steps", "256", "--out", str(perturbed), "--quiet"]
    result = runner.invoke(app, [*args, "--action-noise", "0.1", "--mass", "1.2", "--episode-length", str(LENGTH)])
    assert result.exit_code == 0, result.output
    recorded = checkpoint.load_meta(perturbed)["train_perturbation"]
    assert recorded == {"action_noise": 0.1, "friction_scale": 1.0, "mass_scale": 1.2, "gravity_scale": 1.0}


def test_cli_evaluate_refuses_a_policy_built_for_other_sizes(tmp_path):
    spec = PolicySpec(observation_size=5, action_size=1, hidden_sizes=(4,))  # cartpole observes 4 numbers
    params = policy_factory(spec)[1](jax.random.PRNGKey(0))
    checkpoint.save(tmp_path, spec=spec, policy_params=params, meta={"env": "cartpole", "backend": "spring"})
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--episodes", "2"])
    assert result.exit_code == 2 and "sizes (4, 1)" in result.output and "(5, 1)" in result.output


def test_zero_perturbation_equals_nominal_and_real_ones_change_returns(cli_run):
    out, _ = cli_run
    loaded = checkpoint.load_policy(out)
    task = make_task("cartpole", episode_length=LENGTH)

    def ret(pert):
        return evaluate(loaded.make_policy, loaded.params, task, pert, episodes=4, seed=0).returns

    nominal = evaluate(loaded.make_policy, loaded.params, task, None, episodes=4, seed=0).returns
    assert ret(Perturbation(action_noise=0.0, friction_scale=1.0, mass_scale=1.0, gravity_scale=1.0)) == nominal
    assert ret(Perturbation(action_noise=0.3)) != nominal
    assert ret(Perturbation(mass_scale=3.0)) != nominal


@pytest.mark.parametrize("name", ["ant", "humanoid", "hopper", "halfcheetah"])
def test_each_contact_task_builds_on_its_default_and_a_chosen_backend(name):
    # Brax's own action sizes for these tasks (brax 0.14.2), on the measured default backend and on another
    actions = {"ant": 8, "humanoid": 17, "hopper": 3, "halfcheetah": 6}
    task = make_task(name, perturbation=Perturbation(friction_scale=0.5))
    assert task.backend == DEFAULT_BACKEND[name] and task.env.backend == task.backend
    assert task.action_size == actions[name]
    np.testing.assert_allclose(task.env.sys.geom_friction, 0.5 * task.nominal_env.sys.geom_friction)
    other = "positional" if task.backend != "positional" else "spring"
    assert make_task(name, backend=other).env.backend == other


def test_perturb_system_scales_friction_mass_and_gravity():
    sys = make_task("cartpole").nominal_env.sys
    new = perturb_system(sys, 0.5, 2.0, 0.25)
    np.testing.assert_allclose(new.geom_friction, 0.5 * sys.geom_friction)
    np.testing.assert_allclose(new.link.inertia.mass, 2.0 * sys.link.inertia.mass)
    np.testing.assert_allclose(new.body_mass, 2.0 * sys.body_mass)
    np.testing.assert_allclose(new.gravity, 0.25 * sys.gravity)


def test_mass_scale_reaches_the_effective_masses_spring_simulates():
    # Brax's Ant sets spring_mass_scale = 1: spring simulates mass ** 0 = 1 for every link, so the
    # scale must act on the effective masses, and scale 1 must leave them exactly nominal.
    sys = make_task("ant", backend="spring").nominal_env.sys

    def effective(s):
        i_diag = np.diagonal(np.asarray(s.link.inertia.i), axis1=-2, axis2=-1)  # (links, 3)
        return (np.asarray(s.link.inertia.mass) ** (1 - s.spring_mass_scale), i_diag ** (1 - s.spring_inertia_scale))

    mass0, inertia0 = effective(sys)
    np.testing.assert_array_equal(effective(perturb_system(sys, backend="spring"))[0], mass0)
    mass2, inertia2 = effective(perturb_system(sys, 1.0, 2.0, 1.0, backend="spring"))
    np.testing.assert_allclose(mass2, 2.0 * mass0)
    np.testing.assert_allclose(inertia2, 2.0 * inertia0)
    raw = perturb_system(sys, 1.0, 2.0, 1.0, backend="generalized")  # generalized uses the raw masses
    np.testing.assert_allclose(raw.link.inertia.mass, 2.0 * sys.link.inertia.mass)


def test_healthy_barrier_is_zero_inside_the_range_and_has_a_gradient_near_its_ends():
    env = make_task("ant", backend="spring").env  # healthy torso heights: (0.2, 1.0)

    def at_height(z):  # the barrier reads only the torso position of the pipeline state
        return healthy_barrier(env, SimpleNamespace(x=SimpleNamespace(pos=jnp.zeros((9, 3)).at[0, 2].set(z))), 0.1)

    assert float(at_height(0.75)) == 0.0 and float(jax.grad(at_height)(0.75)) == 0.0
    assert float(at_height(0.95)) == pytest.approx(0.25) and float(at_height(1.0)) == pytest.approx(1.0)
    assert float(jax.grad(at_height)(0.95)) == pytest.approx(10.0)  # d/dz ((z - 0.9) / 0.1)^2
    assert float(jax.grad(at_height)(0.25)) == pytest.approx(-10.0)  # the floor pushes up
    assert float(healthy_barrier(make_task("cartpole").env, None, 0.1)) == 0.0  # no healthy range


def test_upright_barrier_is_zero_while_upright_and_one_upside_down():
    env = make_task("ant", backend="spring").env

    def tilted(angle):  # the torso rotated by ``angle`` about the world x axis; the barrier reads only that
        rot = jnp.zeros((9, 4)).at[0].set(jnp.array([jnp.cos(angle / 2), jnp.sin(angle / 2), 0.0, 0.0]))
        return upright_barrier(env, SimpleNamespace(x=SimpleNamespace(rot=rot)), 0.7)

    assert float(tilted(0.5)) == 0.0 and float(jax.grad(tilted)(0.5)) == 0.0  # cos(0.5) = 0.88 > 0.7
    assert float(tilted(jnp.pi)) == pytest.approx(1.0)  # on its back
    assert float(tilted(jnp.pi / 2)) == pytest.approx((0.7 / 1.7) ** 2)  # on its side
    assert float(jax.grad(tilted)(jnp.pi / 2)) == pytest.approx(2 * 0.7 / 1.7**2)  # tipping further costs more
    assert float(upright_barrier(make_task("cartpole").env, None, 0.7)) == 0.0  # no torso height range


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    for args, text in (
        (["evaluate", str(tmp_path / "missing")], "no checkpoint.msgpack"),
        (["train", "--env", "cartpole", "--algo", "bogus", "--out", str(tmp_path)], "unknown --algo"),
        (["train", "--env", "moon", "--out", str(tmp_path)], "unknown env"),
        (["evaluate", str(tmp_path), "--mass", "-1"], "no checkpoint.msgpack"),
        (["train", "--env", "cartpole", "--set", "actor_lr=fast", "--out", str(tmp_path)], "expected float"),
        (["train", "--env", "cartpole", "--set", "lr=1", "--out", str(tmp_path)], "FIELD=VALUE"),
        (["train", "--env", "cartpole", "--set", "seed=1", "--out", str(tmp_path)], "use --seed"),
        (["train", "--env", "cartpole", "--set", "gamma=2", "--out", str(tmp_path)], "invalid SHAC config"),
        (["train", "--algo", "ppo", "--env-steps", "100", "--set", "gamma=0.9", "--out", str(tmp_path)],
         "FIELD one of"),  # PPO's discount is `discounting`
        (["train", "--algo", "ppo", "--env-steps", "100", "--set", "num_envs=7", "--out", str(tmp_path)],
         "multiple of num_envs"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and text in lines[0] and "Traceback" not in result.output
    with pytest.raises(Exception, match="mass_scale"):
        Perturbation(mass_scale=0.0)


def test_cli_json_output_is_parseable_in_a_fresh_process(cli_run):
    """mujoco.mjx prints to stdout when imported without warp; --json's stdout must stay pure JSON."""
    out, _ = cli_run
    cmd = [sys.executable, "-c", "from sharprl.cli import app; app()", "evaluate", str(out), "--episodes", "2"]
    proc = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["episodes"] == 2


def test_cli_set_overrides_the_preset_and_is_recorded(tmp_path):
    args = ["train", "--env", "cartpole", "--algo", "shac", "--env-steps", "256", "--out", str(tmp_path), "--quiet"]
    result = runner.invoke(app, [*args, "--set", "actor_lr=5e-4", "--set", "critic_hidden=[16, 8]"])
    assert result.exit_code == 0, result.output
    config = checkpoint.load_meta(tmp_path)["config"]
    assert (config["actor_lr"], config["critic_hidden"], config["epochs"]) == (5e-4, [16, 8], 2)
    assert config["critic_lr"] == preset("cartpole").critic_lr  # the rest stays the preset's
    again = runner.invoke(app, [*args, "--resume", "--set", "actor_lr=1e-3"])  # other settings: refused
    assert again.exit_code == 2 and "cannot resume" in again.output


def test_cli_curves_plots_runs(cli_run, tmp_path):
    out, _ = cli_run
    args = ["curves", str(out), "--out", str(tmp_path), "--title", "cartpole", "--baseline", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "shac-asam seed 0" in result.output and "(1.0x)" in result.output  # itself as baseline
    for name in ("curves_env_steps.png", "curves_wall_clock.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    bad = runner.invoke(app, ["curves", str(tmp_path), "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "no evaluation or training-return rows" in bad.output
    named = runner.invoke(app, ["curves", str(out), "--out", str(tmp_path), "--labels", "ASAM short"])
    assert named.exit_code == 0 and "| ASAM short |" in named.output, named.output
    wrong = runner.invoke(app, ["curves", str(out), "--out", str(tmp_path), "--labels", "a,b"])
    assert wrong.exit_code == 2 and "2 labels for 1 run" in wrong.output
