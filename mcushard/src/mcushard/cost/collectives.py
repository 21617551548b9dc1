"""All-reduce algorithms as explicit message schedules, and their time on a link topology.

A schedule is a list of rounds; a round is a list of messages `(src, dst, offset, elements,
reduce)` that run concurrently: `src` sends elements [offset, offset + elements) of its vector and
`dst` adds them into its own (`reduce`) or overwrites its own with them. The same schedule
tells a runtime whom to send what and tells the cost model what it costs, so both count the same
bytes.

- ring: reduce-scatter then all-gather, 2(p-1) rounds of one chunk (the vector split in p chunks).
- tree: binomial reduce to the first member, then binomial broadcast, 2 ceil(log2 p) rounds of the
  whole vector (few rounds: good for short vectors and high link latency).
- hierarchical (the paper's two-level idea, applied recursively): reduce-scatter inside sub-groups
  of `group_size` neighbouring chips, all-reduce each chunk among the sub-groups, all-gather back;
  bandwidth-optimal like the ring but with O(g log_g p) instead of O(p) latency-bound rounds.

Time of a round: the largest hop latency of its messages, plus the busiest chip's bytes over the
link bandwidth (send and receive overlap only on full-duplex links), plus the receivers' additions.
Links are not shared between concurrent multi-hop messages (no contention is modelled).
"""

from __future__ import annotations

import math
from functools import lru_cache

from mcushard.hardware.spec import ChipSpec, LinkSpec
from mcushard.partition.plan import split

Message = tuple[int, int, int, int, bool]  # (src, dst, first element, elements, receiver reduces)
Round = tuple[Message, ...]


def _chunks(n: int, p: int) -> list[tuple[int, int]]:
    """(offset, size) of the p chunks of an n-vector (empty chunks when n < p)."""
    if n >= p:
        return [(a, b - a) for a, b in split(n, p)]
    return [(i, 1) for i in range(n)] + [(n, 0)] * (p - n)


def _ring(group: tuple[int, ...], base: int, n: int, phases=(True, False)) -> list[Round]:
    """Reduce-scatter (member i ends owning chunk i+1) and/or all-gather, p-1 rounds each."""
    p = len(group)
    chunks = _chunks(n, p)
    rounds: list[Round] = []
    for reduce in phases:
        for s in range(p - 1):
            msgs = []
            for i in range(p):
                off, size = chunks[(i - s) % p if reduce else (i + 1 - s) % p]
                if size:
                    msgs.append((group[i], group[(i + 1) % p], base + off, size, reduce))
            rounds.append(tuple(msgs))
    return rounds


def _tree(group: tuple[int, ...], n: int) -> list[Round]:
    """Binomial reduce to the first member, then binomial broadcast back."""
    p, up, k = len(group), [], 1
    while k < p:
        up.append(tuple((group[i], group[i - k], 0, n, True) for i in range(k, p, 2 * k)))
        k *= 2
    down = [tuple((d, s, o, m, False) for s, d, o, m, _ in rnd) for rnd in reversed(up)]
    return up + down


def _merge(per_group: list[list[Round]]) -> list[Round]:
    """Run several independent schedules side by side, round by round."""
    depth = max((len(r) for r in per_group), default=0)
    return [tuple(m for rounds in per_group if i < len(rounds) for m in rounds[i]) for i in range(depth)]


def _hierarchical(group: tuple[int, ...], base: int, n: int, g: int) -> list[Round]:
    """Reduce-scatter inside sub-groups of g neighbours, all-reduce each chunk recursively among the
    members holding it (one per sub-group), all-gather inside sub-groups. Falls back to a ring when
    the group does not split into equal sub-groups."""
    p = len(group)
    if p <= g or p % g or g < 2:
        return _ring(group, base, n)
    subs = [group[i:i + g] for i in range(0, p, g)]
    chunks = _chunks(n, g)
    rs = _merge([_ring(s, base, n, (True,)) for s in subs])
    mid = _merge([_hierarchical(tuple(s[j] for s in subs), base + chunks[(j + 1) % g][0], chunks[(j + 1) % g][1], g)
                  for j in range(g) if chunks[(j + 1) % g][1]])
    ag = _merge([_ring(s, base, n, (False,)) for s in subs])
    return rs + mid + ag


@lru_cache(maxsize=4096)
def schedule(algorithm: str, group: tuple[int, ...], n: int, group_size: int = 4) -> tuple[Round, ...]:
    """Rounds of messages that all-reduce an `n`-element vector over `group`."""
    if len(group) <= 1 or n <= 0:
        return ()
    if algorithm == "ring":
        return tuple(_ring(group, 0, n))
    if algorithm == "tree":
        return tuple(_tree(group, n))
    if algorithm == "hierarchical":
        return tuple(_hierarchical(group, 0, n, group_size))
    raise ValueError(f"unknown all-reduce algorithm {algorithm!r}")


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
    """Columns of the most square rows x cols grid holding exactly n_chips (8 -> 2 x 4)."""
    rows = max(r for r in range(1, math.isqrt(n_chips) + 1) if n_chips % r == 0)
    return n_chips // rows


@lru_cache(maxsize=65536)
def round_time(rnd: Round, elem_bytes: int, link: tuple, add_ops_per_s: float, n_chips: int) -> float:
    """`link` is `link_key(LinkSpec)`: (bandwidth, latency, topology, full_duplex)."""
    bandwidth, latency, topology, full_duplex = link
    sent: dict[int, int] = {}
    recv: dict[int, int] = {}
    reduced: dict[int, int] = {}
    worst_latency = 0.0
    for src, dst, _, n, red in rnd:
        sent[src] = sent.get(src, 0) + n * elem_bytes
        recv[dst] = recv.get(dst, 0) + n * elem_bytes
        if red:
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
        for src, dst, _, k, _ in rnd:
            pairs[(src, dst)] = pairs.get((src, dst), 0) + k * elem_bytes
            hop_bytes += k * elem_bytes * hops(link[2], n_chips, src, dst)
    return total, tuple(pairs.items()), hop_bytes
