"""Channel-vectorised depthwise forward for the CPU: channels_last tensors, and NCHW tensors whose
planes are too small for row streams (7x7, 14x14: a row is shorter than a few vectors).

Depthwise convolution is independent per channel, so a vector of CB consecutive channels at one
pixel is the natural unit: each tap is one multiply-add of a CB-lane weight vector and a CB-lane
input vector, whatever the stride, dilation or kernel size, with no gather and no row-edge case.

A work item is (image, block of CB output channels, band of output rows). It copies the padded
input window of its band into a per-thread tile ``[KD][rows_in][cols][CB]`` (zero padding;
lane l holds input channel (co0 + l) // m), computes ``acc[(r*OW + ow)*CB + l]`` with the taps
in kernel order (bias first, FMA-contracted, the same order as the row-stream kernels), and
copies the block to the output. For channels_last tensors the copies move CB contiguous
channels per pixel (vector loads); for NCHW they transpose (a strided element per lane), which
only pays off for small planes, where the row-stream kernels spend their time on loop set-up.

Arrays are the flat storage of x / out with element strides (channel, depth, row, column): one
kernel serves both layouts. The weight comes blocked, ``wblk (blocks, KD*KH*KW, CB)``, zero in
lanes past C*m, and the bias ``bblk (blocks, CB)``.
"""
import numba
import numpy as np

from ._jit import jit_fma, jit_parallel_fma
from .depthwise_core import zero_row

# Lanes per channel block: one AVX-512 vector of float32 (two of float64, two AVX2 vectors); a
# constant, so that the lane loops compile to whole vectors with no remainder loop.
CB = 16


@jit_fma
def _copy_lanes(dst, d0, src, s0, cs, nl, m, lane0):
    """dst[d0 + l] = src[s0 + ((lane0 + l)//m - lane0//m)*cs] for l < nl (lane0 = first output
    channel of the block): the CB channels of one pixel."""
    if m == 1 and cs == 1 and nl == CB:
        d = dst[d0:d0 + CB]
        s = src[s0:s0 + CB]
        for l in range(CB):
            d[l] = s[l]
    elif m == 1:
        for l in range(nl):
            dst[d0 + l] = src[s0 + l * cs]
    else:
        c0 = lane0 // m
        for l in range(nl):
            dst[d0 + l] = src[s0 + ((lane0 + l) // m - c0) * cs]


@jit_fma
def fill_tile(xf, chan0, cs, hs, ws, h_in, w_in, row0, col0, rows, cols, sh, sw, rq, nl, m, lane0,
              tile, t0):
    """Window rows [row0, row0 + rows) x columns [col0, col0 + cols) of one input depth plane
    (pixel (ih, iw) of the block's first channel at xf[chan0 + ih*hs + iw*ws]) into the tile,
    split by stride phase like depthwise_core.fill_phases, CB lanes per pixel: (r, c, l) at
    tile[t0 + (((c % sw)*sh + r % sh)*rq + r//sh)*cq*CB + (c//sw)*CB + l], cq = ceil(cols/sw).
    Rows outside the plane are zeroed; padding columns and lanes past nl are never written (the
    caller zeroes the tile once per call)."""
    cq = (cols + sw - 1) // sw
    c_lo = min(max(-col0, 0), cols)
    c_hi = max(min(w_in - col0, cols), c_lo)
    for r in range(rows):
        ih = row0 + r
        d_row = t0 + ((r % sh) * rq + r // sh) * cq * CB
        if ih < 0 or ih >= h_in:
            for pc in range(sw):
                zero_row(tile, d_row + pc * sh * rq * cq * CB, cq * CB)
            continue
        s_row = chan0 + ih * hs + col0 * ws
        if sw == 1 and cs != 1 and m == 1:
            # NCHW: read each channel's row contiguously, store every CB-th element
            for l in range(nl):
                src = xf[s_row + l * cs + c_lo * ws:s_row + l * cs + c_hi * ws]
                for c in range(c_hi - c_lo):
                    tile[d_row + (c_lo + c) * CB + l] = src[c * ws]
            continue
        for c in range(c_lo, c_hi):
            d0 = d_row + (c % sw) * sh * rq * cq * CB + (c // sw) * CB
            _copy_lanes(tile, d0, xf, s_row + c * ws, cs, nl, m, lane0)


@jit_fma
def lanes_pass(acc, n, brep, src, offs, wrep, chunk, ntaps):
    """acc[q] = brep[q % chunk] + sum_t wrep[t*chunk + q % chunk] * src[offs[t] + q], q < n, in
    tap order: depthwise_core.taps_pass with a weight vector per tap (lane l of each CB-lane
    pixel has its own channel's weight), over chunks of ``chunk`` elements (a multiple of CB)
    so that the repeated weights stay in L1."""
    for q0 in range(0, n, chunk):
        cn = min(chunk, n - q0)
        a = acc[q0:q0 + cn]
        b = brep[0:cn]
        for q in range(cn):
            a[q] = b[q]
        t = 0
        while t + 4 <= ntaps:
            w0 = wrep[t * chunk:t * chunk + cn]
            w1 = wrep[(t + 1) * chunk:(t + 1) * chunk + cn]
            w2 = wrep[(t + 2) * chunk:(t + 2) * chunk + cn]
            w3 = wrep[(t + 3) * chunk:(t + 3) * chunk + cn]
            s0 = src[offs[t] + q0:offs[t] + q0 + cn]
            s1 = src[offs[t + 1] + q0:offs[t + 1] + q0 + cn]
            s2 = src[offs[t + 2] + q0:offs[t + 2] + q0 + cn]
            s3 = src[offs[t + 3] + q0:offs[t + 3] + q0 + cn]
            for q in range(cn):
                a[q] = (((a[q] + w0[q] * s0[q]) + w1[q] * s1[q]) + w2[q] * s2[q]) + w3[q] * s3[q]
            t += 4
        while t < ntaps:
            w0 = wrep[t * chunk:t * chunk + cn]
            s0 = src[offs[t] + q0:offs[t] + q0 + cn]
            for q in range(cn):
                a[q] += w0[q] * s0[q]
            t += 1


@jit_fma
def store_tile(acc, rows_out, ow_n, cq, of, chan0, ocs, ohs, ows, nl):
    """Output pixel (r, ow) of the block's channel l, acc[(r*cq + ow)*CB + l], to
    of[chan0 + l*ocs + r*ohs + ow*ows]."""
    for r in range(rows_out):
        if ocs != 1:
            # NCHW: one channel's row at a time, contiguous stores
            for l in range(nl):
                d = of[chan0 + l * ocs + r * ohs:chan0 + l * ocs + r * ohs + (ow_n - 1) * ows + 1]
                for ow in range(ow_n):
                    d[ow * ows] = acc[(r * cq + ow) * CB + l]
            continue
        for ow in range(ow_n):
            d0 = chan0 + r * ohs + ow * ows
            s0 = (r * cq + ow) * CB
            if nl == CB:
                d = of[d0:d0 + CB]
                s = acc[s0:s0 + CB]
                for l in range(CB):
                    d[l] = s[l]
            else:
                for l in range(nl):
                    of[d0 + l] = acc[s0 + l]


@jit_parallel_fma
def forward_kernel(xf, x_strides, in_shape, wrep, brep, chunk, of, o_strides, out_shape, m,
                   k_shape, cp, band_rows, tiles, accs, offss, wsels):
    """x_strides / o_strides: (image, channel, depth, row, column) element strides; in_shape
    (N, C, D, H, W); out_shape (N, C*m, OD, OH, OW); wrep (blocks, KD*KH*KW, chunk) and brep
    (blocks, chunk): each block's CB-lane weight and bias vectors repeated to chunk lanes."""
    n_img, c_in, d_in, h_in, w_in = in_shape
    _, c_out, od_n, oh_n, ow_n = out_shape
    kd_n, kh_n, kw_n = k_shape
    sd, sh, sw, pd, ph, pw, dd, dh, dw = cp
    xns, xcs, xds, xhs, xws = x_strides
    ons, ocs, ods, ohs, ows = o_strides
    n_blocks = (c_out + CB - 1) // CB
    n_bands = (oh_n + band_rows - 1) // band_rows
    rows_max = (band_rows - 1) * sh + (kh_n - 1) * dh + 1
    rq = (rows_max + sh - 1) // sh
    cols = (ow_n - 1) * sw + (kw_n - 1) * dw + 1
    cq = (cols + sw - 1) // sw
    region = rq * cq * CB
    plane = sh * sw * region
    for item in numba.prange(n_img * n_blocks * n_bands):
        tid = numba.get_thread_id()
        tile = tiles[tid]
        acc = accs[tid]
        offs = offss[tid]
        wsel = wsels[tid]
        band = item % n_bands
        rest = item // n_bands
        blk = rest % n_blocks
        n = rest // n_blocks
        co0 = blk * CB
        nl = min(CB, c_out - co0)
        oh0 = band * band_rows
        rows_out = min(oh_n, oh0 + band_rows) - oh0
        rows_in = (rows_out - 1) * sh + (kh_n - 1) * dh + 1
        x_chan = n * xns + (co0 // m) * xcs
        for od in range(od_n):
            ntaps = 0
            for kd in range(kd_n):
                i_d = od * sd - pd + kd * dd
                if i_d < 0 or i_d >= d_in:
                    continue
                fill_tile(xf, x_chan + i_d * xds, xcs, xhs, xws, h_in, w_in, oh0 * sh - ph, -pw,
                          rows_in, cols, sh, sw, rq, nl, m, co0, tile, kd * plane)
                for kh in range(kh_n):
                    rh = kh * dh
                    for kw in range(kw_n):
                        # the taps whose input depth exists, with their weights, in kernel order
                        cw = kw * dw
                        offs[ntaps] = (kd * plane + ((cw % sw) * sh + rh % sh) * region
                                       + ((rh // sh) * cq + cw // sw) * CB)
                        wsel[ntaps * chunk:(ntaps + 1) * chunk] = wrep[blk, (kd * kh_n + kh)
                                                                       * kw_n + kw]
                        ntaps += 1
            lanes_pass(acc, ((rows_out - 1) * cq + ow_n) * CB, brep[blk], tile, offs, wsel,
                       chunk, ntaps)
            store_tile(acc, rows_out, ow_n, cq, of, n * ons + co0 * ocs + od * ods + oh0 * ohs,
                       ocs, ohs, ows, nl)
