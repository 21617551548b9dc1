"""The Plan: who holds which slice of which tensor, and the ordered compute and communication steps.

A plan is plain data, shared by the cost model (which charges it) and a distributed runtime (which
executes it). Conventions a runtime relies on:

- `Slice.rows`/`Slice.cols` are half-open `[start, stop)` ranges of a weight tensor stored
  `[out_features, in_features]` (names from `llama_shapes` / `bert_shapes`); a 1-D tensor uses
  `cols == (0, 1)`. `replicated` slices are held whole by every chip (norm gains on replicated
  vectors); every other byte of every tensor is held by exactly one chip.
- `Plan.steps` is one global order; `Plan.chip_steps(c)` is chip c's program. A `Compute` lists the
  work of each participating chip; an `AllReduce` is entered by every chip of its group (chips not
  in a group never see it); a `Send` pairs a sender and a receiver.
- Sizes are per token: `elements` per token plus `elements_per_key` per (token, attended key); the
  cost model multiplies by the workload's token and key counts, a runtime by what it processes.
- Partial sums travel as `psum_bytes`-wide integers (exact); activations as `act_bytes`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, NamedTuple

from mcushard.errors import McushardError
from mcushard.model.config import BertConfig, LlamaConfig, ModelConfig

Range = tuple[int, int]  # half-open [start, stop)
PSUM_BYTES = 4  # int32 partial sums: integer reductions are exact
ACT_BYTES = 1  # int8 activations
Kernel = Literal["matmul", "attention", "elementwise"]
ReduceOp = Literal["sum", "argmax"]


def split(n: int, parts: int, what: str = "items") -> list[Range]:
    """`n` items in `parts` contiguous ranges, sizes differing by at most one (larger first)."""
    if parts <= 0 or n < parts:
        raise McushardError(f"cannot split {n} {what} over {parts} chips")
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def split_even(n: int, parts: int) -> list[Range]:
    """Like `split` but every boundary is even (keeps RoPE's (2i, 2i+1) pairs on one chip)."""
    return [(2 * a, 2 * b) for a, b in split(n // 2, parts)]


class Slice(NamedTuple):
    """A rectangle of one weight tensor held by one chip."""

    tensor: str  # weight name, as in llama_shapes / bert_shapes
    rows: Range  # [start, stop) along dim 0 (out_features)
    cols: Range  # [start, stop) along dim 1 (in_features); (0, 1) for a 1-D tensor
    replicated: bool = False  # held whole by every chip

    @property
    def elements(self) -> int:
        return (self.rows[1] - self.rows[0]) * (self.cols[1] - self.cols[0])


class Work(NamedTuple):
    """What one chip computes in one step, per token (a NamedTuple: plans hold thousands)."""

    chip: int  # chip index
    tensors: tuple[str, ...] = ()  # weights read (this chip's slices of them)
    macs: int = 0  # MACs per token (matmul: weight elements; attention: per attended key)
    elements: int = 0  # element-wise ops per token (attention: softmax ops per key)
    weight_elements: int = 0  # weight elements read per token (lookups: one row); attention: KV elements per key


@dataclass(frozen=True, slots=True)
class Compute:
    """A kernel run by some chips at once, each on its own slices."""

    block: str  # "embed", "layers.3", "head"
    label: str  # what it computes, e.g. "attn.qkv"
    kernel: Kernel  # cost class; attention work is per attended key
    work: tuple[Work, ...]  # one entry per participating chip


@dataclass(frozen=True, slots=True)
class AllReduce:
    """Every chip of `group` ends with the reduction of all members' vectors."""

    block: str  # block the reduction belongs to
    label: str  # what is reduced, e.g. "attn.out"
    group: tuple[int, ...]  # participating chips, in algorithm order (first = leader)
    elements: int  # vector length per token
    elements_per_key: int = 0  # additional length per (token, attended key): attention scores
    elem_bytes: int = 4  # bytes per element on the wire
    op: ReduceOp = "sum"  # argmax: one (value, index) pair per chip packed in 8 bytes; the larger value wins
    algorithm: str = "hierarchical"  # ring | tree | hierarchical


@dataclass(frozen=True, slots=True)
class Send:
    """Point-to-point: `src` sends a vector to `dst` (pipeline stage boundaries)."""

    block: str  # block whose output is sent
    label: str  # e.g. "activations"
    src: int  # sending chip
    dst: int  # receiving chip
    elements: int  # vector length per token
    elem_bytes: int = 1  # bytes per element


Step = Compute | AllReduce | Send


@dataclass(frozen=True)
class Plan:
    """A model split across `n_chips`: per-chip slices, KV ownership and one ordered step list."""

    model: ModelConfig  # what is split
    strategy: str  # "tp", "pp", "hybrid:<tp>x<pp>"
    n_chips: int  # chips in the system
    shards: tuple[tuple[Slice, ...], ...]  # shards[c]: every slice chip c holds
    steps: tuple[Step, ...]  # global program order
    kv_elements: tuple[int, ...]  # per chip: KV-cache elements per cached position (all layers)
    act_elements: tuple[int, ...]  # per chip: live activation elements per token (peak)
    weight_bytes: int = 1  # bytes per weight element (int8)
    act_bytes: int = ACT_BYTES  # bytes per activation element (int8)
    psum_bytes: int = PSUM_BYTES  # bytes per partial-sum element (int32)
    notes: tuple[str, ...] = field(default=())  # how this plan departs from the plain scheme
    scope: str = "model"  # "model": everything; "blocks": transformer blocks only (no embedding/head)

    def chip_steps(self, chip: int) -> list[Step]:
        """Chip `chip`'s own program, in order."""
        out: list[Step] = []
        for step in self.steps:
            if isinstance(step, Compute):
                if any(w.chip == chip for w in step.work):
                    out.append(step)
            elif isinstance(step, AllReduce):
                if chip in step.group:
                    out.append(step)
            elif chip in (step.src, step.dst):
                out.append(step)
        return out

    def to_dict(self) -> dict:
        """JSON-ready manifest: per chip its slices and KV size, and the global step list."""
        def step(s: Step) -> dict:
            d = {"type": type(s).__name__} | {k: getattr(s, k) for k in s.__dataclass_fields__}
            if isinstance(s, Compute):
                d["work"] = [w._asdict() for w in s.work]
            return d

        return {
            "model": self.model.name, "strategy": self.strategy, "n_chips": self.n_chips, "scope": self.scope,
            "weight_bytes": self.weight_bytes, "act_bytes": self.act_bytes, "psum_bytes": self.psum_bytes,
            "notes": list(self.notes),
            "chips": [{"chip": c, "bytes_held": self.bytes_held(c), "kv_elements_per_position": self.kv_elements[c],
                       "slices": [s._asdict() for s in self.shards[c]]} for c in range(self.n_chips)],
            "steps": [step(s) for s in self.steps],
        }

    def bytes_held(self, chip: int) -> int:
        """Weight bytes stored on `chip` (replicated slices count on every chip)."""
        return sum(self.tensor_bytes(chip).values())

    def tensor_bytes(self, chip: int) -> dict[str, int]:
        """Weight bytes per tensor name on `chip`."""
        return self._tensor_bytes[chip]

    @cached_property
    def _tensor_bytes(self) -> list[dict[str, int]]:
        out = []
        for shard in self.shards:
            held: dict[str, int] = {}
            for name, (r0, r1), (c0, c1), _ in shard:
                held[name] = held.get(name, 0) + (r1 - r0) * (c1 - c0) * self.weight_bytes
            out.append(held)
        return out


def model_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    if isinstance(cfg, LlamaConfig):
        from mcushard.model.weights import llama_shapes

        return llama_shapes(cfg)
    if isinstance(cfg, BertConfig):
        from mcushard.model.bert_weights import bert_shapes

        return bert_shapes(cfg)
    raise McushardError(f"unknown model kind {type(cfg).__name__}")


def check_coverage(plan: Plan) -> None:
    """Every element of every tensor is held exactly once (or replicated everywhere); else raises."""
    shapes = model_shapes(plan.model)
    held: dict[str, int] = Counter()
    seen_replicated: set[str] = set()
    for chip, shard in enumerate(plan.shards):
        for s in shard:
            if s.tensor not in shapes:
                raise McushardError(f"plan: chip {chip} holds unknown tensor {s.tensor!r}")
            shape = shapes[s.tensor]
            rows, cols = shape[0], (shape[1] if len(shape) > 1 else 1)
            if not (0 <= s.rows[0] < s.rows[1] <= rows and 0 <= s.cols[0] < s.cols[1] <= cols):
                raise McushardError(f"plan: chip {chip} slice {s} outside {s.tensor} {shape}")
            if s.replicated:
                if s.tensor in seen_replicated:
                    continue
                seen_replicated.add(s.tensor)
            held[s.tensor] += s.elements
    for name, shape in shapes.items():
        if plan.scope == "blocks" and not name.startswith(("layers.", "encoder.")):
            continue
        size = shape[0] * (shape[1] if len(shape) > 1 else 1)
        if held.get(name, 0) != size:
            raise McushardError(f"plan: tensor {name!r} has {held.get(name, 0)} of {size} elements assigned")
