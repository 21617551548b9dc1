"""Study jobs: retry once, resume without rerunning, Ray by default; the tiny reproduce and rho sweep."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from sharprl import budgets, jobs, study
from sharprl.errors import SharprlError
from sharprl.study_cli import register


def _counting_job(out_dir: str, fail_times: int = 0) -> dict:
    """Counts its calls in out_dir/calls; fails the first ``fail_times`` calls."""
    calls = Path(out_dir) / "calls"
    n = int(calls.read_text()) + 1 if calls.is_file() else 1
    calls.write_text(str(n))
    if n <= fail_times:
        raise RuntimeError(f"planned failure {n}")
    return {"calls": n}


jobs.register_kind("test-count", _counting_job)


def _calls(job: jobs.Job) -> int:
    return int((Path(job.out_dir) / "calls").read_text())


def test_failed_job_is_reported_and_retried_once_then_finished_jobs_are_skipped(tmp_path):
    ok = jobs.make_job("ok", "test-count", tmp_path / "ok")
    flaky = jobs.make_job("flaky", "test-count", tmp_path / "flaky", fail_times=1)
    broken = jobs.make_job("broken", "test-count", tmp_path / "broken", fail_times=5)
    log: list[str] = []
    out = jobs.run_jobs([ok, flaky, broken], executor="local", log=log.append)
    assert [o.status for o in out] == ["done", "done", "failed"]
    assert [o.attempts for o in out] == [1, 2, 2]
    assert out[1].errors == ("RuntimeError: planned failure 1",)
    assert len(out[2].errors) == 2 and [o.job.name for o in jobs.failures(out)] == ["broken"]
    assert any(line.startswith("[fail] flaky attempt 1") for line in log)
    assert not broken.result_path.exists()
    again = jobs.run_jobs([ok, flaky, broken], executor="local", log=log.append)
    assert [o.status for o in again] == ["skipped", "skipped", "failed"]
    assert (_calls(ok), _calls(flaky), _calls(broken)) == (1, 2, 4)  # finished jobs never rerun
    assert again[0].result["calls"] == 1


def test_a_job_runs_after_its_prerequisites_and_not_when_one_failed(tmp_path):
    first = jobs.make_job("first", "test-count", tmp_path / "first")
    broken = jobs.make_job("broken", "test-count", tmp_path / "broken", fail_times=5)
    after_first = dataclasses.replace(jobs.make_job("x", "test-count", tmp_path / "x"), after=("first",))
    after_both = dataclasses.replace(jobs.make_job("y", "test-count", tmp_path / "y"), after=("first", "broken"))
    log: list[str] = []
    out = jobs.run_jobs([first, broken, after_first, after_both], executor="local", log=log.append)
    assert [o.status for o in out] == ["done", "failed", "done", "failed"]
    assert out[3].attempts == 0 and out[3].errors == ("not run: it needs 'broken', which failed",)
    assert not Path(after_both.out_dir).exists()  # never started
    again = jobs.run_jobs([first, after_first], executor="local", log=log.append)  # finished prerequisites count
    assert [o.status for o in again] == ["skipped", "skipped"]
    with pytest.raises(SharprlError, match="not earlier jobs"):
        jobs.run_jobs([after_first, first], executor="local")


def test_ray_does_not_start_a_job_whose_prerequisite_failed(tmp_path):
    missing = jobs.make_job("missing run", "robustness", tmp_path / "a", run_dir="nowhere", spec="{}")
    after = dataclasses.replace(jobs.make_job("after", "robustness", tmp_path / "b", run_dir="x", spec="{}"),
                                after=("missing run",))  # fmt: skip
    out = jobs.run_jobs([missing, after], executor="ray", max_parallel=2, log=lambda line: None)
    assert [(o.status, o.attempts) for o in out] == [("failed", 2), ("failed", 0)]
    assert not Path(after.out_dir).exists()


def test_bad_executor_and_duplicate_names(tmp_path):
    job = jobs.make_job("a", "test-count", tmp_path / "a")
    with pytest.raises(Exception, match="unknown executor"):
        jobs.run_jobs([job], executor="dask")
    with pytest.raises(Exception, match="duplicate job names"):
        jobs.run_jobs([job, job], executor="local")


def test_a_directory_is_reused_only_by_the_same_work(tmp_path):
    job = jobs.make_job("a", "test-count", tmp_path / "a", fail_times=0)
    assert jobs.run_jobs([job], executor="local", log=print)[0].status == "done"
    assert jobs.run_jobs([job], executor="local", log=print)[0].status == "skipped"
    other = jobs.make_job("a", "test-count", tmp_path / "a", fail_times=1)
    with pytest.raises(SharprlError, match=r"a: job 'a' ran there with other settings \(fail_times 0 there, 1 now\)"):
        jobs.run_jobs([other], executor="local", log=print)
    with pytest.raises(SharprlError, match="other settings"):
        jobs.collect([other])
    job.work_path.unlink()  # a directory from before job.json: taken as it is
    assert jobs.run_jobs([other], executor="local", log=print)[0].status == "skipped"
    assert _calls(job) == 1


def test_rho_sweep_plans_the_recorded_study_jobs_for_its_rhos(tmp_path):
    tiny = budgets.BUDGETS["tiny"]
    budgets.record_budget(tmp_path, "tiny")
    sweep = budgets.rho_sweep_budget(tmp_path, (0.1, 0.5), "cartpole", env_steps=512, noise=0.25)
    assert (sweep.rho, sweep.rho_sweep, sweep.sweep) == (0.5, (0.1,), tiny.sweep)  # the study's main rho stays main
    refs = study.plan_training(tiny, tmp_path)
    sweep_refs = [r for r in study.plan_training(sweep, tmp_path) if r.algo in study.RHO_ALGOS]
    assert {r.job for r in sweep_refs} <= {r.job for r in refs} and len(sweep_refs) == 3
    planned = study.plan_evaluation(tiny, refs, tmp_path)
    sweep_planned = study.plan_evaluation(sweep, sweep_refs, tmp_path, include=("rho",))
    assert study._rho_in_sweep(sweep, ("rho",))  # the main runs' points come from their robustness sweeps
    for stage in ("robustness", "rho"):
        assert {j for _, j in sweep_planned[stage]} <= {j for _, j in planned[stage]}, stage
    assert budgets.rho_sweep_budget(tmp_path / "new", (0.1,)).shac_env_steps == 512_000  # no study: quick, 512k
    (tmp_path / budgets.STUDY_FILE).write_text("{}")
    with pytest.raises(SharprlError, match="study.json: unreadable study record"):
        budgets.rho_sweep_budget(tmp_path, (0.1,))


def test_rho_sweep_refuses_a_study_run_trained_with_other_settings(tmp_path):
    budgets.record_budget(tmp_path, "tiny")
    shac = study.plan_training(budgets.BUDGETS["tiny"], tmp_path)[0].job
    shac.work_path.parent.mkdir(parents=True)
    shac.work_path.write_text(json.dumps(shac.work()))
    app = typer.Typer()
    register(app)
    args = ["rho-sweep", "--env", "cartpole", "--rhos", "0.5", "--env-steps", "1024", "--executor", "local"]
    result = CliRunner().invoke(app, args + ["--out", str(tmp_path)])
    assert result.exit_code == 2 and "[start]" not in result.output
    assert "ran there with other settings (env_steps 512 there, 1024 now)" in result.output


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["reproduce", "--budget", "tiny", "--out", str(out), "--executor", "local"])
    return app, out, result


@pytest.mark.slow
def test_reproduce_tiny_writes_the_report_with_three_judged_claims(tiny_study):
    _, out, result = tiny_study
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    claims = (out / "claims.md").read_text().splitlines()[2:]
    assert len(claims) == 3 and all(("held" in c) for c in claims) and "not measured" not in "".join(claims)
    for name in ("robustness_action_noise", "robustness_friction", "robustness_grid", "rho_sweep", "landscape_1d",
                 "learning_env_steps"):  # fmt: skip
        assert (out / "cartpole" / f"{name}.png").is_file(), name
        assert f"cartpole/{name}.png" in report
    assert "rho=0 (shac)" in report and "rho=0.1" in report


@pytest.mark.slow
def test_reproduce_again_resumes_and_reruns_nothing(tiny_study):
    app, out, _ = tiny_study
    before = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    result = CliRunner().invoke(app, ["reproduce", "--budget", "tiny", "--out", str(out), "--executor", "local"])
    assert result.exit_code == 0, result.output
    assert "[start]" not in result.output and result.output.count("[skip]") == len(before)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == before


@pytest.mark.slow
def test_rho_sweep_reuses_the_study_runs(tiny_study):
    app, out, _ = tiny_study
    args = ["rho-sweep", "--env", "cartpole", "--rhos", "0.5,0.1", "--env-steps", "512", "--noise", "0.25"]
    result = CliRunner().invoke(app, args + ["--out", str(out), "--executor", "local"])
    assert result.exit_code == 0, result.output
    assert "[start]" not in result.output
    rows = (out / "cartpole" / "rho_sweep.csv").read_text().splitlines()
    assert rows[0] == "rho,nominal_return,noisy_return,action_noise" and len(rows) == 4
