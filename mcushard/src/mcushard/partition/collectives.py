"""All-reduce algorithms as data: the exact list of transfers each algorithm makes.

One schedule serves both sides of the tool: the cost model charges its bytes and rounds, and the
distributed runtime carries it out message by message, so the bytes the runtime sends are the bytes
the cost model charges.

A schedule is a list of rounds; in a round every transfer may proceed at once. A transfer moves the
elements `[start, stop)` of the vector from `src` to `dst`, which either adds them into its own copy
(`reduce`) or overwrites its copy with them (`copy`).

- ring: reduce-scatter then all-gather around the group, 2 (p - 1) rounds of n / p elements.
- tree: binomial-tree reduce of the whole vector to the leader, then the reverse broadcast,
  2 ceil(log2 p) rounds.
- hierarchical: chips in groups of `group_size` (the chips of one board / one link segment): tree
  reduce inside each group to its leader, ring all-reduce among the leaders, tree broadcast inside
  each group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mcushard.errors import McushardError

Algorithm = Literal["ring", "tree", "hierarchical"]
ALGORITHMS: tuple[str, ...] = ("ring", "tree", "hierarchical")


@dataclass(frozen=True, slots=True)
class Transfer:
    src: int  # sending chip
    dst: int  # receiving chip
    start: int  # first element sent
    stop: int  # one past the last element sent
    op: Literal["reduce", "copy"]  # what the receiver does with the elements

    @property
    def elements(self) -> int:
        return self.stop - self.start


Round = tuple[Transfer, ...]


def chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """`n` elements in `parts` contiguous chunks (some empty when n < parts)."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def ring_schedule(group: tuple[int, ...], n: int) -> list[Round]:
    p = len(group)
    if p == 1:
        return []
    parts = chunks(n, p)
    rounds: list[Round] = []
    for step in range(p - 1):  # reduce-scatter: member i ends owning chunk (i + 1) % p
        rounds.append(tuple(
            Transfer(group[i], group[(i + 1) % p], *parts[(i - step) % p], "reduce") for i in range(p)))
    for step in range(p - 1):  # all-gather
        rounds.append(tuple(
            Transfer(group[i], group[(i + 1) % p], *parts[(i + 1 - step) % p], "copy") for i in range(p)))
    return [tuple(t for t in r if t.elements) for r in rounds if any(t.elements for t in r)]


def tree_reduce(group: tuple[int, ...], n: int) -> list[Round]:
    """Binomial tree: in round d, member i (i % 2d == d) sends to member i - d."""
    rounds, d, p = [], 1, len(group)
    while d < p:
        rounds.append(tuple(Transfer(group[i], group[i - d], 0, n, "reduce") for i in range(d, p, 2 * d)))
        d *= 2
    return rounds


def tree_broadcast(group: tuple[int, ...], n: int) -> list[Round]:
    return [tuple(Transfer(t.dst, t.src, 0, n, "copy") for t in r) for r in reversed(tree_reduce(group, n))]


def hierarchical_schedule(group: tuple[int, ...], n: int, group_size: int) -> list[Round]:
    subgroups = [group[i:i + group_size] for i in range(0, len(group), group_size)]
    leaders = tuple(g[0] for g in subgroups)
    reduce_rounds = _merge([tree_reduce(g, n) for g in subgroups])
    bcast_rounds = _merge([tree_broadcast(g, n) for g in subgroups])
    return reduce_rounds + ring_schedule(leaders, n) + bcast_rounds


def _merge(parallel: list[list[Round]]) -> list[Round]:
    """Run independent schedules side by side: round k holds every schedule's round k."""
    depth = max((len(s) for s in parallel), default=0)
    return [tuple(t for s in parallel if k < len(s) for t in s[k]) for k in range(depth)]


def default_group_size(p: int) -> int:
    """Groups of about sqrt(p) chips, at least 2 (hierarchical on 8 chips: 2 groups of 4)."""
    return max(2, 2 ** math.ceil(math.log2(max(1.0, math.sqrt(p)))))


def schedule(algorithm: str, group: tuple[int, ...], n: int, group_size: int | None = None) -> list[Round]:
    """The rounds of transfers that all-reduce an `n`-element vector over `group`."""
    if not group or len(set(group)) != len(group):
        raise McushardError(f"all-reduce: bad group {group}")
    if algorithm == "ring":
        return ring_schedule(group, n)
    if algorithm == "tree":
        return tree_reduce(group, n) + tree_broadcast(group, n)
    if algorithm == "hierarchical":
        size = group_size if group_size is not None else default_group_size(len(group))
        if size < 1:
            raise McushardError(f"all-reduce: group_size must be >= 1, got {size}")
        return hierarchical_schedule(group, n, size)
    raise McushardError(f"all-reduce: unknown algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")


def edges(rounds: list[Round]) -> set[tuple[int, int]]:
    """The chip-to-chip links a schedule uses (undirected)."""
    return {tuple(sorted((t.src, t.dst))) for r in rounds for t in r}


def bytes_sent(rounds: list[Round], elem_bytes: int) -> dict[tuple[int, int], int]:
    """Bytes per directed (src, dst) pair."""
    out: dict[tuple[int, int], int] = {}
    for r in rounds:
        for t in r:
            out[(t.src, t.dst)] = out.get((t.src, t.dst), 0) + t.elements * elem_bytes
    return out
