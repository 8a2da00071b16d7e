"""Convolution kernels for the GPU (Triton): forward, gradient of the input, gradient of weight and bias.

The same names as ``kernels/numba/conv.py``. Every convolution is a rank-3 convolution here: the
launchers take torch tensors viewed as (N, C, D, H, W) with any strides (NCDHW, channels_last /
NDHWC, strided views), 3-tuples ``stride``, ``padding`` (before each axis) and ``dilation``:

    x    (N, C_in, D, H, W)
    w    (C_out, C_in / groups, KD, KH, KW)
    out  (N, C_out, OD, OH, OW)      its shape carries the padding after each axis

**One implicit GEMM for the forward and the gradient of the input** (``_conv_gemm_kernel``). Rows
are the destination pixels q of one image grid, columns the destination channels of a group, the
reduction runs over source channels x kernel positions j. Along each spatial axis the source
coordinate is affine, ``q * A + B + j * E``, and the weight index is affine in j:

* forward: q = output pixel, source = input, A = stride, B = -padding, E = dilation, j = k;
* gradient of the input (= transposed convolution's forward): the input pixels are split by their
  residue r modulo the stride (one launch per residue class, ``_phases``); inside a class exactly
  the kernel positions k = k0 + j * step contribute, and the source (grad_output) coordinate is
  q + (r + padding - k0 * dilation) / stride - j * (step * dilation / stride), with integer
  division exact. No multiply is spent on the zeros a strided transposed convolution would insert.

The reduction loop is flat (kernel position x channel block, decoded with scalar arithmetic), so
the compiler pipelines loads across kernel positions; row addresses depend on the kernel position
only through one scalar offset per axis. When a group has few source channels (the RGB stem), a
channel block would be mostly padding, so ``SMALL_K`` instead decodes (channel, kernel position)
per reduction lane: the same tile, every lane useful.

**Gradient of the weight** (``_conv_weight_kernel``): per group, dw[co, ci, k] = sum over pixels p of
dy[co, p] * x[ci, p shifted by k]; rows are output channels, columns input channels at one kernel
position (a scalar per program), the reduction runs over N * output pixels, split into ``splits``
ranges written to a float32 workspace and summed in a fixed order (``_sum_splits_kernel``):
deterministic, no atomics. **Bias gradient**: ``channel_sum``, split the same way.

float16 / bfloat16 are multiplied on tensor cores and accumulated in float32; float32 uses TF32
when ``torch.backends.cudnn.allow_tf32`` is set (as cuDNN does), else full-precision FMA.
"""
import math

import torch
import triton
import triton.language as tl

from ._autotune import autotune
from .configs import CONV

# Pixels per split of the weight gradient's reduction are a multiple of this (>= every BLOCK_K).
_SPLIT_QUANTUM = 128
# Fewest pixels one split may get: below it the partial sums cost more than they parallelise.
_SPLIT_MIN_PIXELS = 256
# Groups with fewer source channels than this use the SMALL_K reduction (see the module doc).
_SMALL_K_CHANNELS = 16


def _next_pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


# Configurations timed per shape at most: each costs a compile on the first call of a process.
_MAX_TUNED = 4


def _fitting(configs, caps, large):
    """Configurations whose tiles fit ``caps`` (axis name -> largest useful block), best first;
    on a large problem the first configuration (the interpreter's small tile) is left out."""
    kept = [c for c in configs if all(c.kwargs[k] <= v for k, v in caps.items())]
    if large and len(kept) > 1 and kept[0] is configs[0]:
        kept = kept[1:]
    return kept[:_MAX_TUNED] or configs[:1]


def _prune_gemm(configs, args):
    """Drop tiles much wider than the matrix they tile (they only add masked lanes)."""
    reduction = args["CK"]
    if reduction < _SMALL_K_CHANNELS:
        reduction *= args["NKD"] * args["NKH"] * args["NKW"]
    caps = {"BLOCK_M": max(16, _next_pow2(args["M"])), "BLOCK_N": max(16, _next_pow2(args["CN"])),
            "BLOCK_K": max(16, _next_pow2(reduction))}
    return _fitting(configs, caps, args["M"] >= 4096 and args["CN"] >= 32)


def _prune_weight(configs, args):
    caps = {"BLOCK_M": max(16, _next_pow2(args["CO"])), "BLOCK_N": max(16, _next_pow2(args["CI"]))}
    return _fitting(configs, caps, args["CO"] >= 32)


# Sizes and offsets are not specialised on 16-divisibility (only strides are, which is what makes
# loads vectors): each new shape would otherwise compile every configuration again.
_GEMM_SIZES = ["M", "CN", "CK", "QD", "QH", "QW", "SD", "SH", "SW", "AD", "AH", "AW", "BD", "BH",
               "BW", "ED", "EH", "EW", "NKD", "NKH", "NKW", "w_off", "d_off"]


@autotune(CONV["gemm"], key=["M", "CN", "CK", "NKD", "NKH", "NKW", "PRECISION"], prune=_prune_gemm)
@triton.jit(do_not_specialize_on_alignment=_GEMM_SIZES)
def _conv_gemm_kernel(
    src, wgt, bias, dst,
    M, CN, CK,
    QD, QH, QW,
    SD, SH, SW,
    AD, AH, AW, BD, BH, BW, ED, EH, EW,
    NKD, NKH, NKW,
    s_n, s_c, s_d, s_h, s_w,
    w_n, w_k, w_jd, w_jh, w_jw, w_g, w_off,
    d_n, d_c, d_qd, d_qh, d_qw, d_off,
    HAS_BIAS: tl.constexpr, SMALL_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dst[n, g*CN + c, q] = sum over source channel k < CK, kernel position j of
    src[n, g*CK + k, q*A + B + j*E] * wgt[w_off + g*w_g + c*w_n + k*w_k + j*w_j] (+ bias[g*CN + c]).

    src: (N, groups*CK, SD, SH, SW) with strides s_*; dst: rows q over (N, QD, QH, QW), element
    offset n*d_n + channel*d_c + q*d_q + d_off. Grid: (row tiles, column tiles, groups)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < CN
    # Row -> (image, qd, qh, qw), once per tile.
    qw = rm % QW
    t = rm // QW
    qh = t % QH
    t = t // QH
    qd = t % QD
    img = t // QD
    cd = qd * AD + BD
    ch = qh * AH + BH
    cw = qw * AW + BW
    src_rows = src + img.to(tl.int64) * s_n + (g * CK) * s_c + (cd * s_d + ch * s_h + cw * s_w)
    w_cols = wgt + w_off + g * w_g + rn * w_n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if SMALL_K:
        # Reduction lanes are (kernel position, channel) pairs, channel fastest.
        k_total = CK * NKD * NKH * NKW
        for k0 in range(0, k_total, BLOCK_K):
            kk = k0 + rk
            k_ok = kk < k_total
            c = kk % CK
            j = kk // CK
            jw = j % NKW
            j = j // NKW
            jh = j % NKH
            jd = j // NKH
            id_ = cd[:, None] + (jd * ED)[None, :]
            ih = ch[:, None] + (jh * EH)[None, :]
            iw = cw[:, None] + (jw * EW)[None, :]
            a_ok = (m_ok[:, None] & k_ok[None, :] & (id_ >= 0) & (id_ < SD) & (ih >= 0)
                    & (ih < SH) & (iw >= 0) & (iw < SW))
            a_cols = c * s_c + jd * (ED * s_d) + jh * (EH * s_h) + jw * (EW * s_w)
            a = tl.load(src_rows[:, None] + a_cols[None, :], mask=a_ok, other=0.0)
            b_rows = c * w_k + jd * w_jd + jh * w_jh + jw * w_jw
            b = tl.load(w_cols[None, :] + b_rows[:, None], mask=k_ok[:, None] & n_ok[None, :],
                        other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
    else:
        # Reduction steps are (kernel position, channel block), channel block fastest: the row
        # addresses change with the kernel position only.
        n_cb = tl.cdiv(CK, BLOCK_K)
        steps = NKD * NKH * NKW * n_cb
        for step in range(0, steps):
            cb = step % n_cb
            j = step // n_cb
            jw = j % NKW
            j = j // NKW
            jh = j % NKH
            jd = j // NKH
            id_ = cd + jd * ED
            ih = ch + jh * EH
            iw = cw + jw * EW
            row_ok = (m_ok & (id_ >= 0) & (id_ < SD) & (ih >= 0) & (ih < SH) & (iw >= 0)
                      & (iw < SW))
            c = cb * BLOCK_K + rk
            c_ok = c < CK
            shift = jd * (ED * s_d) + jh * (EH * s_h) + jw * (EW * s_w)
            a = tl.load(src_rows[:, None] + (shift + c * s_c)[None, :],
                        mask=row_ok[:, None] & c_ok[None, :], other=0.0)
            b_rows = c * w_k + (jd * w_jd + jh * w_jh + jw * w_jw)
            b = tl.load(w_cols[None, :] + b_rows[:, None], mask=c_ok[:, None] & n_ok[None, :],
                        other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias + g * CN + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    d_rows = img.to(tl.int64) * d_n + qd * d_qd + qh * d_qh + qw * d_qw + d_off
    d_cols = (g * CN + rn) * d_c
    tl.store(dst + d_rows[:, None] + d_cols[None, :], acc.to(dst.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@autotune(CONV["weight"], key=["CO", "CI", "P", "KVOL", "PRECISION"], prune=_prune_weight)
@triton.jit(do_not_specialize_on_alignment=["CO", "CI", "P", "KVOL", "KH", "KW", "SPLITS",
                                            "OD", "OH", "OW", "D", "H", "W", "sd", "sh", "sw",
                                            "pd", "ph", "pw", "dd", "dh", "dw", "o_s"])
def _conv_weight_kernel(
    x, dy, out,
    CO, CI, P, KVOL, KH, KW, SPLITS, SPLIT_LEN,
    OD, OH, OW, D, H, W,
    sd, sh, sw, pd, ph, pw, dd, dh, dw,
    x_n, x_c, x_d, x_h, x_w,
    y_n, y_c, y_d, y_h, y_w,
    o_s,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[split, g*CO + co, ci, k] = sum over the split's pixels p of N*OD*OH*OW of
    dy[n, g*CO + co, p] * x[n, g*CI + ci, p*stride - padding + k*dilation].

    out: (SPLITS, groups*CO, CI, KVOL) contiguous (o_s elements per split). Grid: (output-channel
    tiles, KVOL * input-channel tiles, groups * SPLITS)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    g = pid_z // SPLITS
    split = pid_z % SPLITS
    n_cib = tl.cdiv(CI, BLOCK_N)
    kpos = pid_n // n_cib
    cib = pid_n % n_cib
    kw = kpos % KW
    kh = (kpos // KW) % KH
    kd = kpos // (KW * KH)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = cib * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < CO
    n_ok = rn < CI
    dy_rows = dy + (g * CO + rm) * y_c
    x_cols = x + (g * CI + rn) * x_c
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    p_lo = split * SPLIT_LEN
    p_hi = tl.minimum(p_lo + SPLIT_LEN, P)
    for p0 in range(p_lo, p_hi, BLOCK_K):
        p = p0 + rk
        p_ok = p < p_hi
        ow = p % OW
        t = p // OW
        oh = t % OH
        t = t // OH
        od = t % OD
        img = (t // OD).to(tl.int64)
        id_ = od * sd - pd + kd * dd
        ih = oh * sh - ph + kh * dh
        iw = ow * sw - pw + kw * dw
        x_ok = p_ok & (id_ >= 0) & (id_ < D) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(dy_rows[:, None] + (img * y_n + od * y_d + oh * y_h + ow * y_w)[None, :],
                    mask=m_ok[:, None] & p_ok[None, :], other=0.0)
        b = tl.load(x_cols[None, :] + (img * x_n + id_ * x_d + ih * x_h + iw * x_w)[:, None],
                    mask=x_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    o = (out + split.to(tl.int64) * o_s + ((g * CO + rm) * CI)[:, None] * KVOL
         + (rn * KVOL)[None, :] + kpos)
    tl.store(o, acc.to(out.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@autotune(CONV["channel_sum"], key=["C", "P"])
@triton.jit(do_not_specialize_on_alignment=["C", "P", "SPLITS", "QD", "QH", "QW"])
def _channel_sum_kernel(
    t, out, C, P, SPLITS, SPLIT_LEN, QD, QH, QW, t_n, t_c, t_d, t_h, t_w,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """out[split, c] = sum over the split's pixels p of N*QD*QH*QW of t[n, c, p] (float32).
    Grid: (channel tiles, SPLITS)."""
    split = tl.program_id(1)
    rc = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = rc < C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    p_lo = split * SPLIT_LEN
    p_hi = tl.minimum(p_lo + SPLIT_LEN, P)
    for p0 in range(p_lo, p_hi, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_ok = p < p_hi
        qw = p % QW
        r = p // QW
        qh = r % QH
        r = r // QH
        qd = r % QD
        img = (r // QD).to(tl.int64)
        rows = img * t_n + qd * t_d + qh * t_h + qw * t_w
        acc += tl.load(t + rows[:, None] + (rc * t_c)[None, :], mask=p_ok[:, None] & c_ok[None, :],
                       other=0.0).to(tl.float32)
    tl.store(out + split * C + rc, tl.sum(acc, axis=0), mask=c_ok)


@triton.jit
def _sum_splits_kernel(parts, out, SPLITS, L, BLOCK: tl.constexpr):
    """out[i] = sum over s of parts[s, i], s in order (deterministic). parts: (SPLITS, L) float32."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < L
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, SPLITS):
        acc += tl.load(parts + s * L + i, mask=ok, other=0.0)
    tl.store(out + i, acc.to(out.dtype.element_ty), mask=ok)


@triton.jit
def _add_channel_bias_kernel(t, bias, total, C, QD, QH, QW, t_n, t_c, t_d, t_h, t_w,
                             BLOCK: tl.constexpr):
    """t[n, c, q] += bias[c] in place over every element (logical order n, c, qd, qh, qw)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < total
    qw = i % QW
    r = i // QW
    qh = r % QH
    r = r // QH
    qd = r % QD
    r = r // QD
    c = r % C
    img = r // C
    ptr = t + img * t_n + c * t_c + qd * t_d + qh * t_h + qw * t_w
    value = tl.load(ptr, mask=ok).to(tl.float32) + tl.load(bias + c, mask=ok).to(tl.float32)
    tl.store(ptr, value.to(t.dtype.element_ty), mask=ok)


# ------------------------------------------------------------------------------- launchers


def _precision(dtype):
    """tl.dot's input precision: float32 follows cuDNN's TF32 switch, as torch's convolutions do."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def _channels_innermost(t):
    """``t`` (N, C, D, H, W) with the channel axis innermost in memory, copied only when needed and
    only on a GPU. With channels contiguous the reduction (or column) axis of every tile is one
    vector load the compiler can issue asynchronously (cp.async), which a pixel axis decoded by
    division never is; the copy reads and writes the tensor once, a small cost next to a
    convolution that reads it once per kernel position. The interpreter keeps the strides as
    they come, so that the tests exercise every layout in the kernels themselves."""
    if t.device.type != "cuda" or t.shape[1] == 1 or t.stride(1) == 1:
        return t
    return t.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)


def _launch_gemm(src, wgt, bias, dst, groups, cn, ck, rows, src_axes, n_k, w_axes, w_n, w_k, w_g,
                 w_off, d_q, d_off):
    """One implicit-GEMM launch; rows = (N, QD, QH, QW); per-axis tuples (A, B, E) in src_axes."""
    m = math.prod(rows)
    if m == 0:
        return
    (ad, bd, ed), (ah, bh, eh), (aw, bw, ew) = src_axes
    bias = None if bias is None else bias.contiguous()
    small_k = ck < _SMALL_K_CHANNELS

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(cn, meta["BLOCK_N"]), groups)

    _conv_gemm_kernel[grid](
        src, wgt, bias, dst,
        m, cn, ck,
        rows[1], rows[2], rows[3],
        src.shape[2], src.shape[3], src.shape[4],
        ad, ah, aw, bd, bh, bw, ed, eh, ew,
        n_k[0], n_k[1], n_k[2],
        *src.stride(),
        w_n, w_k, w_axes[0], w_axes[1], w_axes[2], w_g, w_off,
        dst.stride(0), dst.stride(1), d_q[0], d_q[1], d_q[2], d_off,
        HAS_BIAS=bias is not None, SMALL_K=small_k, PRECISION=_precision(src.dtype),
    )


def conv_forward(x, w, bias, stride, padding, dilation, groups, out):
    """out = conv(x, w) + bias; writes ``out`` (N, C_out, OD, OH, OW) and returns it."""
    x, w = _channels_innermost(x), _channels_innermost(w)
    c_out, cin_g = w.shape[0], w.shape[1]
    src_axes = [(s, -p, d) for s, p, d in zip(stride, padding, dilation)]
    _launch_gemm(x, w, bias, out, groups, c_out // groups, cin_g,
                 (out.shape[0],) + tuple(out.shape[2:]), src_axes, tuple(w.shape[2:]),
                 w.stride()[2:], w.stride(0), w.stride(1), (c_out // groups) * w.stride(0), 0,
                 out.stride()[2:], 0)
    return out


def _phases(size, kernel, stride, padding, dilation):
    """The residue classes r of input coordinates modulo ``stride`` along one axis, each as
    (r, count of coordinates, first contributing kernel index, its step, how many)."""
    step = stride // math.gcd(stride, dilation)
    for r in range(stride):
        count = max(0, -(-(size - r) // stride))
        k0 = next((k for k in range(min(kernel, step)) if (r + padding - k * dilation) % stride == 0),
                  None)
        n_k = 0 if k0 is None else len(range(k0, kernel, step))
        yield r, count, (k0 or 0), step, n_k


def conv_backward_input(dy, w, stride, padding, dilation, groups, dx, bias=None):
    """dx = gradient of conv(x, w) w.r.t. x for grad_output dy (+ bias[c], which makes this the
    transposed convolution of dy); writes ``dx`` (N, C_in, D, H, W) and returns it."""
    dy, w = _channels_innermost(dy), _channels_innermost(w)
    c_out, cin_g = w.shape[0], w.shape[1]
    cout_g = c_out // groups
    per_axis = [list(_phases(dx.shape[2 + a], w.shape[2 + a], stride[a], padding[a], dilation[a]))
                for a in range(3)]
    for pd_, ph_, pw_ in ((a, b, c) for a in per_axis[0] for b in per_axis[1] for c in per_axis[2]):
        phase = (pd_, ph_, pw_)
        rows = (dx.shape[0],) + tuple(p[1] for p in phase)
        src_axes, w_axes, n_k, d_q = [], [], [], []
        w_off = d_off = 0
        for a, (r, _, k0, step, nk) in enumerate(phase):
            s, p, d = stride[a], padding[a], dilation[a]
            src_axes.append((1, (r + p - k0 * d) // s, -(step * d) // s))
            w_axes.append(step * w.stride(2 + a))
            w_off += k0 * w.stride(2 + a)
            n_k.append(nk)
            d_q.append(s * dx.stride(2 + a))
            d_off += r * dx.stride(2 + a)
        _launch_gemm(dy, w, bias, dx, groups, cin_g, cout_g, rows, src_axes, n_k, w_axes,
                     w.stride(1), w.stride(0), cout_g * w.stride(0), w_off, d_q, d_off)
    return dx


def _splits(pixels, tiles, device):
    """How many pixel ranges a reduction over ``pixels`` is split into, and each one's length."""
    if device.type == "cuda":
        target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 4
    most = max(1, pixels // _SPLIT_MIN_PIXELS)
    splits = max(1, min(most, -(-target // max(1, tiles))))
    length = -(-(-(-pixels // splits)) // _SPLIT_QUANTUM) * _SPLIT_QUANTUM
    return -(-pixels // length), length


def _sum_splits(parts, out):
    total = out.numel()
    block = 1024
    _sum_splits_kernel[(triton.cdiv(total, block),)](parts, out, parts.shape[0], total, BLOCK=block)


def channel_sum(t):
    """sum of t (N, C, D, H, W), any strides, over every axis but 1: a bias gradient, (C,)."""
    n, c = t.shape[:2]
    pixels = n * math.prod(t.shape[2:])
    out = torch.empty((c,), dtype=t.dtype, device=t.device)
    if pixels == 0:
        return out.zero_()
    splits, length = _splits(pixels, triton.cdiv(c, 32), t.device)
    parts = torch.empty((splits, c), dtype=torch.float32, device=t.device)

    def grid(meta):
        return (triton.cdiv(c, meta["BLOCK_C"]), splits)

    _channel_sum_kernel[grid](t, parts, c, pixels, splits, length, *t.shape[2:], *t.stride())
    _sum_splits(parts, out)
    return out


def add_channel_bias(t, bias):
    """t[n, c, ...] += bias[c], in place; t (N, C, D, H, W) with any strides."""
    total = t.numel()
    if total:
        block = 1024
        _add_channel_bias_kernel[(triton.cdiv(total, block),)](
            t, bias.contiguous(), total, t.shape[1], *t.shape[2:], *t.stride(), BLOCK=block)
    return t


def conv_backward_weight(x, dy, w_shape, stride, padding, dilation, groups, want_bias):
    """(dw, db): gradients of conv(x, w) w.r.t. w (shape ``w_shape``, contiguous) and, if
    ``want_bias``, the bias (else None), for grad_output dy."""
    x, dy = _channels_innermost(x), _channels_innermost(dy)
    c_out, cin_g = w_shape[0], w_shape[1]
    cout_g = c_out // groups
    kvol = math.prod(w_shape[2:])
    pixels = dy.shape[0] * math.prod(dy.shape[2:])
    dw = torch.empty(tuple(w_shape), dtype=x.dtype, device=x.device)
    db = channel_sum(dy) if want_bias else None
    if pixels == 0:
        return dw.zero_(), db
    tiles = triton.cdiv(cout_g, 64) * triton.cdiv(cin_g, 64) * kvol * groups
    splits, length = _splits(pixels, tiles, x.device)
    parts = dw if splits == 1 else torch.empty((splits,) + tuple(w_shape), dtype=torch.float32,
                                               device=x.device)

    def grid(meta):
        return (triton.cdiv(cout_g, meta["BLOCK_M"]), kvol * triton.cdiv(cin_g, meta["BLOCK_N"]),
                groups * splits)

    _conv_weight_kernel[grid](
        x, dy, parts,
        cout_g, cin_g, pixels, kvol, w_shape[3], w_shape[4], splits, length,
        *dy.shape[2:], *x.shape[2:],
        *stride, *padding, *dilation,
        *x.stride(), *dy.stride(),
        math.prod(w_shape),
        PRECISION=_precision(x.dtype),
    )
    if splits > 1:
        _sum_splits(parts, dw)
    return dw, db
