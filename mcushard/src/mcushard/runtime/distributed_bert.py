"""Run a tensor-parallel Plan of an int8 MobileBERT encoder on one process per chip.

`DistributedBert(plan, qb)` cuts the quantised encoder (`QuantBert`) into per-chip shards
(`bert_shard`) and runs `forward(ids)`: every chip walks its program (`bert_chip`), the group's
first chip returns the float32 hidden state [S, H], bit-identical to `BertInt8.forward`. Bytes sent
per link are recorded per forward, to be compared with the cost model's prompt of S tokens.
"""

from __future__ import annotations

import time

import numpy as np

from mcushard.runtime.bert import check_inputs
from mcushard.runtime.bert_chip import make_bert_chip
from mcushard.runtime.bert_shard import bert_shards
from mcushard.runtime.chips import ChipCluster
from mcushard.runtime.distributed import RunStats, plan_links


class DistributedBert:
    """An encoder backed by one process per chip; a context manager."""

    def __init__(self, plan, qb, group_size: int, timeout_s: float = 60.0) -> None:
        self.plan, self.cfg = plan, qb.cfg
        self.stats = RunStats()
        self.cluster = ChipCluster(plan.n_chips, plan_links(plan, group_size), make_bert_chip,
                                   bert_shards(plan, qb, group_size), timeout_s=timeout_s)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None) -> np.ndarray:
        """float32 [S, H] hidden state of the sequence."""
        ids, types, mask = check_inputs(self.cfg, input_ids, token_type_ids, attention_mask)
        t0 = time.perf_counter()
        replies = self.cluster.request(("forward", ids, types, mask > 0))
        self.stats.seconds += time.perf_counter() - t0
        self.stats.comm_s += sum(r["comm_s"] for r in replies)
        self.stats.busy_s += sum(r["step_s"] for r in replies)
        self.stats.link_bytes.append({(c, peer): b for c, r in enumerate(replies) for peer, b in r["sent"].items()})
        return next(r["hidden"] for r in replies if r["hidden"] is not None)

    def held(self) -> list[dict[str, int]]:
        return self.cluster.request(("held",))

    def close(self) -> None:
        self.cluster.close()

    def __enter__(self) -> DistributedBert:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
