"""Exact integer matrix products computed with float BLAS.

numpy's integer matmul does not use BLAS and is slow. Float BLAS is exact on integer inputs when
every partial sum is an integer that the float type represents exactly: for float32 that holds
while |partial sum| <= 2^24, for float64 while <= 2^53. Whatever order BLAS adds the products in
(blocking, FMA, threads), every partial sum is a sum of a subset of the K products, so it is bounded
by K * max|w| * max|x|. Keeping that bound under the limit makes every product and every addition
exact, hence the result equals the int64 matrix product bit for bit.

`ExactLinear` holds an int8 weight matrix as float32 column blocks of at most `k_chunk` columns
with k_chunk * max|w| * 128 <= 2^24 (1032 columns for |w| <= 127). Activations of up to 16 (or
more) bits are split into signed base-256 digits in [-128, 128] (x = sum_d 256^d * digit_d), each
digit column is one more right-hand side of the same float32 GEMM, and the digit and block results
are combined in float64, exact far below 2^53. An MCU computes the same integers with 8/16-bit SIMD
multiply-accumulate (SMLAD, or SMLALD for 64-bit accumulators).
"""

from __future__ import annotations

import numpy as np

from mcushard.errors import McushardError

F32_EXACT = 2**24  # every integer of magnitude <= 2^24 is exact in float32
F64_EXACT = 2**53  # likewise for float64
DIGIT_MAX = 128  # |signed base-256 digit| <= 128


def partial_sum_bound(k: int, w_max: int, x_max: int) -> int:
    """Largest |partial sum| of a length-k dot product with |w| <= w_max, |x| <= x_max."""
    return int(k) * int(w_max) * int(x_max)


def max_abs(x: np.ndarray) -> int:
    return int(np.max(np.abs(x))) if x.size else 0


def int_digits(x: np.ndarray, n_digits: int) -> np.ndarray:
    """Split integers into signed base-256 digits: x = sum_d 256^d digit_d, |digit| <= 128.

    x: [K] or [K, n] integer; returns [K, n_digits] or [K, n * n_digits] (digit-major per column) int64.
    """
    rest = np.asarray(x, dtype=np.int64)
    digits = []
    for _ in range(n_digits):
        low = ((rest + 128) & 255) - 128  # [-128, 127]
        digits.append(low)
        rest = (rest - low) >> 8
    # the top digit keeps whatever is left (|.| <= 128 when n_digits was chosen by digits_needed)
    digits[-1] = digits[-1] + (rest << 8)
    return np.stack(digits, axis=-1).reshape(rest.shape[0], -1)


def digits_needed(x_max: int) -> int:
    """Number of signed base-256 digits so that every digit is within [-128, 128]."""
    n, bound = 1, DIGIT_MAX
    while x_max > bound:
        n, bound = n + 1, bound * 256 + 127
    return n


class ExactLinear:
    """y = W @ x, exact, for an int8 matrix W [out, K] and integer x [K] or [K, n].

    Returns int64 [out] or [out, n]. Raises McushardError if x is not integer-valued or if the
    exactness bound cannot be met (it always can: K is chunked and x is split into digits).
    """

    def __init__(self, w_int: np.ndarray, k_chunk: int | None = None) -> None:
        w_int = np.asarray(w_int)
        if w_int.ndim != 2 or not np.issubdtype(w_int.dtype, np.integer):
            raise McushardError(f"ExactLinear needs a 2-D integer matrix, got {w_int.dtype} {w_int.shape}")
        self.out, self.k = w_int.shape  # [out, K]
        self.w_max = max(max_abs(w_int), 1)
        limit = F32_EXACT // (self.w_max * DIGIT_MAX)
        self.k_chunk = min(k_chunk or limit, limit, max(self.k, 1))
        assert partial_sum_bound(self.k_chunk, self.w_max, DIGIT_MAX) <= F32_EXACT
        starts = range(0, self.k, self.k_chunk)
        # column blocks [out, <=k_chunk] float32 holding the int8 values exactly
        self.blocks = [np.ascontiguousarray(w_int[:, a:a + self.k_chunk], dtype=np.float32) for a in starts]
        self.starts = list(starts)

    def __call__(self, x: np.ndarray, x_max: int | None = None) -> np.ndarray:
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.integer):
            raise McushardError(f"ExactLinear input must be integer, got {x.dtype}")
        vector = x.ndim == 1
        x2 = x.reshape(self.k, -1)  # [K, n]
        n = x2.shape[1]
        x_max = max_abs(x2) if x_max is None else x_max
        n_digits = digits_needed(x_max)
        xd = (x2 if n_digits == 1 else int_digits(x2, n_digits)).astype(np.float32)  # [K, n*d]
        acc = None
        for start, block in zip(self.starts, self.blocks):
            part = block @ xd[start:start + block.shape[1]]  # [out, n*d], exact in float32
            acc = part.astype(np.float64) if acc is None else acc + part  # exact in float64
        if acc is None:
            acc = np.zeros((self.out, n * n_digits))
        if n_digits > 1:
            acc = acc.reshape(self.out, n, n_digits) @ (256.0 ** np.arange(n_digits))  # [out, n]
        y = acc.astype(np.int64)  # [out, n]
        return y[:, 0] if vector else y


def exact_matmul_f64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for integer-valued arrays (any float or int dtype) via float64 BLAS, returned as int64.

    a: [..., m, k], b: [..., k, n]. Asserts the float64 exactness bound on the partial sums.
    """
    k = a.shape[-1]
    bound = partial_sum_bound(k, max_abs(a), max_abs(b))
    if bound > F64_EXACT:
        raise McushardError(f"integer product bound {bound} exceeds 2^53 (K={k}); rescale the operands")
    return np.matmul(a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)).astype(np.int64)
