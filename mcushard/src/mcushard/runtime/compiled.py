"""The integer decode steps compiled with numba: the same arithmetic as `runtime.int8`, one call per step.

A decode step of one chip works on vectors of a few hundred elements, where numpy's fixed cost per
call (about 1 us) dominates: a chip's layer takes ~110 numpy calls. These kernels do each step as one
compiled loop, as an MCU's C kernel would, with the operations of the numpy reference in the same
order: integer arithmetic is exact either way, and every float step (int64 -> float64 conversion,
one multiply by a precomputed ratio, the ratio times a dynamic scale, round half to even) is a single
IEEE operation with no fused multiply-add (numba's default: no fast-math), so the results are equal
bit for bit. `tests/test_compiled.py` checks each kernel against the numpy reference.

Used by `runtime.int8` and `runtime.kernels` unless numba is missing or the environment sets
MCUSHARD_KERNELS=numpy; then everything runs on numpy.
"""

from __future__ import annotations

import math
import os

import numpy as np

try:
    import numba
except ImportError:  # the numpy reference runs instead
    numba = None

ENABLED = numba is not None and os.environ.get("MCUSHARD_KERNELS", "compiled") != "numpy"


def _jit(fn):
    return numba.njit(cache=True, boundscheck=False, nogil=True)(fn) if numba is not None else fn


@_jit
def _requant(a, ratio, q):
    """clip(rint(a * ratio), -q, q) as int64 for one integer accumulator a (`int8.requantize`'s step;
    a caller with a dynamic scale passes ratio * scale, that product rounded first as in numpy)."""
    return np.int64(min(max(np.rint(np.float64(a) * ratio), -q), q))


@_jit
def _rotate(rot_p, x0, x1, half, frac, q):
    """One RoPE pair (x0, x1) rotated by rot_p [2, 2] (Q`frac`), rounded and clipped to +-q."""
    a = (rot_p[0, 0] * x0 + rot_p[0, 1] * x1 + half) >> frac
    b = (rot_p[1, 0] * x0 + rot_p[1, 1] * x1 + half) >> frac
    return min(max(a, -q), q), min(max(b, -q), q)


@_jit
def gemv(wt, x, acc, y):
    """y = W @ x for W given transposed, wt int8 [K, out], and an integer x [K]: the rows of wt scaled
    by x[j] are added into acc [out] (int32 when every partial sum fits, which the caller checks:
    K * max|w| * max|x| < 2^31; else int64), then copied to y (int64 [out])."""
    k, out = wt.shape
    acc[:] = 0
    for j in range(k):
        xj = acc.dtype.type(x[j])
        for o in range(out):
            acc[o] += acc.dtype.type(wt[j, o]) * xj
    for o in range(out):
        y[o] = acc[o]


@_jit
def rmsnorm_int(x, gain, eps_units, q, y):
    """`int8.rmsnorm_int` into y (int64 [dim]); returns the output scale (1.0 for a zero vector)."""
    n = x.shape[0]
    ss = np.int64(0)
    for i in range(n):
        ss += x[i] * x[i]
    s = ss // n + eps_units
    r = np.int64(math.sqrt(np.float64(s)))  # s < 2^53: exact in float64, r off by at most one
    while r * r > s:
        r -= 1
    while (r + 1) * (r + 1) <= s:
        r += 1
    rms = max(r, 1)
    peak = np.int64(0)
    for i in range(n):
        y[i] = x[i] * np.int64(gain[i])
        peak = max(peak, abs(y[i]))
    if peak == 0:
        return 1.0
    for i in range(n):
        y[i] = (y[i] * (2 * q) + peak) // (2 * peak)
    return np.float64(peak) / np.float64(rms * q)  # both exact in float64: the correctly rounded quotient


@_jit
def requantize_scaled(acc, ratio, scale, q, out):
    """out = clip(rint(acc * (ratio * scale)), -q, q): `int8.requantize(acc, ratio * scale, bits)`."""
    for i in range(acc.shape[0]):
        out[i] = _requant(acc[i], ratio[i] * scale, q)


@_jit
def residual_add(x, psum, ratio, limit, out):
    """`int8.residual_add`: out = clip(x + rint(psum * ratio), -limit, limit)."""
    for i in range(x.shape[0]):
        v = np.int64(np.rint(np.float64(psum[i]) * ratio[i])) + x[i]
        out[i] = min(max(v, -limit), limit)


@_jit
def residual_rmsnorm(x, psum, ratio, limit, gain, eps_units, q, x_out, y):
    """`residual_add(x, psum, ratio)` into x_out, then `rmsnorm_int` of it into y; returns the scale."""
    residual_add(x, psum, ratio, limit, x_out)
    return rmsnorm_int(x_out, gain, eps_units, q, y)


@_jit
def rope_rotate(x, rot, frac, q, out):
    """`int8.rope_rotate` of rows x [rows, hd] with rot [hd/2, 2, 2] (Q`frac`) into out [rows, hd]."""
    half = np.int64(1) << (frac - 1)
    for r in range(x.shape[0]):
        for p in range(rot.shape[0]):
            out[r, 2 * p], out[r, 2 * p + 1] = _rotate(rot[p], x[r, 2 * p], x[r, 2 * p + 1], half, frac, q)


@_jit
def qkv_rope_cache(acc, ratio, scale, q, rot, frac, n_q_rows, k_cache, v_cache, pos, q_out):
    """`int8.qkv_rope_cache`: requantise the q/k/v accumulators acc [(n_q_rows + 2 P) * dlen] with
    (ratio * scale), rotate the q and k rows by rot [dlen/2, 2, 2], write q_out [n_q_rows, dlen] and
    row `pos` of the caches [P, seq, dlen]."""
    n_p, dlen = k_cache.shape[0], k_cache.shape[2]
    half = np.int64(1) << (frac - 1)
    for r in range(n_q_rows + n_p):
        for p in range(dlen // 2):
            i = r * dlen + 2 * p
            x0, x1 = _requant(acc[i], ratio[i] * scale, q), _requant(acc[i + 1], ratio[i + 1] * scale, q)
            a, b = _rotate(rot[p], x0, x1, half, frac, q)
            if r < n_q_rows:
                q_out[r, 2 * p], q_out[r, 2 * p + 1] = a, b
            else:
                k_cache[r - n_q_rows, pos, 2 * p], k_cache[r - n_q_rows, pos, 2 * p + 1] = a, b
    base = (n_q_rows + n_p) * dlen
    for h in range(n_p):
        for d in range(dlen):
            i = base + h * dlen + d
            v_cache[h, pos, d] = _requant(acc[i], ratio[i] * scale, q)


@_jit
def attention_heads(q, k_cache, v_cache, t, log2_ratio, out_ratio, qmax_out, exp_table, exp_frac, prob_frac, out):
    """`int8.attention_heads` for positions [0, t): q int64 [n_kv, n_rep, hd], caches [n_kv, seq, hd]
    (integer values), log2_ratio / out_ratio [n_kv, n_rep, 1] -> out int64 [n_kv, n_rep, hd]."""
    n_kv, n_rep, hd = q.shape
    scores = np.empty(t, np.int64)
    e = np.empty(t, np.int64)
    mask = (np.int64(1) << exp_frac) - 1
    for h in range(n_kv):
        for r in range(n_rep):
            top = np.int64(-(2**62))
            for j in range(t):
                acc = np.int64(0)
                for d in range(hd):
                    acc += np.int64(k_cache[h, j, d]) * q[h, r, d]
                scores[j] = acc
                top = max(top, acc)
            total = np.int64(0)
            for j in range(t):
                dj = np.int64(np.rint(np.float64(top - scores[j]) * log2_ratio[h, r, 0]))
                shift = min(dj >> exp_frac, 62)
                e[j] = exp_table[dj & mask] >> shift
                total += e[j]
            for j in range(t):
                e[j] = ((e[j] << prob_frac) + total // 2) // total
            for d in range(hd):
                acc = np.int64(0)
                for j in range(t):
                    acc += e[j] * np.int64(v_cache[h, j, d])
                out[h, r, d] = _requant(acc, out_ratio[h, r, 0], qmax_out)


@_jit
def swiglu_columns(gate_acc, up_acc, gate_ratio, up_ratio, scale, gate_clip, table, steps, shifts, q, out):
    """`int8.swiglu_columns(gate_acc, up_acc, gate_ratio * scale, up_ratio * scale, bits)` into out [hc];
    shifts = (SILU_FRAC, SIG_STEP_SHIFT, SIG_FRAC, SIG_RANGE)."""
    silu_frac, step_shift, sig_frac, sig_range = shifts[0], shifts[1], shifts[2], shifts[3]
    hc = out.shape[0]
    top = sig_range << silu_frac
    for i in range(hc):
        x = _requant(gate_acc[i], gate_ratio[i] * scale, gate_clip)
        u = min(max(x, -top), top) + top
        idx = u >> step_shift
        f = steps[idx] * (u & ((np.int64(1) << step_shift) - 1))
        f = ((f + (np.int64(1) << (step_shift - 1))) >> step_shift) + table[idx]
        h = ((f * x + (np.int64(1) << (sig_frac - 1))) >> sig_frac) * up_acc[i]
        out[i] = _requant(h, up_ratio[i] * scale, q)


@_jit
def scaled_logits(acc, ratio, scale, out):
    """out = float32(acc * (ratio * scale)) (float64 products, rounded once to float32); returns the
    index of the first largest logit (np.argmax's choice)."""
    best = 0
    for i in range(acc.shape[0]):
        out[i] = np.float32(np.float64(acc[i]) * (ratio[i] * scale))
        if out[i] > out[best]:
            best = i
    return best
