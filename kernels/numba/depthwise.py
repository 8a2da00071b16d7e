"""Depthwise convolution kernels for the CPU (groups == C_in, any channel multiplier m).

Rank-3 canonical form, C-contiguous NumPy arrays:

    x    (N, C, D, H, W)              input; 1-d and 2-d convolutions have D = H = 1 (and W for 1-d)
    w    (C*m, 1, KD, KH, KW)         output channel c*m + j reads input channel c
    out  (N, C*m, OD, OH, OW)         its shape gives the output size (asymmetric 'same' padding)

``padding`` is the padding before the first element of each axis.

A depthwise convolution does KD*KH*KW multiply-adds per output element and reads each input once:
it is memory-bound, so the kernels are direct loops that touch DRAM once per element, and the
work per element must stay small enough to hide behind the memory traffic. The trick that keeps
the inner loops long and vectorised: with unit strides, output and input planes flattened differ
by a constant shift per kernel tap, so a band of output rows is one ``_taps_pass``
(``acc[q] = bias + sum_t w[t] * src[q + shift_t]``, nine taps per pass, in tap order) instead of
one short loop per row and tap.

* forward, unit strides, output rows as wide as input rows ('same'): straight from the input
  plane (``_direct_rows``); the few columns within the padding width of a row edge, where the
  flat shift reads across the edge, are recomputed exactly afterwards.
* forward, otherwise: the rows a tile needs are copied into a per-thread zero-padded buffer
  (the "slab", in L1/L2) so that no loop checks borders; unit strides then take one flat pass
  over the slab's row width (the columns past the output width are dropped), other strides row
  loops.
* gradient of the input: prange over (image, input channel); the item owns its input plane (no
  two threads write one element). With m == 1 and a 'same' convolution it is the forward kernel
  on the flipped kernel; with unit strides a gather (the forward of the padded gradient planes of
  the m output channels with the flipped kernel, one _taps_pass); otherwise a scatter into a
  padded plane buffer whose interior is copied out.
* gradient of weight (and bias): prange over output channels. A dot product does not vectorise
  without fastmath (its sum is one serial chain), so each tap accumulates element-wise into 256
  running sums per tap (``_tap_accumulate``), reduced in float64 once per channel.

prange runs over the outermost independent items only; per-thread scratch is allocated by the
Python wrappers and indexed by numba.get_thread_id(). fastmath is off (_jit.JIT_OPTIONS), so the
multiply-adds compile to separate vmulps/vaddps on ymm registers, not FMAs.

``_forward_tile`` computes a tile of output rows of one channel into any flat destination; the
fused depthwise-separable kernels (separable.py) call it for their cache-resident tiles.
"""
import numba
import numpy as np

from ._jit import jit, jit_parallel


@jit
def _copy_row(dst, d0, src, s0, n):
    """dst[d0:d0 + n] = src[s0:s0 + n] (1-d arrays); the slices let LLVM drop index checks."""
    if n <= 0:
        return
    d = dst[d0:d0 + n]
    s = src[s0:s0 + n]
    for i in range(n):
        d[i] = s[i]


@jit
def _zero_row(dst, d0, n):
    if n < 8:
        # the padding columns: a few elements, not worth a vector loop's set-up
        for i in range(n):
            dst[d0 + i] = 0.0
        return
    d = dst[d0:d0 + n]
    for i in range(n):
        d[i] = 0.0


@jit
def _fill(src, s0, h_in, w_in, row0, col0, rows, width, buf, b0):
    """buf[b0 + r*width + s] = src[s0 + (row0 + r)*w_in + col0 + s], or 0 outside the h_in x w_in
    plane.

    src and buf are 1-d; r < rows, s < width.
    """
    c_lo = min(max(-col0, 0), width)
    c_hi = max(min(w_in - col0, width), c_lo)
    for r in range(rows):
        d0 = b0 + r * width
        ih = row0 + r
        if ih < 0 or ih >= h_in:
            _zero_row(buf, d0, width)
            continue
        _zero_row(buf, d0, c_lo)
        _copy_row(buf, d0 + c_lo, src, s0 + ih * w_in + col0 + c_lo, c_hi - c_lo)
        _zero_row(buf, d0 + c_hi, width - c_hi)


@jit
def _taps_pass(acc, n, bias, slab, offs, wts, ntaps):
    """acc[q] = bias + sum_t wts[t] * slab[offs[t] + q] for q < n, summed in tap order.

    Taps go nine (or four) to a pass, so acc is loaded and stored once per nine taps (the loop is
    bound by loads and stores, not arithmetic); the order of the additions is that of one tap per
    pass.
    """
    a = acc[0:n]
    for q in range(n):
        a[q] = bias
    t = 0
    while t + 9 <= ntaps:
        # a 3x3 kernel in one pass: nine input streams, acc stored once
        w0, w1, w2, w3, w4 = wts[t], wts[t + 1], wts[t + 2], wts[t + 3], wts[t + 4]
        w5, w6, w7, w8 = wts[t + 5], wts[t + 6], wts[t + 7], wts[t + 8]
        s0 = slab[offs[t]:offs[t] + n]
        s1 = slab[offs[t + 1]:offs[t + 1] + n]
        s2 = slab[offs[t + 2]:offs[t + 2] + n]
        s3 = slab[offs[t + 3]:offs[t + 3] + n]
        s4 = slab[offs[t + 4]:offs[t + 4] + n]
        s5 = slab[offs[t + 5]:offs[t + 5] + n]
        s6 = slab[offs[t + 6]:offs[t + 6] + n]
        s7 = slab[offs[t + 7]:offs[t + 7] + n]
        s8 = slab[offs[t + 8]:offs[t + 8] + n]
        for q in range(n):
            v = (((a[q] + w0 * s0[q]) + w1 * s1[q]) + w2 * s2[q]) + w3 * s3[q]
            v = (((v + w4 * s4[q]) + w5 * s5[q]) + w6 * s6[q]) + w7 * s7[q]
            a[q] = v + w8 * s8[q]
        t += 9
    while t + 4 <= ntaps:
        w0, w1, w2, w3 = wts[t], wts[t + 1], wts[t + 2], wts[t + 3]
        s0 = slab[offs[t]:offs[t] + n]
        s1 = slab[offs[t + 1]:offs[t + 1] + n]
        s2 = slab[offs[t + 2]:offs[t + 2] + n]
        s3 = slab[offs[t + 3]:offs[t + 3] + n]
        for q in range(n):
            a[q] = (((a[q] + w0 * s0[q]) + w1 * s1[q]) + w2 * s2[q]) + w3 * s3[q]
        t += 4
    while t + 2 <= ntaps:
        w0, w1 = wts[t], wts[t + 1]
        s0 = slab[offs[t]:offs[t] + n]
        s1 = slab[offs[t + 1]:offs[t + 1] + n]
        for q in range(n):
            a[q] = (a[q] + w0 * s0[q]) + w1 * s1[q]
        t += 2
    if t < ntaps:
        w0 = wts[t]
        s0 = slab[offs[t]:offs[t] + n]
        for q in range(n):
            a[q] += w0 * s0[q]


# Lanes of the running sums of the weight gradient: one chunk of a plane per pass, in L1.
_LANES = 256


@jit
def _tap_accumulate(g, src, offs, ntaps, n, part, p0):
    """part[p0 + t*_LANES + l] += sum over q = l (mod _LANES), q < n, of g[q] * src[offs[t] + q].

    Dot products without fastmath do not vectorise (the sum is one serial chain); running sums
    in _LANES lanes do (an element-wise loop), reduced once per channel by _lanes_sum.
    """
    for q0 in range(0, n, _LANES):
        cn = min(_LANES, n - q0)
        gs = g[q0:q0 + cn]
        for t in range(ntaps):
            xs = src[offs[t] + q0:offs[t] + q0 + cn]
            pt = part[p0 + t * _LANES:p0 + t * _LANES + cn]
            for lane in range(cn):
                pt[lane] += gs[lane] * xs[lane]


@jit
def _lanes_sum(part, p0):
    s = 0.0
    for lane in range(_LANES):
        s += part[p0 + lane]
    return s


@jit
def _direct_rows(xf, x_chan, d_in, h_in, w_in, wf, co, kd_n, kh_n, kw_n, b, od, oh0, oh1,
                 sd, pd, ph, pw, dd, dh, dw, dst, d0, offs, wts):
    """Unit strides and output rows as wide as input rows ('same' padding): output rows [oh0, oh1)
    of output channel co straight from the input, no padded copy. dst[d0 + (oh - oh0)*w_in + ow].

    Over a band of rows where the same kernel rows are inside the input, output and input planes
    flattened differ by a constant shift per tap: one _taps_pass per band. Its first and last
    columns would read across a row edge (where the padding is), so the columns within the
    padding width of an edge are recomputed: the few input columns they read are copied
    transposed (a column becomes a contiguous vector), which makes each edge column one
    _taps_pass down the rows.
    """
    kvol = kd_n * kh_n * kw_n
    plane = h_in * w_in
    left = min(pw, w_in)
    right = min(max(0, (kw_n - 1) * dw - pw), w_in)
    if left + right >= w_in:
        # narrow rows: every column is an edge column
        left = w_in
        right = 0
    # input columns the edge columns read: [0, n_lo) and [w_in - n_hi, w_in)
    n_lo = min(w_in, max(0, left - pw + (kw_n - 1) * dw))
    n_hi = min(w_in, max(0, right + pw))
    slots = n_lo + n_hi
    ih_lo = max(0, oh0 - ph)
    ih_hi = max(ih_lo, min(h_in, oh1 - ph + (kh_n - 1) * dh))
    rows_t = ih_hi - ih_lo
    cols = np.empty(kd_n * slots * rows_t + (oh1 - oh0), dtype=wf.dtype)
    colbuf = cols[kd_n * slots * rows_t:]
    for kd in range(kd_n):
        i_d = od * sd - pd + kd * dd
        if i_d < 0 or i_d >= d_in:
            continue
        for slot in range(slots):
            iw = slot if slot < n_lo else w_in - n_hi + slot - n_lo
            src = x_chan + (i_d * h_in + ih_lo) * w_in + iw
            base = (kd * slots + slot) * rows_t
            for r in range(rows_t):
                cols[base + r] = xf[src + r * w_in]
    oh = oh0
    while oh < oh1:
        band_end = oh1
        for kh in range(kh_n):
            for edge in (ph - kh * dh, h_in + ph - kh * dh):
                if oh < edge < band_end:
                    band_end = edge
        rows = band_end - oh
        row0 = d0 + (oh - oh0) * w_in
        n = rows * w_in - right - left
        if n > 0:
            ntaps = 0
            for kd in range(kd_n):
                i_d = od * sd - pd + kd * dd
                if i_d < 0 or i_d >= d_in:
                    continue
                for kh in range(kh_n):
                    ih = oh - ph + kh * dh
                    if ih < 0 or ih >= h_in:
                        continue
                    for kw in range(kw_n):
                        offs[ntaps] = x_chan + i_d * plane + ih * w_in + kw * dw - pw + left
                        wts[ntaps] = wf[co * kvol + (kd * kh_n + kh) * kw_n + kw]
                        ntaps += 1
            _taps_pass(dst[row0 + left:row0 + left + n], n, b, xf, offs, wts, ntaps)
        for ow in range(w_in):
            if left <= ow < w_in - right:
                continue
            ntaps = 0
            for kd in range(kd_n):
                i_d = od * sd - pd + kd * dd
                if i_d < 0 or i_d >= d_in:
                    continue
                for kh in range(kh_n):
                    ih = oh - ph + kh * dh
                    if ih < 0 or ih >= h_in:
                        continue
                    for kw in range(kw_n):
                        iw = ow - pw + kw * dw
                        if iw < 0 or iw >= w_in:
                            continue
                        slot = iw if iw < n_lo else n_lo + iw - (w_in - n_hi)
                        offs[ntaps] = (kd * slots + slot) * rows_t + ih - ih_lo
                        wts[ntaps] = wf[co * kvol + (kd * kh_n + kh) * kw_n + kw]
                        ntaps += 1
            _taps_pass(colbuf, rows, b, cols, offs, wts, ntaps)
            for r in range(rows):
                dst[row0 + r * w_in + ow] = colbuf[r]
        oh = band_end


@jit
def _forward_tile(xf, x_chan, d_in, h_in, w_in, wf, co0, m, kd_n, kh_n, kw_n, bias, has_bias,
                  od, oh0, oh1, ow_n, sd, sh, sw, pd, ph, pw, dd, dh, dw, slab, acc,
                  dst, dst_off, dst_stride):
    """Output rows [oh0, oh1) at output depth od of the m output channels co0..co0+m-1 of one input
    channel (which starts at xf[x_chan], a (d_in, h_in, w_in) block of the flat input xf).

    wf: the flat weight (C*m, 1, KD, KH, KW). Writes dst[dst_off + j*dst_stride + (oh - oh0)*ow_n
    + ow] for j < m (every element). slab: scratch of KD*rows_in*wp; acc: scratch of rows*wp.
    """
    rows_out = oh1 - oh0
    rows_in = (rows_out - 1) * sh + (kh_n - 1) * dh + 1
    wp = (ow_n - 1) * sw + (kw_n - 1) * dw + 1
    slab_size = rows_in * wp
    kvol = kd_n * kh_n * kw_n
    plane = h_in * w_in
    offs = np.empty(kvol, dtype=np.int64)
    wts = np.empty_like(wf[0:kvol])
    if sh == 1 and sw == 1 and ow_n == w_in:
        for j in range(m):
            _direct_rows(xf, x_chan, d_in, h_in, w_in, wf, co0 + j, kd_n, kh_n, kw_n,
                         bias[co0 + j] if has_bias else 0.0, od, oh0, oh1, sd, pd, ph, pw, dd,
                         dh, dw, dst, dst_off + j * dst_stride, offs, wts)
        return
    for kd in range(kd_n):
        i_d = od * sd - pd + kd * dd
        if 0 <= i_d < d_in:
            _fill(xf, x_chan + i_d * plane, h_in, w_in, oh0 * sh - ph, -pw, rows_in, wp,
                  slab, kd * slab_size)
    flat_n = (rows_out - 1) * wp + ow_n
    for j in range(m):
        co = co0 + j
        b = bias[co] if has_bias else 0.0
        if sh == 1 and sw == 1:
            ntaps = 0
            for kd in range(kd_n):
                i_d = od * sd - pd + kd * dd
                if i_d < 0 or i_d >= d_in:
                    continue
                for kh in range(kh_n):
                    for kw in range(kw_n):
                        offs[ntaps] = kd * slab_size + kh * dh * wp + kw * dw
                        wts[ntaps] = wf[co * kvol + (kd * kh_n + kh) * kw_n + kw]
                        ntaps += 1
            _taps_pass(acc, flat_n, b, slab, offs, wts, ntaps)
        else:
            a = acc[0:flat_n]
            for q in range(flat_n):
                a[q] = b
            for kd in range(kd_n):
                i_d = od * sd - pd + kd * dd
                if i_d < 0 or i_d >= d_in:
                    continue
                for kh in range(kh_n):
                    for kw in range(kw_n):
                        wv = wf[co * kvol + (kd * kh_n + kh) * kw_n + kw]
                        for r in range(rows_out):
                            base = kd * slab_size + (r * sh + kh * dh) * wp + kw * dw
                            ar = acc[r * wp:r * wp + ow_n]
                            for ow in range(ow_n):
                                ar[ow] += wv * slab[base + ow * sw]
        for r in range(rows_out):
            _copy_row(dst, dst_off + j * dst_stride + r * ow_n, acc, r * wp, ow_n)


@jit_parallel
def _forward_kernel(x, w, bias, has_bias, out, sd, sh, sw, pd, ph, pw, dd, dh, dw, slabs, accs):
    n_img, c_in, d_in, h_in, w_in = x.shape
    c_out, _, kd_n, kh_n, kw_n = w.shape
    _, _, od_n, oh_n, ow_n = out.shape
    m = c_out // c_in
    xf = x.reshape(x.size)
    wf = w.reshape(w.size)
    of = out.reshape(out.size)
    vol_in = d_in * h_in * w_in
    vol_out = od_n * oh_n * ow_n
    for item in numba.prange(n_img * c_in):
        tid = numba.get_thread_id()
        n = item // c_in
        c = item - n * c_in
        for od in range(od_n):
            _forward_tile(xf, item * vol_in, d_in, h_in, w_in, wf, c * m, m, kd_n, kh_n, kw_n,
                          bias, has_bias, od, 0, oh_n, ow_n, sd, sh, sw, pd, ph, pw, dd, dh, dw,
                          slabs[tid], accs[tid],
                          of, (n * c_out + c * m) * vol_out + od * oh_n * ow_n, vol_out)


@jit
def _backward_input_plane(dyf, dy_chan, wf, co0, m, kd_n, kh_n, kw_n, od_n, oh_n, ow_n,
                          h_in, w_in, i_d, sd, sh, sw, pd, ph, pw, dd, dh, dw, rows, width,
                          slab, acc):
    """The gradient of input plane i_d of one channel from its m output channels co0.. (whose
    gradients start at dyf[dy_chan + j*od_n*oh_n*ow_n]), left in acc as rows of ``width``: input
    element (ih, iw) at acc[(ih + ph)*width + iw + pw] for strided kernels, at acc[ih*width + iw]
    for unit strides (then a gather: a forward convolution of the zero-padded gradient with the
    flipped kernel). slab: scratch of m*KD*rows*width (unit strides) or rows*width."""
    kvol = kd_n * kh_n * kw_n
    vol_out = od_n * oh_n * ow_n
    plane_out = oh_n * ow_n
    if sh == 1 and sw == 1:
        plane_b = rows * width
        offs = np.empty(m * kvol, dtype=np.int64)
        wts = np.empty_like(wf[0:m * kvol])
        ntaps = 0
        for kd in range(kd_n):
            t = i_d + pd - kd * dd
            if t < 0 or t % sd != 0 or t // sd >= od_n:
                continue
            od = t // sd
            for j in range(m):
                co = co0 + j
                s0 = (j * kd_n + kd) * plane_b
                _fill(dyf, dy_chan + j * vol_out + od * plane_out, oh_n, ow_n,
                      ph - (kh_n - 1) * dh, pw - (kw_n - 1) * dw, rows, width, slab, s0)
                for kh in range(kh_n):
                    for kw in range(kw_n):
                        offs[ntaps] = s0 + (kh_n - 1 - kh) * dh * width + (kw_n - 1 - kw) * dw
                        wts[ntaps] = wf[co * kvol + (kd * kh_n + kh) * kw_n + kw]
                        ntaps += 1
        _taps_pass(acc, (h_in - 1) * width + w_in, 0.0, slab, offs, wts, ntaps)
        return
    d = acc[0:rows * width]
    for q in range(rows * width):
        d[q] = 0.0
    for kd in range(kd_n):
        t = i_d + pd - kd * dd
        if t < 0 or t % sd != 0 or t // sd >= od_n:
            continue
        od = t // sd
        for j in range(m):
            co = co0 + j
            src = dy_chan + j * vol_out + od * plane_out
            for kh in range(kh_n):
                for kw in range(kw_n):
                    wv = wf[co * kvol + (kd * kh_n + kh) * kw_n + kw]
                    for oh in range(oh_n):
                        base = (oh * sh + kh * dh) * width + kw * dw
                        srow = dyf[src + oh * ow_n:src + (oh + 1) * ow_n]
                        for ow in range(ow_n):
                            acc[base + ow * sw] += wv * srow[ow]


@jit_parallel
def _backward_input_kernel(dy, w, dx, sd, sh, sw, pd, ph, pw, dd, dh, dw, rows, width, slabs,
                           accs):
    n_img, c_out, od_n, oh_n, ow_n = dy.shape
    _, _, kd_n, kh_n, kw_n = w.shape
    _, c_in, d_in, h_in, w_in = dx.shape
    m = c_out // c_in
    dyf = dy.reshape(dy.size)
    wf = w.reshape(w.size)
    dxf = dx.reshape(dx.size)
    vol_out = od_n * oh_n * ow_n
    unit = sh == 1 and sw == 1
    r0 = 0 if unit else ph
    c0 = 0 if unit else pw
    for item in numba.prange(n_img * c_in):
        tid = numba.get_thread_id()
        n = item // c_in
        c = item - n * c_in
        acc = accs[tid]
        for i_d in range(d_in):
            _backward_input_plane(dyf, (n * c_out + c * m) * vol_out, wf, c * m, m, kd_n, kh_n,
                                  kw_n, od_n, oh_n, ow_n, h_in, w_in, i_d, sd, sh, sw, pd, ph, pw,
                                  dd, dh, dw, rows, width, slabs[tid], acc)
            for ih in range(h_in):
                _copy_row(dxf, ((item * d_in + i_d) * h_in + ih) * w_in, acc,
                          (ih + r0) * width + c0, w_in)


@jit
def _weight_lanes(xf, x_chan, d_in, h_in, w_in, dyf, dy_chan, od_n, oh_n, ow_n, kd_n, kh_n, kw_n,
                  sd, sh, sw, pd, ph, pw, dd, dh, dw, hp, wp, xp, dyw, offs, zero, part):
    """Adds to the running sums of the weight gradient of one output channel (part[k*_LANES:],
    tap k) the contribution of one image: its input channel starts at xf[x_chan] (d_in, h_in,
    w_in) and its output gradient at dyf[dy_chan] (od_n, oh_n, ow_n). offs[kh*kw_n + kw] =
    kh*dh*wp + kw*dw; zero = [0]; xp: scratch of hp*wp; dyw: scratch of oh_n*wp."""
    plane_in = h_in * w_in
    plane_out = oh_n * ow_n
    flat_n = (oh_n - 1) * wp + ow_n
    unit = sh == 1 and sw == 1
    khw = kh_n * kw_n
    for od in range(od_n):
        src = dy_chan + od * plane_out
        g = dyf[src:src + plane_out]
        if unit:
            # the gradient plane with the padded plane's row length (zeros past ow_n)
            _fill(dyf, src, oh_n, ow_n, 0, 0, oh_n, wp, dyw, 0)
        for kd in range(kd_n):
            i_d = od * sd - pd + kd * dd
            if i_d < 0 or i_d >= d_in:
                continue
            _fill(xf, x_chan + i_d * plane_in, h_in, w_in, -ph, -pw, hp, wp, xp, 0)
            p0 = kd * khw * _LANES
            if unit:
                _tap_accumulate(dyw, xp, offs, khw, flat_n, part, p0)
                continue
            for kh in range(kh_n):
                for kw in range(kw_n):
                    # gather the tap's input samples into a dense plane, then accumulate
                    for oh in range(oh_n):
                        base = (oh * sh + kh * dh) * wp + kw * dw
                        row = dyw[oh * ow_n:(oh + 1) * ow_n]
                        for ow in range(ow_n):
                            row[ow] = xp[base + ow * sw]
                    _tap_accumulate(g, dyw, zero, 1, plane_out, part,
                                    p0 + (kh * kw_n + kw) * _LANES)


@jit
def tap_offsets(kh_n, kw_n, dh, dw, wp):
    """offs[kh*kw_n + kw] = kh*dh*wp + kw*dw: where tap (kh, kw) reads in a plane of row length wp."""
    offs = np.empty(kh_n * kw_n, dtype=np.int64)
    for kh in range(kh_n):
        for kw in range(kw_n):
            offs[kh * kw_n + kw] = kh * dh * wp + kw * dw
    return offs


@jit_parallel
def _backward_weight_kernel(x, dy, dw_out, db_out, want_bias, sd, sh, sw, pd, ph, pw, dd, dh, dw,
                            hp, wp, xps, dyws, parts, ones):
    n_img, c_in, d_in, h_in, w_in = x.shape
    _, c_out, od_n, oh_n, ow_n = dy.shape
    _, kd_n, kh_n, kw_n = dw_out.shape
    m = c_out // c_in
    xf = x.reshape(x.size)
    dyf = dy.reshape(dy.size)
    dwf = dw_out.reshape(dw_out.size)
    vol_in = d_in * h_in * w_in
    vol_out = od_n * oh_n * ow_n
    kvol = kd_n * kh_n * kw_n
    for co in numba.prange(c_out):
        tid = numba.get_thread_id()
        part = parts[tid]
        c = co // m
        offs = tap_offsets(kh_n, kw_n, dh, dw, wp)
        zero = np.zeros(1, dtype=np.int64)
        for i in range((kvol + 1) * _LANES):
            part[i] = 0.0
        for n in range(n_img):
            dy_chan = (n * c_out + co) * vol_out
            if want_bias:
                _tap_accumulate(dyf[dy_chan:dy_chan + vol_out], ones, zero, 1, vol_out, part,
                                kvol * _LANES)
            _weight_lanes(xf, (n * c_in + c) * vol_in, d_in, h_in, w_in, dyf, dy_chan, od_n, oh_n,
                          ow_n, kd_n, kh_n, kw_n, sd, sh, sw, pd, ph, pw, dd, dh, dw, hp, wp,
                          xps[tid], dyws[tid], offs, zero, part)
        for k in range(kvol):
            dwf[co * kvol + k] = _lanes_sum(part, k * _LANES)
        db_out[co] = _lanes_sum(part, kvol * _LANES)


def _padded_size(out_n, k_n, stride, dilation):
    """Extent of the padded input that out_n outputs of a k_n tap kernel read."""
    return (out_n - 1) * stride + (k_n - 1) * dilation + 1


def forward_scratch(w_shape, stride, dilation, rows_out, ow_n, dtype, threads):
    """(slabs, accs): per-thread scratch of _forward_tile for tiles of up to rows_out rows."""
    rows_in = _padded_size(rows_out, w_shape[3], stride[1], dilation[1])
    wp = _padded_size(ow_n, w_shape[4], stride[2], dilation[2])
    slabs = np.empty((threads, w_shape[2] * rows_in * wp), dtype=dtype)
    accs = np.empty((threads, rows_out * wp), dtype=dtype)
    return slabs, accs


def depthwise_forward(x, w, bias, stride, padding, dilation, out):
    """out = depthwise conv(x, w) + bias (bias (C*m,) or None). Shapes: module docstring."""
    if out.size == 0:
        return out
    threads = numba.get_num_threads()
    slabs, accs = forward_scratch(w.shape, stride, dilation, out.shape[3], out.shape[4], x.dtype,
                                  threads)
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, dtype=x.dtype)
    _forward_kernel(x, w, b, has_bias, out, *stride, *padding, *dilation, slabs, accs)
    return out


def depthwise_backward_input(dy, w, stride, padding, dilation, dx):
    """dx = the gradient of depthwise conv(x, w) w.r.t. x, given dy, its output's gradient."""
    if dx.size == 0:
        return dx
    if dy.size == 0:
        dx[...] = 0.0
        return dx
    threads = numba.get_num_threads()
    m = w.shape[0] // dx.shape[1]
    kd_n, kh_n, kw_n = w.shape[2:]
    h_in, w_in = dx.shape[3], dx.shape[4]
    if m == 1 and tuple(stride) == (1, 1, 1) and dy.shape[2:] == dx.shape[2:]:
        # 'same' convolution: its input gradient is the 'same' convolution of dy with the flipped
        # kernel (padding before = the padding after of the forward), i.e. the forward kernel.
        flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1, ::-1])
        pad = tuple((k - 1) * d - p for k, d, p in zip(w.shape[2:], dilation, padding))
        return depthwise_forward(dy, flipped, None, stride, pad, dilation, dx)
    if stride[1] == 1 and stride[2] == 1:
        # gather form: the gradient planes padded by the dilated kernel extent minus the padding
        rows = h_in + (kh_n - 1) * dilation[1]
        width = w_in + (kw_n - 1) * dilation[2]
        slab = m * kd_n * rows * width
    else:
        # scatter form into the zero-padded input plane
        rows = max(_padded_size(dy.shape[3], kh_n, stride[1], dilation[1]), padding[1] + h_in)
        width = max(_padded_size(dy.shape[4], kw_n, stride[2], dilation[2]), padding[2] + w_in)
        slab = 0
    slabs = np.empty((threads, slab), dtype=dy.dtype)
    accs = np.empty((threads, rows * width), dtype=dy.dtype)
    _backward_input_kernel(dy, w, dx, *stride, *padding, *dilation, rows, width, slabs, accs)
    return dx


def depthwise_backward_weight(x, dy, w_shape, stride, padding, dilation, want_bias):
    """(dw, db): gradients of depthwise conv(x, w) + bias with respect to w (shape w_shape) and
    bias ((C*m,), or None when not wanted)."""
    c_out = w_shape[0]
    oh_n, ow_n = dy.shape[3], dy.shape[4]
    dw64 = np.zeros((c_out,) + tuple(w_shape[2:]), dtype=np.float64)
    db64 = np.zeros(c_out, dtype=np.float64)
    if dy.size > 0 and x.size > 0:
        threads = numba.get_num_threads()
        hp = _padded_size(oh_n, w_shape[3], stride[1], dilation[1])
        wp = _padded_size(ow_n, w_shape[4], stride[2], dilation[2])
        xps = np.empty((threads, hp * wp), dtype=x.dtype)
        dyws = np.empty((threads, oh_n * wp), dtype=x.dtype)
        kvol = w_shape[2] * w_shape[3] * w_shape[4]
        parts = np.empty((threads, (kvol + 1) * _LANES), dtype=x.dtype)
        ones = np.ones(dy.shape[2] * oh_n * ow_n, dtype=x.dtype)
        _backward_weight_kernel(x, dy, dw64, db64, want_bias, *stride, *padding, *dilation, hp,
                                wp, xps, dyws, parts, ones)
    dw = dw64.astype(x.dtype).reshape(tuple(w_shape))
    return dw, (db64.astype(x.dtype) if want_bias else None)
