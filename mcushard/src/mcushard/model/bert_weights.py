"""Named tensors of BERT / MobileBERT encoders and seeded random initialisation.

Names are exactly the state-dict keys of HF transformers' `MobileBertModel` / `BertModel` built
with `add_pooling_layer=False`, without the leading "mobilebert." / "bert." prefix, so a checkpoint
loads by name and `model.load_state_dict(...)` accepts `random_bert(...)` unchanged. Linear weights
are `[out_features, in_features]` (PyTorch layout), so `y = x @ W.T + b`.

The pooler (dense + tanh on the first token) is NOT included: the encoder's product here is the
hidden states [S, hidden]; a pooler belongs to a task head.

Which family a config is: `hf_family(cfg)`. A config that uses any MobileBERT feature (bottleneck,
trigram input, stacked FFNs, NoNorm, an embedding size other than hidden) is MobileBERT; otherwise
it is plain BERT, whose embedding has no `embedding_transformation`.

Widths (MobileBERT, HF's `true_hidden_size`): H = hidden_size, A = attention_width (the bottleneck B
when there is one, H otherwise), E = embedding size, I = intermediate_size, V = vocab.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from mcushard.errors import McushardError
from mcushard.model.config import BertConfig

Weights = dict[str, np.ndarray]
Shapes = dict[str, tuple[int, ...]]

RESIDUAL_WRITE_GAIN = 0.2  # random init: scale of projections whose output is added to a residual
_RESIDUAL_WRITES = ("output.dense.weight", "output.bottleneck.dense.weight")


def hf_family(cfg: BertConfig) -> Literal["mobilebert", "bert"]:
    """The HF model class a config corresponds to (also the state-dict prefix HF checkpoints use)."""
    mobile = (
        cfg.use_bottleneck
        or cfg.trigram_input
        or cfg.num_feedforward_networks > 1
        or cfg.normalization == "no_norm"
        or cfg.emb_size != cfg.hidden_size
    )
    return "mobilebert" if mobile else "bert"


def _linear(name: str, out_features: int, in_features: int) -> Shapes:
    return {name + ".weight": (out_features, in_features), name + ".bias": (out_features,)}


def _norm(name: str, width: int, cfg: BertConfig) -> Shapes:
    # LayerNorm and NoNorm both hold weight (gamma) and bias (beta); HF's NoNorm declares bias first
    if cfg.normalization == "no_norm":
        return {name + ".bias": (width,), name + ".weight": (width,)}
    return {name + ".weight": (width,), name + ".bias": (width,)}


def ffn_prefixes(cfg: BertConfig, layer: int) -> list[tuple[str, str]]:
    """(up, down) name prefixes of a layer's FFNs in execution order; the last one is the block's own.

    up: `<up>.dense` [I, A]; down: `<down>.dense` [A, I] and `<down>.LayerNorm` [A].
    """
    p = f"encoder.layer.{layer}."
    stacked = [(f"{p}ffn.{i}.intermediate", f"{p}ffn.{i}.output") for i in range(cfg.num_feedforward_networks - 1)]
    return stacked + [(p + "intermediate", p + "output")]


def _check_supported(cfg: BertConfig) -> None:
    if cfg.use_bottleneck and not cfg.key_query_shared_bottleneck and cfg.intra_bottleneck_size != cfg.hidden_size:
        # HF: Q and K would then read the hidden state [H] through a [A, B] projection and fail
        raise McushardError(
            f"model {cfg.name!r}: a bottleneck without key_query_shared_bottleneck needs "
            f"intra_bottleneck_size == hidden_size ({cfg.intra_bottleneck_size} != {cfg.hidden_size})"
        )


def bert_shapes(cfg: BertConfig) -> Shapes:
    """Every tensor's name and shape, in HF state-dict order."""
    _check_supported(cfg)
    H, A, E, I = cfg.hidden_size, cfg.attention_width, cfg.emb_size, cfg.intermediate_size
    mobile = hf_family(cfg) == "mobilebert"
    shapes: Shapes = {
        "embeddings.word_embeddings.weight": (cfg.vocab_size, E),
        "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, H),
        "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, H),
    }
    if mobile:  # HF builds it even when unused (E == H and no trigram)
        shapes |= _linear("embeddings.embedding_transformation", H, E * (3 if cfg.trigram_input else 1))
    shapes |= _norm("embeddings.LayerNorm", H, cfg)
    for layer in range(cfg.num_layers):
        p = f"encoder.layer.{layer}."
        # value reads the block input [H] (HF's use_bottleneck_attention=False); Q, K read [A]
        shapes |= _linear(p + "attention.self.query", A, A)
        shapes |= _linear(p + "attention.self.key", A, A)
        shapes |= _linear(p + "attention.self.value", A, H)
        shapes |= _linear(p + "attention.output.dense", A, A)
        shapes |= _norm(p + "attention.output.LayerNorm", A, cfg)
        block_up, block_down = ffn_prefixes(cfg, layer)[-1]
        shapes |= _linear(block_up + ".dense", I, A)
        shapes |= _linear(block_down + ".dense", A, I)
        shapes |= _norm(block_down + ".LayerNorm", A, cfg)
        if cfg.use_bottleneck:
            shapes |= _linear(p + "output.bottleneck.dense", H, A)
            shapes |= _norm(p + "output.bottleneck.LayerNorm", H, cfg)
            shapes |= _linear(p + "bottleneck.input.dense", A, H)
            shapes |= _norm(p + "bottleneck.input.LayerNorm", A, cfg)
            if cfg.key_query_shared_bottleneck:
                shapes |= _linear(p + "bottleneck.attention.dense", A, H)
                shapes |= _norm(p + "bottleneck.attention.LayerNorm", A, cfg)
        for up, down in ffn_prefixes(cfg, layer)[:-1]:
            shapes |= _linear(up + ".dense", I, A)
            shapes |= _linear(down + ".dense", A, I)
            shapes |= _norm(down + ".LayerNorm", A, cfg)
    return shapes


def random_bert(cfg: BertConfig, seed: int = 0) -> Weights:
    """Seeded random float32 weights that keep activations of order 1 through the whole stack.

    Linear weights ~ N(0, 1/in_features), except those that write into a residual stream (the
    `output.dense` / `output.bottleneck.dense` projections), which are 0.2x that, so that NoNorm's 24
    blocks of 6 residual additions each do not grow activations without bound. Biases ~ N(0, 0.1^2),
    embeddings ~ N(0, 0.5^2), norm gammas ~ 1 + N(0, 0.1^2), betas ~ N(0, 0.1^2). (A trained model's
    std-0.02 init would make NoNorm MobileBERT's outputs tiny, and a 1e-4 check meaningless.)
    """
    rng = np.random.default_rng(seed)
    weights: Weights = {}
    for name, shape in bert_shapes(cfg).items():
        if name.endswith("_embeddings.weight"):
            value = 0.5 * rng.standard_normal(shape)
        elif "LayerNorm" in name and name.endswith(".weight"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            value = 0.1 * rng.standard_normal(shape)
        else:  # linear weight [out, in]
            gain = RESIDUAL_WRITE_GAIN if name.endswith(_RESIDUAL_WRITES) else 1.0
            value = gain * rng.standard_normal(shape) / np.sqrt(shape[1])
        weights[name] = value.astype(np.float32)
    return weights


def check_bert_weights(cfg: BertConfig, weights: Weights, source: str) -> None:
    """Every tensor `bert_shapes(cfg)` names is present with its shape; else one clear error."""
    for name, shape in bert_shapes(cfg).items():
        if name not in weights:
            raise McushardError(f"{source}: tensor {name!r} is missing")
        if tuple(weights[name].shape) != shape:
            raise McushardError(
                f"{source}: tensor {name!r} has shape {tuple(weights[name].shape)}, expected {shape}"
            )
