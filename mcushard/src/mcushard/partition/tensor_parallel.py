"""Tensor-parallel split of Llama decoders (the paper's scheme) and the step builder shared by all.

Per block, on a group of chips: attention by heads (Q, K, V rows of whole heads, O by the matching
columns), SwiGLU w1/w3 by rows and w2 by columns, one all-reduce after O and one after w2; norms and
residuals replicated; each chip caches K/V of its own heads only. Embedding and classifier are split
by vocabulary rows; the token lookup is an all-reduce of zero-padded rows, the head ends with an
argmax all-reduce of one packed (value, index). Uneven splits give the first chips one more head / row.

More chips than KV heads (GQA with N > n_kv_heads, or the paper's scaled TinyLlama on 64 chips with
8 heads): each KV group (one K/V head and its n_rep query heads) gets a set of chips that split the
head dimension (in RoPE pairs). Every chip holds the head-dim slice of Q, K, V rows and of the O
columns, and caches its K/V slice; the partial scores q.k of the group are all-reduced (n_rep values
per attended key) before the softmax, after which each chip forms its head-dim slice of the output
with its own V slice. Weights stay stationary, each byte on one chip, KV never duplicated; the cost
is one extra small all-reduce per block.
"""

from __future__ import annotations

from mcushard.errors import McushardError
from mcushard.model.config import LlamaConfig
from mcushard.partition.plan import (
    ACT_BYTES,
    PSUM_BYTES,
    AllReduce,
    Compute,
    Plan,
    Send,
    Slice,
    Step,
    Work,
    split,
    split_even,
)

ONE = (0, 1)  # column range of a 1-D tensor
_new_slice = tuple.__new__  # builds a Slice / Work without NamedTuple's Python-level __new__ (plans hold thousands)


class Builder:
    """Accumulates slices and steps; `plan()` freezes them."""

    def __init__(self, cfg, n_chips: int, algorithm: str, strategy: str, scope: str = "model"):
        self.cfg = cfg
        self.n_chips = n_chips
        self.algorithm = algorithm
        self.strategy = strategy
        self.shards: list[list[Slice]] = [[] for _ in range(n_chips)]
        self._index: list[dict[str, int]] = [{} for _ in range(n_chips)]  # tensor -> its latest slice
        self.steps: list[Step] = []
        self.kv = [0] * n_chips
        self.act = [0] * n_chips
        self.notes: list[str] = []
        self.scope = scope

    def hold(self, chip: int, tensor: str, rows, cols=ONE, replicated: bool = False) -> None:
        if rows[1] > rows[0] and cols[1] > cols[0]:
            shard, index = self.shards[chip], self._index[chip]
            i = index.get(tensor)
            if i is not None and not replicated:  # extend this chip's slice of the tensor when contiguous
                _, (r0, r1), (c0, c1), _ = shard[i]
                if (c0, c1) == cols and r1 == rows[0]:
                    shard[i] = _new_slice(Slice, (tensor, (r0, rows[1]), cols, False))
                    return
                if (r0, r1) == rows and c1 == cols[0]:
                    shard[i] = _new_slice(Slice, (tensor, rows, (c0, cols[1]), False))
                    return
            index[tensor] = len(shard)
            shard.append(_new_slice(Slice, (tensor, rows, cols, replicated)))

    def replicate(self, chips, tensor: str, width: int) -> None:
        piece = _new_slice(Slice, (tensor, (0, width), ONE, len(chips) > 1))
        for c in chips:
            self.shards[c].append(piece)

    def compute(self, block: str, label: str, kernel: str, works: list[Work]) -> None:
        works = tuple(w for w in works if w[2] or w[3] or w[4])  # some MACs, ops or reads
        if works:
            self.steps.append(Compute(block, label, kernel, works))

    def elementwise(self, block: str, label: str, chips, elements: int, tensors=()) -> None:
        if elements:
            tensors = tuple(tensors)
            works = tuple(_new_slice(Work, (c, tensors, 0, elements, 0)) for c in chips)
            self.steps.append(Compute(block, label, "elementwise", works))

    def allreduce(self, block, label, group, elements, elem_bytes=4, per_key=0, op="sum") -> None:
        if len(group) > 1:
            self.steps.append(AllReduce(block, label, tuple(group), elements, per_key, elem_bytes, op, self.algorithm))

    def send(self, block, label, src_group, dst_group, elements, elem_bytes) -> None:
        for i, dst in enumerate(dst_group):
            src = src_group[i % len(src_group)]
            if src != dst:
                self.steps.append(Send(block, label, src, dst, elements, elem_bytes))

    def use_act(self, chip: int, elements: int) -> None:
        self.act[chip] = max(self.act[chip], elements)

    def plan(self) -> Plan:
        return Plan(self.cfg, self.strategy, self.n_chips, tuple(tuple(s) for s in self.shards),
                    tuple(self.steps), tuple(self.kv), tuple(self.act), notes=tuple(dict.fromkeys(self.notes)),
                    scope=self.scope)


def head_layout(n_kv: int, head_dim: int, chips) -> list[list[tuple[int, int, int]]]:
    """Per chip of `chips`: the (kv_head, dim_start, dim_stop) pieces it owns."""
    n = len(chips)
    if n <= n_kv:
        return [[(g, 0, head_dim) for g in range(a, b)] for a, b in split(n_kv, n)]
    pieces: list[list[tuple[int, int, int]]] = []
    for g, (a, b) in enumerate(split(n, n_kv)):
        most = head_dim // 2 if head_dim % 2 == 0 else head_dim  # RoPE pairs stay together
        if b - a > most:
            raise McushardError(f"{n} chips: more than {most} chips per head cannot split head_dim {head_dim}")
        halves = split_even(head_dim, b - a) if head_dim % 2 == 0 else split(head_dim, b - a, "head dims")
        pieces += [[(g, d0, d1)] for d0, d1 in halves]
    return pieces


def head_groups(layout, chips) -> list[tuple[int, ...]]:
    """Chips sharing one KV head (only when heads are split within)."""
    by_head: dict[int, list[int]] = {}
    for chip, pieces in zip(chips, layout):
        for g, _d0, _d1 in pieces:
            by_head.setdefault(g, []).append(chip)
    return [tuple(v) for v in by_head.values() if len(v) > 1]


def llama_embed(b: Builder, cfg: LlamaConfig, chips) -> None:
    vocab_rows = split(cfg.vocab_size, len(chips), "vocabulary rows")
    for c, rows in zip(chips, vocab_rows):
        b.hold(c, "tok_embeddings", rows, (0, cfg.dim))
    b.compute("embed", "lookup", "elementwise", [
        Work(c, ("tok_embeddings",), elements=cfg.dim, weight_elements=-(-cfg.dim * (r[1] - r[0]) // cfg.vocab_size))
        for c, r in zip(chips, vocab_rows)])
    b.allreduce("embed", "lookup", chips, cfg.dim, elem_bytes=1)


def llama_head(b: Builder, cfg: LlamaConfig, chips) -> None:
    b.replicate(chips, "norm", cfg.dim)
    b.elementwise("head", "norm", chips, 4 * cfg.dim, ("norm",))
    name = "tok_embeddings" if cfg.shared_classifier else "output"
    vocab_rows = split(cfg.vocab_size, len(chips), "vocabulary rows")
    works = []
    for c, rows in zip(chips, vocab_rows):
        if not cfg.shared_classifier:
            b.hold(c, "output", rows, (0, cfg.dim))
        n = (rows[1] - rows[0]) * cfg.dim
        works.append(Work(c, (name,), macs=n, weight_elements=n))
        b.use_act(c, 2 * cfg.dim)  # the classifier kernel keeps a running (max, index), not the logits
    b.compute("head", "classifier", "matmul", works)
    b.elementwise("head", "argmax", chips, max(r[1] - r[0] for r in vocab_rows))
    # one (value, index) pair packed in 8 bytes: indivisible, so no schedule can split value from index
    b.allreduce("head", "argmax", chips, 1, elem_bytes=8, op="argmax")


def _llama_layer_geometry(cfg: LlamaConfig, chips, layout, hidden_rows):
    """Per chip: its slices of one layer as (tensor suffix, rows, cols) and its per-token sizes.

    Identical for every layer, so it is computed once and stamped out per layer with the names."""
    hd, n_rep, dim = cfg.head_dim, cfg.n_heads // cfg.n_kv_heads, cfg.dim
    scratch = Builder(cfg, len(chips), "", "")
    sizes = []
    for i, (pieces, hrows) in enumerate(zip(layout, hidden_rows, strict=True)):
        q_elems = kv_elems = 0
        for g, d0, d1 in pieces:
            for r in range(n_rep):
                h = g * n_rep + r
                scratch.hold(i, "wq", (h * hd + d0, h * hd + d1), (0, dim))
                scratch.hold(i, "wo", (0, dim), (h * hd + d0, h * hd + d1))
            scratch.hold(i, "wk", (g * hd + d0, g * hd + d1), (0, dim))
            scratch.hold(i, "wv", (g * hd + d0, g * hd + d1), (0, dim))
            q_elems += n_rep * (d1 - d0)
            kv_elems += d1 - d0
        scratch.hold(i, "w1", hrows, (0, dim))
        scratch.hold(i, "w3", hrows, (0, dim))
        scratch.hold(i, "w2", (0, dim), hrows)
        sizes.append((q_elems, kv_elems, hrows[1] - hrows[0], len({g for g, _, _ in pieces}) * n_rep))
    return scratch.shards, sizes


def llama_layers(b: Builder, cfg: LlamaConfig, layers, chips) -> None:
    n_rep, dim = cfg.n_heads // cfg.n_kv_heads, cfg.dim
    layout = head_layout(cfg.n_kv_heads, cfg.head_dim, chips)
    groups = head_groups(layout, chips)
    if groups:
        b.notes.append(f"{len(chips)} chips > {cfg.n_kv_heads} KV heads: head_dim split within heads, "
                       "scores all-reduced per head group")
    geometry, sizes = _llama_layer_geometry(cfg, chips, layout, split(cfg.hidden_dim, len(chips), "FFN rows"))
    for c, (q_elems, kv_elems, hid, _) in zip(chips, sizes, strict=True):
        b.kv[c] += 2 * kv_elems * len(layers)
        b.use_act(c, 3 * dim + q_elems + 2 * kv_elems + 2 * hid)
    work = _new_slice  # tuple.__new__: Work tuples without NamedTuple's Python-level __new__
    for layer in layers:
        p, blk = f"layers.{layer}.", f"layers.{layer}"
        wq, wk, wv, wo, w1, w2, w3 = (p + n for n in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"))
        t_qkv, t_wo, t_up, t_down = (wq, wk, wv), (wo,), (w1, w3), (w2,)  # shared by every chip's Work
        qkv, attn, out, up, down = [], [], [], [], []
        for c, slices, (q, kv, hid, heads) in zip(chips, geometry, sizes, strict=True):
            b.shards[c].extend(_new_slice(Slice, (p + name, rows, cols, False)) for name, rows, cols, _ in slices)
            qkv.append(work(Work, (c, t_qkv, (q + 2 * kv) * dim, q + kv, (q + 2 * kv) * dim)))
            attn.append(work(Work, (c, (), 2 * q, 3 * heads, 2 * kv)))
            out.append(work(Work, (c, t_wo, q * dim, 0, q * dim)))
            up.append(work(Work, (c, t_up, 2 * hid * dim, 4 * hid, 2 * hid * dim)))
            down.append(work(Work, (c, t_down, hid * dim, 0, hid * dim)))
        b.replicate(chips, p + "attention_norm", dim)
        b.elementwise(blk, "attention_norm", chips, 4 * dim, (p + "attention_norm",))
        b.compute(blk, "attn.qkv+rope", "matmul", qkv)
        for group in groups:
            b.allreduce(blk, "attn.scores", group, 0, elem_bytes=PSUM_BYTES, per_key=n_rep)
        b.compute(blk, "attn.softmax+av", "attention", attn)
        b.compute(blk, "attn.wo", "matmul", out)
        b.allreduce(blk, "attn.out", chips, dim, elem_bytes=PSUM_BYTES)
        b.replicate(chips, p + "ffn_norm", dim)
        b.elementwise(blk, "residual+ffn_norm", chips, 5 * dim, (p + "ffn_norm",))
        b.compute(blk, "ffn.w1w3+swiglu", "matmul", up)
        b.compute(blk, "ffn.w2", "matmul", down)
        b.allreduce(blk, "ffn.out", chips, dim, elem_bytes=PSUM_BYTES)
        b.elementwise(blk, "residual", chips, dim)


def stage_blocks(cfg, b: Builder, groups: list[tuple[int, ...]]) -> None:
    """Blocks of `cfg` over consecutive chip groups: group s runs layer range s, the first the
    embedding, the last the head; the residual stream is sent between groups."""
    from mcushard.partition import bert_tp

    n_layers = cfg.n_layers if isinstance(cfg, LlamaConfig) else cfg.num_layers
    if len(groups) > n_layers:
        raise McushardError(f"model {cfg.name!r}: {len(groups)} pipeline stages but only {n_layers} layers")
    width = cfg.dim if isinstance(cfg, LlamaConfig) else cfg.hidden_size
    for s, (lo, hi) in enumerate(split(n_layers, len(groups), "layers")):
        chips = groups[s]
        if s == 0 and b.scope == "model":
            if isinstance(cfg, LlamaConfig) and cfg.shared_classifier and len(groups) > 1:
                # the tied embedding lives with the classifier on the last stage: look up there, send
                llama_embed(b, cfg, groups[-1])
                b.send("embed", "embedding", groups[-1], chips, cfg.dim, elem_bytes=ACT_BYTES)
            elif isinstance(cfg, LlamaConfig):
                llama_embed(b, cfg, chips)
            else:
                bert_tp.embed(b, cfg, chips)
        else:
            sharded = not isinstance(cfg, LlamaConfig) and cfg.use_bottleneck and len(groups[s - 1]) > 1
            if sharded and len(chips) != len(groups[s - 1]):
                raise McushardError("MobileBERT stages of different sizes would need a re-shard (not supported)")
            if sharded:  # MobileBERT's state is column-sharded alike in both groups: chip i -> chip i, its shard
                for src, dst, (a, z) in zip(groups[s - 1], chips, split(width, len(chips)), strict=True):
                    b.send(f"layers.{lo - 1}", "residual", [src], [dst], z - a, elem_bytes=PSUM_BYTES)
            else:  # a replicated state (or one chip per stage): the whole vector
                b.send(f"layers.{lo - 1}", "residual", groups[s - 1], chips, width, elem_bytes=PSUM_BYTES)
        if isinstance(cfg, LlamaConfig):
            llama_layers(b, cfg, range(lo, hi), chips)
        else:
            bert_tp.layers(b, cfg, range(lo, hi), chips)
    if b.scope == "blocks":
        return
    if isinstance(cfg, LlamaConfig):
        llama_head(b, cfg, groups[-1])
    else:
        bert_tp.finish(b, cfg, groups[-1])


def tensor_parallel(cfg, n_chips: int, algorithm: str = "hierarchical", scope: str = "model") -> Plan:
    """All chips in one tensor-parallel group (the paper's scheme)."""
    if n_chips < 1:
        raise McushardError(f"need at least one chip, got {n_chips}")
    b = Builder(cfg, n_chips, algorithm, "tp", scope)
    stage_blocks(cfg, b, [tuple(range(n_chips))])
    return b.plan()
