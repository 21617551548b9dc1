"""Shared-memory links in one process: both ends of a channel (copies with their own slot position)."""

import copy
import multiprocessing as mp

import numpy as np
import pytest

from mcushard.runtime.links import SLOTS, Links, link_channels


def _pair():
    """Links of chips 0 and 1 joined by one link, as two processes would hold them."""
    ends = link_channels(mp.get_context("spawn"), 2, [(0, 1)])
    a = Links(0, ends[0][0], ends[0][1])
    b = Links(1, {p: copy.copy(c) for p, c in ends[1][0].items()}, {p: copy.copy(c) for p, c in ends[1][1].items()})
    return a, b


def test_routes_send_add_and_count_like_plain_messages():
    a, b = _pair()
    out, back = a.route(1, True, np.dtype(np.int32), 5), b.route(0, False, np.dtype(np.int32), 5)
    into = np.arange(5, dtype=np.int32)
    for i in range(3 * SLOTS):  # around the ring of slots several times, mixed with plain messages
        out.send(np.full(5, i, np.int32))
        back.recv(into, reduce=True)
        a.send(1, np.array([i, -i], np.int64))
        np.testing.assert_array_equal(b.recv(0), [i, -i])
    np.testing.assert_array_equal(into, np.arange(5) + sum(range(3 * SLOTS)))
    out.send(np.array([1, 5, 2, 7, 3], np.int32))
    back.recv(into)  # overwrite
    np.testing.assert_array_equal(into, [1, 5, 2, 7, 3])
    out.send(np.array([9, 0, 9, 0, 9], np.int32))
    back.recv(into, reduce=True, combine=np.maximum)
    np.testing.assert_array_equal(into, [9, 5, 9, 7, 9])
    assert a.bytes_sent[1] == (3 * SLOTS + 2) * 5 * 4 + 3 * SLOTS * 2 * 8


def test_route_refuses_a_message_of_another_shape():
    a, b = _pair()
    a.send(1, np.zeros(4, np.int32))
    with pytest.raises(RuntimeError, match=r"int32 \(4,\) where int32 \(5,\) was expected"):
        b.route(0, False, np.dtype(np.int32), 5).recv(np.zeros(5, np.int32))


def test_all_reduce_refuses_values_beyond_its_wire_format():
    from mcushard.errors import McushardError
    from mcushard.partition.plan import AllReduce
    from mcushard.runtime.chip_program import ChipProgram

    a, _ = _pair()
    chip = ChipProgram(a, 2, None)
    step = AllReduce(block="layers.0", label="attn.out", group=(0, 1), elements=3, elem_bytes=4, algorithm="tree")
    with pytest.raises(McushardError, match="exceeds the 32-bit wire format over 2 chips"):
        chip.allreduce(step, np.array([0, 2**30, -5], np.int64))  # sums of 2 such int32 values may wrap
    with pytest.raises(McushardError, match="exceeds the 32-bit wire format over 2 chips"):
        chip.allreduce(step, np.array([0, -2**30, 5], np.int64))
    with pytest.raises(McushardError, match="exceeds"):  # a bound that does not prove the range: scanned
        chip.allreduce(step, np.array([0, -2**30, 5], np.int64), proven_max=2**40)
