"""Run a Plan for real: one operating-system process per chip, each holding only its own slices.

`DistributedLlama(plan, ref)` cuts the single-chip integer model `ref` (`LlamaInt8`) into per-chip
shards (`llama_shard`), starts a `ChipCluster` wired with exactly the links the plan's collectives
and sends use, and decodes: the host hands every chip the current token and position (the host is
the I/O: it feeds tokens in and reads logits out), the chips walk their programs, exchanging
integer partial sums by message passing with the plan's all-reduce algorithm, and finish with an
argmax all-reduce. The host gathers the logits slices to return the whole vector, checks that the
chips' argmax agrees with it, and records the bytes each chip sent on each link per token. For
greedy decoding (`greedy`) the chips feed that argmax to their next step themselves, and the host
only collects tokens and counts every few tokens.
Integer partial sums make the result bit-identical to `LlamaInt8`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mcushard.errors import McushardError
from mcushard.partition.collectives import edges, schedule
from mcushard.partition.plan import AllReduce, Plan, Send
from mcushard.runtime.chips import ChipCluster
from mcushard.runtime.generate import BOS, generate
from mcushard.runtime.llama_chip import make_llama_chip
from mcushard.runtime.llama_shard import llama_shards

Link = tuple[int, int]  # (sending chip, receiving chip)
GREEDY_CHUNK = 16  # tokens the chips decode per host request in `DistributedLlama.greedy`


def plan_links(plan: Plan, group_size: int) -> set[Link]:
    """Undirected links the plan's collectives (any vector length) and sends use."""
    out: set[Link] = set()
    for step in plan.steps:
        if isinstance(step, AllReduce):
            n = max(step.elements, 1) + len(step.group) ** 2  # long enough that every chunk is non-empty
            out |= edges(schedule(step.algorithm, step.group, n, group_size))
        elif isinstance(step, Send):
            out.add((min(step.src, step.dst), max(step.src, step.dst)))
    return out


@dataclass
class RunStats:
    """What the chips reported while decoding."""

    link_bytes: list[dict[Link, int]] = field(default_factory=list)  # per step: (src, dst) -> bytes sent
    seconds: float = 0.0  # wall time inside `step`
    comm_s: float = 0.0  # summed over chips: time inside collectives and sends (incl. waiting for peers)
    busy_s: float = 0.0  # summed over chips: time running their programs
    cpu_s: float = 0.0  # summed over chips: CPU time of their programs (compute and messaging)

    def comm_fraction(self) -> float:
        return self.comm_s / max(self.busy_s, 1e-12)

    def mean_link_bytes(self) -> dict[Link, float]:
        total: dict[Link, int] = {}
        for per in self.link_bytes:
            for k, v in per.items():
                total[k] = total.get(k, 0) + v
        return {k: v / max(len(self.link_bytes), 1) for k, v in sorted(total.items())}


class ClusterModel:
    """Host side of a model run by one process per chip: the cluster, its RunStats; a context manager."""

    def __init__(self, plan: Plan, cfg, make_chip, shards, group_size: int, timeout_s: float) -> None:
        self.plan, self.cfg = plan, cfg
        self.stats = RunStats()
        self.cluster = ChipCluster(plan.n_chips, plan_links(plan, group_size), make_chip, shards,
                                   timeout_s=timeout_s)

    def _request(self, *request: object) -> list[dict]:
        """One request to every chip; the replies, with the wall time and what the chips counted recorded."""
        t0 = time.perf_counter()
        replies = self.cluster.request(request)
        self.stats.seconds += time.perf_counter() - t0
        self._record(replies)
        return replies

    def _record(self, replies: list[dict]) -> None:
        """Add one step's replies (one per chip) to the stats."""
        self.stats.comm_s += sum(r["comm_s"] for r in replies)
        self.stats.busy_s += sum(r["step_s"] for r in replies)
        self.stats.cpu_s += sum(r.get("cpu_s", 0.0) for r in replies)
        self.stats.link_bytes.append({(c, peer): b for c, r in enumerate(replies) for peer, b in r["sent"].items()})

    def held(self) -> list[dict[str, int]]:
        """Per chip: bytes it stores, counted by the chip process itself (see `ChipProgram.held`)."""
        return self.cluster.request(("held",))

    def close(self) -> None:
        self.cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DistributedLlama(ClusterModel):
    """A Decoder (`step(token, pos) -> logits`) backed by one process per chip; a context manager."""

    def __init__(self, plan: Plan, ref, group_size: int, timeout_s: float = 60.0) -> None:
        super().__init__(plan, ref.cfg, make_llama_chip, llama_shards(plan, ref, group_size), group_size, timeout_s)
        # every chip learns the next token from the argmax all-reduce: the chips can decode on their own
        self.chips_know_token = any(isinstance(s, AllReduce) and s.label == "argmax" and len(s.group) == plan.n_chips
                                    for s in plan.steps)

    def step(self, token: int, pos: int) -> np.ndarray:
        """float32 logits [vocab] of position `pos` fed `token` (the chips' slices, concatenated)."""
        if not 0 <= pos < self.cfg.max_seq_len:
            raise McushardError(f"position {pos} outside the model's {self.cfg.max_seq_len}")
        replies = self._request("step", int(token), int(pos))
        logits = np.empty(self.cfg.vocab_size, np.float32)  # [vocab]
        covered = 0
        for r in replies:
            if r["logits"] is not None:
                start, part = r["logits"]
                logits[start:start + len(part)] = part
                covered += len(part)
        if covered != self.cfg.vocab_size:
            raise McushardError(f"chips returned {covered} of {self.cfg.vocab_size} logits")
        chosen = {r["token"] for r in replies if r["token"] is not None}
        if chosen != {int(np.argmax(logits))}:
            raise McushardError(f"argmax all-reduce gave {sorted(chosen)}, the logits {int(np.argmax(logits))}")
        return logits

    def greedy(self, steps: int, start: int = BOS) -> list[int]:
        """`steps` greedy tokens after `start` (as `generate` at temperature 0), decoded by the chips
        alone: each chip feeds the argmax all-reduce's token back into its next step, as a cluster
        without a host in the loop would; the host sends one request per `GREEDY_CHUNK` tokens (each
        answered within the cluster's timeout). The stats record every step."""
        if not 0 < steps <= self.cfg.max_seq_len:
            raise McushardError(f"{steps} steps: the model holds 1 to {self.cfg.max_seq_len} positions")
        if not self.chips_know_token:  # e.g. a pipeline: the host carries the token back to the first stage
            return generate(self, steps, start=start)
        tokens: list[int] = []
        for first in range(0, steps, GREEDY_CHUNK):  # a request per chunk: a hung chip is noticed within timeout_s
            count = min(GREEDY_CHUNK, steps - first)
            t0 = time.perf_counter()
            per_chip = self.cluster.request(("greedy", tokens[-1] if tokens else int(start), first, count))
            self.stats.seconds += time.perf_counter() - t0
            for i in range(count):
                replies = [chip[i] for chip in per_chip]
                self._record(replies)
                chosen = {r["token"] for r in replies}
                if len(chosen) != 1:
                    raise McushardError(f"step {first + i}: the chips' argmax all-reduce disagrees: {sorted(chosen)}")
                tokens.append(chosen.pop())
        return tokens


@dataclass(frozen=True)
class RunReport:
    """Outcome of `run_plan`: tokens, speed, and what the chips counted."""

    tokens: list[int]  # generated token ids (the start token excluded); an encoder's input ids
    tokens_per_s: float  # decode steps per second of wall time in the chip cluster
    held: list[dict[str, int]]  # per chip: ChipProgram.held() counts
    link_bytes: dict[Link, float]  # (src, dst) -> mean payload bytes per token
    per_step_link_bytes: list[dict[Link, int]]  # per decode step: (src, dst) -> bytes
    cost_model_match: bool  # per step and link, the bytes equal what the cost model charges
    extra: tuple[str, ...] = ()  # further summary lines


def cost_model_link_bytes(plan: Plan, hw, pos: int) -> dict[Link, int]:
    """Bytes per directed link the cost model charges for decoding position `pos` (pos + 1 keys)."""
    from mcushard.cost.simulate import simulate
    from mcushard.placement import workload

    report = simulate(plan, hw, workload(plan.model, "decode", kv_len=pos + 1))
    return {k: v for k, v in report.link_bytes_per_pair.items() if v}


def run_plan(plan: Plan, ref, hw, steps: int, temperature: float = 0.0, seed: int = 0,
             timeout_s: float = 60.0) -> RunReport:
    """Generate `steps` tokens from BOS with one process per chip of `plan`; compare with the cost model."""
    steps = min(steps, plan.model.max_seq_len)
    with DistributedLlama(plan, ref, hw.group_size, timeout_s) as dist:
        out = dist.greedy(steps) if temperature <= 0.0 else generate(dist, steps, temperature, seed)
        held = dist.held()
        stats = dist.stats
    match = all(per == cost_model_link_bytes(plan, hw, pos) for pos, per in enumerate(stats.link_bytes))
    return RunReport(out, steps / max(stats.seconds, 1e-9), held, stats.mean_link_bytes(), stats.link_bytes, match)


def format_summary(plan: Plan, report: RunReport) -> str:
    """Human-readable summary (for stderr): speed, bytes held per chip, bytes per link per token."""
    lines = [f"{plan.model.name}: {plan.n_chips} chip processes, strategy {plan.strategy}, "
             f"{len(report.tokens)} tokens at {report.tokens_per_s:.1f} tokens/s",
             "bytes held per chip (int8 weights + int16 norm gains; float requantisation constants):"]
    for c, h in enumerate(report.held):
        lines.append(f"  chip {c}: {h['int8_bytes'] + h['int16_bytes']:>10,} weight bytes "
                     f"({h['weight_elements']:,} weight elements, the plan's {plan.bytes_held(c):,}); "
                     f"{h['const_bytes']:,} constant bytes")
    lines.append("bytes per link per step (a decoded token, or an encoder forward), mean over the run:"
                 if report.link_bytes else "no links used")
    for (s, d), b in report.link_bytes.items():
        lines.append(f"  {s} -> {d}: {b:,.1f}")
    lines.append("link bytes equal the cost model's, every token and link: "
                 + ("yes" if report.cost_model_match else "NO"))
    return "\n".join(lines + list(report.extra))
