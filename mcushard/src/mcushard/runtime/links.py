"""Chip-to-chip links in shared memory: one ring of slots per direction, two semaphores as wake-ups.

A pipe costs a chip two system calls per message and a byte copy through the kernel each way; a
decode step exchanges a few hundred short messages, so the chips spent most of their time in that
machinery. A `Channel` is one direction of a link: `SLOTS` slots of `SLOT_BYTES` in shared memory
(`multiprocessing.RawArray`, handed to both ends), a semaphore counting filled slots (the receiver
blocks on it: no busy waiting) and one counting free slots (the sender blocks on it only when the
receiver is `SLOTS` slots behind, like a full pipe). A message longer than a slot goes out in
consecutive slots, so a channel behaves like a pipe with a `SLOTS * SLOT_BYTES` buffer.

A slot is a header of HEADER_BYTES (payload bytes, then the length-prefixed "dtype|shape" of the
array) and the payload. A blocked end wakes every `POLL_S` to check that the host is still there (its control
connection readable means it closed it or died: the chip leaves rather than linger as an orphan);
a dead peer is noticed by the host, which watches every process and stops them all.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

SLOTS = 4  # slots per direction of a link
SLOT_BYTES = 16384  # payload bytes per slot
HEADER_BYTES = 64  # per slot: 8 bytes payload length, then the array's length-prefixed meta string
POLL_S = 0.5  # a blocked chip checks its host this often


class HostGone(RuntimeError):
    """The host closed the control connection (or died) while the chip waited on a link."""


class Channel:
    """One direction of a link (created by the host, handed to both chips when they start)."""

    def __init__(self, ctx: Any, slots: int = SLOTS, slot_bytes: int = SLOT_BYTES) -> None:
        self.slots, self.slot_bytes = slots, slot_bytes
        self.stride = HEADER_BYTES + slot_bytes
        self.buffer = ctx.RawArray("B", slots * self.stride)  # shared: [slots, header + payload] bytes
        self.full = ctx.Semaphore(0)  # filled slots not yet taken by the receiver
        self.free = ctx.Semaphore(slots)  # slots the sender may fill
        self._view: memoryview | None = None  # this end's byte view of `buffer` (made on first use)
        self._next = 0  # this end's next slot (each end walks the ring in the same order)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_view"], state["_next"] = None, 0
        return state

    def view(self) -> memoryview:
        """This end's byte view of the shared buffer (made on first use)."""
        if self._view is None:
            self._view = memoryview(self.buffer).cast("B")
        return self._view

    def _slot(self) -> tuple[memoryview, int]:
        """This end's view of the buffer and the offset of its next slot (then advances)."""
        base = self._next * self.stride
        self._next = (self._next + 1) % self.slots
        return self.view(), base

    def _claim(self, sem: Any, check: Any) -> int:
        """Take `sem` (`free` to send, `full` to receive; waits with `check`) and this end's next slot index."""
        if not sem.acquire(False):
            _wait(sem, check)
        i = self._next
        self._next = i + 1 if i + 1 < self.slots else 0
        return i

    def put(self, head: bytes, data: memoryview, check: Any) -> None:
        """Send the bytes `data` of an array whose slot header is `head` (`_header`); blocks while
        the ring is full."""
        n, pos = len(data), 0
        while True:
            if not self.free.acquire(False):
                _wait(self.free, check)
            view, base = self._slot()
            if pos == 0:
                view[base:base + HEADER_BYTES] = head
            k = min(self.slot_bytes, n - pos)
            view[base + HEADER_BYTES:base + HEADER_BYTES + k] = data[pos:pos + k]
            pos += k
            self.full.release()
            if pos >= n:
                return

    def get(self, check: Any, into: np.ndarray | None = None, reduce: bool = False,
            combine: Any = None) -> np.ndarray | None:
        """Receive the next array (blocks until it is there): a private copy of it, or, with `into`,
        applied to `into` in place (overwrite it; `reduce`: add it, or `combine(into, it)`), read
        straight from the slot for a one-slot message."""
        if not self.full.acquire(False):
            _wait(self.full, check)
        view, base = self._slot()
        n, dtype, shape = _describe(bytes(view[base:base + HEADER_BYTES]))
        if n <= self.slot_bytes:
            part = np.frombuffer(self.buffer, dtype, n // dtype.itemsize, base + HEADER_BYTES).reshape(shape)
            if into is None:
                part = part.copy()
            else:
                _apply(into, part, reduce, combine)
            self.free.release()
            return part if into is None else None
        out = bytearray(view[base + HEADER_BYTES:base + HEADER_BYTES + self.slot_bytes])
        self.free.release()
        while len(out) < n:
            if not self.full.acquire(False):
                _wait(self.full, check)
            view, base = self._slot()
            out += view[base + HEADER_BYTES:base + HEADER_BYTES + min(self.slot_bytes, n - len(out))]
            self.free.release()
        part = np.frombuffer(out, dtype=dtype).reshape(shape)
        if into is None:
            return part
        _apply(into, part, reduce, combine)
        return None


class Route:
    """One direction of a link bound to one message shape (a 1-D array of `n` `dtype` elements that fits
    one slot): what a chip sends or receives at the same place of its program every token. The
    slot header and a typed view of every slot's payload are made once, so a message costs a
    semaphore, a header write or check, and one numpy copy or add (`Links.route` makes them)."""

    __slots__ = ("links", "channel", "view", "peer", "head", "nbytes", "payloads")

    def __init__(self, links: "Links", channel: Channel, peer: int, dtype: np.dtype, n: int) -> None:
        self.links, self.channel, self.peer = links, channel, peer
        self.head = _header(np.dtype(dtype), (n,))
        self.nbytes = n * np.dtype(dtype).itemsize
        if self.nbytes > channel.slot_bytes:
            raise ValueError(f"a route carries one slot ({channel.slot_bytes} bytes), not {self.nbytes}")
        self.view = channel.view()  # the channel's byte view, for the slot headers
        self.payloads = [np.frombuffer(channel.buffer, dtype, n, i * channel.stride + HEADER_BYTES)
                         for i in range(channel.slots)]  # per slot: its payload as [n] dtype

    def send(self, array: np.ndarray) -> None:
        """Send `array` ([n], any dtype that casts safely to the route's) to the peer; counts its bytes."""
        ch = self.channel
        i = ch._claim(ch.free, self.links._check)
        base = i * ch.stride
        self.view[base:base + HEADER_BYTES] = self.head
        np.copyto(self.payloads[i], array)
        ch.full.release()
        self.links.bytes_sent[self.peer] += self.nbytes

    def recv(self, into: np.ndarray, reduce: bool = False, combine: Any = None) -> None:
        """Apply the next message from the peer to `into` ([n]) as `Links.recv_into` does."""
        ch = self.channel
        i = ch._claim(ch.full, self.links._check)
        base = i * ch.stride
        if self.view[base:base + HEADER_BYTES] != self.head:
            n, dtype, shape = _describe(bytes(self.view[base:base + HEADER_BYTES]))
            raise RuntimeError(f"chip {self.links.chip}: a link delivered {dtype} {shape} where "
                               f"{self.payloads[0].dtype} ({len(self.payloads[0])},) was expected")
        _combine(into, self.payloads[i], reduce, combine)  # the header check above stands for the shape check
        ch.free.release()


def _apply(into: np.ndarray, part: np.ndarray, reduce: bool, combine: Any) -> None:
    if into.shape != part.shape:
        raise RuntimeError(f"a link delivered shape {part.shape} where {into.shape} was expected")
    _combine(into, part, reduce, combine)


def _combine(into: np.ndarray, part: np.ndarray, reduce: bool, combine: Any) -> None:
    """Store (`reduce` False), add, or `combine(into, part)` a received `part` into `into` (same shape)."""
    if not reduce:
        into[...] = part
    elif combine is None:
        into += part
    else:
        into[...] = combine(into, part)


def _wait(sem: Any, check: Any) -> None:
    """Block on `sem`; every POLL_S call `check()` (raises HostGone when the chip should leave)."""
    while not sem.acquire(True, POLL_S):
        check()


class Links:
    """One chip's ends of its links; `send`/`recv` move numpy arrays and count bytes."""

    def __init__(self, chip: int, out: dict[int, Channel], inbound: dict[int, Channel],
                 host: Connection | None = None) -> None:
        self.chip = chip
        self._out = out  # peer chip -> channel this chip sends on
        self._in = inbound  # peer chip -> channel this chip receives on
        self._host = host  # control connection to the host (None: no liveness check)
        self.bytes_sent: Counter[int] = Counter()  # peer chip -> payload bytes sent

    def _check(self) -> None:
        if self._host is not None and self._host.poll():
            raise HostGone(f"chip {self.chip}: the host closed the connection while it waited on a link")

    def send(self, peer: int, array: np.ndarray) -> None:
        channel = self._out.get(peer)
        if channel is None:
            raise RuntimeError(f"chip {self.chip} has no link to chip {peer}")
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        flat = array if array.ndim == 1 else array.reshape(-1)
        channel.put(_header(array.dtype, array.shape), memoryview(flat).cast("B"), self._check)
        self.bytes_sent[peer] += array.nbytes

    def recv(self, peer: int) -> np.ndarray:
        """The next array from `peer` (a private copy)."""
        return self._channel_from(peer).get(self._check)

    def recv_into(self, peer: int, into: np.ndarray, reduce: bool = False, combine: Any = None) -> None:
        """Apply the next array from `peer` to `into` in place: overwrite it, or (`reduce`) add it
        or combine it (`combine(into, received)`); it must have `into`'s shape."""
        self._channel_from(peer).get(self._check, into, reduce, combine)

    def route(self, peer: int, outgoing: bool, dtype: np.dtype, n: int) -> Route:
        """A `Route` to (`outgoing`) or from `peer` for messages of `n` `dtype` elements (one slot)."""
        channel = self._out.get(peer) if outgoing else self._in.get(peer)
        if channel is None:
            raise RuntimeError(f"chip {self.chip} has no link to chip {peer}")
        return Route(self, channel, peer, dtype, n)

    def _channel_from(self, peer: int) -> Channel:
        channel = self._in.get(peer)
        if channel is None:
            raise RuntimeError(f"chip {self.chip} has no link to chip {peer}")
        return channel


def link_channels(ctx: Any, n_chips: int, pairs: list[tuple[int, int]]
                  ) -> list[tuple[dict[int, Channel], dict[int, Channel]]]:
    """Per chip: (peer -> outgoing channel, peer -> incoming channel) for the undirected `pairs`."""
    ends: list[tuple[dict[int, Channel], dict[int, Channel]]] = [({}, {}) for _ in range(n_chips)]
    for a, b in pairs:
        for src, dst in ((a, b), (b, a)):
            channel = Channel(ctx)
            ends[src][0][dst] = channel
            ends[dst][1][src] = channel
    return ends


@lru_cache(maxsize=1024)
def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A slot header: payload bytes (8, little-endian), then the length-prefixed "dtype|d0,d1,...",
    zero-padded to HEADER_BYTES (cached: a chip sends the same few shapes every token)."""
    meta = f"{dtype.str}|{','.join(map(str, shape))}".encode()
    head = (dtype.itemsize * math.prod(shape)).to_bytes(8, "little") + len(meta).to_bytes(2, "little") + meta
    if len(head) > HEADER_BYTES:
        raise ValueError(f"array description too long for a link slot: {meta!r}")
    return head.ljust(HEADER_BYTES, b"\0")


@lru_cache(maxsize=1024)
def _describe(head: bytes) -> tuple[int, np.dtype, tuple[int, ...]]:
    """(payload bytes, dtype, shape) of a slot header made by `_header`."""
    m = int.from_bytes(head[8:10], "little")
    dtype, shape = head[10:10 + m].decode().rsplit("|", 1)  # a dtype string may hold "|" ("|i1")
    return int.from_bytes(head[:8], "little"), np.dtype(dtype), tuple(int(d) for d in shape.split(",") if d)
