"""Simulate one decode step or one prompt of a Plan on a HardwareSpec: a CostReport.

Each chip has its own clock and walks the plan's global step list:
- a compute step costs max(compute, weight/KV transfers) + the kernel launch overhead: transfers
  from levels with `overlaps_compute` are double-buffered behind the arithmetic (the excess is the
  memory stall), transfers from other levels add to it in full;
- an all-reduce starts when the last member arrives (the others idle) and takes the time of its
  message schedule; a send delivers after the link latency and the payload time.
Latency is the last chip's clock. Per chip, compute + memory stall + communication + idle = latency;
per block, latency is how far the step frontier (the latest clock) advanced while running the
block's steps, so blocks add up to the total too. Energy = dynamic (MACs, bytes per memory level,
link bytes) + static power (every chip's SoC, memory leakage, powered links) over the latency.
Pipelined plans in prompt mode stream one micro-batch per stage through the stages. The head
(final norm, classifier, argmax) runs for the last position only: that is the token a prompt
produces.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from mcushard.cost.collectives import add_rate, allreduce_cost, hop_table, link_key
from mcushard.cost.compute import compute_energy_j, compute_time_s
from mcushard.cost.memory import transfer_energy_j, transfer_time_s
from mcushard.hardware.spec import HardwareSpec
from mcushard.partition.plan import AllReduce, Compute, Plan
from mcushard.placement import Placement, Workload, place

ATTN_QUERY_TILE = 64  # prompt-mode attention re-reads K/V once per tile of this many queries


@dataclass(frozen=True)
class ChipCost:
    """Where one chip's time and energy went."""

    chip: int  # chip index
    compute_s: float  # arithmetic (incl. kernel launches)
    memory_stall_s: float  # transfers not hidden behind arithmetic
    comm_s: float  # inside collectives and sends/receives
    idle_s: float  # waiting for other chips
    energy_j: float  # dynamic energy of this chip (static is in the system breakdown)
    bytes_held: int  # weight bytes stored (from the plan)
    offchip_bytes: int  # bytes read from off-chip memory
    link_bytes_sent: int  # payload bytes this chip put on links
    level_bytes: dict[str, int]  # bytes read per memory level


@dataclass(frozen=True)
class CostReport:
    """Latency, energy and traffic of one decode step or one prompt."""

    model: str  # model name
    strategy: str  # plan strategy
    n_chips: int  # chips
    mode: str  # decode | prompt
    tokens: int  # tokens processed
    cached: int  # KV positions held
    latency_s: float  # wall time
    energy_j: float  # all chips, dynamic + static
    offchip_bytes: int  # bytes read from off-chip memories, all chips
    link_bytes: int  # payload bytes sent, all chips
    energy_breakdown_j: dict[str, float]  # compute, memory.<level>, link, static: sums to energy_j
    chips: tuple[ChipCost, ...]  # per chip
    blocks: tuple[tuple[str, float, float], ...]  # (block, latency_s, energy_j), in order; sum to totals
    link_bytes_per_pair: dict[tuple[int, int], int]  # (src, dst) -> payload bytes
    events: tuple[tuple[int, str, str, float, float], ...] = field(default=(), repr=False)  # trace

    @property
    def edp_js(self) -> float:
        return self.energy_j * self.latency_s

    def to_dict(self) -> dict:
        return {
            "model": self.model, "strategy": self.strategy, "n_chips": self.n_chips, "mode": self.mode,
            "tokens": self.tokens, "cached": self.cached, "latency_ms": self.latency_s * 1e3,
            "energy_mj": self.energy_j * 1e3, "edp_mj_ms": self.edp_js * 1e6,
            "offchip_bytes": self.offchip_bytes, "link_bytes": self.link_bytes,
            "energy_breakdown_mj": {k: v * 1e3 for k, v in self.energy_breakdown_j.items()},
            "chips": [
                {"chip": c.chip, "compute_ms": c.compute_s * 1e3, "memory_stall_ms": c.memory_stall_s * 1e3,
                 "comm_ms": c.comm_s * 1e3, "idle_ms": c.idle_s * 1e3, "dynamic_energy_mj": c.energy_j * 1e3,
                 "bytes_held": c.bytes_held, "offchip_bytes": c.offchip_bytes,
                 "link_bytes_sent": c.link_bytes_sent, "level_bytes": c.level_bytes}
                for c in self.chips],
            "blocks": [{"block": b, "latency_ms": t * 1e3, "energy_mj": e * 1e3} for b, t, e in self.blocks],
            "link_bytes_per_pair": {f"{s}->{d}": n for (s, d), n in sorted(self.link_bytes_per_pair.items())},
        }


def _stages(plan: Plan) -> int:
    if plan.strategy == "pp":
        return plan.n_chips
    if plan.strategy.startswith("hybrid:"):
        return int(plan.strategy.split("x")[-1])
    return 1


def _work_cost(kernel, w, homes, cp, chip, levels, plan: Plan, wl: Workload, tokens: int):
    """(seconds, of which memory stall, MAC energy, ((level, bytes, energy), ...), total energy) of one
    chip's work."""
    per = wl.keys * tokens if kernel == "attention" else tokens
    macs, elems = w.macs * per, w.elements * per
    reads: dict[str, float] = {}
    if kernel == "attention":
        reads[homes] = w.weight_elements * plan.act_bytes * wl.keys * -(-tokens // ATTN_QUERY_TILE)
    elif kernel == "matmul":  # a matmul reads its whole slices, once per token tile
        for lv, nbytes in homes:
            reads[lv] = reads.get(lv, 0) + nbytes * cp.token_tiles
    elif homes is not None and w.weight_elements:  # lookups read one row per token
        reads[homes] = w.weight_elements * plan.weight_bytes * tokens
    t_c = compute_time_s(chip, kernel, tokens, macs, elems)
    t_m = t_serial = 0.0
    out = []
    for lv, nbytes in reads.items():
        level = levels[lv]
        tt = transfer_time_s(level, nbytes, -(-int(nbytes) // cp.l1_tile_bytes), chip.dma_setup_s)
        if level.overlaps_compute:
            t_m += tt
        else:
            t_serial += tt
        out.append((lv, int(nbytes), transfer_energy_j(level, chip.l1, nbytes)))
    t_stall = max(0.0, t_m - t_c) + t_serial
    e_mac = compute_energy_j(chip, macs, elems)
    return t_c + t_stall + chip.kernel_overhead_s, t_stall, e_mac, tuple(out), e_mac + sum(e for _, _, e in out)


def simulate(plan: Plan, hw: HardwareSpec, wl: Workload, placement: Placement | None = None,
             trace: bool = False) -> CostReport:
    chip, link = hw.chip, hw.link
    micro = _stages(plan) if wl.mode == "prompt" else 1
    tokens = -(-wl.tokens // micro)
    placement = placement or place(plan, chip, replace(wl, tokens=tokens))
    n = plan.n_chips
    levels = {lv.name: lv for lv in chip.levels}
    offchip = chip.offchip.name if chip.offchip else None
    held = [plan.tensor_bytes(c) for c in range(n)]
    clock, comp, stall, comm, idle, dyn = ([0.0] * n for _ in range(6))
    level_bytes = [dict.fromkeys(levels, 0) for _ in range(n)]
    sent = [0] * n
    pairs: dict[tuple[int, int], int] = {}
    hop_bytes = 0
    e_compute = 0.0
    e_level = dict.fromkeys(levels, 0.0)
    blocks: dict[str, list[float]] = {}
    events: list[tuple[int, str, str, float, float]] = []
    lk, adds = link_key(link), add_rate(chip)
    table = hop_table(link.topology, n)
    memo: dict[tuple, int] = {}  # work key -> index into costs
    costs: list[tuple] = []  # (seconds, stall, MAC energy, ((level, bytes, energy), ...), total energy)
    uses: list[list[int]] = [[] for _ in range(n)]  # per chip: the cost index of every kernel it ran
    memo_get, cps = memo.get, placement.chips
    for _ in range(micro):
        for step in plan.steps:
            before = max(clock)
            acc = blocks.setdefault(step.block, [0.0, 0.0])
            if isinstance(step, Compute):
                attention = step.kernel == "attention"
                kernel = step.kernel
                n_tok = 1 if step.block == "head" else tokens  # only the last position's logits matter
                prev_w = prev_cp = None
                idx = -1
                for w in step.work:
                    c = w[0]
                    cp = cps[c]
                    if cp is prev_cp and w[2] == prev_w[2] and w[3] == prev_w[3] and w[4] == prev_w[4] \
                            and w[1] == prev_w[1]:
                        pass  # same work on an identically placed chip: same cost as the previous one
                    elif (idx := memo_get(key := (kernel, w[2], w[3], w[4], w[1], id(cp), n_tok))) is None:
                        if step.kernel == "matmul":
                            homes = tuple((cp.home[t], held[c][t]) for t in w.tensors)
                        elif attention:
                            homes = cp.kv_level
                        else:
                            homes = cp.home[w.tensors[0]] if w.tensors else None
                        idx = memo[key] = len(costs)
                        costs.append(_work_cost(step.kernel, w, homes, cp, chip, levels, plan, wl, n_tok))
                    prev_w, prev_cp = w, cp
                    t, t_stall, e_mac, reads, e_total = costs[idx]
                    if trace:
                        events.append((c, f"{step.block}/{step.label}", step.kernel, clock[c], t))
                    clock[c] += t
                    comp[c] += t - t_stall
                    stall[c] += t_stall
                    uses[c].append(idx)
                    acc[1] += e_total
            elif isinstance(step, AllReduce):
                n_tok = 1 if step.block == "head" else tokens
                count = int(step.elements * n_tok + step.elements_per_key * n_tok * wl.keys)
                t, msgs, hb = allreduce_cost(step.algorithm, step.group, count, step.elem_bytes, lk, adds, n,
                                             hw.group_size)
                start = max(clock[c] for c in step.group)
                for c in step.group:
                    idle[c] += start - clock[c]
                    clock[c] = start + t
                    comm[c] += t
                    if trace:
                        events.append((c, f"{step.block}/{step.label}", "allreduce", start, t))
                for (s, d), nb in msgs:
                    pairs[(s, d)] = pairs.get((s, d), 0) + nb
                    sent[s] += nb
                    dyn[s] += nb * link.energy_pj_per_byte * 1e-12 * table[s][d]
                hop_bytes += hb
                acc[1] += hb * link.energy_pj_per_byte * 1e-12
            else:  # Send
                nb = step.elements * tokens * step.elem_bytes
                h = table[step.src][step.dst]
                t_wire = nb / link.bandwidth_bytes_per_s
                arrive = clock[step.src] + h * link.latency_s + t_wire
                comm[step.src] += t_wire
                if trace:
                    events.append((step.src, f"{step.block}/{step.label}->{step.dst}", "send", clock[step.src], t_wire))
                clock[step.src] += t_wire
                wait = max(0.0, arrive - clock[step.dst])
                comm[step.dst] += wait
                clock[step.dst] += wait
                pairs[(step.src, step.dst)] = pairs.get((step.src, step.dst), 0) + nb
                sent[step.src] += nb
                hop_bytes += nb * h
                dyn[step.src] += nb * h * link.energy_pj_per_byte * 1e-12
                acc[1] += nb * h * link.energy_pj_per_byte * 1e-12
            acc[0] += max(clock) - before
    for c in range(n):
        for idx, count in Counter(uses[c]).items():
            _, _, e_mac, reads, e_total = costs[idx]
            e_compute += e_mac * count
            dyn[c] += e_total * count
            for lv, nbytes, el in reads:
                e_level[lv] += el * count
                level_bytes[c][lv] += nbytes * count
    latency = max(clock)
    for c in range(n):
        idle[c] += latency - clock[c]
    users_offchip = sum(1 for c in range(n) if offchip and (placement.chips[c].offchip_weight_bytes
                                                           or placement.chips[c].kv_level == offchip))
    static_mw = n * (chip.static_power_mw + sum(lv.idle_power_mw for lv in chip.levels if lv.on_chip))
    static_mw += users_offchip * (chip.offchip.idle_power_mw if offchip else 0.0)
    static_mw += n * link.idle_power_mw if n > 1 else 0.0
    e_static = static_mw * 1e-3 * latency
    e_link = hop_bytes * link.energy_pj_per_byte * 1e-12
    breakdown = {"compute": e_compute} | {f"memory.{k}": v for k, v in e_level.items() if v} | {
        "link": e_link, "static": e_static}
    energy = sum(breakdown.values())
    block_rows = tuple((b, t, e + (e_static * t / latency if latency else 0.0)) for b, (t, e) in blocks.items())
    chips = tuple(
        ChipCost(c, comp[c], stall[c], comm[c], idle[c], dyn[c], plan.bytes_held(c),
                 level_bytes[c].get(offchip, 0) if offchip else 0, sent[c],
                 {k: v for k, v in level_bytes[c].items() if v})
        for c in range(n))
    return CostReport(plan.model.name, plan.strategy, n, wl.mode, wl.tokens, wl.cached, latency, energy,
                      sum(ch.offchip_bytes for ch in chips), sum(sent), breakdown, chips, block_rows, pairs,
                      tuple(events))
