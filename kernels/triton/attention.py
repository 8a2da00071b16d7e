"""Flash-style attention on the GPU (Triton): the forward kernel, the helpers the backward
(attention_backward.py) shares with it, and their launchers.

Attention works on the canonical 4-d tensors of ``dlkern/ops/attention.py``: q (B, Hq, Lq, D),
k (B, Hk, Lk, D), v (B, Hk, Lk, Dv), any strides; query head h reads key/value head h // group
(GQA); an optional additive float mask read with its own strides, zero where it is broadcast, so a
broadcast mask is never expanded in memory. Causal masking lets query i see key j <= i + offset
(offset 0: top-left, as is_causal; Lk - Lq: bottom-right). A query row that sees no key gives
zeros, as the CPU kernels do.

Forward: one program per (BLOCK_M queries, batch * query head) walks the key blocks with an online
softmax and saves each row's statistics for the backward: the shift m and 1 / l, so that
p = exp(s - m) / l is recomputed exactly as the forward normalised it (a single log-sum-exp
rounded to float32 would carry an error of |m| * 2^-24 into every recomputed p, which saturated
softmaxes, |m| in the hundreds, feel). Scores stay in natural units and s - m is formed before
the conversion to base 2 (exp2((s - m) log2 e)): folding log2 e into the scale instead, as GPU
flash kernels do, rounds scores of several hundred a few times more coarsely than torch does.
Key blocks beyond the causal limit are never visited; a key block that the mask hides entirely
(every bias -inf) is skipped before K and V are loaded.

Dropout keeps a weight when ``tl.rand(seed, (row * Lk + key))`` >= p, row = (b * Hq + h) * Lq + i:
the same Philox counter in forward and backward, so the mask is regenerated, never stored. The
seed comes from torch's generator (drawn by the caller).

Head dims are padded to the next power of two (BLOCK_D, BLOCK_DV) with masked loads. float16 and
bfloat16 inputs accumulate in float32; float32 dots use tf32 or full precision as
precision.dot_precision says (cuBLAS's switch).
"""
import triton
import triton.language as tl

from dlkern.kernels.triton._autotune import autotune
from dlkern.kernels.triton.configs import ATTENTION
from dlkern.kernels.triton.precision import MATMUL, dot_precision

# How the additive mask is read (the MASK_KIND constexpr)
MASK_NONE = tl.constexpr(0)  # no mask
MASK_FULL = tl.constexpr(1)  # any strides
MASK_KEYS = tl.constexpr(2)  # constant along queries (stride 0): one row of keys, broadcast


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
def load_bias(mask_ptr, offs_m, offs_n, Lq, Lk, stride_mm, stride_mn, MASK_KIND: tl.constexpr,
              TRANSPOSED: tl.constexpr):
    """The additive mask of one tile, -inf outside the (Lq, Lk) range; (BLOCK_M, BLOCK_N), or
    (BLOCK_N, BLOCK_M) when TRANSPOSED."""
    if MASK_KIND == MASK_KEYS:
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
def keep(seed, rows, offs_n, Lk, dropout_p):
    """Dropout decision of the (rows, keys) tile: True = kept (probability 1 - p)."""
    counter = rows.to(tl.int64)[:, None] * Lk + offs_n[None, :]
    return tl.rand(seed, counter) >= dropout_p


@triton.jit
def keep_transposed(seed, rows, offs_n, Lk, dropout_p):
    """keep() of the (keys, rows) tile, drawn from the same counters."""
    counter = rows.to(tl.int64)[None, :] * Lk + offs_n[:, None]
    return tl.rand(seed, counter) >= dropout_p


@triton.jit
def causal_limits(start_m, offset, Lk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(split, hi) for the query block starting at start_m: keys >= hi are hidden from every row;
    whole key blocks below split are visible to every row and inside Lk (no causal or bounds
    test)."""
    hi = tl.minimum(Lk, tl.maximum(start_m + BLOCK_M + offset, 0))
    split = tl.minimum(tl.maximum(start_m + offset + 1, 0), hi) // BLOCK_N * BLOCK_N
    return split, hi


@triton.jit
def _forward_block(acc, l_i, m_i, q, k_ptrs, v_ptrs, bias, offs_m, offs_n, rows, Lk, offset,
                   scale, dropout_p, seed, DIAGONAL: tl.constexpr, CHECK_KEYS: tl.constexpr,
                   MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr, NAN_MASKED: tl.constexpr,
                   HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """One key block of the online softmax: (acc, l_i, m_i) updated; bias the mask tile.
    DIAGONAL: apply the causal test; CHECK_KEYS: the block may reach past Lk. Blocks with neither
    and no mask (the bulk of the work) load and scale without any test. NAN_MASKED: NaN scores
    are skipped by the row max, so a row of NaN and -inf only is fully masked (torch's CPU kernel
    on rows shorter than a SIMD vector)."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if CHECK_KEYS or HEAD_D != BLOCK_D:
        k_t = tl.load(k_ptrs, mask=(offs_d[:, None] < HEAD_D) & (offs_n[None, :] < Lk), other=0.0)
    else:
        k_t = tl.load(k_ptrs)
    s = tl.dot(q, k_t, input_precision=PRECISION) * scale
    if MASK_KIND != MASK_NONE:
        s += bias
    if DIAGONAL or CHECK_KEYS:
        visible = offs_n[None, :] < Lk
        if DIAGONAL:
            visible = visible & (offs_n[None, :] <= offs_m[:, None] + offset)
        s = tl.where(visible, s, float("-inf"))
    if NAN_MASKED:
        m_new = tl.maximum(m_i, tl.max(tl.where(s == s, s, float("-inf")), 1))
        s = tl.where(m_new[:, None] == float("-inf"), float("-inf"), s)
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASK_KIND == MASK_NONE and not DIAGONAL and not CHECK_KEYS and not NAN_MASKED:
        m_shift = m_new  # every row has a finite score in this block
    else:
        # A row with no visible key so far keeps m = -inf; shift it by 0 so exp2 gives 0, not NaN
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_shift)
    p = tl.exp(s - m_shift[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if DROPOUT:
        p = tl.where(keep(seed, rows, offs_n, Lk, dropout_p), p, 0.0)
    if CHECK_KEYS or HEAD_DV != BLOCK_DV:
        v = tl.load(v_ptrs, mask=(offs_n[:, None] < Lk) & (offs_dv[None, :] < HEAD_DV), other=0.0)
    else:
        v = tl.load(v_ptrs)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _forward_range(acc, l_i, m_i, q, K, V, mask_ptr, offs_m, rows, lo, hi, Lq, Lk, offset,
                   stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn, scale,
                   dropout_p, seed, DIAGONAL: tl.constexpr, CHECK_KEYS: tl.constexpr,
                   MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr, NAN_MASKED: tl.constexpr,
                   HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = K + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
        v_ptrs = V + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd
        if MASK_KIND == MASK_NONE:
            acc, l_i, m_i = _forward_block(
                acc, l_i, m_i, q, k_ptrs, v_ptrs, 0.0, offs_m, offs_n, rows, Lk, offset,
                scale, dropout_p, seed, DIAGONAL, CHECK_KEYS, MASK_KIND, DROPOUT, NAN_MASKED,
                HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, PRECISION)
        else:
            bias = load_bias(mask_ptr, offs_m, offs_n, Lq, Lk, stride_mm, stride_mn, MASK_KIND,
                             False)
            if tl.max(tl.max(bias, 1), 0) > float("-inf"):  # else the mask hides the block
                acc, l_i, m_i = _forward_block(
                    acc, l_i, m_i, q, k_ptrs, v_ptrs, bias, offs_m, offs_n, rows, Lk, offset,
                    scale, dropout_p, seed, DIAGONAL, CHECK_KEYS, MASK_KIND, DROPOUT,
                    NAN_MASKED, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, PRECISION)
    return acc, l_i, m_i


@autotune(ATTENTION["forward"], key=["q_bucket", "k_bucket", "HEAD_D", "HEAD_DV", "CAUSAL",
                                     "MASK_KIND", "DROPOUT"], prune=_prune_attention)
@triton.jit
def attention_forward_kernel(
        Q, K, V, Mask, Out, Stats,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_mb, stride_mh, stride_mm, stride_mn,
        Hq, group, Lq, Lk, offset, scale, dropout_p, inv_keep, seed, q_bucket, k_bucket,
        CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr,
        NAN_MASKED: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MAX_HEAD: tl.constexpr = 256,
        MIN_HEAD: tl.constexpr = 0):
    """Out (B, Hq, Lq, HEAD_DV) contiguous, q's dtype; Stats (B, Hq, 2, Lq) contiguous float32:
    [.., 0, i] the shift m, [.., 1, i] 1 / l (+inf and 0 for a row that sees no key).
    Grid (cdiv(Lq, BLOCK_M) * B * Hq,), query blocks fastest. q_bucket and k_bucket, the lengths
    rounded up to powers of two, key the autotuning only."""
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
        split, hi = causal_limits(pid_m * BLOCK_M, offset, Lk, BLOCK_M, BLOCK_N)
    else:
        hi = Lk
        split = (Lk // BLOCK_N) * BLOCK_N  # whole key blocks, then the ragged end
    acc, l_i, m_i = _forward_range(
        acc, l_i, m_i, q, K, V, mask_ptr, offs_m, rows, 0, split, Lq, Lk, offset, stride_kn,
        stride_kd, stride_vn, stride_vd, stride_mm, stride_mn, scale, dropout_p, seed,
        False, False, MASK_KIND, DROPOUT, NAN_MASKED, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV,
        BLOCK_N, PRECISION)
    acc, l_i, m_i = _forward_range(
        acc, l_i, m_i, q, K, V, mask_ptr, offs_m, rows, split, hi, Lq, Lk, offset, stride_kn,
        stride_kd, stride_vn, stride_vd, stride_mm, stride_mn, scale, dropout_p, seed,
        CAUSAL, True, MASK_KIND, DROPOUT, NAN_MASKED, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV,
        BLOCK_N, PRECISION)
    seen = l_i > 0.0
    inv_l = tl.where(seen, 1.0 / tl.where(seen, l_i, 1.0), 0.0)
    out = acc * (inv_l * inv_keep)[:, None]
    out_ptrs = Out + bh * Lq * HEAD_DV + offs_m[:, None] * HEAD_DV + offs_dv[None, :]
    tl.store(out_ptrs, out.to(Out.dtype.element_ty),
             mask=row_in[:, None] & (offs_dv[None, :] < HEAD_DV))
    tl.store(Stats + bh * 2 * Lq + offs_m, tl.where(seen, m_i, float("inf")), mask=row_in)
    tl.store(Stats + bh * 2 * Lq + Lq + offs_m, inv_l, mask=row_in)


@triton.jit
def dropout_keep_kernel(Out, seed, dropout_p, inv_keep, Lk, total, BLOCK: tl.constexpr):
    """Out (rows, Lk) float32 contiguous: the dropout factor (0 or inv_keep) the attention
    kernels apply to weight (row, key), row = (b * Hq + h) * Lq + i. For tests."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rows = offs // Lk
    keys = offs % Lk
    kept = tl.rand(seed, rows * Lk + keys) >= dropout_p
    tl.store(Out + offs, tl.where(kept, inv_keep, 0.0), mask=offs < total)


# ---------------------------------------------------------------------------------------------
# launchers: torch tensors in, kernels launched on the tensors' device; outputs allocated by the
# caller. Launch arguments are passed by name.

def head_block(width):
    return max(16, triton.next_power_of_2(max(width, 1)))


def philox_seed(seed):
    """The seed as the kernels take it: always 63 bits wide, so it is always passed as int64."""
    return (int(seed) & ((1 << 62) - 1)) | (1 << 62)


def buckets(lq, lk):
    """The lengths the autotuning is keyed on: powers of two, so that a model whose sequence
    lengths vary does not tune again for every length."""
    return max(16, triton.next_power_of_2(lq)), max(16, triton.next_power_of_2(lk))


def inv_keep(dropout_p):
    return 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0


def strided(prefix, tensor_strides):
    """{stride_<prefix>b, ..h, ..<rows>, ..<cols>: value} of a 4-d tensor's strides."""
    names = {"q": "bhmd", "k": "bhnd", "v": "bhnd", "m": "bhmn"}[prefix]
    return {f"stride_{prefix}{axis}": int(st) for axis, st in zip(names, tensor_strides)}


def mask_arguments(mask, q):
    """(tensor, 4 strides, MASK_KIND value) of the canonical (B, Hq, Lq, Lk) mask or None."""
    if mask is None:
        return q, (0, 0, 0, 0), MASK_NONE.value
    strides = tuple(mask.stride())
    kind = MASK_KEYS if strides[2] == 0 or mask.shape[2] == 1 else MASK_FULL
    return mask, strides, kind.value


def attention_forward(q, k, v, mask, causal, offset, scale, dropout_p, seed, nan_masked, out,
                      stats):
    """out (B, Hq, Lq, Dv) q's dtype and stats (B, Hq, 2, Lq) float32, contiguous, written.
    q, k, v, mask as in attention_forward_kernel (any strides)."""
    nb, hq, lq, d = q.shape
    hk, lk, dv = k.shape[1], k.shape[2], v.shape[3]
    mask_t, mask_strides, kind = mask_arguments(mask, q)
    q_bucket, k_bucket = buckets(lq, lk)

    def grid(meta):
        return (triton.cdiv(lq, meta["BLOCK_M"]) * nb * hq,)

    attention_forward_kernel[grid](
        Q=q, K=k, V=v, Mask=mask_t, Out=out, Stats=stats,
        **strided("q", q.stride()), **strided("k", k.stride()), **strided("v", v.stride()),
        **strided("m", mask_strides),
        Hq=hq, group=hq // hk, Lq=lq, Lk=lk, offset=int(offset), scale=float(scale),
        dropout_p=float(dropout_p),
        inv_keep=inv_keep(dropout_p), seed=philox_seed(seed), q_bucket=q_bucket,
        k_bucket=k_bucket, CAUSAL=bool(causal), MASK_KIND=kind, DROPOUT=dropout_p > 0.0,
        NAN_MASKED=bool(nan_masked), HEAD_D=d, HEAD_DV=dv, BLOCK_D=head_block(d),
        BLOCK_DV=head_block(dv), PRECISION=dot_precision(q, MATMUL))


def dropout_keep(seed, rows, lk, dropout_p, out):
    """out (rows, lk) float32 contiguous: the factor (0 or 1 / (1 - p)) the attention kernels
    apply to the weight of key j in row r = (b * Hq + h) * Lq + i."""
    block = 1024
    total = rows * lk
    dropout_keep_kernel[(triton.cdiv(total, block),)](
        Out=out, seed=philox_seed(seed), dropout_p=float(dropout_p),
        inv_keep=inv_keep(dropout_p), Lk=lk, total=total, BLOCK=block)
