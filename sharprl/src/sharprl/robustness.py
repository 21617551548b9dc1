"""Robustness sweeps: returns of trained policies under action noise, friction and mass changes.

:func:`evaluate_run` loads one run directory's policy and evaluates every perturbation point of a
:class:`SweepSpec` in ONE compiled, vmapped rollout (points x episodes environments in parallel),
reusing :mod:`sharprl.evaluate`'s rollout, so the point (noise 0, friction 1, mass 1) equals
``evaluate(...)`` on the nominal task with the same seed. All points share the evaluation seed
(common random numbers): differences between points come from the perturbation, not the noise draw.

:func:`aggregate` pools several runs per algorithm (the seeds found in the run directories): the
mean and std over all their episodes, plus the std of the per-seed means. :func:`write_outputs`
writes ``robustness.csv`` and the PNGs (one curve per algorithm, shaded +-1 std band; a heat map of
noise x friction per algorithm).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sharprl import checkpoint, plots
from sharprl.envs import Perturbation, Task, make_task
from sharprl.errors import SharprlError
from sharprl.evaluate import _compiled_rollout
from sharprl.networks import MakePolicy, PolicySpec, policy_factory

SWEEPS = ("action_noise", "friction", "mass", "grid")


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """Which perturbations to evaluate, and how many episodes per point."""

    noise_levels: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)  # action-noise std, fraction of range
    friction_scales: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # contact friction multipliers
    mass_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)  # body mass (and inertia) multipliers
    grid_noise: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5)  # heat-map rows: action noise
    grid_friction: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0)  # heat-map columns: friction scale
    episodes: int = 8  # episodes per point and run
    seed: int = 0  # evaluation seed (same for every point and run)
    episode_length: int | None = None  # None: the run's own episode length

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise SharprlError(f"episodes must be >= 1, got {self.episodes}")
        for name in ("noise_levels", "friction_scales", "mass_scales", "grid_noise", "grid_friction"):
            if not getattr(self, name):
                raise SharprlError(f"sweep {name} must not be empty")
        if self.episode_length is not None and self.episode_length < 1:
            raise SharprlError(f"episode length must be >= 1, got {self.episode_length}")
        # validates every value (negative noise, non-positive mass, ...)
        for noise, friction, mass in self.points():
            Perturbation(action_noise=noise, friction_scale=friction, mass_scale=mass)

    def sweep_points(self) -> dict[str, list[tuple[float, float, float]]]:
        """(noise, friction, mass) points of each sweep, in plotting order."""
        return {
            "action_noise": [(n, 1.0, 1.0) for n in self.noise_levels],
            "friction": [(0.0, f, 1.0) for f in self.friction_scales],
            "mass": [(0.0, 1.0, m) for m in self.mass_scales],
            "grid": [(n, f, 1.0) for n in self.grid_noise for f in self.grid_friction],
        }

    def points(self) -> list[tuple[float, float, float]]:
        """Every distinct (noise, friction, mass) point, each evaluated once per run."""
        seen: dict[tuple[float, float, float], None] = {}
        for pts in self.sweep_points().values():
            for p in pts:
                seen.setdefault(tuple(float(x) for x in p), None)
        return list(seen)


@functools.lru_cache(maxsize=16)
def task_for(env: str, backend: str, episode_length: int) -> Task:
    """One Task object per (env, backend, length), so compiled rollouts are reused across runs."""
    return make_task(env, backend, episode_length=episode_length)


@functools.lru_cache(maxsize=16)
def _make_policy(spec: PolicySpec) -> MakePolicy:
    return policy_factory(spec)[0]


_BATCHED: dict[tuple, Any] = {}


def _batched_rollout(make_policy: MakePolicy, task: Task, episodes: int):
    """evaluate's compiled rollout vmapped over perturbation points (params shared)."""
    key = (id(make_policy), id(task.nominal_env), task.episode_length, episodes)
    if key not in _BATCHED:
        rollout = _compiled_rollout(make_policy, task, episodes, True)
        _BATCHED[key] = (make_policy, task, jax.jit(jax.vmap(rollout, in_axes=(None, 0, 0, None))))
    return _BATCHED[key][2]


def load_run(run_dir: str | Path, episode_length: int | None = None):
    """``(make_policy, params, task, meta)`` for a run directory (any algorithm)."""
    loaded = checkpoint.load_policy(run_dir)
    meta = loaded.meta
    try:
        length = int(episode_length or meta.get("episode_length", 1000))
        task = task_for(str(meta["env"]), str(meta["backend"]), length)
    except KeyError as exc:
        raise SharprlError(f"{run_dir}: checkpoint metadata lacks {exc}") from None
    return _make_policy(loaded.spec), loaded.params, task, meta


def evaluate_points(
    make_policy, params, task: Task, points: Sequence[tuple[float, float, float]], episodes: int, seed: int
) -> np.ndarray:
    """Returns ``(len(points), episodes)`` of every point, all in one vmapped rollout."""
    pts = np.asarray(points, np.float32)  # (P, 3): noise, friction, mass
    scales = jnp.stack([pts[:, 1], pts[:, 2], np.ones(len(pts), np.float32)], axis=1)  # (P, 3)
    rollout = _batched_rollout(make_policy, task, episodes)
    ret, _ = rollout(params, scales, jnp.asarray(pts[:, 0]), jax.random.PRNGKey(seed))  # (P, episodes)
    return np.asarray(ret, np.float64)


def evaluate_run(run_dir: str | Path, spec: SweepSpec) -> dict[str, Any]:
    """Every point's episode returns for one run: a JSON-ready dict."""
    make_policy, params, task, meta = load_run(run_dir, spec.episode_length)
    points = spec.points()
    returns = evaluate_points(make_policy, params, task, points, spec.episodes, spec.seed)  # (P, episodes)
    return {
        "run_dir": str(run_dir),
        "algo": str(meta.get("algo", "?")),
        "env": str(meta["env"]),
        "seed": int(meta.get("seed", meta.get("config", {}).get("seed", 0))),
        "env_steps": int(meta.get("env_steps", 0)),
        "points": [
            {"action_noise": p[0], "friction_scale": p[1], "mass_scale": p[2], "returns": r.tolist()}
            for p, r in zip(points, returns)
        ],
    }


@dataclasses.dataclass(frozen=True)
class Row:
    """One (sweep, algorithm, point) line of robustness.csv."""

    sweep: str  # action_noise | friction | mass | grid
    algo: str  # algorithm name from the checkpoints
    action_noise: float  # action-noise std, fraction of the action range
    friction_scale: float  # friction multiplier
    mass_scale: float  # mass multiplier
    mean_return: float  # mean over all episodes of all seeds
    std_return: float  # std over all episodes of all seeds (the plotted band)
    std_over_seeds: float  # std of the per-seed mean returns (0 with one seed)
    seeds: int  # runs (seeds) pooled
    episodes: int  # episodes pooled


def aggregate(results: Sequence[dict[str, Any]], spec: SweepSpec) -> list[Row]:
    """Pool per-run results by algorithm into rows for every sweep point."""
    by_algo: dict[str, list[dict[str, Any]]] = {}
    for res in results:
        by_algo.setdefault(res["algo"], []).append(res)
    rows = []
    for algo, runs in by_algo.items():
        tables = [
            {(p["action_noise"], p["friction_scale"], p["mass_scale"]): p["returns"] for p in r["points"]} for r in runs
        ]
        for sweep, pts in spec.sweep_points().items():
            for p in pts:
                key = tuple(float(x) for x in p)
                missing = [r["run_dir"] for r, t in zip(runs, tables) if key not in t]
                if missing:
                    raise SharprlError(f"{missing[0]}: no result for point {key} (evaluated with another sweep spec)")
                per_seed = [np.asarray(t[key]) for t in tables]
                pooled = np.concatenate(per_seed)
                seed_means = np.array([x.mean() for x in per_seed])
                rows.append(
                    Row(
                        sweep,
                        algo,
                        *key,
                        float(pooled.mean()),
                        float(pooled.std()),
                        float(seed_means.std()),
                        len(runs),
                        int(pooled.size),
                    )
                )
    return rows


def rows_to_csv(rows: Sequence[Row]) -> str:
    buf = io.StringIO()
    fields = [f.name for f in dataclasses.fields(Row)]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(dataclasses.asdict(row))
    return buf.getvalue()


def curve(rows: Sequence[Row], sweep: str, algo: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, mean, std)`` of one algorithm along a 1-D sweep; x is the swept quantity."""
    field = {"action_noise": "action_noise", "friction": "friction_scale", "mass": "mass_scale"}[sweep]
    sel = [r for r in rows if r.sweep == sweep and r.algo == algo]
    x = np.array([getattr(r, field) for r in sel])
    return x, np.array([r.mean_return for r in sel]), np.array([r.std_return for r in sel])


def grid(rows: Sequence[Row], algo: str, spec: SweepSpec) -> np.ndarray:
    """``(len(grid_noise), len(grid_friction))`` mean returns of the heat map."""
    sel = [r.mean_return for r in rows if r.sweep == "grid" and r.algo == algo]
    return np.array(sel).reshape(len(spec.grid_noise), len(spec.grid_friction))


LABELS = {
    "action_noise": "action noise std (fraction of action range)",
    "friction": "friction scale",
    "mass": "mass scale",
}


def write_outputs(rows: Sequence[Row], spec: SweepSpec, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """robustness.csv plus noise/friction/mass curves and the noise x friction heat map (PNG)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write_text(out / "robustness.csv", rows_to_csv(rows))
    algos = list(dict.fromkeys(r.algo for r in rows))
    paths = {"csv": out / "robustness.csv"}
    for sweep in ("action_noise", "friction", "mass"):
        curves = {algo: curve(rows, sweep, algo) for algo in algos}
        paths[sweep] = plots.band_plot(
            out / f"robustness_{sweep}.png",
            curves,
            LABELS[sweep],
            "episode return",
            f"{title} return vs {sweep.replace('_', ' ')}".strip(),
        )
    grids = {algo: grid(rows, algo, spec) for algo in algos}
    paths["grid"] = plots.heatmaps(
        out / "robustness_grid.png",
        grids,
        spec.grid_noise,
        spec.grid_friction,
        "action noise",
        "friction scale",
        f"{title} return: noise x friction".strip(),
    )
    return paths


def run_sweep(
    run_dirs: Sequence[str | Path], spec: SweepSpec, out_dir: str | Path, title: str = ""
) -> tuple[list[Row], list[dict[str, Any]]]:
    """Evaluate every run (per-run JSON cached in out_dir/runs), aggregate, write CSV + PNGs; returns the
    rows and the per-run results (in ``run_dirs`` order)."""
    if not run_dirs:
        raise SharprlError("robustness needs at least one run directory")
    results = [cached_run_result(d, spec, Path(out_dir) / "runs") for d in run_dirs]
    rows = aggregate(results, spec)
    write_outputs(rows, spec, out_dir, title)
    return rows, results


def cached_run_result(run_dir: str | Path, spec: SweepSpec, cache_dir: Path) -> dict[str, Any]:
    """evaluate_run, stored as JSON keyed by the run and the spec (reused when both are unchanged)."""
    meta = checkpoint.load_meta(run_dir)
    ident = json.dumps([str(Path(run_dir).resolve()), meta.get("env_steps"), dataclasses.asdict(spec)])
    tag = f"{Path(run_dir).resolve().name}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"
    path = cache_dir / f"{tag}.json"
    if path.is_file():
        return json.loads(path.read_text())
    res = evaluate_run(run_dir, spec)
    checkpoint.atomic_write_text(path, json.dumps(res))
    return res
