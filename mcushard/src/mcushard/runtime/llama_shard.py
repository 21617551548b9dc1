"""Per-chip shards of an int8 Llama decoder: only the slices a Plan gives the chip.

The host cuts the quantised model (`QuantLlama`) along the plan's `Slice`s and hands each chip a
`LlamaShard`. Every int8 matrix in a shard is assembled from slices the plan assigns to that chip
(`SliceTaker` refuses anything else), so a chip never sees another chip's weights. What comes with the
slices is per-row data of the rows held (requantisation ratios from the per-row weight scales, which
`LlamaInt8` computes) and a few replicated constants:
- the int16 RMSNorm gains (the plan replicates norms on every chip of a group);
- per-layer static activation scales (one float per head / layer, from calibration);
- the embedding's per-row ratio for every vocabulary row (float64 [vocab]) on chips that turn a
  looked-up int8 row into residual units: the lookup all-reduce carries the int8 row only, so the
  scale of the looked-up row must be known to every receiver (4 bytes per row on an MCU, float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcushard.errors import McushardError
from mcushard.model.config import LlamaConfig
from mcushard.partition.plan import Plan, Range
from mcushard.runtime.int8 import LlamaInt8
from mcushard.runtime.quant import QuantScheme


@dataclass(frozen=True)
class LayerShard:
    """One chip's part of one decoder block (heads `pieces`, FFN rows `ffn_rows`)."""

    pieces: tuple[tuple[int, int, int], ...]  # (kv head, first head dim, stop) owned, RoPE pairs kept whole
    qkv_w: np.ndarray  # int8 [q_c + 2 kv_c, dim]: wq rows (piece, rep), then wk rows, then wv rows
    qkv_ratio: np.ndarray  # float64 [q_c + 2 kv_c]: requantisation ratio per row (times the norm scale)
    score_ratio: np.ndarray  # float64 [pieces, n_rep, 1]: real score per accumulator unit
    att_ratio: np.ndarray  # float64 [pieces, n_rep, 1]: attention output units per (prob x v) unit
    wo_w: np.ndarray  # int8 [dim, q_c]: wo columns of the chip's heads, in qkv_w's q order
    wo_ratio: np.ndarray  # float64 [dim]: wo partial sum -> residual units (per-row scales of wo)
    ffn_rows: Range  # [start, stop) of the FFN hidden units held
    w13_w: np.ndarray  # int8 [2 h_c, dim]: w1 rows then w3 rows
    gate_ratio: np.ndarray  # float64 [h_c]
    up_ratio: np.ndarray  # float64 [h_c]
    w2_w: np.ndarray  # int8 [dim, h_c]: w2 columns
    w2_ratio: np.ndarray  # float64 [dim]
    attention_gain: np.ndarray  # int16 [dim] replicated RMSNorm gain
    ffn_gain: np.ndarray  # int16 [dim] replicated RMSNorm gain


@dataclass(frozen=True)
class LlamaShard:
    """Everything one chip process is given: its slices, per-row ratios, and its program."""

    cfg: LlamaConfig  # model shape
    scheme: QuantScheme  # activation bit widths
    chip: int  # this chip
    steps: tuple  # plan.chip_steps(chip)
    group_size: int  # hierarchical all-reduce sub-group size (the hardware preset's)
    eps_units: int  # RMSNorm epsilon in squared residual units
    layers: dict[int, LayerShard]  # layer index -> this chip's part (only layers it runs)
    vocab_rows: Range | None  # embedding / classifier rows held; None if none
    emb_w: np.ndarray | None  # int8 [rows, dim]: token embedding rows held
    emb_ratio: np.ndarray | None  # float64 [vocab]: per-row embedding ratio (replicated, see module doc)
    cls_w: np.ndarray | None  # int8 [rows, dim]: classifier rows (None when shared with emb_w)
    cls_ratio: np.ndarray | None  # float64 [rows]: logits per accumulator unit (times the norm scale)
    final_gain: np.ndarray | None  # int16 [dim]: final RMSNorm gain, on head chips


class SliceTaker:
    """Hands out sub-arrays of the quantised model, only for slices the plan gives `chip`."""

    def __init__(self, plan: Plan, chip: int, q: dict, gain: dict) -> None:
        self.q, self.gain = q, gain
        self.held = {(s.tensor, tuple(s.rows), tuple(s.cols)) for s in plan.shards[chip]}
        self.chip = chip

    def __call__(self, tensor: str, rows: Range, cols: Range = (0, 1)) -> np.ndarray:
        """The sub-array [rows, cols] of `tensor`; it must lie inside one slice the chip holds."""
        if not any(r[0] <= rows[0] and rows[1] <= r[1] and c[0] <= cols[0] and cols[1] <= c[1]
                   for r, c in self.has(tensor)):
            raise McushardError(f"chip {self.chip}: plan gives no slice {tensor}{list(rows)}{list(cols)}")
        if tensor in self.gain:
            return self.gain[tensor][rows[0]:rows[1]].copy()
        return self.q[tensor][rows[0]:rows[1], cols[0]:cols[1]].copy()

    def has(self, tensor: str) -> list[tuple[Range, Range]]:
        """(rows, cols) of the chip's slices of `tensor` (the plan merges contiguous ones)."""
        return sorted((r, c) for t, r, c in self.held if t == tensor)


def head_pieces(take: SliceTaker, p: str, hd: int) -> tuple[tuple[int, int, int], ...]:
    """(kv head, d0, d1) of the chip's K rows, cut at head boundaries, in row order."""
    out = []
    for (a, b), _ in take.has(p + "wk"):
        for g in range(a // hd, -(-b // hd)):
            out.append((g, max(a, g * hd) - g * hd, min(b, (g + 1) * hd) - g * hd))
    return tuple(out)


def _layer(take: SliceTaker, ref: LlamaInt8, layer: int) -> LayerShard:
    cfg, hd = ref.cfg, ref.cfg.head_dim
    n_rep, dim, p, lp = cfg.n_heads // cfg.n_kv_heads, cfg.dim, f"layers.{layer}.", ref.layers[layer]
    pieces = head_pieces(take, p, hd)
    q_rows = [(h * hd + d0, h * hd + d1) for g, d0, d1 in pieces for h in range(g * n_rep, (g + 1) * n_rep)]
    kv_rows = [(g * hd + d0, g * hd + d1) for g, d0, d1 in pieces]
    qkv_w = np.concatenate([take(p + "wq", r, (0, dim)) for r in q_rows]
                           + [take(p + name, r, (0, dim)) for name in ("wk", "wv") for r in kv_rows])
    idx = np.concatenate([np.arange(*r) for r in q_rows] + [cfg.dim + np.arange(*r) for r in kv_rows]
                         + [cfg.dim + cfg.kv_dim + np.arange(*r) for r in kv_rows])
    heads = [g for g, _, _ in pieces]
    hid = [r for r, _ in take.has(p + "w1")]
    if len(hid) != 1:
        raise McushardError(f"chip {take.chip}: expected one FFN row range in layer {layer}, got {hid}")
    h0, h1 = hid[0]
    return LayerShard(
        pieces=pieces, qkv_w=qkv_w, qkv_ratio=lp["qkv"][idx], score_ratio=lp["score"][heads],
        att_ratio=np.ascontiguousarray(lp["att"][heads]),
        wo_w=np.concatenate([take(p + "wo", (0, dim), r) for r in q_rows], axis=1), wo_ratio=lp["wo"],
        ffn_rows=(h0, h1),
        w13_w=np.concatenate([take(p + "w1", (h0, h1), (0, dim)), take(p + "w3", (h0, h1), (0, dim))]),
        gate_ratio=lp["gate"][h0:h1], up_ratio=lp["up"][h0:h1], w2_w=take(p + "w2", (0, dim), (h0, h1)),
        w2_ratio=lp["w2"], attention_gain=take(p + "attention_norm", (0, dim)),
        ffn_gain=take(p + "ffn_norm", (0, dim)))


def llama_shards(plan: Plan, ref: LlamaInt8, group_size: int) -> list[LlamaShard]:
    """One shard per chip of `plan` from the single-chip integer model `ref` (same quantisation)."""
    cfg = ref.cfg
    if not isinstance(plan.model, LlamaConfig) or plan.model != cfg:
        raise McushardError("plan and quantised model describe different models")
    if plan.scope != "model":
        raise McushardError("a distributed run needs a plan of the whole model (scope 'model')")
    qm, out = ref.qm, []
    for chip in range(plan.n_chips):
        take = SliceTaker(plan, chip, qm.q, qm.gain)
        layers = {layer: _layer(take, ref, layer) for layer in range(cfg.n_layers)
                  if take.has(f"layers.{layer}.wk")}
        emb = take.has("tok_embeddings")
        rows = emb[0][0] if emb else None
        cls_name = "tok_embeddings" if cfg.shared_classifier else "output"
        cls = take.has(cls_name)
        if cls and rows is not None and cls[0][0] != rows:
            raise McushardError(f"chip {chip}: embedding and classifier rows differ")
        rows = rows or (cls[0][0] if cls else None)
        steps = tuple(plan.chip_steps(chip))
        out.append(LlamaShard(
            cfg=cfg, scheme=ref.scheme, chip=chip, steps=steps, group_size=group_size, eps_units=ref.eps_units,
            layers=layers, vocab_rows=rows,
            emb_w=take("tok_embeddings", rows, (0, cfg.dim)) if emb else None,
            emb_ratio=ref.emb_ratio if 0 in layers else None,
            cls_w=take("output", rows, (0, cfg.dim)) if cls and not cfg.shared_classifier else None,
            cls_ratio=ref.cls_ratio[rows[0]:rows[1]] if cls else None,
            final_gain=take("norm", (0, cfg.dim)) if take.has("norm") else None))
    return out
