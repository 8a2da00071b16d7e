"""The depthwise core: building blocks of every depthwise kernel on the CPU (plain depthwise
convolution, its gradients, and the fused separable kernels), under public names.

Arrays are flat (1-d) NumPy arrays indexed by offsets; a plane is row-major. ``cp`` is the tuple
of convolution parameters ``(sd, sh, sw, pd, ph, pw, dd, dh, dw)`` (stride, low-side padding,
dilation per axis of the rank-3 form D, H, W); ``k_shape`` is ``(KD, KH, KW)``.

The idea that makes every stride and dilation one code path: the window of padded input a band
of output rows reads is copied once into a per-thread scratch, the "phase slab", split by stride
phase: padded element (r, c) of the window goes to

    slab[((r % sh) * sw + c % sw) * rq * wq + (r // sh) * wq + c // sw]

(``rq x wq`` = the window's rows and columns divided by the strides, rounded up). Tap (kh, kw) of
output (oh, ow) then reads phase ((kh*dh) % sh, (kw*dw) % sw) at row oh + (kh*dh)//sh, column
ow + (kw*dw)//sw: with q = oh*wq + ow, every tap is ``slab[offset_t + q]``, one contiguous
stream, whatever the stride. A band of output rows is one ``taps_pass`` over q (nine taps per
pass, FMA-contracted), then its rows are copied out (the wq - OW columns past each row are
junk). Input bytes cross DRAM once (the slab stays in L1/L2), no per-pixel gather, no border
test in the inner loop.

The input gradient is the transposed-stride form of the same thing: padded input row
p = o*sh + kh*dh, so input rows of phase r = p % sh receive only the taps with (kh*dh) % sh == r,
from output row p//sh - (kh*dh)//sh: per phase, a forward correlation of the zero-padded output
gradient with that subset of taps (contiguous streams again), interleaved back into rows.
The weight gradient reads the forward's phase slab: tap t's gradient is the dot product of the
output gradient (copied to row length wq, zeros in the junk columns) with the stream of tap t,
computed by ``dot4``/``dot1`` with float32 (or float64) per-lane partial sums reduced in a fixed
order (reassociation is allowed in those helpers only, _jit.jit_reduce).
"""
import math

import numpy as np

from ._jit import jit_fma, jit_reduce


@jit_fma
def copy_row(dst, d0, src, s0, n):
    """dst[d0:d0 + n] = src[s0:s0 + n] (1-d arrays); the slices let LLVM drop index checks."""
    if n <= 0:
        return
    d = dst[d0:d0 + n]
    s = src[s0:s0 + n]
    for i in range(n):
        d[i] = s[i]


@jit_fma
def zero_row(dst, d0, n):
    if n <= 0:
        return
    d = dst[d0:d0 + n]
    for i in range(n):
        d[i] = 0.0


@jit_fma
def deinterleave(src, s0, step, n, dst, d0, phase_stride):
    """dst[d0 + p*phase_stride + j] = src[s0 + j*step + p] for p < step, j < n: a row split into
    its stride phases. All phases in one loop (for steps 2 and 3) so that LLVM reads the row with
    wide loads and shuffles instead of gathers."""
    s = src[s0:s0 + n * step]
    if step == 2:
        a = dst[d0:d0 + n]
        b = dst[d0 + phase_stride:d0 + phase_stride + n]
        for j in range(n):
            a[j] = s[2 * j]
            b[j] = s[2 * j + 1]
    elif step == 3:
        a = dst[d0:d0 + n]
        b = dst[d0 + phase_stride:d0 + phase_stride + n]
        c = dst[d0 + 2 * phase_stride:d0 + 2 * phase_stride + n]
        for j in range(n):
            a[j] = s[3 * j]
            b[j] = s[3 * j + 1]
            c[j] = s[3 * j + 2]
    else:
        for p in range(step):
            d = dst[d0 + p * phase_stride:d0 + p * phase_stride + n]
            for j in range(n):
                d[j] = s[j * step + p]


def _ceil_div(a, b):
    return -((-a) // b)


ceil_div = jit_fma(_ceil_div)


@jit_fma
def fill_phases(src, s0, h_in, w_in, row0, col0, rows, cols, sh, sw, rq, slab, b0, tmp0):
    """The window rows [row0, row0 + rows) x columns [col0, col0 + cols) of the h_in x w_in plane
    at src[s0], zero outside the plane, into slab[b0:] split by stride phase: element (r, c) at
    slab[b0 + ((c % sw)*sh + r % sh)*rq*wq + (r // sh)*wq + c // sw], wq = ceil(cols / sw).

    Only the part inside the plane is copied, and rows outside it zeroed: the padding columns are
    never written, so the caller zeroes the slab (and the temporary plane at slab[tmp0:], used
    when sw > 1: rows in phase order, then deinterleaved in one pass) once per geometry.
    rq (>= ceil(rows / sh)) is the per-phase row count of the layout, fixed for a geometry.
    """
    wq = ceil_div(cols, sw)
    width = wq * sw
    c_lo = min(max(-col0, 0), width)
    c_hi = max(min(w_in - col0, cols), c_lo)
    base = b0 if sw == 1 else tmp0
    for r in range(rows):
        ih = row0 + r
        d0 = base + ((r % sh) * rq + r // sh) * width
        if ih < 0 or ih >= h_in:
            zero_row(slab, d0, width)
        else:
            copy_row(slab, d0 + c_lo, src, s0 + ih * w_in + col0 + c_lo, c_hi - c_lo)
    if sw > 1:
        deinterleave(slab, tmp0, sw, sh * rq * wq, slab, b0, sh * rq * wq)


@jit_fma
def taps_pass(acc, n, bias, src, offs, wts, ntaps):
    """acc[q] = bias + sum_t wts[t] * src[offs[t] + q] for q < n, summed in tap order.

    Taps go nine (or four, two, one) to a pass, so acc is loaded and stored once per nine taps:
    the loop is then bound by its multiply-adds, not by loads and stores.
    """
    a = acc[0:n]
    for q in range(n):
        a[q] = bias
    t = 0
    while t + 9 <= ntaps:
        w0, w1, w2, w3, w4 = wts[t], wts[t + 1], wts[t + 2], wts[t + 3], wts[t + 4]
        w5, w6, w7, w8 = wts[t + 5], wts[t + 6], wts[t + 7], wts[t + 8]
        s0 = src[offs[t]:offs[t] + n]
        s1 = src[offs[t + 1]:offs[t + 1] + n]
        s2 = src[offs[t + 2]:offs[t + 2] + n]
        s3 = src[offs[t + 3]:offs[t + 3] + n]
        s4 = src[offs[t + 4]:offs[t + 4] + n]
        s5 = src[offs[t + 5]:offs[t + 5] + n]
        s6 = src[offs[t + 6]:offs[t + 6] + n]
        s7 = src[offs[t + 7]:offs[t + 7] + n]
        s8 = src[offs[t + 8]:offs[t + 8] + n]
        for q in range(n):
            v = (((a[q] + w0 * s0[q]) + w1 * s1[q]) + w2 * s2[q]) + w3 * s3[q]
            v = (((v + w4 * s4[q]) + w5 * s5[q]) + w6 * s6[q]) + w7 * s7[q]
            a[q] = v + w8 * s8[q]
        t += 9
    while t + 4 <= ntaps:
        w0, w1, w2, w3 = wts[t], wts[t + 1], wts[t + 2], wts[t + 3]
        s0 = src[offs[t]:offs[t] + n]
        s1 = src[offs[t + 1]:offs[t + 1] + n]
        s2 = src[offs[t + 2]:offs[t + 2] + n]
        s3 = src[offs[t + 3]:offs[t + 3] + n]
        for q in range(n):
            a[q] = (((a[q] + w0 * s0[q]) + w1 * s1[q]) + w2 * s2[q]) + w3 * s3[q]
        t += 4
    while t + 2 <= ntaps:
        w0, w1 = wts[t], wts[t + 1]
        s0 = src[offs[t]:offs[t] + n]
        s1 = src[offs[t + 1]:offs[t + 1] + n]
        for q in range(n):
            a[q] = (a[q] + w0 * s0[q]) + w1 * s1[q]
        t += 2
    if t < ntaps:
        w0 = wts[t]
        s0 = src[offs[t]:offs[t] + n]
        for q in range(n):
            a[q] += w0 * s0[q]


@jit_reduce
def dot1(g, x, n):
    """sum_q g[q] * x[q], q < n: per-lane partial sums in the arrays' dtype, fixed order."""
    s = g.dtype.type(0)
    gs = g[0:n]
    xs = x[0:n]
    for q in range(n):
        s += gs[q] * xs[q]
    return s


@jit_reduce
def dot4(g, x, o0, o1, o2, o3, n):
    """The dot products of g[:n] with x[o0:o0 + n], ..., x[o3:o3 + n] in one pass over g."""
    s0 = g.dtype.type(0)
    s1 = g.dtype.type(0)
    s2 = g.dtype.type(0)
    s3 = g.dtype.type(0)
    gs = g[0:n]
    x0 = x[o0:o0 + n]
    x1 = x[o1:o1 + n]
    x2 = x[o2:o2 + n]
    x3 = x[o3:o3 + n]
    for q in range(n):
        v = gs[q]
        s0 += v * x0[q]
        s1 += v * x1[q]
        s2 += v * x2[q]
        s3 += v * x3[q]
    return s0, s1, s2, s3


@jit_reduce
def total(x, x0, n):
    """sum of x[x0:x0 + n], per-lane partial sums reduced in a fixed order."""
    s = x.dtype.type(0)
    xs = x[x0:x0 + n]
    for q in range(n):
        s += xs[q]
    return s


@jit_fma
def window(rows_out, ow_n, kh_n, kw_n, sh, sw, dh, dw):
    """(rows_in, cols, rq, wq): the padded input window of rows_out x ow_n outputs and its phase
    slab's rows per phase and row length."""
    rows_in = (rows_out - 1) * sh + (kh_n - 1) * dh + 1
    cols = (ow_n - 1) * sw + (kw_n - 1) * dw + 1
    return rows_in, cols, ceil_div(rows_in, sh), ceil_div(cols, sw)


@jit_fma
def slab_layout(band_rows, ow_n, k_shape, cp):
    """(rq, wq, depth_stride): the phase slab layout of bands of up to band_rows output rows, the
    same for every band of a call (fill_phases leaves the padding columns alone)."""
    rows_in, cols, rq, wq = window(band_rows, ow_n, k_shape[1], k_shape[2], cp[1], cp[2], cp[7],
                                   cp[8])
    return rq, wq, cp[1] * cp[2] * rq * wq


@jit_fma
def fill_band(xf, x_chan, in_shape, k_shape, od, oh0, rows_out, ow_n, band_rows, cp, slab):
    """The phase slabs of output rows [oh0, oh0 + rows_out) at output depth od of one channel
    (input planes at xf[x_chan], in_shape (D, H, W)): slab[kd * depth_stride:] per kernel depth
    whose input plane exists (layout of slab_layout(band_rows, ...))."""
    d_in, h_in, w_in = in_shape
    kd_n, kh_n, kw_n = k_shape
    sd, sh, sw, pd, ph, pw, dd, dh, dw = cp
    rows_in, cols, rq_band, wq = window(rows_out, ow_n, kh_n, kw_n, sh, sw, dh, dw)
    rq, wq, depth_stride = slab_layout(band_rows, ow_n, k_shape, cp)
    for kd in range(kd_n):
        i_d = od * sd - pd + kd * dd
        if 0 <= i_d < d_in:
            fill_phases(xf, x_chan + i_d * h_in * w_in, h_in, w_in, oh0 * sh - ph, -pw, rows_in,
                        cols, sh, sw, rq, slab, kd * depth_stride, kd_n * depth_stride)


@jit_fma
def band_offsets(in_d, k_shape, od, ow_n, band_rows, cp, offs, kidx):
    """offs[t]: where tap t's stream starts in the phase slab of fill_band, and kidx[t] its index
    in the flat (KD, KH, KW) kernel, for every tap whose input depth exists, in kernel order.
    Returns the tap count."""
    kd_n, kh_n, kw_n = k_shape
    sd, sh, sw, pd, ph, pw, dd, dh, dw = cp
    rq, wq, depth_stride = slab_layout(band_rows, ow_n, k_shape, cp)
    region = rq * wq
    ntaps = 0
    for kd in range(kd_n):
        i_d = od * sd - pd + kd * dd
        if i_d < 0 or i_d >= in_d:
            continue
        for kh in range(kh_n):
            rh = kh * dh
            base = kd * depth_stride + (rh % sh) * region + (rh // sh) * wq
            for kw in range(kw_n):
                cw = kw * dw
                offs[ntaps] = base + (cw % sw) * sh * region + cw // sw
                kidx[ntaps] = (kd * kh_n + kh) * kw_n + kw
                ntaps += 1
    return ntaps


@jit_fma
def forward_band(xf, x_chan, in_shape, wf, co0, m, k_shape, bias, has_bias, od, oh0, oh1, ow_n,
                 band_rows, cp, slab, acc, offs, kidx, wts, dst, dst_off, chan_stride):
    """Output rows [oh0, oh1) at output depth od of the m output channels co0.. of one input
    channel (input planes at xf[x_chan], in_shape (D, H, W); weight wf flat (C*m, KD, KH, KW)).

    Writes dst[dst_off + j*chan_stride + (oh - oh0)*ow_n + ow] for j < m, every element.
    band_rows: the tallest band of the call (fixes the slab layout). Scratch: slab (zeroed before
    the call's first band), acc (band_scratch_sizes), offs/kidx (int64) and wts (KD*KH*KW).
    """
    rows_out = oh1 - oh0
    rq, wq, depth_stride = slab_layout(band_rows, ow_n, k_shape, cp)
    fill_band(xf, x_chan, in_shape, k_shape, od, oh0, rows_out, ow_n, band_rows, cp, slab)
    flat_n = (rows_out - 1) * wq + ow_n
    ntaps = band_offsets(in_shape[0], k_shape, od, ow_n, band_rows, cp, offs, kidx)
    kvol = k_shape[0] * k_shape[1] * k_shape[2]
    for j in range(m):
        co = co0 + j
        for t in range(ntaps):
            wts[t] = wf[co * kvol + kidx[t]]
        b = bias[co] if has_bias else 0.0
        o = dst_off + j * chan_stride
        if rows_out == 1:
            taps_pass(dst[o:o + ow_n], ow_n, b, slab, offs, wts, ntaps)
            continue
        taps_pass(acc, flat_n, b, slab, offs, wts, ntaps)
        for r in range(rows_out):
            copy_row(dst, o + r * ow_n, acc, r * wq, ow_n)


@jit_fma
def weight_band(xf, x_chan, in_shape, dyf, dy_chan, out_shape, m, k_shape, od, oh0, oh1,
                band_rows, cp, slab, dyw, offs, kidx, part):
    """Adds to part[j*kvol + k] the gradient of kernel element k of output channel j < m of one
    input channel from output rows [oh0, oh1) at depth od of one image: the sum over those
    outputs of dy times the input the tap reads. The m channels' dy planes are at
    dyf[dy_chan + j*vol_out]; out_shape (OD, OH, OW). Scratch: slab (as forward_band), dyw
    (rows*wq), offs/kidx (KD*KH*KW); part float64.

    A band of several rows is one stream of (rows - 1)*wq + OW elements: dy is zero in the
    wq - OW junk columns past each row, which meet real input samples, and 0 * inf is NaN where
    torch forms no product. So a NaN in the result may be junk: callers then take the gradient
    again with bands of one row (no junk columns), which is exact."""
    od_n, oh_n, ow_n = out_shape
    kd_n, kh_n, kw_n = k_shape
    kvol = kd_n * kh_n * kw_n
    rows_out = oh1 - oh0
    rq, wq, depth_stride = slab_layout(band_rows, ow_n, k_shape, cp)
    fill_band(xf, x_chan, in_shape, k_shape, od, oh0, rows_out, ow_n, band_rows, cp, slab)
    ntaps = band_offsets(in_shape[0], k_shape, od, ow_n, band_rows, cp, offs, kidx)
    flat_n = (rows_out - 1) * wq + ow_n
    vol_out = od_n * oh_n * ow_n
    for j in range(m):
        src = dy_chan + j * vol_out + (od * oh_n + oh0) * ow_n
        if rows_out == 1:
            g = dyf[src:src + ow_n]
        else:
            for r in range(rows_out):
                copy_row(dyw, r * wq, dyf, src + r * ow_n, ow_n)
                zero_row(dyw, r * wq + ow_n, wq - ow_n)
            g = dyw
        p0 = j * kvol
        t = 0
        while t + 4 <= ntaps:
            s0, s1, s2, s3 = dot4(g, slab, offs[t], offs[t + 1], offs[t + 2], offs[t + 3],
                                  flat_n)
            part[p0 + kidx[t]] += s0
            part[p0 + kidx[t + 1]] += s1
            part[p0 + kidx[t + 2]] += s2
            part[p0 + kidx[t + 3]] += s3
            t += 4
        while t < ntaps:
            part[p0 + kidx[t]] += dot1(g, slab[offs[t]:], flat_n)
            t += 1


@jit_fma
def _nonfinite_taps(acc, a0, slab, wf, co0, m, k_shape, cp, out_shape, i_d, r_h, r_w, j0, n_j,
                    k0, n_k, a_h, a_w, wq, region):
    """backward_input_band's taps of stride phase (r_h, r_w) whose weight is NaN or infinite,
    added to acc[a0 + j*wq + k] only where the output gradient they read exists (output row
    j0 + j - (kh*dh)//sh in [0, OH), column k0 + k - (kw*dw)//sw in [0, OW)): exactly the
    products torch forms, never 0 * inf with the zero padding."""
    od_n, oh_n, ow_n = out_shape
    kd_n, kh_n, kw_n = k_shape
    sd, sh, sw, pd, ph, pw, dd, dh, dw = cp
    kvol = kd_n * kh_n * kw_n
    for kd in range(kd_n):
        t = i_d + pd - kd * dd
        if t < 0 or t % sd != 0 or t // sd >= od_n:
            continue
        for j in range(m):
            base = (kd * m + j) * region
            for kh in range(kh_n):
                if (kh * dh) % sh != r_h:
                    continue
                rh = (kh * dh) // sh
                j_lo = max(0, rh - j0)
                j_hi = min(n_j, oh_n - j0 + rh)
                for kw in range(kw_n):
                    if (kw * dw) % sw != r_w:
                        continue
                    wt = wf[(co0 + j) * kvol + (kd * kh_n + kh) * kw_n + kw]
                    if math.isfinite(wt):
                        continue
                    cw = (kw * dw) // sw
                    k_lo = max(0, cw - k0)
                    k_hi = min(n_k, ow_n - k0 + cw)
                    off = base + (a_h - rh) * wq + a_w - cw
                    for q in range(j_lo, j_hi):
                        for k in range(k_lo, k_hi):
                            acc[a0 + q * wq + k] += wt * slab[off + q * wq + k]


@jit_fma
def backward_input_band(dyf, dy_chan, out_shape, wf, co0, m, k_shape, in_shape, i_d, ih0, ih1,
                        band_rows, cp, slab, acc, offs, wts, dst, dst_off):
    """Rows [ih0, ih1) of the input gradient at input depth i_d of one channel, from the output
    gradients of its m output channels co0.. (planes at dyf[dy_chan + j*vol_out]); writes
    dst[dst_off + (ih - ih0)*W + iw], every element. Transposed-stride form (module docstring).
    band_rows: the tallest band of the call (fixes the slab layout). Scratch: slab, zeroed before
    the call's first band, and acc (backward_input_scratch_sizes), offs/wts (m*KD*KH*KW)."""
    od_n, oh_n, ow_n = out_shape
    kd_n, kh_n, kw_n = k_shape
    d_in, h_in, w_in = in_shape
    sd, sh, sw, pd, ph, pw, dd, dh, dw = cp
    kvol = kd_n * kh_n * kw_n
    vol_out = od_n * oh_n * ow_n
    a_h = ((kh_n - 1) * dh) // sh
    a_w = ((kw_n - 1) * dw) // sw
    j0 = (ih0 + ph) // sh
    n_j = (ih1 - 1 + ph) // sh + 1 - j0
    k0 = pw // sw
    n_k = (w_in - 1 + pw) // sw + 1 - k0
    rows = n_j + a_h
    wq = n_k + a_w
    region = (band_rows // sh + 2 + a_h) * wq
    # the zero-padded output-gradient windows, one per (kernel depth, output channel)
    for kd in range(kd_n):
        t = i_d + pd - kd * dd
        if t < 0 or t % sd != 0 or t // sd >= od_n:
            continue
        for j in range(m):
            fill_phases(dyf, dy_chan + j * vol_out + (t // sd) * oh_n * ow_n, oh_n, ow_n,
                        j0 - a_h, k0 - a_w, rows, wq, 1, 1, region // wq, slab,
                        (kd * m + j) * region, 0)
    flat_n = (n_j - 1) * wq + n_k
    phase_size = n_j * wq
    for r_h in range(sh):
        for r_w in range(sw):
            # finite taps in one pass over the padded window (0 * w = 0 there); a NaN or
            # infinite weight only where its output position exists (0 * inf would be NaN)
            ntaps = 0
            n_bad = 0
            for kd in range(kd_n):
                t = i_d + pd - kd * dd
                if t < 0 or t % sd != 0 or t // sd >= od_n:
                    continue
                for j in range(m):
                    base = (kd * m + j) * region
                    for kh in range(kh_n):
                        if (kh * dh) % sh != r_h:
                            continue
                        for kw in range(kw_n):
                            if (kw * dw) % sw != r_w:
                                continue
                            wt = wf[(co0 + j) * kvol + (kd * kh_n + kh) * kw_n + kw]
                            if not math.isfinite(wt):
                                n_bad += 1
                                continue
                            offs[ntaps] = (base + (a_h - (kh * dh) // sh) * wq
                                           + a_w - (kw * dw) // sw)
                            wts[ntaps] = wt
                            ntaps += 1
            a0 = (r_h * sw + r_w) * phase_size
            taps_pass(acc[a0:], flat_n, 0.0, slab, offs, wts, ntaps)
            if n_bad > 0:
                _nonfinite_taps(acc, a0, slab, wf, co0, m, k_shape, cp, out_shape, i_d, r_h,
                                r_w, j0, n_j, k0, n_k, a_h, a_w, wq, region)
    # interleave the phases back into rows
    for ih in range(ih0, ih1):
        p = ih + ph
        r_h = p % sh
        row = (p // sh - j0) * wq
        d0 = dst_off + (ih - ih0) * w_in
        if sw == 1:
            copy_row(dst, d0, acc, r_h * phase_size + row, w_in)
            continue
        for r_w in range(sw):
            # iw = K*sw + r_w - pw for K in [k0, k0 + n_k), 0 <= iw < w_in
            k_lo = max(k0, ceil_div(pw - r_w, sw))
            k_hi = min(k0 + n_k, ceil_div(w_in + pw - r_w, sw))
            src = (r_h * sw + r_w) * phase_size + row - k0
            first = r_w - pw
            for k in range(k_lo, k_hi):
                dst[d0 + k * sw + first] = acc[src + k]


def band_scratch_sizes(k_shape, cp, rows_out, ow_n):
    """(slab, acc) element counts of forward_band / weight_band for bands of rows_out rows."""
    kd_n, kh_n, kw_n = k_shape
    sh, sw, dh, dw = cp[1], cp[2], cp[7], cp[8]
    rows_in = (rows_out - 1) * sh + (kh_n - 1) * dh + 1
    cols = (ow_n - 1) * sw + (kw_n - 1) * dw + 1
    rq, wq = _ceil_div(rows_in, sh), _ceil_div(cols, sw)
    plane = sh * sw * rq * wq
    return kd_n * plane + (plane if sw > 1 else 0), rows_out * wq


def backward_input_scratch_sizes(k_shape, cp, m, rows_in_band, w_in):
    """(slab, acc) element counts of backward_input_band for bands of rows_in_band input rows."""
    kd_n, kh_n, kw_n = k_shape
    sh, sw, ph, pw, dh, dw = cp[1], cp[2], cp[4], cp[5], cp[7], cp[8]
    n_j = rows_in_band // sh + 2
    n_k = (w_in - 1 + pw) // sw + 1 - pw // sw
    rows = n_j + ((kh_n - 1) * dh) // sh
    wq = n_k + ((kw_n - 1) * dw) // sw
    return kd_n * m * rows * wq, sh * sw * n_j * wq


@jit_fma
def masked_pass(acc, n, bias, src, s0, shifts, wts, masks, mask0, ntaps):
    """acc[q] = bias + sum_t wts[t] * (src[s0 + q + shifts[t]] if masks[t, mask0 + q] else 0), q < n, in
    tap order: a stride-1 'same' convolution of a whole plane (or volume) read in place, its
    flat index shifted per tap, with the taps that would cross a row or plane edge masked off
    (mask0: where the pass starts in the volume, for a band of rows).
    No padded copy and no copy-out: one stream per tap over the whole plane. The mask selects
    (never multiplies), so a NaN or inf next to the plane cannot leak in."""
    a = acc[0:n]
    zero = src.dtype.type(0)
    for q in range(n):
        a[q] = bias
    t = 0
    while t + 4 <= ntaps:
        w0, w1, w2, w3 = wts[t], wts[t + 1], wts[t + 2], wts[t + 3]
        x0 = src[s0 + shifts[t]:s0 + shifts[t] + n]
        x1 = src[s0 + shifts[t + 1]:s0 + shifts[t + 1] + n]
        x2 = src[s0 + shifts[t + 2]:s0 + shifts[t + 2] + n]
        x3 = src[s0 + shifts[t + 3]:s0 + shifts[t + 3] + n]
        m0 = masks[t, mask0:mask0 + n]
        m1 = masks[t + 1, mask0:mask0 + n]
        m2 = masks[t + 2, mask0:mask0 + n]
        m3 = masks[t + 3, mask0:mask0 + n]
        for q in range(n):
            v = a[q] + w0 * (x0[q] if m0[q] else zero)
            v = v + w1 * (x1[q] if m1[q] else zero)
            v = v + w2 * (x2[q] if m2[q] else zero)
            a[q] = v + w3 * (x3[q] if m3[q] else zero)
        t += 4
    while t < ntaps:
        w0 = wts[t]
        x0 = src[s0 + shifts[t]:s0 + shifts[t] + n]
        m0 = masks[t, mask0:mask0 + n]
        for q in range(n):
            a[q] += w0 * (x0[q] if m0[q] else zero)
        t += 1


@jit_fma
def masked_band(acc, n, bias, src, base, q0, lo, hi, shifts, wts, masks, ntaps, buf):
    """masked_pass over elements [q0, q0 + n) of the volume at src[base], reading in place, or
    through buf (zero-padded, lo + n + hi elements) where the reads would leave src."""
    s0 = base + q0
    if s0 - lo >= 0 and s0 + n + hi <= src.size:
        masked_pass(acc, n, bias, src, s0, shifts, wts, masks, q0, ntaps)
        return
    first = max(0, s0 - lo)
    last = min(src.size, s0 + n + hi)
    zero_row(buf, 0, lo + n + hi)
    copy_row(buf, first - (s0 - lo), src, first, last - first)
    masked_pass(acc, n, bias, buf, lo, shifts, wts, masks, q0, ntaps)
