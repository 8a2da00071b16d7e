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
  residue r modulo the stride (``PHASED``: one slice of the launch grid per residue class, the
  class's plan computed in the kernel by ``_axis_plan``); inside a class exactly the kernel
  positions k = k0 + j * step contribute (step = stride / gcd(stride, dilation)), and the source
  (grad_output) coordinate is q + (r + padding - k0 * dilation) / stride - j * (step * dilation /
  stride), with exact integer divisions. No multiply is spent on the zeros a strided transposed
  convolution would insert, and all classes share one launch (enough programs to fill the GPU).

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

Layouts: the kernels take any strides. On a GPU the operands they read (input, grad_output,
weight) are first given channels-innermost memory if they lack it (``_channels_innermost``), so
that tiles load as vectors; outputs are written straight into the caller's layout. Autotuning
(``configs.CONV``) times at most ``_MAX_TUNED`` configurations that fit a shape, and Triton caches
the choice on disk.
"""
import math

import torch
import triton
import triton.language as tl

from ._autotune import autotune
from ._launch import named
from .configs import CONV
from .precision import CUDNN, dot_precision

# Pixels per split of the weight gradient's reduction are a multiple of this (>= every BLOCK_K).
_SPLIT_QUANTUM = 128
# Fewest pixels one split may get: below it the partial sums cost more than they parallelise.
_SPLIT_MIN_PIXELS = 256
# Groups with fewer source channels than this use the SMALL_K reduction (see the module doc).
_SMALL_K_CHANNELS = 16


def _next_pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


# Configurations timed per shape at most: each costs a compile on the first call of a process.
_MAX_TUNED = 3


def _quick_bench(kernel_call, quantiles):
    """Autotuning timer: 25 ms of repetitions per configuration (Triton's default is 100) is
    plenty for kernels of 0.01-1 ms and keeps a first call with new shapes short."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


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
        reduction *= args["KT"]
    caps = {"BLOCK_M": max(16, _next_pow2(args["M_MAX"])),
            "BLOCK_N": max(16, _next_pow2(args["CN"])), "BLOCK_K": max(16, _next_pow2(reduction))}
    return _fitting(configs, caps, args["M_MAX"] >= 4096 and args["CN"] >= 32)


def _prune_weight(configs, args):
    caps = {"BLOCK_M": max(16, _next_pow2(args["CO"])), "BLOCK_N": max(16, _next_pow2(args["CI"]))}
    return _fitting(configs, caps, args["CO"] >= 32)


@triton.jit
def _axis_plan(r, size, kernel, stride, padding, dilation, step, PHASED: tl.constexpr):
    """One spatial axis of the implicit GEMM: (rows Q, source per row A, source offset B, source per
    kernel step E, first kernel index, kernel index per step, kernel steps, destination per row,
    destination offset). Forward: rows are the output pixels. PHASED (input gradient): rows are the
    input pixels r + stride*q of residue class r; only kernel indices k0 + j*step contribute."""
    if PHASED:
        rows = (size - r + stride - 1) // stride
        k_first = kernel + step  # none yet
        for k in range(0, step):
            hit = ((r + padding - k * dilation) % stride == 0) & (k_first == kernel + step)
            k_first = tl.where(hit, k, k_first)
        n_k = tl.where(k_first < kernel, (kernel - k_first + step - 1) // step, 0)
        k_first = tl.where(k_first < kernel, k_first, 0)
        # Exact divisions (truncating division is safe on them).
        offset = (r + padding - k_first * dilation) // stride
        per_step = -((step * dilation) // stride)
        return rows, 1, offset, per_step, k_first, step, n_k, stride, r
    else:
        return size, stride, -padding, dilation, 0, 1, kernel, 1, 0


# Sizes and parameters are not specialised on 16-divisibility (only strides are, which is what makes
# loads vectors): each new shape would otherwise compile every configuration again.
_GEMM_SIZES = ["N_IMG", "M_MAX", "CN", "CK", "KT", "N_PHASES", "XD", "XH", "XW", "SD", "SH", "SW",
               "KD", "KH", "KW", "STD", "STH", "STW", "PD", "PH", "PW", "DD", "DH", "DW", "STEPD",
               "STEPH", "STEPW"]


@autotune(CONV["gemm"], key=["M_MAX", "CN", "CK", "KT", "PHASED", "PRECISION"], prune=_prune_gemm,
          do_bench=_quick_bench)
@triton.jit(do_not_specialize_on_alignment=_GEMM_SIZES)
def _conv_gemm_kernel(
    src, wgt, bias, dst,
    N_IMG, M_MAX, CN, CK, KT, N_PHASES,
    XD, XH, XW,
    SD, SH, SW,
    KD, KH, KW,
    STD, STH, STW, PD, PH, PW, DD, DH, DW, STEPD, STEPH, STEPW,
    s_n, s_c, s_d, s_h, s_w,
    w_n, w_k, w_d, w_h, w_w, w_g,
    d_n, d_c, d_d, d_h, d_w,
    HAS_BIAS: tl.constexpr, SMALL_K: tl.constexpr, PHASED: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dst[n, g*CN + c, q] = sum over source channel k < CK and kernel step j of
    src[n, g*CK + k, q*A + B + j*E] * wgt[g*w_g + c*w_n + k*w_k + (k0 + j*step)*w_spatial]
    (+ bias[g*CN + c]), per axis as planned by _axis_plan.

    Forward: src = x (N, groups*CK, SD, SH, SW), dst = out (N, groups*CN, XD, XH, XW), rows are
    output pixels; w_n, w_k = weight strides of C_out, C_in. PHASED: src = grad_output, dst = dx
    (sizes X), rows are the input pixels of one residue class modulo the stride; w_n, w_k =
    weight strides of C_in, C_out. Grid: (row tiles of the largest class, column tiles,
    groups * N_PHASES)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    g = pid_z // N_PHASES
    phase = pid_z % N_PHASES
    qd_n, ad, bd, ed, kd0, kds, nkd, dmd, rd = _axis_plan(phase // (STH * STW), XD, KD, STD, PD, DD,
                                                          STEPD, PHASED)
    qh_n, ah, bh, eh, kh0, khs, nkh, dmh, rh = _axis_plan((phase // STW) % STH, XH, KH, STH, PH, DH,
                                                          STEPH, PHASED)
    qw_n, aw, bw, ew, kw0, kws, nkw, dmw, rw = _axis_plan(phase % STW, XW, KW, STW, PW, DW, STEPW,
                                                          PHASED)
    m = N_IMG * qd_n * qh_n * qw_n
    if pid_m * BLOCK_M >= m:
        return
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < m
    n_ok = rn < CN
    # Row -> (image, qd, qh, qw), once per tile.
    qw = rm % qw_n
    t = rm // qw_n
    qh = t % qh_n
    t = t // qh_n
    qd = t % qd_n
    img = t // qd_n
    cd = qd * ad + bd
    ch = qh * ah + bh
    cw = qw * aw + bw
    src_rows = src + img.to(tl.int64) * s_n + (g * CK) * s_c + (cd * s_d + ch * s_h + cw * s_w)
    w_cols = wgt + (g * w_g + kd0 * w_d + kh0 * w_h + kw0 * w_w) + rn * w_n
    w_jd = kds * w_d
    w_jh = khs * w_h
    w_jw = kws * w_w
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if SMALL_K:
        # Reduction lanes are (kernel position, channel) pairs, channel fastest.
        k_total = CK * nkd * nkh * nkw
        for k0 in range(0, k_total, BLOCK_K):
            kk = k0 + rk
            k_ok = kk < k_total
            c = kk % CK
            j = kk // CK
            jw = j % nkw
            j = j // nkw
            jh = j % nkh
            jd = j // nkh
            id_ = cd[:, None] + (jd * ed)[None, :]
            ih = ch[:, None] + (jh * eh)[None, :]
            iw = cw[:, None] + (jw * ew)[None, :]
            a_ok = (m_ok[:, None] & k_ok[None, :] & (id_ >= 0) & (id_ < SD) & (ih >= 0)
                    & (ih < SH) & (iw >= 0) & (iw < SW))
            a_cols = c * s_c + jd * (ed * s_d) + jh * (eh * s_h) + jw * (ew * s_w)
            a = tl.load(src_rows[:, None] + a_cols[None, :], mask=a_ok, other=0.0)
            b_rows = c * w_k + jd * w_jd + jh * w_jh + jw * w_jw
            b = tl.load(w_cols[None, :] + b_rows[:, None], mask=k_ok[:, None] & n_ok[None, :],
                        other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
    else:
        # Reduction steps are (kernel position, channel block), channel block fastest: the row
        # addresses change with the kernel position only.
        n_cb = tl.cdiv(CK, BLOCK_K)
        steps = nkd * nkh * nkw * n_cb
        for step in range(0, steps):
            cb = step % n_cb
            j = step // n_cb
            jw = j % nkw
            j = j // nkw
            jh = j % nkh
            jd = j // nkh
            id_ = cd + jd * ed
            ih = ch + jh * eh
            iw = cw + jw * ew
            row_ok = (m_ok & (id_ >= 0) & (id_ < SD) & (ih >= 0) & (ih < SH) & (iw >= 0)
                      & (iw < SW))
            c = cb * BLOCK_K + rk
            c_ok = c < CK
            shift = jd * (ed * s_d) + jh * (eh * s_h) + jw * (ew * s_w)
            a = tl.load(src_rows[:, None] + (shift + c * s_c)[None, :],
                        mask=row_ok[:, None] & c_ok[None, :], other=0.0)
            b_rows = c * w_k + (jd * w_jd + jh * w_jh + jw * w_jw)
            b = tl.load(w_cols[None, :] + b_rows[:, None], mask=c_ok[:, None] & n_ok[None, :],
                        other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias + g * CN + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    d_rows = (img.to(tl.int64) * d_n + (qd * dmd + rd) * d_d + (qh * dmh + rh) * d_h
              + (qw * dmw + rw) * d_w)
    d_cols = (g * CN + rn) * d_c
    tl.store(dst + d_rows[:, None] + d_cols[None, :], acc.to(dst.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@autotune(CONV["weight"], key=["CO", "CI", "P", "KVOL", "PRECISION"], prune=_prune_weight,
          do_bench=_quick_bench)
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


def _prune_channel_sum(configs, args):
    """One configuration, by layout: no timing needed for a kernel this small (a bias gradient)."""
    pick = max if args["t_c"] == 1 else min  # channels contiguous: wide channel tiles
    return [pick(configs, key=lambda c: c.kwargs["BLOCK_C"])]


@autotune(CONV["channel_sum"], key=["C", "P", "t_c"], prune=_prune_channel_sum)
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


def _launch_gemm(src, wgt, bias, dst, groups, cn, ck, w_n, w_k, stride, padding, dilation,
                 phased):
    """One implicit-GEMM launch over every group and (``phased``) every residue class."""
    n_img = dst.shape[0]
    kernel = tuple(wgt.shape[2:])
    if phased:
        sizes = tuple(dst.shape[2:])
        steps = tuple(s // math.gcd(s, d) for s, d in zip(stride, dilation))
        phases = math.prod(stride)
        rows = n_img * math.prod(-(-x // s) for x, s in zip(sizes, stride))
        taps = math.prod(-(-k // st) for k, st in zip(kernel, steps))
    else:
        sizes, steps, phases = tuple(dst.shape[2:]), (1, 1, 1), 1
        rows, taps = n_img * math.prod(sizes), math.prod(kernel)
    if rows == 0:
        return
    bias = None if bias is None else bias.contiguous()

    def grid(meta):
        return (triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(cn, meta["BLOCK_N"]),
                groups * phases)

    _conv_gemm_kernel[grid](
        src=src, wgt=wgt, bias=bias, dst=dst,
        N_IMG=n_img, M_MAX=rows, CN=cn, CK=ck, KT=taps, N_PHASES=phases,
        **named("XD XH XW", sizes), **named("SD SH SW", src.shape[2:]),
        **named("KD KH KW", kernel), **named("STD STH STW", stride),
        **named("PD PH PW", padding), **named("DD DH DW", dilation),
        **named("STEPD STEPH STEPW", steps),
        **named("s_n s_c s_d s_h s_w", src.stride()),
        w_n=w_n, w_k=w_k, **named("w_d w_h w_w", wgt.stride()[2:]),
        w_g=(ck if phased else cn) * wgt.stride(0),
        **named("d_n d_c d_d d_h d_w", dst.stride()),
        HAS_BIAS=bias is not None, SMALL_K=ck < _SMALL_K_CHANNELS, PHASED=phased,
        PRECISION=dot_precision(src, CUDNN),
    )


def conv_forward(x, w, bias, stride, padding, dilation, groups, out):
    """out = conv(x, w) + bias; writes ``out`` (N, C_out, OD, OH, OW) and returns it."""
    x, w = _channels_innermost(x), _channels_innermost(w)
    c_out, cin_g = w.shape[0], w.shape[1]
    _launch_gemm(x, w, bias, out, groups, c_out // groups, cin_g, w.stride(0), w.stride(1),
                 stride, padding, dilation, phased=False)
    return out


def conv_backward_input(dy, w, stride, padding, dilation, groups, dx, bias=None):
    """dx = gradient of conv(x, w) w.r.t. x for grad_output dy (+ bias[c], which makes this the
    transposed convolution of dy); writes ``dx`` (N, C_in, D, H, W) and returns it."""
    dy, w = _channels_innermost(dy), _channels_innermost(w)
    c_out, cin_g = w.shape[0], w.shape[1]
    _launch_gemm(dy, w, bias, dx, groups, cin_g, c_out // groups, w.stride(1), w.stride(0),
                 stride, padding, dilation, phased=True)
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
    _sum_splits_kernel[(triton.cdiv(total, block),)](parts=parts, out=out, SPLITS=parts.shape[0],
                                                     L=total, BLOCK=block)


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

    _channel_sum_kernel[grid](t=t, out=parts, C=c, P=pixels, SPLITS=splits, SPLIT_LEN=length,
                              **named("QD QH QW", t.shape[2:]),
                              **named("t_n t_c t_d t_h t_w", t.stride()))
    _sum_splits(parts, out)
    return out


def add_channel_bias(t, bias):
    """t[n, c, ...] += bias[c], in place; t (N, C, D, H, W) with any strides."""
    total = t.numel()
    if total:
        block = 1024
        _add_channel_bias_kernel[(triton.cdiv(total, block),)](
            t=t, bias=bias.contiguous(), total=total, C=t.shape[1], **named("QD QH QW", t.shape[2:]),
            **named("t_n t_c t_d t_h t_w", t.stride()), BLOCK=block)
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
        x=x, dy=dy, out=parts,
        CO=cout_g, CI=cin_g, P=pixels, KVOL=kvol, KH=w_shape[3], KW=w_shape[4], SPLITS=splits,
        SPLIT_LEN=length,
        **named("OD OH OW", dy.shape[2:]), **named("D H W", x.shape[2:]),
        **named("sd sh sw", stride), **named("pd ph pw", padding), **named("dd dh dw", dilation),
        **named("x_n x_c x_d x_h x_w", x.stride()), **named("y_n y_c y_d y_h y_w", dy.stride()),
        o_s=math.prod(w_shape),
        PRECISION=dot_precision(x, CUDNN),
    )
    if splits > 1:
        _sum_splits(parts, dw)
    return dw, db
