"""Time of all-reduce schedules (`partition.collectives`) on a link topology.

Time of a round: the largest hop latency of its messages, plus the busiest chip's bytes over the
link bandwidth (send and receive overlap only on full-duplex links), plus the receivers' int32
additions. Concurrent multi-hop messages do not contend for links (not modelled).
"""

from __future__ import annotations

import math
from functools import lru_cache

from mcushard.hardware.spec import ChipSpec, LinkSpec
from mcushard.partition.collectives import Round, schedule


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


@lru_cache(maxsize=65536)
def round_time(rnd: Round, elem_bytes: int, link: tuple, add_ops_per_s: float, n_chips: int) -> float:
    """`link` is `link_key(LinkSpec)`: (bandwidth, latency, topology, full_duplex)."""
    bandwidth, latency, topology, full_duplex = link
    sent: dict[int, int] = {}
    recv: dict[int, int] = {}
    reduced: dict[int, int] = {}
    worst_latency = 0.0
    for src, dst, start, stop, op in rnd:
        n = stop - start
        sent[src] = sent.get(src, 0) + n * elem_bytes
        recv[dst] = recv.get(dst, 0) + n * elem_bytes
        if op == "reduce":
            reduced[dst] = reduced.get(dst, 0) + n
        worst_latency = max(worst_latency, hops(topology, n_chips, src, dst) * latency)
    busy = 0
    for c in set(sent) | set(recv):
        s, r = sent.get(c, 0), recv.get(c, 0)
        busy = max(busy, max(s, r) if full_duplex else s + r)
    return worst_latency + busy / bandwidth + max(reduced.values(), default=0) / add_ops_per_s


def link_key(link: LinkSpec) -> tuple:
    return (link.bandwidth_bytes_per_s, link.latency_s, link.topology, link.full_duplex)


def add_rate(chip: ChipSpec) -> float:
    """int32 additions per second of the receiver's reduction: one per core-cycle x utilisation."""
    return chip.cores * chip.freq_hz * chip.utilisation.elementwise


@lru_cache(maxsize=65536)
def allreduce_cost(algorithm: str, group: tuple[int, ...], n: int, elem_bytes: int, link: tuple,
                   add_ops_per_s: float, n_chips: int, group_size: int) -> tuple[float, tuple, int]:
    """(seconds, ((src, dst), bytes) per link direction, link-hop bytes) of one all-reduce."""
    total = 0.0
    pairs: dict[tuple[int, int], int] = {}
    hop_bytes = 0
    for rnd in schedule(algorithm, group, n, group_size):
        total += round_time(rnd, elem_bytes, link, add_ops_per_s, n_chips)
        for src, dst, start, stop, _ in rnd:
            pairs[(src, dst)] = pairs.get((src, dst), 0) + (stop - start) * elem_bytes
            hop_bytes += (stop - start) * elem_bytes * hops(link[2], n_chips, src, dst)
    return total, tuple(pairs.items()), hop_bytes
