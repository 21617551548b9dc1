"""A cluster of chip processes: one operating-system process per chip, pipes as chip-to-chip links.

The parent (the "host") starts N processes from a clean `forkserver` (numpy preloaded), so each chip
starts fast and inherits nothing but what it is handed: its own init arguments (its weight slices)
and the pipe ends of its own links.
Each chip runs a handler built by `make_handler(chip, links, init)`; the host broadcasts a request
to every chip and gathers one reply per chip.

Failure handling: the host waits on the replies and on every process's sentinel at once, so a chip
that dies is noticed at once and one that hangs past `timeout_s` is noticed then; either way every
chip process is killed and reaped and one `McushardError` names the chip. A chip whose host dies
sees its control pipe close and exits, so no chip outlives its host.

Every byte a chip sends over a link is counted per destination (payload bytes of the numpy arrays),
to be compared with what the cost model charges for the same plan.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import traceback
from collections import Counter
from contextlib import contextmanager
from functools import lru_cache
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Protocol

import numpy as np

from mcushard.errors import McushardError
from mcushard.partition.collectives import Round

Edge = tuple[int, int]


class Links:
    """One chip's ends of its links; `send`/`recv` move numpy arrays and count bytes."""

    def __init__(self, chip: int, ends: dict[int, Connection]) -> None:
        self.chip = chip
        self._ends = ends  # peer chip -> this chip's end of the pipe
        self.bytes_sent: Counter[int] = Counter()  # peer chip -> payload bytes sent

    def send(self, peer: int, array: np.ndarray) -> None:
        if peer not in self._ends:
            raise RuntimeError(f"chip {self.chip} has no link to chip {peer}")
        array = np.ascontiguousarray(array)
        self._ends[peer].send_bytes(_header(array) + array.tobytes())
        self.bytes_sent[peer] += array.nbytes

    def recv(self, peer: int) -> np.ndarray:
        if peer not in self._ends:
            raise RuntimeError(f"chip {self.chip} has no link to chip {peer}")
        return _unpack(self._ends[peer].recv_bytes())


INLINE_SEND_BYTES = 16384  # a round's payload below this fits a pipe's buffer: sent inline, no thread


def all_reduce(links: Links, rounds: list[Round], vector: np.ndarray,
               combine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Carry out this chip's part of an all-reduce schedule on `vector` [n, ...] (integer sums: exact).

    `combine(mine, received)` replaces the addition of "reduce" transfers (e.g. np.maximum for an
    argmax over packed (value, index) keys). Within a round the sends go out on a thread while the
    receives are taken, so two chips that send to each other at once cannot block on full pipes;
    a round whose payload fits in a pipe buffer (`INLINE_SEND_BYTES`) is sent inline instead.
    """
    out = np.array(vector, copy=True)
    me = links.chip
    for rnd in rounds:
        sends = [t for t in rnd if t.src == me]
        recvs = [t for t in rnd if t.dst == me]
        payloads = [(t.dst, out[t.start:t.stop].copy()) for t in sends]
        sender = None
        if sum(a.nbytes for _, a in payloads) <= INLINE_SEND_BYTES:
            for d, a in payloads:
                links.send(d, a)
        else:
            sender = threading.Thread(target=_send_all, args=(links, payloads))
            sender.start()
        for t in recvs:
            part = links.recv(t.src)
            if t.op != "reduce":
                out[t.start:t.stop] = part
            elif combine is None:
                out[t.start:t.stop] += part
            else:
                out[t.start:t.stop] = combine(out[t.start:t.stop], part)
        if sender is not None:
            sender.join()
    return out


def _send_all(links: Links, payloads: list[tuple[int, np.ndarray]]) -> None:
    for dst, array in payloads:
        links.send(dst, array)


def _header(array: np.ndarray) -> bytes:
    return _meta(array.dtype.str, array.shape)


@lru_cache(maxsize=1024)
def _meta(dtype: str, shape: tuple[int, ...]) -> bytes:
    """Length-prefixed "dtype|d0,d1,..." (cached: a chip sends the same few shapes every token)."""
    meta = f"{dtype}|{','.join(map(str, shape))}".encode()
    return len(meta).to_bytes(2, "little") + meta


@lru_cache(maxsize=1024)
def _parse(meta: bytes) -> tuple[np.dtype, tuple[int, ...]]:
    dtype, shape = meta.decode().rsplit("|", 1)  # a dtype string may hold "|" ("|i1")
    return np.dtype(dtype), tuple(int(d) for d in shape.split(",") if d)


def _unpack(buf: bytes) -> np.ndarray:
    n = int.from_bytes(buf[:2], "little")
    dtype, dims = _parse(buf[2:2 + n])
    return np.frombuffer(buf, dtype=dtype, offset=2 + n).reshape(dims)


_LINK_ERRORS = ("EOFError", "ConnectionResetError", "BrokenPipeError")  # what a chip sees when a peer dies


class Handler(Protocol):
    def handle(self, request: Any) -> Any: ...


def _chip_main(chip: int, control: Connection, ends: dict[int, Connection],
               make_handler: Callable[[int, Links, Any], Handler], init: Any) -> None:
    """Body of one chip process: build the handler, then answer requests until told to stop."""
    links = Links(chip, ends)
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
    """N chip processes wired by `edges`; use as a context manager."""

    def __init__(self, n_chips: int, edges: set[Edge], make_handler: Callable[[int, Links, Any], Handler],
                 inits: list[Any], timeout_s: float = 60.0, start_timeout_s: float = 120.0) -> None:
        if len(inits) != n_chips:
            raise McushardError(f"cluster: {len(inits)} shards for {n_chips} chips")
        self.n_chips = n_chips
        self.timeout_s = timeout_s
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["numpy", "mcushard.runtime.chips"])
        ends: list[dict[int, Connection]] = [{} for _ in range(n_chips)]
        for a, b in sorted({tuple(sorted(e)) for e in edges}):
            if not (0 <= a < n_chips and 0 <= b < n_chips) or a == b:
                raise McushardError(f"cluster: bad link {a}-{b} for {n_chips} chips")
            ends[a][b], ends[b][a] = ctx.Pipe(duplex=True)
        self._control: list[Connection] = []
        self._procs: list[mp.process.BaseProcess] = []
        try:
            with _one_blas_thread():  # the forkserver, started by the first chip, keeps this setting
                for chip in range(n_chips):
                    host_end, chip_end = ctx.Pipe(duplex=True)
                    proc = ctx.Process(target=_chip_main, name=f"chip{chip}", daemon=True,
                                       args=(chip, chip_end, ends[chip], make_handler, inits[chip]))
                    proc.start()
                    chip_end.close()
                    self._control.append(host_end)
                    self._procs.append(proc)
            for conns in ends:  # the host keeps no link ends: a dead peer closes its pipes
                for conn in conns.values():
                    conn.close()
            self._gather(expect="ready", timeout_s=start_timeout_s)
        except BaseException:
            self.close()
            raise

    def request(self, requests: list[Any] | Any) -> list[Any]:
        """Send one request to every chip (a list: one per chip) and return the replies in chip order."""
        per_chip = requests if isinstance(requests, list) else [requests] * self.n_chips
        for conn, req in zip(self._control, per_chip):
            try:
                conn.send(req)
            except OSError:
                pass  # the chip is dead; _gather reports which
        return self._gather(expect="ok")

    def _gather(self, expect: str, timeout_s: float | None = None) -> list[Any]:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        replies: dict[int, Any] = {}
        by_conn = {id(c): i for i, c in enumerate(self._control)}
        by_sentinel = {p.sentinel: i for i, p in enumerate(self._procs)}
        while len(replies) < self.n_chips:
            pending = [c for i, c in enumerate(self._control) if i not in replies]
            sentinels = [p.sentinel for i, p in enumerate(self._procs) if i not in replies]
            ready = wait(pending + sentinels, timeout=timeout_s)
            if not ready:
                late = sorted(set(range(self.n_chips)) - set(replies))
                self.close()
                raise McushardError(f"chip {late[0]} did not answer within {timeout_s:g} s (hung); all chips stopped")
            for obj in ready:
                chip = by_sentinel[obj] if isinstance(obj, int) else by_conn[id(obj)]
                if chip in replies:
                    continue
                conn = self._control[chip]
                try:  # a sentinel may fire while the chip's last message is still in the pipe
                    kind, payload = conn.recv() if conn.poll() else ("died", None)
                except (EOFError, OSError):
                    kind, payload = "died", None
                if kind == "died":
                    self._procs[chip].join(timeout=1.0)
                    code = self._procs[chip].exitcode
                    self.close()
                    raise McushardError(f"chip {chip} died (exit code {code}); all chips stopped")
                if kind == "error":
                    last = payload.strip().splitlines()[-1]
                    if last.split(":")[0] in _LINK_ERRORS:  # a peer's death seen on a link: name the dead peer
                        wait([p.sentinel for p in self._procs], timeout=1.0)
                        dead = [(i, p.exitcode) for i, p in enumerate(self._procs)
                                if p.exitcode not in (None, 1) and i != chip]
                        if dead:
                            self.close()
                            raise McushardError(f"chip {dead[0][0]} died (exit code {dead[0][1]}); all chips stopped")
                    self.close()
                    raise McushardError(f"chip {chip} failed: {last}")
                if kind != expect:
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
        for proc in self._procs:
            proc.join(timeout=2.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._control:
            conn.close()
        self._procs, self._control = [], []

    def __enter__(self) -> "ChipCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
