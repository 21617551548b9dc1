"""Distributed int8 MobileBERT: bit-identical to BertInt8, only own int8 slices, bytes as the cost model."""

import numpy as np
import pytest
from typer.testing import CliRunner

from mcushard.cli import app
from mcushard.cost.simulate import simulate
from mcushard.errors import McushardError
from mcushard.hardware.spec import load_hardware
from mcushard.model.config import get_preset
from mcushard.model.weights import random_weights
from mcushard.partition import make_plan
from mcushard.placement import workload
from mcushard.runtime.bert_int8 import BertInt8, calibration_inputs, quantize_bert
from mcushard.runtime.bert_shard import bert_shards
from mcushard.runtime.distributed_bert import DistributedBert


def _setup(name: str, seq_len: int):
    cfg = get_preset(name)
    ids = calibration_inputs(cfg, 1, seq_len, 5)[0]
    qb = quantize_bert(cfg, random_weights(cfg, 0), 12, inputs=[ids])
    return qb, ids, BertInt8(qb).forward(ids)


@pytest.fixture(scope="module")
def tiny():
    return _setup("tiny-mobilebert-test", 12)


@pytest.fixture(scope="module")
def hw():
    return load_hardware("siracusa")


def _int8_bytes(plan, qb, chip):
    """The plan's bytes on `chip` of the tensors the integer model keeps in int8."""
    names = {n + ".weight" for n in qb.q}
    return sum(b for t, b in plan.tensor_bytes(chip).items() if t in names)


def _check(qb, ids, expected, hw, n, algorithm):
    plan = make_plan(qb.cfg, n, "tp", algorithm)
    with DistributedBert(plan, qb, hw.group_size, timeout_s=120) as dist:
        np.testing.assert_array_equal(dist.forward(ids), expected)  # bit-identical
        held = dist.held()
        sent = dist.stats.link_bytes[0]
    charged = simulate(plan, hw, workload(qb.cfg, "prompt", seq_len=len(ids))).link_bytes_per_pair
    assert sent == {k: v for k, v in charged.items() if v}
    for chip, h in enumerate(held):
        assert h["int8_bytes"] == _int8_bytes(plan, qb, chip)


@pytest.mark.parametrize("n,algorithm", [(1, "ring"), (2, "tree"), (3, "hierarchical"), (4, "ring"),
                                         (8, "hierarchical")])  # 3: uneven; 8 > 4 heads: head_dim split
def test_tiny_mobilebert_bit_identical(tiny, hw, n, algorithm):
    _check(*tiny, hw, n, algorithm)


def test_mobilebert_bit_identical_on_8_chips(hw):
    qb, ids, expected = _setup("mobilebert", 8)
    _check(qb, ids, expected, hw, 8, "hierarchical")


def test_plain_bert_is_refused(hw):
    cfg = get_preset("tiny-bert-test")
    qb = quantize_bert(cfg, random_weights(cfg, 0), 12, inputs=[np.arange(6)])
    with pytest.raises(McushardError, match="MobileBERT"):
        bert_shards(make_plan(cfg, 2), qb, hw.group_size)


def test_cli_run_encoder():
    result = CliRunner().invoke(app, ["run", "tiny-mobilebert-test", "--chips", "4", "--steps", "10"])
    assert result.exit_code == 0, result.output
    assert "identical to the single-chip int8 encoder: yes" in result.stderr
    assert "equal the cost model's" in result.stderr and ": yes" in result.stderr
