"""Exact integer matrix products computed with float BLAS.

numpy's integer matmul does not use BLAS and is slow. Float BLAS is exact on integer inputs when
every partial sum is an integer that the float type represents exactly: for float32 that holds
while |partial sum| <= 2^24, for float64 while <= 2^53. Whatever order BLAS adds the products in
(blocking, FMA, threads), every partial sum is a sum of a subset of the K products, so it is bounded
by K * max|w| * max|x|. Keeping that bound under the limit makes every product and every addition
exact, hence the result equals the int64 matrix product bit for bit.

`ExactLinear(w, x_bits)` holds an int8 weight matrix for activations of at most `x_bits` bits,
transposed and cut along K into chunks of k_chunk rows with k_chunk * max|w| * 2^(x_bits-1) <= 2^24
(1024 for 8-bit activations, 64 for 12-bit, 4 for 16-bit): one batched float32 product gives every
chunk's exact partial result, and the chunks are added in float64 (exact far below 2^53). Weights
are read once, as float32 (the bytes of an fp32 model). When even one row would break the float32
bound (activations over 16 bits), the matrix is held in float64 instead, under the 2^53 bound.
An MCU computes the same integers with 8/16-bit SIMD multiply-accumulate into 32/64-bit registers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mcushard.errors import McushardError

F32_EXACT = 2**24  # every integer of magnitude <= 2^24 is exact in float32
F64_EXACT = 2**53  # likewise for float64


def partial_sum_bound(k: int, w_max: int, x_max: int) -> int:
    """Largest |partial sum| of a length-k dot product with |w| <= w_max, |x| <= x_max."""
    return int(k) * int(w_max) * int(x_max)


def max_abs(x: np.ndarray) -> int:
    """max |x| as a Python int (no overflow: np.abs of int8 -128 is -128)."""
    return max(int(np.max(x)), -int(np.min(x))) if x.size else 0


class ExactLinear:
    """y = W @ x, exact, for an int8 matrix W [out, K] and integer x [K] or [K, n] with |x| <= 2^(x_bits-1).

    Returns int64 [out] or [out, n]. Input that is not integer or exceeds x_bits is a McushardError.
    """

    def __init__(self, w_int: np.ndarray, x_bits: int = 8) -> None:
        w_int = np.asarray(w_int)
        if w_int.ndim != 2 or not np.issubdtype(w_int.dtype, np.integer):
            raise McushardError(f"ExactLinear needs a 2-D integer matrix, got {w_int.dtype} {w_int.shape}")
        self.out, self.k = w_int.shape  # [out, K]
        self.x_max = 2 ** (x_bits - 1)
        self.w_max = max(max_abs(w_int), 1)
        self.dtype, limit = np.float32, F32_EXACT
        if self.w_max * self.x_max > F32_EXACT:
            self.dtype, limit = np.float64, F64_EXACT
        self.k_chunk = max(min(limit // (self.w_max * self.x_max), self.k), 1)
        assert partial_sum_bound(self.k_chunk, self.w_max, self.x_max) <= limit
        self.n_chunks = -(-self.k // self.k_chunk)
        self.k_padded = self.n_chunks * self.k_chunk
        padded = np.zeros((self.k_padded, self.out), self.dtype)  # [K padded, out]
        padded[: self.k] = w_int.T
        self.wt = padded.reshape(self.n_chunks, self.k_chunk, self.out)  # [chunks, k_chunk, out]
        self._buffers: dict[int, np.ndarray] = {}  # n -> [n, K padded] input buffer

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.integer):
            raise McushardError(f"ExactLinear input must be integer, got {x.dtype}")
        if max_abs(x) > self.x_max:
            raise McushardError(f"ExactLinear input exceeds {self.x_max} (declared bits): {max_abs(x)}")
        xt = x.reshape(self.k, -1).T  # [n, K]
        n = xt.shape[0]
        xp = self._buffers.get(n)
        if xp is None:  # one zero-padded input buffer per batch size, reused across calls
            xp = self._buffers[n] = np.zeros((n, self.k_padded), self.dtype)  # [n, K padded]
        xp[:, : self.k] = xt
        if self.n_chunks == 1:  # a plain product (BLAS threads it as it sees fit)
            y = (xp @ self.wt[0]).astype(np.int64)  # [n, out]
        else:
            chunks = xp.reshape(n, self.n_chunks, self.k_chunk).transpose(1, 0, 2)  # [chunks, n, k_chunk]
            if THREADS[0] > 1 and self.out * self.k >= PARALLEL_MIN_WEIGHTS:  # BLAS releases the GIL
                cut = self.n_chunks // 2
                halves = _pool().map(lambda c: _chunk_sum(chunks[c], self.wt[c]), (slice(0, cut), slice(cut, None)))
                y = sum(halves).astype(np.int64)  # [n, out]
            else:
                y = _chunk_sum(chunks, self.wt).astype(np.int64)  # [n, out]
        return y[0] if x.ndim == 1 else y.T


def _chunk_sum(chunks: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """chunks [c, n, k_chunk] @ wt [c, k_chunk, out], each product exact in float32, added in float64 -> [n, out]."""
    return np.matmul(chunks, wt).sum(axis=0, dtype=np.float64)


THREADS = [2]  # threads that split a chunked product (two halves of the chunks); [1] = none
PARALLEL_MIN_WEIGHTS = 1 << 18  # smaller matrices are not worth a thread hand-off
_POOL: list[ThreadPoolExecutor] = []


def _pool() -> ThreadPoolExecutor:
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=2, thread_name_prefix="exact-linear"))
    return _POOL[0]


def exact_matmul_f64(a: np.ndarray, b: np.ndarray, a_max: int | None = None, b_max: int | None = None
                     ) -> np.ndarray:
    """a @ b for integer-valued arrays (any float or int dtype) via float64 BLAS, returned as int64.

    a: [..., m, k], b: [..., k, n]. Asserts the float64 exactness bound on the partial sums, from
    max |a| and max |b| (scanned, or given by the caller when known, e.g. a KV cache's clip value).
    """
    k = a.shape[-1]
    bound = partial_sum_bound(k, max_abs(a) if a_max is None else a_max, max_abs(b) if b_max is None else b_max)
    if bound > F64_EXACT:
        raise McushardError(f"integer product bound {bound} exceeds 2^53 (K={k}); rescale the operands")
    return np.matmul(a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)).astype(np.int64)
