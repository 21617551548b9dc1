import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from mcushard.cli import app
from mcushard.errors import McushardError
from mcushard.model.bert_weights import ffn_prefixes
from mcushard.model.config import get_preset
from mcushard.model.weights import random_weights
from mcushard.runtime.bert import bert_forward, head_rows
from mcushard.runtime.bert_int8 import BertInt8, bert_quant_error, quantize_bert


@pytest.fixture(scope="module", params=["tiny-mobilebert-test", "tiny-bert-test"])
def quantised(request):
    cfg = get_preset(request.param)
    weights = random_weights(cfg, seed=1)
    return cfg, weights, quantize_bert(cfg, weights, 12)


def test_int8_bert_close_to_fp32_and_deterministic(quantised):
    cfg, weights, qb = quantised
    ids = np.random.default_rng(9).integers(0, cfg.vocab_size, 40)
    ref = bert_forward(cfg, weights, ids)
    got = BertInt8(qb).forward(ids)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.linalg.norm(got - ref) < 0.02 * np.linalg.norm(ref)
    assert np.array_equal(got, BertInt8(qb).forward(ids))


def test_head_and_column_splits_add_up_exactly(quantised):
    cfg, _, qb = quantised
    model = BertInt8(qb)
    ids = np.arange(1, 21) % cfg.vocab_size
    x = model.embed(ids, np.zeros_like(ids))
    keep = np.ones(len(ids), bool)
    qk = x
    if cfg.use_bottleneck:
        b = "encoder.layer.0.bottleneck.attention."
        qk = model.norm("0.batt", b + "LayerNorm", [model.dense(b + "dense", *x)], qb.weights[b + "dense.bias"])
    full_acc, unit = model.attention_partial(0, qk, x, keep)
    parts = [model.attention_partial(0, qk, x, keep, range(a, b))[0] for a, b in [(0, 1), (1, 3), (3, cfg.num_heads)]]
    assert np.array_equal(sum(parts), full_acc)
    assert head_rows(cfg, range(1)).stop == cfg.head_dim
    y = (np.random.default_rng(2).integers(-2047, 2048, size=(len(ids), cfg.attention_width)), 0.01)
    up, down = ffn_prefixes(cfg, 0)[-1]
    whole = model.ffn_partial(0, up, down, y)[0]
    cut = cfg.intermediate_size // 3
    split = model.ffn_partial(0, up, down, y, slice(0, cut))[0] + model.ffn_partial(0, up, down, y, slice(cut, None))[0]
    assert np.array_equal(split, whole)
    assert unit.shape == (cfg.attention_width,)


def test_masked_tokens_do_not_change_the_others(quantised):
    cfg, _, qb = quantised
    model = BertInt8(qb)
    ids = np.random.default_rng(3).integers(0, cfg.vocab_size, 12)
    mask = np.array([1] * 9 + [0] * 3)
    other = ids.copy()
    other[11] = (other[11] + 5) % cfg.vocab_size  # the last token, masked
    a = model.forward(ids, attention_mask=mask)
    b = model.forward(other, attention_mask=mask)
    # trigram input mixes each token with its neighbours: token 10 (masked as a key) sees token 11
    visible = 10 if cfg.trigram_input else 11
    assert np.array_equal(a[:visible], b[:visible])
    assert not np.array_equal(a[11], b[11])


def test_bad_bits_and_uncalibrated_site():
    cfg = get_preset("tiny-mobilebert-test")
    weights = random_weights(cfg)
    with pytest.raises(McushardError, match="12 or 16"):
        quantize_bert(cfg, weights, 8)
    qb = quantize_bert(cfg, weights, 16, inputs=[np.arange(5)])
    with pytest.raises(McushardError, match="no calibrated range"):
        BertInt8(replace(qb, ranges={})).forward(np.arange(5))


def test_bert_quant_error_report():
    cfg = get_preset("tiny-mobilebert-test")
    report = bert_quant_error(cfg, random_weights(cfg), (12, 16), seq_len=32)
    errs = {r["bits"]: r["rel_error"] for r in report["activations"]}
    assert 0 < errs[16] <= errs[12] < 0.02


def test_cli_quant_error_bert():
    result = CliRunner().invoke(app, ["quant-error", "tiny-bert-test", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["bits"] for r in report["activations"]] == [12, 16]


def test_cli_quant_error_bert_rejects_schemes():
    result = CliRunner().invoke(app, ["quant-error", "tiny-bert-test", "--schemes", "w8a12-gptq"])
    assert result.exit_code != 0 and "decoder schemes" in str(result.exception)
