"""All-reduce algorithms as explicit message schedules, shared by the cost model and the runtime.

A schedule is a list of rounds; a round is a tuple of `Transfer`s that run concurrently: `src`
sends elements [start, stop) of its vector and `dst` adds them into its own (`op == "reduce"`) or
overwrites its own with them (`"copy"`). Executing the rounds in order leaves every member with
the sum; the same schedule tells the cost model what to charge, so both count the same bytes.

- ring: reduce-scatter then all-gather, 2(p-1) rounds of one chunk (the vector split in p chunks).
- tree: binomial reduce to the first member, then binomial broadcast, 2 ceil(log2 p) rounds of the
  whole vector (few rounds: good for short vectors and high link latency).
- hierarchical (the paper's two-level idea, applied recursively): reduce-scatter inside sub-groups
  of `group_size` neighbouring chips, all-reduce each chunk among the sub-groups, all-gather back;
  bandwidth-optimal like the ring but with O(g log_g p) instead of O(p) latency-bound rounds
  (group sizes that are not powers of g add one fold and one unfold round).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

from mcushard.errors import McushardError
from mcushard.partition.plan import split


class Transfer(NamedTuple):
    """One message of a round: `src` sends elements [start, stop) of its vector to `dst`."""

    src: int  # sending chip
    dst: int  # receiving chip
    start: int  # first element
    stop: int  # one past the last element
    op: str  # "reduce": dst adds the payload into its vector; "copy": dst overwrites with it

    @property
    def elements(self) -> int:
        return self.stop - self.start


Round = tuple[Transfer, ...]
_new = tuple.__new__  # builds a Transfer without NamedTuple's Python-level __new__ (schedules are long)
ALGORITHMS = ("ring", "tree", "hierarchical")


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
                    msgs.append(_new(Transfer, (group[i], group[(i + 1) % p], base + off, base + off + size,
                                                "reduce" if reduce else "copy")))
            rounds.append(tuple(msgs))
    return rounds


def _tree(group: tuple[int, ...], n: int) -> list[Round]:
    """Binomial reduce to the first member, then binomial broadcast back."""
    p, up, k = len(group), [], 1
    while k < p:
        up.append(tuple(Transfer(group[i], group[i - k], 0, n, "reduce") for i in range(k, p, 2 * k)))
        k *= 2
    down = [tuple(Transfer(t.dst, t.src, t.start, t.stop, "copy") for t in rnd) for rnd in reversed(up)]
    return up + down


def _merge(per_group: list[list[Round]]) -> list[Round]:
    """Run several independent schedules side by side, round by round."""
    depth = max((len(r) for r in per_group), default=0)
    return [tuple(m for rounds in per_group if i < len(rounds) for m in rounds[i]) for i in range(depth)]


def _hierarchical(group: tuple[int, ...], base: int, n: int, g: int) -> list[Round]:
    """Reduce-scatter inside sub-groups of g neighbours, all-reduce each chunk recursively among the
    members holding it (one per sub-group), all-gather inside sub-groups. A group that is not a power
    of g first folds its extra members' vectors into the others (and copies the sum back at the end);
    a group of at most g members runs a ring."""
    p = len(group)
    if p <= g or g < 2:
        return _ring(group, base, n)
    q = g ** int(math.log(p, g) + 1e-9)  # the largest power of g not above p
    if q != p:  # fold the extra members into the first q, reduce among those, unfold
        core = group[:q]
        fold = tuple(_new(Transfer, (e, core[j % q], base, base + n, "reduce")) for j, e in enumerate(group[q:]))
        unfold = tuple(_new(Transfer, (core[j % q], e, base, base + n, "copy")) for j, e in enumerate(group[q:]))
        return [fold] + _hierarchical(core, base, n, g) + [unfold]
    subs = [group[i:i + g] for i in range(0, p, g)]
    chunks = _chunks(n, g)
    rs = _merge([_ring(s, base, n, (True,)) for s in subs])
    mid = _merge([_hierarchical(tuple(s[j] for s in subs), base + chunks[(j + 1) % g][0], chunks[(j + 1) % g][1], g)
                  for j in range(g) if chunks[(j + 1) % g][1]])
    ag = _merge([_ring(s, base, n, (False,)) for s in subs])
    return rs + mid + ag


@lru_cache(maxsize=4096)
def schedule(algorithm: str, group: tuple[int, ...], n: int, group_size: int | None = 2) -> tuple[Round, ...]:
    """Rounds of messages that all-reduce an `n`-element vector over `group` (hierarchical: sub-groups
    of `group_size`, the hardware preset's `group_size`)."""
    if not group or len(set(group)) != len(group):
        raise McushardError(f"all-reduce: bad group {group}")
    local = local_schedule(algorithm, len(group), n, group_size)
    return tuple(tuple(_new(Transfer, (group[t[0]], group[t[1]], t[2], t[3], t[4])) for t in rnd) for rnd in local)


@lru_cache(maxsize=4096)
def local_schedule(algorithm: str, p: int, n: int, group_size: int | None = 2) -> tuple[Round, ...]:
    """`schedule` over members 0..p-1 (a schedule depends on the group only through its size)."""
    if algorithm not in ALGORITHMS:
        raise McushardError(f"unknown algorithm {algorithm!r} for an all-reduce; use {', '.join(ALGORITHMS)}")
    group_size = 2 if group_size is None else group_size
    if group_size < 1:
        raise McushardError(f"all-reduce: group_size must be >= 1, got {group_size}")
    if p <= 1 or n <= 0:
        return ()
    group = tuple(range(p))
    if algorithm == "ring":
        return tuple(_ring(group, 0, n))
    if algorithm == "tree":
        return tuple(_tree(group, n))
    return tuple(_hierarchical(group, 0, n, group_size))


def edges(rounds) -> set[tuple[int, int]]:
    """The chip-to-chip links a schedule uses (undirected, as (low, high) pairs)."""
    return {(min(t.src, t.dst), max(t.src, t.dst)) for rnd in rounds for t in rnd}


def bytes_sent(rounds, elem_bytes: int) -> dict[tuple[int, int], int]:
    """Payload bytes per directed link (src, dst) of a schedule."""
    out: dict[tuple[int, int], int] = {}
    for rnd in rounds:
        for t in rnd:
            out[(t.src, t.dst)] = out.get((t.src, t.dst), 0) + t.elements * elem_bytes
    return out


def plan_link_bytes(plan, group_size: int | None = 2, tokens: int = 1, keys: int = 0) -> dict[tuple[int, int], int]:
    """Payload bytes per directed link (src, dst) that running `plan` once sends: its all-reduces'
    schedules and its sends, for `tokens` tokens each attending `keys` keys (decode: 1 token, keys =
    the KV length). This is what a distributed runtime of the plan must count, without a simulation."""
    from mcushard.partition.plan import AllReduce, Send

    out: dict[tuple[int, int], int] = {}
    for step in plan.steps:
        if isinstance(step, AllReduce):
            n = step.elements * tokens + step.elements_per_key * tokens * keys
            rounds = schedule(step.algorithm, step.group, n, group_size)
            for pair, nbytes in bytes_sent(rounds, step.elem_bytes).items():
                out[pair] = out.get(pair, 0) + nbytes
        elif isinstance(step, Send):
            out[(step.src, step.dst)] = out.get((step.src, step.dst), 0) + step.elements * tokens * step.elem_bytes
    return out
