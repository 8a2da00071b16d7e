"""Flash-style attention backward on the GPU (Triton), on the canonical tensors and saved
statistics of attention.py's forward.

Two kernels. The first owns a block of queries: for float32 it sums delta_i = sum_j P_ij dP_ij
over the keys (from the recomputed P and dP themselves, not as dO . O: when the softmax saturates,
P one-hot, dP_ij - delta_i is then exactly 0 at the winning key, as in torch's float32 reference,
instead of the difference of two differently rounded dot products that dQ multiplies by |K|),
stores it, then walks the keys again to accumulate dQ (and writes dS, the gradient of an
additive mask, when it is wanted). The second owns a block of keys of one key/value head and accumulates dK and dV over
every query block of the heads in its group (no atomics), with dP computed in the first kernel's
orientation so that its dS matches. Hidden key blocks are skipped as in the forward.
float16 and bfloat16, whose rounding dwarfs that difference, take delta = rowsum(dO * O) from a
small preprocess kernel instead (one pass over the keys fewer).
"""
import torch
import triton
import triton.language as tl

from dlkern.kernels.triton._autotune import autotune
from dlkern.kernels.triton.attention import (
    MASK_NONE, _prune_attention, buckets, causal_limits, head_block, inv_keep, keep,
    keep_transposed, load_bias, mask_arguments, philox_seed, strided)
from dlkern.kernels.triton.configs import ATTENTION
from dlkern.kernels.triton.precision import MATMUL, dot_precision


@triton.jit
def attention_backward_preprocess_kernel(Out, GradOut, Delta, rows_total, HEAD_DV: tl.constexpr,
                                         BLOCK_DV: tl.constexpr, BLOCK_R: tl.constexpr):
    """Delta[r] = sum_c GradOut[r, c] * Out[r, c] in float32; Out, GradOut (rows, HEAD_DV)
    contiguous. Grid (cdiv(rows, BLOCK_R),)."""
    offs_r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = tl.arange(0, BLOCK_DV)
    inside = (offs_r[:, None] < rows_total) & (offs_c[None, :] < HEAD_DV)
    at = offs_r[:, None] * HEAD_DV + offs_c[None, :]
    o = tl.load(Out + at, mask=inside, other=0.0).to(tl.float32)
    do = tl.load(GradOut + at, mask=inside, other=0.0).to(tl.float32)
    tl.store(Delta + offs_r, tl.sum(o * do, 1), mask=offs_r < rows_total)


@triton.jit
def _dkdv_block(dk, dv, k, v, Q, GradOut, Stats, Delta, bias_t, offs_m, offs_n, rows, Lq, Lk,
                offset, stride_qm, stride_qd, scale, dropout_p, inv_keep, seed,
                DIAGONAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr,
                HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """dK and dV of one key block from one query block, in the transposed (key, query) view."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_in = offs_m < Lq
    q_t = tl.load(Q + offs_m[None, :] * stride_qm + offs_d[:, None] * stride_qd,
                  mask=row_in[None, :] & (offs_d[:, None] < HEAD_D), other=0.0)
    s_t = tl.dot(k, q_t, input_precision=PRECISION) * scale
    if MASK_KIND != MASK_NONE:
        s_t += bias_t
    # rows that see no key, and rows past Lq, have shift +inf and 1/l = 0: p = 0. Keys past Lk
    # need no test: they only reach rows of dK and dV that are never stored.
    shift = tl.load(Stats + offs_m, mask=row_in, other=float("inf"))
    inv_l = tl.load(Stats + Lq + offs_m, mask=row_in, other=0.0)
    p_t = tl.exp(s_t - shift[None, :]) * inv_l[None, :]
    if DIAGONAL:
        p_t = tl.where(offs_n[:, None] <= offs_m[None, :] + offset, p_t, 0.0)
    do = tl.load(GradOut + offs_m[:, None] * HEAD_DV + offs_dv[None, :],
                 mask=row_in[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    # dP in the (query, key) orientation of the first kernel, whose delta it meets
    dp_t = tl.trans(tl.dot(do, tl.trans(v), input_precision=PRECISION))
    if DROPOUT:
        keep_t = keep_transposed(seed, rows, offs_n, Lk, dropout_p)
        dv += tl.dot(tl.where(keep_t, p_t * inv_keep, 0.0).to(do.dtype), do,
                     input_precision=PRECISION)
        dp_t = tl.where(keep_t, dp_t * inv_keep, 0.0)
    else:
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
    delta = tl.load(Delta + offs_m, mask=row_in, other=0.0)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += tl.dot(ds_t.to(q_t.dtype), tl.trans(q_t), input_precision=PRECISION)
    return dk, dv


@triton.jit
def _dkdv_range(dk, dv, k, v, Q, GradOut, Stats, Delta, mask_ptr, offs_n, row0, lo, hi, Lq, Lk,
                offset, stride_qm, stride_qd, stride_mm, stride_mn, scale, dropout_p,
                inv_keep, seed, DIAGONAL: tl.constexpr, MASK_KIND: tl.constexpr,
                DROPOUT: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr,
                PRECISION: tl.constexpr):
    """_dkdv_block over the query blocks [lo, hi), skipping the tiles the mask hides."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows = row0 + offs_m
        if MASK_KIND == MASK_NONE:
            dk, dv = _dkdv_block(dk, dv, k, v, Q, GradOut, Stats, Delta, 0.0, offs_m, offs_n,
                                 rows, Lq, Lk, offset, stride_qm, stride_qd, scale, dropout_p,
                                 inv_keep, seed, DIAGONAL, MASK_KIND, DROPOUT, HEAD_D, HEAD_DV,
                                 BLOCK_D, BLOCK_DV, PRECISION)
        else:
            bias = load_bias(mask_ptr, offs_m, offs_n, Lq, Lk, stride_mm, stride_mn, MASK_KIND,
                             True)
            if tl.max(tl.max(bias, 1), 0) > float("-inf"):
                dk, dv = _dkdv_block(dk, dv, k, v, Q, GradOut, Stats, Delta, bias, offs_m,
                                     offs_n, rows, Lq, Lk, offset, stride_qm, stride_qd,
                                     scale, dropout_p, inv_keep, seed, DIAGONAL, MASK_KIND,
                                     DROPOUT, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, PRECISION)
    return dk, dv


@autotune(ATTENTION["backward_dkdv"], key=["q_bucket", "k_bucket", "HEAD_D", "HEAD_DV", "CAUSAL",
                                           "MASK_KIND", "DROPOUT"], prune=_prune_attention)
@triton.jit
def attention_backward_dkdv_kernel(
        Q, K, V, Mask, GradOut, Stats, Delta, GradK, GradV,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_mb, stride_mh, stride_mm, stride_mn,
        Hk, group, Lq, Lk, offset, scale, dropout_p, inv_keep, seed, q_bucket,
        k_bucket, CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr,
        HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MAX_HEAD: tl.constexpr = 256,
        MIN_HEAD: tl.constexpr = 0):
    """GradK (B, Hk, Lk, HEAD_D), GradV (B, Hk, Lk, HEAD_DV) contiguous, q's dtype; GradOut
    (B, Hq, Lq, HEAD_DV), Stats (B, Hq, 2, Lq) and Delta (B, Hq, Lq) float32, contiguous. Grid
    (cdiv(Lk, BLOCK_N) * B * Hk,), key blocks fastest; each program sums over the `group` query
    heads of its head."""
    key_blocks = tl.cdiv(Lk, BLOCK_N)
    pid_n = tl.program_id(0) % key_blocks
    bhk = (tl.program_id(0) // key_blocks).to(tl.int64)
    b = bhk // Hk
    hk = bhk % Hk
    hq_total = Hk * group
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    key_in = offs_n < Lk
    k = tl.load(K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_kn
                + offs_d[None, :] * stride_kd,
                mask=key_in[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    v = tl.load(V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vn
                + offs_dv[None, :] * stride_vd,
                mask=key_in[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    lo = 0
    diag_end = 0
    if CAUSAL:
        # queries before the block's first key - offset see none of its keys; from diag_end on,
        # query blocks lie wholly below the diagonal of the block's last key
        first = tl.maximum(pid_n * BLOCK_N - offset, 0)
        lo = tl.minimum(first // BLOCK_M * BLOCK_M, Lq)
        diag_end = tl.cdiv(tl.maximum(pid_n * BLOCK_N + BLOCK_N - 1 - offset, 0), BLOCK_M)
        diag_end = tl.maximum(lo, tl.minimum(diag_end * BLOCK_M, Lq))
    for g in range(group):
        h = hk * group + g
        bh = b * hq_total + h
        q_head = Q + b * stride_qb + h * stride_qh
        do_head = GradOut + bh * Lq * HEAD_DV
        stats_head = Stats + bh * 2 * Lq
        delta_head = Delta + bh * Lq
        mask_ptr = Mask + b * stride_mb + h * stride_mh
        if CAUSAL:
            dk, dv = _dkdv_range(dk, dv, k, v, q_head, do_head, stats_head, delta_head, mask_ptr,
                                 offs_n, bh * Lq, lo, diag_end, Lq, Lk, offset, stride_qm,
                                 stride_qd, stride_mm, stride_mn, scale, dropout_p, inv_keep,
                                 seed, True, MASK_KIND, DROPOUT, HEAD_D, HEAD_DV, BLOCK_D,
                                 BLOCK_DV, BLOCK_M, PRECISION)
        dk, dv = _dkdv_range(dk, dv, k, v, q_head, do_head, stats_head, delta_head, mask_ptr,
                             offs_n, bh * Lq, diag_end, Lq, Lq, Lk, offset, stride_qm, stride_qd,
                             stride_mm, stride_mn, scale, dropout_p, inv_keep, seed, False,
                             MASK_KIND, DROPOUT, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, BLOCK_M,
                             PRECISION)
    out_k = GradK + bhk * Lk * HEAD_D + offs_n[:, None] * HEAD_D + offs_d[None, :]
    tl.store(out_k, (dk * scale).to(GradK.dtype.element_ty),
             mask=key_in[:, None] & (offs_d[None, :] < HEAD_D))
    out_v = GradV + bhk * Lk * HEAD_DV + offs_n[:, None] * HEAD_DV + offs_dv[None, :]
    tl.store(out_v, dv.to(GradV.dtype.element_ty),
             mask=key_in[:, None] & (offs_dv[None, :] < HEAD_DV))


@triton.jit
def _dq_block(dq, delta, q, do, shift, inv_l, K, V, bias, grad_mask_ptr, offs_m, offs_n, rows,
              Lq, Lk, offset, stride_kn, stride_kd, stride_vn, stride_vd, scale, dropout_p,
              inv_keep, seed, DELTA_PASS: tl.constexpr, DIAGONAL: tl.constexpr,
              MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr, GRAD_MASK: tl.constexpr,
              HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """One key block for one query block: delta += rowsum(P dP) (DELTA_PASS), else
    dq += dS K (and dS into the mask gradient)."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    key_in = offs_n < Lk
    row_in = offs_m < Lq
    k_t = tl.load(K + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                  mask=key_in[None, :] & (offs_d[:, None] < HEAD_D), other=0.0)
    v_t = tl.load(V + offs_n[None, :] * stride_vn + offs_dv[:, None] * stride_vd,
                  mask=key_in[None, :] & (offs_dv[:, None] < HEAD_DV), other=0.0)
    s = tl.dot(q, k_t, input_precision=PRECISION) * scale
    if MASK_KIND != MASK_NONE:
        s += bias
    visible = key_in[None, :] & row_in[:, None]
    if DIAGONAL:
        visible = visible & (offs_n[None, :] <= offs_m[:, None] + offset)
    p = tl.where(visible, tl.exp(s - shift[:, None]) * inv_l[:, None],
                 0.0)
    dp = tl.dot(do, v_t, input_precision=PRECISION)
    if DROPOUT:
        dp = tl.where(keep(seed, rows, offs_n, Lk, dropout_p), dp * inv_keep, 0.0)
    if DELTA_PASS:
        delta += tl.sum(p * dp, 1)
    else:
        ds = p * (dp - delta[:, None])
        if GRAD_MASK:
            tl.store(grad_mask_ptr + offs_m[:, None] * Lk + offs_n[None, :],
                     ds.to(grad_mask_ptr.dtype.element_ty), mask=row_in[:, None] & key_in[None, :])
        dq += tl.dot(ds.to(k_t.dtype), tl.trans(k_t), input_precision=PRECISION)
    return dq, delta


@triton.jit
def _dq_range(dq, delta, q, do, shift, inv_l, K, V, mask_ptr, grad_mask_ptr, offs_m, rows, lo, hi,
              Lq, Lk, offset, stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn,
              scale, dropout_p, inv_keep, seed, DELTA_PASS: tl.constexpr,
              DIAGONAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr,
              GRAD_MASK: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr,
              PRECISION: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MASK_KIND == MASK_NONE:
            dq, delta = _dq_block(
                dq, delta, q, do, shift, inv_l, K, V, 0.0, grad_mask_ptr, offs_m, offs_n, rows,
                Lq, Lk, offset, stride_kn, stride_kd, stride_vn, stride_vd, scale, dropout_p,
                inv_keep, seed, DELTA_PASS, DIAGONAL, MASK_KIND, DROPOUT, GRAD_MASK, HEAD_D,
                HEAD_DV, BLOCK_D, BLOCK_DV, PRECISION)
        else:
            bias = load_bias(mask_ptr, offs_m, offs_n, Lq, Lk, stride_mm, stride_mn, MASK_KIND,
                             False)
            if tl.max(tl.max(bias, 1), 0) > float("-inf"):
                dq, delta = _dq_block(
                    dq, delta, q, do, shift, inv_l, K, V, bias, grad_mask_ptr, offs_m, offs_n,
                    rows, Lq, Lk, offset, stride_kn, stride_kd, stride_vn, stride_vd, scale,
                    dropout_p, inv_keep, seed, DELTA_PASS, DIAGONAL, MASK_KIND, DROPOUT,
                    GRAD_MASK, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, PRECISION)
    return dq, delta


@autotune(ATTENTION["backward_dq"], key=["q_bucket", "k_bucket", "HEAD_D", "HEAD_DV", "CAUSAL",
                                         "MASK_KIND", "DROPOUT", "GRAD_MASK", "EXACT_DELTA"],
          prune=_prune_attention)
@triton.jit
def attention_backward_dq_kernel(
        Q, K, V, Mask, GradOut, Stats, Delta, GradQ, GradMask,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_mb, stride_mh, stride_mm, stride_mn,
        Hq, group, Lq, Lk, offset, scale, dropout_p, inv_keep, seed, q_bucket,
        k_bucket, CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr,
        GRAD_MASK: tl.constexpr, EXACT_DELTA: tl.constexpr, HEAD_D: tl.constexpr,
        HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        MAX_HEAD: tl.constexpr = 256, MIN_HEAD: tl.constexpr = 0):
    """GradQ (B, Hq, Lq, HEAD_D) contiguous, q's dtype; Delta (B, Hq, Lq) float32, written from
    sum P dP if EXACT_DELTA, else read (the preprocess kernel's rowsum(dO * O));
    GradMask (B, Hq, Lq, Lk) contiguous, zero-filled by the caller, written where visited if
    GRAD_MASK. Grid (cdiv(Lq, BLOCK_M) * B * Hq,), query blocks fastest."""
    query_blocks = tl.cdiv(Lq, BLOCK_M)
    pid_m = tl.program_id(0) % query_blocks
    bh = (tl.program_id(0) // query_blocks).to(tl.int64)
    if CAUSAL:
        pid_m = query_blocks - 1 - pid_m
    b = bh // Hq
    h = bh % Hq
    hk = h // group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_in = offs_m < Lq
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm
                + offs_d[None, :] * stride_qd,
                mask=row_in[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    do = tl.load(GradOut + bh * Lq * HEAD_DV + offs_m[:, None] * HEAD_DV + offs_dv[None, :],
                 mask=row_in[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    shift = tl.load(Stats + bh * 2 * Lq + offs_m, mask=row_in, other=float("inf"))
    inv_l = tl.load(Stats + bh * 2 * Lq + Lq + offs_m, mask=row_in, other=0.0)
    K += b * stride_kb + hk * stride_kh
    V += b * stride_vb + hk * stride_vh
    mask_ptr = Mask + b * stride_mb + h * stride_mh
    grad_mask_ptr = GradMask + bh * Lq * Lk
    rows = bh * Lq + offs_m
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if EXACT_DELTA:
        delta = tl.zeros([BLOCK_M], tl.float32)
    else:
        delta = tl.load(Delta + bh * Lq + offs_m, mask=row_in, other=0.0)
    if CAUSAL:
        split, hi = causal_limits(pid_m * BLOCK_M, offset, Lk, BLOCK_M, BLOCK_N)
    else:
        split = Lk
        hi = Lk
    for delta_pass in tl.static_range(0 if EXACT_DELTA else 1, 2):
        dq, delta = _dq_range(
            dq, delta, q, do, shift, inv_l, K, V, mask_ptr, grad_mask_ptr, offs_m, rows, 0,
            split, Lq, Lk, offset, stride_kn, stride_kd, stride_vn, stride_vd, stride_mm,
            stride_mn, scale, dropout_p, inv_keep, seed, delta_pass == 0, False, MASK_KIND,
            DROPOUT, GRAD_MASK, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, BLOCK_N, PRECISION)
        if CAUSAL:
            dq, delta = _dq_range(
                dq, delta, q, do, shift, inv_l, K, V, mask_ptr, grad_mask_ptr, offs_m, rows,
                split, hi, Lq, Lk, offset, stride_kn, stride_kd, stride_vn, stride_vd, stride_mm,
                stride_mn, scale, dropout_p, inv_keep, seed, delta_pass == 0, True,
                MASK_KIND, DROPOUT, GRAD_MASK, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, BLOCK_N,
                PRECISION)
    if EXACT_DELTA:
        tl.store(Delta + bh * Lq + offs_m, delta, mask=row_in)
    tl.store(GradQ + bh * Lq * HEAD_D + offs_m[:, None] * HEAD_D + offs_d[None, :],
             (dq * scale).to(GradQ.dtype.element_ty),
             mask=row_in[:, None] & (offs_d[None, :] < HEAD_D))


def attention_backward(grad_out, q, k, v, mask, out, stats, causal, offset, scale, dropout_p,
                       seed, grad_q, grad_k, grad_v, grad_mask=None, exact_delta=None):
    """grad_q, grad_k, grad_v (contiguous, shapes of q, k, v) written; grad_mask (B, Hq, Lq, Lk)
    contiguous and zero-filled, written if given. grad_out and out (B, Hq, Lq, Dv) contiguous,
    stats (B, Hq, 2, Lq) float32 from attention_forward (out is read for 16-bit inputs only).
    exact_delta: delta from P dP (default: for float32) or from dO . O (tests force either)."""
    nb, hq, lq, d = q.shape
    hk, lk, dv = k.shape[1], k.shape[2], v.shape[3]
    mask_t, mask_strides, kind = mask_arguments(mask, q)
    delta = torch.empty((nb, hq, lq), dtype=torch.float32, device=q.device)
    q_bucket, k_bucket = buckets(lq, lk)
    common = dict(
        Q=q, K=k, V=v, Mask=mask_t, GradOut=grad_out, Stats=stats, Delta=delta,
        **strided("q", q.stride()), **strided("k", k.stride()), **strided("v", v.stride()),
        **strided("m", mask_strides), group=hq // hk, Lq=lq, Lk=lk, offset=int(offset),
        scale=float(scale), dropout_p=float(dropout_p),
        inv_keep=inv_keep(dropout_p), seed=philox_seed(seed), q_bucket=q_bucket,
        k_bucket=k_bucket, CAUSAL=bool(causal), MASK_KIND=kind, DROPOUT=dropout_p > 0.0,
        HEAD_D=d, HEAD_DV=dv, BLOCK_D=head_block(d), BLOCK_DV=head_block(dv),
        PRECISION=dot_precision(q, MATMUL))

    def grid_queries(meta):
        return (triton.cdiv(lq, meta["BLOCK_M"]) * nb * hq,)

    exact = q.dtype == torch.float32 if exact_delta is None else exact_delta
    if not exact:
        rows, block_r = nb * hq * lq, 64
        attention_backward_preprocess_kernel[(triton.cdiv(rows, block_r),)](
            Out=out, GradOut=grad_out, Delta=delta, rows_total=rows, HEAD_DV=dv,
            BLOCK_DV=head_block(dv), BLOCK_R=block_r)
    # first: for float32 it writes the delta the second one reads
    attention_backward_dq_kernel[grid_queries](
        **common, GradQ=grad_q, GradMask=q if grad_mask is None else grad_mask, Hq=hq,
        GRAD_MASK=grad_mask is not None, EXACT_DELTA=exact)

    def grid_keys(meta):
        return (triton.cdiv(lk, meta["BLOCK_N"]) * nb * hk,)

    attention_backward_dkdv_kernel[grid_keys](**common, GradK=grad_k, GradV=grad_v, Hk=hk)
