"""Parameter and byte counts per tensor group, at fp32 and as the integer runtime stores them.

Groups: embedding (token, position and segment tables, MobileBERT's embedding projection),
attention (Q, K, V, O), bottleneck (MobileBERT's projections between hidden and bottleneck
widths), ffn, norms (RMSNorm / LayerNorm / NoNorm gains and betas), classifier (an unshared
Llama output matrix; 0 when it is the embedding, BERT encoders have none).

int8 storage, as `mcushard.runtime.quant` lays it out:
- every matrix [out, in] (embedding tables included): 1 byte per weight plus one float32 scale
  (4 bytes) per row, i.e. per output channel (per token for an embedding table);
- norm vectors: int16 (`NORM_GAIN_BITS`) plus one float32 scale per tensor;
- biases: int32 (4 bytes each), the width of the accumulators they are added to.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from mcushard.model.config import BertConfig, LlamaConfig, ModelConfig
from mcushard.runtime.quant import NORM_GAIN_BITS

GROUPS = ("embedding", "attention", "bottleneck", "ffn", "norms", "classifier")
SCALE_BYTES = 4  # one float32 scale
_LLAMA_GROUP = {"tok_embeddings": "embedding", "wq": "attention", "wk": "attention", "wv": "attention",
                "wo": "attention", "w1": "ffn", "w2": "ffn", "w3": "ffn", "attention_norm": "norms",
                "ffn_norm": "norms", "norm": "norms", "output": "classifier"}


@dataclass(frozen=True)
class GroupSize:
    """Size of one tensor group (or of the whole model when group == "total")."""

    group: str  # one of GROUPS, or "total"
    tensors: int  # number of tensors
    params: int  # number of scalars
    fp32_bytes: int  # params * 4
    int8_bytes: int  # storage of the integer runtime (module docstring)


def shapes_of(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    if isinstance(cfg, LlamaConfig):
        from mcushard.model.weights import llama_shapes

        return llama_shapes(cfg)
    from mcushard.model.bert_weights import bert_shapes

    return bert_shapes(cfg)


def is_norm(name: str) -> bool:
    return name.endswith("norm") or "LayerNorm" in name


def group_of(cfg: ModelConfig, name: str) -> str:
    """The group a tensor (our name) belongs to."""
    if isinstance(cfg, LlamaConfig):
        return _LLAMA_GROUP[name.rsplit(".", 1)[-1]]
    if is_norm(name):
        return "norms"
    if name.startswith("embeddings."):
        return "embedding"
    if ".attention." in name and ".bottleneck." not in name:
        return "attention"
    if "bottleneck." in name:
        return "bottleneck"
    return "ffn"  # intermediate.*, output.dense, ffn.N.*


def int8_bytes(name: str, shape: tuple[int, ...]) -> int:
    """Bytes one tensor takes in the integer runtime's storage."""
    if len(shape) == 2:
        return shape[0] * shape[1] + SCALE_BYTES * shape[0]
    if is_norm(name):
        return math.prod(shape) * NORM_GAIN_BITS // 8 + SCALE_BYTES
    return 4 * math.prod(shape)  # int32 bias


def model_sizes(cfg: ModelConfig) -> list[GroupSize]:
    """One GroupSize per group in GROUPS order (groups the model lacks are left out), then "total"."""
    acc = {g: [0, 0, 0] for g in GROUPS}  # group -> [tensors, params, int8 bytes]
    for name, shape in shapes_of(cfg).items():
        a = acc[group_of(cfg, name)]
        a[0] += 1
        a[1] += math.prod(shape)
        a[2] += int8_bytes(name, shape)
    keep = [g for g in GROUPS if acc[g][0] or g == "classifier"]
    rows = [GroupSize(g, acc[g][0], acc[g][1], 4 * acc[g][1], acc[g][2]) for g in keep]
    total = [sum(getattr(r, f) for r in rows) for f in ("tensors", "params", "fp32_bytes", "int8_bytes")]
    return rows + [GroupSize("total", *total)]


def describe(cfg: ModelConfig) -> str:
    """One line naming the model's shape."""
    if isinstance(cfg, LlamaConfig):
        cls = "shared with the embedding" if cfg.shared_classifier else "unshared"
        return (f"{cfg.name}: Llama decoder, dim {cfg.dim}, hidden {cfg.hidden_dim}, {cfg.n_layers} layers, "
                f"{cfg.n_heads} heads ({cfg.n_kv_heads} kv), vocab {cfg.vocab_size}, seq {cfg.max_seq_len}, "
                f"classifier {cls}")
    assert isinstance(cfg, BertConfig)
    return (f"{cfg.name}: BERT encoder, hidden {cfg.hidden_size}, bottleneck {cfg.intra_bottleneck_size}, "
            f"{cfg.num_layers} layers, {cfg.num_heads} heads, intermediate {cfg.intermediate_size} x "
            f"{cfg.num_feedforward_networks} FFNs, embedding {cfg.emb_size}, vocab {cfg.vocab_size}, "
            f"{cfg.normalization}, {cfg.hidden_act}")


def info_dict(cfg: ModelConfig) -> dict:
    """JSON-ready summary: the description line and the per-group sizes."""
    return {"model": cfg.name, "kind": cfg.kind, "description": describe(cfg),
            "groups": [asdict(r) for r in model_sizes(cfg)]}


def config_for(spec: str) -> ModelConfig:
    """A MODEL argument's config: a preset's without building its random weights, else the file's
    (read and validated in full, so `info` also checks a checkpoint)."""
    from mcushard.model.config import PRESETS, get_preset
    from mcushard.model.load import load_model

    return get_preset(spec) if spec.lower() in PRESETS else load_model(spec)[0]


def render_table(cfg: ModelConfig) -> None:
    """Print the sizes as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("group", "tensors", "params", "fp32 MiB", "int8 MiB", "int8 bytes"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for r in model_sizes(cfg):
        table.add_row(r.group, str(r.tensors), f"{r.params:,}", f"{r.fp32_bytes / 2**20:.3f}",
                      f"{r.int8_bytes / 2**20:.3f}", f"{r.int8_bytes:,}", end_section=r.group == GROUPS[-1])
    console = Console(width=max(100, Console().width))
    console.print(describe(cfg), highlight=False)
    console.print(table)
    console.print("int8: matrices 1 byte/weight + a float32 scale per output row; norm vectors int16 + "
                  "one float32 scale per tensor; biases int32.")
