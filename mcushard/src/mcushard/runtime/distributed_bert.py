"""Run a tensor-parallel Plan of an int8 MobileBERT encoder on one process per chip.

`DistributedBert(plan, qb)` cuts the quantised encoder (`QuantBert`) into per-chip shards
(`bert_shard`) and runs `forward(ids)`: every chip walks its program (`bert_chip`), the group's
first chip returns the float32 hidden state [S, H], bit-identical to `BertInt8.forward`. Bytes sent
per link are recorded per forward, to be compared with the cost model's prompt of S tokens.
"""

from __future__ import annotations

import numpy as np

from mcushard.runtime.bert import check_inputs
from mcushard.runtime.bert_chip import make_bert_chip
from mcushard.runtime.bert_shard import bert_shards
from mcushard.runtime.distributed import ClusterModel


class DistributedBert(ClusterModel):
    """An encoder backed by one process per chip; a context manager."""

    def __init__(self, plan, qb, group_size: int, timeout_s: float = 60.0) -> None:
        super().__init__(plan, qb.cfg, make_bert_chip, bert_shards(plan, qb, group_size), group_size, timeout_s)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None) -> np.ndarray:
        """float32 [S, H] hidden state of the sequence."""
        ids, types, mask = check_inputs(self.cfg, input_ids, token_type_ids, attention_mask)
        replies = self._request("forward", ids, types, mask > 0)
        return next(r["hidden"] for r in replies if r["hidden"] is not None)
