"""Per-chip shards of an int8 MobileBERT encoder (`QuantBert`) along a tensor-parallel Plan.

A chip gets the int8 slices the plan gives it (each with the per-row scales of its rows) and float
constants the integer model folds into its requantisation: biases, NoNorm gains, position and type
embeddings — sliced to the chip's columns where the state is sharded (the 512-wide inter-block
state), whole where every chip needs them after a reduction (biases of K-split projections, the
bottleneck-width norms), plus the calibrated static scale of every activation site and the word
embedding's per-row scales (see `llama_shard`: the lookup all-reduce carries int8 rows only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcushard.errors import McushardError
from mcushard.model.bert_weights import ffn_prefixes
from mcushard.model.config import BertConfig
from mcushard.partition.plan import Plan, Range
from mcushard.runtime.bert_int8 import QuantBert
from mcushard.runtime.llama_shard import SliceTaker, head_pieces


@dataclass(frozen=True)
class Mat:
    """An int8 slice of one linear layer and the per-row scales of its rows."""

    w: np.ndarray  # int8 [rows, cols]
    scale: np.ndarray  # float32 [rows]


@dataclass(frozen=True)
class BertShard:
    """Everything one chip process is given for the encoder."""

    cfg: BertConfig  # model shape
    bits: int  # activation bits
    chip: int  # this chip
    steps: tuple  # plan.chip_steps(chip)
    group_size: int  # hierarchical all-reduce sub-group size
    lead: int  # the chip that collects the output
    state_cols: Range  # columns of the 512-wide state this chip holds
    vocab_rows: Range  # word-embedding rows held
    pieces: tuple[tuple[int, int, int], ...]  # (head, d0, d1) of attention owned (same every layer)
    ffn_cols: Range  # intermediate columns owned (same for every FFN)
    mats: dict[str, Mat]  # linear name -> this chip's slice (attention/FFN rows or columns, see plan)
    words: np.ndarray  # int8 [rows, E] word-embedding rows held
    word_scale: np.ndarray  # float32 [vocab] per-row scales of the word embedding (replicated)
    consts: dict[str, np.ndarray]  # float constants, sliced as described in the module doc
    ranges: dict[str, float]  # calibrated max |value| per activation site (static scales)


def bert_shards(plan: Plan, qb: QuantBert, group_size: int) -> list[BertShard]:
    cfg = qb.cfg
    if plan.model != cfg:
        raise McushardError("plan and quantised model describe different models")
    if not cfg.use_bottleneck or cfg.normalization != "no_norm" or plan.strategy != "tp" or plan.scope != "model":
        raise McushardError("distributed encoder runs cover MobileBERT-style models (bottleneck, NoNorm) "
                            "with a whole-model tensor-parallel plan")
    mats2 = {name + ".weight": q for name, q in qb.q.items()}
    out = []
    for chip in range(plan.n_chips):
        take = SliceTaker(plan, chip, mats2, {})
        (v0, v1), _ = take.has("embeddings.word_embeddings.weight")[0]
        (h0, h1), _ = take.has("embeddings.embedding_transformation.weight")[0]
        p0 = "encoder.layer.0."
        (i0, i1), _ = take.has(ffn_prefixes(cfg, 0)[0][0] + ".dense.weight")[0]
        pieces = _attention_pieces(take, p0, cfg.head_dim)
        mats: dict[str, Mat] = {}

        def mat(name: str, rows: Range, cols: Range, mats=mats, take=take) -> None:
            mats[name] = Mat(take(name + ".weight", rows, cols), qb.scale[name][rows[0]:rows[1]])

        A, E = cfg.attention_width, cfg.emb_size
        w = qb.weights
        consts = {"embeddings.LayerNorm.weight": w["embeddings.LayerNorm.weight"][h0:h1],
                  "embeddings.LayerNorm.bias": w["embeddings.LayerNorm.bias"][h0:h1],
                  "position": w["embeddings.position_embeddings.weight"][:, h0:h1],
                  "token_type": w["embeddings.token_type_embeddings.weight"][:, h0:h1],
                  "embeddings.embedding_transformation.bias": w["embeddings.embedding_transformation.bias"][h0:h1]}
        mat("embeddings.embedding_transformation", (h0, h1), (0, E * (3 if cfg.trigram_input else 1)))
        for layer in range(cfg.num_layers):
            p = f"encoder.layer.{layer}."
            proj = ["bottleneck.input.dense", "attention.self.value"]
            if cfg.key_query_shared_bottleneck:
                proj.insert(1, "bottleneck.attention.dense")
            for name in proj:
                mat(p + name, (0, A), (h0, h1))
                if name.startswith("bottleneck."):  # applied after the reduction: every chip, whole
                    consts[p + name + ".bias"] = w[p + name + ".bias"]
            for norm in ("bottleneck.input.LayerNorm", "bottleneck.attention.LayerNorm", "attention.output.LayerNorm"):
                if p + norm + ".weight" in w:
                    for k in (".weight", ".bias"):
                        consts[p + norm + k] = w[p + norm + k]
            rows = _piece_rows(pieces, cfg.head_dim)
            for name in ("query", "key", "value"):  # value: its rows of the all-reduced projection
                if name != "value":
                    mat(p + f"attention.self.{name}", rows, (0, A))
                consts[p + f"attention.self.{name}.bias"] = w[p + f"attention.self.{name}.bias"][rows[0]:rows[1]]
            mat(p + "attention.output.dense", (0, A), _piece_rows(pieces, cfg.head_dim))
            consts[p + "attention.output.dense.bias"] = w[p + "attention.output.dense.bias"]
            for up, down in ffn_prefixes(cfg, layer):
                mat(up + ".dense", (i0, i1), (0, A))
                mat(down + ".dense", (0, A), (i0, i1))
                consts[up + ".dense.bias"] = w[up + ".dense.bias"][i0:i1]
                for k in (".dense.bias", ".LayerNorm.weight", ".LayerNorm.bias"):
                    consts[down + k] = w[down + k]
            o = p + "output.bottleneck."
            mat(o + "dense", (h0, h1), (0, A))
            for k in ("dense.bias", "LayerNorm.weight", "LayerNorm.bias"):
                consts[o + k] = w[o + k][h0:h1]
        out.append(BertShard(cfg, qb.bits, chip, tuple(plan.chip_steps(chip)), group_size, 0, (h0, h1), (v0, v1),
                             pieces, (i0, i1), mats, take("embeddings.word_embeddings.weight", (v0, v1), (0, E)),
                             qb.scale["embeddings.word_embeddings"], consts, dict(qb.ranges)))
    return out


def _attention_pieces(take: SliceTaker, p: str, hd: int) -> tuple[tuple[int, int, int], ...]:
    return head_pieces(_Renamed(take, p + "attention.self.query.weight"), "", hd)


def _piece_rows(pieces, hd: int) -> Range:
    """The contiguous rows of Q/K (and columns of O) of the chip's heads or head slice."""
    g0, d0, _ = pieces[0]
    g1, _, d1 = pieces[-1]
    return (g0 * hd + d0, g1 * hd + d1)


class _Renamed:
    """Presents one tensor's slices under the name `head_pieces` asks for ("wk")."""

    def __init__(self, take: SliceTaker, tensor: str) -> None:
        self.take, self.tensor = take, tensor

    def has(self, _name: str):
        return self.take.has(self.tensor)
