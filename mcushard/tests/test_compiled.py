"""The compiled decode steps (numba) against the numpy reference: equal bit for bit."""

import numpy as np
import pytest

from mcushard.model.config import get_preset
from mcushard.model.weights import random_weights
from mcushard.runtime import compiled, int8
from mcushard.runtime.generate import generate
from mcushard.runtime.kernels import ExactLinear
from mcushard.runtime.quant import quantize_llama

pytestmark = pytest.mark.skipif(not compiled.ENABLED, reason="numba not installed or MCUSHARD_KERNELS=numpy")


@pytest.fixture
def reference(monkeypatch):
    """Call `fn(*args)` with the compiled kernels switched off (the numpy reference)."""
    def run(fn, *args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(compiled, "ENABLED", False)
            return fn(*args, **kwargs)
    return run


def same(a, b) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b), f"{np.count_nonzero(a != b)} of {a.size} differ"


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_rmsnorm_and_residual_add(reference, bits):
    rng = np.random.default_rng(bits)
    for _ in range(20):
        x = rng.integers(-(2**25), 2**25, 96) >> rng.integers(0, 24)  # magnitudes from 2^25 down to 0
        gain = rng.integers(-32767, 32768, 96).astype(np.int16)
        y, s = int8.rmsnorm_int(x, gain, 3, bits)
        y_ref, s_ref = reference(int8.rmsnorm_int, x, gain, 3, bits)
        same(y, y_ref)
        assert s == s_ref
        psum = rng.integers(-(2**40), 2**40, 96)
        ratio = rng.choice([0.5, 0.25, 1.5, 2.0**-17]) * rng.integers(1, 4, 96)  # ties: round half to even
        same(int8.residual_add(x, psum, ratio), reference(int8.residual_add, x, psum, ratio))
    zero = np.zeros(96, np.int64)
    gain = np.ones(96, np.int16)
    assert int8.rmsnorm_int(zero, gain, 0, bits)[1] == reference(int8.rmsnorm_int, zero, gain, 0, bits)[1] == 1.0


def order_sensitive(rng, n: int, scale: float, top: int = 2**20) -> tuple[np.ndarray, np.ndarray]:
    """n (acc, ratio) pairs where rint(acc * (ratio * scale)) != rint((acc * ratio) * scale): inputs on
    which a kernel that multiplied in another order than the reference would give another integer
    (ratios aimed at products within an ulp of a half-integer of magnitude below `top`)."""
    acc = rng.integers(2**10, 2**30, 20_000) * rng.choice([-1, 1], 20_000)
    ratio = (rng.integers(-top, top, 20_000) + 0.5) / (acc * scale)
    hit = np.rint(acc * (ratio * scale)) != np.rint((acc * ratio) * scale)
    assert hit.sum() >= n
    return acc[hit][:n], ratio[hit][:n]


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_requantize_rope_and_swiglu(reference, bits):
    rng = np.random.default_rng(100 + bits)
    q = int8.qmax(bits)
    for _ in range(20):
        scale = float(rng.uniform(0.1, 10.0))
        acc, ratio = order_sensitive(rng, 8, scale)
        acc = np.concatenate([acc, rng.integers(-(2**30), 2**30, 200)])
        ratio = np.concatenate([ratio, rng.uniform(-1e-5, 1e-5, 200)])
        same(int8.requantize(acc, ratio, bits, scale), reference(int8.requantize, acc, ratio, bits, scale))
        x = rng.integers(-q, q + 1, (5, 16))
        pos = int(rng.integers(0, 64))
        cos, sin = np.cos(pos / 7 ** np.arange(8)), np.sin(pos / 7 ** np.arange(8))
        rot = int8.rope_rotation(np.rint(cos * 2**14).astype(np.int64), np.rint(sin * 2**14).astype(np.int64))
        same(int8.rope_rotate(x, rot, bits), reference(int8.rope_rotate, x, rot, bits))
        gate, g_ratio = order_sensitive(rng, 32, scale, 2**14)  # the gate's rounding order matters here,
        up, u_ratio = np.ones(32, np.int64), np.full(32, 1 / scale)  # and shows in the output
        gate = np.concatenate([gate, rng.integers(-(2**31), 2**31, 50)])
        g_ratio = np.concatenate([g_ratio, rng.uniform(0, 1e-3, 50)])
        up = np.concatenate([up, rng.integers(-(2**31), 2**31, 50)])
        u_ratio = np.concatenate([u_ratio, rng.uniform(0, 1e-9, 50)])
        same(int8.swiglu_columns(gate, up, g_ratio, u_ratio, bits, scale),
             reference(int8.swiglu_columns, gate, up, g_ratio, u_ratio, bits, scale))


@pytest.mark.parametrize("n_kv,n_rep,t", [(1, 1, 1), (2, 4, 9), (3, 2, 40)])
def test_attention_heads(reference, n_kv, n_rep, t):
    rng = np.random.default_rng(t)
    hd, q_max = 16, int8.qmax(12)
    q = rng.integers(-q_max, q_max + 1, (n_kv, n_rep, hd))
    k = rng.integers(-q_max, q_max + 1, (n_kv, 64, hd)).astype(np.float64)[:, :t]  # a cache's first t rows
    v = rng.integers(-q_max, q_max + 1, (n_kv, 64, hd)).astype(np.float64)[:, :t]
    score = rng.uniform(1e-7, 1e-6, (n_kv, n_rep, 1))
    out = np.broadcast_to(rng.uniform(1e-8, 1e-6, (n_kv, 1, 1)), (n_kv, n_rep, 1))
    args = (q, k, v, score, out, 8, q_max)
    same(int8.attention_heads(*args), reference(int8.attention_heads, *args))


@pytest.mark.parametrize("x_bits", [8, 12, 16, 24])
def test_compiled_gemv_at_the_bounds(x_bits):
    rng = np.random.default_rng(x_bits)
    w = rng.choice(np.array([-128, 127], np.int8), (40, 300))  # extreme weights
    hi = 2 ** (x_bits - 1)
    lin = ExactLinear(w, x_bits)
    assert lin.compiled
    for x in (np.full(300, hi), np.full(300, -hi), rng.integers(-hi, hi + 1, 300)):
        same(lin.trusted(x), w.astype(np.int64) @ x)


def test_decoder_tokens_and_logits_equal_the_numpy_reference(reference):
    cfg = get_preset("tiny-llama-test")
    qm = quantize_llama(cfg, random_weights(cfg, 3), "w8a12-rtn", sequences=[[1, 5, 9, 2, 7]])
    fast, slow = int8.LlamaInt8(qm), reference(int8.LlamaInt8, qm)
    tokens = generate(fast, 12)
    assert tokens == reference(generate, slow, 12)
    for pos, token in enumerate([1] + tokens[:-1]):
        same(fast.step(token, pos), reference(slow.step, token, pos))


def test_fused_steps(reference):
    rng = np.random.default_rng(7)
    x, psum = rng.integers(-(2**24), 2**24, 64), rng.integers(-(2**30), 2**30, 64)
    ratio, gain = rng.uniform(-1e-3, 1e-3, 64), rng.integers(-32767, 32768, 64).astype(np.int16)
    for a, b in zip(int8.residual_rmsnorm(x, psum, ratio, gain, 5, 12),
                    reference(int8.residual_rmsnorm, x, psum, ratio, gain, 5, 12), strict=True):
        same(a, b)
    for n_p, n_rep, dlen in [(2, 3, 8), (1, 1, 4)]:  # whole heads, and a head's slice of 4 dims
        n = (n_p * n_rep + 2 * n_p) * dlen
        scale = 0.37
        acc, ratio = order_sensitive(rng, n, scale, 2**10)
        cos, sin = np.cos(np.arange(dlen // 2) + 0.3), np.sin(np.arange(dlen // 2) + 0.3)
        rot = int8.rope_rotation(np.rint(cos * 2**14).astype(np.int64), np.rint(sin * 2**14).astype(np.int64))
        caches = [np.zeros((n_p, 16, dlen)) for _ in range(4)]
        q = int8.qkv_rope_cache(acc, ratio, scale, 12, rot, n_p * n_rep, caches[0], caches[1], 5)
        q_ref = reference(int8.qkv_rope_cache, acc, ratio, scale, 12, rot, n_p * n_rep, caches[2], caches[3], 5)
        same(q, q_ref)
        same(caches[0], caches[2])
        same(caches[1], caches[3])
        assert np.any(caches[0][:, 5]) and not np.any(caches[0][:, :5])


def test_scaled_logits_and_first_argmax(reference):
    rng = np.random.default_rng(11)
    acc = rng.integers(-(2**20), 2**20, 300)
    acc[[40, 41, 200]] = 2**21  # ties at the maximum: the first wins, as np.argmax
    ratio = np.full(300, 3e-4)
    (logits, best), (logits_ref, best_ref) = int8.scaled_logits(acc, ratio, 0.7), reference(int8.scaled_logits, acc,
                                                                                            ratio, 0.7)
    same(logits, logits_ref)
    assert best == best_ref == 40
