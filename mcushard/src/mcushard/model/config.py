"""Model descriptions: Llama-style decoders and BERT/MobileBERT encoders, with presets.

Both are frozen dataclasses that validate themselves on construction, so a config that exists is a
config that can be built. `get_preset(name)` returns one of the named presets below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal, Union

from mcushard.errors import McushardError


def _require(cond: bool, what: str, problem: str) -> None:
    if not cond:
        raise McushardError(f"{what}: {problem}")


def _positive_ints(obj, names: list[str]) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(
            isinstance(value, int) and not isinstance(value, bool) and value > 0,
            f"{type(obj).__name__}.{name}",
            f"must be a positive integer, got {value!r}",
        )


@dataclass(frozen=True)
class LlamaConfig:
    """A Llama-2 style decoder (llama2.c / HF LlamaForCausalLM)."""

    dim: int  # model width (residual stream)
    hidden_dim: int  # FFN inner width (SwiGLU: w1/w3 are [hidden_dim, dim], w2 is [dim, hidden_dim])
    n_layers: int  # number of transformer blocks
    n_heads: int  # query heads; head_dim = dim // n_heads
    n_kv_heads: int  # key/value heads (GQA when < n_heads); must divide n_heads
    vocab_size: int  # tokens in the vocabulary
    max_seq_len: int  # longest sequence the KV cache holds
    norm_eps: float = 1e-5  # RMSNorm epsilon
    rope_theta: float = 10000.0  # RoPE base frequency
    shared_classifier: bool = True  # classifier reuses the token embedding matrix
    name: str = "llama"  # label used in reports
    kind: Literal["llama"] = "llama"

    def __post_init__(self) -> None:
        _positive_ints(
            self, ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"]
        )
        what = f"model {self.name!r}"
        _require(self.dim % self.n_heads == 0, what, f"n_heads {self.n_heads} does not divide dim {self.dim}")
        _require(
            self.n_heads % self.n_kv_heads == 0,
            what,
            f"n_kv_heads {self.n_kv_heads} does not divide n_heads {self.n_heads}",
        )
        _require((self.dim // self.n_heads) % 2 == 0, what, "head_dim must be even for RoPE")
        _require(math.isfinite(self.norm_eps) and self.norm_eps > 0, what, "norm_eps must be > 0")
        _require(math.isfinite(self.rope_theta) and self.rope_theta > 0, what, "rope_theta must be > 0")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def replace(self, **changes) -> "LlamaConfig":
        values = {f.name: getattr(self, f.name) for f in fields(self)} | changes
        return LlamaConfig(**values)


@dataclass(frozen=True)
class BertConfig:
    """A BERT-style encoder; MobileBERT when `use_bottleneck` (HF MobileBertConfig semantics)."""

    vocab_size: int  # tokens in the vocabulary
    hidden_size: int  # inter-block width (512 for MobileBERT)
    num_layers: int  # number of encoder blocks
    num_heads: int  # attention heads
    intermediate_size: int  # FFN inner width
    max_position_embeddings: int = 512  # longest sequence
    type_vocab_size: int = 2  # segment (token type) embeddings
    embedding_size: int = 0  # word-embedding width; 0 means hidden_size
    intra_bottleneck_size: int = 0  # MobileBERT bottleneck width inside a block; 0 means no bottleneck
    num_feedforward_networks: int = 1  # stacked FFNs per block (4 for MobileBERT)
    normalization: Literal["layer_norm", "no_norm"] = "layer_norm"  # NoNorm is x * gamma + beta
    hidden_act: Literal["gelu", "relu"] = "gelu"  # FFN activation
    trigram_input: bool = False  # MobileBERT: concat embeddings of tokens t-1, t, t+1, then project
    key_query_shared_bottleneck: bool = False  # MobileBERT: Q and K read the shared bottleneck
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon (unused by NoNorm)
    name: str = "bert"  # label used in reports
    kind: Literal["bert"] = "bert"

    def __post_init__(self) -> None:
        _positive_ints(
            self,
            ["vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
             "max_position_embeddings", "type_vocab_size", "num_feedforward_networks"],
        )
        what = f"model {self.name!r}"
        for name in ("embedding_size", "intra_bottleneck_size"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 0, what, f"{name} must be >= 0, got {value!r}")
        _require(
            self.attention_width % self.num_heads == 0,
            what,
            f"num_heads {self.num_heads} does not divide the attention width {self.attention_width}",
        )
        _require(self.normalization in ("layer_norm", "no_norm"), what, "normalization must be layer_norm|no_norm")
        _require(self.hidden_act in ("gelu", "relu"), what, "hidden_act must be gelu|relu")

    @property
    def use_bottleneck(self) -> bool:
        return self.intra_bottleneck_size > 0

    @property
    def attention_width(self) -> int:
        """Width inside a block: the bottleneck for MobileBERT, hidden_size otherwise."""
        return self.intra_bottleneck_size if self.use_bottleneck else self.hidden_size

    @property
    def emb_size(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.attention_width // self.num_heads

    def replace(self, **changes) -> "BertConfig":
        values = {f.name: getattr(self, f.name) for f in fields(self)} | changes
        return BertConfig(**values)


ModelConfig = Union[LlamaConfig, BertConfig]


PRESETS: dict[str, ModelConfig] = {
    # llama2.c's TinyStories models (https://github.com/karpathy/llama2.c, README model table)
    "stories260k": LlamaConfig(dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4,
                               vocab_size=512, max_seq_len=512, name="stories260k"),
    "stories15m": LlamaConfig(dim=288, hidden_dim=768, n_layers=6, n_heads=6, n_kv_heads=6,
                              vocab_size=32000, max_seq_len=256, name="stories15m"),
    # stories42M, the paper's "TinyLlama-42M"
    "tinyllama-42m": LlamaConfig(dim=512, hidden_dim=1376, n_layers=8, n_heads=8, n_kv_heads=8,
                                 vocab_size=32000, max_seq_len=1024, name="tinyllama-42m"),
    "stories110m": LlamaConfig(dim=768, hidden_dim=2048, n_layers=12, n_heads=12, n_kv_heads=12,
                               vocab_size=32000, max_seq_len=1024, name="stories110m"),
    # google/mobilebert-uncased config.json
    "mobilebert": BertConfig(vocab_size=30522, hidden_size=512, num_layers=24, num_heads=4,
                             intermediate_size=512, max_position_embeddings=512, embedding_size=128,
                             intra_bottleneck_size=128, num_feedforward_networks=4,
                             normalization="no_norm", hidden_act="relu", trigram_input=True,
                             key_query_shared_bottleneck=True, name="mobilebert"),
    # small variants for tests
    "tiny-llama-test": LlamaConfig(dim=32, hidden_dim=88, n_layers=2, n_heads=4, n_kv_heads=2,
                                   vocab_size=64, max_seq_len=64, name="tiny-llama-test"),
    "tiny-mobilebert-test": BertConfig(vocab_size=100, hidden_size=64, num_layers=2, num_heads=4,
                                       intermediate_size=64, max_position_embeddings=64,
                                       embedding_size=32, intra_bottleneck_size=32,
                                       num_feedforward_networks=2, normalization="no_norm",
                                       hidden_act="relu", trigram_input=True,
                                       key_query_shared_bottleneck=True, name="tiny-mobilebert-test"),
    "tiny-bert-test": BertConfig(vocab_size=100, hidden_size=48, num_layers=2, num_heads=4,
                                 intermediate_size=96, max_position_embeddings=64, name="tiny-bert-test"),
}


def get_preset(name: str) -> ModelConfig:
    key = name.lower()
    if key not in PRESETS:
        raise McushardError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[key]
