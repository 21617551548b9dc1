"""One chip's fp32 ONNX graph of a MobileBERT-style encoder (bottleneck, NoNorm) under a TP plan.

Same conventions as `export.onnx`: the chip's slices as initializers, every all-reduce a pair of
graph boundaries (`<id>.partial` out, `<id>.sum` in). The 512-wide state stays sharded by columns as
in the plan (`partition/bert_tp.py`): the word-embedding lookup (zero-padded vocabulary rows) is
summed, the embedding transformation and each block's output bottleneck compute the chip's columns
with NoNorm locally; the three projections from the shard (bottleneck input, shared Q/K bottleneck,
value) give one partial sum [S, 3A]; attention by heads (or a head-dim slice with its partial
scores summed), the attention output and each FFN's down projection are partial sums. Inputs:
`tokens` [S] (input ids), `token_type_ids` [S], `attention_mask` [S] (1 attend, 0 padding); output
`hidden` [S, state columns]. Semantics of `runtime/bert.py` (HF MobileBERT, eval mode).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto

from mcushard.export.onnx import _ChipGraph
from mcushard.model.bert_weights import ffn_prefixes


class BertGraph(_ChipGraph):
    """Builds one chip's encoder graph."""

    def nonorm(self, x: str, name: str, cols: tuple[int, int] | None = None) -> str:
        """x * gamma + beta of the norm `name` (restricted to state columns `cols` when sharded)."""
        width = self.cfg.hidden_size if cols else self.cfg.attention_width
        cols = cols or (0, width)
        gamma = self.take(name + ".weight", cols)
        beta = self.take(name + ".bias", cols)
        return self.g.op("Add", self.g.op("Mul", x, self.g.const(gamma)), self.g.const(beta))

    def dense(self, x: str, name: str, rows: tuple[int, int], cols: tuple[int, int]) -> str:
        """x [S, cols] through rows x cols of `name`, plus the bias rows when the plan gives them to this
        chip (a K-split layer's bias sits on the group's first chip, inside its partial sum)."""
        y = self.linear(x, self.take(name + ".weight", rows, cols))
        if any(r[0] <= rows[0] and rows[1] <= r[1] for r, _ in self.take.has(name + ".bias")):
            y = self.g.op("Add", y, self.g.const(self.take(name + ".bias", rows)))
        return y

    def shift(self, x: str, forward: bool) -> str:
        """Rows moved by one position with a zero row at the end (forward) or the start: [S, E]."""
        g, big = self.g, np.array([1 << 30], np.int64)
        zero_row = g.op("Mul", g.op("Slice", x, self.zero, self.one, self.zero), g.const(np.array(0.0, np.float32)))
        if forward:
            return g.op("Concat", g.op("Slice", x, self.one, g.const(big), self.zero), zero_row, axis=0)
        last = g.op("Sub", self.seq, self.one)
        return g.op("Concat", zero_row, g.op("Slice", x, self.zero, last, self.zero), axis=0)

    def build(self) -> tuple[onnx.ModelProto, dict]:
        cfg, g, take = self.cfg, self.g, self.take
        types = g.input("token_type_ids", TensorProto.INT64, ["S"])
        keep = g.input("attention_mask", TensorProto.FLOAT, ["S"])
        mask = g.op("Mul", g.op("Sub", g.const(np.array(1.0, np.float32)), keep),
                    g.const(np.array(np.finfo(np.float32).min, np.float32)))  # [S] over keys
        rows, _ = self.lookup("embeddings.word_embeddings.weight")
        x = self.sync("embed.lookup", rows, ["S", cfg.emb_size])
        if cfg.trigram_input:
            x = g.op("Concat", self.shift(x, True), x, self.shift(x, False), axis=1)  # [S, 3E]
        (h0, h1), (_, width) = take.has("embeddings.embedding_transformation.weight")[0]
        x = self.dense(x, "embeddings.embedding_transformation", (h0, h1), (0, width))
        pos = take("embeddings.position_embeddings.weight", (0, cfg.max_position_embeddings), (h0, h1))
        pos = g.op("Slice", g.const(pos), self.zero, self.seq, self.zero)
        typ = g.op("Gather", g.const(take("embeddings.token_type_embeddings.weight", (0, cfg.type_vocab_size),
                                          (h0, h1))), types, axis=0)
        x = self.nonorm(g.op("Add", g.op("Add", x, pos), typ), "embeddings.LayerNorm", (h0, h1))  # [S, cols]
        for layer in range(cfg.num_layers):
            x = self.layer(layer, x, (h0, h1), mask)
        g.output(x, "hidden", ["S", h1 - h0])
        return g.model(f"{cfg.name}_chip{self.chip}"), {"state_cols": [h0, h1]}

    def layer(self, layer: int, x: str, cols: tuple[int, int], mask: str) -> str:
        cfg, g, take, p = self.cfg, self.g, self.take, f"encoder.layer.{layer}."
        A, hd = cfg.attention_width, cfg.head_dim
        names = ["bottleneck.input.dense", "attention.self.value"]
        if cfg.key_query_shared_bottleneck:
            names.insert(1, "bottleneck.attention.dense")
        parts = [self.dense(x, p + n, (0, A), cols) for n in names]
        both = self.sync(f"layers.{layer}.bottleneck", g.op("Concat", *parts, axis=1), ["S", len(names) * A])
        pick = {n: g.op("Slice", both, g.const(np.array([i * A], np.int64)), g.const(np.array([(i + 1) * A], np.int64)),
                        self.one) for i, n in enumerate(names)}
        b = p + "bottleneck."
        residual = self.nonorm(pick["bottleneck.input.dense"], b + "input.LayerNorm")
        qk_in = residual
        if cfg.key_query_shared_bottleneck:
            qk_in = self.nonorm(pick["bottleneck.attention.dense"], b + "attention.LayerNorm")
        (r0, r1), _ = take.has(p + "attention.self.query.weight")[0]
        heads, dl = max(1, (r1 - r0) // hd), min(hd, r1 - r0)
        q = self.dense(qk_in, p + "attention.self.query", (r0, r1), (0, A))
        k = self.dense(qk_in, p + "attention.self.key", (r0, r1), (0, A))
        v = g.op("Slice", pick["attention.self.value"], g.const(np.array([r0], np.int64)),
                 g.const(np.array([r1], np.int64)), self.one)  # the summed value projection, bias included

        def split(t: str) -> str:  # [S, heads*dl] -> [heads, S, dl]
            return g.op("Transpose", g.op("Reshape", t, g.const(np.array([0, heads, dl], np.int64))), perm=[1, 0, 2])

        scores = g.op("MatMul", split(q), g.op("Transpose", split(k), perm=[0, 2, 1]))  # [heads, S, S]
        scores = self.sync(f"layers.{layer}.attn.scores", scores, [heads, "S", "S"])
        scores = g.op("Add", g.op("Mul", scores, g.const(np.array(1 / math.sqrt(hd), np.float32))), mask)
        ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), split(v))  # [heads, S, dl]
        ctx = g.op("Reshape", g.op("Transpose", ctx, perm=[1, 0, 2]), g.const(np.array([0, r1 - r0], np.int64)))
        o = self.sync(f"layers.{layer}.attn.out",
                      self.dense(ctx, p + "attention.output.dense", (0, A), (r0, r1)), ["S", A])
        y = self.nonorm(g.op("Add", o, residual), p + "attention.output.LayerNorm")
        for up, down in ffn_prefixes(cfg, layer):
            (i0, i1), _ = take.has(up + ".dense.weight")[0]
            h = self.dense(y, up + ".dense", (i0, i1), (0, A))
            h = g.op("Relu", h) if cfg.hidden_act == "relu" else self.gelu(h)
            label = down.split(".", 3)[-1] + ".out"
            d = self.sync(f"layers.{layer}.{label}", self.dense(h, down + ".dense", (0, A), (i0, i1)), ["S", A])
            y = self.nonorm(g.op("Add", d, y), down + ".LayerNorm")
        o = p + "output.bottleneck."
        out = self.dense(y, o + "dense", cols, (0, A))
        return self.nonorm(g.op("Add", out, x), o + "LayerNorm", cols)

    def gelu(self, h: str) -> str:
        """Exact GELU 0.5 x (1 + erf(x / sqrt 2)) (opset 17 has Erf but no Gelu)."""
        g = self.g
        erf = g.op("Erf", g.op("Mul", h, g.const(np.array(1 / math.sqrt(2), np.float32))))
        return g.op("Mul", g.op("Mul", h, g.const(np.array(0.5, np.float32))),
                    g.op("Add", erf, g.const(np.array(1.0, np.float32))))
