import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mcushard.cli import app
from mcushard.errors import McushardError
from mcushard.model.config import get_preset
from mcushard.model.weights import random_weights
from mcushard.runtime import int8 as I
from mcushard.runtime.generate import generate
from mcushard.runtime.kernels import ExactLinear
from mcushard.runtime.quant import (
    DEFAULT_SCHEME,
    SCHEMES,
    QuantScheme,
    gptq_rows,
    quant_error_report,
    quantize_llama,
    quantize_rows,
    weight_error,
)
from mcushard.runtime.reference import (
    LlamaFP32,
    apply_rope,
    rmsnorm,
    rope_tables,
    silu,
    softmax,
)


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("tiny-llama-test")
    weights = random_weights(cfg, seed=3)
    return cfg, weights, quantize_llama(cfg, weights, "w8a16-gptq")


def test_quantize_rows_error_bound():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 300)).astype(np.float32)
    q, s = quantize_rows(w)
    assert q.dtype == np.int8 and s.shape == (40,)
    assert np.all(np.abs(w - q * s[:, None]) <= s[:, None] / 2 + 1e-7)  # half a step per row
    err = weight_error(w, q, s)
    assert 35 < err.sqnr_db < 50 and err.max_rel < 1 / 254 + 1e-6


def test_gptq_lowers_output_error_on_calibration_inputs():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((512, 64)) @ rng.standard_normal((64, 64))  # correlated inputs [samples, in]
    w = rng.standard_normal((32, 64))
    out_err = {}
    for name, (q, s) in {"rtn": quantize_rows(w), "gptq": gptq_rows(w, x)}.items():
        out_err[name] = np.linalg.norm(x @ (w - q * s[:, None]).T)
    assert out_err["gptq"] < 0.8 * out_err["rtn"]
    assert np.array_equal(gptq_rows(w, x)[1], quantize_rows(w)[1])  # same per-row grid


def test_rmsnorm_int_matches_float():
    rng = np.random.default_rng(2)
    x = rng.integers(-(2**22), 2**22, size=64)
    gain = rng.integers(1000, 32767, size=64).astype(np.int16)
    y, scale = I.rmsnorm_int(x, gain, eps_units=0, bits=16)
    ref = rmsnorm(x.astype(np.float64), gain.astype(np.float64), 0.0)
    assert np.max(np.abs(y)) == 32767
    assert np.allclose(y * scale, ref, rtol=0, atol=2e-4 * np.max(np.abs(ref)))


def test_softmax_int_matches_float():
    rng = np.random.default_rng(3)
    scores = rng.integers(-5000, 5000, size=(3, 200))
    ratio = np.full((3, 1), 0.002)  # real units per accumulator unit
    probs = I.softmax_int(scores, ratio * np.log2(np.e) * (1 << I.EXP_FRAC))
    ref = softmax(scores * 0.002)
    assert np.allclose(probs / 2**I.PROB_FRAC, ref, atol=3e-5 * 4)
    assert np.all(np.abs(probs.sum(-1) - 2**I.PROB_FRAC) <= 200)


def test_silu_q16_matches_float():
    x = np.linspace(-20, 20, 4001)
    got = I.silu_q16(np.rint(x * 2**16).astype(np.int64)) / 2**16
    assert np.max(np.abs(got - silu(x))) < 1e-4


def test_rope_int_matches_float():
    cfg = get_preset("stories260k")
    cos, sin = rope_tables(cfg)
    rng = np.random.default_rng(4)
    x = rng.integers(-20000, 20000, size=(4, cfg.head_dim))
    cq, sq = (np.rint(t * 2**14).astype(np.int64) for t in (cos, sin))
    for pos in (0, 7, 300):
        got = I.rope_int(x, cq[pos], sq[pos], 16)
        ref = apply_rope(x.astype(np.float64), cos[pos], sin[pos])
        assert np.max(np.abs(got - ref)) <= 2.5
        # the one-matmul rotation is the pair formula, integer for integer (rounded, then clipped)
        x0, x1 = x[:, 0::2], x[:, 1::2]
        pairs = np.stack([x0 * cq[pos] - x1 * sq[pos], x0 * sq[pos] + x1 * cq[pos]], -1).reshape(x.shape)
        assert np.array_equal(got, np.clip((pairs + 2**13) >> 14, -32767, 32767))


def test_int8_tracks_fp32_and_is_deterministic(tiny):
    cfg, weights, qm = tiny
    fp, a, b = LlamaFP32(cfg, weights), I.LlamaInt8(qm), I.LlamaInt8(qm)
    for pos, token in enumerate([1, 5, 9, 33, 2, 60, 17, 40]):
        ref, got = fp.step(token, pos), a.step(token, pos)
        assert np.array_equal(got, b.step(token, pos))
        assert np.linalg.norm(got - ref) < 0.05 * np.linalg.norm(ref - ref.mean())


@pytest.mark.parametrize("scheme", ["w8a16-gptq", "w8a12-gptq"])
def test_int8_gemm_and_float_blas_kernels_decode_bit_identically(tiny, scheme, monkeypatch):
    """Every product on the int8 GEMM path, then every product on float BLAS: the same logits."""
    from dataclasses import replace

    from mcushard.runtime import kernels

    cfg, _, qm = tiny
    qm = replace(qm, scheme=SCHEMES[scheme])
    monkeypatch.setattr(kernels, "INT8_MIN_WEIGHTS", 0)
    gemm = I.LlamaInt8(qm)
    monkeypatch.setattr(kernels, "INT8_MIN_WEIGHTS", 1 << 62)
    blas = I.LlamaInt8(qm)
    assert {lin.backend for lin in gemm.lin.values()} == {"int8"}
    assert {lin.backend for lin in blas.lin.values()} == {"float"}
    for pos, token in enumerate([1, 5, 9, 33, 2, 60, 17, 40]):
        assert np.array_equal(gemm.step(token, pos), blas.step(token, pos))


def test_split_partial_sums_are_bit_exact(tiny):
    """A row-split projection cut anywhere along K adds int64 partial sums to the unsplit result."""
    cfg, _, qm = tiny
    model = I.LlamaInt8(qm)
    x = model.embed(7)
    whole = model.attention_block(0, x, 0)
    att_in = np.random.default_rng(5).integers(-32767, 32768, size=cfg.dim)
    w_o = qm.q["layers.0.wo"]
    for cut in (1, cfg.head_dim, 13):
        parts = ExactLinear(w_o[:, :cut], 16)(att_in[:cut]) + ExactLinear(w_o[:, cut:], 16)(att_in[cut:])
        assert np.array_equal(parts, ExactLinear(w_o, 16)(att_in))
    h = np.random.default_rng(6).integers(-32767, 32768, size=cfg.hidden_dim)
    w_2 = qm.q["layers.0.w2"]
    split = sum(ExactLinear(w_2[:, a:b], 16)(h[a:b]) for a, b in [(0, 30), (30, 31), (31, cfg.hidden_dim)])
    assert np.array_equal(split, ExactLinear(w_2, 16)(h))
    assert whole.dtype == np.int64


def test_attention_heads_subset_equals_all(tiny):
    cfg, _, qm = tiny
    model = I.LlamaInt8(qm)
    for pos, token in enumerate([1, 4, 8]):
        model.step(token, pos)
    rng = np.random.default_rng(7)
    n_rep = cfg.n_heads // cfg.n_kv_heads
    q = rng.integers(-30000, 30000, size=(cfg.n_kv_heads, n_rep, cfg.head_dim))
    kc, vc = model.k_cache[0, :, :3], model.v_cache[0, :, :3]
    lp = model.layers[0]
    full = I.attention_heads(q, kc, vc, lp["score"], lp["att"], 16)
    for g in range(cfg.n_kv_heads):  # one kv group per "chip"
        part = I.attention_heads(q[g:g + 1], kc[g:g + 1], vc[g:g + 1], lp["score"][g:g + 1], lp["att"][g:g + 1], 16)
        assert np.array_equal(part[0], full[g])


def test_int8_generate_interface(tiny):
    cfg, _, qm = tiny
    out = generate(I.LlamaInt8(qm), 10)
    assert len(out) == 10 and all(0 <= t < cfg.vocab_size for t in out)


def test_bad_scheme():
    with pytest.raises(McushardError, match="ffn_bits"):
        QuantScheme("x", "rtn", 8, 8, 8, 10, 8)
    cfg = get_preset("tiny-llama-test")
    with pytest.raises(McushardError, match="unknown quantisation scheme"):
        quantize_llama(cfg, random_weights(cfg), "w4a4")


def test_stories260k_agreement_target(stories260k):
    """The issue's target: >= 90% teacher-forced top-1 agreement over 256 positions (default scheme),
    and the naive all-8-bit scheme falls short of it (the trade-off the README shows)."""
    cfg, weights = stories260k
    report = quant_error_report(cfg, weights, 256, [DEFAULT_SCHEME, "w8a8-rtn"])
    agree = {r["scheme"]: r["agreement"] for r in report["schemes"]}
    assert agree[DEFAULT_SCHEME] >= 0.90
    assert agree["w8a8-rtn"] < 0.90
    assert report["weight_error"]["gptq"]["w2"]["min_sqnr_db"] > 30


def test_cli_quant_error_json():
    result = CliRunner().invoke(app, ["quant-error", "tiny-llama-test", "--steps", "8", "--json",
                                      "--schemes", "w8a8-rtn,w8a16-rtn"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["scheme"] for r in report["schemes"]] == ["w8a8-rtn", "w8a16-rtn"]
    assert all(0.0 <= r["agreement"] <= 1.0 for r in report["schemes"])
    assert set(report["weight_error"]["rtn"]) >= {"wq", "w2", "tok_embeddings"}


def test_cli_quant_error_table_and_bad_scheme():
    runner = CliRunner()
    result = runner.invoke(app, ["quant-error", "tiny-llama-test", "--steps", "4", "--schemes", "w8a16-rtn"])
    assert result.exit_code == 0 and "agreement" in result.stdout and "w8a16-rtn" in result.stdout
    bad = runner.invoke(app, ["quant-error", "tiny-llama-test", "--schemes", "w3a3"])
    assert bad.exit_code != 0 and "unknown quantisation scheme" in str(bad.exception)


def test_cli_generate_int8():
    result = CliRunner().invoke(app, ["generate", "tiny-llama-test", "--int8", "--steps", "6", "--tokens"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 6


def test_schemes_cover_each_site_at_8_bits():
    base = SCHEMES["w8a16-gptq"]
    for site in ("norm_bits", "qkv_bits", "att_bits", "ffn_bits", "cls_bits"):
        assert any(getattr(s, site) == 8 and s.weights == base.weights for s in SCHEMES.values())
    assert SCHEMES[DEFAULT_SCHEME].weights == "gptq"


def test_unshared_classifier_is_quantised_on_its_own():
    cfg = get_preset("tiny-llama-test").replace(shared_classifier=False)
    weights = random_weights(cfg, seed=4)
    qm = quantize_llama(cfg, weights, "w8a12-gptq")
    assert qm.q["cls"] is not qm.q["tok_embeddings"] and "cls" in qm.errors
    ref, got = LlamaFP32(cfg, weights).step(3, 0), I.LlamaInt8(qm).step(3, 0)
    assert np.linalg.norm(got - ref) < 0.05 * np.linalg.norm(ref - ref.mean())
