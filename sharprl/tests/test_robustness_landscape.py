"""Robustness sweeps and sharpness measures on a tiny trained cart-pole SHAC run."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from sharprl import checkpoint, jobs, landscape, report, robustness, shac
from sharprl.envs import Perturbation, make_task
from sharprl.evaluate import evaluate
from sharprl.shac_config import preset
from sharprl.study_cli import register

SPEC = robustness.SweepSpec(
    noise_levels=(0.0, 0.3),
    friction_scales=(0.5, 1.0),
    mass_scales=(1.0, 1.5),
    grid_noise=(0.0, 0.3),
    grid_friction=(0.5, 1.0),
    episodes=3,
    seed=5,
)


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "shac"
    cfg = preset("cartpole", "shac", epochs=2, eval_every_epochs=0, checkpoint_every_epochs=1, episode_length=30)
    shac.train(cfg, make_task("cartpole", episode_length=30), run_dir=out)
    return out


def test_zero_perturbation_equals_the_nominal_evaluation(run_dir):
    res = robustness.evaluate_run(run_dir, SPEC)
    make_policy, params, task, _ = robustness.load_run(run_dir)
    nominal = evaluate(make_policy, params, task, Perturbation(), episodes=SPEC.episodes, seed=SPEC.seed)
    point = next(p for p in res["points"] if (p["action_noise"], p["friction_scale"], p["mass_scale"]) == (0, 1, 1))
    np.testing.assert_allclose(point["returns"], nominal.returns, rtol=1e-5, atol=1e-5)
    noisy = evaluate(make_policy, params, task, Perturbation(action_noise=0.3), episodes=SPEC.episodes, seed=SPEC.seed)
    point = next(p for p in res["points"] if p["action_noise"] == 0.3 and p["friction_scale"] == 1.0)
    np.testing.assert_allclose(point["returns"], noisy.returns, rtol=1e-5, atol=1e-5)
    assert robustness.evaluate_run(run_dir, SPEC)["points"] == res["points"]  # same seed, same numbers


def test_aggregate_pools_episodes_and_seeds():
    spec = dataclasses.replace(SPEC, episodes=2)
    pts = spec.points()
    fake = [
        {
            "run_dir": f"r{s}",
            "algo": "shac",
            "points": [
                dict(zip(("action_noise", "friction_scale", "mass_scale"), p), returns=[10.0 * s + i, 10.0 * s + i + 2])
                for i, p in enumerate(pts)
            ],
        }  # fmt: skip
        for s in (1, 2)
    ]
    rows = robustness.aggregate(fake, spec)
    sizes = {k: len(v) for k, v in spec.sweep_points().items()}
    assert len(rows) == sum(sizes.values())
    first = rows[0]  # point 0 of the noise sweep: returns 10, 12 (seed 1) and 20, 22 (seed 2)
    assert first.mean_return == pytest.approx(16.0)
    assert first.std_return == pytest.approx(np.std([10, 12, 20, 22]))
    assert first.std_over_seeds == pytest.approx(5.0)
    assert (first.seeds, first.episodes) == (2, 4)
    assert robustness.grid(rows, "shac", spec).shape == (2, 2)


def _noise_rows(algo: str, nominal: float, noisy: float, seed_std: float) -> list[robustness.Row]:
    """A noise sweep of 3 seeds x 8 episodes with episode std 10 and the given std over seeds."""
    return [
        robustness.Row("action_noise", algo, level, 1.0, 1.0, value, 10.0, seed_std, 3, 24)
        for level, value in ((0.0, nominal), (0.1, noisy), (0.2, noisy))
    ]


def test_noise_claim_needs_a_gap_beyond_the_seed_spread():
    base = _noise_rows("shac", 1000.0, 400.0, 0.0)
    # ASAM 100 above SHAC at every noisy level: far beyond the episode spread (SE of the difference 2)
    held = report.judge(base + _noise_rows("shac-asam", 1000.0, 500.0, 0.0), {})[0]
    assert held.held is True and "standard error, 2)" in held.evidence
    # the same means with seeds 150 apart: SE 150 / sqrt(3 - 1) per algorithm, 150 for the difference
    seedy = _noise_rows("shac", 1000.0, 400.0, 150.0) + _noise_rows("shac-asam", 1000.0, 500.0, 150.0)
    spread = report.judge(seedy, {})
    assert spread[0].held is False and "standard error, 150)" in spread[0].evidence


def test_a_best_policy_is_judged_with_its_runs_learning_curve(tmp_path):
    for step, ret in ((100, 1.0), (200, 3.0)):
        checkpoint.append_metrics(tmp_path, {"env_steps": step, "wall_s": step / 10, "eval_return": ret})
    (tmp_path / checkpoint.BEST_DIR).mkdir()
    assert checkpoint.run_root(tmp_path / checkpoint.BEST_DIR) == tmp_path
    assert checkpoint.run_root(tmp_path) == tmp_path
    curves = report.learning_curves([("shac", tmp_path / checkpoint.BEST_DIR)])
    np.testing.assert_array_equal(curves["shac"]["eval_return"], [1.0, 3.0])


def test_robustness_cli_writes_csv_and_plots(run_dir, tmp_path):
    args = ["robustness", str(run_dir), str(run_dir), "--out", str(tmp_path), "--episodes", "3", "--seed", "5"]
    args += ["--noise-levels", "0,0.3", "--friction", "0.5,1", "--mass", "1,1.5", "--grid-noise", "0,0.3"]
    result = CliRunner().invoke(_app(), args + ["--grid-friction", "0.5,1"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "robustness.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 + 2 + 2 + 4
    for name in ("action_noise", "friction", "mass", "grid"):
        assert (tmp_path / f"robustness_{name}.png").stat().st_size > 1000
    claims = (tmp_path / "claims.md").read_text().splitlines()[2:]  # SHAC runs only: nothing to compare
    assert len(claims) == 3 and all("| cartpole |" in c and "not measured" in c for c in claims)
    assert claims[0] in result.output
    bad = CliRunner().invoke(_app(), ["robustness", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "no such run directory" in bad.output
    bad = CliRunner().invoke(_app(), ["robustness", str(run_dir), "--out", str(tmp_path), "--mass", "0,1"])
    assert bad.exit_code == 2 and "mass_scale" in bad.output


def _quadratic_loss(a: jnp.ndarray, theta: jnp.ndarray) -> landscape.ActorLoss:
    def f(p):
        return 0.5 * p["w"] @ a @ p["w"]

    def hvp(p, v):
        return jax.jvp(jax.grad(f), (p,), (v,))[1]

    return landscape.ActorLoss({"w": theta}, f, jax.grad(f), hvp, {})


def test_power_iteration_and_sam_sharpness_on_a_quadratic():
    a = jnp.diag(jnp.array([5.0, 1.0, 0.5]))
    loss = _quadratic_loss(a, jnp.array([1.0, 1.0, 1.0]))
    eig = landscape.top_hessian_eigenvalue(loss, 40)
    assert eig["eigenvalue"] == pytest.approx(5.0, rel=1e-4)
    saddle = landscape.top_hessian_eigenvalue(_quadratic_loss(jnp.diag(jnp.array([5.0, -8.0, 1.0])), jnp.ones(3)), 60)
    assert saddle["dominant"] == pytest.approx(-8.0, rel=1e-4)  # the largest magnitude is negative
    assert saddle["eigenvalue"] == pytest.approx(5.0, rel=1e-3)  # the shifted iteration finds the top one
    rho = 0.1
    res = landscape.sam_sharpness(loss, rho, steps=10)
    # the ascent must do at least as well as dense sampling of the sphere (a convex loss peaks on it),
    # and cannot beat the bound |g| rho + lambda_max rho^2 / 2
    dirs = np.random.default_rng(0).normal(size=(20000, 3))
    dirs = rho * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    theta, a_np = np.ones(3), np.asarray(a)
    sampled = max(0.5 * (theta + d) @ a_np @ (theta + d) for d in dirs) - 0.5 * theta @ a_np @ theta
    bound = np.linalg.norm(a_np @ theta) * rho + 0.5 * 5.0 * rho**2
    assert res["first_step_increase"] <= res["sharpness"] + 1e-6
    assert sampled - 1e-5 <= res["sharpness"] <= bound + 1e-5


def test_filter_normalized_direction_matches_column_norms():
    params = {"kernel": jnp.arange(1.0, 7.0).reshape(2, 3), "bias": jnp.ones(3)}
    d = landscape.filter_normalized_direction(params, jax.random.PRNGKey(0))
    np.testing.assert_allclose(
        jnp.linalg.norm(d["kernel"], axis=0), jnp.linalg.norm(params["kernel"], axis=0), rtol=1e-5
    )
    assert float(jnp.abs(d["bias"]).sum()) == 0.0


def test_sharpness_on_the_shac_loss_and_cli(run_dir, tmp_path):
    spec = landscape.SharpnessSpec(ascent_steps=1, power_iterations=3, alphas_1d=3, alphas_2d=3, num_envs=4)
    res = landscape.measure(run_dir, spec)
    assert np.isfinite([res["loss"], res["sam_sharpness"], res["asam_sharpness"], res["hessian_top_eigenvalue"]]).all()
    assert res["sam_sharpness"] >= 0.0 and res["asam_sharpness"] >= 0.0
    assert res["loss_1d"][1] == pytest.approx(res["loss"], rel=1e-5, abs=1e-6)  # alpha = 0 is the run's actor
    assert np.array(res["loss_2d"]).shape == (3, 3)
    assert landscape.measure(run_dir, spec)["hessian_power_history"] == res["hessian_power_history"]
    args = ["sharpness", str(run_dir), "--out", str(tmp_path), "--ascent-steps", "1", "--power-iterations", "2"]
    result = CliRunner().invoke(_app(), args + ["--alphas-1d", "3", "--alphas-2d", "3", "--num-envs", "4", "--json"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "sharpness.json").read_text())
    assert saved["algo"] == "shac" and (tmp_path / "landscape_2d.png").is_file()
    meta = checkpoint.load_meta(run_dir)
    assert meta["algo"] == "shac"


def test_ray_is_the_default_executor_and_gives_the_in_process_numbers(run_dir, tmp_path):
    """A local Ray instance (one CPU) runs one real robustness job; it is shut down afterwards."""
    import ray

    spec = dataclasses.replace(SPEC, noise_levels=(0.0, 0.2), friction_scales=(1.0,), mass_scales=(1.0,),
                               grid_noise=(0.0,), grid_friction=(1.0,), episodes=2)  # fmt: skip
    spec_json = json.dumps(dataclasses.asdict(spec))
    job = jobs.make_job("ray-robustness", "robustness", tmp_path / "job", run_dir=str(run_dir), spec=spec_json)
    (outcome,) = jobs.run_jobs([job], max_parallel=1, log=lambda line: None)
    assert outcome.status == "done" and outcome.attempts == 1 and job.is_done()
    local = robustness.evaluate_run(run_dir, spec)
    for remote_point, local_point in zip(outcome.result["points"], local["points"]):
        assert remote_point["returns"] == pytest.approx(local_point["returns"], rel=1e-5)
    assert not ray.is_initialized()
