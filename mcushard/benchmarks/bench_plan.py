"""Planning + costing speed: tinyllama-42m on 8 chips, and the whole 1..64-chip sweep.

    python mcushard/benchmarks/bench_plan.py

Targets (issue): plan + simulate of tinyllama-42m on 8 chips <= 50 ms; the sweep over 1..64 chips
(tp / pp / hybrid per point, best latency) <= 2 s. Times are the best of several cold runs (cached
all-reduce schedules cleared) in CPU seconds of this process (the machine is shared, so wall time
says more about the neighbours than about this code), printed as ratios to the targets and to a
baseline measured in the same run: costing the 8-chip plan again without rebuilding it (so the
plan-building share is visible).
"""

from __future__ import annotations

import time

from mcushard.cost.collectives import allreduce_cost, hop_table
from mcushard.cost.simulate import simulate
from mcushard.hardware.spec import load_hardware
from mcushard.model.config import get_preset
from mcushard.partition import make_plan
from mcushard.partition.collectives import local_schedule, schedule
from mcushard.placement import workload
from mcushard.sweep import run_sweep

TARGET_PLAN_S = 0.050
TARGET_SWEEP_S = 2.0


def _cold() -> None:
    """Forget cached all-reduce schedules and costs, so every timed run starts cold."""
    for fn in (schedule, local_schedule, allreduce_cost, hop_table):
        fn.cache_clear()


def _cpu(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        _cold()
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    hw = load_hardware("siracusa")
    cfg = get_preset("tinyllama-42m")
    wl = workload(cfg, "decode", kv_len=128)
    simulate(make_plan(cfg, 8), hw, wl)  # warm imports and caches
    plan = make_plan(cfg, 8)
    baseline = _cpu(lambda: simulate(plan, hw, wl), 20)
    plan_sim = _cpu(lambda: simulate(make_plan(cfg, 8), hw, wl), 20)
    sweep = _cpu(lambda: run_sweep(cfg, hw, wl, list(range(1, 65)), [0.0], [0], [0]), 3)
    print(f"baseline (re-cost the 8-chip plan):     {baseline * 1e3:8.2f} ms CPU")
    print(f"plan + simulate tinyllama-42m, 8 chips: {plan_sim * 1e3:8.2f} ms CPU  "
          f"= {plan_sim / TARGET_PLAN_S:.2f}x the 50 ms target, {plan_sim / baseline:.1f}x baseline")
    print(f"sweep 1..64 chips x (tp, pp, hybrid):   {sweep:8.3f} s CPU   "
          f"= {sweep / TARGET_SWEEP_S:.2f}x the 2 s target, {sweep / baseline:.0f}x baseline")


if __name__ == "__main__":
    main()
