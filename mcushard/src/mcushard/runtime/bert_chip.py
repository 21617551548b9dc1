"""One chip's integer MobileBERT forward: `plan.chip_steps(chip)` with `bert_int8`'s building blocks.

The 512-wide state stays sharded by columns (NoNorm is per channel, so its requantisation is local);
the three bottleneck-side projections from the shard give int64 partial sums all-reduced as integers;
attention by heads (or a head-dim slice, with partial scores all-reduced), the attention output and
every FFN down projection as integer partial sums all-reduced, then requantised by the same
`BertInt8.norm` / `to_site` on every chip with the calibrated static scales. The group's first
chip collects the state shards at the end. Bit-identical to `BertInt8.forward`.
"""

from __future__ import annotations

import math
import time

import numpy as np

from mcushard.partition.plan import AllReduce, Compute, Send
from mcushard.runtime.bert_int8 import BertInt8, QuantBert
from mcushard.runtime.bert_shard import BertShard, Mat
from mcushard.runtime.chip_program import ChipProgram
from mcushard.runtime.int8 import EXP_FRAC, PROB_FRAC, SILU_FRAC, gelu_q16, softmax_int
from mcushard.runtime.kernels import ExactLinear, exact_matmul_f64
from mcushard.runtime.links import Links


class BertChip(ChipProgram):
    """Handler of one chip process; `handle(("forward", ids, types, keep))` runs the encoder."""

    def __init__(self, chip: int, links: Links, shard: BertShard) -> None:
        super().__init__(links, shard.group_size, shard)
        self.s, cfg = shard, shard.cfg
        # the integer model's requantisation helpers over this chip's constants (no weights inside)
        self.core = BertInt8(QuantBert(cfg, shard.bits, {}, {}, shard.consts, shard.ranges, {}))
        self.lin = {name: ExactLinear(m.w, shard.bits) for name, m in shard.mats.items()}

    def dense(self, name: str, x: np.ndarray, s_x: float) -> tuple[np.ndarray, np.ndarray]:
        """Exact accumulators [S, rows] of this chip's slice of `name` and the real value of one unit."""
        m: Mat = self.s.mats[name]
        return self.lin[name](x.T).T, m.scale.astype(np.float64) * s_x

    def handle(self, request):
        if request[0] == "held":
            return self.held()
        _, ids, types, keep = request
        self.ids, self.types, self.keep = ids, types, keep
        t_start, comm_s, hidden = time.perf_counter(), 0.0, None
        for step in self.s.steps:
            if isinstance(step, Compute):
                self.compute(step)
                continue
            t0 = time.perf_counter()
            if isinstance(step, AllReduce):
                self.reduce(step)
            elif isinstance(step, Send):
                self.collect(step)
            comm_s += time.perf_counter() - t0
        if self.links.chip == self.s.lead:
            hidden = self.gathered()
        return {"hidden": hidden, "sent": self.take_bytes_sent(), "comm_s": comm_s,
                "step_s": time.perf_counter() - t_start}

    # ---------------------------------------------------------------- dispatch

    def compute(self, step: Compute) -> None:
        label = step.label
        self.layer = int(step.block.split(".")[1]) if step.block.startswith("layers.") else -1
        p = f"encoder.layer.{self.layer}."
        if label == "lookup":
            r0, r1 = self.s.vocab_rows
            inside = (self.ids >= r0) & (self.ids < r1)
            rows = np.zeros((len(self.ids), self.s.cfg.emb_size), np.int64)  # [S, E]
            rows[inside] = self.s.words[self.ids[inside] - r0]
            self.words = rows
        elif label == "transform+add+norm":
            self.embed()
        elif label == "bottleneck+value":
            names = [n for n in ("bottleneck.input.dense", "bottleneck.attention.dense", "attention.self.value")
                     if p + n in self.s.mats]
            terms = [self.dense(p + n, *self.x) for n in names]
            self.units = [u for _, u in terms]
            self.psum = np.concatenate([a for a, _ in terms], axis=1)  # [S, k A]
        elif label == "bottleneck.norm":
            self.bottleneck_norms(p)
        elif label in ("attn.qk", "attn.qkv"):
            self.attention_qk(p)
        elif label == "attn.softmax+av":
            self.attend()
        elif label == "attn.out":
            self.psum, self.unit = self.dense(p + "attention.output.dense", *self.ctx)
            self.norm_next = (f"{self.layer}.att", p + "attention.output.LayerNorm", self.residual,
                              p + "attention.output.dense.bias")
        elif label == "residual+norm":
            site, norm, residual, bias = self.norm_next
            self.y = self.core.norm(site, norm, [(self.psum, self.unit), residual], self.s.consts[bias])
        elif label.endswith(".up+act"):
            self.ffn_up(p + label[: -len(".up+act")])
        elif label.endswith(".down"):
            down = p + label[: -len(".down")]
            self.psum, self.unit = self.dense(down + ".dense", *self.h)
            self.norm_next = (f"{self.layer}.{down}", down + ".LayerNorm", self.y, down + ".dense.bias")
        elif label == "out.bottleneck+residual+norm":
            o = p + "output.bottleneck."
            self.x = self.core.norm(f"{self.layer}.out", o + "LayerNorm", [self.dense(o + "dense", *self.y), self.x],
                                    self.s.consts[o + "dense.bias"])
        else:
            raise ValueError(f"unknown step {step.block}/{label}")

    def reduce(self, step: AllReduce) -> None:
        if step.label == "lookup":
            self.words = self.allreduce(step, self.words.reshape(-1), exclusive=True).reshape(self.words.shape)
        elif step.label == "attn.scores":
            self.scores = self.allreduce(step, self.scores.reshape(-1)).reshape(self.scores.shape)
        else:  # bottleneck, attn.out, FFN outputs: integer partial sums
            self.psum = self.allreduce(step, self.psum.reshape(-1)).reshape(self.psum.shape)

    def collect(self, step: Send) -> None:
        """The final state shards travel to the lead chip."""
        if step.src == self.links.chip:
            self.send(step, self.x[0].reshape(-1))
        else:
            self.shards = getattr(self, "shards", {})
            self.shards[step.src] = self.recv(step)

    def gathered(self) -> np.ndarray:
        """float32 [S, H]: the lead's shard and the received ones, in column order."""
        parts = {self.links.chip: self.x[0]}
        for src, flat in getattr(self, "shards", {}).items():
            parts[src] = flat.reshape(len(self.ids), -1)
        self.shards = {}
        return (np.concatenate([parts[c] for c in sorted(parts)], axis=1) * self.x[1]).astype(np.float32)

    # ---------------------------------------------------------------- the encoder's pieces

    def embed(self) -> None:
        cfg, c = self.s.cfg, self.s.consts
        unit = self.s.word_scale[self.ids].astype(np.float64)[:, None]  # [S, 1]
        x, s = self.core.to_site("emb.words", [(self.words, unit)])  # [S, E]
        if cfg.trigram_input:  # the same trigram as BertInt8.embed: tokens t+1, t, t-1
            zero = np.zeros_like(x[:1])
            x = np.concatenate([np.concatenate([x[1:], zero]), x, np.concatenate([zero, x[:-1]])], axis=1)
        offset = c["position"][: len(self.ids)] + c["token_type"][self.types]  # [S, cols]
        acc, unit = self.dense("embeddings.embedding_transformation", x, s)
        offset = offset + c["embeddings.embedding_transformation.bias"]
        self.x = self.core.norm("emb", "embeddings.LayerNorm", [(acc, unit)], offset)  # state shard [S, cols]

    def bottleneck_norms(self, p: str) -> None:
        cfg, A, c = self.s.cfg, self.s.cfg.attention_width, self.s.consts
        acc = {n: (self.psum[:, i * A:(i + 1) * A], self.units[i]) for i, n in enumerate(
            ["input", "attention", "value"] if cfg.key_query_shared_bottleneck else ["input", "value"])}
        b = p + "bottleneck."
        self.residual = self.core.norm(f"{self.layer}.bin", b + "input.LayerNorm", [acc["input"]],
                                       c[b + "input.dense.bias"])
        self.qk_in = self.residual
        if cfg.key_query_shared_bottleneck:
            self.qk_in = self.core.norm(f"{self.layer}.batt", b + "attention.LayerNorm", [acc["attention"]],
                                        c[b + "attention.dense.bias"])
        self.value_acc = acc["value"]  # [S, A] all heads, all-reduced

    def attention_qk(self, p: str) -> None:
        pieces, hd = self.s.pieces, self.s.cfg.head_dim
        r0, r1 = pieces[0][0] * hd + pieces[0][1], pieces[-1][0] * hd + pieces[-1][2]
        heads, dl = len(pieces), pieces[0][2] - pieces[0][1]
        proj = {}
        for kind in ("query", "key"):
            acc, unit = self.dense(p + f"attention.self.{kind}", *self.qk_in)
            bias = self.s.consts[p + f"attention.self.{kind}.bias"]
            proj[kind] = self.core.to_site(f"{self.layer}.{kind}", [(acc, unit)], bias)
        acc_v, unit_v = self.value_acc
        proj["value"] = self.core.to_site(f"{self.layer}.value", [(acc_v[:, r0:r1], unit_v[r0:r1])],
                                          self.s.consts[p + "attention.self.value.bias"])
        self.qkv = {k: (y.reshape(len(y), heads, dl).transpose(1, 0, 2), s) for k, (y, s) in proj.items()}  # [h, S, dl]
        self.scores = None
        if dl != hd:  # a head split across chips: partial q.k, all-reduced next
            self.scores = exact_matmul_f64(self.qkv["query"][0], self.qkv["key"][0].transpose(0, 2, 1))

    def attend(self) -> None:
        (q, s_q), (k, s_k), (v, s_v) = self.qkv["query"], self.qkv["key"], self.qkv["value"]
        scores = self.scores if self.scores is not None else exact_matmul_f64(q, k.transpose(0, 2, 1))  # [h, S, S]
        ratio = s_q * s_k / math.sqrt(self.s.cfg.head_dim) * math.log2(math.e) * (1 << EXP_FRAC)
        probs = softmax_int(scores, ratio, self.keep[None, None, :])  # [h, S, S] Q15
        ctx = exact_matmul_f64(probs, v).transpose(1, 0, 2).reshape(len(self.keep), -1)  # [S, h dl]
        self.ctx = self.core.to_site(f"{self.layer}.context", [(ctx, s_v / (1 << PROB_FRAC))])

    def ffn_up(self, up: str) -> None:
        acc, unit = self.dense(up + ".dense", *self.y)
        bias = self.s.consts[up + ".dense.bias"]
        if self.s.cfg.hidden_act == "relu":
            h, s_h = self.core.to_site(f"{self.layer}.{up}", [(acc, unit)], bias)
            self.h = (np.maximum(h, 0), s_h)
        else:
            pre = np.rint((acc * unit + bias) * (1 << SILU_FRAC)).astype(np.int64)  # Q16
            self.h = self.core.to_site(f"{self.layer}.{up}", [(gelu_q16(pre), 2.0**-SILU_FRAC)])


def make_bert_chip(chip: int, links: Links, shard: BertShard) -> BertChip:
    return BertChip(chip, links, shard)
