"""BERT / MobileBERT: tensor names and shapes, fp32 forward, and a check against HF transformers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mcushard.errors import McushardError
from mcushard.model.bert_weights import (
    bert_shapes,
    ffn_prefixes,
    hf_family,
    random_bert,
)
from mcushard.model.config import get_preset
from mcushard.model.weights import random_weights
from mcushard.runtime import bert

TINY_MB = get_preset("tiny-mobilebert-test")
TINY_BERT = get_preset("tiny-bert-test")

# variants that exercise every structural switch of the encoder
VARIANTS = {
    "mobilebert-nonorm-relu-trigram": TINY_MB,
    "mobilebert-layernorm-gelu": TINY_MB.replace(normalization="layer_norm", hidden_act="gelu", layer_norm_eps=1e-2),
    "mobilebert-no-trigram-projected-embedding": TINY_MB.replace(trigram_input=False),
    "mobilebert-unshared-bottleneck": TINY_MB.replace(intra_bottleneck_size=64, key_query_shared_bottleneck=False),
    "mobilebert-no-bottleneck-3-ffns": TINY_MB.replace(intra_bottleneck_size=0, embedding_size=0, trigram_input=False,
                                                       num_feedforward_networks=3),
    "bert-gelu": TINY_BERT,
    "bert-relu-eps": TINY_BERT.replace(hidden_act="relu", layer_norm_eps=1e-2),
}


def sample_inputs(cfg, seq_len: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, seq_len)  # [S]
    types = rng.integers(0, cfg.type_vocab_size, seq_len)  # [S]
    mask = np.ones(seq_len, np.int64)  # [S]
    mask[-3:] = 0
    mask[2] = 0
    return ids, types, mask


# --- golden numbers and names -------------------------------------------------------------------


def test_parameter_counts_golden():
    counts = {name: sum(math.prod(s) for s in bert_shapes(get_preset(name)).values())
              for name in ("mobilebert", "tiny-mobilebert-test", "tiny-bert-test")}
    # mobilebert: HF MobileBertModel(add_pooling_layer=False) on google/mobilebert-uncased's config
    assert counts == {"mobilebert": 24_581_888, "tiny-mobilebert-test": 54_464, "tiny-bert-test": 45_984}


def test_names_follow_hf_state_dict():
    shapes = bert_shapes(get_preset("mobilebert"))
    assert shapes["embeddings.word_embeddings.weight"] == (30522, 128)
    assert shapes["embeddings.embedding_transformation.weight"] == (512, 384)
    assert shapes["encoder.layer.0.attention.self.query.weight"] == (128, 128)
    assert shapes["encoder.layer.0.attention.self.value.weight"] == (128, 512)
    assert shapes["encoder.layer.23.bottleneck.attention.dense.weight"] == (128, 512)
    assert shapes["encoder.layer.23.ffn.2.intermediate.dense.weight"] == (512, 128)
    assert shapes["encoder.layer.0.output.bottleneck.dense.weight"] == (512, 128)
    assert "encoder.layer.0.ffn.3.intermediate.dense.weight" not in shapes
    assert not any(name.startswith("pooler") for name in shapes)
    plain = bert_shapes(TINY_BERT)
    assert hf_family(TINY_BERT) == "bert" and "embeddings.embedding_transformation.weight" not in plain
    assert not any("bottleneck" in name or ".ffn." in name for name in plain)


def test_random_weights_seeded_float32():
    a, b, c = random_bert(TINY_MB, 3), random_bert(TINY_MB, 3), random_bert(TINY_MB, 4)
    assert all(a[k].dtype == np.float32 and np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["encoder.layer.0.attention.self.query.weight"],
                              c["encoder.layer.0.attention.self.query.weight"])
    full = random_weights(get_preset("mobilebert"), 0)
    assert {k: v.shape for k, v in full.items()} == bert_shapes(get_preset("mobilebert"))


def test_unsupported_bottleneck_rejected():
    cfg = TINY_MB.replace(key_query_shared_bottleneck=False)  # bottleneck 32 != hidden 64
    with pytest.raises(McushardError, match="key_query_shared_bottleneck"):
        bert_shapes(cfg)


# --- torch-free forward checks -----------------------------------------------------------------


def test_gelu_and_trigram():
    np.testing.assert_allclose(bert.gelu(np.array([-1.0, 0.0, 1.0], np.float32)),
                               [-0.15865525, 0.0, 0.84134475], atol=1e-7)
    emb = np.arange(6, dtype=np.float32).reshape(3, 2)  # [S=3, E=2]
    assert bert.trigram(emb).tolist() == [[2, 3, 0, 1, 0, 0], [4, 5, 2, 3, 0, 1], [0, 0, 4, 5, 2, 3]]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_forward_shape_finite_deterministic(name):
    cfg = VARIANTS[name]
    w = random_bert(cfg, 0)
    ids, types, mask = sample_inputs(cfg, 10)
    out = bert.bert_forward(cfg, w, ids, types, mask)
    assert out.shape == (10, cfg.hidden_size) and out.dtype == np.float32 and np.all(np.isfinite(out))
    assert np.array_equal(out, bert.bert_forward(cfg, w, ids, types, mask))
    assert not np.allclose(out, bert.bert_forward(cfg, w, ids, types))  # the mask matters


def test_padding_equals_truncation_for_bert():
    w = random_bert(TINY_BERT, 1)
    ids, types, _ = sample_inputs(TINY_BERT, 12)
    mask = np.array([1] * 7 + [0] * 5)
    padded = bert.bert_forward(TINY_BERT, w, ids, types, mask)  # [12, H]
    short = bert.bert_forward(TINY_BERT, w, ids[:7], types[:7])  # [7, H]
    np.testing.assert_allclose(padded[:7], short, atol=1e-5)


def test_masked_tokens_invisible_to_mobilebert():
    w = random_bert(TINY_MB, 1)
    ids, types, _ = sample_inputs(TINY_MB, 12)
    mask = np.array([1] * 7 + [0] * 5)
    other = ids.copy()
    other[8:] = (other[8:] + 17) % TINY_MB.vocab_size  # position 7 stays: the trigram reads t+1
    a = bert.bert_forward(TINY_MB, w, ids, types, mask)
    b = bert.bert_forward(TINY_MB, w, other, types, mask)
    np.testing.assert_array_equal(a[:7], b[:7])
    assert not np.allclose(a[8:], b[8:])


@pytest.mark.parametrize("name", ["mobilebert-nonorm-relu-trigram", "bert-gelu"])
def test_head_and_ffn_splits_add_up(name):
    """Partial sums over disjoint heads / intermediate columns reproduce the unsplit step."""
    cfg = VARIANTS[name]
    w = random_bert(cfg, 2)
    ids, types, mask = bert.check_inputs(cfg, *sample_inputs(cfg, 9))
    x = bert.embed(cfg, w, ids, types)  # [S, H]
    qk_in, v_in, _ = bert.block_inputs(cfg, w, 0, x)
    bias = bert.mask_bias(mask)  # [S]
    full = bert.attention_partial(cfg, w, 0, qk_in, v_in, bias)  # [S, A]
    split = sum(bert.attention_partial(cfg, w, 0, qk_in, v_in, bias, heads=r)
                for r in (range(1), range(1, 3), range(3, cfg.num_heads)))
    np.testing.assert_allclose(split, full, atol=1e-5)
    up, down = ffn_prefixes(cfg, 0)[-1]
    full = bert.ffn_partial(cfg, w, up, down, qk_in)  # [S, A]
    cut = cfg.intermediate_size // 3
    split = (bert.ffn_partial(cfg, w, up, down, qk_in, cols=slice(0, cut))
             + bert.ffn_partial(cfg, w, up, down, qk_in, cols=slice(cut, None)))
    np.testing.assert_allclose(split, full, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_ids": [1, 2, 500]}, "token ids must lie in"),
        ({"input_ids": []}, "non-empty"),
        ({"input_ids": [1.5, 2.0]}, "integers"),
        ({"input_ids": list(range(65))}, "max_position_embeddings"),
        ({"input_ids": [1, 2], "token_type_ids": [0, 2]}, "token_type_ids"),
        ({"input_ids": [1, 2], "attention_mask": [1, 0.5]}, "attention_mask"),
        ({"input_ids": [1, 2], "attention_mask": [1]}, "attention_mask"),
    ],
)
def test_bad_inputs(kwargs, message):
    with pytest.raises(McushardError, match=message):
        bert.bert_forward(TINY_MB, random_bert(TINY_MB), **kwargs)


def test_bad_weights():
    w = random_bert(TINY_MB)
    w["encoder.layer.1.ffn.0.output.dense.weight"] = w["encoder.layer.1.ffn.0.output.dense.weight"][:, :5]
    with pytest.raises(McushardError, match=r"ffn\.0\.output\.dense\.weight.*shape"):
        bert.bert_forward(TINY_MB, w, [1, 2])
    del w["embeddings.LayerNorm.bias"]
    with pytest.raises(McushardError, match="embeddings.LayerNorm.bias.*missing"):
        bert.bert_forward(TINY_MB, w, [1, 2])


# --- against HF transformers (the `hf` extra) --------------------------------------------------


def hf_model(cfg, weights):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    common = {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings, "type_vocab_size": cfg.type_vocab_size,
        "hidden_act": cfg.hidden_act, "layer_norm_eps": cfg.layer_norm_eps,
    }
    if hf_family(cfg) == "mobilebert":
        hf_cfg = transformers.MobileBertConfig(
            **common, embedding_size=cfg.emb_size, use_bottleneck=cfg.use_bottleneck,
            intra_bottleneck_size=cfg.intra_bottleneck_size,
            key_query_shared_bottleneck=cfg.key_query_shared_bottleneck,
            num_feedforward_networks=cfg.num_feedforward_networks, normalization_type=cfg.normalization,
            trigram_input=cfg.trigram_input)
        model = transformers.MobileBertModel(hf_cfg, add_pooling_layer=False)
    else:
        model = transformers.BertModel(transformers.BertConfig(**common), add_pooling_layer=False)
    # strict: every name and shape of ours is one of HF's and nothing is left over
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return model.eval()


def hf_forward(model, ids, types, mask) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids)[None], token_type_ids=torch.from_numpy(types)[None],
                    attention_mask=torch.from_numpy(mask)[None])
    return out.last_hidden_state[0].numpy()  # [S, H]


def assert_matches_hf(cfg, seq_len: int, seed: int) -> None:
    w = random_bert(cfg, seed)
    model = hf_model(cfg, w)
    ids, types, mask = sample_inputs(cfg, seq_len, seed)
    ours = bert.bert_forward(cfg, w, ids, types, mask)  # [S, H]
    theirs = hf_forward(model, ids, types, mask)  # [S, H]
    assert np.abs(theirs).max() > 0.5  # activations of order 1, so 1e-4 absolute is a tight check
    assert np.abs(ours - theirs).max() < 1e-4  # max absolute error
    ours_nomask = bert.bert_forward(cfg, w, ids, types)
    theirs_nomask = hf_forward(model, ids, types, np.ones_like(mask))
    assert np.abs(ours_nomask - theirs_nomask).max() < 1e-4


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_matches_hf_tiny(name):
    assert_matches_hf(VARIANTS[name], seq_len=12, seed=5)


def test_matches_hf_full_mobilebert():
    assert_matches_hf(get_preset("mobilebert"), seq_len=16, seed=6)
