"""Bodies of the `simulate`, `sweep` and `reproduce` commands (cli.py stays a thin typer layer)."""

from __future__ import annotations

import json
from pathlib import Path

from mcushard.errors import McushardError


def _ints(text: str, what: str) -> list[int]:
    """"1-64" or "1,2,4" (or a mix) -> sorted ints."""
    out: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise McushardError(f"--{what}: expected numbers like 1-64 or 1,2,4, got {text!r}") from None
    if not out or min(out) < 1:
        raise McushardError(f"--{what}: needs positive values, got {text!r}")
    return sorted(out)


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise McushardError(f"--{what}: expected comma-separated numbers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise McushardError(f"--{what}: values must be > 0, got {text!r}")
    return values


def simulate_cmd(model: str, chips: int, hardware: str, strategy: str, mode: str, kv_len: int, seq_len: int,
                 scope: str, as_json: bool, trace: Path | None) -> None:
    from mcushard.cost.simulate import simulate
    from mcushard.cost.trace import trace_json
    from mcushard.hardware.spec import load_hardware
    from mcushard.model.info import config_for
    from mcushard.partition import make_plan
    from mcushard.placement import workload
    from mcushard.sweep import atomic_write

    hw = load_hardware(hardware)
    cfg = config_for(model)
    plan = make_plan(cfg, chips, strategy, hw.allreduce, scope=scope)
    report = simulate(plan, hw, workload(cfg, mode, kv_len=kv_len, seq_len=seq_len), trace=trace is not None)
    if trace is not None:
        atomic_write(trace, trace_json(report).encode())
    if as_json:
        print(json.dumps(report.to_dict() | {"notes": list(plan.notes)}, indent=2))
        return
    _render(report, plan.notes)


def _render(report, notes) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    r = report
    console.print(f"[bold]{r.model}[/] on {r.n_chips} chip(s), {r.strategy}, {r.mode} "
                  f"({r.tokens} token(s), {r.cached} cached): latency {r.latency_s * 1e3:.4g} ms, "
                  f"energy {r.energy_j * 1e3:.4g} mJ, EDP {r.edp_js * 1e6:.4g} mJ*ms, "
                  f"off-chip {r.offchip_bytes} B, link {r.link_bytes} B")
    for note in notes:
        console.print(f"note: {note}")
    chips = Table(title="per chip (compute + stall + comm + idle = latency)")
    for col in ("chip", "compute ms", "stall ms", "comm ms", "idle ms", "held B", "off-chip B", "sent B"):
        chips.add_column(col, justify="right")
    for c in r.chips:
        chips.add_row(str(c.chip), f"{c.compute_s * 1e3:.4g}", f"{c.memory_stall_s * 1e3:.4g}",
                      f"{c.comm_s * 1e3:.4g}", f"{c.idle_s * 1e3:.4g}", str(c.bytes_held), str(c.offchip_bytes),
                      str(c.link_bytes_sent))
    console.print(chips)
    energy = Table(title="energy (mJ)")
    for k in r.energy_breakdown_j:
        energy.add_column(k, justify="right")
    energy.add_row(*(f"{v * 1e3:.4g}" for v in r.energy_breakdown_j.values()))
    console.print(energy)
    blocks = Table(title="per block")
    for col in ("block", "latency ms", "energy mJ"):
        blocks.add_column(col, justify="right")
    for b, t, e in r.blocks:
        blocks.add_row(b, f"{t * 1e3:.4g}", f"{e * 1e3:.4g}")
    console.print(blocks)


def sweep_cmd(model: str, hardware: str, chips: str, link_gbps: str, l2_kib: str, mram_kib: str, objective: str,
              mode: str, kv_len: int, seq_len: int, scope: str, out: Path) -> list[Path]:
    from rich.progress import Progress

    from mcushard.hardware.spec import load_hardware
    from mcushard.model.info import config_for
    from mcushard.placement import workload
    from mcushard.sweep import atomic_write, plot, run_sweep, to_csv

    hw = load_hardware(hardware)
    cfg = config_for(model)
    wl = workload(cfg, mode, kv_len=kv_len, seq_len=seq_len)
    n_list = _ints(chips, "chips")
    bws = _floats(link_gbps, "link-gbps") if link_gbps else [0.0]
    l2s = _ints(l2_kib, "l2-kib") if l2_kib else [0]
    mrams = _ints(mram_kib, "mram-kib") if mram_kib else [0]
    total = len(n_list) * len(bws) * len(l2s) * len(mrams)
    with Progress(transient=True) as progress:
        task = progress.add_task(f"sweep {cfg.name}", total=total)
        points = run_sweep(cfg, hw, wl, n_list, bws, l2s, mrams, objective, scope,
                           progress=lambda: progress.advance(task))
    if not points:
        raise McushardError(f"sweep: no plan of {cfg.name} fits on {hardware} at any point")
    csv_path = out / "sweep.csv"
    atomic_write(csv_path, to_csv(points).encode())
    return [csv_path] + plot(points, out, f"{cfg.name} on {hw.name} ({mode}, best {objective})")


def reproduce_cmd(hardware: str, as_json: bool) -> None:
    from rich.console import Console

    from mcushard.hardware.spec import load_hardware
    from mcushard.reproduce import figures, render

    hw = load_hardware(hardware)
    result = figures(hw)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        render(result, hw, Console())
