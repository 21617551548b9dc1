"""sharprl command line (typer). Every user error prints one line and exits with code 2."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sharprl.errors import SharprlError, user_errors
from sharprl.study_cli import register as register_study_commands

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sharpness-aware first-order policy learning.")

TRAIN_ALGOS = ("shac", "shac-sam", "shac-asam", "apg", "ppo")


@app.callback()
def _keep_stdout_for_results() -> None:
    """Import mujoco.mjx (under every Brax import) with its stdout sent to stderr.

    Without the optional ``warp`` package it prints "Failed to import warp" on stdout, which would
    break the JSON that ``--json`` promises on stdout.
    """
    with contextlib.redirect_stdout(sys.stderr):
        import mujoco.mjx  # noqa: F401


def enable_compilation_cache() -> None:
    """Persist XLA compilations across runs (SHARPRL_JAX_CACHE=dir, or 'off'); Brax graphs compile slowly."""
    import jax

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # XLA's per-hit cache-version warnings
    where = os.environ.get("SHARPRL_JAX_CACHE", str(Path.home() / ".cache" / "sharprl" / "jax"))
    if where.lower() == "off":
        return
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def _fmt(value: Any) -> str:
    return f"{value:,.1f}" if isinstance(value, float) and math.isfinite(value) else "-"


# Perturbation flags shared by train (the task trained on) and evaluate (relative to the nominal task).
ActionNoise = Annotated[float, typer.Option(help="Gaussian action noise std, fraction of the action range")]
Friction = Annotated[float, typer.Option(help="contact friction scale")]
Mass = Annotated[float, typer.Option(help="body mass scale")]
Gravity = Annotated[float, typer.Option(help="gravity scale")]


@app.command()
@user_errors
def train(
    env: Annotated[str, typer.Option(help="ant, humanoid, hopper, halfcheetah, cartpole (tiny)")] = "ant",
    algo: Annotated[str, typer.Option(help="shac, shac-sam, shac-asam, apg or ppo")] = "shac",
    rho: Annotated[float | None, typer.Option(help="SAM/ASAM ascent radius (default: the preset's)")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    env_steps: Annotated[int | None, typer.Option("--env-steps", help="training env steps (default: preset)")] = None,
    out: Annotated[Path, typer.Option(help="run directory: metrics.csv and checkpoint.msgpack")] = Path("runs/run"),
    resume: Annotated[bool, typer.Option("--resume", help="continue OUT from its checkpoint")] = False,
    backend: Annotated[str | None, typer.Option(help="Brax backend (default: best by gradcheck)")] = None,
    episode_length: Annotated[int, typer.Option(help="episode time limit in steps")] = 1000,
    action_noise: ActionNoise = 0.0,
    friction: Friction = 1.0,
    mass: Mass = 1.0,
    gravity: Gravity = 1.0,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar (one line per evaluation instead)")] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="config field override FIELD=VALUE, repeatable")
    ] = None,
) -> None:
    """Train a policy; metrics go to OUT/metrics.csv, checkpoints to OUT/checkpoint.msgpack.

    The perturbation flags change the task trained on (and its training-time evaluations); `evaluate`
    measures against the nominal task unless given its own."""
    from sharprl.envs import Perturbation, make_task
    from sharprl.overrides import parse_overrides

    if algo not in TRAIN_ALGOS:
        raise SharprlError(f"unknown --algo {algo!r}: expected one of {', '.join(TRAIN_ALGOS)}")
    if algo.startswith("shac"):
        from sharprl import shac
        from sharprl.shac_config import FLAG_FIELDS, SHACConfig, preset

        overrides = parse_overrides(set_ or [], SHACConfig, FLAG_FIELDS)
    else:
        from sharprl import baselines

        if env_steps is None:
            raise SharprlError("--env-steps is required for apg and ppo")
        config_cls = baselines.config_class(algo)
        overrides = parse_overrides(set_ or [], config_cls, {})
    pert = Perturbation(action_noise, friction, mass, gravity)
    enable_compilation_cache()
    task = make_task(env, backend, pert, episode_length=episode_length)
    if algo.startswith("shac"):
        config = preset(env, algo, rho=rho, seed=seed, env_steps=env_steps, episode_length=episode_length, **overrides)
        total = config.epochs * config.env_steps_per_epoch
    else:
        config = config_cls(**overrides)
        total = env_steps
    with _progress(total, f"{algo} on {env} ({task.backend})", quiet) as on_row:
        if algo.startswith("shac"):
            shac.train(config, task, on_row, run_dir=out, resume=resume)
        else:
            baselines.train(algo, task, out, env_steps, seed=seed, resume=resume, on_row=on_row, config=config)
    rows = _read_rows(out)
    last_eval = next((r for r in reversed(rows) if r.get("eval_return") not in ("", None)), None)
    summary = f"eval return {float(last_eval['eval_return']):,.1f}" if last_eval else "no evaluation"
    typer.echo(f"done: {out} ({summary})")


def _read_rows(out: Path) -> list[dict[str, str]]:
    from sharprl.checkpoint import read_metrics

    return read_metrics(out)


class _progress:
    """Rich progress bar fed with metrics rows (env_steps, train/eval return, steps/s)."""

    def __init__(self, total: int, title: str, quiet: bool):
        self.total, self.title, self.quiet = total, title, quiet

    def __enter__(self):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} steps"),
            TextColumn("return {task.fields[ret]}"),
            TextColumn("{task.fields[sps]} steps/s"),
            TimeElapsedColumn(),
            disable=self.quiet,
        )
        self.bar.start()
        self.job = self.bar.add_task(self.title, total=self.total, ret="-", sps="-")
        return self.on_row

    def on_row(self, row: dict[str, Any]) -> None:
        ret = row.get("eval_return")
        ret = ret if isinstance(ret, float) else row.get("train_return")
        self.bar.update(self.job, completed=row["env_steps"], ret=_fmt(ret), sps=_fmt(row.get("steps_per_s")))
        if self.quiet and isinstance(row.get("eval_return"), float):
            typer.echo(f"{row['env_steps']} env steps, {row['wall_s']} s: eval return {row['eval_return']:.1f}")

    def __exit__(self, *exc) -> None:
        self.bar.stop()


def _backends(evaluated: str, trained: str) -> str:
    return evaluated if evaluated == trained else f"{evaluated}; trained on {trained}"


@app.command()
@user_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `sharprl train`")],
    episodes: Annotated[int, typer.Option(help="episodes (run in parallel)")] = 16,
    action_noise: ActionNoise = 0.0,
    friction: Friction = 1.0,
    mass: Mass = 1.0,
    gravity: Gravity = 1.0,
    seed: Annotated[int, typer.Option(help="evaluation seed (same seed, same numbers)")] = 0,
    stochastic: Annotated[bool, typer.Option("--stochastic", help="sample actions instead of the mean")] = False,
    backend: Annotated[
        str | None, typer.Option(help="physics backend to evaluate on (default: the one trained on)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Mean and std of the episode return of a trained policy, optionally perturbed or on another backend."""
    from sharprl import checkpoint
    from sharprl.envs import Perturbation, make_task
    from sharprl.evaluate import evaluate as run_evaluation

    enable_compilation_cache()
    loaded = checkpoint.load_policy(run_dir)
    meta = loaded.meta
    task = make_task(meta["env"], backend or meta["backend"], episode_length=int(meta.get("episode_length", 1000)))
    sizes = (task.observation_size, task.action_size)
    if sizes != (loaded.spec.observation_size, loaded.spec.action_size):
        raise SharprlError(
            f"{meta['env']} on {task.backend} has (observation, action) sizes {sizes}; the policy was built for "
            f"{(loaded.spec.observation_size, loaded.spec.action_size)}"
        )
    pert = Perturbation(action_noise, friction, mass, gravity)
    res = run_evaluation(loaded.make_policy, loaded.params, task, pert, episodes, seed, deterministic=not stochastic)
    if as_json:
        out = res.to_json()
        out.update(run_dir=str(run_dir), algo=meta.get("algo"), env=meta["env"], env_steps=meta.get("env_steps"))
        out.update(backend=task.backend, trained_backend=meta["backend"])
        typer.echo(json.dumps(out))
    else:
        typer.echo(
            f"{meta.get('algo')} on {meta['env']} ({_backends(task.backend, meta['backend'])}), "
            f"{meta.get('env_steps')} env steps: return {res.mean_return:.1f} +- {res.std_return:.1f} "
            f"over {episodes} episodes "
            f"(mean length {res.mean_length:.0f}; noise {action_noise}, friction {friction}, mass {mass})"
        )


@app.command()
@user_errors
def curves(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories (any algorithm) with metrics.csv")],
    out: Annotated[Path, typer.Option(help="directory for curves_env_steps.png and curves_wall_clock.png")],
    title: Annotated[str, typer.Option(help="plot title")] = "Ant (Brax spring)",
    anchor_steps: Annotated[float, typer.Option(help="reference line: env steps (0: none)")] = 4.1e6,
    anchor_return: Annotated[float, typer.Option(help="reference line: return")] = 4900.0,
    labels: Annotated[str, typer.Option(help="comma-separated legend labels, one per run (default: algo seed N)")] = "",
    baseline: Annotated[
        Path | None, typer.Option(help="baseline run (PPO): its env steps to the anchor return and to each best")
    ] = None,
) -> None:
    """Learning curves (evaluation return vs env steps and vs wall-clock) of several runs, as PNGs,
    and a table of final and best returns and where each run first reaches --anchor-return; with
    --baseline, the baseline's env steps to that return over the run's, and to each run's best return."""
    import dataclasses

    from sharprl.curves import load_curve, plot_curves, summary_table

    loaded = [load_curve(d) for d in run_dirs]
    if labels:
        names = [name.strip() for name in labels.split(",")]
        if len(names) != len(loaded):
            raise SharprlError(f"--labels has {len(names)} labels for {len(loaded)} run directories")
        loaded = [dataclasses.replace(curve, label=name) for curve, name in zip(loaded, names)]
    anchor = (anchor_steps, anchor_return) if anchor_steps > 0 else None
    for path in plot_curves(loaded, out, title, anchor):
        typer.echo(f"wrote {path}")
    target = anchor_return if anchor_steps > 0 else None
    typer.echo(summary_table(loaded, target, load_curve(baseline) if baseline is not None else None))


@app.command()
@user_errors
def gradcheck(
    env: Annotated[str, typer.Option(help="ant, humanoid, hopper, halfcheetah, cartpole (tiny)")] = "ant",
    backend: Annotated[str | None, typer.Option(help="Brax backend (default: the task's default)")] = None,
    envs: Annotated[int, typer.Option(help="parallel envs")] = 64,
    horizon: Annotated[int, typer.Option(help="steps differentiated through")] = 32,
    seed: Annotated[int, typer.Option(help="start states, policy and direction")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Reverse-mode gradient of a rollout against finite differences: is this backend usable here?"""
    from sharprl.envs import make_task
    from sharprl.gradcheck import GradCheckSpec, check

    enable_compilation_cache()
    spec = GradCheckSpec(num_envs=envs, horizon=horizon, seed=seed)
    res = check(make_task(env, backend), spec)
    typer.echo(json.dumps(res.to_json()) if as_json else res.line())


register_study_commands(app)  # robustness, rho-sweep, sharpness, reproduce (sharprl.study_cli)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
