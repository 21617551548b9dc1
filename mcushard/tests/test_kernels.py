import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcushard.errors import McushardError
from mcushard.runtime.kernels import (
    F32_EXACT,
    ExactLinear,
    digits_needed,
    exact_matmul_f64,
    int_digits,
    partial_sum_bound,
)


def int64_matmul(w, x):
    return w.astype(np.int64) @ x.astype(np.int64)


@pytest.mark.parametrize("x_bits", [8, 16, 24])
@pytest.mark.parametrize("shape", [(7, 5), (64, 1376), (33, 2100)])
def test_exact_linear_random(shape, x_bits):
    rng = np.random.default_rng(sum(shape) + x_bits)
    w = rng.integers(-127, 128, size=shape, dtype=np.int8)
    hi = 2 ** (x_bits - 1)
    x = rng.integers(-hi, hi, size=shape[1])
    assert np.array_equal(ExactLinear(w)(x), int64_matmul(w, x))
    x2 = rng.integers(-hi, hi, size=(shape[1], 3))  # several right-hand sides
    assert np.array_equal(ExactLinear(w)(x2), int64_matmul(w, x2))


@pytest.mark.parametrize("x_extreme", [127, -128, 32767, -32768, 2**23 - 1, -(2**23)])
def test_exact_linear_worst_case(x_extreme):
    # every product at its largest magnitude with one sign: the partial sums are as large as possible
    k = 3000
    for w_val in (127, -127, -128):
        w = np.full((4, k), w_val, dtype=np.int8)
        x = np.full(k, x_extreme, dtype=np.int64)
        y = ExactLinear(w)(x)
        assert np.array_equal(y, int64_matmul(w, x))
        assert abs(int(y[0])) > F32_EXACT  # the true result is far beyond float32's exact range


def test_naive_float32_is_not_exact_where_the_kernel_is():
    # sanity of the premise: an unchunked float32 GEMV over this size rounds
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(16, 4096), dtype=np.int8)
    x = rng.integers(-32768, 32768, size=4096)
    naive = (w.astype(np.float32) @ x.astype(np.float32)).astype(np.int64)
    exact = int64_matmul(w, x)
    assert not np.array_equal(naive, exact)
    assert np.array_equal(ExactLinear(w)(x), exact)


def test_chunk_respects_float32_bound():
    w = np.full((2, 5000), -128, dtype=np.int8)
    lin = ExactLinear(w)
    assert partial_sum_bound(lin.k_chunk, lin.w_max, 128) <= F32_EXACT
    assert len(lin.blocks) == -(-5000 // lin.k_chunk)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=20))
def test_int_digits_roundtrip(values):
    x = np.array(values, dtype=np.int64)
    n = digits_needed(int(np.max(np.abs(x))))
    d = int_digits(x, n)  # [K, n]
    assert np.max(np.abs(d)) <= 128
    assert np.array_equal(d @ (256 ** np.arange(n, dtype=np.int64)), x)


def test_exact_linear_rejects_float_input():
    with pytest.raises(McushardError, match="integer"):
        ExactLinear(np.ones((2, 2), np.int8))(np.ones(2, np.float32))


def test_exact_matmul_f64():
    rng = np.random.default_rng(1)
    a = rng.integers(-32768, 32768, size=(3, 4, 1024))
    b = rng.integers(-32768, 32768, size=(3, 1024, 5))
    assert np.array_equal(exact_matmul_f64(a, b), a @ b)
    big = np.full((1, 2**12), 2**21)
    with pytest.raises(McushardError, match="2\\^53"):
        exact_matmul_f64(big, big.T)
