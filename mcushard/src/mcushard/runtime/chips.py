"""A cluster of chip processes: one operating-system process per chip, shared-memory chip-to-chip links.

The parent (the "host") starts N processes from a clean `forkserver` (numpy and numba preloaded), so each chip
starts fast and inherits nothing but what it is handed: its own init arguments (its weight slices)
and the ends of its own links (`runtime.links`: a ring of shared-memory slots per direction, with
semaphores as blocking wake-ups).
Each chip runs a handler built by `make_handler(chip, links, init)`; the host sends one request to
every chip (per decoded token: the chips run every layer and collective among themselves) and
gathers one reply per chip.

Each chip is pinned to one CPU (`pin`); with more chips than CPUs, neighbouring chips share one
(`chip_cpus`): every all-reduce makes each chip block and wake, a chip that stays on its CPU finds
its caches there, and the first levels of the tree and hierarchical schedules stay on one CPU.

Failure handling: the host waits on the replies and on every process's sentinel at once, so a chip
that dies is noticed at once and one that hangs past `timeout_s` is noticed then; either way every
chip process is killed and reaped and one `McushardError` names the chip. A chip whose host dies
sees its control pipe close (while idle, or while blocked on a link) and exits, so no chip outlives
its host.

Every byte a chip sends over a link is counted per destination (payload bytes of the numpy arrays),
to be compared with what the cost model charges for the same plan.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import select
import threading
import time
import traceback
from contextlib import contextmanager
from functools import lru_cache
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Protocol

import numpy as np

from mcushard.errors import McushardError
from mcushard.partition.collectives import Round, schedule
from mcushard.runtime.links import SLOT_BYTES, Channel, HostGone, Links, link_channels

Edge = tuple[int, int]
Sends = tuple[tuple[int, int, int], ...]  # (destination, start, stop) of a round's outgoing messages
Recvs = tuple[tuple[int, int, int, bool], ...]  # (source, start, stop, is a reduce) of its incoming ones
ChipRound = tuple[Sends, Recvs, int]  # a round's sends and receives for one chip, and the elements it sends


INLINE_SEND_BYTES = 16384  # a round's payload below this fits a link's buffer: sent inline, no thread


def my_rounds(rounds, chip: int) -> tuple[ChipRound, ...]:
    """The rounds of a schedule `chip` takes part in, cut to its own sends and receives."""
    out = []
    for rnd in rounds:
        sends = tuple((t.dst, t.start, t.stop) for t in rnd if t.src == chip)
        recvs = tuple((t.src, t.start, t.stop, t.op == "reduce") for t in rnd if t.dst == chip)
        if sends or recvs:
            out.append((sends, recvs, sum(stop - start for _, start, stop in sends)))
    return tuple(out)


@lru_cache(maxsize=4096)
def chip_schedule(algorithm: str, group: tuple[int, ...], n: int, group_size: int | None, chip: int
                  ) -> tuple[ChipRound, ...]:
    """`my_rounds` of `schedule(algorithm, group, n, group_size)` (cached: a chip repeats them every token)."""
    return my_rounds(schedule(algorithm, group, n, group_size), chip)


def all_reduce(links: Links, rounds: list[Round], vector: np.ndarray,
               combine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Carry out this chip's part of an all-reduce schedule (`rounds`) on `vector` [n, ...] (bound to the
    links, `BoundRounds`, when its messages fit them)."""
    mine = my_rounds(rounds, links.chip)
    if vector.ndim == 1 and BoundRounds.fits(mine, vector.itemsize, SLOT_BYTES):
        return BoundRounds(links, mine, vector.size, vector.dtype).run(vector, combine).astype(vector.dtype)
    return run_rounds(links, mine, vector, combine)


class BoundRounds:
    """This chip's rounds `mine` of one all-reduce, bound to its links once: a wire buffer `out` [n]
    and, per message, a `Route` and the slice of `out` it sends from or lands in. `run` does what
    `run_rounds` does with no look-ups, headers or array views made per message (a chip repeats
    the same all-reduces every token). Only for schedules whose every message fits one link slot and
    whose rounds' sends fit the links' buffers (`fits`); `run_rounds` carries out the others."""

    def __init__(self, links: Links, mine: tuple[ChipRound, ...], n: int, dtype: np.dtype) -> None:
        self.out = np.zeros(n, dtype)  # [n] the wire vector, reused every call
        self.rounds = tuple(
            (tuple((links.route(dst, True, dtype, b - a), self.out[a:b]) for dst, a, b in sends),
             tuple((links.route(src, False, dtype, b - a), self.out[a:b], reduce) for src, a, b, reduce in recvs))
            for sends, recvs, _ in mine)

    @staticmethod
    def fits(mine: tuple[ChipRound, ...], itemsize: int, slot_bytes: int) -> bool:
        return all(elements * itemsize <= INLINE_SEND_BYTES
                   and all((b - a) * itemsize <= slot_bytes for _, a, b in sends)
                   and all((b - a) * itemsize <= slot_bytes for _, a, b, _ in recvs)
                   for sends, recvs, elements in mine)

    def run(self, vector: np.ndarray, combine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
            ) -> np.ndarray:
        """The all-reduce of `vector` [n] (already in the wire type's range) as int64 [n] (a new array)."""
        np.copyto(self.out, vector, casting="unsafe")
        for sends, recvs in self.rounds:
            for route, part in sends:
                route.send(part)
            for route, part, reduce in recvs:
                route.recv(part, reduce, combine)
        return self.out.astype(np.int64)


def run_rounds(links: Links, mine: tuple[ChipRound, ...], vector: np.ndarray,
               combine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Carry out this chip's rounds `mine` (`chip_schedule`) of an all-reduce on `vector` [n, ...]
    (integer sums: exact).

    `combine(mine, received)` replaces the addition of "reduce" transfers (e.g. np.maximum for an
    argmax over packed (value, index) keys). A round's sends go out first (into the links' buffers),
    then its receives are taken; a round whose payload may not fit in a link's buffer
    (`INLINE_SEND_BYTES`) sends on a thread while receiving, so two chips that send to each other at
    once cannot block each other.
    """
    out = np.array(vector, copy=True)
    for sends, recvs, elements in mine:
        sender = None
        if elements * out.itemsize <= INLINE_SEND_BYTES:
            for dst, start, stop in sends:
                links.send(dst, out[start:stop])
        else:  # the thread sends copies: `out` changes while it runs
            sender = threading.Thread(target=_send_all, args=(links, [(d, out[a:b].copy()) for d, a, b in sends]))
            sender.start()
        for src, start, stop, reduce in recvs:
            links.recv_into(src, out[start:stop], reduce, combine)
        if sender is not None:
            sender.join()
    return out


def _send_all(links: Links, payloads: list[tuple[int, np.ndarray]]) -> None:
    for dst, array in payloads:
        links.send(dst, array)


class Handler(Protocol):
    def handle(self, request: Any) -> Any: ...


def chip_cpus(n_chips: int, cpus: list[int]) -> list[set[int]]:
    """CPUs each chip may run on: neighbouring chips share a CPU, in contiguous blocks (chips
    0..n/c-1 on the first of c CPUs, ...), so most messages of a schedule stay on one CPU; with at
    least as many CPUs as chips, a CPU per chip."""
    if not cpus:
        return [set() for _ in range(n_chips)]
    return [{cpus[chip * len(cpus) // n_chips]} for chip in range(n_chips)]


def _chip_main(chip: int, control: Connection, ends: tuple[dict[int, Channel], dict[int, Channel]],
               make_handler: Callable[[int, Links, Any], Handler], init: Any, cpus: set[int]) -> None:
    """Body of one chip process: build the handler, then answer requests until told to stop."""
    if cpus:  # a chip stays on its CPU: no migrations that leave its caches behind
        os.sched_setaffinity(0, cpus)
    links = Links(chip, ends[0], ends[1], host=control)
    try:
        handler = make_handler(chip, links, init)
        control.send(("ready", None))
        while True:
            try:
                request = control.recv()
            except EOFError:  # the host is gone: leave rather than linger as an orphan
                return
            if request is None:
                return
            control.send(("ok", handler.handle(request)))
    except HostGone:
        os._exit(1)
    except Exception:  # reported to the host, which turns it into one error line
        try:
            control.send(("error", traceback.format_exc(limit=4)))
        except OSError:
            pass
        os._exit(1)


@contextmanager
def _one_blas_thread():
    """One BLAS thread per chip process (a chip is one compute unit; N chips share the host's cores)."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in names}
    for k in names:
        os.environ.setdefault(k, "1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class ChipCluster:
    """N chip processes wired by `edges`; use as a context manager. `pin`: each chip on one CPU of the
    host's affinity set (`chip_cpus`)."""

    def __init__(self, n_chips: int, edges: set[Edge], make_handler: Callable[[int, Links, Any], Handler],
                 inits: list[Any], timeout_s: float = 60.0, start_timeout_s: float = 120.0,
                 pin: bool = True) -> None:
        if len(inits) != n_chips:
            raise McushardError(f"cluster: {len(inits)} shards for {n_chips} chips")
        self.n_chips = n_chips
        self.timeout_s = timeout_s
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["numpy", "mcushard.runtime.chips", "mcushard.runtime.compiled"])
        pairs = sorted({tuple(sorted(e)) for e in edges})
        for a, b in pairs:
            if not (0 <= a < n_chips and 0 <= b < n_chips) or a == b:
                raise McushardError(f"cluster: bad link {a}-{b} for {n_chips} chips")
        ends = link_channels(ctx, n_chips, pairs)
        # held while the chips run: a freed shared block would be handed to the next cluster's links
        self._links = ends
        can_pin = pin and hasattr(os, "sched_getaffinity")
        cpus = chip_cpus(n_chips, sorted(os.sched_getaffinity(0)) if can_pin else [])
        self._control: list[Connection] = []
        self._procs: list[mp.process.BaseProcess] = []
        self._poller: Any = None  # select.poll of every control connection and process sentinel (first _gather)
        self._by_fd: dict[int, tuple[int, bool]] = {}  # polled file descriptor -> (its chip, is a sentinel)
        try:
            with _one_blas_thread():  # the forkserver, started by the first chip, keeps this setting
                for chip in range(n_chips):
                    host_end, chip_end = ctx.Pipe(duplex=True)
                    proc = ctx.Process(target=_chip_main, name=f"chip{chip}", daemon=True,
                                       args=(chip, chip_end, ends[chip], make_handler, inits[chip], cpus[chip]))
                    proc.start()
                    chip_end.close()
                    self._control.append(host_end)
                    self._procs.append(proc)
            self._gather(expect="ready", timeout_s=start_timeout_s)
        except BaseException:
            self.close()
            raise

    def request(self, requests: list[Any] | Any) -> list[Any]:
        """Send one request to every chip (a list: one per chip) and return the replies in chip order."""
        if isinstance(requests, list):
            payloads = [bytes(ForkingPickler.dumps(req)) for req in requests]
        else:  # the same request for every chip: pickled once
            payloads = [bytes(ForkingPickler.dumps(requests))] * self.n_chips
        for conn, payload in zip(self._control, payloads):
            try:
                conn.send_bytes(payload)
            except OSError:
                pass  # the chip is dead; _gather reports which
        return self._gather(expect="ok")

    def _gather(self, expect: str, timeout_s: float | None = None) -> list[Any]:
        """One reply per chip, waiting on the chips' control connections and process sentinels at
        once (one `poll` set, registered when the chips start), within `timeout_s` in all."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if self._poller is None:
            self._poller, self._by_fd = select.poll(), {}
            for chip, (conn, proc) in enumerate(zip(self._control, self._procs)):
                for fd, is_sentinel in ((conn.fileno(), False), (proc.sentinel, True)):
                    self._poller.register(fd, select.POLLIN)
                    self._by_fd[fd] = (chip, is_sentinel)
        replies: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        while len(replies) < self.n_chips:
            left_s = deadline - time.monotonic()
            ready = self._poller.poll(1000 * left_s) if left_s > 0 else []
            if not ready:
                late = sorted(set(range(self.n_chips)) - set(replies))
                self.close()
                raise McushardError(f"chip {late[0]} did not answer within {timeout_s:g} s (hung); all chips stopped")
            for fd, _ in ready:
                chip, is_sentinel = self._by_fd[fd]
                conn = self._control[chip]
                try:  # a sentinel may fire while the chip's last message is still in the pipe
                    kind, payload = conn.recv() if not is_sentinel or conn.poll() else ("died", None)
                except (EOFError, OSError):
                    kind, payload = "died", None
                if kind == "died":
                    self._procs[chip].join(timeout=1.0)
                    code = self._procs[chip].exitcode
                    self.close()
                    raise McushardError(f"chip {chip} died (exit code {code}); all chips stopped")
                if kind == "error":
                    last = payload.strip().splitlines()[-1]
                    self.close()
                    raise McushardError(f"chip {chip} failed: {last}")
                if kind != expect or chip in replies:
                    self.close()
                    raise McushardError(f"chip {chip}: unexpected reply {kind!r}")
                replies[chip] = payload
        return [replies[i] for i in range(self.n_chips)]

    def close(self) -> None:
        """Stop every chip: ask politely, then terminate, then kill; always reap."""
        for conn in self._control:
            try:
                conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 2.0  # one grace period for all (a chip blocked on a link polls)
        for proc in self._procs:
            proc.join(timeout=max(deadline - time.monotonic(), 0.0))
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._control:
            conn.close()
        self._procs, self._control, self._links = [], [], []
        self._poller, self._by_fd = None, {}

    def __enter__(self) -> "ChipCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
