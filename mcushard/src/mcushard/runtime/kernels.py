"""Exact integer matrix products, computed by an int8 GEMM (onnxruntime) or by float BLAS.

`ExactLinear(w, x_bits)` holds an int8 weight matrix W [out, K] for integer activations of at most
`x_bits` bits and returns W @ x as int64, equal to the int64 product bit for bit. Two exact paths:

- int8 GEMM (matrices of at least `INT8_MIN_WEIGHTS` weights, when onnxruntime is installed): the
  weights stay int8 (a quarter of fp32's memory traffic; decode is bound by reading the weights). The
  activation is shifted to v = x + 2^(x_bits-1) >= 0 and cut into unsigned 7-bit digits,
  v = sum_i 128^i d_i, which go through one ONNX `MatMulInteger` (uint8 x int8 -> int32) as extra
  rows; y = sum_i 128^i (W @ d_i) - 2^(x_bits-1) * rowsum(W), which the same graph computes after
  the product (the digit rows cast to int64, one int64 MatMul by [1, 128, ...], minus the offsets):
  one session run per product, no numpy passes over the digit products. Every int32 accumulator is bounded by
  K * 127 * 128 < 2^31, and a pair of adjacent products by 2 * 127 * 128 < 2^15, so not even an
  int16 pair-add SIMD path (x86 vpmaddubsw, which saturates) can round: the result is exact
  whatever kernel onnxruntime picks. This is also what an MCU does: 8-bit SIMD multiply-accumulate
  into 32-bit registers, a wide activation as several narrow passes.
- float BLAS (small matrices, where a call's fixed cost dominates): float BLAS is exact on integer
  inputs while every partial sum stays an exactly representable integer, |.| <= 2^24 in float32,
  2^53 in float64. Whatever order BLAS adds the products in, every partial sum is a sum of a subset
  of the K products, bounded by K * max|w| * max|x|. The matrix is held transposed and cut along K
  into chunks of k_chunk rows with k_chunk * max|w| * 2^(x_bits-1) <= 2^24 (1024 for 8-bit
  activations, 64 for 12-bit, 4 for 16-bit); one batched float32 product gives every chunk's exact
  partial result and the chunks are added in float64. Past 16-bit activations it is float64.

- compiled (numba, `runtime.compiled`), for the product of one vector by a matrix of fewer than
  `COMPILED_MAX_WEIGHTS` weights (a chip's slices): int8 weights times integer activations in an
  int32 accumulator (int64 where K * max|w| * max|x| could pass 2^31), exact by construction, at a
  call cost of about 1 us against onnxruntime's 5-10 us. Larger matrices and batches keep the paths
  above.

`exact_matmul_f64` multiplies two integer-valued activation tensors (attention) in float64 BLAS.
"""

from __future__ import annotations

import functools

import numpy as np

from mcushard.errors import McushardError
from mcushard.runtime import compiled

F32_EXACT = 2**24  # every integer of magnitude <= 2^24 is exact in float32
F64_EXACT = 2**53  # likewise for float64
INT32_MAX = 2**31 - 1
DIGIT_BITS = 7  # unsigned activation digits [0, 127]: 2 * 127 * 128 < 2^15 (no int16 pair saturation)
DIGIT_TABLE_MAX = 1 << 15  # activations up to 16 bits split by table lookup (a 64K-column table at most)
INT8_MIN_WEIGHTS = 1 << 16  # smaller matrices take the float path (lower fixed cost per call)
COMPILED_MAX_WEIGHTS = 1 << 18  # vector products of matrices below this size take the compiled kernel


def partial_sum_bound(k: int, w_max: int, x_max: int) -> int:
    """Largest |partial sum| of a length-k dot product with |w| <= w_max, |x| <= x_max."""
    return int(k) * int(w_max) * int(x_max)


def max_abs(x: np.ndarray) -> int:
    """max |x| as a Python int (no overflow: np.abs of int8 -128 is -128)."""
    return max(int(np.maximum.reduce(x, axis=None)), -int(np.minimum.reduce(x, axis=None))) if x.size else 0


def _onnxruntime():
    """The onnxruntime module, or None when it is not installed (then every product is float BLAS)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


class ExactLinear:
    """y = W @ x, exact, for an int8 matrix W [out, K] and integer x [K] or [K, n] with |x| <= 2^(x_bits-1).

    Returns int64 [out] or [out, n]. Input that is not integer or exceeds x_bits is a McushardError.
    `backend` is "int8" (onnxruntime int8 GEMM) or "float" (chunked float BLAS); both are exact.
    """

    def __init__(self, w_int: np.ndarray, x_bits: int = 8, backend: str | None = None) -> None:
        w_int = np.asarray(w_int)
        if w_int.ndim != 2 or not np.issubdtype(w_int.dtype, np.integer):
            raise McushardError(f"ExactLinear needs a 2-D integer matrix, got {w_int.dtype} {w_int.shape}")
        self.out, self.k = w_int.shape  # [out, K]
        self.x_max = 2 ** (x_bits - 1)
        self.w_max = max(max_abs(w_int), 1)
        self.y_bound = partial_sum_bound(self.k, self.w_max, self.x_max)  # max |W @ x| over inputs |x| <= x_max
        int8_ok = (self.w_max <= 128 and _onnxruntime() is not None
                   and partial_sum_bound(self.k, self.w_max, 1 << DIGIT_BITS) <= INT32_MAX)
        if backend is None:
            backend = "int8" if int8_ok and self.out * self.k >= INT8_MIN_WEIGHTS else "float"
        if backend not in ("int8", "float") or (backend == "int8" and not int8_ok):
            raise McushardError(f"ExactLinear backend {backend!r} is not available for this matrix")
        self.backend = backend
        self._buffers: dict[int, tuple] = {}  # n -> buffers reused across calls of batch size n
        self._vector = None  # the product of one vector x [K], bound to its buffers (`_bind_vector`)
        self.compiled = compiled.ENABLED and self.w_max <= 128 and self.out * self.k < COMPILED_MAX_WEIGHTS
        if backend == "int8":
            self._init_int8(w_int)
        else:
            self._init_float(w_int)
        if self.compiled and backend != "int8":  # the compiled kernel reads W transposed, int8
            self.wt_int8 = np.ascontiguousarray(w_int.T, dtype=np.int8)  # [K, out]

    def _init_float(self, w_int: np.ndarray) -> None:
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

    def _init_int8(self, w_int: np.ndarray) -> None:
        self.n_digits = -(-(2 * self.x_max).bit_length() // DIGIT_BITS)  # digits of x + x_max in [0, 2 x_max]
        self.wt_int8 = np.ascontiguousarray(w_int.T, dtype=np.int8)  # [K, out]
        self.offset_rows = self.x_max * np.sum(w_int, axis=1, dtype=np.int64)  # [out]
        self._session = None  # built on first use (and again after unpickling)
        self._table = None  # the shared digit table (`_digit_table`), looked up with the session

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_session"], state["_buffers"] = None, {}  # an onnxruntime session does not pickle
        state["_table"], state["_vector"] = None, None
        return state

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind not in "iu":
            raise McushardError(f"ExactLinear input must be integer, got {x.dtype}")
        if x.ndim == 0 or x.shape[0] != self.k:
            rows = x.shape[0] if x.ndim else 0
            raise McushardError(f"ExactLinear input has {rows} rows, the matrix {self.k} columns")
        if max_abs(x) > self.x_max:
            raise McushardError(f"ExactLinear input exceeds {self.x_max} (declared bits): {max_abs(x)}")
        return self.trusted(x)

    def trusted(self, x: np.ndarray) -> np.ndarray:
        """`self(x)` without the input checks, for an integer array whose bound |x| <= 2^(x_bits-1) holds
        by construction (a requantiser's or RMSNorm's output at x_bits): the decoders' inner loop."""
        if x.ndim == 1:  # decode: one vector, through buffers and views bound once
            vector = self._vector
            if vector is None:
                vector = self._vector = self._bind_vector()
            return vector(x)
        xt = x.reshape(self.k, -1).T  # [n, K]
        y = self._int8(xt) if self.backend == "int8" else self._float(xt)  # [n, out]
        return y[0] if x.ndim == 1 else y.T

    def _bind_vector(self):
        """x [K] -> W @ x int64 [out], the batch-of-one path with its buffer views made once (a decode
        step multiplies one vector per matrix; the general path's reshapes cost as much as the work)."""
        if self.compiled:
            wt, out = self.wt_int8, self.out
            fits = partial_sum_bound(self.k, self.w_max, self.x_max) <= INT32_MAX
            acc = np.empty(out, np.int32 if fits else np.int64)  # [out]

            def vector(x: np.ndarray) -> np.ndarray:
                y = np.empty(out, np.int64)  # [out]
                compiled.gemv(wt, x, acc, y)
                return y
            return vector
        if self.backend == "float":
            xp = self._float_buffer(1)  # [1, K padded]
            x_in = xp[0, : self.k]  # [K] view
            if self.n_chunks == 1:
                row, wt = xp[0], self.wt[0]  # [K padded], [K padded, out]

                def vector(x: np.ndarray) -> np.ndarray:
                    x_in[...] = x
                    return (row @ wt).astype(np.int64)
                return vector
            chunks = xp.reshape(self.n_chunks, 1, self.k_chunk)  # [chunks, 1, k_chunk] view

            def vector(x: np.ndarray) -> np.ndarray:
                x_in[...] = x
                return np.matmul(chunks, self.wt).sum(axis=0, dtype=np.float64).astype(np.int64)[0]
            return vector
        digits, y, run = self._buffers.get(1) or self._buffers.setdefault(1, self._bind(1))
        if self._table is None:  # wide activations: the general digit split
            return lambda x: self._int8(x.reshape(1, -1))[0]
        table, digits_k, y_row = self._table, digits.reshape(self.n_digits, self.k), y[0]  # views

        def vector(x: np.ndarray) -> np.ndarray:
            table.take(x, axis=1, out=digits_k, mode="wrap")
            run()
            return y_row.copy()  # the bound buffer is rewritten by the next call
        return vector

    def _float_buffer(self, n: int) -> np.ndarray:
        """The zero-padded input buffer [n, K padded] of batch size n (made once)."""
        xp = self._buffers.get(n)
        if xp is None:
            xp = self._buffers[n] = np.zeros((n, self.k_padded), self.dtype)  # [n, K padded]
        return xp

    def _float(self, xt: np.ndarray) -> np.ndarray:
        n = xt.shape[0]
        xp = self._float_buffer(n)
        xp[:, : self.k] = xt
        if self.n_chunks == 1:
            return (xp @ self.wt[0]).astype(np.int64)  # [n, out]
        chunks = xp.reshape(n, self.n_chunks, self.k_chunk).transpose(1, 0, 2)  # [chunks, n, k_chunk]
        return np.matmul(chunks, self.wt).sum(axis=0, dtype=np.float64).astype(np.int64)  # [n, out]

    def _int8(self, xt: np.ndarray) -> np.ndarray:
        n = xt.shape[0]
        bufs = self._buffers.get(n)
        if bufs is None:
            bufs = self._buffers[n] = self._bind(n)
        digits, y, run = bufs  # uint8 [digits, n, K], int64 [n, out], the bound session run
        if self._table is not None:  # every digit in one gather (|x| <= x_max: checked or by construction)
            self._table.take(xt, axis=1, out=digits, mode="wrap")
        else:
            mask, top = (1 << DIGIT_BITS) - 1, self.n_digits - 1
            v = np.add(xt, self.x_max, dtype=np.int64)  # [n, K] in [0, 2 x_max]
            for i in range(top):
                np.bitwise_and(v >> (DIGIT_BITS * i) if i else v, mask, out=digits[i], casting="unsafe")
            np.right_shift(v, DIGIT_BITS * top, out=digits[top], casting="unsafe")  # < 128 as v <= 2 x_max
        run()
        return y.copy()  # the bound buffer is rewritten by the next call

    def _bind(self, n: int) -> tuple:
        """Input/output buffers for batch size n, bound to the session once."""
        if self._session is None:
            self._session = _matmul_integer_session(self.wt_int8, self.offset_rows, self.n_digits)
            self._table = _digit_table(self.x_max, self.n_digits) if self.x_max <= DIGIT_TABLE_MAX else None
        digits = np.empty((self.n_digits, n, self.k), np.uint8)  # [digits, n, K]
        y = np.empty((n, self.out), np.int64)  # [n, out]
        binding = self._session.io_binding()
        binding.bind_cpu_input("A", digits.reshape(-1, self.k))
        binding.bind_output("Y", "cpu", 0, np.int64, y.shape, y.ctypes.data)
        sess = getattr(self._session, "_sess", None)  # the C++ session: its run skips ~3 us of Python checks
        if sess is not None and hasattr(binding, "_iobinding"):
            return digits, y, functools.partial(sess.run_with_iobinding, binding._iobinding, None)
        return digits, y, functools.partial(self._session.run_with_iobinding, binding)


@functools.lru_cache(maxsize=None)
def _digit_table(x_max: int, n_digits: int) -> np.ndarray:
    """uint8 [digits, 2 x_max + 1]: column x mod (2 x_max + 1) holds the 7-bit digits of x + x_max for every
    integer |x| <= x_max, so `np.take(table, x, axis=1, mode="wrap")` splits an activation in one pass.
    One table per width, shared by every matrix of the process (8 KB for 12-bit activations)."""
    size = 2 * x_max + 1
    i = np.arange(size)  # [size]
    v = np.where(i <= x_max, i, i - size) + x_max  # [size]: x + x_max of the x that wraps to column i
    return np.stack([(v >> (DIGIT_BITS * d)) & ((1 << DIGIT_BITS) - 1) for d in range(n_digits)]).astype(np.uint8)


def _matmul_integer_session(wt_int8: np.ndarray, offset_rows: np.ndarray, n_digits: int):
    """A one-thread onnxruntime session for A (uint8 [digits * n, K]: n activations' 7-bit digits, digit
    by digit) and B (the int8 constant [K, out]): P = A @ B (int32, exact), then in int64
    Y = sum_i 128^i P[i] - offset_rows, as [n, out]. onnxruntime packs B once when the session is created."""
    from onnx import TensorProto, helper, numpy_helper

    ort = _onnxruntime()
    k, out = wt_int8.shape
    nodes = [
        helper.make_node("MatMulInteger", ["A", "B"], ["P"]),  # int32 [digits * n, out]
        helper.make_node("Cast", ["P"], ["P64"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["P64", "digit_rows"], ["PD"]),  # [digits, n * out]
        helper.make_node("MatMul", ["powers", "PD"], ["S"]),  # [1, n * out]: sum_i 128^i P[i]
        helper.make_node("Reshape", ["S", "row_shape"], ["SR"]),  # [n, out]
        helper.make_node("Sub", ["SR", "offsets"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes, "exact_linear",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, ["rows", k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT64, ["n", out])],
        [numpy_helper.from_array(wt_int8, "B"),
         numpy_helper.from_array(np.array([n_digits, -1], np.int64), "digit_rows"),
         numpy_helper.from_array((1 << DIGIT_BITS * np.arange(n_digits, dtype=np.int64))[None], "powers"),
         numpy_helper.from_array(np.array([-1, out], np.int64), "row_shape"),
         numpy_helper.from_array(offset_rows.reshape(1, out).astype(np.int64), "offsets")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # GEMV is bound by memory traffic; the caller owns any parallelism
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


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
