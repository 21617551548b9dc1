import pickle

import numpy as np
import pytest

from mcushard.errors import McushardError
from mcushard.runtime.kernels import (
    F32_EXACT,
    F64_EXACT,
    ExactLinear,
    exact_matmul_f64,
    partial_sum_bound,
)


def int64_matmul(w, x):
    return w.astype(np.int64) @ x.astype(np.int64)


BACKENDS = ["float", "int8"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_bits", [8, 12, 16, 24])
@pytest.mark.parametrize("shape", [(7, 5), (64, 1376), (33, 2100)])
def test_exact_linear_random(shape, x_bits, backend):
    rng = np.random.default_rng(sum(shape) + x_bits)
    w = rng.integers(-128, 128, size=shape, dtype=np.int8)
    hi = 2 ** (x_bits - 1)
    x = rng.integers(-hi, hi + 1, size=shape[1])
    lin = ExactLinear(w, x_bits, backend)
    assert lin.backend == backend
    assert np.array_equal(lin(x), int64_matmul(w, x))
    x2 = rng.integers(-hi, hi, size=(shape[1], 3))  # several right-hand sides
    assert np.array_equal(lin(x2), int64_matmul(w, x2))
    # the unchecked path of the decoders' inner loop: same numbers, also after the other batch size
    assert np.array_equal(lin.trusted(x), int64_matmul(w, x))
    assert np.array_equal(lin.trusted(x2), int64_matmul(w, x2))


@pytest.mark.parametrize(("x_bits", "x_extreme"), [(8, 127), (8, -128), (12, -2048), (16, 32767),
                                                   (16, -32768), (24, 2**23 - 1), (24, -(2**23)),
                                                   (12, 2048), (16, 32768)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_linear_worst_case(x_bits, x_extreme, backend):
    # every product at its largest magnitude with one sign: the partial sums are as large as possible
    # (and on the int8 path every 7-bit digit is at 127, or 0, beside a weight of magnitude 128)
    k = 3000
    for w_val in (127, -127, -128):
        w = np.full((4, k), w_val, dtype=np.int8)
        x = np.full(k, x_extreme, dtype=np.int64)
        y = ExactLinear(w, x_bits, backend)(x)
        assert np.array_equal(y, int64_matmul(w, x))
        assert abs(int(y[0])) > F32_EXACT  # the true result is far beyond float32's exact range


def test_naive_float32_is_not_exact_where_the_kernel_is():
    # sanity of the premise: an unchunked float32 GEMV of this size rounds
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(16, 4096), dtype=np.int8)
    x = rng.integers(-32768, 32768, size=4096)
    naive = (w.astype(np.float32) @ x.astype(np.float32)).astype(np.int64)
    exact = int64_matmul(w, x)
    assert not np.array_equal(naive, exact)
    assert np.array_equal(ExactLinear(w, 16)(x), exact)


@pytest.mark.parametrize(("x_bits", "k_chunk", "dtype"), [(8, 1024, np.float32), (12, 64, np.float32),
                                                         (16, 4, np.float32), (24, 5000, np.float64)])
def test_chunk_respects_exactness_bounds(x_bits, k_chunk, dtype):
    w = np.full((2, 5000), -128, dtype=np.int8)
    lin = ExactLinear(w, x_bits)
    assert lin.dtype == dtype and lin.k_chunk == k_chunk
    limit = F32_EXACT if dtype == np.float32 else F64_EXACT
    assert partial_sum_bound(lin.k_chunk, lin.w_max, 2 ** (x_bits - 1)) <= limit
    assert lin.n_chunks == -(-5000 // k_chunk)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_linear_rejects_inputs_wider_than_declared(backend):
    lin = ExactLinear(np.ones((2, 3), np.int8), 8, backend)
    with pytest.raises(McushardError, match="exceeds 128"):
        lin(np.array([0, 129, 0]))


def test_large_matrices_take_the_int8_path_and_small_ones_float():
    assert ExactLinear(np.ones((256, 256), np.int8), 12).backend == "int8"
    assert ExactLinear(np.ones((64, 64), np.int8), 12).backend == "float"
    with pytest.raises(McushardError, match="not available"):  # int16 weights do not fit the int8 GEMM
        ExactLinear(np.full((2, 3), 300, np.int16), 8, "int8")
    assert ExactLinear(np.full((300, 300), 300, np.int16), 8).backend == "float"


def test_int8_path_pickles_and_takes_narrow_input_dtypes():
    rng = np.random.default_rng(5)
    w = rng.integers(-128, 128, size=(40, 300), dtype=np.int8)
    lin = ExactLinear(w, 16, "int8")
    x = rng.integers(-32768, 32768, size=300).astype(np.int16)
    y = lin(x)
    assert y.dtype == np.int64 and np.array_equal(y, int64_matmul(w, x))
    again = pickle.loads(pickle.dumps(lin))  # the session is rebuilt on first use
    assert np.array_equal(again(x), y)
    for n in (2, 1, 2):  # per-batch-size buffers are reused across calls without mixing
        xs = rng.integers(-32768, 32768, size=(300, n))
        assert np.array_equal(again(xs), int64_matmul(w, xs))


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_linear_refuses_a_vector_of_the_wrong_length(backend):
    lin = ExactLinear(np.ones((4, 3), np.int8), 8, backend)
    for x in (np.ones(1, np.int64), np.ones(4, np.int64), np.int64(1)):
        with pytest.raises(McushardError, match="columns"):
            lin(x)
