"""Pipeline split: consecutive layers on consecutive chips, the residual stream sent between them.

One chip per stage (embedding on the first, head on the last). For one autoregressive stream a
token visits the stages one after another, so N chips give no parallelism: only the memory effect
(each chip's layers fit on-chip) remains, which is why tensor parallelism wins for decoding. In
prompt mode the cost model streams micro-batches through the stages.
"""

from __future__ import annotations

from mcushard.errors import McushardError
from mcushard.partition.plan import Plan
from mcushard.partition.tensor_parallel import Builder, stage_blocks


def pipeline(cfg, n_chips: int, algorithm: str = "hierarchical", scope: str = "model") -> Plan:
    if n_chips < 1:
        raise McushardError(f"need at least one chip, got {n_chips}")
    b = Builder(cfg, n_chips, algorithm, "pp", scope)
    stage_blocks(cfg, b, [(c,) for c in range(n_chips)])
    return b.plan()
