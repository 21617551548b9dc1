"""Time of all-reduce schedules (`partition.collectives`) on a link topology.

Time of a round: the largest hop latency of its messages, plus the busiest chip's bytes over the
link bandwidth (send and receive overlap only on full-duplex links), plus the busiest receiver's
int32 additions; an all-reduce is the sum of its rounds. Concurrent multi-hop messages do not
contend for links (not modelled).
"""

from __future__ import annotations

import math
from functools import lru_cache

from mcushard.hardware.spec import ChipSpec, LinkSpec
from mcushard.partition.collectives import local_schedule


def hops(topology: str, n_chips: int, a: int, b: int) -> int:
    """Links a message crosses between chips `a` and `b`."""
    if topology == "full":
        return 1
    if topology == "star":
        return 2
    if topology == "ring":
        d = abs(a - b)
        return min(d, n_chips - d)
    cols = _mesh_cols(n_chips)  # mesh2d, row-major
    return abs(a // cols - b // cols) + abs(a % cols - b % cols)


@lru_cache(maxsize=256)
def _mesh_cols(n_chips: int) -> int:
    """Columns of the grid: the most square exact rows x cols (8 -> 2 x 4) when no more than twice as
    wide as tall, else ceil(sqrt(n)) columns with a partial last row (61 -> 8 columns)."""
    rows = max(r for r in range(1, math.isqrt(n_chips) + 1) if n_chips % r == 0)
    cols = n_chips // rows
    return cols if cols <= 2 * rows else math.ceil(math.sqrt(n_chips))


@lru_cache(maxsize=512)
def hop_table(topology: str, n_chips: int) -> tuple[tuple[int, ...], ...]:
    """hops(topology, n_chips, a, b) for every pair, as table[a][b]."""
    return tuple(tuple(hops(topology, n_chips, a, b) for b in range(n_chips)) for a in range(n_chips))


def link_key(link: LinkSpec) -> tuple:
    return (link.bandwidth_bytes_per_s, link.latency_s, link.topology, link.full_duplex)


def add_rate(chip: ChipSpec) -> float:
    """int32 additions per second of the receiver's reduction: one per core-cycle x utilisation."""
    return chip.cores * chip.freq_hz * chip.utilisation.elementwise


@lru_cache(maxsize=65536)
def allreduce_cost(algorithm: str, group: tuple[int, ...], n: int, elem_bytes: int, link: tuple,
                   add_ops_per_s: float, n_chips: int, group_size: int) -> tuple[float, tuple, int]:
    """(seconds, ((src, dst), bytes) per link direction, link-hop bytes) of one all-reduce.

    `link` is `link_key(LinkSpec)`: (bandwidth, latency, topology, full_duplex)."""
    bandwidth, latency, topology, full_duplex = link
    table = hop_table(topology, n_chips)
    total = 0.0
    pairs: dict[tuple[int, int], int] = {}
    hop_bytes = 0
    for rnd in local_schedule(algorithm, len(group), n, group_size):
        sent: dict[int, int] = {}
        recv: dict[int, int] = {}
        reduced: dict[int, int] = {}
        worst_hops = 0
        for i, j, start, stop, op in rnd:
            src, dst = group[i], group[j]
            k = stop - start
            nbytes = k * elem_bytes
            sent[src] = sent.get(src, 0) + nbytes
            recv[dst] = recv.get(dst, 0) + nbytes
            if op == "reduce":
                reduced[dst] = reduced.get(dst, 0) + k
            h = table[src][dst]
            worst_hops = max(worst_hops, h)
            pairs[(src, dst)] = pairs.get((src, dst), 0) + nbytes
            hop_bytes += nbytes * h
        if full_duplex:
            busy = max(max(sent.values()), max(recv.values()))
        else:
            busy = max(sent.get(c, 0) + recv.get(c, 0) for c in sent.keys() | recv.keys())
        total += worst_hops * latency + busy / bandwidth + max(reduced.values(), default=0) / add_ops_per_s
    return total, tuple(pairs.items()), hop_bytes
