"""What every chip program shares: the plan's collectives and sends, carried out over counted links.

Vectors travel in the plan's wire format (`elem_bytes` per element: int8 embedding rows, int32 partial
sums, int64 packed argmax keys), so the bytes a chip sends are the bytes the cost model charges. A
value that does not fit the wire format is an error, never a silent wrap-around: an int32 sum is
exact when every member's vector is below 2^31 / (group size), since every partial sum of the
schedule adds at most that many vectors.
"""

from __future__ import annotations

import numpy as np

from mcushard.errors import McushardError
from mcushard.partition.plan import AllReduce, Send
from mcushard.runtime.chips import BoundRounds, chip_schedule, run_rounds
from mcushard.runtime.links import SLOT_BYTES, Links

WIRE_DTYPES = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}  # elem_bytes -> integer wire type


def to_wire(vector: np.ndarray, elem_bytes: int, members: int = 1) -> np.ndarray:
    """Integer `vector` [n] as the wire type of `elem_bytes`, checked so that sums of `members` fit."""
    dtype = WIRE_DTYPES.get(elem_bytes)
    if dtype is None:
        raise McushardError(f"no integer wire format of {elem_bytes} bytes")
    limit = int(np.iinfo(dtype).max) // max(members, 1)
    vector = np.asarray(vector)
    if vector.size and (int(vector.max()) > limit or int(vector.min()) < -limit):
        raise McushardError(f"a reduced value exceeds the {8 * elem_bytes}-bit wire format over {members} chips; "
                            "use a scheme with narrower activations")
    return vector.astype(dtype)


def order_key(values: np.ndarray) -> np.ndarray:
    """float32 [n] -> int64 [n] whose integer order is the float order (for packed argmax keys)."""
    bits = np.asarray(values, np.float32).view(np.int32).astype(np.int64)  # [n]
    return np.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


def pack_argmax(logits: np.ndarray, first_index: int, vocab: int, best: int | None = None) -> np.ndarray:
    """Best (value, index) of a logits slice [n] packed in one int64: a larger value wins, then a lower
    index (np.argmax's first occurrence), so `max` over packed keys is the argmax of the whole. `best`:
    np.argmax(logits) when the caller has it."""
    i = int(np.argmax(logits)) if best is None else best
    return np.array([(int(order_key(logits[i:i + 1])[0]) << 32) | (vocab - 1 - (first_index + i))], np.int64)


def unpack_argmax(key: np.ndarray, vocab: int) -> int:
    return vocab - 1 - (int(key[0]) & 0xFFFFFFFF)


class ChipProgram:
    """Base of a chip handler: collectives and point-to-point sends of the plan."""

    def __init__(self, links: Links, group_size: int, shard) -> None:
        self.links = links
        self.shard = shard  # everything this chip was given (a frozen dataclass of arrays)
        self.group_size = group_size
        self._bound: dict[tuple, tuple] = {}  # (id(step), n, exclusive) -> (step, *`_bind` of it)

    def allreduce(self, step: AllReduce, vector: np.ndarray, exclusive: bool = False,
                  proven_max: int | None = None) -> np.ndarray:
        """All-reduce `vector` (integers [n]) over the step's group with its algorithm; int64 result.

        `exclusive`: every element is non-zero on at most one chip (zero-padded lookups), so the
        sum of any subset fits wherever one vector does. `proven_max`: a proven max |vector| (e.g. an
        `ExactLinear.y_bound`); when it fits the wire format the vector is not scanned for range."""
        key = (id(step), vector.size, exclusive)
        bound = self._bound.get(key)
        if bound is None or bound[0] is not step:  # (kept with the step: its id stays unique)
            bound = self._bound[key] = (step, *self._bind(step, int(vector.size), exclusive))
        _, rounds, limit, combine = bound
        if (proven_max is None or proven_max > limit) and vector.size and (
                int(np.maximum.reduce(vector)) > limit or int(np.minimum.reduce(vector)) < -limit):
            to_wire(vector, step.elem_bytes, 1 if exclusive or step.op == "argmax" else len(step.group))  # raises
        if isinstance(rounds, BoundRounds):
            return rounds.run(vector, combine)
        return run_rounds(self.links, rounds, to_wire(vector, step.elem_bytes), combine).astype(np.int64)

    def _bind(self, step: AllReduce, n: int, exclusive: bool) -> tuple:
        """(this chip's rounds, bound to its links when they fit them, the wire-format limit, the
        combining function) of `step` for vectors of n elements (`_bound` keeps them with the step)."""
        mine = chip_schedule(step.algorithm, step.group, n, self.group_size, self.links.chip)
        dtype = np.dtype(WIRE_DTYPES.get(step.elem_bytes, np.int64))
        members = 1 if exclusive or step.op == "argmax" else len(step.group)
        limit = int(np.iinfo(dtype).max) // max(members, 1)
        if step.elem_bytes in WIRE_DTYPES and BoundRounds.fits(mine, dtype.itemsize, SLOT_BYTES):
            mine = BoundRounds(self.links, mine, n, dtype)
        return mine, limit, (np.maximum if step.op == "argmax" else None)

    def send(self, step: Send, vector: np.ndarray) -> None:
        self.links.send(step.dst, to_wire(vector, step.elem_bytes))

    def recv(self, step: Send) -> np.ndarray:
        return self.links.recv(step.src).astype(np.int64)

    def held(self) -> dict[str, int]:
        """What this chip stores, counted from the arrays it was given (`self.shard`): int8 weight
        bytes, elements of int16 norm gains (which the plan counts as weight elements), their real
        bytes, and the bytes of float requantisation constants."""
        out = {"int8_bytes": 0, "int16_elements": 0, "int16_bytes": 0, "const_bytes": 0}
        for array in _arrays(self.shard):
            if array.dtype == np.int8:
                out["int8_bytes"] += array.nbytes
            elif array.dtype == np.int16:
                out["int16_elements"] += array.size
                out["int16_bytes"] += array.nbytes
            else:
                out["const_bytes"] += array.nbytes
        out["weight_elements"] = out["int8_bytes"] + out["int16_elements"]
        return out

    def take_bytes_sent(self) -> dict[int, int]:
        """Bytes sent per peer since the last call, then reset."""
        out = dict(self.links.bytes_sent)
        self.links.bytes_sent.clear()
        return out


def _arrays(obj):
    """Every numpy array inside a (nested) dataclass / dict / tuple."""
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _arrays(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            if isinstance(v, (np.ndarray, dict, list, tuple)) or hasattr(v, "__dataclass_fields__"):
                yield from _arrays(v)
    elif hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            yield from _arrays(getattr(obj, name))
