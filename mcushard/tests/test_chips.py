"""The chip-process layer: all-reduce schedules executed by real processes, failures, byte counts."""

import os
import time

import numpy as np
import pytest

from mcushard.errors import McushardError
from mcushard.partition.collectives import ALGORITHMS, bytes_sent, edges, schedule
from mcushard.runtime.chips import ChipCluster, all_reduce, chip_cpus
from mcushard.runtime.links import SLOT_BYTES, SLOTS


class _Reducer:
    def __init__(self, chip, links, init):
        self.links, self.vector = links, init
        self.group = None

    def handle(self, request):
        if isinstance(request, tuple):  # ("reduce", algorithm)
            self.links.bytes_sent.clear()
            rounds = schedule(request[1], self.group, len(self.vector))
            return all_reduce(self.links, rounds, self.vector), dict(self.links.bytes_sent)
        if request == "die":
            os._exit(3)
        if request == "hang":
            time.sleep(60)
        if request == "raise":
            raise ValueError("boom")
        if isinstance(request, int):  # the group size
            self.group = tuple(range(request))
            return None
        if request == "pid":
            return os.getpid()
        if request == "wait_peer":  # blocks on a link no peer sends on
            return self.links.recv((self.links.chip + 1) % len(self.group))
        if request == "long":  # a vector longer than a link's buffer: multi-slot messages, sender thread
            rounds = schedule("ring", self.group, LONG)
            return all_reduce(self.links, rounds, np.full(LONG, self.links.chip + 1, np.int32))
        raise AssertionError(request)


def _make(chip, links, init):
    return _Reducer(chip, links, init)


LENGTH = 37
LONG = SLOTS * SLOT_BYTES  # int32 elements: each ring chunk of 3 chips spans several slots


def _cluster(n, timeout_s=20.0, seed=None):
    rng = np.random.default_rng(n if seed is None else seed)
    links = set().union(*(edges(schedule(a, tuple(range(n)), LENGTH)) for a in ALGORITHMS))
    vectors = [rng.integers(-2**20, 2**20, size=LENGTH, dtype=np.int32) for _ in range(n)]
    return ChipCluster(n, links, _make, vectors, timeout_s=timeout_s), vectors


@pytest.mark.parametrize("n", [1, 3, 8])
def test_all_reduce_is_exact_and_bytes_match_schedule(n):
    cluster, vectors = _cluster(n)
    expected = np.sum(vectors, axis=0, dtype=np.int32)
    with cluster:
        cluster.request(n)
        for algorithm in ALGORITHMS:
            replies = cluster.request(("reduce", algorithm))
            for result, _ in replies:
                np.testing.assert_array_equal(result, expected)
            counted = {(c, peer): b for c, (_, sent) in enumerate(replies) for peer, b in sent.items()}
            assert counted == bytes_sent(schedule(algorithm, tuple(range(n)), LENGTH), 4)


def test_schedule_covers_vector_shorter_than_group():
    rounds = schedule("ring", tuple(range(8)), 3)
    assert all(t.elements > 0 for r in rounds for t in r)


def test_unknown_algorithm_is_a_clear_error():
    with pytest.raises(McushardError, match="unknown algorithm"):
        schedule("butterfly", (0, 1), 4)


@pytest.mark.parametrize("request_kind,message", [("die", "died"), ("hang", "did not answer"), ("raise", "boom")])
def test_failing_chip_is_reported_and_no_process_survives(request_kind, message):
    cluster, _ = _cluster(3, timeout_s=3.0)
    pids = cluster.request("pid")
    with pytest.raises(McushardError, match=message):
        cluster.request([request_kind, "pid", "pid"])
    time.sleep(0.2)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    cluster.close()  # idempotent


def test_chip_exits_when_host_connection_closes():
    cluster, _ = _cluster(2)
    for conn in cluster._control:
        conn.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        alive = [p for p in cluster._procs if p.is_alive()]
        if not alive:
            break
        time.sleep(0.1)
    assert not [p for p in cluster._procs if p.is_alive()], "chips outlived their host connection"
    cluster.close()


def test_long_vectors_cross_links_in_several_slots():
    cluster, _ = _cluster(3)
    with cluster:
        cluster.request(3)
        for result in cluster.request("long"):
            np.testing.assert_array_equal(result, np.full(LONG, 1 + 2 + 3, np.int32))


def test_chip_blocked_on_a_link_leaves_when_host_goes():
    cluster, _ = _cluster(2)
    cluster.request(2)
    for conn in cluster._control:
        conn.send("wait_peer")  # both chips now wait on each other's link
    time.sleep(0.3)
    for conn in cluster._control:
        conn.close()
    deadline = time.time() + 10
    while time.time() < deadline and any(p.is_alive() for p in cluster._procs):
        time.sleep(0.1)
    assert not [p for p in cluster._procs if p.is_alive()], "chips blocked on links outlived their host"
    cluster.close()


def test_chips_share_cpus_in_contiguous_blocks():
    assert chip_cpus(8, [0, 1]) == [{0}] * 4 + [{1}] * 4
    assert chip_cpus(3, [2, 5, 7, 9]) == [{2}, {5}, {7}]
    assert chip_cpus(2, []) == [set(), set()]


def test_two_clusters_at_once_keep_their_own_links():
    first, vectors = _cluster(3)
    second, others = _cluster(3, seed=1)
    with first, second:
        first.request(3)
        second.request(3)
        for _ in range(20):  # both clusters reduce at the same time
            for cluster in (first, second):
                for conn in cluster._control:
                    conn.send(("reduce", "ring"))
            for cluster, vs in ((first, vectors), (second, others)):
                for result, _ in cluster._gather(expect="ok"):
                    np.testing.assert_array_equal(result, np.sum(vs, axis=0, dtype=np.int32))
