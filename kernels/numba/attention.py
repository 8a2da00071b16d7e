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


BLOCK_K = 512  # most keys per chunk (rows of the score block)
SKIP_K = 64    # keys per block of the mask table

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


# How the mask is given (the mask_kind argument)
MASK_NONE = 0  # no mask (no table either)
MASK_BIAS = 1  # an additive float bias (the ``mask`` array)
MASK_KEEP = 2  # a bool mask, 1 = attend (the ``keep`` array, uint8)

# Block states of the mask table (one entry per BLOCK_Q x SKIP_K block of queries x keys)
HIDDEN = 0   # every score of the block is masked out: the block is never computed
VISIBLE = 1  # no score of the block is changed by the mask: computed without reading the mask
PARTIAL = 2  # the mask is added to the block's scores


@jit
def _state(table, tst, b, h, qb, kb, mask_kind):
    if mask_kind == MASK_NONE:
        return VISIBLE
    return table[b * tst[0] + h * tst[1] + qb * tst[2] + kb * tst[3]]


@jit
def _next_chunk(kb, nkb, kb_stop, table, tst, b, h, qb, mask_kind):
    """First block >= kb that is not HIDDEN and the end of its run of such blocks (at most
    BLOCK_K keys, never past kb_stop): (start block, end block); start = kb_stop when none."""
    per_chunk = BLOCK_K // SKIP_K
    while kb < kb_stop:
        if _state(table, tst, b, h, qb, kb, mask_kind) == HIDDEN:
            kb += 1
            continue
        end = kb + 1
        while (end < kb_stop and end - kb < per_chunk
               and _state(table, tst, b, h, qb, end, mask_kind) != HIDDEN):
            end += 1
        return kb, end
    return kb_stop, kb_stop


@jit
def _key_limits(q_last, off, lk, causal, key_stop, kst, b, h, qb, mask_kind):
    """(one past the last key block, one past the last key) any query of block qb may see."""
    stop = lk
    if mask_kind != MASK_NONE:
        stop = min(stop, key_stop[b * kst[0] + h * kst[1] + qb * kst[2]])
    if causal:
        stop = min(stop, max(q_last + off + 1, 0))
    return (stop + SKIP_K - 1) // SKIP_K, stop


@jit
def _scores_t(st, q, k, mask, keep, table, strides, d, mask_kind, causal, off, b, h, hk, qb, q0,
              nq, j0, nk, scale):
    """st[:nk, :nq] = scale * K[j0:j0+nk] Q[q0:q0+nq]^T, plus mask^T (or -inf where keep is 0) on
    PARTIAL blocks, causal entries (key > query + off) set to -inf.

    q, k, mask, keep: flat arrays read with the element strides strides[0], [1], [3] (see
    attention_forward); d the head dimension; j0 a multiple of SKIP_K.
    """
    isz = q.itemsize
    qs = strides[0]
    ks = strides[1]
    ms = strides[3]
    qa = q.ctypes.data + (b * qs[0] + h * qs[1] + q0 * qs[2]) * isz
    ka = k.ctypes.data + (b * ks[0] + hk * ks[1] + j0 * ks[2]) * isz
    gemm(isz == 8, 0, 1, nk, nq, d, scale, ka, ks[2], qa, qs[2], 0.0, st.ctypes.data,
         st.shape[1])
    if mask_kind != MASK_NONE:
        base = b * ms[0] + h * ms[1] + q0 * ms[2]
        for sub in range(0, nk, SKIP_K):
            if _state(table, strides[4], b, h, qb, (j0 + sub) // SKIP_K, mask_kind) != PARTIAL:
                continue
            for jj in range(sub, min(sub + SKIP_K, nk)):
                at = base + (j0 + jj) * ms[3]
                row = st[jj]
                if mask_kind == MASK_KEEP:
                    if ms[2] != 0:
                        for ii in range(nq):
                            if keep[at + ii * ms[2]] == 0:
                                row[ii] = -np.inf
                    elif keep[at] == 0:
                        row[:nq] = -np.inf
                elif ms[2] != 0:
                    for ii in range(nq):
                        row[ii] += mask[at + ii * ms[2]]
                else:
                    bias = mask[at]
                    for ii in range(nq):
                        row[ii] += bias
    if causal:
        for jj in range(nk):
            row = st[jj]
            for ii in range(max(0, min(nq, j0 + jj - q0 - off))):
                row[ii] = -np.inf


@jit
def _column_max(st, nk, nq, cmax):
    """cmax[i] = max over j < nk of st[j, i] (NaN entries ignored; -inf when none is finite)."""
    cmax[:nq] = -np.inf
    for jj in range(nk):
        for ii in range(nq):
            # this form vectorises (masked stores); "cmax[ii] = x if x > cmax[ii] else cmax[ii]"
            # stays scalar, 30x slower
            x = st[jj, ii]
            if x > cmax[ii]:
                cmax[ii] = x


@jit_parallel
def attention_forward(q, k, v, mask, keep, table, key_stop, strides, dims, mask_kind, causal,
                      scale, dropout_p, seed, nan_masked, out, stats, st_scratch, acc_scratch,
                      row_scratch):
    """Blocked attention forward.

    Every input is a flat array read with its element strides, strides (5, 4) int64, one row per
    input (so one compiled kernel serves every layout):
    q (B, Hq, Lq, D), k (B, Hk, Lk, D), v (B, Hk, Lk, Dv): rows contiguous (stride 1 on the last
    axis), any other strides; Hq = group * Hk, query head h reads key/value head h // group.
    The mask, (B, Hq, Lq, Lk) with any strides (0 where broadcast), is an additive float bias
    (``mask``, mask_kind MASK_BIAS) or a uint8 keep mask (``keep``, 1 = attend, MASK_KEEP), read
    only on PARTIAL blocks of table (B, Hq, nqb, nkb) uint8 (any strides; nqb query blocks of the
    scratch's width, nkb key blocks of SKIP_K); the unused one is a dummy array. key_stop
    (B, Hq, nqb) int64, any strides (strides[5]): no query of the block sees a key past it (the
    exact end of a key-padding mask, below the table's SKIP_K granularity).
    dims = (B, Hq, Hk, Lq, Lk, D, Dv, causal offset): with causal, query i sees key j <= i + offset.
    nan_masked: a row whose scores are all NaN or -inf gives zeros (torch's CPU kernel, short rows).
    out (B, Hq, Lq, Dv) and stats (B, Hq, 2, Lq) contiguous, written: stats[.., 0, i] the shift m
    and stats[.., 1, i] 1 / l of row i (p = exp(s - m) / l), +inf and 0 for a row that sees no key
    (its output is 0). Scratch, per thread t: st_scratch[t] (BLOCK_K, BQ), acc_scratch[t]
    (BQ, Dv), row_scratch[t] (4, BQ); BQ is the query block.
    """
    nb, hq, nhk, lq, lk, d, dv = dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]
    off = dims[7]
    block_q = st_scratch.shape[2]
    group = hq // nhk
    isz = q.itemsize
    vs = strides[2]
    nqb = (lq + block_q - 1) // block_q
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
        q0 = qb * block_q
        nq = min(block_q, lq - q0)
        q_last = q0 + nq - 1
        acc[:nq, :] = 0.0
        m_run[:] = -np.inf
        m_use[:] = 0.0
        l_run[:] = 0.0
        va = v.ctypes.data + (b * vs[0] + hk * vs[1]) * isz
        kb_stop, lk_stop = _key_limits(q_last, off, lk, causal, key_stop, strides[5], b, h, qb,
                                       mask_kind)
        kb = 0
        while True:
            kb, kb_end = _next_chunk(kb, nkb, kb_stop, table, strides[4], b, h, qb, mask_kind)
            if kb >= kb_stop:
                break
            j0 = kb * SKIP_K
            nk = min(kb_end * SKIP_K, lk_stop) - j0
            kb = kb_end
            _scores_t(st, q, k, mask, keep, table, strides, d, mask_kind, causal, off, b, h, hk,
                      qb, q0, nq, j0, nk, scale)
            _column_max(st, nk, nq, cmax)
            if nan_masked:
                # the whole row is one chunk here (short rows only): all NaN/-inf = masked
                for ii in range(nq):
                    if cmax[ii] == -np.inf:
                        for jj in range(nk):
                            st[jj, ii] = -np.inf
            for ii in range(nq):
                m_new = max(m_run[ii], cmax[ii])
                mu = m_new if m_new > -np.inf else 0.0
                alpha = math.exp(m_run[ii] - mu)
                m_run[ii] = m_new
                m_use[ii] = mu
                l_run[ii] *= alpha
                if alpha != 1.0:
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
            stats[b, h, 0, q0 + ii] = m_use[ii] if l > 0.0 else np.inf
            stats[b, h, 1, q0 + ii] = inv
        blas_set_local_threads(0)


@jit
def _mask_table_items(mask, keep, mask_strides, shape, block_rows, block_cols, mask_kind, table,
                      key_stop, counts, first, last):
    """mask_table for the work items [first, last) (item = (b, h, qb)); counts (2, nkb) int64."""
    nh, mq, mk = shape[1], shape[2], shape[3]
    nqb = table.shape[2]
    nkb = table.shape[3]
    cs = mask_strides[3]
    for item in range(first, last):
        live = counts[0]
        zero = counts[1]
        b = item // (nh * nqb)
        h = (item // nqb) % nh
        qb = item % nqb
        live[:] = 0
        zero[:] = 0
        stop = 0
        r0 = qb * block_rows
        rows = min(block_rows, mq - r0)
        for r in range(r0, r0 + rows):
            at = b * mask_strides[0] + h * mask_strides[1] + r * mask_strides[2]
            for kb in range(nkb):
                c0 = kb * block_cols
                n_live = 0
                n_zero = 0
                c1 = min(c0 + block_cols, mk)
                if mask_kind == MASK_KEEP:
                    if cs == 1:  # the common layout: a loop LLVM vectorises (bytes are 0/1)
                        for c in range(at + c0, at + c1):
                            n_live += keep[c]
                    else:
                        for c in range(c0, c1):
                            n_live += np.int64(keep[at + c * cs] != 0)
                    n_zero = n_live
                elif cs == 1:
                    for c in range(at + c0, at + c1):
                        x = mask[c]
                        n_live += np.int64(x != -np.inf)
                        n_zero += np.int64(x == 0.0)
                else:
                    for c in range(c0, c1):
                        x = mask[at + c * cs]
                        n_live += np.int64(x != -np.inf)
                        n_zero += np.int64(x == 0.0)
                live[kb] += n_live
                zero[kb] += n_zero
                if n_live > 0 and c1 > stop:  # the last kept column of this row and block
                    for c in range(c1 - 1, max(c0, stop) - 1, -1):
                        x = keep[at + c * cs] if mask_kind == MASK_KEEP else mask[at + c * cs]
                        if (x != 0) if mask_kind == MASK_KEEP else (x != -np.inf):
                            stop = c + 1
                            break
        key_stop[b, h, qb] = stop
        for kb in range(nkb):
            size = rows * (min(kb * block_cols + block_cols, mk) - kb * block_cols)
            if live[kb] == 0:
                table[b, h, qb, kb] = HIDDEN
            elif zero[kb] == size:
                table[b, h, qb, kb] = VISIBLE
            else:
                table[b, h, qb, kb] = PARTIAL


@jit
def mask_table(mask, keep, mask_strides, shape, block_rows, block_cols, mask_kind, table,
               key_stop, counts):
    """The block table of a stored mask (see attention_forward): table[b, h, qb, kb] = HIDDEN,
    VISIBLE or PARTIAL for the block_rows x block_cols block (qb, kb) of the mask, whose stored
    shape is ``shape`` (B', H', Mq, Mk; read with mask_strides from ``mask``, a float bias, or
    ``keep``, uint8, as mask_kind says); table (B', H', nqb, nkb) contiguous; key_stop
    (B', H', nqb) int64 contiguous: one past the last column any row of the block keeps (0 if
    none). One pass over the mask, row by row, on the calling thread (a small mask, such as a
    key-padding one, is not worth a parallel region: under load each region costs a scheduler
    time slice). Scratch: counts (2, nkb) int64."""
    _mask_table_items(mask, keep, mask_strides, shape, block_rows, block_cols, mask_kind, table,
                      key_stop, counts, 0, table.shape[0] * table.shape[1] * table.shape[2])


@jit_parallel
def mask_table_parallel(mask, keep, mask_strides, shape, block_rows, block_cols, mask_kind,
                        table, key_stop, count_scratch):
    """mask_table over the threads, for large masks; count_scratch[t] (2, nkb) per thread t."""
    items = table.shape[0] * table.shape[1] * table.shape[2]
    for item in prange(items):
        _mask_table_items(mask, keep, mask_strides, shape, block_rows, block_cols, mask_kind,
                          table, key_stop, count_scratch[numba.get_thread_id()], item, item + 1)
