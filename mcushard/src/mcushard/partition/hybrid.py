"""Hybrid split: tensor-parallel groups of `tp_size` chips, the groups pipelined over the layers."""

from __future__ import annotations

from mcushard.errors import McushardError
from mcushard.partition.plan import Plan
from mcushard.partition.tensor_parallel import Builder, stage_blocks


def hybrid(cfg, n_chips: int, tp_size: int, algorithm: str = "hierarchical", scope: str = "model") -> Plan:
    if tp_size < 1 or n_chips % tp_size:
        raise McushardError(f"hybrid: tensor-parallel group size {tp_size} does not divide {n_chips} chips")
    groups = [tuple(range(s, s + tp_size)) for s in range(0, n_chips, tp_size)]
    b = Builder(cfg, n_chips, algorithm, f"hybrid:{tp_size}x{len(groups)}", scope)
    stage_blocks(cfg, b, groups)
    return b.plan()


def default_tp_size(n_chips: int) -> int:
    """The largest divisor d of `n_chips` with d^2 <= 2 n_chips (8 chips -> 4x2, 64 -> 8x8)."""
    best = 1
    for d in range(1, n_chips + 1):
        if n_chips % d == 0 and d * d <= 2 * n_chips:
            best = d
    return best
