"""Tensor-parallel split of BERT and MobileBERT encoders (HF names from `bert_shapes`).

Plain BERT follows the Llama scheme: hidden state replicated, Q/K/V by heads, attention-output
dense by the matching columns, FFN up by rows and down by columns, one all-reduce after each, norms
replicated. Biases of row-split layers are split with them; a bias added after a reduction is held
by the group's first chip, which adds it into its partial sum (exact in integers).

MobileBERT keeps the 512-wide inter-block state sharded by columns: the output bottleneck
(128 -> 512) is split by rows, so its residual add and NoNorm run on each chip's shard without any
communication. The next block's three 512 -> 128 projections (bottleneck input, shared Q/K
bottleneck, value) are split by the same columns and produce partial sums, reduced in one
all-reduce of 3 x 128 values. Q and K (128 -> 128) are then split by heads, the attention-output
dense by columns (all-reduce), and each of the 4 stacked FFNs by rows/columns (one all-reduce each):
6 small all-reduces per block instead of 2, because every FFN ends in a residual + norm.
"""

from __future__ import annotations

from mcushard.model.bert_weights import ffn_prefixes, hf_family
from mcushard.model.config import BertConfig
from mcushard.partition.plan import ACT_BYTES, PSUM_BYTES, Work, split
from mcushard.partition.tensor_parallel import Builder, head_groups, head_layout


def _split_any(n: int, parts: int):
    """`split`, or everything on the first chip when there are fewer rows than chips."""
    return split(n, parts) if n >= parts else [(0, n)] + [(0, 0)] * (parts - 1)


def _shards(cfg: BertConfig, chips):
    """Column shard of the inter-block state per chip (MobileBERT), else None (replicated)."""
    return split(cfg.hidden_size, len(chips), "hidden columns") if cfg.use_bottleneck else None


def _linear(b: Builder, chip: int, name: str, rows, cols, bias_rows) -> None:
    b.hold(chip, name + ".weight", rows, cols)
    b.hold(chip, name + ".bias", bias_rows)


def _norm(b: Builder, chips, name: str, rows=None, width: int = 0) -> None:
    for part in (".weight", ".bias"):
        if rows is None:
            b.replicate(chips, name + part, width)
        else:
            for c, r in zip(chips, rows):
                b.hold(c, name + part, r)


def embed(b: Builder, cfg: BertConfig, chips) -> None:
    H, E, n = cfg.hidden_size, cfg.emb_size, len(chips)
    vocab = split(cfg.vocab_size, n, "vocabulary rows")
    for c, r in zip(chips, vocab):
        b.hold(c, "embeddings.word_embeddings.weight", r, (0, E))
    lookups = [Work(c, ("embeddings.word_embeddings.weight",), elements=E,
                    weight_elements=-(-E * (r[1] - r[0]) // cfg.vocab_size)) for c, r in zip(chips, vocab)]
    if hf_family(cfg) == "bert":
        pos, typ = _split_any(cfg.max_position_embeddings, n), _split_any(cfg.type_vocab_size, n)
        for c, p, t in zip(chips, pos, typ):
            b.hold(c, "embeddings.position_embeddings.weight", p, (0, H))
            b.hold(c, "embeddings.token_type_embeddings.weight", t, (0, H))
        b.compute("embed", "lookup", "elementwise", lookups)
        b.allreduce("embed", "lookup", chips, H, PSUM_BYTES)
        _norm(b, chips, "embeddings.LayerNorm", width=H)
        b.elementwise("embed", "norm", chips, 5 * H, ("embeddings.LayerNorm.weight",))
        return
    b.compute("embed", "lookup", "elementwise", lookups)
    b.allreduce("embed", "lookup", chips, E, ACT_BYTES)
    in_width = E * (3 if cfg.trigram_input else 1)
    hs = split(H, n, "hidden columns")
    works = []
    for c, r in zip(chips, hs):
        _linear(b, c, "embeddings.embedding_transformation", r, (0, in_width), r)
        b.hold(c, "embeddings.position_embeddings.weight", (0, cfg.max_position_embeddings), r)
        b.hold(c, "embeddings.token_type_embeddings.weight", (0, cfg.type_vocab_size), r)
        m = (r[1] - r[0]) * in_width
        works.append(Work(c, ("embeddings.embedding_transformation.weight",), macs=m, weight_elements=m,
                          elements=4 * (r[1] - r[0])))
        b.use_act(c, in_width + H)
    b.compute("embed", "transform+add+norm", "matmul", works)
    _norm(b, chips, "embeddings.LayerNorm", rows=hs)
    if not cfg.use_bottleneck:  # blocks need the whole state: gather the shards (zero-padded sum)
        b.allreduce("embed", "gather", chips, H, PSUM_BYTES)


def _ffn(b: Builder, cfg: BertConfig, blk: str, up: str, down: str, chips) -> None:
    A, I = cfg.attention_width, cfg.intermediate_size
    ups, downs = [], []
    for i, (c, r) in enumerate(zip(chips, split(I, len(chips), "FFN rows"))):
        _linear(b, c, up + ".dense", r, (0, A), r)
        _linear(b, c, down + ".dense", (0, A), r, (0, A) if i == 0 else (0, 0))
        k = r[1] - r[0]
        ups.append(Work(c, (up + ".dense.weight",), macs=k * A, weight_elements=k * A, elements=2 * k))
        downs.append(Work(c, (down + ".dense.weight",), macs=k * A, weight_elements=k * A))
        b.use_act(c, 3 * cfg.hidden_size + 4 * A + k)
    b.compute(blk, up.split(".", 3)[-1] + ".up+act", "matmul", ups)
    b.compute(blk, down.split(".", 3)[-1] + ".down", "matmul", downs)
    b.allreduce(blk, down.split(".", 3)[-1] + ".out", chips, A, PSUM_BYTES)
    _norm(b, chips, down + ".LayerNorm", width=A)
    b.elementwise(blk, "residual+norm", chips, 3 * A, (down + ".LayerNorm.weight",))


def layers(b: Builder, cfg: BertConfig, layer_range, chips) -> None:
    H, A, hd = cfg.hidden_size, cfg.attention_width, cfg.head_dim
    layout = head_layout(cfg.num_heads, hd, chips)
    groups = head_groups(layout, chips)
    if groups:
        b.notes.append(f"{len(chips)} chips > {cfg.num_heads} heads: head_dim split within heads")
    hs = _shards(cfg, chips)
    for layer in layer_range:
        p, blk = f"encoder.layer.{layer}.", f"layers.{layer}"
        lead = chips[0]
        if hs is not None:  # MobileBERT: the partial projections from the column shard, one all-reduce
            proj = ["bottleneck.input.dense", "attention.self.value"]
            if cfg.key_query_shared_bottleneck:
                proj.insert(1, "bottleneck.attention.dense")
            works = []
            for c, r in zip(chips, hs):
                for name in proj:
                    _linear(b, c, p + name, (0, A), r, (0, A) if c == lead else (0, 0))
                m = len(proj) * A * (r[1] - r[0])
                works.append(Work(c, tuple(p + n + ".weight" for n in proj), macs=m, weight_elements=m))
            b.compute(blk, "bottleneck+value", "matmul", works)
            b.allreduce(blk, "bottleneck", chips, len(proj) * A, PSUM_BYTES)
            _norm(b, chips, p + "bottleneck.input.LayerNorm", width=A)
            if cfg.key_query_shared_bottleneck:
                _norm(b, chips, p + "bottleneck.attention.LayerNorm", width=A)
            b.elementwise(blk, "bottleneck.norm", chips, 4 * A, (p + "bottleneck.input.LayerNorm.weight",))
        qkv, attn, out = [], [], []
        for c, pieces in zip(chips, layout):
            dims = [(g * hd + d0, g * hd + d1) for g, d0, d1 in pieces]
            names = ("attention.self.query", "attention.self.key") + (() if hs else ("attention.self.value",))
            for rows in dims:
                for name in names:
                    _linear(b, c, p + name, rows, (0, A if hs else H), rows)
                b.hold(c, p + "attention.output.dense.weight", (0, A), rows)
            b.hold(c, p + "attention.output.dense.bias", (0, A) if c == lead else (0, 0))
            q = sum(r[1] - r[0] for r in dims)
            m = len(names) * q * (A if hs else H)
            qkv.append(Work(c, tuple(p + n + ".weight" for n in names), macs=m, weight_elements=m))
            attn.append(Work(c, (), macs=2 * q, elements=3 * len(pieces), weight_elements=2 * q))
            out.append(Work(c, (p + "attention.output.dense.weight",), macs=q * A, weight_elements=q * A))
            b.use_act(c, 3 * H + 4 * A + 3 * q)
        b.compute(blk, "attn.qk" if hs else "attn.qkv", "matmul", qkv)
        for group in groups:
            b.allreduce(blk, "attn.scores", group, 0, PSUM_BYTES, per_key=1)
        b.compute(blk, "attn.softmax+av", "attention", attn)
        b.compute(blk, "attn.out", "matmul", out)
        b.allreduce(blk, "attn.out", chips, A, PSUM_BYTES)
        _norm(b, chips, p + "attention.output.LayerNorm", width=A)
        b.elementwise(blk, "residual+norm", chips, 3 * A, (p + "attention.output.LayerNorm.weight",))
        for up, down in ffn_prefixes(cfg, layer):
            _ffn(b, cfg, blk, up, down, chips)
        if hs is not None:  # output bottleneck by rows: the next state stays sharded, no communication
            works = []
            for c, r in zip(chips, hs):
                _linear(b, c, p + "output.bottleneck.dense", r, (0, A), r)
                m = (r[1] - r[0]) * A
                works.append(Work(c, (p + "output.bottleneck.dense.weight",), macs=m, weight_elements=m,
                                  elements=4 * (r[1] - r[0])))
            b.compute(blk, "out.bottleneck+residual+norm", "matmul", works)
            _norm(b, chips, p + "output.bottleneck.LayerNorm", rows=hs)


def finish(b: Builder, cfg: BertConfig, chips) -> None:
    """The encoder's output is the hidden state; a sharded one is collected on the first chip."""
    hs = _shards(cfg, chips)
    if hs is not None:
        for c, r in zip(chips[1:], hs[1:]):
            b.send("output", "hidden", [c], [chips[0]], r[1] - r[0], PSUM_BYTES)
