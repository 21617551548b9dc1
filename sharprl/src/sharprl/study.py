"""The robustness study as jobs: train (SHAC, SHAC-ASAM, PPO, an ASAM rho sweep), sweep, measure.

Job kinds registered here (see :mod:`sharprl.jobs`): ``train`` (one algorithm, env and seed into its
run directory, resuming its own checkpoint after an interruption), ``robustness`` (one run's returns
under a :class:`~sharprl.robustness.SweepSpec`) and ``sharpness`` (one SHAC-family run's
:func:`~sharprl.landscape.measure`). :func:`plan_training` and :func:`plan_evaluation` turn a
:class:`~sharprl.budgets.Budget` into these jobs in two stages (training, then evaluation);
:func:`run_study` runs them and hands the finished results to :mod:`sharprl.report`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sharprl import checkpoint, jobs, landscape, robustness
from sharprl.budgets import Budget
from sharprl.errors import SharprlError
from sharprl.landscape import SharpnessSpec
from sharprl.robustness import SweepSpec

SHAC_FAMILY = ("shac", "shac-sam", "shac-asam")
TRAIN_ALGOS = SHAC_FAMILY + ("ppo", "apg")
RHO_ALGOS = ("shac", "shac-asam")  # the rho trade-off's runs: SHAC (rho = 0) and SHAC-ASAM at each rho


# ---- job kinds ----------------------------------------------------------------------------------
def train_job(
    out_dir: str,
    algo: str,
    env: str,
    seed: int,
    env_steps: int,
    rho: float | None = None,
    overrides: str = "{}",
    episode_length: int | None = None,
) -> dict[str, Any]:
    """Train one run into ``out_dir`` (resuming its checkpoint if one exists); returns its summary."""
    from sharprl.envs import make_task

    if algo not in TRAIN_ALGOS:
        raise SharprlError(f"unknown algorithm {algo!r}: expected one of {', '.join(TRAIN_ALGOS)}")
    extra = json.loads(overrides)
    resume = checkpoint.has_checkpoint(out_dir)
    if algo in SHAC_FAMILY:
        from sharprl import shac
        from sharprl.shac_config import preset

        cfg = preset(env, algo, rho=rho, seed=seed, env_steps=env_steps, **_tuples(extra))
        task = make_task(env, episode_length=episode_length or cfg.episode_length)
        shac.train(cfg, task, run_dir=out_dir, resume=resume)
    else:
        from sharprl import baselines

        task = make_task(env, episode_length=episode_length or 1000)
        config_cls = baselines.PPOConfig if algo == "ppo" else baselines.APGConfig
        config = config_cls(**_tuples(extra))
        fn = baselines.train_ppo if algo == "ppo" else baselines.train_apg
        fn(task, out_dir, env_steps, seed=seed, config=config, resume=resume)
    meta = checkpoint.load_meta(out_dir)
    rows = checkpoint.read_metrics(out_dir)
    evals = [r for r in rows if r.get("eval_return") not in ("", None)]
    return {
        "run_dir": out_dir,
        "algo": algo,
        "env": env,
        "seed": seed,
        "rho": rho,
        "env_steps": int(meta["env_steps"]),
        "wall_s": float(meta.get("wall_s", 0.0)),
        "final_eval_return": float(evals[-1]["eval_return"]) if evals else math.nan,
    }


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def sweep_spec(data: dict[str, Any]) -> SweepSpec:
    return SweepSpec(**_tuples(data))


def _run_path(out_dir: str, run_dir: str) -> str:
    """An evaluation job's run directory; relative paths are relative to the job's own directory."""
    return os.path.normpath(Path(out_dir) / run_dir)


def robustness_job(out_dir: str, run_dir: str, spec: str) -> dict[str, Any]:
    return robustness.evaluate_run(_run_path(out_dir, run_dir), sweep_spec(json.loads(spec)))


def sharpness_job(out_dir: str, run_dir: str, spec: str) -> dict[str, Any]:
    return landscape.measure(_run_path(out_dir, run_dir), SharpnessSpec(**json.loads(spec)))


jobs.register_kind("train", train_job)
jobs.register_kind("robustness", robustness_job)
jobs.register_kind("sharpness", sharpness_job)


@dataclasses.dataclass(frozen=True)
class RunRef:
    """A planned training run."""

    env: str  # task
    algo: str  # shac | shac-asam | ppo
    seed: int  # training seed
    rho: float | None  # ASAM rho (None otherwise)
    main: bool  # part of the main SHAC / SHAC-ASAM / PPO comparison (else: rho sweep only)
    job: jobs.Job  # the training job


def label(algo: str, rho: float | None) -> str:
    return algo if rho is None else f"{algo} rho={rho:g}"


def plan_training(budget: Budget, out: Path) -> list[RunRef]:
    """Training jobs of a study: SHAC, SHAC-ASAM (main rho), PPO, and ASAM at the sweep's rhos."""
    refs = []
    shac_over = json.dumps(dict(budget.shac_overrides))
    for env in budget.envs:
        for seed in budget.seeds:
            entries = [("shac", None, True), ("shac-asam", budget.rho, True), ("ppo", None, True)]
            entries += [("shac-asam", rho, False) for rho in budget.rho_sweep if rho != budget.rho]
            for algo, rho, main in entries:
                name = f"{env}/{algo}{'' if rho is None else f'-rho{rho:g}'}/seed{seed}"
                steps = budget.ppo_env_steps if algo == "ppo" else budget.shac_env_steps
                over = json.dumps(dict(budget.ppo_overrides)) if algo == "ppo" else shac_over
                job = jobs.make_job(
                    f"train {name}",
                    "train",
                    out / "runs" / name,
                    algo=algo,
                    env=env,
                    seed=seed,
                    env_steps=steps,
                    rho=rho,
                    overrides=over,
                    episode_length=budget.episode_length,
                )
                refs.append(RunRef(env, algo, seed, rho, main, job))
    return refs


def rho_spec(budget: Budget) -> SweepSpec:
    """The two points of the rho trade-off: nominal and under the sweep's action noise."""
    noise = budget.rho_sweep_noise
    return dataclasses.replace(
        budget.sweep,
        noise_levels=(0.0, noise),
        friction_scales=(1.0,),
        mass_scales=(1.0,),
        grid_noise=(0.0, noise),
        grid_friction=(1.0,),
    )


def plan_evaluation(
    budget: Budget, refs: Sequence[RunRef], out: Path, include: Sequence[str] = ("robustness", "rho", "sharpness")
) -> dict[str, list[tuple[RunRef, jobs.Job]]]:
    """Evaluation jobs of the runs: robustness (main), rho trade-off, sharpness (SHAC family).

    Each job comes ``after`` its run's training job, so a run is evaluated as soon as it has trained
    (while the other runs still train), and not at all when its training failed.

    A main SHAC / SHAC-ASAM run needs no separate rho job when its robustness sweep already holds the
    trade-off's noise level: the report reads both points from that sweep.
    """
    specs = {
        "robustness": json.dumps(dataclasses.asdict(budget.sweep)),
        "rho": json.dumps(dataclasses.asdict(rho_spec(budget))),
        "sharpness": json.dumps(dataclasses.asdict(budget.sharpness)),
    }
    stages: dict[str, list[tuple[RunRef, jobs.Job]]] = {"robustness": [], "rho": [], "sharpness": []}

    def add(stage: str, kind: str, ref: RunRef) -> None:
        rel = Path(ref.job.out_dir).relative_to(out / "runs")
        job_dir = out / "eval" / stage / rel
        # the run as a path from the job's directory: the job's parameters stay the same when the study moves
        run_dir = os.path.relpath(ref.job.out_dir, job_dir)
        job = jobs.make_job(f"{stage} {rel}", kind, job_dir, run_dir=run_dir, spec=specs[stage])
        stages[stage].append((ref, dataclasses.replace(job, after=(ref.job.name,))))

    noise_in_sweep = _rho_in_sweep(budget, include)
    for ref in refs:
        if ref.main:
            add("robustness", "robustness", ref)
        if ref.algo in RHO_ALGOS and not (ref.main and noise_in_sweep):
            add("rho", "robustness", ref)
        if ref.main and ref.algo in SHAC_FAMILY:
            add("sharpness", "sharpness", ref)
    return stages


def _rho_in_sweep(budget: Budget, include: Sequence[str]) -> bool:
    """True when the main runs' trade-off points come from their robustness sweep (run or reused)."""
    return "rho" in include and budget.rho_sweep_noise in budget.sweep.noise_levels


@dataclasses.dataclass
class StudyResults:
    """Finished results of a study, handed to the report."""

    budget: Budget  # what was run
    out: Path  # study directory
    runs: list[tuple[RunRef, dict[str, Any]]]  # finished training runs and their summaries
    robustness: list[tuple[RunRef, dict[str, Any]]]  # per-run robustness results
    rho: list[tuple[RunRef, dict[str, Any]]]  # per-run nominal / noisy returns for the rho plot
    sharpness: list[tuple[RunRef, dict[str, Any]]]  # per-run sharpness measures
    failed: list[jobs.JobOutcome]  # jobs that failed after their retry (or, with run=False, not finished)
    skipped: int  # jobs already finished before this call
    wall_s: float = 0.0  # wall-clock of this call (planning, every job it ran, collecting the results)


def run_study(
    budget: Budget,
    out: str | Path,
    executor: str = "ray",
    ray_address: str | None = None,
    max_parallel: int | None = None,
    log=print,
    include=("robustness", "rho", "sharpness"),
    algos: Sequence[str] = ("shac", "shac-asam", "ppo"),
    run: bool = True,
) -> StudyResults:
    """Run (or resume) every job of the study (training runs of ``algos`` only); returns what finished.

    ``run=False`` runs nothing: the results are those of the jobs finished so far (a report of a study
    still running elsewhere, or interrupted).
    """
    start_s = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def execute(job_list):
        return jobs.run_jobs(job_list, executor, ray_address, max_parallel, log) if run else jobs.collect(job_list)

    refs = [r for r in plan_training(budget, out) if r.algo in algos]
    stages = plan_evaluation(budget, refs, out, include)  # each evaluation starts once its run has trained
    eval_jobs = [job for key in include for _, job in stages[key]]
    rho_in_sweep = _rho_in_sweep(budget, include)
    if rho_in_sweep and "robustness" not in include:  # the main runs' sweeps: reused when finished, else run
        eval_jobs += [job for ref, job in stages["robustness"] if ref.algo in RHO_ALGOS]
    outcomes = execute([r.job for r in refs] + eval_jobs)
    by_name = {o.job.name: o for o in outcomes}
    done = [(r, by_name[r.job.name].result) for r in refs if by_name[r.job.name].result is not None]
    eval_out = {j.name: by_name[j.name] for j in eval_jobs}
    finished = {  # a stage's jobs that ran (or had finished before) with a result
        key: [
            (r, eval_out[j.name].result)
            for r, j in stages[key]
            if j.name in eval_out and eval_out[j.name].result is not None
        ]
        for key in stages
    }
    if rho_in_sweep:  # the main runs' trade-off points come from their robustness sweep
        finished["rho"] += [(r, x) for r, x in finished["robustness"] if r.algo in RHO_ALGOS]
    if "robustness" not in include:
        finished["robustness"] = []
    return StudyResults(
        budget,
        out,
        done,
        finished["robustness"],
        finished["rho"],
        finished["sharpness"],
        jobs.failures(outcomes),
        sum(o.status == "skipped" for o in outcomes),
        time.monotonic() - start_s,
    )


def rho_points(results: Sequence[tuple[RunRef, dict[str, Any]]], noise: float) -> dict[str, tuple[float, float]]:
    """label -> (nominal return, return under ``noise``), averaged over seeds; SHAC is rho = 0."""
    acc: dict[str, list[tuple[float, float]]] = {}
    for ref, res in results:
        table = {
            p["action_noise"]: sum(p["returns"]) / len(p["returns"])
            for p in res["points"]
            if p["friction_scale"] == 1.0 and p["mass_scale"] == 1.0
        }
        key = "rho=0 (shac)" if ref.algo == "shac" else f"rho={ref.rho:g}"
        acc.setdefault(key, []).append((table[0.0], table[noise]))
    return {k: (sum(a for a, _ in v) / len(v), sum(b for _, b in v) / len(v)) for k, v in sorted(acc.items())}
