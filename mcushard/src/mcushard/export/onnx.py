"""Export a tensor-parallel plan as one ONNX model per chip plus a JSON manifest: Llama decoders here,
MobileBERT-style encoders in `export.onnx_bert` (same conventions, output `hidden` state columns).

Each chip's model holds only that chip's slices (as initializers) and computes, in fp32, its part of
every block for a whole sequence (causal attention, no KV cache): inputs `tokens` int64 [S].
Synchronisation points are graph inputs and outputs: for each all-reduce of the plan the chip
takes part in, the graph outputs `<id>.partial` (this chip's contribution: zero-padded embedding
rows, partial q.k scores of a split head, the partial sums of wo and w2) and takes `<id>.sum` (the
reduction over the group) as an input that the rest of the graph reads. A runtime (or a per-chip
compiler) evaluates the graph in phases: at sync k it computes `<id_k>.partial`, which depends only
on `tokens` and the sums of earlier syncs, carries out the all-reduce the manifest describes
(group, algorithm, elements), and feeds `<id_k>.sum`. The head outputs `logits`, the chip's
vocabulary slice [S, rows]; the plan's argmax all-reduce picks the token from the slices.

fp32, not int8: the integer path's non-linearities (table softmax, integer RMSNorm, Q16 SiLU) have
no exact ONNX operators, so the shards reproduce the fp32 reference (`LlamaFP32`) to float tolerance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mcushard.atomic import write_bytes_atomic, write_text_atomic
from mcushard.errors import McushardError
from mcushard.model.config import LlamaConfig
from mcushard.model.weights import Weights
from mcushard.partition.plan import AllReduce, Plan
from mcushard.runtime.llama_shard import SliceTaker, head_pieces
from mcushard.runtime.reference import rope_tables

OPSET = 17


def sync_name(step: AllReduce) -> str:
    """Graph name of an all-reduce: block.label, plus the group leader for per-head-group score reductions."""
    name = f"{step.block}.{step.label}"
    return f"{name}.g{step.group[0]}" if step.label == "attn.scores" else name


class _Graph:
    """Accumulates nodes, initializers and I/O of one ONNX graph; names are generated."""

    def __init__(self) -> None:
        self.nodes, self.inits, self.inputs, self.outputs, self._n = [], [], [], [], 0

    def const(self, array: np.ndarray, name: str | None = None) -> str:
        self._n += 1
        name = name or f"c{self._n}"
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array) if array.ndim else array, name))
        return name

    def op(self, kind: str, *inputs: str, **attrs) -> str:
        self._n += 1
        out = f"{kind.lower()}{self._n}"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def input(self, name: str, elem: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, value: str, name: str, shape: list) -> str:
        self.nodes.append(helper.make_node("Identity", [value], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name

    def model(self, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mcushard")
        onnx.checker.check_model(model)
        return model


class _ChipGraph:
    """Builds one chip's graph from its plan steps and slices."""

    def __init__(self, plan: Plan, chip: int, weights: Weights) -> None:
        self.cfg, self.chip, self.g = plan.model, chip, _Graph()
        mats = {k: v for k, v in weights.items() if v.ndim == 2}
        vecs = {k: v for k, v in weights.items() if v.ndim == 1}
        taker = SliceTaker(plan, chip, mats, vecs)
        self.taken: dict[tuple, int] = {}  # (tensor, rows, cols) -> elements put into this graph

        def take(tensor, rows, cols=(0, 1)):
            array = taker(tensor, rows, cols)
            self.taken[tensor, tuple(rows), tuple(cols)] = array.size
            return array

        take.has = taker.has
        self.take = take
        self.synced = {f"{s.block}.{s.label}": s for s in plan.chip_steps(chip) if isinstance(s, AllReduce)}
        self.syncs: list[str] = []  # ids in graph order
        g = self.g
        self.tokens = g.input("tokens", TensorProto.INT64, ["S"])
        self.seq = g.op("Shape", self.tokens)  # [1] = S
        self.zero, self.one = g.const(np.array([0], np.int64)), g.const(np.array([1], np.int64))

    def sync(self, key: str, partial: str, shape: list) -> str:
        """Output the partial, return the summed input (or the partial itself when not reduced)."""
        if key not in self.synced:
            return partial
        sync_id = sync_name(self.synced[key])
        self.syncs.append(sync_id)
        self.g.output(partial, f"{sync_id}.partial", shape)
        return self.g.input(f"{sync_id}.sum", TensorProto.FLOAT, shape)

    def linear(self, x: str, w: np.ndarray) -> str:
        """x [S, in] @ w.T for w [out, in]."""
        return self.g.op("MatMul", x, self.g.const(w.T.astype(np.float32)))

    def rmsnorm(self, x: str, gain: np.ndarray) -> str:
        g = self.g
        ms = g.op("ReduceMean", g.op("Mul", x, x), axes=[-1], keepdims=1)
        rms = g.op("Sqrt", g.op("Add", ms, g.const(np.array(self.cfg.norm_eps, np.float32))))
        return g.op("Mul", g.op("Div", x, rms), g.const(gain.astype(np.float32)))

    def rope(self, x: str, heads: int, d0: int, d1: int) -> str:
        """Rotate interleaved pairs of x [S, heads * (d1 - d0)] (head-dim slice d0:d1) by position."""
        g, half = self.g, (d1 - d0) // 2
        cos, sin = rope_tables(self.cfg)  # [seq, hd/2]

        def rows(table: np.ndarray) -> str:  # [S, 1, half]: the first S positions of the slice's pair columns
            part = g.op("Slice", g.const(table[:, d0 // 2: d1 // 2]), self.zero, self.seq, self.zero)
            return g.op("Unsqueeze", part, g.const(np.array([1], np.int64)))

        c, s = rows(cos), rows(sin)
        pairs = g.op("Reshape", x, g.const(np.array([0, heads, half, 2], np.int64)))  # [S, heads, half, 2]
        x0 = g.op("Gather", pairs, g.const(np.array(0, np.int64)), axis=3)  # [S, heads, half]
        x1 = g.op("Gather", pairs, g.const(np.array(1, np.int64)), axis=3)
        y0 = g.op("Sub", g.op("Mul", x0, c), g.op("Mul", x1, s))
        y1 = g.op("Add", g.op("Mul", x0, s), g.op("Mul", x1, c))
        axis = g.const(np.array([3], np.int64))
        both = g.op("Concat", g.op("Unsqueeze", y0, axis), g.op("Unsqueeze", y1, axis), axis=3)
        return g.op("Reshape", both, g.const(np.array([0, heads * (d1 - d0)], np.int64)))

    def causal_mask(self) -> str:
        g = self.g
        s = g.op("Squeeze", self.seq, self.zero)
        pos = g.op("Range", g.const(np.array(0, np.int64)), s, g.const(np.array(1, np.int64)))  # [S]
        later = g.op("Less", g.op("Unsqueeze", pos, self.one), g.op("Unsqueeze", pos, self.zero))  # [S, S] key > query
        return g.op("Where", later, g.const(np.array(-np.inf, np.float32)), g.const(np.array(0.0, np.float32)))

    def attention(self, layer: int, x: str, mask: str) -> str:
        cfg, g, take, p = self.cfg, self.g, self.take, f"layers.{layer}."
        hd, n_rep, dim = cfg.head_dim, cfg.n_heads // cfg.n_kv_heads, cfg.dim
        pieces = head_pieces(take, p, hd)
        d0, d1 = pieces[0][1], pieces[0][2]
        dl, n_p = d1 - d0, len(pieces)
        q_rows = [(h * hd + d0, h * hd + d1) for gq, _, _ in pieces for h in range(gq * n_rep, (gq + 1) * n_rep)]
        kv_rows = [(gk * hd + d0, gk * hd + d1) for gk, _, _ in pieces]
        xn = self.rmsnorm(x, take(p + "attention_norm", (0, dim)))

        def cat(name: str, rows: list) -> np.ndarray:
            return np.concatenate([take(p + name, r, (0, dim)) for r in rows])

        q = self.rope(self.linear(xn, cat("wq", q_rows)), n_p * n_rep, d0, d1)
        k = self.rope(self.linear(xn, cat("wk", kv_rows)), n_p, d0, d1)
        v = self.linear(xn, cat("wv", kv_rows))

        def shape(t: str, dims: list, perm: list) -> str:
            return g.op("Transpose", g.op("Reshape", t, g.const(np.array(dims, np.int64))), perm=perm)

        q4 = shape(q, [0, n_p, n_rep, dl], [1, 2, 0, 3])  # [n_p, n_rep, S, dl]
        kt = shape(k, [0, n_p, 1, dl], [1, 2, 3, 0])  # [n_p, 1, dl, S]
        v4 = shape(v, [0, n_p, 1, dl], [1, 2, 0, 3])  # [n_p, 1, S, dl]
        scores = g.op("MatMul", q4, kt)  # [n_p, n_rep, S, S]
        scores = self.sync(f"layers.{layer}.attn.scores", scores, [n_p, n_rep, "S", "S"])
        scores = g.op("Add", g.op("Mul", scores, g.const(np.array(1 / math.sqrt(hd), np.float32))), mask)
        ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v4)  # [n_p, n_rep, S, dl]
        ctx = g.op("Reshape", g.op("Transpose", ctx, perm=[2, 0, 1, 3]),
                   g.const(np.array([0, n_p * n_rep * dl], np.int64)))  # [S, q_c]
        wo = np.concatenate([take(p + "wo", (0, dim), r) for r in q_rows], axis=1)  # [dim, q_c]
        return self.sync(f"layers.{layer}.attn.out", self.linear(ctx, wo), ["S", dim])

    def ffn(self, layer: int, x: str) -> str:
        g, take, p, dim = self.g, self.take, f"layers.{layer}.", self.cfg.dim
        (h0, h1), _ = take.has(p + "w1")[0]
        xn = self.rmsnorm(x, take(p + "ffn_norm", (0, dim)))
        gate = self.linear(xn, take(p + "w1", (h0, h1), (0, dim)))
        silu = g.op("Mul", gate, g.op("Sigmoid", gate))
        h = g.op("Mul", silu, self.linear(xn, take(p + "w3", (h0, h1), (0, dim))))
        return self.sync(f"layers.{layer}.ffn.out", self.linear(h, take(p + "w2", (0, dim), (h0, h1))), ["S", dim])

    def lookup(self, tensor: str) -> tuple[str, tuple[int, int]]:
        """Zero-padded rows of this chip's vocabulary slice of `tensor` for `tokens`: ([S, width], rows)."""
        g = self.g
        (r0, r1), (_, width) = self.take.has(tensor)[0]
        table = np.concatenate([self.take(tensor, (r0, r1), (0, width)), np.zeros((1, width), np.float32)])
        idx = g.op("Sub", self.tokens, g.const(np.array(r0, np.int64)))
        inside = g.op("And", g.op("GreaterOrEqual", idx, g.const(np.array(0, np.int64))),
                      g.op("Less", idx, g.const(np.array(r1 - r0, np.int64))))
        idx = g.op("Where", inside, idx, g.const(np.array(r1 - r0, np.int64)))  # outside: the zero row
        return g.op("Gather", g.const(table), idx, axis=0), (r0, r1)

    def build(self) -> tuple[onnx.ModelProto, dict]:
        cfg, g, take = self.cfg, self.g, self.take
        rows, (r0, r1) = self.lookup("tok_embeddings")
        x = self.sync("embed.lookup", rows, ["S", cfg.dim])
        mask = self.causal_mask()
        for layer in range(cfg.n_layers):
            x = g.op("Add", x, self.attention(layer, x, mask))
            x = g.op("Add", x, self.ffn(layer, x))
        cls = take("tok_embeddings" if cfg.shared_classifier else "output", (r0, r1), (0, cfg.dim))
        g.output(self.linear(self.rmsnorm(x, take("norm", (0, cfg.dim))), cls), "logits", ["S", r1 - r0])
        return g.model(f"{cfg.name}_chip{self.chip}"), {"vocab_rows": [r0, r1]}


def export_plan(plan: Plan, weights: Weights, out_dir: str | Path) -> Path:
    """Write chip<c>.onnx for every chip and manifest.json into `out_dir`; returns the manifest path."""
    cfg = plan.model
    if not isinstance(cfg, LlamaConfig) and not (cfg.use_bottleneck and cfg.normalization == "no_norm"):
        raise McushardError(f"export: model {cfg.name!r}: ONNX export covers Llama decoders and MobileBERT-style "
                            "encoders (bottleneck, NoNorm)")
    if plan.strategy != "tp" or plan.scope != "model":
        raise McushardError("export: only whole-model tensor-parallel plans (strategy tp) are exported")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise McushardError(f"{out}: cannot create the output directory: {exc.strerror}") from None
    chips = []
    for chip in range(plan.n_chips):
        if isinstance(cfg, LlamaConfig):
            builder = _ChipGraph(plan, chip, weights)
        else:
            from mcushard.export.onnx_bert import BertGraph

            builder = BertGraph(plan, chip, weights)
        model, where = builder.build()
        write_bytes_atomic(out / f"chip{chip}.onnx", model.SerializeToString())
        chips.append({"chip": chip, "file": f"chip{chip}.onnx", **where,
                      "weight_elements": sum(builder.taken.values()), "syncs": builder.syncs,
                      "slices": [[s.tensor, list(s.rows), list(s.cols)] for s in plan.shards[chip]]})
    syncs = [{"id": sync_name(s), "partial": f"{sync_name(s)}.partial", "sum": f"{sync_name(s)}.sum",
              "group": list(s.group), "algorithm": s.algorithm, "op": s.op, "elements_per_token": s.elements,
              "elements_per_key": s.elements_per_key, "int8_wire_elem_bytes": s.elem_bytes}
             for s in plan.steps if isinstance(s, AllReduce) and s.op == "sum"]  # in program order
    manifest = {
        "format": "mcushard-tp-onnx/1", "precision": "fp32", "opset": OPSET, "model": cfg.name,
        "strategy": plan.strategy, "n_chips": plan.n_chips,
        "inputs": {"tokens": "int64 [S]"} if isinstance(cfg, LlamaConfig) else {
            "tokens": "int64 [S] input ids", "token_type_ids": "int64 [S]", "attention_mask": "float32 [S] of 0/1"},
        "outputs": {"logits": "float32 [S, vocab_rows] per chip; concatenate by vocab_rows, argmax picks the token"}
        if isinstance(cfg, LlamaConfig) else {"hidden": "float32 [S, state_cols] per chip: the last hidden state's "
                                                         "columns; the plan sends them to chip 0"},
        "protocol": "for each sync in order: run each chip of its group to get <id>.partial (needs only tokens "
                    "and earlier sums), reduce with op over the group, feed the result as <id>.sum",
        "syncs": syncs, "chips": chips, "notes": list(plan.notes)}
    path = out / "manifest.json"
    write_text_atomic(path, json.dumps(manifest, indent=1))
    return path


def run_exported(out_dir: str | Path, tokens: list[int]) -> np.ndarray:
    """Run the exported shards with onnxruntime, all-reducing in numpy: float32 logits [S, vocab] of a
    decoder, or an encoder's last hidden state [S, H] (token types 0, no padding)."""
    import onnxruntime as ort

    out = Path(out_dir)
    manifest = json.loads((out / "manifest.json").read_text())
    sessions = [ort.InferenceSession(str(out / c["file"]), providers=["CPUExecutionProvider"])
                for c in manifest["chips"]]
    ids = np.asarray(tokens, np.int64)  # [S]
    given = {"tokens": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": np.ones(len(ids), np.float32)}
    feeds = []
    for sess in sessions:  # every input: the sequence, and zeros for the sums not known yet
        feed = {}
        for i in sess.get_inputs():
            shape = [len(ids) if not isinstance(d, int) else d for d in i.shape]
            feed[i.name] = given[i.name] if i.name in given else np.zeros(shape, np.float32)
        feeds.append(feed)
    for sync in manifest["syncs"]:
        parts = [sessions[c].run([sync["partial"]], feeds[c])[0] for c in sync["group"]]
        total = np.sum(parts, axis=0, dtype=np.float32)
        for c in sync["group"]:
            feeds[c][sync["sum"]] = total
    name, key = ("logits", "vocab_rows") if "vocab_rows" in manifest["chips"][0] else ("hidden", "state_cols")
    spans = [c[key] for c in manifest["chips"]]
    result = np.empty((len(ids), max(r[1] for r in spans)), np.float32)  # [S, vocab] or [S, H]
    for sess, feed, (r0, r1) in zip(sessions, feeds, spans):
        result[:, r0:r1] = sess.run([name], feed)[0]
    return result
