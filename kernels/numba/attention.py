"""Masked softmax and blocked (flash-style) attention on the CPU, forward and backward.

Scores are held transposed, ``S^T[key, query]``, in a per-thread block of at most BLOCK_K x BLOCK_Q
elements: the per-query reductions of the softmax (running max, running sum, the backward's row
terms) then run down the columns of that block, elementwise across a contiguous row of queries,
which LLVM vectorises without reassociating any sum (fastmath stays off). The L x L score matrix
is never formed; extra memory is a few blocks per thread.

Keys are visited in SKIP_K-wide blocks; a block that no query of the current query block may see
(above the causal diagonal, or every key padded away, from the ``skip`` table built by the caller)
is never computed. Runs of consecutive live blocks, up to BLOCK_K keys, form one chunk: two GEMMs
per chunk (S^T = K Q^T, then O += P^T^T V) with an online softmax between them.

Dropout keeps an element with probability 1 - p, decided by a hash of (seed, batch*head, query,
key), so the backward regenerates the forward's mask without storing it; the seed is drawn from
torch's generator by the caller.

float32 uses a vectorisable exp (Cephes-style polynomial, scaled by 2^n built from its exponent
bits, within 2 ulp); float64 uses the libm exp.
"""
import math

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from dlkern.kernels.numba._jit import blas_set_local_threads, gemm, jit, jit_parallel


@intrinsic
def _bits_as_float32(typingctx, bits):
    """The float32 whose bit pattern is the int32 ``bits`` (a register bitcast, no memory)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


BLOCK_Q = 64
BLOCK_K = 512
SKIP_K = 64
LANES = 16

_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)
_LO = np.float32(-87.0)
_HI = np.float32(88.0)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)


@jit
def _exp32(t):
    """exp(t) for a float32 t, branch-free so that loops calling it vectorise."""
    c = min(max(t, _LO), _HI)
    fx = np.floor(c * _LOG2E + _HALF)
    r = c - fx * _LN2_HI - fx * _LN2_LO
    y = (((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5) * (r * r) + r + _ONE
    y = y * _bits_as_float32((np.int32(fx) + np.int32(127)) << np.int32(23))
    y = y if t >= _LO else _ZERO
    return t if t != t else y


@jit
def _exp_row(x, shift, n, row_sum):
    """x[i] = exp(x[i] - shift[i]) and row_sum[i] += x[i], for i < n (1-d arrays, one dtype).

    exp(-inf) = 0 and NaN stays NaN.
    """
    if x.itemsize != 4:
        for i in range(n):
            y = math.exp(x[i] - shift[i])
            x[i] = y
            row_sum[i] += y
        return
    for i in range(n):
        y = _exp32(x[i] - shift[i])
        x[i] = y
        row_sum[i] += y


@jit
def _keep_factor(seed, row, col, p, inv_keep):
    """The dropout factor of element (row, col): 0 (dropped, probability p) or 1 / (1 - p)."""
    z = np.uint64(seed) ^ (np.uint64(row) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(col)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    u = np.float64(z >> np.uint64(40)) * (1.0 / 16777216.0)
    return inv_keep if u >= p else 0.0


@jit
def dropout_keep(seed, rows, cols, p):
    """The dropout factors the kernels use, (rows, cols) float64: row (b*H + h)*Lq + i, col j."""
    out = np.empty((rows, cols))
    inv_keep = 1.0 / (1.0 - p) if p < 1.0 else 0.0
    for r in range(rows):
        for c in range(cols):
            out[r, c] = _keep_factor(seed, r, c, p, inv_keep)
    return out


@jit
def _next_chunk(kb, nkb, q_last, causal, skip, sst, b, h, qb, has_skip):
    """First live key block >= kb and the end of its run: (start block, end block), start = nkb if
    none. skip is read at b*sst[0] + h*sst[1] + qb*sst[2] + kb*sst[3]."""
    per_chunk = BLOCK_K // SKIP_K
    row = b * sst[0] + h * sst[1] + qb * sst[2]
    while kb < nkb:
        if causal and kb * SKIP_K > q_last:
            return nkb, nkb
        if has_skip and skip[row + kb * sst[3]] == 0:
            kb += 1
            continue
        end = kb + 1
        while end < nkb and end - kb < per_chunk:
            if causal and end * SKIP_K > q_last:
                break
            if has_skip and skip[row + end * sst[3]] == 0:
                break
            end += 1
        return kb, end
    return nkb, nkb


@jit
def _scores_t(st, q, k, mask, strides, d, has_mask, causal, b, h, hk, q0, nq, j0, nk, scale):
    """st[:nk, :nq] = scale * K[j0:j0+nk] Q[q0:q0+nq]^T (+ mask^T), causal entries set to -inf.

    q, k, mask: flat arrays read with the element strides strides[0], [1], [3] (see
    attention_forward); d the head dimension.
    """
    isz = q.itemsize
    qs = strides[0]
    ks = strides[1]
    ms = strides[3]
    qa = q.ctypes.data + (b * qs[0] + h * qs[1] + q0 * qs[2]) * isz
    ka = k.ctypes.data + (b * ks[0] + hk * ks[1] + j0 * ks[2]) * isz
    gemm(isz == 8, 0, 1, nk, nq, d, scale, ka, ks[2], qa, qs[2], 0.0, st.ctypes.data,
          st.shape[1])
    if has_mask:
        base = b * ms[0] + h * ms[1] + q0 * ms[2]
        for jj in range(nk):
            at = base + (j0 + jj) * ms[3]
            if ms[2] != 0:
                for ii in range(nq):
                    st[jj, ii] += mask[at + ii * ms[2]]
            else:
                bias = mask[at]
                for ii in range(nq):
                    st[jj, ii] += bias
    if causal:
        for jj in range(nk):
            for ii in range(min(nq, j0 + jj - q0)):
                st[jj, ii] = -np.inf


@jit_parallel
def attention_forward(q, k, v, mask, skip, strides, dims, has_mask, has_skip, causal, scale,
                      dropout_p, seed, out, lse, st_scratch, acc_scratch, row_scratch):
    """Blocked attention forward.

    Every input is a flat array read with its element strides, strides (5, 4) int64, one row per
    input (so one compiled kernel serves every layout):
    q (B, Hq, Lq, D), k (B, Hk, Lk, D), v (B, Hk, Lk, Dv): rows contiguous (stride 1 on the last
    axis), any other strides; Hq = group * Hk, query head h reads key/value head h // group.
    mask (B, Hq, Lq, Lk) additive float bias, any strides (0 where broadcast), read if has_mask.
    skip (B, Hq, nqb, nkb) uint8, 0 = no key of SKIP_K-block kb is visible to any query of
    BLOCK_Q-block qb (any strides), read if has_skip.
    dims = (B, Hq, Hk, Lq, Lk, D, Dv).
    out (B, Hq, Lq, Dv) and lse (B, Hq, Lq) contiguous, written (lse = -inf on fully masked rows,
    whose output is 0). Scratch, per thread t: st_scratch[t] (BLOCK_K, BLOCK_Q),
    acc_scratch[t] (BLOCK_Q, Dv), row_scratch[t] (4, BLOCK_Q).
    """
    nb, hq, nhk, lq, lk, d, dv = dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]
    group = hq // nhk
    isz = q.itemsize
    vs = strides[2]
    nqb = (lq + BLOCK_Q - 1) // BLOCK_Q
    nkb = (lk + SKIP_K - 1) // SKIP_K
    inv_keep = 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0
    for item in prange(nb * hq * nqb):
        blas_set_local_threads(1)
        tid = numba.get_thread_id()
        st = st_scratch[tid]
        acc = acc_scratch[tid]
        m_run = row_scratch[tid, 0]
        l_run = row_scratch[tid, 1]
        m_use = row_scratch[tid, 2]
        cmax = row_scratch[tid, 3]
        b = item // (hq * nqb)
        h = (item // nqb) % hq
        qb = item % nqb
        hk = h // group
        q0 = qb * BLOCK_Q
        nq = min(BLOCK_Q, lq - q0)
        q_last = q0 + nq - 1
        acc[:nq, :] = 0.0
        m_run[:] = -np.inf
        l_run[:] = 0.0
        va = v.ctypes.data + (b * vs[0] + hk * vs[1]) * isz
        kb = 0
        while True:
            kb, kb_end = _next_chunk(kb, nkb, q_last, causal, skip, strides[4], b, h, qb,
                                     has_skip)
            if kb >= nkb:
                break
            j0 = kb * SKIP_K
            nk = min(kb_end * SKIP_K, lk) - j0
            if causal:
                nk = min(nk, q_last + 1 - j0)
            kb = kb_end
            _scores_t(st, q, k, mask, strides, d, has_mask, causal, b, h, hk, q0, nq, j0, nk,
                      scale)
            cmax[:nq] = -np.inf
            for jj in range(nk):
                for ii in range(nq):
                    x = st[jj, ii]
                    cmax[ii] = x if x > cmax[ii] else cmax[ii]
            for ii in range(nq):
                m_new = max(m_run[ii], cmax[ii])
                mu = m_new if m_new > -np.inf else 0.0
                alpha = math.exp(m_run[ii] - mu)
                m_run[ii] = m_new
                m_use[ii] = mu
                l_run[ii] *= alpha
                for c in range(dv):
                    acc[ii, c] *= alpha
            for jj in range(nk):
                row = st[jj]
                _exp_row(row, m_use, nq, l_run)
                if dropout_p > 0.0:
                    base = (b * hq + h) * lq + q0
                    for ii in range(nq):
                        row[ii] *= _keep_factor(seed, base + ii, j0 + jj, dropout_p, inv_keep)
            gemm(isz == 8, 1, 0, nq, dv, nk, 1.0, st.ctypes.data, st.shape[1],
                  va + j0 * vs[2] * isz, vs[2], 1.0, acc.ctypes.data, dv)
        for ii in range(nq):
            l = l_run[ii]
            inv = 1.0 / l if l > 0.0 else 0.0
            for c in range(dv):
                out[b, h, q0 + ii, c] = acc[ii, c] * inv
            lse[b, h, q0 + ii] = m_use[ii] + math.log(l) if l > 0.0 else -np.inf
        blas_set_local_threads(0)


@jit_parallel
def attention_backward(q, k, v, mask, skip, strides, dims, has_mask, has_skip, causal, scale,
                       dropout_p, seed, out, grad_out, lse, grad_q, grad_k, grad_v, grad_mask,
                       want_grad_mask, st_scratch, dp_scratch, pd_scratch, row_scratch):
    """Blocked attention backward, recomputing each score block from the saved log-sum-exp.

    Arrays as in attention_forward; out and grad_out (B, Hq, Lq, Dv) contiguous;
    grad_q (B, Hq, Lq, D), grad_k (B, Hk, Lk, D), grad_v (B, Hk, Lk, Dv) contiguous, written
    entirely; grad_mask (B, Hq, Lq, Lk) contiguous and zero-filled by the caller, written where
    want_grad_mask. One work item per (batch, key/value head): it owns grad_k and grad_v of that
    head and grad_q of its group of query heads, so no two threads write one element.
    Scratch per thread t: st/dp/pd_scratch[t] (BLOCK_K, BLOCK_Q), row_scratch[t] (3, BLOCK_Q).
    """
    nb, hq, nhk, lq, lk, d, dv = dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]
    group = hq // nhk
    isz = q.itemsize
    is_double = isz == 8
    nqb = (lq + BLOCK_Q - 1) // BLOCK_Q
    nkb = (lk + SKIP_K - 1) // SKIP_K
    inv_keep = 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0
    qs = strides[0]
    ks = strides[1]
    vs = strides[2]
    for item in prange(nb * nhk):
        blas_set_local_threads(1)
        tid = numba.get_thread_id()
        st = st_scratch[tid]
        dp = dp_scratch[tid]
        pd = pd_scratch[tid]
        shift = row_scratch[tid, 0]
        delta = row_scratch[tid, 1]
        unused = row_scratch[tid, 2]
        b = item // nhk
        hk = item % nhk
        grad_k[b, hk] = 0.0
        grad_v[b, hk] = 0.0
        ka = k.ctypes.data + (b * ks[0] + hk * ks[1]) * isz
        va = v.ctypes.data + (b * vs[0] + hk * vs[1]) * isz
        dka = grad_k.ctypes.data + (b * nhk + hk) * lk * d * isz
        dva = grad_v.ctypes.data + (b * nhk + hk) * lk * dv * isz
        for h in range(hk * group, (hk + 1) * group):
            qa = q.ctypes.data + (b * qs[0] + h * qs[1]) * isz
            doa = grad_out.ctypes.data + (b * hq + h) * lq * dv * isz
            dqa = grad_q.ctypes.data + (b * hq + h) * lq * d * isz
            for qb in range(nqb):
                q0 = qb * BLOCK_Q
                nq = min(BLOCK_Q, lq - q0)
                q_last = q0 + nq - 1
                grad_q[b, h, q0:q0 + nq, :] = 0.0
                for ii in range(nq):
                    s = 0.0
                    for c in range(dv):
                        s += grad_out[b, h, q0 + ii, c] * out[b, h, q0 + ii, c]
                    delta[ii] = s
                    x = lse[b, h, q0 + ii]
                    shift[ii] = x if x > -np.inf else np.inf
                kb = 0
                while True:
                    kb, kb_end = _next_chunk(kb, nkb, q_last, causal, skip, strides[4], b, h,
                                             qb, has_skip)
                    if kb >= nkb:
                        break
                    j0 = kb * SKIP_K
                    nk = min(kb_end * SKIP_K, lk) - j0
                    if causal:
                        nk = min(nk, q_last + 1 - j0)
                    kb = kb_end
                    _scores_t(st, q, k, mask, strides, d, has_mask, causal, b, h, hk, q0, nq, j0,
                              nk, scale)
                    for jj in range(nk):
                        _exp_row(st[jj], shift, nq, unused)
                    p_used = st
                    if dropout_p > 0.0:
                        base = (b * hq + h) * lq + q0
                        for jj in range(nk):
                            for ii in range(nq):
                                pd[jj, ii] = st[jj, ii] * _keep_factor(
                                    seed, base + ii, j0 + jj, dropout_p, inv_keep)
                        p_used = pd
                    # dV += P_dropped^T dO; dP = V dO^T (transposed: dp[key, query])
                    gemm(is_double, 0, 0, nk, dv, nq, 1.0, p_used.ctypes.data, p_used.shape[1],
                          doa + q0 * dv * isz, dv, 1.0, dva + j0 * dv * isz, dv)
                    gemm(is_double, 0, 1, nk, nq, dv, 1.0, va + j0 * vs[2] * isz, vs[2],
                          doa + q0 * dv * isz, dv, 0.0, dp.ctypes.data, dp.shape[1])
                    if dropout_p > 0.0:
                        base = (b * hq + h) * lq + q0
                        for jj in range(nk):
                            for ii in range(nq):
                                dp[jj, ii] *= _keep_factor(seed, base + ii, j0 + jj, dropout_p,
                                                           inv_keep)
                    for jj in range(nk):
                        for ii in range(nq):
                            dp[jj, ii] = st[jj, ii] * (dp[jj, ii] - delta[ii])
                    if want_grad_mask:
                        for jj in range(nk):
                            for ii in range(nq):
                                grad_mask[b, h, q0 + ii, j0 + jj] = dp[jj, ii]
                    # dK += scale dS^T Q; dQ += scale dS K
                    gemm(is_double, 0, 0, nk, d, nq, scale, dp.ctypes.data, dp.shape[1],
                          qa + q0 * qs[2] * isz, qs[2], 1.0, dka + j0 * d * isz, d)
                    gemm(is_double, 1, 0, nq, d, nk, scale, dp.ctypes.data, dp.shape[1],
                          ka + j0 * ks[2] * isz, ks[2], 1.0, dqa + q0 * d * isz, d)
        blas_set_local_threads(0)


@jit
def _row_max(x, keep, has_mask, n, lanes):
    """max of x[j], j < n, over the j with keep[j] != 0 (all j without a mask); -inf if none.

    Sixteen running maxima, one per lane: scalar, but with no chain of dependent comparisons.
    """
    lanes[:] = -np.inf
    n16 = n - n % LANES
    if has_mask:
        for j0 in range(0, n16, LANES):
            for t in range(LANES):
                v = x[j0 + t] if keep[j0 + t] != 0 else -np.inf
                lanes[t] = v if v > lanes[t] else lanes[t]
    else:
        for j0 in range(0, n16, LANES):
            for t in range(LANES):
                v = x[j0 + t]
                lanes[t] = v if v > lanes[t] else lanes[t]
    for j in range(n16, n):
        v = x[j]
        if has_mask:
            v = v if keep[j] != 0 else -np.inf
        lanes[0] = v if v > lanes[0] else lanes[0]
    m = lanes[0]
    for t in range(1, LANES):
        m = lanes[t] if lanes[t] > m else m
    return m


@jit
def _lane_sum(y, n, lanes):
    lanes[:] = 0.0
    n16 = n - n % LANES
    for j0 in range(0, n16, LANES):
        for t in range(LANES):
            lanes[t] += y[j0 + t]
    s = 0.0
    for j in range(n16, n):
        s += y[j]
    for t in range(LANES):
        s += lanes[t]
    return s


@jit
def _softmax_row(x, y, keep, has_mask, lanes):
    """y = softmax of x over the entries keep[j] != 0 (every entry without a mask); zeros if none.

    x, y (N,) one dtype; keep (N,) uint8, contiguous (indexed by the loop counter alone, so the
    loads vectorise). Masked entries become -inf in y first: exp then gives them 0 with no mask.
    """
    n = x.shape[0]
    if has_mask:
        for j in range(n):
            y[j] = x[j] if keep[j] != 0 else -np.inf
        m = _row_max(y, keep, False, n, lanes)
        if m == -np.inf:
            y[:] = 0.0
            return
    else:
        y[:] = x
        m = _row_max(y, keep, False, n, lanes)
    if x.itemsize == 4:
        for j in range(n):
            y[j] = _exp32(y[j] - m)
    else:
        for j in range(n):
            y[j] = math.exp(y[j] - m)
    inv = 1.0 / _lane_sum(y, n, lanes)
    for j in range(n):
        y[j] *= inv


@jit_parallel
def masked_softmax_forward(x, mask, mask_row_offset, mask_col_stride, has_mask, out, lane_scratch,
                           mask_scratch):
    """Softmax of each row of x (R, N) over the entries its mask keeps; out (R, N) contiguous.

    mask: flat uint8 (1 = keep) read at mask_row_offset[r] + j * mask_col_stride, if has_mask.
    A row with nothing kept is all zeros. Scratch per thread t: lane_scratch[t] (LANES,) x's dtype,
    mask_scratch[t] (N,) uint8 (a contiguous copy of a row's mask when mask_col_stride != 1).
    """
    rows, n = x.shape
    for r in prange(rows):
        tid = numba.get_thread_id()
        lanes = lane_scratch[tid]
        if not has_mask:
            _softmax_row(x[r], out[r], mask, False, lanes)
            continue
        moff = mask_row_offset[r]
        if mask_col_stride == 1:
            _softmax_row(x[r], out[r], mask[moff:moff + n], True, lanes)
        elif mask_col_stride == 0:
            if mask[moff] != 0:
                _softmax_row(x[r], out[r], mask, False, lanes)
            else:
                out[r, :] = 0.0
        else:
            row_mask = mask_scratch[tid]
            for j in range(n):
                row_mask[j] = mask[moff + j * mask_col_stride]
            _softmax_row(x[r], out[r], row_mask, True, lanes)


@jit_parallel
def masked_softmax_backward(y, grad_y, grad_x, lane_scratch, product_scratch):
    """grad_x = y * (grad_y - sum(grad_y * y)) per row; y, grad_y, grad_x (R, N) contiguous.

    Masked entries have y = 0, so their gradient is 0 with no mask needed. Scratch per thread t:
    lane_scratch[t] (LANES,), product_scratch[t] (N,), y's dtype.
    """
    rows, n = y.shape
    for r in prange(rows):
        tid = numba.get_thread_id()
        prod = product_scratch[tid]
        for j in range(n):
            prod[j] = grad_y[r, j] * y[r, j]
        s = _lane_sum(prod, n, lane_scratch[tid])
        for j in range(n):
            grad_x[r, j] = y[r, j] * (grad_y[r, j] - s)
