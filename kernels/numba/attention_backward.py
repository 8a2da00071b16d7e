"""Blocked attention backward on the CPU.

One work item per (batch, key/value head): it owns dK and dV of that head and dQ of its group of
query heads, so no two threads write one element. For each block of queries the probabilities
P = exp(S - m) / l are recomputed from the forward's saved (m, 1/l), key chunk by key chunk, with
the same mask table and causal limits as the forward (hidden blocks are never computed), and kept,
with dP = dO V^T, in two per-thread buffers that span every key. The softmax term
delta_i = sum_j P_ij dP_ij is then summed from those very values (in float64), not from dO . O:
when the softmax saturates (P one-hot), dP_ij - delta_i is then exactly 0 at the winning key as in
torch's reference, instead of the difference of two differently rounded dot products, which the
query gradient would multiply by |K| (~1000x torch's float32 error on saturated inputs).

Five GEMMs per chunk as in the forward-recompute scheme: S^T = K Q^T, dP^T = V dO^T and
dV += P^T dO in the first sweep; dK += dS^T Q and dQ += dS K in the second, on the buffers.
"""
import numba
import numpy as np
from numba import prange

from dlkern.kernels.numba._jit import blas_set_local_threads, gemm, jit, jit_parallel
from dlkern.kernels.numba.attention import (
    SKIP_K, _exp32, _keep_factor, _key_limits, _next_chunk, _scores_t)


@jit
def _probabilities(st, nk, nq, shift, inv_l):
    """st[j, i] = exp(st[j, i] - shift[i]) * inv_l[i] for j < nk, i < nq, in place."""
    for jj in range(nk):
        row = st[jj]
        if st.itemsize == 4:
            for ii in range(nq):
                row[ii] = _exp32(row[ii] - shift[ii]) * inv_l[ii]
        else:
            for ii in range(nq):
                row[ii] = np.exp(row[ii] - shift[ii]) * inv_l[ii]


@jit_parallel
def attention_backward(q, k, v, mask, keep, table, key_stop, strides, dims, mask_kind, causal,
                       scale, dropout_p, seed, grad_out, stats, grad_q, grad_k, grad_v, grad_mask,
                       want_grad_mask, p_scratch, dp_scratch, pz_scratch, row_scratch, delta_scratch):
    """Arrays as in attention.attention_forward (q, k, v, mask, keep, table, key_stop, strides,
    dims, stats);
    grad_out (B, Hq, Lq, Dv) contiguous; grad_q (B, Hq, Lq, D), grad_k (B, Hk, Lk, D),
    grad_v (B, Hk, Lk, Dv) contiguous, written entirely; grad_mask (B, Hq, Lq, Lk) contiguous and
    zero-filled by the caller, written where want_grad_mask.
    Scratch per thread t: p_scratch[t], dp_scratch[t] (nkb * SKIP_K, BQ) (BQ the query block,
    the forward's), pz_scratch[t] (SKIP_K * (BLOCK_K // SKIP_K), BQ) when dropout_p > 0,
    row_scratch[t] (2, BQ) q's dtype, delta_scratch[t] (BQ,) float64.
    """
    nb, hq, nhk, lq, lk, d, dv = dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]
    off = dims[7]
    block_q = p_scratch.shape[2]
    group = hq // nhk
    isz = q.itemsize
    is_double = isz == 8
    nqb = (lq + block_q - 1) // block_q
    nkb = (lk + SKIP_K - 1) // SKIP_K
    inv_keep = 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0
    qs = strides[0]
    ks = strides[1]
    vs = strides[2]
    for item in prange(nb * nhk):
        blas_set_local_threads(1)
        tid = numba.get_thread_id()
        p_all = p_scratch[tid]
        dp_all = dp_scratch[tid]
        pz = pz_scratch[tid]
        shift = row_scratch[tid, 0]
        inv_l = row_scratch[tid, 1]
        delta = delta_scratch[tid]
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
                q0 = qb * block_q
                nq = min(block_q, lq - q0)
                q_last = q0 + nq - 1
                grad_q[b, h, q0:q0 + nq, :] = 0.0
                for ii in range(nq):
                    shift[ii] = stats[b, h, 0, q0 + ii]
                    inv_l[ii] = stats[b, h, 1, q0 + ii]
                delta[:] = 0.0
                kb_stop, lk_stop = _key_limits(q_last, off, lk, causal, key_stop, strides[5], b,
                                               h, qb, mask_kind)
                # sweep 1: P and dP of every live chunk into the buffers; dV; delta
                kb = 0
                while True:
                    kb, kb_end = _next_chunk(kb, nkb, kb_stop, table, strides[4], b, h, qb,
                                             mask_kind)
                    if kb >= kb_stop:
                        break
                    j0 = kb * SKIP_K
                    nk = min(kb_end * SKIP_K, lk_stop) - j0
                    kb = kb_end
                    st = p_all[j0:j0 + nk]
                    dp = dp_all[j0:j0 + nk]
                    _scores_t(st, q, k, mask, keep, table, strides, d, mask_kind, causal, off, b,
                              h, hk, qb, q0, nq, j0, nk, scale)
                    _probabilities(st, nk, nq, shift, inv_l)
                    # dP^T = V dO^T (transposed: dp[key, query])
                    gemm(is_double, 0, 1, nk, nq, dv, 1.0, va + j0 * vs[2] * isz, vs[2],
                         doa + q0 * dv * isz, dv, 0.0, dp.ctypes.data, dp.shape[1])
                    p_used = st
                    if dropout_p > 0.0:
                        p_used = pz
                        base = (b * hq + h) * lq + q0
                        for jj in range(nk):
                            for ii in range(nq):
                                z = _keep_factor(seed, base + ii, j0 + jj, dropout_p, inv_keep)
                                pz[jj, ii] = st[jj, ii] * z
                                dp[jj, ii] *= z
                    # dV += P_dropped^T dO
                    gemm(is_double, 0, 0, nk, dv, nq, 1.0, p_used.ctypes.data, p_used.shape[1],
                         doa + q0 * dv * isz, dv, 1.0, dva + j0 * dv * isz, dv)
                    for jj in range(nk):
                        prow = st[jj]
                        dprow = dp[jj]
                        for ii in range(nq):
                            delta[ii] += np.float64(prow[ii]) * np.float64(dprow[ii])
                # sweep 2: dS = P (dP - delta) in place of dP; dK, dQ
                kb = 0
                while True:
                    kb, kb_end = _next_chunk(kb, nkb, kb_stop, table, strides[4], b, h, qb,
                                             mask_kind)
                    if kb >= kb_stop:
                        break
                    j0 = kb * SKIP_K
                    nk = min(kb_end * SKIP_K, lk_stop) - j0
                    kb = kb_end
                    st = p_all[j0:j0 + nk]
                    ds = dp_all[j0:j0 + nk]
                    for jj in range(nk):
                        prow = st[jj]
                        dsrow = ds[jj]
                        for ii in range(nq):
                            dsrow[ii] = prow[ii] * (dsrow[ii] - delta[ii])
                    if want_grad_mask:
                        for jj in range(nk):
                            for ii in range(nq):
                                grad_mask[b, h, q0 + ii, j0 + jj] = ds[jj, ii]
                    # dK += scale dS^T Q; dQ += scale dS K
                    gemm(is_double, 0, 0, nk, d, nq, scale, ds.ctypes.data, ds.shape[1],
                         qa + q0 * qs[2] * isz, qs[2], 1.0, dka + j0 * d * isz, d)
                    gemm(is_double, 1, 0, nq, d, nk, scale, ds.ctypes.data, ds.shape[1],
                         ka + j0 * ks[2] * isz, ks[2], 1.0, dqa + q0 * d * isz, d)
        blas_set_local_threads(0)
