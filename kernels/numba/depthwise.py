"""Depthwise convolution on the CPU (groups == C_in, any channel multiplier m): forward, input
gradient and weight gradient, for every stride, dilation, kernel size and rank.

Rank-3 canonical form, C-contiguous NumPy arrays (NCDHW):

    x    (N, C, D, H, W)              input; 1-d and 2-d convolutions have D = H = 1 (and W for 1-d)
    w    (C*m, 1, KD, KH, KW)         output channel c*m + j reads input channel c
    out  (N, C*m, OD, OH, OW)         its shape gives the output size (asymmetric 'same' padding)

``padding`` is the padding before the first element of each axis.

x, out (and dy, dx) may also be channels_last views of those shapes (channels innermost).

A depthwise convolution does KD*KH*KW multiply-adds per output element and reads each input
once: it is memory-bound, and the kernels are built so that each input and output element
crosses DRAM once while the arithmetic runs as long FMA streams. forward_algorithm picks the
forward (its docstring holds the table):

* 'row_stream' (depthwise_core): item (image, input channel, band of output rows); the band's
  input window is copied once into a phase slab, which makes every stride and dilation contiguous
  streams. The band is as tall as fits a share of L2 (machine.cache_bytes), short enough that
  there are several items per thread.
* 'same' (stride 1, output volume = input volume, 2-d/3-d): item (image, output channel); one
  masked pass over the whole plane read in place (depthwise_core.masked_pass).
* 'channel_vector': channels_last tensors (depthwise_nhwc: a whole output row per pass, a weight
  vector per tap) and, for NCHW, planes with rows of a few elements (depthwise_cl tiles).

Gradients:

* input: item (image, input channel, band of input rows), which owns its rows of dx, in the
  transposed-stride form (depthwise_core.backward_input_band). channels_last dy/dx with stride 1
  and multiplier 1: the channels_last forward of dy with the flipped kernel, in place.
* weight: an input channel (its m output channels) over every image, per-lane partial sums per
  band (dot4) accumulated in float64 in a fixed order (a NaN in the result is checked: it may
  come from the junk columns of a band, 0 * inf, so the gradient is then taken again with one
  row per band); channels_last: per-lane running sums per
  (image, band) item, the items summed in order (depthwise_nhwc.weight_kernel). Results do not
  depend on the thread count.
"""
import functools

import numba
import numpy as np

from .. import machine
from . import depthwise_cl, depthwise_nhwc
from ._jit import jit_parallel_fma
from .depthwise_core import (backward_input_band, backward_input_scratch_sizes,
                             band_scratch_sizes, forward_band, masked_band, total, weight_band)


@jit_parallel_fma
def _forward_kernel(x, w, bias, has_bias, out, cp, band_rows, slabs, accs, offss, kidxs, wtss):
    n_img, c_in, d_in, h_in, w_in = x.shape
    c_out, _, kd_n, kh_n, kw_n = w.shape
    _, _, od_n, oh_n, ow_n = out.shape
    m = c_out // c_in
    xf = x.reshape(x.size)
    wf = w.reshape(w.size)
    of = out.reshape(out.size)
    vol_in = d_in * h_in * w_in
    vol_out = od_n * oh_n * ow_n
    n_bands = (oh_n + band_rows - 1) // band_rows
    for item in numba.prange(n_img * c_in * n_bands):
        tid = numba.get_thread_id()
        band = item % n_bands
        nc = item // n_bands
        n = nc // c_in
        c = nc - n * c_in
        oh0 = band * band_rows
        oh1 = min(oh_n, oh0 + band_rows)
        for od in range(od_n):
            forward_band(xf, nc * vol_in, (d_in, h_in, w_in), wf, c * m, m, (kd_n, kh_n, kw_n),
                         bias, has_bias, od, oh0, oh1, ow_n, band_rows, cp, slabs[tid], accs[tid],
                         offss[tid], kidxs[tid], wtss[tid], of,
                         (n * c_out + c * m) * vol_out + (od * oh_n + oh0) * ow_n, vol_out)


@jit_parallel_fma
def _same_forward_kernel(x, w, bias, has_bias, out, shifts, kidx, masks, lo, hi, bufs, wtss):
    """Stride-1 'same' convolution (output volume = input volume): one masked pass per output
    channel volume, read in place (masked_band)."""
    n_img, c_in, d_in, h_in, w_in = x.shape
    c_out = w.shape[0]
    m = c_out // c_in
    kvol = w.shape[2] * w.shape[3] * w.shape[4]
    vol = d_in * h_in * w_in
    xf = x.reshape(x.size)
    wf = w.reshape(w.size)
    of = out.reshape(out.size)
    ntaps = shifts.size
    for item in numba.prange(n_img * c_out):
        tid = numba.get_thread_id()
        wts = wtss[tid]
        n = item // c_out
        co = item - n * c_out
        for t in range(ntaps):
            wts[t] = wf[co * kvol + kidx[t]]
        masked_band(of[item * vol:(item + 1) * vol], vol, bias[co] if has_bias else 0.0, xf,
                    (n * c_in + co // m) * vol, 0, lo, hi, shifts, wts, masks, ntaps, bufs[tid])


@functools.lru_cache(maxsize=64)
def same_taps(k_shape, cp, spatial):
    """(shifts, kidx, masks): the flat shift, kernel index and validity mask (uint8, one row of
    D*H*W per tap) of every tap of a stride-1 'same' convolution that reads the input at all."""
    d_in, h_in, w_in = spatial
    pd, ph, pw, dd, dh, dw = cp[3:]
    kd_n, kh_n, kw_n = k_shape
    grid = np.indices(spatial).reshape(3, -1)
    shifts, kidx, masks = [], [], []
    for kd in range(kd_n):
        for kh in range(kh_n):
            for kw in range(kw_n):
                off = (kd * dd - pd, kh * dh - ph, kw * dw - pw)
                valid = np.ones(grid.shape[1], dtype=bool)
                for axis, size in enumerate(spatial):
                    pos = grid[axis] + off[axis]
                    valid &= (pos >= 0) & (pos < size)
                if not valid.any():
                    continue
                shifts.append((off[0] * h_in + off[1]) * w_in + off[2])
                kidx.append((kd * kh_n + kh) * kw_n + kw)
                masks.append(valid)
    if not shifts:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64),
                np.zeros((0, d_in * h_in * w_in), np.uint8))
    result = (np.array(shifts, dtype=np.int64), np.array(kidx, dtype=np.int64),
              np.ascontiguousarray(np.array(masks, dtype=np.uint8)))
    for a in result:
        a.flags.writeable = False  # cached: shared by every call of this geometry
    return result


def same_taps_reach(shifts):
    """(lo, hi): how far before and after an element the taps of _same_taps read."""
    if not shifts.size:
        return 0, 0
    return int(max(0, -shifts.min())), int(max(0, shifts.max()))


def _same_forward(x, w, bias, cp, out):
    threads = numba.get_num_threads()
    shifts, kidx, masks = same_taps(tuple(w.shape[2:]), cp, tuple(x.shape[2:]))
    lo, hi = same_taps_reach(shifts)
    vol = int(np.prod(x.shape[2:]))
    bufs = np.empty((threads, lo + vol + hi), dtype=x.dtype)
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, dtype=x.dtype)
    _same_forward_kernel(x, w, b, has_bias, out, shifts, kidx, masks, lo, hi, bufs,
                         np.empty((threads, max(1, shifts.size)), dtype=x.dtype))
    return out


@jit_parallel_fma
def _backward_input_kernel(dy, w, dx, cp, band_rows, slabs, accs, offss, wtss):
    n_img, c_out, od_n, oh_n, ow_n = dy.shape
    _, _, kd_n, kh_n, kw_n = w.shape
    _, c_in, d_in, h_in, w_in = dx.shape
    m = c_out // c_in
    dyf = dy.reshape(dy.size)
    wf = w.reshape(w.size)
    dxf = dx.reshape(dx.size)
    vol_in = d_in * h_in * w_in
    vol_out = od_n * oh_n * ow_n
    n_bands = (h_in + band_rows - 1) // band_rows
    for item in numba.prange(n_img * c_in * n_bands):
        tid = numba.get_thread_id()
        band = item % n_bands
        nc = item // n_bands
        n = nc // c_in
        c = nc - n * c_in
        ih0 = band * band_rows
        ih1 = min(h_in, ih0 + band_rows)
        for i_d in range(d_in):
            backward_input_band(dyf, (n * c_out + c * m) * vol_out, (od_n, oh_n, ow_n), wf,
                                c * m, m, (kd_n, kh_n, kw_n), (d_in, h_in, w_in), i_d, ih0, ih1,
                                band_rows, cp, slabs[tid], accs[tid], offss[tid], wtss[tid], dxf,
                                nc * vol_in + (i_d * h_in + ih0) * w_in)


@jit_parallel_fma
def _backward_weight_kernel(x, dy, dw_out, db_out, want_bias, cp, band_rows, row_step, slabs,
                            dyws, offss, kidxs, parts):
    n_img, c_in, d_in, h_in, w_in = x.shape
    _, c_out, od_n, oh_n, ow_n = dy.shape
    _, kd_n, kh_n, kw_n = dw_out.shape
    m = c_out // c_in
    kvol = kd_n * kh_n * kw_n
    xf = x.reshape(x.size)
    dyf = dy.reshape(dy.size)
    dwf = dw_out.reshape(dw_out.size)
    vol_in = d_in * h_in * w_in
    vol_out = od_n * oh_n * ow_n
    n_bands = (oh_n + band_rows - 1) // band_rows
    for c in numba.prange(c_in):
        tid = numba.get_thread_id()
        part = parts[tid]
        for i in range(m * kvol):
            part[i] = 0.0
        for n in range(n_img):
            dy_chan = (n * c_out + c * m) * vol_out
            if want_bias:
                for j in range(m):
                    db_out[c * m + j] += total(dyf, dy_chan + j * vol_out, vol_out)
            for od in range(od_n):
                for band in range(n_bands):
                    oh1 = min(oh_n, (band + 1) * band_rows)
                    # row_step < band_rows: the band in pieces of row_step rows (weight_band)
                    for oh0 in range(band * band_rows, oh1, row_step):
                        weight_band(xf, (n * c_in + c) * vol_in, (d_in, h_in, w_in), dyf,
                                    dy_chan, (od_n, oh_n, ow_n), m, (kd_n, kh_n, kw_n), od, oh0,
                                    min(oh1, oh0 + row_step), band_rows, cp, slabs[tid],
                                    dyws[tid], offss[tid], kidxs[tid], part)
        for i in range(m * kvol):
            dwf[c * m * kvol + i] = part[i]


def _scratch_budget(itemsize):
    """Elements of per-thread slab scratch: a quarter of this core's L2 (the rest holds the
    streams' lines and the output), never less than a few KiB."""
    return max(4096, machine.cache_bytes()["l2"] // 4) // itemsize


def _rows_per_band(rows_total, items, threads, slab_of_rows, budget):
    """Rows per band: as many as keep slab_of_rows(rows) within budget, halved while there are
    fewer than four items per thread."""
    rows = max(1, rows_total)
    while rows > 1 and slab_of_rows(rows) > budget:
        rows = (rows + 1) // 2
    while rows > 1 and items * (-(-rows_total // rows)) < 4 * threads:
        rows = (rows + 1) // 2
    return rows


def conv_params(stride, padding, dilation):
    """The cp tuple of depthwise_core: (sd, sh, sw, pd, ph, pw, dd, dh, dw) as Python ints."""
    return tuple(int(v) for v in (*stride, *padding, *dilation))


def forward_scratch(k_shape, cp, band_rows, ow_n, dtype, threads):
    """Per-thread scratch of depthwise_core.forward_band: (slabs, accs, offss, kidxs, wtss)."""
    slab, acc = band_scratch_sizes(k_shape, cp, band_rows, ow_n)
    kvol = int(np.prod(k_shape))
    # the slab zeroed: its padding columns are never written (depthwise_core.fill_phases)
    return (np.zeros((threads, slab), dtype=dtype), np.empty((threads, acc), dtype=dtype),
            np.empty((threads, kvol), dtype=np.int64), np.empty((threads, kvol), dtype=np.int64),
            np.empty((threads, kvol), dtype=dtype))


def forward_band_rows(k_shape, cp, oh_n, ow_n, items, itemsize, threads):
    """Rows per forward band (see _rows_per_band)."""
    return _rows_per_band(oh_n, items, threads,
                          lambda r: band_scratch_sizes(k_shape, cp, r, ow_n)[0],
                          _scratch_budget(itemsize))


def dense_flat(a):
    """(flat, strides): the 1-d storage of an array whose elements fill a dense block in some axis
    order (C-contiguous, channels_last, ...) and its element strides, or None for other arrays."""
    order = sorted(range(a.ndim), key=lambda i: -a.strides[i])
    dense = a.transpose(order)
    if not dense.flags.c_contiguous:
        return None
    return dense.reshape(-1), tuple(int(st) // a.itemsize for st in a.strides)


def is_channels_last(a):
    """Channels (axis 1) are the innermost axis of a's storage, and there is more than one."""
    return a.shape[1] > 1 and a.strides[1] == a.itemsize and not a.flags.c_contiguous


def blocked_weight(w, bias, chunk):
    """(wrep (blocks, KD*KH*KW, chunk), brep (blocks, chunk)): per block of CB output channels,
    each tap's CB-lane weight vector (lanes past C*m zero) repeated to chunk lanes, and the
    bias likewise (depthwise_cl)."""
    cb = depthwise_cl.CB
    c_out = w.shape[0]
    kvol = w.size // max(1, c_out)
    blocks = -(-c_out // cb)
    wpad = np.zeros((blocks * cb, kvol), dtype=w.dtype)
    wpad[:c_out] = w.reshape(c_out, kvol)
    bpad = np.zeros(blocks * cb, dtype=w.dtype)
    if bias is not None:
        bpad[:c_out] = bias
    wblk = wpad.reshape(blocks, cb, kvol).transpose(0, 2, 1)
    reps = chunk // cb
    return (np.ascontiguousarray(np.tile(wblk, (1, 1, reps))),
            np.ascontiguousarray(np.tile(bpad.reshape(blocks, cb), (1, reps))))


def _channel_vector_forward(x, w, bias, cp, out):
    threads = numba.get_num_threads()
    cb = depthwise_cl.CB
    k_shape = tuple(w.shape[2:])
    kvol = int(np.prod(k_shape))
    c_out = w.shape[0]
    oh_n, ow_n = out.shape[3], out.shape[4]
    xf, x_strides = dense_flat(x)
    of, o_strides = dense_flat(out)
    sh, sw = cp[1], cp[2]
    cq = -(-((ow_n - 1) * sw + (k_shape[2] - 1) * cp[8] + 1) // sw)

    def tile_size(rows):
        rq = -(-((rows - 1) * sh + (k_shape[1] - 1) * cp[7] + 1) // sh)
        return k_shape[0] * sh * sw * rq * cq * cb

    band_rows = _rows_per_band(oh_n, x.shape[0] * -(-c_out // cb), threads, tile_size,
                               _scratch_budget(x.itemsize))
    # the repeated weight vectors of every tap fill at most a quarter of L1
    l1 = machine.cache_bytes()["l1d"] // (4 * x.itemsize)
    chunk = cb * max(1, min(16, l1 // max(1, (kvol + 1) * cb)))
    wrep, brep = blocked_weight(w, bias, chunk)
    depthwise_cl.forward_kernel(
        xf, x_strides, x.shape, wrep, brep, chunk, of, o_strides, out.shape, c_out // x.shape[1],
        k_shape, cp, band_rows, np.zeros((threads, tile_size(band_rows)), dtype=x.dtype),
        np.empty((threads, band_rows * cq * cb), dtype=x.dtype),
        np.empty((threads, kvol), dtype=np.int64),
        np.empty((threads, kvol * chunk), dtype=x.dtype))
    return out


# channels_last with multiplier 1 and at least this many channels (the second number: column
# stride > 1): depthwise_nhwc.direct_kernel, x read in place, a pass per output pixel. Fewer
# channels make its per-pixel set-up dominate. Measured on 2 threads, A/B against the slab path in
# alternating processes: C576 14x14 k3 s2 0.27 -> 0.20 ms, C1152 7x7 k5 0.78 -> 0.48 ms, but
# C144 56x56 k3 s1 1.9 -> 2.8 ms and C64 56x56 k3 s2 0.38 -> 0.63 ms: the direct kernel from 256.
DIRECT_MIN_CHANNELS = (256, 256)


def _channels_last_forward(x, w, bias, cp, out, finite):
    """depthwise_nhwc on channels_last x and out (x_strides / o_strides from dense_flat); finite:
    the caller's np.isfinite(w).all()."""
    threads = numba.get_num_threads()
    k_shape = tuple(w.shape[2:])
    kvol = int(np.prod(k_shape))
    c_out = w.shape[0]
    oh_n, ow_n = out.shape[3], out.shape[4]
    xf, x_strides = dense_flat(x)
    of, o_strides = dense_flat(out)
    if c_out == x.shape[1] and c_out >= DIRECT_MIN_CHANNELS[cp[2] > 1] and finite:
        # wide pixels, multiplier 1: read x in place, one pass per output pixel. It forms no
        # product with the zero padding; torch does (0 * inf = NaN there), so a weight with a
        # NaN or an infinity takes the slab path, which multiplies the padding as torch does.
        b = bias if bias is not None else np.zeros(c_out, dtype=x.dtype)
        depthwise_nhwc.direct_kernel(
            xf, x_strides, x.shape, np.ascontiguousarray(w.reshape(c_out, kvol).T), b, of,
            o_strides, out.shape, k_shape, cp, np.empty((threads, kvol), dtype=np.int64),
            np.empty((threads, kvol), dtype=np.int64))
        return out
    sh, sw = cp[1], cp[2]
    cq = -(-((ow_n - 1) * sw + (k_shape[2] - 1) * cp[8] + 1) // sw)

    def slab_size(rows):
        return k_shape[0] * ((rows - 1) * sh + (k_shape[1] - 1) * cp[7] + 1) * sw * cq * c_out

    band_rows = _rows_per_band(oh_n, x.shape[0] * out.shape[2], threads, slab_size,
                               _scratch_budget(x.itemsize))
    # weight vectors repeated over whole pixels, about 256 lanes (a few vectors per tap)
    chunk = c_out * max(1, -(-256 // c_out))
    wmat = w.reshape(c_out, kvol).T
    wrep = np.ascontiguousarray(np.tile(wmat, (1, chunk // c_out)))
    brep = np.tile(bias if bias is not None else np.zeros(c_out, dtype=x.dtype), chunk // c_out)
    depthwise_nhwc.forward_kernel(
        xf, x_strides, x.shape, wrep, np.ascontiguousarray(brep, dtype=x.dtype), chunk, of,
        o_strides, out.shape, c_out // x.shape[1], k_shape, cp, band_rows,
        np.zeros((threads, slab_size(band_rows)), dtype=x.dtype),
        np.empty((threads, kvol), dtype=np.int64), np.empty((threads, kvol * chunk), x.dtype))
    return out


# Output rows shorter than this many elements go to the channel-vectorised kernels even for NCHW
# tensors: the row streams' per-row set-up then outweighs their work.
SHORT_ROW = 8


def forward_algorithm(x, out, k_shape, stride, blocked_ok=False):
    """The forward algorithm, chosen from the layout and the shape (single-core timings here):

    =====================================  ================================================
    channels_last x                        'channel_vector' (depthwise_nhwc: its direct
                                           kernel from DIRECT_MIN_CHANNELS channels with
                                           multiplier 1 and a finite weight, else the
                                           slab; depthwise_cl for C == 1)
    NCHW, output rows < 8, multiplier 1,   'blocked' (depthwise_nhwc.blocked_kernel:
    finite weight (blocked_ok), C >= 64    blocks of channels transposed in cache, a pass
                                           per output pixel; 2 threads, N8 C576 14x14 k3
                                           s2 1.04 -> 0.55 ms, C960 7x7 k3 0.65 -> 0.39,
                                           C768 7x7 k7 1.30 -> 0.65; on 14x14 outputs it
                                           loses to 'same' and the row streams)
    2-d/3-d, stride 1, output volume =     'same' (masked in-place streams over whole
    input's, and <= 9 taps or rows < 32    planes: no padded copy, no copy-out; two
                                           operations per tap, so long rows with many taps
                                           go to the row streams)
    output rows < 8                        'channel_vector' (depthwise_cl: CB-channel tiles)
    otherwise (and every 1-d conv)         'row_stream' (depthwise_core phase slab)
    =====================================  ================================================

    DLKERN_DEPTHWISE_ALGO=same|row_stream|channel_vector|blocked forces one (tests run each);
    'same' falls back to 'row_stream' where it does not apply, 'blocked' to the table's choice.
    """
    import os

    forced = os.environ.get("DLKERN_DEPTHWISE_ALGO")
    same = tuple(stride) == (1, 1, 1) and tuple(out.shape[2:]) == tuple(x.shape[2:])
    if forced in ("channel_vector", "row_stream"):
        return forced
    if forced == "same":
        return "same" if same else "row_stream"
    if forced == "blocked" and blocked_ok:
        return "blocked"
    if is_channels_last(x):
        return "channel_vector"
    if blocked_ok and _blocked_shape(out.shape[4], x.shape[1]):
        return "blocked"
    planar = x.shape[2] > 1 or x.shape[3] > 1
    if same and planar and (int(np.prod(k_shape)) <= 9 or out.shape[4] < 32):
        return "same"
    if out.shape[4] < SHORT_ROW:
        return "channel_vector"
    return "row_stream"


# Fewer channels than this stay on the CB-channel tiles (N8 C32 7x7 k3, 2 threads: 0.10 ms tiles,
# 0.12 ms blocked; C64 within noise, C144 14x14 k3 s2 0.34 -> 0.24 ms).
BLOCKED_MIN_CHANNELS = 64

# Channels per block of depthwise_nhwc.blocked_kernel (2 threads, N8 C960 7x7 k3: 32 channels
# 0.83 ms, 64 0.50, 128 0.39; C576 14x14 k3 s2: 0.66 / 0.54 / 0.55).
BLOCK_CHANNELS = 128


def _use_blocked(rows, channels):
    """The 'blocked' kernels for these output rows and channels (multiplier 1 and the layout are
    the caller's conditions): forced by DLKERN_DEPTHWISE_ALGO=blocked, else short rows of many
    channels, as forward_algorithm decides."""
    import os

    if os.environ.get("DLKERN_DEPTHWISE_ALGO") == "blocked":
        return True
    return _blocked_shape(rows, channels)


def _blocked_shape(rows, channels):
    """Where the 'blocked' kernels win: short output rows of many channels."""
    return rows < SHORT_ROW and channels >= BLOCKED_MIN_CHANNELS


def _blocked_backward_weight(x, dy, k_shape, cp):
    """depthwise_nhwc.blocked_weight_kernel on C-contiguous x and dy: dw (C, KD*KH*KW) float64."""
    threads = numba.get_num_threads()
    c = x.shape[1]
    cbk = min(c, BLOCK_CHANNELS)
    n_blk = -(-c // cbk)
    kvol = int(np.prod(k_shape))
    result = np.zeros((x.shape[0] * n_blk, kvol, cbk), dtype=np.float64)
    depthwise_nhwc.blocked_weight_kernel(
        x, dy, k_shape, cp, cbk, np.empty((threads, cbk * int(np.prod(x.shape[2:]))), x.dtype),
        np.empty((threads, cbk * int(np.prod(dy.shape[2:]))), x.dtype),
        np.empty((threads, kvol), dtype=np.int64), np.empty((threads, kvol), dtype=np.int64),
        np.empty((threads, kvol * cbk), dtype=x.dtype), result)
    # sum the images in order; block b holds channels b*cbk ..
    per_block = result.reshape(x.shape[0], n_blk, kvol, cbk).sum(axis=0)
    return per_block.transpose(0, 2, 1).reshape(n_blk * cbk, kvol)[:c]


def _blocked_forward(x, w, bias, cp, out):
    """depthwise_nhwc.blocked_kernel on C-contiguous x and out (multiplier 1, finite weight)."""
    threads = numba.get_num_threads()
    c = x.shape[1]
    cbk = min(c, BLOCK_CHANNELS)
    n_blk = -(-c // cbk)
    kvol = int(np.prod(w.shape[2:]))
    wm = np.zeros((n_blk * cbk, kvol), dtype=x.dtype)
    wm[:c] = w.reshape(c, kvol)
    wblk = np.ascontiguousarray(wm.reshape(n_blk, cbk, kvol).transpose(0, 2, 1))
    bblk = np.zeros(n_blk * cbk, dtype=x.dtype)
    if bias is not None:
        bblk[:c] = bias
    vin = int(np.prod(x.shape[2:]))
    vout = int(np.prod(out.shape[2:]))
    depthwise_nhwc.blocked_kernel(
        x, wblk, bblk.reshape(n_blk, cbk), out, tuple(w.shape[2:]), cp, cbk,
        np.empty((threads, cbk * vin), dtype=x.dtype), np.empty((threads, cbk * vout), x.dtype),
        np.empty((threads, kvol), dtype=np.int64), np.empty((threads, kvol), dtype=np.int64))
    return out


def depthwise_forward(x, w, bias, stride, padding, dilation, out):
    """out = depthwise conv(x, w) + bias (bias (C*m,) or None). Shapes: module docstring; x and out
    may also be channels_last (dense, channels innermost) views of that shape."""
    if out.size == 0:
        return out
    cp = conv_params(stride, padding, dilation)
    finite = bool(np.isfinite(w).all())
    if cp[3] > 0 and not finite:
        # The kernels skip the depth taps that fall in the padding; torch multiplies that zero
        # padding too (0 * inf = NaN there): with a NaN or infinite weight, pad the depth axis.
        return depthwise_forward(_depth_padded(x, w.shape[2], cp, out.shape[2]), w, bias, stride,
                                 (0, cp[4], cp[5]), dilation, out)
    blocked_ok = w.shape[0] == x.shape[1] and finite
    algorithm = forward_algorithm(x, out, w.shape[2:], stride, blocked_ok)
    x_dense = dense_flat(x) is not None
    out_flat = dense_flat(out)
    if (algorithm == "channel_vector" and x_dense and out_flat is not None
            and is_channels_last(x) and out_flat[1][1] == 1 and out_flat[1][4] == out.shape[1]):
        return _channels_last_forward(x, w, bias, cp, out, finite)
    if algorithm == "channel_vector" and x_dense and out_flat is not None:
        return _channel_vector_forward(x, w, bias, cp, out)
    x = np.ascontiguousarray(x)
    if not out.flags.c_contiguous:
        result = np.empty(out.shape, dtype=out.dtype)
        depthwise_forward(x, w, bias, stride, padding, dilation, result)
        out[...] = result
        return out
    if algorithm == "same":
        return _same_forward(x, w, bias, cp, out)
    if algorithm == "blocked":
        return _blocked_forward(x, w, bias, cp, out)
    threads = numba.get_num_threads()
    k_shape = tuple(w.shape[2:])
    oh_n, ow_n = out.shape[3], out.shape[4]
    band_rows = forward_band_rows(k_shape, cp, oh_n, ow_n, x.shape[0] * x.shape[1], x.itemsize,
                                  threads)
    scratch = forward_scratch(k_shape, cp, band_rows, ow_n, x.dtype, threads)
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, dtype=x.dtype)
    _forward_kernel(x, w, b, has_bias, out, cp, band_rows, *scratch)
    return out


def _depth_padded(x, kd_n, cp, od_n):
    """x with its depth padding (cp's pd before, what the output's last depth reads after) as
    zero planes, C-contiguous."""
    sd, pd, dd = cp[0], cp[3], cp[6]
    d_in = x.shape[2]
    after = max(0, (od_n - 1) * sd + (kd_n - 1) * dd + 1 - pd - d_in)
    padded = np.zeros(x.shape[:2] + (pd + d_in + after,) + x.shape[3:], dtype=x.dtype)
    padded[:, :, pd:pd + d_in] = x
    return padded


def _flipped(w):
    return np.ascontiguousarray(w[:, :, ::-1, ::-1, ::-1])


def depthwise_backward_input(dy, w, stride, padding, dilation, dx):
    """dx = the gradient of depthwise conv(x, w) w.r.t. x, given dy, its output's gradient. dy and
    dx may be channels_last views; with stride 1 and no channel multiplier the gradient is the
    forward 'same'-style correlation of dy with the flipped kernel (padding (K-1)*d - p), which
    the channels_last forward computes in place. That forward multiplies its zero padding by
    every weight: a NaN or infinite weight would make NaN (0 * inf) where torch forms no
    product, so such a weight takes the transposed-stride kernel, which skips those taps. NCHW
    small planes (_use_blocked) run the same correlation through the 'blocked' forward."""
    if dx.size == 0:
        return dx
    if dy.size == 0:
        dx[...] = 0.0
        return dx
    m = w.shape[0] // dx.shape[1]
    pad_t = tuple((k - 1) * d - p for k, d, p in zip(w.shape[2:], dilation, padding))
    # the correlation paths below need a finite weight (see the docstring)
    correlate = (m == 1 and tuple(stride) == (1, 1, 1) and min(pad_t) >= 0
                 and bool(np.isfinite(w).all()))
    if (correlate and is_channels_last(dy) and is_channels_last(dx)
            and dense_flat(dy) is not None and dense_flat(dx) is not None):
        return _channels_last_forward(dy, _flipped(w), None, conv_params(stride, pad_t, dilation),
                                      dx, True)
    if correlate and dx.flags.c_contiguous and _use_blocked(dx.shape[4], dx.shape[1]):
        # the same correlation on NCHW small planes, by the 'blocked' forward (finite weights:
        # it skips the padding, whose products are then zeros)
        return _blocked_forward(np.ascontiguousarray(dy), _flipped(w), None,
                                conv_params(stride, pad_t, dilation), dx)
    dy = np.ascontiguousarray(dy)
    if not dx.flags.c_contiguous:
        result = np.empty(dx.shape, dtype=dx.dtype)
        _backward_input(dy, w, stride, padding, dilation, result)
        dx[...] = result
        return dx
    return _backward_input(dy, w, stride, padding, dilation, dx)


def _backward_input(dy, w, stride, padding, dilation, dx):
    threads = numba.get_num_threads()
    cp = conv_params(stride, padding, dilation)
    k_shape = tuple(w.shape[2:])
    m = w.shape[0] // dx.shape[1]
    h_in, w_in = dx.shape[3], dx.shape[4]
    band_rows = _rows_per_band(
        h_in, dx.shape[0] * dx.shape[1], threads,
        lambda r: backward_input_scratch_sizes(k_shape, cp, m, r, w_in)[0],
        _scratch_budget(dx.itemsize))
    slab, acc = backward_input_scratch_sizes(k_shape, cp, m, band_rows, w_in)
    taps = m * int(np.prod(k_shape))
    _backward_input_kernel(dy, w, dx, cp, band_rows, np.zeros((threads, slab), dtype=dy.dtype),
                           np.empty((threads, acc), dtype=dy.dtype),
                           np.empty((threads, taps), dtype=np.int64),
                           np.empty((threads, taps), dtype=dy.dtype))
    return dx


def _channels_last_backward_weight(x, dy, k_shape, cp):
    """dw (C, KD*KH*KW) float64 of a multiplier-1 depthwise conv on channels_last x and dy."""
    threads = numba.get_num_threads()
    c = x.shape[1]
    kvol = int(np.prod(k_shape))
    od_n, oh_n, ow_n = dy.shape[2:]
    xf, x_strides = dense_flat(x)
    gf, g_strides = dense_flat(dy)
    sh, sw = cp[1], cp[2]
    cq = -(-((ow_n - 1) * sw + (k_shape[2] - 1) * cp[8] + 1) // sw)

    def slab_size(rows):
        return k_shape[0] * ((rows - 1) * sh + (k_shape[1] - 1) * cp[7] + 1) * sw * cq * c

    band_rows = _rows_per_band(oh_n, x.shape[0] * od_n, threads, slab_size,
                               _scratch_budget(x.itemsize))
    chunk = c * max(1, -(-256 // c))
    items = x.shape[0] * od_n * -(-oh_n // band_rows)
    result = np.zeros((items, c, kvol), dtype=np.float64)
    depthwise_nhwc.weight_kernel(
        xf, x_strides, x.shape, gf, g_strides, dy.shape, k_shape, cp, band_rows, chunk,
        np.zeros((threads, slab_size(band_rows)), dtype=x.dtype),
        np.empty((threads, kvol), dtype=np.int64), np.empty((threads, kvol), dtype=np.int64),
        np.empty((threads, kvol * chunk), dtype=x.dtype), result)
    return result.sum(axis=0)


def depthwise_backward_weight(x, dy, w_shape, stride, padding, dilation, want_bias):
    """(dw, db): gradients of depthwise conv(x, w) + bias with respect to w (shape w_shape) and
    bias ((C*m,), or None when not wanted). channels_last: depthwise_nhwc.weight_kernel; NCHW
    small planes of multiplier 1 (_use_blocked): depthwise_nhwc.blocked_weight_kernel (2
    threads, forward+backward N8 C1152 7x7 k3 4.7-4.9 -> 2.0-2.1 ms, C768 7x7 k7 6.7-8.3 ->
    2.9-3.7 ms, with the input gradient by the 'blocked' forward); else the band kernels."""
    c_out = w_shape[0]
    k_shape = tuple(w_shape[2:])
    oh_n, ow_n = dy.shape[3], dy.shape[4]
    if (c_out == x.shape[1] and dy.size > 0 and x.size > 0 and is_channels_last(x)
            and is_channels_last(dy) and dense_flat(x) is not None
            and dense_flat(dy) is not None):
        dw64 = _channels_last_backward_weight(x, dy, k_shape,
                                              conv_params(stride, padding, dilation))
        dw = dw64.astype(x.dtype).reshape(tuple(w_shape))
        db = dy.sum(axis=(0, 2, 3, 4), dtype=np.float64).astype(x.dtype) if want_bias else None
        return dw, db
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy)
    if (c_out == x.shape[1] and dy.size > 0 and x.size > 0 and _use_blocked(ow_n, c_out)):
        dw64 = _blocked_backward_weight(x, dy, k_shape, conv_params(stride, padding, dilation))
        dw = dw64.astype(x.dtype).reshape(tuple(w_shape))
        db = dy.sum(axis=(0, 2, 3, 4), dtype=np.float64).astype(x.dtype) if want_bias else None
        return dw, db
    dw64 = np.zeros((c_out,) + k_shape, dtype=np.float64)
    db64 = np.zeros(c_out, dtype=np.float64)
    if dy.size > 0 and x.size > 0:
        threads = numba.get_num_threads()
        cp = conv_params(stride, padding, dilation)
        m = c_out // x.shape[1]
        band_rows = _rows_per_band(oh_n, 1 << 30, threads,
                                   lambda r: band_scratch_sizes(k_shape, cp, r, ow_n)[0],
                                   _scratch_budget(x.itemsize))
        slabs, dyws, offss, kidxs, _ = forward_scratch(k_shape, cp, band_rows, ow_n, x.dtype,
                                                       threads)
        parts = np.empty((threads, m * int(np.prod(k_shape))), dtype=np.float64)
        _backward_weight_kernel(x, dy, dw64, db64, want_bias, cp, band_rows, band_rows, slabs,
                                dyws, offss, kidxs, parts)
        if band_rows > 1 and np.isnan(dw64).any():
            # maybe 0 * inf in a band's junk columns (depthwise_core.weight_band): again, a row
            # per band, which forms only torch's products (a NaN input makes this path slower)
            dw64[...] = 0.0
            db64[...] = 0.0
            _backward_weight_kernel(x, dy, dw64, db64, want_bias, cp, band_rows, 1, slabs, dyws,
                                    offss, kidxs, parts)
    dw = dw64.astype(x.dtype).reshape(tuple(w_shape))
    return dw, (db64.astype(x.dtype) if want_bias else None)
