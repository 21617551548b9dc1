"""`mcushard info`: per-group parameter and byte counts."""

import json

import pytest
from typer.testing import CliRunner

from mcushard.cli import app
from mcushard.model.config import get_preset
from mcushard.model.info import model_sizes
from mcushard.model.llama2c import write_llama2c
from mcushard.model.weights import random_llama


def _by_group(cfg):
    return {r.group: r for r in model_sizes(cfg)}


def test_tinyllama_42m_by_hand():
    V, d, h, L = 32000, 512, 1376, 8  # stories42M; 8 kv heads, so kv_dim = d
    per_layer = 2 * d + 4 * d * d + 3 * d * h  # two norms, wq wk wv wo, w1 w2 w3
    sizes = _by_group(get_preset("tinyllama-42m"))
    assert sizes["total"].params == V * d + L * per_layer + d == 41_689_600
    assert sizes["embedding"].params == V * d and sizes["classifier"].params == 0  # shared
    assert sizes["attention"].params == L * 4 * d * d
    assert sizes["ffn"].params == L * 3 * d * h
    assert sizes["norms"].params == (2 * L + 1) * d
    assert sizes["total"].fp32_bytes == 4 * 41_689_600
    # int8: a float32 scale per matrix row; norm gains int16 with one float32 scale per tensor
    int8 = (V * d + 4 * V) + L * (4 * (d * d + 4 * d) + 2 * (h * d + 4 * h) + (d * h + 4 * d))
    int8 += (2 * L + 1) * (2 * d + 4)
    assert sizes["total"].int8_bytes == int8 == 41_996_356


def test_stories260k_and_mobilebert_totals():
    # llama2.c's "260K" model; MobileBERT equals HF MobileBertModel(add_pooling_layer=False)'s count
    assert _by_group(get_preset("stories260k"))["total"].params == 260_032
    mobile = _by_group(get_preset("mobilebert"))
    assert mobile["total"].params == 24_581_888
    assert mobile["classifier"].params == 0 and mobile["bottleneck"].params > 0
    assert sum(r.params for g, r in mobile.items() if g != "total") == mobile["total"].params


def test_unshared_classifier_counts(tmp_path):
    cfg = get_preset("tiny-llama-test").replace(shared_classifier=False)
    sizes = _by_group(cfg)
    assert sizes["classifier"].params == cfg.vocab_size * cfg.dim == sizes["embedding"].params
    path = tmp_path / "m.bin"
    write_llama2c(path, cfg, random_llama(cfg))
    result = CliRunner().invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    groups = {g["group"]: g for g in json.loads(result.stdout)["groups"]}
    assert groups["classifier"]["params"] == cfg.vocab_size * cfg.dim
    assert groups["total"]["fp32_bytes"] == 4 * sizes["total"].params


@pytest.mark.parametrize("model", ["tinyllama-42m", "mobilebert"])
def test_cli_table(model):
    result = CliRunner().invoke(app, ["info", model])
    assert result.exit_code == 0, result.output
    assert "total" in result.stdout and "int8 MiB" in result.stdout
    total = _by_group(get_preset(model))["total"]
    assert f"{total.params:,}" in result.stdout and f"{total.int8_bytes:,}" in result.stdout


def test_tiny_mobilebert_matches_transformers_count():
    torch = pytest.importorskip("torch")  # noqa: F841
    transformers = pytest.importorskip("transformers")
    from mcushard.model.hf_config import config_to_hf

    cfg = get_preset("tiny-mobilebert-test")
    hf_cfg = transformers.MobileBertConfig(**config_to_hf(cfg))
    model = transformers.MobileBertModel(hf_cfg, add_pooling_layer=False)
    assert _by_group(cfg)["total"].params == sum(p.numel() for p in model.parameters())
