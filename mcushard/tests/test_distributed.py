"""Distributed int8 decode: bit-identical to the single chip, only own slices, bytes as the cost model."""

import os
import signal

import numpy as np
import pytest
from typer.testing import CliRunner

from mcushard.cli import app
from mcushard.errors import McushardError
from mcushard.hardware.spec import load_hardware
from mcushard.model.config import get_preset
from mcushard.model.weights import random_weights
from mcushard.partition import make_plan
from mcushard.runtime.chip_program import _arrays, pack_argmax, unpack_argmax
from mcushard.runtime.distributed import DistributedLlama, cost_model_link_bytes
from mcushard.runtime.int8 import LlamaInt8
from mcushard.runtime.llama_shard import llama_shards
from mcushard.runtime.quant import quantize_llama

STEPS = 6
CALIB = [[1] + list(range(5, 40))]  # a short teacher-forced calibration: fast, and the same for both sides


def _reference(ref: LlamaInt8, steps: int):
    single = LlamaInt8(ref.qm)
    token, tokens, logits = 1, [], []
    for pos in range(steps):
        out = single.step(token, pos)
        token = int(np.argmax(out))
        tokens.append(token)
        logits.append(out)
    return tokens, logits


@pytest.fixture(scope="module")
def small(stories260k):
    cfg, weights = stories260k
    ref = LlamaInt8(quantize_llama(cfg, weights, "w8a12-rtn", sequences=CALIB))
    return ref, _reference(ref, STEPS)


@pytest.fixture(scope="module")
def hw():
    return load_hardware("siracusa")


def _check_run(plan, ref, expected, hw, steps):
    tokens, logits = expected
    with DistributedLlama(plan, ref, hw.group_size, timeout_s=120) as dist:
        token = 1
        for pos in range(steps):
            out = dist.step(token, pos)
            np.testing.assert_array_equal(out, logits[pos])  # bit-identical logits
            token = int(np.argmax(out))
            assert token == tokens[pos]
        held = dist.held()
        assert dist.greedy(steps) == tokens  # the chips alone, each fed the argmax all-reduce's token
        per_step = dist.stats.link_bytes
    assert len(per_step) == 2 * steps
    for chip, h in enumerate(held):  # counted by the chip process from what it holds
        assert h["weight_elements"] == plan.bytes_held(chip)
    for pos, sent in enumerate(per_step):  # counted by the chip processes on their links
        assert sent == cost_model_link_bytes(plan, hw, pos % steps), f"position {pos % steps}"


@pytest.mark.parametrize("n,strategy,algorithm", [
    (1, "tp", "hierarchical"), (2, "tp", "tree"), (4, "tp", "hierarchical"),
    (8, "tp", "hierarchical"),  # 8 chips > 4 KV heads: head_dim split, scores all-reduced
    (3, "tp", "ring"), (5, "tp", "hierarchical"),  # uneven heads and FFN rows
    (4, "pp", "ring"), (8, "hybrid", "tree"),
])
def test_stories260k_bit_identical(small, hw, n, strategy, algorithm):
    ref, expected = small
    _check_run(make_plan(ref.cfg, n, strategy, algorithm), ref, expected, hw, STEPS)


def test_greedy_on_the_chips_across_requests(small, hw, monkeypatch):
    """The chips' own greedy loop, cut into requests of 4 tokens: the token and position carry over."""
    import mcushard.runtime.distributed as distributed

    ref, (tokens, _) = small
    monkeypatch.setattr(distributed, "GREEDY_CHUNK", 4)
    with DistributedLlama(make_plan(ref.cfg, 4, "tp", "tree"), ref, hw.group_size, timeout_s=120) as dist:
        assert dist.chips_know_token
        assert dist.greedy(STEPS) == tokens
        assert len(dist.stats.link_bytes) == STEPS


@pytest.fixture(scope="module")
def tinyllama42m():
    cfg = get_preset("tinyllama-42m")
    ref = LlamaInt8(quantize_llama(cfg, random_weights(cfg, 0), "w8a12-rtn", sequences=[[1, 7, 99, 4000]]))
    return ref, _reference(ref, 2)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_tinyllama42m_shape_bit_identical(tinyllama42m, hw, n):
    ref, expected = tinyllama42m
    _check_run(make_plan(ref.cfg, n, "tp", "hierarchical"), ref, expected, hw, 2)


@pytest.mark.parametrize("n,strategy", [(1, "tp"), (8, "tp"), (5, "tp"), (4, "pp"), (8, "hybrid")])
def test_chip_is_given_only_its_slices(small, n, strategy):
    ref, _ = small
    plan = make_plan(ref.cfg, n, strategy)
    shards = llama_shards(plan, ref, 2)
    total = 0
    for chip, shard in enumerate(shards):
        arrays = list(_arrays(shard))
        int8 = sum(a.nbytes for a in arrays if a.dtype == np.int8)
        gains = sum(a.size for a in arrays if a.dtype == np.int16)
        assert int8 + gains == plan.bytes_held(chip)  # not one weight more than the plan gives it
        total += int8
    distinct = sum(q.size for name, q in ref.qm.q.items() if name != "cls" or not ref.cfg.shared_classifier)
    assert total == distinct  # every int8 weight on exactly one chip


def test_argmax_keys_order_like_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(50).astype(np.float32)
    logits[[7, 31]] = logits.max() + 1  # a tie: the lower index wins, as np.argmax
    logits[3] = -0.0
    keys = [pack_argmax(logits[a:b], a, 50) for a, b in ((0, 20), (20, 35), (35, 50))]
    assert unpack_argmax(np.maximum.reduce(keys), 50) == int(np.argmax(logits)) == 7


def test_dead_chip_is_a_clear_error(small, hw):
    ref, _ = small
    dist = DistributedLlama(make_plan(ref.cfg, 2, "tp", "ring"), ref, hw.group_size, timeout_s=10)
    pids = [p.pid for p in dist.cluster._procs]
    dist.step(1, 0)
    os.kill(pids[1], signal.SIGKILL)
    with pytest.raises(McushardError, match="chip 1 died"):
        dist.step(1, 1)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    dist.close()


def test_cli_run_tokens_and_summary():
    result = CliRunner().invoke(app, ["run", "tiny-llama-test", "--chips", "2", "--steps", "3",
                                      "--scheme", "w8a12-rtn", "--tokens", "--algorithm", "tree"])
    assert result.exit_code == 0, result.output
    assert "tokens/s" in result.stderr and "equal the cost model's, every token and link: yes" in result.stderr
    assert result.stdout.strip().startswith("[") and len(result.stdout.strip().strip("[]").split(",")) == 3


def test_cli_run_bad_input():
    result = CliRunner().invoke(app, ["run", "stories260k", "--chips", "3", "--strategy", "diagonal"])
    assert result.exit_code != 0
