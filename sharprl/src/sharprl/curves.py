"""Learning curves of training runs (any algorithm) against env steps and wall-clock time.

Reads each run directory's ``metrics.csv`` (columns ``env_steps``, ``wall_s``, ``eval_return``) and,
when present, its checkpoint metadata for the algorithm and seed. Used by ``sharprl curves``.
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

from sharprl import checkpoint
from sharprl.errors import SharprlError

SHADES = {"shac": "Blues", "shac-sam": "Oranges", "shac-asam": "Reds", "apg": "Greens", "ppo": "Purples"}  # colormaps


def run_colors(algos: list[str]) -> list:
    """One colour per run: the runs of one algorithm in shades of its colour map (darkest first), so
    seeds stay apart and algorithms stay recognisable; unknown algorithms in greys."""
    import matplotlib

    counts = {a: algos.count(a) for a in algos}
    seen: dict[str, int] = {}
    out = []
    for algo in algos:
        i = seen[algo] = seen.get(algo, -1) + 1
        cmap = matplotlib.colormaps[SHADES.get(algo, "Greys")]
        out.append(cmap(0.9 - 0.5 * i / max(counts[algo] - 1, 1)))  # from 0.9 down to 0.4
    return out


@dataclasses.dataclass(frozen=True)
class Curve:
    """The evaluation points of one run."""

    label: str  # "algo seed N"
    algo: str  # algorithm name
    env_steps: tuple[int, ...]  # training env steps at each evaluation
    wall_s: tuple[float, ...]  # wall-clock seconds since the run started (compilation included)
    eval_return: tuple[float, ...]  # mean deterministic evaluation return
    train_points: tuple[tuple[int, float, float], ...] = ()  # (env steps, wall s, training-episode return)


def load_curve(run_dir: Path | str) -> Curve:
    """The evaluation curve of one run directory; SharprlError when it has no evaluations."""
    run_dir = Path(run_dir)
    all_rows = checkpoint.read_metrics(run_dir)
    rows = [r for r in all_rows if r.get("eval_return") not in ("", None)]
    rows = [r for r in rows if math.isfinite(float(r["eval_return"]))]
    train = [r for r in all_rows if r.get("train_return") not in ("", None, "nan")]
    train = [r for r in train if math.isfinite(float(r["train_return"]))]
    if not rows and not train:
        raise SharprlError(f"{run_dir}: no evaluation or training-return rows in {checkpoint.METRICS_FILE}")
    algo, seed = run_dir.name, "?"
    if checkpoint.has_checkpoint(run_dir):
        meta = checkpoint.load_meta(run_dir)
        algo = meta.get("algo", algo)
        seed = meta.get("seed", meta.get("config", {}).get("seed", "?"))
    return Curve(
        label=f"{algo} seed {seed}",
        algo=algo,
        env_steps=tuple(int(r["env_steps"]) for r in rows),
        wall_s=tuple(float(r["wall_s"]) for r in rows),
        eval_return=tuple(float(r["eval_return"]) for r in rows),
        train_points=tuple((int(r["env_steps"]), float(r["wall_s"]), float(r["train_return"])) for r in train),
    )


def plot_curves(
    curves: list[Curve], out_dir: Path | str, title: str, anchor: tuple[float, float] | None = None
) -> list[Path]:
    """Write ``curves_env_steps.png`` and ``curves_wall_clock.png``; ``anchor`` = (env steps, return)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    paths = []
    colors = run_colors([c.algo for c in curves])
    for axis, name, xlabel in (
        ("env_steps", "curves_env_steps.png", "training env steps"),
        ("wall_s", "curves_wall_clock.png", "wall-clock time (min, compilation included)"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
        for curve, color in zip(curves, colors, strict=True):
            xs = [x / 60.0 for x in curve.wall_s] if axis == "wall_s" else list(curve.env_steps)
            ax.plot(xs, curve.eval_return, marker="o", ms=3, label=f"{curve.label} (evaluation)", color=color)
            if curve.train_points:
                tx = [p[1] / 60.0 if axis == "wall_s" else p[0] for p in curve.train_points]
                ty = [p[2] for p in curve.train_points]
                ax.plot(tx, ty, ls=":", lw=1, color=ax.get_lines()[-1].get_color(), alpha=0.7,
                        label=f"{curve.label} (training episodes)")
        if anchor is not None and axis == "env_steps":
            ax.axhline(anchor[1], ls="--", color="gray", lw=1)
            ax.annotate(f"PPO anchor: {anchor[1]:,.0f} at {anchor[0] / 1e6:.1f}M steps", (0, anchor[1]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8, color="gray")  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.set_ylabel("episode return")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the curves, not on them
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        plt.close(fig)
        path = out_dir / name
        checkpoint.atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def first_passage(curve: Curve, target_return: float) -> float | None:
    """Env steps at which the run's evaluation first reaches ``target_return``, interpolated linearly
    between that evaluation and the one before it; None if no evaluation reaches it."""
    points = list(zip(curve.env_steps, curve.eval_return))
    for i, (steps, value) in enumerate(points):
        if value >= target_return:
            if i == 0:
                return float(steps)
            prev_steps, prev_value = points[i - 1]
            return prev_steps + (steps - prev_steps) * (target_return - prev_value) / (value - prev_value)
    return None


def summary_table(curves: list[Curve], target_return: float | None = None, baseline: Curve | None = None) -> str:
    """A markdown table: final and best evaluation return per run; with ``target_return``, where each
    run first reaches it; with a ``baseline`` run, how many env steps the baseline needs to first reach
    each run's best return, as a ratio to the steps the run took (the sample-efficiency ratio)."""
    head = ["run", "env steps", "wall-clock", "final eval return", "best eval return"]
    base_target = None  # env steps the baseline needs for target_return
    if target_return is not None:
        head.append(f"first reaches {target_return:,.0f}")
        if baseline is not None:
            base_target = first_passage(baseline, target_return)
            head[-1] += " (ratio: the baseline's steps to it / the run's)"
    if baseline is not None:
        head.append(f"{baseline.label} for the best return (ratio)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in curves:
        if not c.eval_return:
            last = c.train_points[-1]
            cells = [c.label, f"{last[0]:,}", f"{last[1] / 60:.0f} min", "(no evaluation yet)"]
            cells += ["-"] * (len(head) - len(cells))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        best = max(range(len(c.eval_return)), key=lambda i: c.eval_return[i])
        cells = [
            c.label,
            f"{c.env_steps[-1]:,}",
            f"{c.wall_s[-1] / 60:.0f} min",
            f"{c.eval_return[-1]:,.0f}",
            f"{c.eval_return[best]:,.0f} (at {c.env_steps[best]:,})",
        ]
        if target_return is not None:
            reached = first_passage(c, target_return)
            cells.append(f"{reached:,.0f}" if reached is not None else f"not within {c.env_steps[-1]:,}")
            if reached and base_target is not None:
                cells[-1] += f" ({base_target / reached:.1f}x)"
        if baseline is not None:
            cells.append(_baseline_cell(baseline, c.eval_return[best], c.env_steps[best]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _baseline_cell(baseline: Curve, best_return: float, best_steps: int) -> str:
    needed = first_passage(baseline, best_return)
    if needed is None:
        last = baseline.env_steps[-1] if baseline.env_steps else 0
        return f"not within {last:,}"
    ratio = f"{needed / best_steps:.1f}x" if best_steps > 0 else "-"
    return f"{needed:,.0f} ({ratio})"
