"""One chip's integer Llama decode: it walks `plan.chip_steps(chip)` with the int8 building blocks.

Each step of the plan maps to the same `mcushard.runtime.int8` function the single-chip `LlamaInt8`
runs, applied to the chip's slices: RMSNorm on the replicated residual (so its dynamic per-vector
scale is the same on every chip), q/k/v of the chip's heads, attention of those heads (or, when a
KV head is split across chips, its head-dim slice, with the partial q.k scores all-reduced before
the softmax), the wo and w2 row-split products as int64 partial sums all-reduced as integers, then
`residual_add` requantising the sum identically on every chip. The head computes the chip's
vocabulary slice of the logits and all-reduces packed (value, index) argmax keys.
"""

from __future__ import annotations

import time

import numpy as np

from mcushard.partition.plan import AllReduce, Compute, Send
from mcushard.runtime.chip_program import ChipProgram, pack_argmax, unpack_argmax
from mcushard.runtime.int8 import (
    PROB_FRAC,
    ROPE_FRAC,
    attention_heads,
    qkv_rope_cache,
    requantize,
    residual_add,
    residual_rmsnorm,
    rmsnorm_int,
    rope_rotation,
    scaled_logits,
    softmax_int,
    softmax_units,
    swiglu_columns,
)
from mcushard.runtime.kernels import ExactLinear, exact_matmul_f64
from mcushard.runtime.links import Links
from mcushard.runtime.llama_shard import LlamaShard
from mcushard.runtime.quant import qmax
from mcushard.runtime.reference import rope_tables

INT8_BOUND = 128  # |an int8 embedding row|
KEY_BOUND = 2**63 - 1  # packed argmax keys: any int64 (sent as int64, never summed)


class LayerRun:
    """One layer of a chip, resolved once for its steps: its products, caches, bit widths and the
    row ranges of its q/k/v vector (the decode loop reads these instead of recomputing them)."""

    __slots__ = ("ls", "qkv", "wo", "w13", "w2", "k", "v", "norm_bits", "qkv_bits", "att_bits", "ffn_bits",
                 "dlen", "n_q_rows", "q_shape", "rot", "split", "hc", "log2_ratio")

    def __init__(self, cfg, sch, ls, qkv: ExactLinear, wo: ExactLinear, w13: ExactLinear, w2: ExactLinear,
                 k: np.ndarray, v: np.ndarray, rot_q: np.ndarray) -> None:
        self.ls, self.qkv, self.wo, self.w13, self.w2, self.k, self.v = ls, qkv, wo, w13, w2, k, v
        self.norm_bits, self.qkv_bits, self.att_bits, self.ffn_bits = (
            sch.norm_bits, sch.qkv_bits, sch.att_bits, sch.ffn_bits)
        n_rep, n_p = cfg.n_heads // cfg.n_kv_heads, len(ls.pieces)
        d0, d1 = ls.pieces[0][1], ls.pieces[0][2]
        self.dlen = d1 - d0  # head dims of each piece
        self.n_q_rows = n_p * n_rep  # q rows of length dlen, before the k rows
        self.q_shape = (n_p, n_rep, self.dlen)
        self.rot = np.ascontiguousarray(rot_q[:, d0 // 2:d1 // 2])  # [seq, dlen/2, 2, 2]: the pieces' RoPE pairs
        self.split = cfg.head_dim != self.dlen  # a head split across chips: partial scores
        self.hc = ls.ffn_rows[1] - ls.ffn_rows[0]  # FFN columns held
        self.log2_ratio = softmax_units(ls.score_ratio)  # [pieces, n_rep, 1] softmax units per score unit


class LlamaChip(ChipProgram):
    """Handler of one chip process: `handle(("step", token, pos))` runs one decode step,
    `handle(("greedy", token, first, steps))` decodes `steps` tokens greedily from position `first`
    without the host in the loop."""

    def __init__(self, chip: int, links: Links, shard: LlamaShard) -> None:
        super().__init__(links, shard.group_size, shard)
        self.s, cfg, sch = shard, shard.cfg, shard.scheme
        cos, sin = rope_tables(cfg)  # [seq, hd/2]
        cos_q = np.rint(cos * (1 << ROPE_FRAC)).astype(np.int64)
        sin_q = np.rint(sin * (1 << ROPE_FRAC)).astype(np.int64)
        self.rot_q = rope_rotation(cos_q, sin_q)  # [seq, hd/2, 2, 2]
        self.lin: dict[tuple[int, str], ExactLinear] = {}
        self.k_cache: dict[int, np.ndarray] = {}
        self.v_cache: dict[int, np.ndarray] = {}
        self.runs: dict[int, LayerRun] = {}
        for layer, ls in shard.layers.items():
            self.lin[layer, "qkv"] = ExactLinear(ls.qkv_w, sch.norm_bits)
            self.lin[layer, "wo"] = ExactLinear(ls.wo_w, sch.att_bits)
            self.lin[layer, "w13"] = ExactLinear(ls.w13_w, sch.norm_bits)
            self.lin[layer, "w2"] = ExactLinear(ls.w2_w, sch.ffn_bits)
            dlen = ls.pieces[0][2] - ls.pieces[0][1]
            shape = (len(ls.pieces), cfg.max_seq_len, dlen)
            self.k_cache[layer] = np.zeros(shape)  # [pieces, seq, dlen] integers in float64 for BLAS
            self.v_cache[layer] = np.zeros(shape)
            self.runs[layer] = LayerRun(cfg, sch, ls, *(self.lin[layer, k] for k in ("qkv", "wo", "w13", "w2")),
                                        self.k_cache[layer], self.v_cache[layer], self.rot_q)
        cls_w = shard.cls_w if shard.cls_w is not None else shard.emb_w
        self.cls = ExactLinear(cls_w, sch.cls_bits) if shard.cls_ratio is not None else None
        self.handlers = {
            "attention_norm": self._attention_norm, "attn.qkv+rope": self._qkv, "attn.softmax+av": self._attend,
            "attn.wo": self._wo, "residual+ffn_norm": self._ffn_norm, "ffn.w1w3+swiglu": self._ffn_up,
            "ffn.w2": self._ffn_down, "residual": self._residual, "norm": self._final_norm,
            "classifier": self._classifier, "argmax": self._argmax, "lookup": self._lookup,
        }
        # the program as (method, layer, None) for a compute step or (method, -1, step) for a collective
        # or send, resolved once: a token walks it without looking anything up
        self.program: list[tuple] = []
        for step in shard.steps:
            if isinstance(step, Compute):
                layer = int(step.block.split(".")[1]) if step.block.startswith("layers.") else -1
                self.program.append((self.handlers[step.label], self.runs.get(layer), None))
            elif isinstance(step, AllReduce):
                self.program.append((self._reduce, -1, step))
            elif isinstance(step, Send):
                self.program.append((self._send, -1, step))
        self.cache_max = qmax(sch.qkv_bits)  # |K|, |V| cache entries: rope_int / requantize clip to qkv_bits

    # ---------------------------------------------------------------- one decode step

    def handle(self, request):
        if request[0] == "held":
            return self.held()
        if request[0] == "step":  # one decode step of the host's token
            return self.decode(request[1], request[2])
        if request[0] == "greedy":  # `steps` greedy steps from position `first`, each fed the chips' own argmax
            _, token, first, steps = request
            replies = []
            for pos in range(first, first + steps):
                replies.append(self.decode(token, pos, logits=False))
                token = replies[-1]["token"]
                if token is None:
                    raise ValueError("greedy decoding on the chips needs every chip in the argmax all-reduce")
            return replies
        raise ValueError(f"unknown request {request[0]!r}")

    def decode(self, token: int, pos: int, logits: bool = True) -> dict:
        """Walk the program for `token` at `pos`: the argmax token (when this chip takes part in the
        argmax all-reduce), its logits slice (with `logits`), bytes sent, seconds and CPU seconds."""
        self.token, self.pos = token, pos
        self.x = self.row = self.psum = self.scores = self.logits = self.key = None
        self.psum_bound = None
        t_start, cpu_start, comm_s = time.perf_counter(), time.process_time(), 0.0
        for method, run, step in self.program:
            if step is None:
                self.r = run
                method()
            else:
                t0 = time.perf_counter()
                method(step)
                comm_s += time.perf_counter() - t0
        token_out = None if self.key is None else unpack_argmax(self.key, self.s.cfg.vocab_size)
        part = None if self.logits is None or not logits else (self.s.vocab_rows[0], self.logits)
        return {"token": token_out, "logits": part, "sent": self.take_bytes_sent(), "comm_s": comm_s,
                "step_s": time.perf_counter() - t_start, "cpu_s": time.process_time() - cpu_start}

    def _reduce(self, step: AllReduce) -> None:
        if step.label == "lookup":
            self.row = self.allreduce(step, self.row, exclusive=True, proven_max=INT8_BOUND)
        elif step.label == "attn.scores":
            self.scores = self.allreduce(step, self.scores.reshape(-1)).reshape(self.scores.shape)
        elif step.label == "argmax":
            self.key = self.allreduce(step, self.key, proven_max=KEY_BOUND)
        else:  # attn.out, ffn.out: integer partial sums, bounded by the product that made them
            self.psum = self.allreduce(step, self.psum, proven_max=self.psum_bound)

    def _send(self, step: Send) -> None:
        mine = step.src == self.links.chip
        if step.label == "embedding":
            self.send(step, self.row) if mine else setattr(self, "row", self.recv(step))
        else:  # residual stream between pipeline stages
            self.send(step, self.x) if mine else setattr(self, "x", self.recv(step))

    # ---------------------------------------------------------------- steps

    def _lookup(self) -> None:
        r0, r1 = self.s.vocab_rows
        inside = r0 <= self.token < r1
        self.row = self.s.emb_w[self.token - r0].astype(np.int64) if inside else np.zeros(self.s.cfg.dim, np.int64)

    def _residual_in(self) -> np.ndarray:
        if self.x is None:  # first block on this chip: the looked-up int8 row in residual units
            self.x = np.rint(self.row * self.s.emb_ratio[self.token]).astype(np.int64)
        return self.x

    def _attention_norm(self) -> None:
        r = self.r
        self.y, self.s_y = rmsnorm_int(self._residual_in(), r.ls.attention_gain, self.s.eps_units, r.norm_bits)

    def _qkv(self) -> None:
        r, pos = self.r, self.pos
        q = qkv_rope_cache(r.qkv.trusted(self.y), r.ls.qkv_ratio, self.s_y, r.qkv_bits, r.rot[pos], r.n_q_rows,
                           r.k, r.v, pos)  # [pieces * n_rep, dlen]; k and v [pieces, dlen] cached at pos
        self.q = q.reshape(r.q_shape)  # [pieces, n_rep, dlen]
        if r.split:  # a split head: partial scores, all-reduced next
            self.scores = exact_matmul_f64(self.q, r.k[:, : pos + 1].swapaxes(1, 2),
                                           self.cache_max, self.cache_max)

    def _attend(self) -> None:
        r, t = self.r, self.pos + 1
        ls, kc, vc = r.ls, r.k[:, :t], r.v[:, :t]
        if self.scores is None:  # whole heads: exactly the single-chip function
            self.att = attention_heads(self.q, kc, vc, ls.score_ratio, ls.att_ratio, r.att_bits, self.cache_max,
                                       r.log2_ratio)
        else:  # the same softmax and weighted sum on the all-reduced scores, with this chip's V slice
            probs = softmax_int(self.scores, r.log2_ratio)
            self.att = requantize(exact_matmul_f64(probs, vc, 1 << PROB_FRAC, self.cache_max), ls.att_ratio,
                                  r.att_bits)
            self.scores = None

    def _wo(self) -> None:
        self.psum = self.r.wo.trusted(self.att.reshape(-1))  # [dim] int64 partial sums
        self.psum_bound = self.r.wo.y_bound  # att is at att_bits by construction (requantize)

    def _ffn_norm(self) -> None:
        r = self.r
        self.x, self.y, self.s_y = residual_rmsnorm(self.x, self.psum, r.ls.wo_ratio, r.ls.ffn_gain, self.s.eps_units,
                                                    r.norm_bits)

    def _ffn_up(self) -> None:
        r, s_y = self.r, self.s_y
        gate_up = r.w13.trusted(self.y)  # [2 h_c]
        self.h = swiglu_columns(gate_up[:r.hc], gate_up[r.hc:], r.ls.gate_ratio, r.ls.up_ratio, r.ffn_bits, s_y)

    def _ffn_down(self) -> None:
        self.psum = self.r.w2.trusted(self.h)  # [dim] int64 partial sums
        self.psum_bound = self.r.w2.y_bound  # h is at ffn_bits by construction (swiglu_columns)

    def _residual(self) -> None:
        self.x = residual_add(self.x, self.psum, self.r.ls.w2_ratio)

    def _final_norm(self) -> None:
        self.y, self.s_y = rmsnorm_int(self._residual_in(), self.s.final_gain, self.s.eps_units,
                                       self.s.scheme.cls_bits)

    def _classifier(self) -> None:
        self.logits, self.best = scaled_logits(self.cls.trusted(self.y), self.s.cls_ratio, self.s_y)  # [rows] float32

    def _argmax(self) -> None:
        self.key = pack_argmax(self.logits, self.s.vocab_rows[0], self.s.cfg.vocab_size, self.best)


def make_llama_chip(chip: int, links: Links, shard: LlamaShard) -> LlamaChip:
    return LlamaChip(chip, links, shard)
