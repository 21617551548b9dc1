"""The study's figures, the paper's three claims judged on the measured numbers, and report.md.

Claims (per task; numbers averaged over seeds, returns from the robustness sweep's deterministic
episodes, learning curves from the runs' own evaluations):

1. *SHAC-ASAM tolerates action noise better than SHAC*: held when ASAM's mean return over the
   noisy levels (std > 0) exceeds SHAC's by more than one standard error of the difference (episode
   spread, or with several seeds the seed spread where larger) AND its retention (that mean / its
   nominal return) is at least SHAC's.
2. *Its friction generalisation is comparable to PPO's*: retention = mean over the friction scales
   other than 1 of return / nominal return; held when ASAM's retention >= PPO's - 0.1.
3. *It keeps SHAC's sample efficiency*: held when ASAM's mean evaluation return over its learning
   curve (same env-step schedule as SHAC's) is at least SHAC's minus 10 % of |SHAC's|.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sharprl import checkpoint, landscape, plots, robustness
from sharprl.study import StudyResults, rho_points

ALGO_ORDER = ("shac", "shac-asam", "ppo")


@dataclasses.dataclass(frozen=True)
class Claim:
    """One of the paper's claims, judged."""

    text: str  # the claim
    held: bool | None  # None: not measurable (a run is missing)
    evidence: str  # the numbers behind the verdict


def _mean_returns(rows: Sequence[robustness.Row], sweep: str, algo: str) -> tuple[np.ndarray, np.ndarray]:
    x, mean, _ = robustness.curve(rows, sweep, algo)
    return x, mean


def learning_curves(runs: Sequence[tuple[str, str | Path]]) -> dict[str, dict[str, np.ndarray]]:
    """algo -> {"env_steps", "wall_s", "eval_return"} from ``(algo, run_dir)`` pairs, evaluations averaged
    over each algorithm's runs (cut to the shortest run's evaluations)."""
    per_algo: dict[str, list[list[dict[str, str]]]] = {}
    for algo, run_dir in runs:
        rows = checkpoint.read_metrics(checkpoint.run_root(run_dir))  # a best/ policy: its run's curve
        rows = [r for r in rows if r.get("eval_return") not in ("", None)]
        per_algo.setdefault(algo, []).append(rows)
    out = {}
    for algo, seeds in per_algo.items():
        n = min(len(rows) for rows in seeds)
        if n == 0:
            continue
        col = {
            k: np.mean([[float(r[k]) for r in rows[:n]] for rows in seeds], axis=0)
            for k in ("env_steps", "wall_s", "eval_return")
        }
        out[algo] = col
    return out


def judge(rows: Sequence[robustness.Row], curves: dict[str, dict[str, np.ndarray]]) -> list[Claim]:
    """The three claims on one task's aggregated robustness rows and learning curves."""
    algos = {r.algo for r in rows}
    claims = []
    text1 = "SHAC-ASAM tolerates action noise better than SHAC"
    if {"shac", "shac-asam"} <= algos:
        stats = {}
        for algo in ("shac", "shac-asam"):
            sel = [r for r in rows if r.sweep == "action_noise" and r.algo == algo]
            nominal = next(r.mean_return for r in sel if r.action_noise == 0.0)
            noisy = [r for r in sel if r.action_noise > 0.0]
            mean = float(np.mean([r.mean_return for r in noisy]))
            # standard error of that mean: episode spread of each level, levels averaged; with several
            # seeds at least the seed spread (mean of the levels' seed stds bounds the std of the
            # per-seed means over levels from above)
            se = float(np.sqrt(sum(r.std_return**2 / r.episodes for r in noisy)) / len(noisy))
            seeds = min(r.seeds for r in noisy)
            if seeds > 1:
                se = max(se, float(np.mean([r.std_over_seeds for r in noisy])) / np.sqrt(seeds - 1))
            stats[algo] = (nominal, mean, se, mean / nominal if nominal > 0 else float("nan"))
        (n0, m0, se0, r0), (n1, m1, se1, r1) = stats["shac"], stats["shac-asam"]
        margin = float(np.hypot(se0, se1))
        held = m1 - m0 > margin and (r1 >= r0 if np.isfinite(r0) and np.isfinite(r1) else True)
        claims.append(
            Claim(
                text1,
                bool(held),
                f"mean return over noise std>0: ASAM {m1:.0f} vs SHAC {m0:.0f} (held needs a gap > 1 standard "
                f"error, {margin:.0f}); retention vs nominal ({n1:.0f} / {n0:.0f}): {r1:.2f} vs {r0:.2f}",
            )
        )
    else:
        claims.append(Claim(text1, None, "SHAC or SHAC-ASAM run missing"))
    text2 = "SHAC-ASAM's friction generalisation is comparable to PPO's"
    if {"ppo", "shac-asam"} <= algos:
        ret = {}
        for algo in ("shac-asam", "ppo", "shac"):
            if algo in algos:
                x, y = _mean_returns(rows, "friction", algo)
                nominal = float(y[x == 1.0][0])
                ret[algo] = float(y[x != 1.0].mean()) / nominal if nominal > 0 else float("nan")
        held = bool(ret["shac-asam"] >= ret["ppo"] - 0.1)
        extra = f", SHAC {ret['shac']:.2f}" if "shac" in ret else ""
        claims.append(
            Claim(
                text2,
                held,
                f"friction retention (mean over scales != 1 of return / nominal): "
                f"ASAM {ret['shac-asam']:.2f} vs PPO {ret['ppo']:.2f}{extra}; held if ASAM >= PPO - 0.10",
            )
        )
    else:
        claims.append(Claim(text2, None, "PPO or SHAC-ASAM run missing"))
    text3 = "SHAC-ASAM keeps SHAC's sample efficiency"
    if {"shac", "shac-asam"} <= set(curves):
        a, s = curves["shac-asam"], curves["shac"]
        n = min(len(a["eval_return"]), len(s["eval_return"]))
        auc_a, auc_s = float(a["eval_return"][:n].mean()), float(s["eval_return"][:n].mean())
        held = auc_a >= auc_s - 0.1 * abs(auc_s)
        claims.append(
            Claim(
                text3,
                bool(held),
                f"mean eval return over the learning curve (up to "
                f"{int(s['env_steps'][n - 1]):,} env steps): ASAM {auc_a:.0f} vs SHAC {auc_s:.0f}; final "
                f"{a['eval_return'][n - 1]:.0f} vs {s['eval_return'][n - 1]:.0f}",
            )
        )
    else:
        claims.append(Claim(text3, None, "SHAC or SHAC-ASAM learning curve missing"))
    return claims


def claims_table(claims: Sequence[Claim], env: str) -> str:
    lines = ["| task | claim | verdict | numbers |", "|---|---|---|---|"]
    for c in claims:
        verdict = "not measured" if c.held is None else ("**held**" if c.held else "**not held**")
        lines.append(f"| {env} | {c.text} | {verdict} | {c.evidence} |")
    return "\n".join(lines)


def _sorted(items):
    order = {a: i for i, a in enumerate(ALGO_ORDER)}
    return sorted(items, key=lambda kv: order.get(kv[0], 99))


def write_report(res: StudyResults, command: str) -> Path:
    """All figures under DIR/<env>/ and DIR/report.md; returns the report's path."""
    b, out = res.budget, res.out
    md = [
        f"# sharprl robustness study (`{b.name}` budget)",
        "",
        f"Command: `{command}`",
        "",
        f"Tasks {', '.join(b.envs)}; seeds {', '.join(map(str, b.seeds))}; SHAC / SHAC-ASAM "
        f"{b.shac_env_steps:,} env steps per run, PPO {b.ppo_env_steps:,}; SHAC-ASAM rho = {b.rho:g}; "
        f"robustness: {b.sweep.episodes} deterministic episodes per point and seed (evaluation seed {b.sweep.seed}).",
        "",
    ]
    all_claims = []
    for env in b.envs:
        env_dir = out / env
        results = [r for ref, r in res.robustness if ref.env == env]
        curves = learning_curves([(ref.algo, ref.job.out_dir) for ref, _ in res.runs if ref.env == env and ref.main])
        md += [f"## {env}", ""]
        if curves:
            lc = {a: (c["env_steps"], c["eval_return"]) for a, c in _sorted(curves.items())}
            wc = {a: (c["wall_s"], c["eval_return"]) for a, c in _sorted(curves.items())}
            plots.lines(env_dir / "learning_env_steps.png", lc, "env steps", "eval return", f"{env}: learning curves")
            plots.lines(
                env_dir / "learning_wall_clock.png", wc, "wall-clock s", "eval return", f"{env}: learning curves"
            )
            md += ["| algo | env steps | wall-clock s | final eval return |", "|---|---|---|---|"]
            md += [
                f"| {a} | {int(c['env_steps'][-1]):,} | {c['wall_s'][-1]:.0f} | {c['eval_return'][-1]:.1f} |"
                for a, c in _sorted(curves.items())
            ]
            md += [
                "",
                f"![learning curves]({env}/learning_env_steps.png) ![wall clock]({env}/learning_wall_clock.png)",
                "",
            ]
        rows = robustness.aggregate(results, b.sweep) if results else []
        claims = judge(rows, curves)
        all_claims.append((env, claims))
        md += ["### The paper's claims", "", claims_table(claims, env), ""]
        if rows:
            robustness.write_outputs(rows, b.sweep, env_dir, env)
            md += [
                "### Robustness (mean +- std over episodes and seeds)",
                "",
                "| algo | nominal | noise 0.5 | friction 0.25x | friction 2x | mass 0.5x | mass 1.5x |",
                "|---|---|---|---|---|---|---|",
            ]
            cols = [("action_noise", 0.0), ("action_noise", 0.5), ("friction", 0.25), ("friction", 2.0), ("mass", 0.5),
                    ("mass", 1.5)]  # fmt: skip
            for algo in dict.fromkeys(r.algo for r in rows):
                md.append("| " + " | ".join([algo] + [_cell(rows, algo, sweep, value) for sweep, value in cols]) + " |")
            md += [
                "",
                f"![noise]({env}/robustness_action_noise.png) ![friction]({env}/robustness_friction.png)",
                f"![mass]({env}/robustness_mass.png) ![grid]({env}/robustness_grid.png)",
                f"CSV: `{env}/robustness.csv`",
                "",
            ]
        rho = rho_points([(r, x) for r, x in res.rho if r.env == env], b.rho_sweep_noise)
        if rho:
            plots.scatter(
                env_dir / "rho_sweep.png",
                rho,
                "nominal return",
                f"return under action noise {b.rho_sweep_noise:g}",
                f"{env}: rho trade-off (SHAC-ASAM)",
            )
            md += [
                f"### rho trade-off (action noise {b.rho_sweep_noise:g})",
                "",
                "| rho | nominal | under noise |",
                "|---|---|---|",
            ]
            md += [f"| {k} | {v[0]:.1f} | {v[1]:.1f} |" for k, v in rho.items()] + [
                "",
                f"![rho]({env}/rho_sweep.png)",
                "",
            ]
        sharp = [r for ref, r in res.sharpness if ref.env == env]
        if sharp:
            landscape.write_plots(sharp, env_dir, env)
            md += [
                "### Sharpness of the final actor (SHAC actor loss, fixed batch of start states)",
                "",
                f"| algo | seed | loss | SAM sharpness (rho={b.sharpness.rho:g}) | "
                f"ASAM sharpness (rho={b.sharpness.asam_rho:g}) | top Hessian eigenvalue |",
                "|---|---|---|---|---|---|",
            ]
            md += [
                f"| {r['algo']} | {r['seed']} | {r['loss']:.4g} | {r['sam_sharpness']:.4g} | "
                f"{r['asam_sharpness']:.4g} | {r['hessian_top_eigenvalue']:.4g} |"
                for r in sharp
            ]
            md += [
                "",
                flatter_sentence(sharp),
                "",
                f"![1-D]({env}/landscape_1d.png) ![2-D]({env}/landscape_2d.png)",
                "",
            ]
    if res.failed:
        md += (
            ["## Failed (after one retry) or unfinished jobs", ""]
            + [f"- {o.job.name}: {'; '.join(o.errors) or o.status}" for o in res.failed]
            + [""]
        )
    md += [
        f"This invocation: {res.wall_s / 60:.1f} min wall-clock; jobs already finished before it (skipped): "
        f"{res.skipped}.",
        "",
    ]
    path = out / "report.md"
    checkpoint.atomic_write_text(path, "\n".join(md))
    checkpoint.atomic_write_text(out / "claims.md", "\n\n".join(claims_table(c, e) for e, c in all_claims) + "\n")
    return path


_FIELD = {"action_noise": "action_noise", "friction": "friction_scale", "mass": "mass_scale"}


def _cell(rows: Sequence[robustness.Row], algo: str, sweep: str, value: float) -> str:
    hit = [r for r in rows if r.sweep == sweep and r.algo == algo and getattr(r, _FIELD[sweep]) == value]
    return f"{hit[0].mean_return:.0f} +- {hit[0].std_return:.0f}" if hit else "-"


def flatter_sentence(sharp: Sequence[dict[str, Any]]) -> str:
    """Whether SHAC-ASAM's minimum is flatter than SHAC's on these numbers (means over seeds)."""
    by = {}
    for r in sharp:
        by.setdefault(r["algo"], []).append(r)
    if not {"shac", "shac-asam"} <= set(by):
        return "Flatness comparison needs both SHAC and SHAC-ASAM."
    mean = {
        a: {k: float(np.mean([r[k] for r in v])) for k in ("sam_sharpness", "hessian_top_eigenvalue")}
        for a, v in by.items()
    }
    s, a = mean["shac"], mean["shac-asam"]
    flat = [k for k in s if a[k] < s[k]]
    verdict = (
        "flatter on both measures"
        if len(flat) == 2
        else ("sharper on both measures" if not flat else f"flatter only by {flat[0]}")
    )
    return (
        f"SHAC-ASAM vs SHAC: SAM sharpness {a['sam_sharpness']:.4g} vs {s['sam_sharpness']:.4g}, top eigenvalue "
        f"{a['hessian_top_eigenvalue']:.4g} vs {s['hessian_top_eigenvalue']:.4g}: ASAM's minimum is {verdict} here."
    )


def write_rho_sweep(res: StudyResults) -> dict[str, tuple[float, float]]:
    """DIR/<env>/rho_sweep.csv and .png of a rho-sweep study; returns the (first env's) points."""
    first: dict[str, tuple[float, float]] = {}
    noise = res.budget.rho_sweep_noise
    for env in res.budget.envs:
        points = rho_points([(r, x) for r, x in res.rho if r.env == env], noise)
        lines = ["rho,nominal_return,noisy_return,action_noise"]
        lines += [f"{k.split('=')[1].split(' ')[0]},{a},{b},{noise}" for k, (a, b) in points.items()]
        checkpoint.atomic_write_text(res.out / env / "rho_sweep.csv", "\n".join(lines) + "\n")
        plots.scatter(
            res.out / env / "rho_sweep.png",
            points,
            "nominal return",
            f"return under action noise {noise:g}",
            f"{env}: rho trade-off (SHAC-ASAM)",
        )
        first = first or points
    return first
