"""Design-space sweep: chips x link bandwidth x memory sizes, the best strategy per point.

Every point tries tensor-parallel, pipeline and hybrid plans (a plan that does not fit in memory
or cannot be built for that many chips is skipped) and keeps the best by the objective. Plans are
built once per (chips, strategy) and re-costed for each hardware variant.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mcushard.cost.simulate import CostReport, simulate
from mcushard.errors import McushardError
from mcushard.hardware.spec import HardwareSpec, replace
from mcushard.partition import make_plan
from mcushard.partition.hybrid import default_tp_size
from mcushard.placement import Workload

STRATEGIES = ("tp", "pp", "hybrid")
OBJECTIVES = ("latency", "energy", "edp")


@dataclass(frozen=True)
class Point:
    """One sweep point's winner."""

    chips: int  # chips in the system
    link_gbps: float  # link bandwidth, GB/s per direction
    l2_kib: int  # L2 size per chip
    mram_kib: int  # non-volatile on-chip memory per chip
    strategy: str  # the winning plan's strategy
    report: CostReport  # its cost
    speedup: float  # 1-chip latency / this latency, same hardware variant
    tried: dict[str, float]  # strategy -> latency_ms of every plan that fitted


def variant(hw: HardwareSpec, link_gbps: float | None, l2_kib: int | None, mram_kib: int | None) -> HardwareSpec:
    """`hw` with another link bandwidth and/or L2 / non-volatile sizes."""
    levels = []
    for lv in hw.chip.levels:
        if l2_kib and lv is hw.chip.working:
            lv = replace(lv, size_bytes=l2_kib * 1024)
        elif mram_kib and lv.on_chip and lv.non_volatile:
            lv = replace(lv, size_bytes=mram_kib * 1024)
        levels.append(lv)
    link = replace(hw.link, bandwidth_bytes_per_s=link_gbps * 1e9) if link_gbps else hw.link
    return replace(hw, chip=replace(hw.chip, levels=tuple(levels)), link=link)


def _score(report: CostReport, objective: str) -> float:
    return {"latency": report.latency_s, "energy": report.energy_j, "edp": report.edp_js}[objective]


def run_sweep(cfg, hw: HardwareSpec, wl: Workload, chips: list[int], link_gbps: list[float],
              l2_kib: list[int], mram_kib: list[int], objective: str = "latency", scope: str = "model",
              progress=None) -> list[Point]:
    if objective not in OBJECTIVES:
        raise McushardError(f"unknown objective {objective!r}; use {', '.join(OBJECTIVES)}")
    plans: dict[tuple[int, str], object] = {}
    points: list[Point] = []
    hw_variants = [(bw, l2, mr, variant(hw, bw, l2, mr)) for bw in link_gbps for l2 in l2_kib for mr in mram_kib]
    for n in chips:
        for strategy in STRATEGIES:
            if strategy == "hybrid" and default_tp_size(n) in (1, n):
                continue  # the same plan as pp (groups of one) or tp (one group)
            try:
                plans[(n, strategy)] = make_plan(cfg, n, strategy, hw.allreduce, scope=scope)
            except McushardError:
                continue
        for bw, l2, mr, hv in hw_variants:
            tried: dict[str, CostReport] = {}
            for strategy in STRATEGIES:
                plan = plans.get((n, strategy))
                if plan is None:
                    continue
                try:
                    tried[strategy] = simulate(plan, hv, wl)
                except McushardError:
                    continue
            if tried:
                best = min(tried, key=lambda s: _score(tried[s], objective))
                points.append(Point(n, bw or hw.link.bandwidth_bytes_per_s / 1e9,
                                    l2 or hw.chip.working.size_bytes // 1024, mr or _nvm_kib(hw), best,
                                    tried[best], 0.0,
                                    {s: r.latency_s * 1e3 for s, r in tried.items()}))
            if progress:
                progress()
    base = {(p.link_gbps, p.l2_kib, p.mram_kib): p.report.latency_s for p in points if p.chips == 1}
    return [Point(p.chips, p.link_gbps, p.l2_kib, p.mram_kib, p.strategy, p.report,
                  base.get((p.link_gbps, p.l2_kib, p.mram_kib), float("nan")) / p.report.latency_s, p.tried)
            for p in points]


def _nvm_kib(hw: HardwareSpec) -> int:
    return sum(lv.size_bytes for lv in hw.chip.levels if lv.on_chip and lv.non_volatile) // 1024


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same directory and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would make results private
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_csv(points: list[Point]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    categories = sorted({k for p in points for k in p.report.energy_breakdown_j})
    w.writerow(["chips", "link_gbps", "l2_kib", "mram_kib", "strategy", "latency_ms", "energy_mj", "edp_mj_ms",
                "speedup", "offchip_bytes", "link_bytes"] + [f"energy_{c}_mj" for c in categories]
               + [f"latency_{s}_ms" for s in STRATEGIES])
    for p in points:
        r = p.report
        w.writerow([p.chips, f"{p.link_gbps:g}", p.l2_kib, p.mram_kib, p.strategy, f"{r.latency_s * 1e3:.6g}",
                    f"{r.energy_j * 1e3:.6g}", f"{r.edp_js * 1e6:.6g}", f"{p.speedup:.4g}", r.offchip_bytes,
                    r.link_bytes] + [f"{r.energy_breakdown_j.get(c, 0.0) * 1e3:.6g}" for c in categories]
                   + [f"{p.tried[s]:.6g}" if s in p.tried else "" for s in STRATEGIES])
    return out.getvalue()


def plot(points: list[Point], out_dir: Path, title: str) -> list[Path]:
    """speedup.png (speed-up vs chips, linear line) and energy.png (energy breakdown vs chips)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    combos = sorted({(p.link_gbps, p.l2_kib, p.mram_kib) for p in points})
    for combo in combos:
        pts = [p for p in points if (p.link_gbps, p.l2_kib, p.mram_kib) == combo]
        ax.plot([p.chips for p in pts], [p.speedup for p in pts], marker=".",
                label=f"link {combo[0]:g} GB/s, L2 {combo[1]} KiB, NVM {combo[2]} KiB")
    top = max(p.chips for p in points)
    ax.plot([1, top], [1, top], "k--", label="linear")
    ax.set(xlabel="chips", ylabel="speed-up vs 1 chip", title=title)
    ax.legend(fontsize=7)
    written.append(_save(fig, out_dir / "speedup.png"))
    first = [p for p in points if (p.link_gbps, p.l2_kib, p.mram_kib) == combos[0]]
    cats = sorted({k for p in first for k in p.report.energy_breakdown_j})
    fig, ax = plt.subplots(figsize=(6, 4))
    bottom = [0.0] * len(first)
    for cat in cats:
        vals = [p.report.energy_breakdown_j.get(cat, 0.0) * 1e3 for p in first]
        ax.bar([p.chips for p in first], vals, bottom=bottom, label=cat)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set(xlabel="chips", ylabel="energy per step (mJ)", title=f"{title}: energy breakdown")
    ax.legend(fontsize=7)
    written.append(_save(fig, out_dir / "energy.png"))
    plt.close("all")
    return written


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue())
    return path
