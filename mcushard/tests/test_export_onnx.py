"""ONNX export: per-chip shards run with onnxruntime, all-reduced in numpy, match the whole fp32 model."""

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from mcushard.cli import app
from mcushard.errors import McushardError
from mcushard.export.onnx import export_plan, run_exported
from mcushard.model.config import get_preset
from mcushard.model.weights import random_weights
from mcushard.partition import make_plan
from mcushard.runtime.bert import bert_forward
from mcushard.runtime.reference import LlamaFP32

TOKENS = [1, 461, 461, 401, 401, 378, 455, 473]


@pytest.fixture(scope="module")
def fp32_logits(stories260k):
    cfg, weights = stories260k
    model = LlamaFP32(cfg, weights)
    return np.stack([model.step(t, pos) for pos, t in enumerate(TOKENS)])  # [S, vocab]


@pytest.mark.parametrize("n", [1, 3, 8])  # 3: uneven heads; 8: more chips than KV heads (scores synced)
def test_shards_match_whole_model(stories260k, fp32_logits, tmp_path, n):
    cfg, weights = stories260k
    plan = make_plan(cfg, n, "tp", "ring")
    manifest = json.loads(export_plan(plan, weights, tmp_path).read_text())
    logits = run_exported(tmp_path, TOKENS)
    np.testing.assert_allclose(logits, fp32_logits, rtol=0, atol=2e-4)
    assert (logits.argmax(-1) == fp32_logits.argmax(-1)).all()
    for chip in manifest["chips"]:  # the weights put into each graph are exactly the chip's slices
        assert chip["weight_elements"] == plan.bytes_held(chip["chip"]) // plan.weight_bytes
        size = sum(int(np.prod(i.dims)) for i in onnx.load(tmp_path / chip["file"]).graph.initializer)
        assert n == 1 or size < sum(w.size for w in weights.values())
    reduced = {s["id"] for s in manifest["syncs"]}
    assert len(reduced) == len(manifest["syncs"])


@pytest.mark.parametrize("n", [1, 3, 8])  # 8 chips > 4 heads: head_dim split, score syncs
def test_mobilebert_shards_match_whole_encoder(tmp_path, n):
    cfg = get_preset("tiny-mobilebert-test")
    weights = random_weights(cfg, 0)
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, 10)
    plan = make_plan(cfg, n, "tp", "tree")
    manifest = json.loads(export_plan(plan, weights, tmp_path).read_text())
    np.testing.assert_allclose(run_exported(tmp_path, ids.tolist()), bert_forward(cfg, weights, ids), rtol=0, atol=1e-4)
    for chip in manifest["chips"]:
        assert chip["weight_elements"] == plan.bytes_held(chip["chip"]) // plan.weight_bytes


def test_export_refuses_plain_bert(tmp_path):
    cfg = get_preset("tiny-bert-test")
    with pytest.raises(McushardError, match="MobileBERT-style"):
        export_plan(make_plan(cfg, 2), random_weights(cfg, 0), tmp_path)


def test_cli_export(tmp_path):
    result = CliRunner().invoke(app, ["export", "tiny-llama-test", "--chips", "2", "--out", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["chip0.onnx", "chip1.onnx", "manifest.json"]
