"""The threaded epoch: env shards and the critic's fit in threads compute what the one-program epoch does."""

from __future__ import annotations

import dataclasses
import threading

import jax
import numpy as np
import pytest
from test_shac import TOY, _leaves_equal
from toy_env import toy_task

from sharprl import schedule, shac
from sharprl.errors import SharprlError


def _close(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)  # same maths, other float rounding


@pytest.mark.parametrize("sharpness", [None, "sam"])
def test_sharded_threaded_epoch_equals_the_one_program_epoch(sharpness):
    task, cfg = toy_task(), dataclasses.replace(TOY, sharpness=sharpness, rho=0.1)
    one = shac.Learner(cfg, task, shards=1)
    two = shac.Learner(cfg, task, shards=2)  # private: its compiled parts get instrumented
    threads: dict[str, set] = {"forward": set(), "critic": set()}
    runner = two.epoch_fn
    for part in threads:
        original = getattr(runner, part)

        def record(*args, _part=part, _original=original):
            threads[_part].add(threading.current_thread().name)
            return _original(*args)

        setattr(runner, part, record)
    whole = jax.jit(one.epoch)
    s_two = s_one = s_whole = one.init(jax.random.PRNGKey(4))
    for _ in range(3):
        s_two, m_two = two.epoch_fn(s_two)
        s_one, m_one = one.epoch_fn(s_one)
        s_whole, m_whole = whole(s_whole)
    assert int(s_two.epoch) == 3 and not _leaves_equal(s_two.actor_params, one.init(jax.random.PRNGKey(4)).actor_params)
    _close(s_two, s_whole)
    again = one.init(jax.random.PRNGKey(4))
    for _ in range(3):
        again, _ = two.epoch_fn(again)
    assert _leaves_equal(again, s_two)  # threads or not, a rerun gives the same numbers bit for bit
    _close(s_one, s_whole)
    _close(m_two, m_whole)
    assert len(threads["forward"]) == 2 and all(t.startswith("sharprl-shard") for t in threads["forward"])
    assert threads["critic"] == {"sharprl-critic_0"}  # beside the shards' backward passes
    for part in (runner.prepare, runner.backward, runner.shard_grad if sharpness else runner.actor, runner.combine):
        assert part._cache_size() == 1  # compiled once: shard index traced, the epoch's output feeds the next


def test_shard_counts_must_split_the_envs_evenly():
    assert schedule.check_shards(16, 4) == 4 and 16 % schedule.check_shards(16, None) == 0
    assert schedule.default_shards(7) in (1, 7)  # 7 envs: one shard, or one per env on 7+ cores
    for bad in (0, 3, 32):
        with pytest.raises(SharprlError, match="equal shards"):
            shac.Learner(TOY, toy_task(), shards=bad)
