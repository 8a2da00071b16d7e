"""Fused separable convolutions for the CPU: depthwise-separable and spatial separable.

Depthwise-separable (rank-3 canonical, C-contiguous arrays):

    x    (N, C, D, H, W)          input
    wd   (C*m, 1, KD, KH, KW)     depthwise weight, bd (C*m,) or None
    wp   (C_out, C*m)             pointwise weight (the 1x1 kernel as a matrix), bp (C_out,) or None
    out  (N, C_out, OD, OH, OW)   its shape gives the output size; padding is the low-side padding

Forward: a work item is (image, output depth, tile of output rows). It runs the depthwise core
for every channel (depthwise_core.forward_band, or masked_band for stride-1 'same' planes, as
depthwise.forward_algorithm decides) into a per-thread tile ``mid`` (C*m, rows*OW) sized to stay
in L2, then multiplies it by the pointwise weight with BLAS (_jit.gemm) straight into the output
tile. The depthwise result never goes to memory as a whole. Tiles are balanced (no short last
tile) and as wide as L2 allows: the GEMM's efficiency grows with the tile.

Backward: a work item is one image. The depthwise result of that image is recomputed into a
per-thread buffer rather than saved by the forward pass: saving it would write and read back
N*C*m*pixels elements through DRAM (more than the input itself when m >= 1), while recomputing
reads the input, which the weight gradient reads anyway. Then, per image: grad of the pointwise
weight += dy @ mid^T (BLAS, per-thread partial sums), dmid = wp^T @ dy (BLAS), and the depthwise
gradients of input and weight from dmid with the depthwise kernels. An image per item keeps the
input gradient race-free; images are many in training batches. NaN and infinities land where
torch's do: the input gradient forms only torch's products (depthwise_core.backward_input_band),
and a NaN in the depthwise weight gradient, which may come from 0 * inf past a row's end
(depthwise_core.weight_band), has the weight gradients taken again a row at a time.

Spatial separable (2-d, C-contiguous):

    x     (N, C_in, H, W)
    wv    (KH, C_mid, C_in)         vertical weight (C_mid, C_in, KH, 1) with the tap axis first
    wh    (C_out, C_mid*KW)         horizontal weight (C_out, C_mid, 1, KW) as a matrix
    out   (N, C_out, OH, OW)

The vertical conv (stride (sh, 1), padding (ph, 0), dilation (dh, 1)) makes mid (C_mid, OH, W);
the horizontal one (stride (1, sw), padding (0, pw), dilation (1, dw)) makes out from it. Row r of
mid depends only on rows of x and feeds only row r of out, so a tile of output rows is
self-contained: per item (image, row tile) the KH input rows of each output row are packed
(KH*C_in, rows*W) and one GEMM (K = KH*C_in) makes mid, its horizontal patches are packed
(C_mid*KW, rows*OW) and one GEMM (K = C_mid*KW) writes the output tile.
Multiplies per output pixel: C_mid*C_in*KH*(W/OW) + C_out*C_mid*KW, against C_out*C_in*KH*KW for
the full KH x KW conv: for k = 7 and C_in = C_mid = C_out = C, 14*C^2 instead of 49*C^2 (3.5x
fewer).
Backward per image, tile by tile: mid is recomputed, then dwh += dy @ cols^T, dcols = wh^T @ dy
scattered back to dmid, dwv[kh] += dmid @ x_rows^T and dx_rows += wv[kh]^T @ dmid.
"""
import numba
import numpy as np

from .. import machine

from ._jit import blas_set_local_threads, gemm, jit, jit_parallel, jit_parallel_fma
from .depthwise import conv_params, forward_scratch, same_taps, same_taps_reach
from .depthwise_core import (backward_input_band, backward_input_scratch_sizes, copy_row,
                             forward_band, masked_band, weight_band, zero_row)


@jit
def _same_channel(xf, x_chan, wdf, kvol, co0, m, bd, has_bd, q0, n, shifts, kidx, masks, lo, hi,
                  wts, buf, dst, dst_off, chan_stride):
    """Elements [q0, q0 + n) of the m depthwise outputs of one input channel of a stride-1 'same'
    convolution (depthwise_core.masked_band), into dst[dst_off + j*chan_stride:]."""
    ntaps = shifts.size
    for j in range(m):
        co = co0 + j
        for t in range(ntaps):
            wts[t] = wdf[co * kvol + kidx[t]]
        o = dst_off + j * chan_stride
        masked_band(dst[o:o + n], n, bd[co] if has_bd else 0.0, xf, x_chan, q0, lo, hi, shifts,
                    wts, masks, ntaps, buf)


@jit_parallel_fma
def _dsconv_forward_kernel(x, wd, bd, has_bd, wp, bp, has_bp, out, cp, tile_rows, slabs, accs,
                           offss, kidxs, wtss, mids, same, shifts, same_kidx, masks, lo, hi, bufs,
                           is_double):
    n_img, c_in, d_in, h_in, w_in = x.shape
    cm, _, kd_n, kh_n, kw_n = wd.shape
    _, c_out, od_n, oh_n, ow_n = out.shape
    m = cm // c_in
    xf = x.reshape(x.size)
    wdf = wd.reshape(wd.size)
    of = out.reshape(out.size)
    vol_in = d_in * h_in * w_in
    vol_out = od_n * oh_n * ow_n
    n_tiles = (oh_n + tile_rows - 1) // tile_rows
    item_size = x.itemsize
    for item in numba.prange(n_img * od_n * n_tiles):
        blas_set_local_threads(1)
        tid = numba.get_thread_id()
        t = item % n_tiles
        rest = item // n_tiles
        od = rest % od_n
        n = rest // od_n
        oh0 = t * tile_rows
        oh1 = min(oh_n, oh0 + tile_rows)
        pt = (oh1 - oh0) * ow_n
        mid = mids[tid]
        for c in range(c_in):
            if same:
                _same_channel(xf, (n * c_in + c) * vol_in, wdf, kd_n * kh_n * kw_n, c * m, m, bd,
                              has_bd, (od * oh_n + oh0) * ow_n, pt, shifts, same_kidx, masks, lo, hi,
                              wtss[tid], bufs[tid], mid, c * m * pt, pt)
                continue
            forward_band(xf, (n * c_in + c) * vol_in, (d_in, h_in, w_in), wdf, c * m, m,
                         (kd_n, kh_n, kw_n), bd, has_bd, od, oh0, oh1, ow_n, tile_rows, cp,
                         slabs[tid], accs[tid], offss[tid], kidxs[tid], wtss[tid], mid,
                         c * m * pt, pt)
        o0 = n * c_out * vol_out + od * oh_n * ow_n + oh0 * ow_n
        gemm(is_double, 0, 0, c_out, pt, cm, 1.0, wp.ctypes.data, cm, mid.ctypes.data, pt, 0.0,
             out.ctypes.data + o0 * item_size, vol_out)
        if has_bp:
            for co in range(c_out):
                b = bp[co]
                o = of[o0 + co * vol_out:o0 + co * vol_out + pt]
                for q in range(pt):
                    o[q] += b
        blas_set_local_threads(0)


@jit_parallel_fma
def _dsconv_backward_kernel(x, wd, bd, has_bd, wp, dy, dx, dwd_parts, dwp_parts, want_dx, cp,
                            slabs, accs, offss, kidxs, wtss, mids, dmids, bi_slabs, bi_accs,
                            bi_offss, bi_wtss, parts, same, shifts, same_kidx, masks, lo, hi,
                            bufs, is_double, row_step):
    n_img, c_in, d_in, h_in, w_in = x.shape
    cm, _, kd_n, kh_n, kw_n = wd.shape
    _, c_out, od_n, oh_n, ow_n = dy.shape
    m = cm // c_in
    kvol = kd_n * kh_n * kw_n
    xf = x.reshape(x.size)
    wdf = wd.reshape(wd.size)
    dxf = dx.reshape(dx.size)
    vol_in = d_in * h_in * w_in
    vol_out = od_n * oh_n * ow_n
    item_size = x.itemsize
    in_shape = (d_in, h_in, w_in)
    out_shape = (od_n, oh_n, ow_n)
    k_shape = (kd_n, kh_n, kw_n)
    for n in numba.prange(n_img):
        blas_set_local_threads(1)
        tid = numba.get_thread_id()
        mid = mids[tid]
        dmid = dmids[tid]
        # the image's depthwise result, recomputed (whole planes: one band per plane)
        for c in range(c_in):
            if same:
                _same_channel(xf, (n * c_in + c) * vol_in, wdf, kd_n * kh_n * kw_n, c * m, m, bd,
                              has_bd, 0, vol_out, shifts, same_kidx, masks, lo, hi, wtss[tid], bufs[tid], mid,
                              c * m * vol_out, vol_out)
                continue
            for od in range(od_n):
                forward_band(xf, (n * c_in + c) * vol_in, in_shape, wdf, c * m, m, k_shape, bd,
                             has_bd, od, 0, oh_n, ow_n, oh_n, cp, slabs[tid], accs[tid],
                             offss[tid], kidxs[tid], wtss[tid], mid,
                             c * m * vol_out + od * oh_n * ow_n, vol_out)
        dy_addr = dy.ctypes.data + n * c_out * vol_out * item_size
        # grad of the pointwise weight: dy (C_out, P) @ mid^T (P, C*m)
        gemm(is_double, 0, 1, c_out, cm, vol_out, 1.0, dy_addr, vol_out, mid.ctypes.data, vol_out,
             1.0, dwp_parts[tid].ctypes.data, cm)
        # grad of the depthwise result: wp^T (C*m, C_out) @ dy (C_out, P)
        gemm(is_double, 1, 0, cm, vol_out, c_out, 1.0, wp.ctypes.data, cm, dy_addr, vol_out, 0.0,
             dmid.ctypes.data, vol_out)
        if want_dx:
            for c in range(c_in):
                for i_d in range(d_in):
                    backward_input_band(dmid, c * m * vol_out, out_shape, wdf, c * m, m, k_shape,
                                        in_shape, i_d, 0, h_in, h_in, cp, bi_slabs[tid],
                                        bi_accs[tid], bi_offss[tid], bi_wtss[tid], dxf,
                                        (n * c_in + c) * vol_in + i_d * h_in * w_in)
        part = parts[tid]
        for c in range(c_in):
            for i in range(m * kvol):
                part[i] = 0.0
            for od in range(od_n):
                # row_step < oh_n: the plane in pieces of row_step rows (weight_band)
                for oh0 in range(0, oh_n, row_step):
                    weight_band(xf, (n * c_in + c) * vol_in, in_shape, dmid, c * m * vol_out,
                                out_shape, m, k_shape, od, oh0, min(oh_n, oh0 + row_step), oh_n,
                                cp, slabs[tid], accs[tid], offss[tid], kidxs[tid], part)
            for j in range(m):
                for k in range(kvol):
                    dwd_parts[tid, c * m + j, k] += part[j * kvol + k]
        blas_set_local_threads(0)


@jit
def _vertical_tile(x, n, wv, wvp, bv, has_bv, oh0, oh1, sh, ph, dh, mid, pack, is_double):
    """mid[(c, r, iw)] = bv[c] + the vertical conv of image n for output rows oh0 + r < oh1.

    mid: 1-d, (C_mid, rows, W) row-major. x (N, C_in, H, W); wvp (C_mid, KH*C_in) (wv with the
    tap axis moved in). The KH input rows of every output row are packed into
    pack (KH*C_in, rows*W) (zero rows in the padding), so the whole tile is one GEMM with
    K = KH*C_in instead of KH GEMMs with K = C_in.
    """
    _, c_in, h_in, w_in = x.shape
    kh_n, c_mid, _ = wv.shape
    rows = oh1 - oh0
    pt = rows * w_in
    xf = x.reshape(x.size)
    for kh in range(kh_n):
        lo, hi = _row_range(oh0, oh1, sh, kh * dh - ph, h_in)
        for ci in range(c_in):
            p0 = (kh * c_in + ci) * pt
            src = (n * c_in + ci) * h_in * w_in
            zero_row(pack, p0, (lo - oh0) * w_in)
            if sh == 1:
                copy_row(pack, p0 + (lo - oh0) * w_in, xf, src + (lo - ph + kh * dh) * w_in,
                         (hi - lo) * w_in)
            else:
                for oh in range(lo, hi):
                    copy_row(pack, p0 + (oh - oh0) * w_in, xf,
                             src + (oh * sh - ph + kh * dh) * w_in, w_in)
            zero_row(pack, p0 + (hi - oh0) * w_in, (oh1 - hi) * w_in)
    for c in range(c_mid):
        b = bv[c] if has_bv else 0.0
        d = mid[c * pt:(c + 1) * pt]
        for q in range(pt):
            d[q] = b
    gemm(is_double, 0, 0, c_mid, pt, kh_n * c_in, 1.0, wvp.ctypes.data, kh_n * c_in,
         pack.ctypes.data, pt, 1.0, mid.ctypes.data, pt)


@jit
def _row_range(oh0, oh1, sh, shift, h_in):
    """Output rows oh in [oh0, oh1) whose input row oh*sh + shift lies in [0, h_in)."""
    lo = oh0
    if shift < 0:
        lo = min(oh1, max(lo, (-shift + sh - 1) // sh))
    hi = min(oh1, (h_in - 1 - shift) // sh + 1) if h_in - 1 - shift >= 0 else oh0
    return lo, max(lo, hi)


@jit
def _horizontal_cols(mid, c_mid, rows, w_in, ow_n, kw_n, sw, pw, dw, cols, adjoint):
    """cols[(c*KW + kw), r*OW + ow] = mid[c, r, ow*sw - pw + kw*dw] (0 outside the row); or, with
    adjoint, mid[...] += cols[...] over the same pairs (mid must be zeroed by the caller)."""
    pt_in = rows * w_in
    pt = rows * ow_n
    for c in range(c_mid):
        for kw in range(kw_n):
            e = kw * dw - pw
            lo = 0 if e >= 0 else min(ow_n, (-e + sw - 1) // sw)
            hi = max(lo, min(ow_n, (w_in - 1 - e) // sw + 1)) if w_in - 1 - e >= 0 else lo
            row0 = (c * kw_n + kw) * pt
            for r in range(rows):
                col = cols[row0 + r * ow_n:row0 + (r + 1) * ow_n]
                src = c * pt_in + r * w_in + e
                if adjoint:
                    for ow in range(lo, hi):
                        mid[src + ow * sw] += col[ow]
                else:
                    for ow in range(lo):
                        col[ow] = 0.0
                    if sw == 1:
                        s = mid[src + lo:src + hi]
                        cl = col[lo:hi]
                        for q in range(hi - lo):
                            cl[q] = s[q]
                    else:
                        for ow in range(lo, hi):
                            col[ow] = mid[src + ow * sw]
                    for ow in range(hi, ow_n):
                        col[ow] = 0.0


@jit_parallel
def _spatial_forward_kernel(x, wv, bv, has_bv, wh, bh, has_bh, out, sh, sw, ph, pw, dh, dw,
                            kw_n, tile_rows, mids, colss, wvp, packs, is_double):
    n_img, _, _, w_in = x.shape
    c_mid = wv.shape[1]
    _, c_out, oh_n, ow_n = out.shape
    n_tiles = (oh_n + tile_rows - 1) // tile_rows
    of = out.reshape(out.size)
    plane = oh_n * ow_n
    item_size = x.itemsize
    for item in numba.prange(n_img * n_tiles):
        blas_set_local_threads(1)
        tid = numba.get_thread_id()
        t = item % n_tiles
        n = item // n_tiles
        oh0 = t * tile_rows
        oh1 = min(oh_n, oh0 + tile_rows)
        rows = oh1 - oh0
        pt = rows * ow_n
        _vertical_tile(x, n, wv, wvp, bv, has_bv, oh0, oh1, sh, ph, dh, mids[tid], packs[tid],
                       is_double)
        cols = colss[tid]
        _horizontal_cols(mids[tid], c_mid, rows, w_in, ow_n, kw_n, sw, pw, dw, cols, False)
        o0 = n * c_out * plane + oh0 * ow_n
        gemm(is_double, 0, 0, c_out, pt, c_mid * kw_n, 1.0, wh.ctypes.data, c_mid * kw_n,
             cols.ctypes.data, pt, 0.0, out.ctypes.data + o0 * item_size, plane)
        if has_bh:
            for co in range(c_out):
                b = bh[co]
                o = of[o0 + co * plane:o0 + co * plane + pt]
                for q in range(pt):
                    o[q] += b


@jit_parallel
def _spatial_backward_kernel(x, wv, bv, has_bv, wh, dy, dx, dwv_parts, dwh_parts, dbv_parts,
                             sh, sw, ph, pw, dh, dw, kw_n, tile_rows, mids, colss, want_dx,
                             wvp, packs, is_double):
    n_img, c_in, h_in, w_in = x.shape
    kh_n, c_mid, _ = wv.shape
    _, c_out, oh_n, ow_n = dy.shape
    n_tiles = (oh_n + tile_rows - 1) // tile_rows
    plane = oh_n * ow_n
    k_h = c_mid * kw_n
    item_size = x.itemsize
    for n in numba.prange(n_img):
        blas_set_local_threads(1)
        tid = numba.get_thread_id()
        mid = mids[tid]
        cols = colss[tid]
        if want_dx:
            dx[n] = 0.0
        for t in range(n_tiles):
            oh0 = t * tile_rows
            oh1 = min(oh_n, oh0 + tile_rows)
            rows = oh1 - oh0
            pt = rows * ow_n
            pt_in = rows * w_in
            _vertical_tile(x, n, wv, wvp, bv, has_bv, oh0, oh1, sh, ph, dh, mid, packs[tid],
                           is_double)
            _horizontal_cols(mid, c_mid, rows, w_in, ow_n, kw_n, sw, pw, dw, cols, False)
            dy_addr = dy.ctypes.data + (n * c_out * plane + oh0 * ow_n) * item_size
            gemm(is_double, 0, 1, c_out, k_h, pt, 1.0, dy_addr, plane, cols.ctypes.data, pt, 1.0,
                 dwh_parts[tid].ctypes.data, k_h)
            gemm(is_double, 1, 0, k_h, pt, c_out, 1.0, wh.ctypes.data, k_h, dy_addr, plane, 0.0,
                 cols.ctypes.data, pt)
            # dmid in place of mid
            dm = mid[0:c_mid * pt_in]
            for q in range(c_mid * pt_in):
                dm[q] = 0.0
            _horizontal_cols(mid, c_mid, rows, w_in, ow_n, kw_n, sw, pw, dw, cols, True)
            for c in range(c_mid):
                s = 0.0
                for q in range(c * pt_in, (c + 1) * pt_in):
                    s += mid[q]
                dbv_parts[tid, c] += s
            for kh in range(kh_n):
                lo, hi = _row_range(oh0, oh1, sh, kh * dh - ph, h_in)
                if hi <= lo:
                    continue
                w_addr = wv.ctypes.data + kh * c_mid * c_in * item_size
                for oh in range(lo, hi) if sh != 1 else range(lo, lo + 1):
                    span = (hi - lo) if sh == 1 else 1
                    ih = oh * sh - ph + kh * dh
                    x_addr = x.ctypes.data + (n * c_in * h_in + ih) * w_in * item_size
                    dm_addr = mid.ctypes.data + (oh - oh0) * w_in * item_size
                    dwv_addr = dwv_parts[tid].ctypes.data + kh * c_mid * c_in * item_size
                    gemm(is_double, 0, 1, c_mid, c_in, span * w_in, 1.0, dm_addr, pt_in, x_addr,
                         h_in * w_in, 1.0, dwv_addr, c_in)
                    if want_dx:
                        gemm(is_double, 1, 0, c_in, span * w_in, c_mid, 1.0, w_addr, c_in, dm_addr,
                             pt_in, 1.0, dx.ctypes.data + (n * c_in * h_in + ih) * w_in * item_size,
                             h_in * w_in)


def _rows_per_tile(bytes_per_row, rows, items_per_row_set, threads, budget=1 << 19):
    """Rows per tile: as many as fit the per-thread budget, fewer while work items are too few."""
    tile = max(1, min(rows, budget // max(1, bytes_per_row)))
    while items_per_row_set * (-(-rows // tile)) < 2 * threads and tile > 1:
        tile = max(1, tile // 2)
    return tile


def _balanced(tile, rows):
    """The same number of tiles of at most ``tile`` rows, as equal as can be."""
    count = -(-rows // max(1, tile))
    return -(-rows // count)


def _l2_budget(share=1.0):
    """Bytes of per-thread tile: ``share`` of this core's L2 (machine.cache_bytes). The tiles
    feed GEMMs, whose efficiency grows with the tile width: up to the whole L2."""
    return int(machine.cache_bytes()["l2"] * share)


def _same_args(x, wd, cp, out, band, threads):
    """(same, shifts, kidx, masks, lo, hi, bufs) for the kernels: the stride-1 'same' depthwise
    path (masked in-place passes over bands of ``band`` elements) where it applies."""
    same = (cp[:3] == (1, 1, 1) and tuple(out.shape[2:]) == tuple(x.shape[2:])
            and (x.shape[2] > 1 or x.shape[3] > 1)
            and (int(np.prod(wd.shape[2:])) <= 9 or out.shape[4] < 32))  # as forward_algorithm
    if not same:
        empty, masks = np.zeros(0, dtype=np.int64), np.zeros((0, 1), np.uint8)
        empty.flags.writeable = masks.flags.writeable = False  # the types of same_taps' arrays
        return False, empty, empty, masks, 0, 0, np.zeros((threads, 1), x.dtype)
    shifts, kidx, masks = same_taps(tuple(wd.shape[2:]), cp, tuple(x.shape[2:]))
    lo, hi = same_taps_reach(shifts)
    return (True, shifts, kidx, masks, lo, hi, np.empty((threads, lo + band + hi), x.dtype))


def dsconv_forward(x, wd, bd, wp, bp, stride, padding, dilation, out):
    """out = pointwise(depthwise(x, wd) + bd, wp) + bp. Shapes as in the module docstring."""
    if out.size == 0:
        return out
    threads = numba.get_num_threads()
    cm = wd.shape[0]
    n_img, _, od_n, oh_n, ow_n = out.shape
    if cm == 0:
        out[...] = 0.0 if bp is None else bp.reshape(1, -1, 1, 1, 1)
        return out
    cp = conv_params(stride, padding, dilation)
    tile_rows = _balanced(_rows_per_tile(cm * ow_n * x.itemsize, oh_n, n_img * od_n, threads,
                                         _l2_budget()), oh_n)
    scratch = forward_scratch(tuple(wd.shape[2:]), cp, tile_rows, ow_n, x.dtype, threads)
    mids = np.empty((threads, cm * tile_rows * ow_n), dtype=x.dtype)
    dummy = np.zeros(1, dtype=x.dtype)
    _dsconv_forward_kernel(x, wd, dummy if bd is None else bd, bd is not None, wp,
                           dummy if bp is None else bp, bp is not None, out, cp, tile_rows,
                           *scratch, mids, *_same_args(x, wd, cp, out, tile_rows * ow_n, threads),
                           x.dtype == np.float64)
    return out


def dsconv_backward(x, wd, bd, wp, dy, stride, padding, dilation, dx):
    """Gradients of dsconv_forward: fills dx (or skips it when dx is None) and returns
    (dwd (C*m, 1, KD, KH, KW), dwp (C_out, C*m), dbd (C*m,), dbp (C_out,))."""
    threads = numba.get_num_threads()
    c_in = x.shape[1]
    cm = wd.shape[0]
    c_out = wp.shape[0]
    od_n, oh_n, ow_n = dy.shape[2:]
    k_shape = tuple(wd.shape[2:])
    kvol = int(np.prod(k_shape))
    dy64 = dy.sum(axis=(0, 2, 3, 4), dtype=np.float64)
    dbp = dy64.astype(x.dtype)
    # the depthwise bias gradient is the sum of dmid = wp^T dy over positions: wp^T (sum of dy)
    dbd = (wp.astype(np.float64).T @ dy64).astype(x.dtype)
    dwd_parts = np.zeros((threads, cm, kvol), dtype=np.float64)
    dwp_parts = np.zeros((threads, c_out, cm), dtype=x.dtype)
    if dy.size == 0 or cm == 0 or x.size == 0:
        if dx is not None:
            dx[...] = 0.0
    else:
        cp = conv_params(stride, padding, dilation)
        vol_out = od_n * oh_n * ow_n
        m = cm // c_in
        scratch = forward_scratch(k_shape, cp, oh_n, ow_n, x.dtype, threads)
        mids = np.empty((threads, cm * vol_out), dtype=x.dtype)
        dmids = np.empty((threads, cm * vol_out), dtype=x.dtype)
        bi_slab, bi_acc = backward_input_scratch_sizes(k_shape, cp, m, x.shape[3], x.shape[4])
        parts = np.empty((threads, m * kvol), dtype=np.float64)
        dummy = np.zeros(1, dtype=x.dtype)
        args = (x, wd, dummy if bd is None else bd, bd is not None, wp, dy,
                dummy.reshape(1, 1, 1, 1, 1) if dx is None else dx, dwd_parts, dwp_parts,
                dx is not None, cp, *scratch, mids, dmids,
                np.zeros((threads, bi_slab), dtype=x.dtype), np.empty((threads, bi_acc), x.dtype),
                np.empty((threads, m * kvol), dtype=np.int64),
                np.empty((threads, m * kvol), x.dtype), parts,
                *_same_args(x, wd, cp, dy, vol_out, threads), x.dtype == np.float64)
        _dsconv_backward_kernel(*args, oh_n)
        if oh_n > 1 and np.isnan(dwd_parts).any():
            # maybe 0 * inf in the junk columns of a plane (depthwise_core.weight_band): the
            # weight gradients again, a row at a time (dx is right already)
            dwd_parts[...] = 0.0
            dwp_parts[...] = 0.0
            args = args[:9] + (False,) + args[10:]
            _dsconv_backward_kernel(*args, 1)
    dwd = dwd_parts.sum(axis=0).astype(x.dtype).reshape(wd.shape)
    dwp = dwp_parts.sum(axis=0, dtype=np.float64).astype(x.dtype)
    return dwd, dwp, dbd, dbp


def _spatial_tile(c_in, c_mid, kh_n, kw_n, w_in, ow_n, oh_n, n_img, itemsize, threads):
    """Rows per tile of the spatial kernels: mid, the horizontal patches and the vertical pack of
    a tile within the L2 budget (balanced tiles: no short last tile for a GEMM)."""
    per_row = (c_mid * w_in + c_mid * kw_n * ow_n + kh_n * c_in * w_in) * itemsize
    return _balanced(_rows_per_tile(per_row, oh_n, n_img, threads, budget=_l2_budget()), oh_n)


def _spatial_scratch(x, wv, kw_n, tile, ow_n, threads):
    """(mids, colss, wvp, packs): per-thread tiles and the vertical weight as (C_mid, KH*C_in)."""
    kh_n, c_mid, c_in = wv.shape
    w_in = x.shape[3]
    return (np.empty((threads, c_mid * tile * w_in), dtype=x.dtype),
            np.empty((threads, c_mid * kw_n * tile * ow_n), dtype=x.dtype),
            np.ascontiguousarray(wv.transpose(1, 0, 2).reshape(c_mid, kh_n * c_in)),
            np.empty((threads, kh_n * c_in * tile * w_in), dtype=x.dtype))


def spatial_forward(x, wv, bv, wh, bh, kw_n, stride, padding, dilation, out):
    """out = horizontal(vertical(x, wv) + bv, wh) + bh. Shapes as in the module docstring;
    stride, padding (low side), dilation: (vertical axis, horizontal axis)."""
    if out.size == 0:
        return out
    threads = numba.get_num_threads()
    n_img, _, oh_n, ow_n = out.shape
    kh_n, c_mid, c_in = wv.shape
    tile = _spatial_tile(c_in, c_mid, kh_n, kw_n, x.shape[3], ow_n, oh_n, n_img, x.itemsize,
                         threads)
    mids, colss, wvp, packs = _spatial_scratch(x, wv, kw_n, tile, ow_n, threads)
    dummy = np.zeros(1, dtype=x.dtype)
    _spatial_forward_kernel(x, wv, dummy if bv is None else bv, bv is not None, wh,
                            dummy if bh is None else bh, bh is not None, out, stride[0], stride[1],
                            padding[0], padding[1], dilation[0], dilation[1], kw_n, tile, mids,
                            colss, wvp, packs, x.dtype == np.float64)
    return out


def spatial_backward(x, wv, bv, wh, dy, kw_n, stride, padding, dilation, dx):
    """Gradients of spatial_forward: fills dx (unless None) and returns (dwv (KH, C_mid, C_in),
    dwh (C_out, C_mid*KW), dbv (C_mid,), dbh (C_out,))."""
    threads = numba.get_num_threads()
    n_img, c_in = x.shape[:2]
    kh_n, c_mid, _ = wv.shape
    c_out, oh_n, ow_n = dy.shape[1:]
    dbh = dy.sum(axis=(0, 2, 3), dtype=np.float64).astype(x.dtype)
    dwv_parts = np.zeros((threads, kh_n, c_mid, c_in), dtype=x.dtype)
    dwh_parts = np.zeros((threads, c_out, c_mid * kw_n), dtype=x.dtype)
    dbv_parts = np.zeros((threads, c_mid), dtype=np.float64)
    if dy.size == 0 or x.size == 0 or c_mid == 0:
        if dx is not None:
            dx[...] = 0.0
    else:
        tile = _spatial_tile(c_in, c_mid, kh_n, kw_n, x.shape[3], ow_n, oh_n, 1, x.itemsize,
                             threads)
        mids, colss, wvp, packs = _spatial_scratch(x, wv, kw_n, tile, ow_n, threads)
        dummy = np.zeros(1, dtype=x.dtype)
        _spatial_backward_kernel(x, wv, dummy if bv is None else bv, bv is not None, wh, dy,
                                 dummy.reshape(1, 1, 1, 1) if dx is None else dx, dwv_parts,
                                 dwh_parts, dbv_parts, stride[0], stride[1], padding[0],
                                 padding[1], dilation[0], dilation[1], kw_n, tile, mids, colss,
                                 dx is not None, wvp, packs, x.dtype == np.float64)
    sum64 = lambda a: a.sum(axis=0, dtype=np.float64).astype(x.dtype)  # noqa: E731
    return sum64(dwv_parts), sum64(dwh_parts), dbv_parts.sum(axis=0).astype(x.dtype), dbh
