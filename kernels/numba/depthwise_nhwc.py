"""Depthwise forward for channels_last tensors on the CPU: channel-vectorised row streams.

In a channels_last row the pixels' channel vectors sit end to end, so with the padded row split
by stride phase (pixel p at phase p % sw, index p // sw), tap (kh, kw) of a whole output row is
one contiguous stream: output element q = ow*C*m + k reads prepared row (oh*sh + kh*dh), phase
(kw*dw) % sw, element q + ((kw*dw)//sw)*C*m. Its weight depends only on the channel k = q mod
C*m: a weight vector per tap, repeated over a chunk of a few pixels (``wrep``, in L1), so each
tap is one multiply-add per element with no gather, no transpose and no per-pixel loop
(depthwise_cl.lanes_pass). Output rows are written in place: the output is channels_last too.

A work item is (image, output depth, band of output rows); it prepares the band's input rows
(zero padding, phase split, channels repeated m times for a channel multiplier m > 1) in a
per-thread slab ``[KD][rows_in][sw][cq][C*m]`` and runs one pass per output row.

Arrays: the flat storage of x and out with element strides (image, channel, depth, row, column);
channels are the innermost axis of both (channel stride 1, column stride C resp. C*m).
"""
import numba

from ._jit import jit_fma, jit_parallel_fma
from .depthwise_cl import lanes_pass
from .depthwise_core import copy_row, zero_row


@jit_fma
def fill_rows(xf, plane0, xhs, xws, h_in, w_in, c_in, m, row0, col0, rows, cols, sw, cq, slab,
              s0):
    """The padded window rows [row0, row0 + rows) x pixels [col0, col0 + cols) of one depth plane
    (channel c of pixel (ih, iw) at xf[plane0 + ih*xhs + iw*xws + c]) into
    slab[s0 + (r*sw + p % sw)*cq*C*m + (p // sw)*C*m + k], lane k = c*m + j. Rows outside the
    plane are zeroed; the padding pixels are never written (the caller zeroes the slab once)."""
    cm = c_in * m
    row_len = sw * cq * cm
    p_lo = min(max(-col0, 0), cols)
    p_hi = max(min(w_in - col0, cols), p_lo)
    for r in range(rows):
        ih = row0 + r
        d_row = s0 + r * row_len
        if ih < 0 or ih >= h_in:
            zero_row(slab, d_row, row_len)
            continue
        s_row = plane0 + ih * xhs + col0 * xws
        if sw == 1 and m == 1 and xws == c_in:
            copy_row(slab, d_row + p_lo * cm, xf, s_row + p_lo * xws, (p_hi - p_lo) * cm)
            continue
        for p in range(p_lo, p_hi):
            d0 = d_row + ((p % sw) * cq + p // sw) * cm
            if m == 1:
                copy_row(slab, d0, xf, s_row + p * xws, cm)
            else:
                for k in range(cm):
                    slab[d0 + k] = xf[s_row + p * xws + k // m]


@jit_parallel_fma
def forward_kernel(xf, x_strides, in_shape, wrep, brep, chunk, of, o_strides, out_shape, m,
                   k_shape, cp, band_rows, slabs, offss, wsels):
    """in_shape (N, C, D, H, W), out_shape (N, C*m, OD, OH, OW); wrep (KD*KH*KW, chunk) and brep
    (chunk,): the weight and bias vectors of all C*m channels repeated to chunk lanes."""
    n_img, c_in, d_in, h_in, w_in = in_shape
    _, c_out, od_n, oh_n, ow_n = out_shape
    kd_n, kh_n, kw_n = k_shape
    sd, sh, sw, pd, ph, pw, dd, dh, dw = cp
    xns, xcs, xds, xhs, xws = x_strides
    ons, ocs, ods, ohs, ows = o_strides
    n_bands = (oh_n + band_rows - 1) // band_rows
    rows_max = (band_rows - 1) * sh + (kh_n - 1) * dh + 1
    cols = (ow_n - 1) * sw + (kw_n - 1) * dw + 1
    cq = (cols + sw - 1) // sw
    row_len = sw * cq * c_out
    plane = rows_max * row_len
    n_row = ow_n * c_out
    for item in numba.prange(n_img * od_n * n_bands):
        tid = numba.get_thread_id()
        slab = slabs[tid]
        offs = offss[tid]
        wsel = wsels[tid]
        band = item % n_bands
        rest = item // n_bands
        od = rest % od_n
        n = rest // od_n
        oh0 = band * band_rows
        rows_out = min(oh_n, oh0 + band_rows) - oh0
        rows_in = (rows_out - 1) * sh + (kh_n - 1) * dh + 1
        ntaps = 0
        for kd in range(kd_n):
            i_d = od * sd - pd + kd * dd
            if i_d < 0 or i_d >= d_in:
                continue
            fill_rows(xf, n * xns + i_d * xds, xhs, xws, h_in, w_in, c_in, m, oh0 * sh - ph, -pw,
                      rows_in, cols, sw, cq, slab, kd * plane)
            for kh in range(kh_n):
                for kw in range(kw_n):
                    # the taps whose input depth exists, with their weights, in kernel order
                    cw = kw * dw
                    offs[ntaps] = (kd * plane + kh * dh * row_len + (cw % sw) * cq * c_out
                                   + (cw // sw) * c_out)
                    wsel[ntaps * chunk:(ntaps + 1) * chunk] = wrep[(kd * kh_n + kh) * kw_n + kw]
                    ntaps += 1
        for r in range(rows_out):
            o = n * ons + od * ods + (oh0 + r) * ohs
            lanes_pass(of[o:o + n_row], n_row, brep, slab[r * sh * row_len:], offs, wsel, chunk,
                       ntaps)


@jit_fma
def lanes_accumulate(part, chunk, g, src, o0, o1, o2, o3, ntaps4, n):
    """part[t*chunk + q % chunk] += g[q] * src[o_t + q] for q < n and the taps o0..o3 (the first
    ntaps4 of them): per-lane running sums (lane = position in a chunk of whole pixels, so the
    channel of a lane is fixed), one pass over g for up to four taps."""
    for q0 in range(0, n, chunk):
        cn = min(chunk, n - q0)
        gs = g[q0:q0 + cn]
        p0 = part[0:cn]
        x0 = src[o0 + q0:o0 + q0 + cn]
        if ntaps4 == 4:
            p1 = part[chunk:chunk + cn]
            p2 = part[2 * chunk:2 * chunk + cn]
            p3 = part[3 * chunk:3 * chunk + cn]
            x1 = src[o1 + q0:o1 + q0 + cn]
            x2 = src[o2 + q0:o2 + q0 + cn]
            x3 = src[o3 + q0:o3 + q0 + cn]
            for q in range(cn):
                v = gs[q]
                p0[q] += v * x0[q]
                p1[q] += v * x1[q]
                p2[q] += v * x2[q]
                p3[q] += v * x3[q]
        else:
            for q in range(cn):
                p0[q] += gs[q] * x0[q]


@jit_parallel_fma
def weight_kernel(xf, x_strides, in_shape, dyf, dy_strides, out_shape, k_shape, cp, band_rows,
                  chunk, slabs, offss, kidxs, parts, result):
    """Weight gradient of a channel multiplier 1 depthwise conv, channels_last x and dy:
    result[item, c, k] (float64) = the item's (image, output depth, band of rows) sum of
    dy * input for kernel element k of channel c, from per-lane partial sums (lanes_accumulate)
    reduced in a fixed order; the caller sums the items in order."""
    n_img, c_in, d_in, h_in, w_in = in_shape
    _, c_out, od_n, oh_n, ow_n = out_shape
    kd_n, kh_n, kw_n = k_shape
    sd, sh, sw, pd, ph, pw, dd, dh, dw = cp
    xns, xcs, xds, xhs, xws = x_strides
    gns, gcs, gds, ghs, gws = dy_strides
    n_bands = (oh_n + band_rows - 1) // band_rows
    rows_max = (band_rows - 1) * sh + (kh_n - 1) * dh + 1
    cols = (ow_n - 1) * sw + (kw_n - 1) * dw + 1
    cq = (cols + sw - 1) // sw
    row_len = sw * cq * c_out
    plane = rows_max * row_len
    n_row = ow_n * c_out
    for item in numba.prange(n_img * od_n * n_bands):
        tid = numba.get_thread_id()
        slab = slabs[tid]
        offs = offss[tid]
        kidx = kidxs[tid]
        part = parts[tid]
        band = item % n_bands
        rest = item // n_bands
        od = rest % od_n
        n = rest // od_n
        oh0 = band * band_rows
        rows_out = min(oh_n, oh0 + band_rows) - oh0
        rows_in = (rows_out - 1) * sh + (kh_n - 1) * dh + 1
        ntaps = 0
        for kd in range(kd_n):
            i_d = od * sd - pd + kd * dd
            if i_d < 0 or i_d >= d_in:
                continue
            fill_rows(xf, n * xns + i_d * xds, xhs, xws, h_in, w_in, c_in, 1, oh0 * sh - ph, -pw,
                      rows_in, cols, sw, cq, slab, kd * plane)
            for kh in range(kh_n):
                for kw in range(kw_n):
                    cw = kw * dw
                    offs[ntaps] = (kd * plane + kh * dh * row_len + (cw % sw) * cq * c_out
                                   + (cw // sw) * c_out)
                    kidx[ntaps] = (kd * kh_n + kh) * kw_n + kw
                    ntaps += 1
        for i in range(ntaps * chunk):
            part[i] = 0.0
        for r in range(rows_out):
            g0 = n * gns + od * gds + (oh0 + r) * ghs
            g = dyf[g0:g0 + n_row]
            src = slab[r * sh * row_len:]
            t = 0
            while t < ntaps:
                four = 4 if t + 4 <= ntaps else 1
                lanes_accumulate(part[t * chunk:], chunk, g, src, offs[t],
                                 offs[t + 1] if four == 4 else 0, offs[t + 2] if four == 4 else 0,
                                 offs[t + 3] if four == 4 else 0, four, n_row)
                t += four
        res = result[item]
        for t in range(ntaps):
            k = kidx[t]
            for p in range(chunk // c_out):
                for c in range(c_out):
                    res[c, k] += part[t * chunk + p * c_out + c]


@jit_fma
def pixel_pass(of, o0, n, bias, xf, offs, wmat, kidx, ntaps):
    """of[o0 + c] = bias[c] + sum_t wmat[kidx[t], c] * xf[offs[t] + c] for c < n, taps in the
    given (kernel) order, four taps per pass over the n channels of one output pixel."""
    a = of[o0:o0 + n]
    b = bias[0:n]
    for c in range(n):
        a[c] = b[c]
    t = 0
    while t + 4 <= ntaps:
        w0 = wmat[kidx[t]]
        w1 = wmat[kidx[t + 1]]
        w2 = wmat[kidx[t + 2]]
        w3 = wmat[kidx[t + 3]]
        s0 = xf[offs[t]:offs[t] + n]
        s1 = xf[offs[t + 1]:offs[t + 1] + n]
        s2 = xf[offs[t + 2]:offs[t + 2] + n]
        s3 = xf[offs[t + 3]:offs[t + 3] + n]
        for c in range(n):
            a[c] = (((a[c] + w0[c] * s0[c]) + w1[c] * s1[c]) + w2[c] * s2[c]) + w3[c] * s3[c]
        t += 4
    while t < ntaps:
        w0 = wmat[kidx[t]]
        s0 = xf[offs[t]:offs[t] + n]
        for c in range(n):
            a[c] += w0[c] * s0[c]
        t += 1


@jit_parallel_fma
def direct_kernel(xf, x_strides, in_shape, wmat, bias, of, o_strides, out_shape, k_shape, cp,
                  offss, kidxs):
    """Channel multiplier 1, read in place: item (image, output depth, output row); per output
    pixel, one pixel_pass over its C channels with the taps that fall inside the input (padding
    taps form no product, as in torch). wmat (KD*KH*KW, C): the weight vector of each tap; bias
    (C,) (zeros when there is none). No slab: each input row is read from x by the rows that
    need it, which suits wide pixels (C of a few hundred channels)."""
    n_img, c_in, d_in, h_in, w_in = in_shape
    _, c_out, od_n, oh_n, ow_n = out_shape
    kd_n, kh_n, kw_n = k_shape
    sd, sh, sw, pd, ph, pw, dd, dh, dw = cp
    xns, xcs, xds, xhs, xws = x_strides
    ons, ocs, ods, ohs, ows = o_strides
    for item in numba.prange(n_img * od_n * oh_n):
        tid = numba.get_thread_id()
        offs = offss[tid]
        kidx = kidxs[tid]
        oh = item % oh_n
        rest = item // oh_n
        od = rest % od_n
        n = rest // od_n
        for ow in range(ow_n):
            ntaps = 0
            for kd in range(kd_n):
                i_d = od * sd - pd + kd * dd
                if i_d < 0 or i_d >= d_in:
                    continue
                for kh in range(kh_n):
                    ih = oh * sh - ph + kh * dh
                    if ih < 0 or ih >= h_in:
                        continue
                    for kw in range(kw_n):
                        iw = ow * sw - pw + kw * dw
                        if iw < 0 or iw >= w_in:
                            continue
                        offs[ntaps] = n * xns + i_d * xds + ih * xhs + iw * xws
                        kidx[ntaps] = (kd * kh_n + kh) * kw_n + kw
                        ntaps += 1
            pixel_pass(of, n * ons + od * ods + oh * ohs + ow * ows, c_out, bias, xf, offs, wmat,
                       kidx, ntaps)


@jit_parallel_fma
def blocked_kernel(x, wblk, bblk, out, k_shape, cp, cbk, bufs_in, bufs_out, offss, kidxs):
    """NCHW x and out (C-contiguous, (N, C, D, H, W)), multiplier 1, for small planes: item (image,
    block of cbk channels); the block's input planes are transposed into a per-thread buffer with
    the channels innermost (pixel p, channel c at p*nc + c), every output pixel is one pixel_pass
    over the block's channels (the taps inside the input only, as direct_kernel: the caller sends
    non-finite weights elsewhere), and the result is transposed back into out. A plane row of a
    7x7 or 14x14 map is too short to vectorise along; a block of channels is not, and the block
    stays in cache between the three steps. wblk (blocks, KD*KH*KW, cbk): block b's weight
    vectors; bblk (blocks, cbk) its biases (zeros when there is none)."""
    n_img, c_in, d_in, h_in, w_in = x.shape
    _, c_out, od_n, oh_n, ow_n = out.shape
    kd_n, kh_n, kw_n = k_shape
    sd, sh, sw, pd, ph, pw, dd, dh, dw = cp
    n_blk = (c_in + cbk - 1) // cbk
    vin = d_in * h_in * w_in
    vout = od_n * oh_n * ow_n
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    for item in numba.prange(n_img * n_blk):
        tid = numba.get_thread_id()
        bi = bufs_in[tid]
        bo = bufs_out[tid]
        offs = offss[tid]
        kidx = kidxs[tid]
        n = item // n_blk
        blk = item % n_blk
        c0 = blk * cbk
        nc = min(cbk, c_in - c0)
        base = (n * c_in + c0) * vin
        for c in range(nc):
            src = xf[base + c * vin:base + (c + 1) * vin]
            for p in range(vin):
                bi[p * nc + c] = src[p]
        wb = wblk[blk]
        bb = bblk[blk]
        for od in range(od_n):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    ntaps = 0
                    for kd in range(kd_n):
                        i_d = od * sd - pd + kd * dd
                        if i_d < 0 or i_d >= d_in:
                            continue
                        for kh in range(kh_n):
                            ih = oh * sh - ph + kh * dh
                            if ih < 0 or ih >= h_in:
                                continue
                            for kw in range(kw_n):
                                iw = ow * sw - pw + kw * dw
                                if iw < 0 or iw >= w_in:
                                    continue
                                offs[ntaps] = ((i_d * h_in + ih) * w_in + iw) * nc
                                kidx[ntaps] = (kd * kh_n + kh) * kw_n + kw
                                ntaps += 1
                    pixel_pass(bo, ((od * oh_n + oh) * ow_n + ow) * nc, nc, bb, bi, offs, wb,
                               kidx, ntaps)
        obase = (n * c_out + c0) * vout
        for c in range(nc):
            dst = of[obase + c * vout:obase + (c + 1) * vout]
            for p in range(vout):
                dst[p] = bo[p * nc + c]


@jit_parallel_fma
def blocked_weight_kernel(x, dy, k_shape, cp, cbk, bufs_x, bufs_g, offss, kidxs, parts, result):
    """Weight gradient of blocked_kernel's convolution (multiplier 1, NCHW x and dy, C-contiguous):
    item (image, block of cbk channels) transposes the block's x and dy planes into
    channels-innermost buffers, then adds dy * x over the block's channels for every output
    pixel and every tap inside the input (the products torch forms: the padding adds zeros);
    per-lane sums in the data's dtype, result[item, t, c] (float64) the item's sum for kernel
    element t and channel c0 + c; the caller sums the items in order."""
    n_img, c_in, d_in, h_in, w_in = x.shape
    _, _, od_n, oh_n, ow_n = dy.shape
    kd_n, kh_n, kw_n = k_shape
    sd, sh, sw, pd, ph, pw, dd, dh, dw = cp
    kvol = kd_n * kh_n * kw_n
    n_blk = (c_in + cbk - 1) // cbk
    vin = d_in * h_in * w_in
    vout = od_n * oh_n * ow_n
    xf = x.reshape(x.size)
    gf = dy.reshape(dy.size)
    for item in numba.prange(n_img * n_blk):
        tid = numba.get_thread_id()
        bx = bufs_x[tid]
        bg = bufs_g[tid]
        offs = offss[tid]
        kidx = kidxs[tid]
        part = parts[tid]
        n = item // n_blk
        blk = item % n_blk
        c0 = blk * cbk
        nc = min(cbk, c_in - c0)
        base = (n * c_in + c0) * vin
        for c in range(nc):
            src = xf[base + c * vin:base + (c + 1) * vin]
            for p in range(vin):
                bx[p * nc + c] = src[p]
        gbase = (n * c_in + c0) * vout
        for c in range(nc):
            src = gf[gbase + c * vout:gbase + (c + 1) * vout]
            for p in range(vout):
                bg[p * nc + c] = src[p]
        for i in range(kvol * nc):
            part[i] = 0.0
        for od in range(od_n):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    ntaps = 0
                    for kd in range(kd_n):
                        i_d = od * sd - pd + kd * dd
                        if i_d < 0 or i_d >= d_in:
                            continue
                        for kh in range(kh_n):
                            ih = oh * sh - ph + kh * dh
                            if ih < 0 or ih >= h_in:
                                continue
                            for kw in range(kw_n):
                                iw = ow * sw - pw + kw * dw
                                if iw < 0 or iw >= w_in:
                                    continue
                                offs[ntaps] = ((i_d * h_in + ih) * w_in + iw) * nc
                                kidx[ntaps] = (kd * kh_n + kh) * kw_n + kw
                                ntaps += 1
                    q = ((od * oh_n + oh) * ow_n + ow) * nc
                    g = bg[q:q + nc]
                    for t in range(ntaps):
                        p0 = kidx[t] * nc
                        acc = part[p0:p0 + nc]
                        xs = bx[offs[t]:offs[t] + nc]
                        for c in range(nc):
                            acc[c] += g[c] * xs[c]
        res = result[item]
        for k in range(kvol):
            for c in range(nc):
                res[k, c] = part[k * nc + c]
