"""Matplotlib (Agg) figures of the study: curves with spread bands, heat maps, scatter, landscapes.

Every function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sharprl.checkpoint import atomic_write_bytes  # noqa: E402

DPI = 90


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Labels, title, grid and legend of a one-axes line plot, then save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def band_plot(
    path: Path,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    """One line per label (x, mean) with a shaded mean +- spread band; curves: label -> (x, mean, spread)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, (x, mean, spread) in curves.items():
        order = np.argsort(x)
        x, mean, spread = np.asarray(x)[order], np.asarray(mean)[order], np.asarray(spread)[order]
        (line,) = ax.plot(x, mean, marker="o", ms=3, label=label)
        ax.fill_between(x, mean - spread, mean + spread, color=line.get_color(), alpha=0.2, lw=0)
    return _finish(fig, ax, path, xlabel, ylabel, title)


def heatmaps(
    path: Path,
    grids: Mapping[str, np.ndarray],
    rows: Sequence[float],
    cols: Sequence[float],
    row_label: str,
    col_label: str,
    title: str,
) -> Path:
    """One annotated heat map per label (shared colour scale); grids: label -> (len(rows), len(cols))."""
    n = len(grids)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.8, 3.4), squeeze=False)
    values = np.concatenate([g.ravel() for g in grids.values()])
    vmin, vmax = float(np.nanmin(values)), float(np.nanmax(values))
    image = None
    for ax, (label, g) in zip(axes[0], grids.items()):
        image = ax.imshow(g, origin="lower", cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols])
        ax.set_yticks(range(len(rows)), [f"{r:g}" for r in rows])
        ax.set_xlabel(col_label)
        ax.set_ylabel(row_label)
        ax.set_title(label, fontsize=10)
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                ax.text(j, i, f"{g[i, j]:.0f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.9, label="mean return")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def scatter(path: Path, points: Mapping[str, tuple[float, float]], xlabel: str, ylabel: str, title: str) -> Path:
    """Labelled points (e.g. one per rho): label -> (x, y)."""
    fig, ax = plt.subplots(figsize=(5.0, 3.8))
    for label, (x, y) in points.items():
        ax.scatter([x], [y], s=30)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def lines(
    path: Path, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], xlabel: str, ylabel: str, title: str
) -> Path:
    """Plain lines: label -> (x, y)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label)
    return _finish(fig, ax, path, xlabel, ylabel, title)


def contours(path: Path, surfaces: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str) -> Path:
    """Filled contour plots of 2-D landscapes: label -> (alphas (K,), losses (K, K))."""
    n = len(surfaces)
    fig, axes = plt.subplots(1, n, figsize=(3.8 * n, 3.4), squeeze=False)
    for ax, (label, (alphas, z)) in zip(axes[0], surfaces.items()):
        cs = ax.contourf(alphas, alphas, z, levels=20, cmap="viridis")
        ax.contour(alphas, alphas, z, levels=10, colors="k", linewidths=0.4)
        fig.colorbar(cs, ax=ax, shrink=0.85)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        ax.set_title(label, fontsize=10)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
