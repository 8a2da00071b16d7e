"""Flash-style attention and masked softmax on the GPU (Triton), forward and backward.

Attention works on the canonical 4-d tensors of ``dlkern/ops/attention.py``: q (B, Hq, Lq, D),
k (B, Hk, Lk, D), v (B, Hk, Lk, Dv), any strides; query head h reads key/value head h // group
(GQA); an optional additive float mask read with its own strides, zero where it is broadcast, so a
broadcast mask is never expanded in memory. Causal masking is top-left aligned: query i sees key
j <= i. A query row that sees no key gives zeros and log-sum-exp -inf, as the CPU kernels do.

Forward: one program per (BLOCK_M queries, batch * query head) walks the key blocks with an online
softmax in base 2 (scores pre-multiplied by scale * log2 e) and saves the row log-sum-exp (natural
log, float32) for the backward. Key blocks above the causal diagonal are never visited; a key block
that the mask hides entirely (every bias -inf) is skipped before K and V are loaded.
Backward: a preprocess computes delta = rowsum(dO * O); one kernel owns a block of keys of one
key/value head and accumulates dK and dV over every query block of the heads in its group (no
atomics); another owns a block of queries and accumulates dQ (and writes dS, the gradient of the
additive mask, when it is wanted).

Dropout keeps a weight when ``tl.rand(seed, (row * Lk + key))`` >= p, row = (b * Hq + h) * Lq + i:
the same Philox counter in forward and backward, so the mask is regenerated, never stored. The
seed comes from torch's generator (drawn by the caller).

Head dims are padded to the next power of two (BLOCK_D, BLOCK_DV) with masked loads. float16 and
bfloat16 inputs accumulate in float32; float32 dots use tf32 or full precision as
precision.dot_precision says (cuBLAS's switch).
"""
import torch
import triton
import triton.language as tl

from dlkern.kernels.triton._autotune import autotune
from dlkern.kernels.triton.configs import ATTENTION
from dlkern.kernels.triton.precision import MATMUL, dot_precision

_LOG2E = 1.4426950408889634


def _prune_attention(configs, named_args):
    """Drop the tiles whose registers or shared memory do not fit a head this wide, and the first
    configuration (the interpreter's small tiles, valid for every head) when another one fits."""
    width = max(named_args["BLOCK_D"], named_args["BLOCK_DV"])
    kept = [c for c in configs if c.kwargs.get("MAX_HEAD", 256) >= width
            and c.kwargs.get("MIN_HEAD", 0) <= width]
    if len(kept) > 1 and kept[0] is configs[0]:
        kept = kept[1:]
    return kept or list(configs)[:1]


@triton.jit
def _load_bias(mask_ptr, offs_m, offs_n, Lq, Lk, stride_mm, stride_mn, MASK_KIND: tl.constexpr,
               TRANSPOSED: tl.constexpr):
    """The additive mask of one tile, -inf outside the (Lq, Lk) range; (BLOCK_M, BLOCK_N), or
    (BLOCK_N, BLOCK_M) when TRANSPOSED. MASK_KIND 2: the mask does not vary along queries (stride
    0), so one row of keys is loaded and broadcast."""
    if MASK_KIND == 2:
        row = tl.load(mask_ptr + offs_n * stride_mn, mask=offs_n < Lk, other=float("-inf"))
        row = row.to(tl.float32)
        if TRANSPOSED:
            bias = row[:, None] + tl.zeros([offs_n.shape[0], offs_m.shape[0]], tl.float32)
        else:
            bias = row[None, :] + tl.zeros([offs_m.shape[0], offs_n.shape[0]], tl.float32)
    else:
        if TRANSPOSED:
            ptrs = mask_ptr + offs_n[:, None] * stride_mn + offs_m[None, :] * stride_mm
            inside = (offs_n[:, None] < Lk) & (offs_m[None, :] < Lq)
        else:
            ptrs = mask_ptr + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn
            inside = (offs_m[:, None] < Lq) & (offs_n[None, :] < Lk)
        bias = tl.load(ptrs, mask=inside, other=float("-inf")).to(tl.float32)
    return bias


@triton.jit
def _keep(seed, rows, offs_n, Lk, dropout_p):
    """Dropout decision of the (rows, keys) tile: True = kept (probability 1 - p)."""
    counter = rows.to(tl.int64)[:, None] * Lk + offs_n[None, :]
    return tl.rand(seed, counter) >= dropout_p


@triton.jit
def _keep_transposed(seed, rows, offs_n, Lk, dropout_p):
    """_keep of the (keys, rows) tile, drawn from the same counters."""
    counter = rows.to(tl.int64)[None, :] * Lk + offs_n[:, None]
    return tl.rand(seed, counter) >= dropout_p


@triton.jit
def _forward_block(acc, l_i, m_i, q, k_ptrs, v_ptrs, bias, offs_m, offs_n, rows, Lk, qk_scale2,
                   dropout_p, seed, DIAGONAL: tl.constexpr, CHECK_KEYS: tl.constexpr,
                   MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr, HEAD_D: tl.constexpr,
                   HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                   PRECISION: tl.constexpr):
    """One key block of the online softmax: (acc, l_i, m_i) updated; bias the mask tile.
    DIAGONAL: apply the causal test; CHECK_KEYS: the block may reach past Lk. Blocks with neither
    and no mask (the bulk of the work) load and scale without any test."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if CHECK_KEYS or HEAD_D != BLOCK_D:
        k_t = tl.load(k_ptrs, mask=(offs_d[:, None] < HEAD_D) & (offs_n[None, :] < Lk), other=0.0)
    else:
        k_t = tl.load(k_ptrs)
    s = tl.dot(q, k_t, input_precision=PRECISION) * qk_scale2
    if MASK_KIND != 0:
        s += bias * 1.4426950408889634
    if DIAGONAL or CHECK_KEYS:
        visible = offs_n[None, :] < Lk
        if DIAGONAL:
            visible = visible & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASK_KIND == 0 and not DIAGONAL and not CHECK_KEYS:
        m_shift = m_new  # every row has a finite score in this block
    else:
        # A row with no visible key so far keeps m = -inf; shift it by 0 so exp2 gives 0, not NaN
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_shift)
    p = tl.exp2(s - m_shift[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if DROPOUT:
        p = tl.where(_keep(seed, rows, offs_n, Lk, dropout_p), p, 0.0)
    if CHECK_KEYS or HEAD_DV != BLOCK_DV:
        v = tl.load(v_ptrs, mask=(offs_n[:, None] < Lk) & (offs_dv[None, :] < HEAD_DV), other=0.0)
    else:
        v = tl.load(v_ptrs)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _forward_range(acc, l_i, m_i, q, K, V, mask_ptr, offs_m, rows, lo, hi, Lq, Lk,
                   stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn, qk_scale2,
                   dropout_p, seed, DIAGONAL: tl.constexpr, CHECK_KEYS: tl.constexpr,
                   MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr, HEAD_D: tl.constexpr,
                   HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                   BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = K + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
        v_ptrs = V + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd
        if MASK_KIND == 0:
            acc, l_i, m_i = _forward_block(
                acc, l_i, m_i, q, k_ptrs, v_ptrs, 0.0, offs_m, offs_n, rows, Lk, qk_scale2,
                dropout_p, seed, DIAGONAL, CHECK_KEYS, MASK_KIND, DROPOUT, HEAD_D, HEAD_DV,
                BLOCK_D, BLOCK_DV, PRECISION)
        else:
            bias = _load_bias(mask_ptr, offs_m, offs_n, Lq, Lk, stride_mm, stride_mn, MASK_KIND,
                              False)
            if tl.max(tl.max(bias, 1), 0) > float("-inf"):  # else the mask hides the block
                acc, l_i, m_i = _forward_block(
                    acc, l_i, m_i, q, k_ptrs, v_ptrs, bias, offs_m, offs_n, rows, Lk, qk_scale2,
                    dropout_p, seed, DIAGONAL, CHECK_KEYS, MASK_KIND, DROPOUT, HEAD_D, HEAD_DV,
                    BLOCK_D, BLOCK_DV, PRECISION)
    return acc, l_i, m_i


@autotune(ATTENTION["forward"], key=["q_bucket", "k_bucket", "HEAD_D", "HEAD_DV", "CAUSAL",
                                     "MASK_KIND", "DROPOUT"], prune=_prune_attention)
@triton.jit
def attention_forward_kernel(
        Q, K, V, Mask, Out, Lse,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_mb, stride_mh, stride_mm, stride_mn,
        Hq, group, Lq, Lk, qk_scale2, dropout_p, inv_keep, seed, q_bucket, k_bucket,
        CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr,
        HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MAX_HEAD: tl.constexpr = 256,
        MIN_HEAD: tl.constexpr = 0):
    """Out (B, Hq, Lq, HEAD_DV) contiguous, q's dtype; Lse (B, Hq, Lq) contiguous float32.
    Grid (cdiv(Lq, BLOCK_M) * B * Hq,), query blocks fastest. qk_scale2 = scale * log2(e);
    q_bucket and k_bucket, the lengths rounded up to powers of two, key the autotuning only;
    MASK_KIND 0 none, 1 any strides, 2 constant along queries (stride_mm == 0)."""
    # one grid axis (the second and third are limited to 65535 programs)
    query_blocks = tl.cdiv(Lq, BLOCK_M)
    pid_m = tl.program_id(0) % query_blocks
    bh = (tl.program_id(0) // query_blocks).to(tl.int64)
    if CAUSAL:  # the last query blocks see the most keys: start them first
        pid_m = query_blocks - 1 - pid_m
    b = bh // Hq
    h = bh % Hq
    hk = h // group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_in = offs_m < Lq
    q_ptrs = (Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm
              + offs_d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=row_in[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    K += b * stride_kb + hk * stride_kh
    V += b * stride_vb + hk * stride_vh
    mask_ptr = Mask + b * stride_mb + h * stride_mh
    rows = bh * Lq + offs_m
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    if CAUSAL:
        hi = tl.minimum(Lk, (pid_m + 1) * BLOCK_M)
        # whole key blocks at or below the diagonal of the first row need no causal test
        split = tl.minimum(pid_m * BLOCK_M + 1, hi) // BLOCK_N * BLOCK_N
    else:
        hi = Lk
        split = (Lk // BLOCK_N) * BLOCK_N  # whole key blocks, then the ragged end
    acc, l_i, m_i = _forward_range(
        acc, l_i, m_i, q, K, V, mask_ptr, offs_m, rows, 0, split, Lq, Lk, stride_kn,
        stride_kd, stride_vn, stride_vd, stride_mm, stride_mn, qk_scale2, dropout_p, seed,
        False, False, MASK_KIND, DROPOUT, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, BLOCK_N, PRECISION)
    acc, l_i, m_i = _forward_range(
        acc, l_i, m_i, q, K, V, mask_ptr, offs_m, rows, split, hi, Lq, Lk, stride_kn,
        stride_kd, stride_vn, stride_vd, stride_mm, stride_mn, qk_scale2, dropout_p, seed,
        CAUSAL, True, MASK_KIND, DROPOUT, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, BLOCK_N,
        PRECISION)
    seen = l_i > 0.0
    inv = tl.where(seen, inv_keep / tl.where(seen, l_i, 1.0), 0.0)
    out = acc * inv[:, None]
    out_ptrs = Out + bh * Lq * HEAD_DV + offs_m[:, None] * HEAD_DV + offs_dv[None, :]
    tl.store(out_ptrs, out.to(Out.dtype.element_ty),
             mask=row_in[:, None] & (offs_dv[None, :] < HEAD_DV))
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    tl.store(Lse + bh * Lq + offs_m, lse, mask=row_in)


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
def _dkdv_block(dk, dv, k, v, Q, GradOut, Lse, Delta, bias_t, offs_m, offs_n, rows, Lq, Lk,
                stride_qm, stride_qd, qk_scale2, dropout_p, inv_keep, seed,
                DIAGONAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr,
                HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """dK and dV of one key block from one query block, in the transposed (key, query) view."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_in = offs_m < Lq
    q_t = tl.load(Q + offs_m[None, :] * stride_qm + offs_d[:, None] * stride_qd,
                  mask=row_in[None, :] & (offs_d[:, None] < HEAD_D), other=0.0)
    s_t = tl.dot(k, q_t, input_precision=PRECISION) * qk_scale2
    if MASK_KIND != 0:
        s_t += bias_t * 1.4426950408889634
    lse = tl.load(Lse + offs_m, mask=row_in, other=float("-inf"))
    # rows that see no key (lse = -inf), and rows past Lq, have p = 0: shift them by +inf. Keys
    # past Lk need no test: they only reach rows of dK and dV that are never stored.
    shift = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    p_t = tl.exp2(s_t - shift[None, :])
    if DIAGONAL:
        p_t = tl.where(offs_n[:, None] <= offs_m[None, :], p_t, 0.0)
    do = tl.load(GradOut + offs_m[:, None] * HEAD_DV + offs_dv[None, :],
                 mask=row_in[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
    if DROPOUT:
        keep_t = _keep_transposed(seed, rows, offs_n, Lk, dropout_p)
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
def _dkdv_maybe(dk, dv, k, v, Q, GradOut, Lse, Delta, mask_ptr, offs_m, offs_n, rows, Lq, Lk,
                stride_qm, stride_qd, stride_mm, stride_mn, qk_scale2, dropout_p, inv_keep, seed,
                DIAGONAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr,
                HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """_dkdv_block, skipped when the mask hides the whole tile."""
    if MASK_KIND == 0:
        dk, dv = _dkdv_block(dk, dv, k, v, Q, GradOut, Lse, Delta, 0.0, offs_m, offs_n, rows,
                             Lq, Lk, stride_qm, stride_qd, qk_scale2, dropout_p, inv_keep, seed,
                             DIAGONAL, MASK_KIND, DROPOUT, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV,
                             PRECISION)
    else:
        bias = _load_bias(mask_ptr, offs_m, offs_n, Lq, Lk, stride_mm, stride_mn, MASK_KIND,
                          True)
        if tl.max(tl.max(bias, 1), 0) > float("-inf"):
            dk, dv = _dkdv_block(dk, dv, k, v, Q, GradOut, Lse, Delta, bias, offs_m, offs_n,
                                 rows, Lq, Lk, stride_qm, stride_qd, qk_scale2, dropout_p,
                                 inv_keep, seed, DIAGONAL, MASK_KIND, DROPOUT, HEAD_D, HEAD_DV,
                                 BLOCK_D, BLOCK_DV, PRECISION)
    return dk, dv


@autotune(ATTENTION["backward_dkdv"], key=["q_bucket", "k_bucket", "HEAD_D", "HEAD_DV", "CAUSAL",
                                           "MASK_KIND", "DROPOUT"], prune=_prune_attention)
@triton.jit
def attention_backward_dkdv_kernel(
        Q, K, V, Mask, GradOut, Lse, Delta, GradK, GradV,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_mb, stride_mh, stride_mm, stride_mn,
        Hk, group, Lq, Lk, qk_scale2, scale, dropout_p, inv_keep, seed, q_bucket, k_bucket,
        CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr,
        HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MAX_HEAD: tl.constexpr = 256,
        MIN_HEAD: tl.constexpr = 0):
    """GradK (B, Hk, Lk, HEAD_D), GradV (B, Hk, Lk, HEAD_DV) contiguous, q's dtype; GradOut
    (B, Hq, Lq, HEAD_DV), Lse and Delta (B, Hq, Lq) float32, contiguous. Grid
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
    if CAUSAL:
        lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M  # earlier queries see none of these keys
    # query blocks from `split` on lie wholly below the diagonal of the block's last key
    split = tl.cdiv(pid_n * BLOCK_N + BLOCK_N - 1, BLOCK_M) * BLOCK_M
    split = tl.maximum(lo, tl.minimum(split, Lq))
    for g in range(group):
        h = hk * group + g
        bh = b * hq_total + h
        q_head = Q + b * stride_qb + h * stride_qh
        do_head = GradOut + bh * Lq * HEAD_DV
        lse_head = Lse + bh * Lq
        delta_head = Delta + bh * Lq
        mask_ptr = Mask + b * stride_mb + h * stride_mh
        diag_end = lo
        if CAUSAL:
            diag_end = split
            for start_m in range(lo, split, BLOCK_M):
                offs_m = start_m + tl.arange(0, BLOCK_M)
                dk, dv = _dkdv_maybe(
                    dk, dv, k, v, q_head, do_head, lse_head, delta_head, mask_ptr, offs_m,
                    offs_n, bh * Lq + offs_m, Lq, Lk, stride_qm, stride_qd, stride_mm,
                    stride_mn, qk_scale2, dropout_p, inv_keep, seed, True, MASK_KIND, DROPOUT,
                    HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, PRECISION)
        for start_m in range(diag_end, Lq, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            dk, dv = _dkdv_maybe(
                dk, dv, k, v, q_head, do_head, lse_head, delta_head, mask_ptr, offs_m, offs_n,
                bh * Lq + offs_m, Lq, Lk, stride_qm, stride_qd, stride_mm, stride_mn,
                qk_scale2, dropout_p, inv_keep, seed, False, MASK_KIND, DROPOUT, HEAD_D,
                HEAD_DV, BLOCK_D, BLOCK_DV, PRECISION)
    out_k = GradK + bhk * Lk * HEAD_D + offs_n[:, None] * HEAD_D + offs_d[None, :]
    tl.store(out_k, (dk * scale).to(GradK.dtype.element_ty),
             mask=key_in[:, None] & (offs_d[None, :] < HEAD_D))
    out_v = GradV + bhk * Lk * HEAD_DV + offs_n[:, None] * HEAD_DV + offs_dv[None, :]
    tl.store(out_v, dv.to(GradV.dtype.element_ty),
             mask=key_in[:, None] & (offs_dv[None, :] < HEAD_DV))


@triton.jit
def _dq_block(dq, q, do, shift, delta, K, V, bias, grad_mask_ptr, offs_m, offs_n, rows, Lq, Lk,
              stride_kn, stride_kd, stride_vn, stride_vd, qk_scale2,
              dropout_p, inv_keep, seed, DIAGONAL: tl.constexpr, MASK_KIND: tl.constexpr,
              DROPOUT: tl.constexpr, GRAD_MASK: tl.constexpr, HEAD_D: tl.constexpr,
              HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
              PRECISION: tl.constexpr):
    """dQ of one query block from one key block (and dS into the mask gradient)."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    key_in = offs_n < Lk
    row_in = offs_m < Lq
    k_t = tl.load(K + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                  mask=key_in[None, :] & (offs_d[:, None] < HEAD_D), other=0.0)
    v_t = tl.load(V + offs_n[None, :] * stride_vn + offs_dv[:, None] * stride_vd,
                  mask=key_in[None, :] & (offs_dv[:, None] < HEAD_DV), other=0.0)
    s = tl.dot(q, k_t, input_precision=PRECISION) * qk_scale2
    if MASK_KIND != 0:
        s += bias * 1.4426950408889634
    visible = key_in[None, :] & row_in[:, None]
    if DIAGONAL:
        visible = visible & (offs_n[None, :] <= offs_m[:, None])
    p = tl.where(visible, tl.exp2(s - shift[:, None]), 0.0)
    dp = tl.dot(do, v_t, input_precision=PRECISION)
    if DROPOUT:
        dp = tl.where(_keep(seed, rows, offs_n, Lk, dropout_p), dp * inv_keep, 0.0)
    ds = p * (dp - delta[:, None])
    if GRAD_MASK:
        tl.store(grad_mask_ptr + offs_m[:, None] * Lk + offs_n[None, :],
                 ds.to(grad_mask_ptr.dtype.element_ty), mask=row_in[:, None] & key_in[None, :])
    dq += tl.dot(ds.to(k_t.dtype), tl.trans(k_t), input_precision=PRECISION)
    return dq


@triton.jit
def _dq_range(dq, q, do, shift, delta, K, V, mask_ptr, grad_mask_ptr, offs_m, rows, lo, hi, Lq,
              Lk, stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn, qk_scale2,
              dropout_p, inv_keep, seed, DIAGONAL: tl.constexpr, MASK_KIND: tl.constexpr,
              DROPOUT: tl.constexpr, GRAD_MASK: tl.constexpr, HEAD_D: tl.constexpr,
              HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
              BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MASK_KIND == 0:
            dq = _dq_block(dq, q, do, shift, delta, K, V, 0.0, grad_mask_ptr, offs_m, offs_n,
                           rows, Lq, Lk, stride_kn, stride_kd, stride_vn, stride_vd, qk_scale2,
                           dropout_p, inv_keep, seed, DIAGONAL, MASK_KIND, DROPOUT, GRAD_MASK,
                           HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, PRECISION)
        else:
            bias = _load_bias(mask_ptr, offs_m, offs_n, Lq, Lk, stride_mm, stride_mn, MASK_KIND,
                              False)
            if tl.max(tl.max(bias, 1), 0) > float("-inf"):
                dq = _dq_block(dq, q, do, shift, delta, K, V, bias, grad_mask_ptr, offs_m, offs_n,
                               rows, Lq, Lk, stride_kn, stride_kd, stride_vn, stride_vd,
                               qk_scale2, dropout_p, inv_keep, seed, DIAGONAL, MASK_KIND,
                               DROPOUT, GRAD_MASK, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV,
                               PRECISION)
    return dq


@autotune(ATTENTION["backward_dq"], key=["q_bucket", "k_bucket", "HEAD_D", "HEAD_DV", "CAUSAL",
                                         "MASK_KIND", "DROPOUT", "GRAD_MASK"],
          prune=_prune_attention)
@triton.jit
def attention_backward_dq_kernel(
        Q, K, V, Mask, GradOut, Lse, Delta, GradQ, GradMask,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_mb, stride_mh, stride_mm, stride_mn,
        Hq, group, Lq, Lk, qk_scale2, scale, dropout_p, inv_keep, seed, q_bucket, k_bucket,
        CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr,
        GRAD_MASK: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MAX_HEAD: tl.constexpr = 256,
        MIN_HEAD: tl.constexpr = 0):
    """GradQ (B, Hq, Lq, HEAD_D) contiguous, q's dtype; GradMask (B, Hq, Lq, Lk) contiguous,
    zero-filled by the caller, written where visited if GRAD_MASK. Grid
    (cdiv(Lq, BLOCK_M) * B * Hq,), query blocks fastest.
    """
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
    lse = tl.load(Lse + bh * Lq + offs_m, mask=row_in, other=float("-inf"))
    shift = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(Delta + bh * Lq + offs_m, mask=row_in, other=0.0)
    K += b * stride_kb + hk * stride_kh
    V += b * stride_vb + hk * stride_vh
    mask_ptr = Mask + b * stride_mb + h * stride_mh
    grad_mask_ptr = GradMask + bh * Lq * Lk
    rows = bh * Lq + offs_m
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = Lk
    if CAUSAL:
        hi = tl.minimum(Lk, (pid_m + 1) * BLOCK_M)
        split = tl.minimum(((pid_m * BLOCK_M + 1) // BLOCK_N) * BLOCK_N, hi)
        dq = _dq_range(dq, q, do, shift, delta, K, V, mask_ptr, grad_mask_ptr, offs_m, rows, 0,
                       split, Lq, Lk, stride_kn, stride_kd, stride_vn, stride_vd, stride_mm,
                       stride_mn, qk_scale2, dropout_p, inv_keep, seed, False, MASK_KIND,
                       DROPOUT, GRAD_MASK, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, BLOCK_N,
                       PRECISION)
        dq = _dq_range(dq, q, do, shift, delta, K, V, mask_ptr, grad_mask_ptr, offs_m, rows,
                       split, hi, Lq, Lk, stride_kn, stride_kd, stride_vn, stride_vd, stride_mm,
                       stride_mn, qk_scale2, dropout_p, inv_keep, seed, True, MASK_KIND,
                       DROPOUT, GRAD_MASK, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, BLOCK_N,
                       PRECISION)
    else:
        dq = _dq_range(dq, q, do, shift, delta, K, V, mask_ptr, grad_mask_ptr, offs_m, rows, 0,
                       hi, Lq, Lk, stride_kn, stride_kd, stride_vn, stride_vd, stride_mm,
                       stride_mn, qk_scale2, dropout_p, inv_keep, seed, False, MASK_KIND,
                       DROPOUT, GRAD_MASK, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, BLOCK_N,
                       PRECISION)
    tl.store(GradQ + bh * Lq * HEAD_D + offs_m[:, None] * HEAD_D + offs_d[None, :],
             (dq * scale).to(GradQ.dtype.element_ty),
             mask=row_in[:, None] & (offs_d[None, :] < HEAD_D))


@triton.jit
def dropout_keep_kernel(Out, seed, dropout_p, inv_keep, Lk, total, BLOCK: tl.constexpr):
    """Out (rows, Lk) float32 contiguous: the dropout factor (0 or inv_keep) the attention
    kernels apply to weight (row, key), row = (b * Hq + h) * Lq + i. For tests."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rows = offs // Lk
    keys = offs % Lk
    keep = tl.rand(seed, rows * Lk + keys) >= dropout_p
    tl.store(Out + offs, tl.where(keep, inv_keep, 0.0), mask=offs < total)


# ---------------------------------------------------------------------------------------------
# masked softmax

@autotune(ATTENTION["softmax"], key=["BLOCK", "HAS_MASK"])
@triton.jit
def masked_softmax_forward_kernel(X, Mask, MaskRowOffset, Out, N, mask_col_stride,
                                  HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    """Out[r] = softmax of X[r] over the entries whose mask byte is nonzero; X, Out (R, N)
    contiguous; Mask flat uint8 read at MaskRowOffset[r] + j * mask_col_stride. A row with no
    entry kept is zeros. Grid (R,). Lanes keep their own running max and sum (one pass), then
    a second pass writes."""
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * N
    moff = 0
    if HAS_MASK:
        moff = tl.load(MaskRowOffset + row)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < N
        x = tl.load(x_row + offs, mask=inside, other=float("-inf")).to(tl.float32)
        if HAS_MASK:
            keep = tl.load(Mask + moff + offs * mask_col_stride, mask=inside, other=0)
            x = tl.where(keep != 0, x, float("-inf"))
        m_new = tl.maximum(m, x)
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_shift) + tl.exp(x - m_shift)
        m = m_new
    row_max = tl.max(m, 0)
    if HAS_MASK:
        # nothing kept: shift by 0, the sum is 0 and the row is zeros (torch would give NaN)
        row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    total = tl.sum(s * tl.exp(m - row_max), 0)
    inv = tl.where(total == 0.0, 0.0, 1.0 / tl.where(total == 0.0, 1.0, total))
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < N
        x = tl.load(x_row + offs, mask=inside, other=float("-inf")).to(tl.float32)
        if HAS_MASK:
            keep = tl.load(Mask + moff + offs * mask_col_stride, mask=inside, other=0)
            x = tl.where(keep != 0, x, float("-inf"))
        y = tl.exp(x - row_max) * inv
        tl.store(Out + row * N + offs, y.to(Out.dtype.element_ty), mask=inside)


@autotune(ATTENTION["softmax"], key=["BLOCK"])
@triton.jit
def masked_softmax_backward_kernel(Y, GradY, GradX, N, BLOCK: tl.constexpr):
    """GradX[r] = Y[r] * (GradY[r] - sum(GradY[r] * Y[r])); all (R, N) contiguous. Grid (R,).
    Masked entries have Y = 0, so they get 0 with no mask."""
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < N
        y = tl.load(Y + row * N + offs, mask=inside, other=0.0).to(tl.float32)
        gy = tl.load(GradY + row * N + offs, mask=inside, other=0.0).to(tl.float32)
        acc += y * gy
    dot = tl.sum(acc, 0)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < N
        y = tl.load(Y + row * N + offs, mask=inside, other=0.0).to(tl.float32)
        gy = tl.load(GradY + row * N + offs, mask=inside, other=0.0).to(tl.float32)
        tl.store(GradX + row * N + offs, (y * (gy - dot)).to(GradX.dtype.element_ty),
                 mask=inside)


# ---------------------------------------------------------------------------------------------
# launchers: torch tensors in, kernels launched on the tensors' device; outputs allocated by the
# caller

def _head_block(width):
    return max(16, triton.next_power_of_2(max(width, 1)))


def _philox_seed(seed):
    """The seed as the kernels take it: always 63 bits wide, so it is always passed as int64."""
    return (int(seed) & ((1 << 62) - 1)) | (1 << 62)


def _buckets(lq, lk):
    """The lengths the autotuning is keyed on: powers of two, so that a model whose sequence
    lengths vary does not tune again for every length."""
    return max(16, triton.next_power_of_2(lq)), max(16, triton.next_power_of_2(lk))


def _mask_arguments(mask, q):
    """(tensor, 4 strides, MASK_KIND) of the canonical (B, Hq, Lq, Lk) additive mask or None."""
    if mask is None:
        return q, (0, 0, 0, 0), 0
    strides = tuple(mask.stride())
    kind = 2 if strides[2] == 0 or mask.shape[2] == 1 else 1
    return mask, strides, kind


def attention_forward(q, k, v, mask, causal, scale, dropout_p, seed, out, lse):
    """out (B, Hq, Lq, Dv) q's dtype and lse (B, Hq, Lq) float32, contiguous, written.
    q, k, v, mask as in attention_forward_kernel (any strides)."""
    nb, hq, lq, d = q.shape
    hk, lk, dv = k.shape[1], k.shape[2], v.shape[3]
    mask_t, ms, kind = _mask_arguments(mask, q)
    inv_keep = 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0

    def grid(meta):
        return (triton.cdiv(lq, meta["BLOCK_M"]) * nb * hq,)

    attention_forward_kernel[grid](
        q, k, v, mask_t, out, lse, *q.stride(), *k.stride(), *v.stride(), *ms,
        hq, hq // hk, lq, lk, float(scale) * _LOG2E, float(dropout_p), inv_keep,
        _philox_seed(seed), *_buckets(lq, lk), bool(causal), kind, dropout_p > 0.0, d, dv,
        _head_block(d), _head_block(dv), dot_precision(q, MATMUL))


def attention_backward(grad_out, q, k, v, mask, out, lse, causal, scale, dropout_p, seed,
                       grad_q, grad_k, grad_v, grad_mask=None):
    """grad_q, grad_k, grad_v (contiguous, shapes of q, k, v) written; grad_mask (B, Hq, Lq, Lk)
    contiguous and zero-filled, written if given. grad_out and out (B, Hq, Lq, Dv) contiguous,
    lse (B, Hq, Lq) float32 from attention_forward."""
    nb, hq, lq, d = q.shape
    hk, lk, dv = k.shape[1], k.shape[2], v.shape[3]
    mask_t, ms, kind = _mask_arguments(mask, q)
    inv_keep = 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0
    delta = torch.empty((nb, hq, lq), dtype=torch.float32, device=q.device)
    rows = nb * hq * lq
    block_r = 64
    attention_backward_preprocess_kernel[(triton.cdiv(rows, block_r),)](
        out, grad_out, delta, rows, dv, _head_block(dv), block_r)
    common = (*q.stride(), *k.stride(), *v.stride(), *ms)
    scalars = (lq, lk, float(scale) * _LOG2E, float(scale), float(dropout_p), inv_keep,
               _philox_seed(seed), *_buckets(lq, lk), bool(causal), kind, dropout_p > 0.0)
    precision = dot_precision(q, MATMUL)

    def grid_keys(meta):
        return (triton.cdiv(lk, meta["BLOCK_N"]) * nb * hk,)

    attention_backward_dkdv_kernel[grid_keys](
        q, k, v, mask_t, grad_out, lse, delta, grad_k, grad_v, *common, hk, hq // hk, *scalars,
        d, dv, _head_block(d), _head_block(dv), precision)

    def grid_queries(meta):
        return (triton.cdiv(lq, meta["BLOCK_M"]) * nb * hq,)

    attention_backward_dq_kernel[grid_queries](
        q, k, v, mask_t, grad_out, lse, delta, grad_q, q if grad_mask is None else grad_mask,
        *common, hq, hq // hk, *scalars, grad_mask is not None, d, dv, _head_block(d),
        _head_block(dv), precision)


def dropout_keep(seed, rows, lk, dropout_p, out):
    """out (rows, lk) float32 contiguous: the factor (0 or 1 / (1 - p)) the attention kernels
    apply to the weight of key j in row r = (b * Hq + h) * Lq + i."""
    inv_keep = 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0
    block = 1024
    total = rows * lk
    dropout_keep_kernel[(triton.cdiv(total, block),)](
        out, _philox_seed(seed), float(dropout_p), inv_keep, lk, total, block)


def _softmax_block(n):
    return min(max(triton.next_power_of_2(max(n, 1)), 16), 4096)


def masked_softmax_forward(x, mask, mask_row_offset, mask_col_stride, out):
    """out = masked softmax of each row of x (R, N) (both contiguous); mask flat uint8 (1 = keep)
    read at mask_row_offset[r] (int64, x's device) + j * mask_col_stride, or None."""
    rows, n = x.shape
    has_mask = mask is not None
    masked_softmax_forward_kernel[(rows,)](
        x, mask if has_mask else x, mask_row_offset if has_mask else x, out, n,
        int(mask_col_stride), has_mask, _softmax_block(n))


def masked_softmax_backward(y, grad_y, grad_x):
    """grad_x = y * (grad_y - rowsum(grad_y * y)); all (R, N) contiguous."""
    rows, n = y.shape
    masked_softmax_backward_kernel[(rows,)](y, grad_y, grad_x, n, _softmax_block(n))
