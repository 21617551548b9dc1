"""The robustness study as jobs: train (SHAC, SHAC-ASAM, PPO, an ASAM rho sweep), sweep, measure.

Job kinds registered here (see :mod:`sharprl.jobs`): ``train`` (one algorithm, env and seed into its
run directory, resuming its own checkpoint after an interruption), ``robustness`` (one run's returns
under a :class:`~sharprl.robustness.SweepSpec`) and ``sharpness`` (one SHAC-family run's
:func:`~sharprl.landscape.measure`). :func:`plan` turns a :class:`Budget` into these jobs in two
stages (training, then evaluation); :func:`run_study` runs them and hands the finished results to
:mod:`sharprl.report`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sharprl import checkpoint, jobs, landscape, robustness
from sharprl.errors import SharprlError
from sharprl.landscape import SharpnessSpec
from sharprl.robustness import SweepSpec

SHAC_FAMILY = ("shac", "shac-sam", "shac-asam")
TRAIN_ALGOS = SHAC_FAMILY + ("ppo", "apg")


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


def robustness_job(out_dir: str, run_dir: str, spec: str) -> dict[str, Any]:
    del out_dir
    return robustness.evaluate_run(run_dir, sweep_spec(json.loads(spec)))


def sharpness_job(out_dir: str, run_dir: str, spec: str) -> dict[str, Any]:
    del out_dir
    return landscape.measure(run_dir, SharpnessSpec(**json.loads(spec)))


jobs.register_kind("train", train_job)
jobs.register_kind("robustness", robustness_job)
jobs.register_kind("sharpness", sharpness_job)


# ---- budgets ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Budget:
    """Size of a study."""

    name: str  # tiny | quick | full
    envs: tuple[str, ...]  # tasks studied
    seeds: tuple[int, ...]  # training seeds of every algorithm
    shac_env_steps: int  # env steps per SHAC / SHAC-ASAM run
    ppo_env_steps: int  # env steps per PPO run
    rho: float  # SHAC-ASAM's rho in the main comparison
    rho_sweep: tuple[float, ...]  # further ASAM rhos for the trade-off plot (SHAC is rho = 0)
    rho_sweep_noise: float  # action noise of the trade-off plot's "under noise" axis
    sweep: SweepSpec  # robustness sweep of every run
    sharpness: SharpnessSpec  # sharpness measures of the SHAC and SHAC-ASAM runs
    shac_overrides: tuple[tuple[str, Any], ...] = ()  # SHACConfig fields changed from the preset
    ppo_overrides: tuple[tuple[str, Any], ...] = ()  # PPOConfig fields changed from the default
    episode_length: int | None = None  # None: each algorithm's default (1000 for the Brax tasks)


_TINY_SWEEP = SweepSpec(
    noise_levels=(0.0, 0.25, 0.5),
    friction_scales=(0.5, 1.0, 2.0),
    mass_scales=(0.5, 1.0, 1.5),
    grid_noise=(0.0, 0.5),
    grid_friction=(0.5, 2.0),
    episodes=2,
)
BUDGETS: dict[str, Budget] = {
    # for tests and smoke runs: the cart-pole, a handful of updates
    "tiny": Budget(
        "tiny",
        ("cartpole",),
        (0,),
        16 * 8 * 4,
        2 * 8 * 5 * 4,
        0.5,
        (0.1,),
        0.25,
        _TINY_SWEEP,
        SharpnessSpec(ascent_steps=1, power_iterations=3, alphas_1d=5, alphas_2d=3, num_envs=4),
        shac_overrides=(("eval_every_epochs", 2), ("checkpoint_every_epochs", 2), ("eval_episodes", 2)),
        ppo_overrides=(
            ("num_envs", 8),
            ("batch_size", 8),
            ("num_minibatches", 2),
            ("num_updates_per_batch", 1),
            ("policy_hidden_sizes", (16, 16)),
            ("value_hidden_sizes", (16, 16)),
            ("eval_every_env_steps", 160),
            ("eval_episodes", 2),
        ),
        episode_length=50,
    ),
    # this 2-core machine in ~40 min: Ant, one seed, 500 SHAC epochs (1.02M env steps: a quarter of
    # the 4.1M steps PPO needs for ~4,900, so claim 3 is judged at the sample-efficiency
    # point) and 2.05M PPO steps (half of that anchor)
    "quick": Budget(
        "quick",
        ("ant",),
        (0,),
        500 * 64 * 32,
        2_048_000,
        0.5,
        (),
        0.2,
        SweepSpec(episodes=8),
        SharpnessSpec(power_iterations=8, alphas_1d=11, alphas_2d=7, num_envs=16),
        shac_overrides=(("eval_every_epochs", 20), ("eval_episodes", 8)),
        ppo_overrides=(("eval_every_env_steps", 150_000), ("eval_episodes", 8)),
    ),
    # the paper's setting: SHAC's reference budget (2,000 epochs of 64 envs x 32 steps), 3 seeds
    "full": Budget(
        "full",
        ("ant", "humanoid"),
        (0, 1, 2),
        2000 * 64 * 32,
        8_192_000,
        0.5,
        (0.1, 0.2, 1.0),
        0.2,
        SweepSpec(episodes=16),
        SharpnessSpec(),
    ),
}


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
    """Evaluation jobs of the finished runs: robustness (main), rho trade-off, sharpness (SHAC family).

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
        job = jobs.make_job(
            f"{stage} {rel}", kind, out / "eval" / stage / rel, run_dir=ref.job.out_dir, spec=specs[stage]
        )
        stages[stage].append((ref, job))

    noise_in_sweep = _rho_in_sweep(budget, include)
    for ref in refs:
        if ref.main:
            add("robustness", "robustness", ref)
        if ref.algo in ("shac", "shac-asam") and not (ref.main and noise_in_sweep):
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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def execute(job_list):
        return jobs.run_jobs(job_list, executor, ray_address, max_parallel, log) if run else jobs.collect(job_list)

    refs = [r for r in plan_training(budget, out) if r.algo in algos]
    train_out = execute([r.job for r in refs])
    done = [(r, o.result) for r, o in zip(refs, train_out) if o.result is not None]
    stages = plan_evaluation(budget, [r for r, _ in done], out, include)
    eval_jobs = [job for key in include for _, job in stages[key]]
    rho_in_sweep = _rho_in_sweep(budget, include)
    if rho_in_sweep and "robustness" not in include:  # the main runs' sweeps: reused when finished, else run
        eval_jobs += [job for ref, job in stages["robustness"] if ref.algo in ("shac", "shac-asam")]
    eval_out = {o.job.name: o for o in execute(eval_jobs)}
    finished = {  # a stage's jobs that ran (or had finished before) with a result
        key: [
            (r, eval_out[j.name].result)
            for r, j in stages[key]
            if j.name in eval_out and eval_out[j.name].result is not None
        ]
        for key in stages
    }
    if rho_in_sweep:  # the main runs' trade-off points come from their robustness sweep
        finished["rho"] += [(r, x) for r, x in finished["robustness"] if r.algo in ("shac", "shac-asam")]
    if "robustness" not in include:
        finished["robustness"] = []
    outcomes = list(train_out) + list(eval_out.values())
    return StudyResults(
        budget,
        out,
        done,
        finished["robustness"],
        finished["rho"],
        finished["sharpness"],
        jobs.failures(outcomes),
        sum(o.status == "skipped" for o in outcomes),
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
