"""Recurrent layers for the CPU, backward through time (layout and forward in ``rnn.py``).

The work items of the forward (direction, block of batch rows, or direction and block of hidden
units: the split loop, two parallel regions per step) run again in reverse time: each step turns
the gradient reaching h_t (and c_t) into the gradient of the gate pre-activations
(``dgates``, every step kept) and carries the gradient of h_{t-1} (and c_{t-1}) back with one
small product with W_hh. With recurrent dropout that product's share is multiplied by the same
mask as in the forward, and ``hprev`` keeps the masked state that entered W_hh. The weight
gradients are then a few large matrix products over all steps at once
(dW_ih = dg^T x, dW_hh = dg_h^T hprev, dx = dg W_ih), bias gradients column sums.
"""
import numba
import numpy as np

from ..rnn_modes import GATES
from ._jit import blas_set_local_threads, gemm, jit, jit_parallel, packed_gemm
from .rnn import (_MODE_ID, chunks_for, packed_blocks, packed_recurrent, serial, split_bounds,
                  step_before, step_offsets)
from .rnn_math import tanh


@jit
def _store_hprev(d, t, b0, nr, r0, reverse, batch_sizes, offsets, y, h0, rmask, has_rmask,
                 hprev, j0, j1):
    """hprev[d, row, j0:j1] = the state each active row started step t from, masked as it
    entered W_hh."""
    proj = hprev.shape[2]
    for r in range(nr):
        b = b0 + r
        pr = step_before(t, b, reverse, batch_sizes, offsets)
        hp = hprev[d, r0 + r]
        for j in range(j0, j1):
            v = h0[d, b, j] if pr < 0 else y[pr, d * proj + j]
            hp[j] = v * rmask[d, b, j] if has_rmask else v


@jit
def _times_w_hh(is_double, nr, w_hh, wpb, off, d, a, accumulate, c, ldc, j0, j1):
    """c[0:nr, 0:j1-j0] (+)= a[0:nr, 0:G*H] @ W_hh[d][:, j0:j1] (a: rows of G*H, c: rows ldc
    apart): on those columns of W_hh packed as it is, ``off`` floats into wpb[d] (float32 layers:
    rnn.packed_recurrent(..., transposed=False), or rnn.packed_blocks for the split loop), when
    there are some; else BLAS."""
    gh, proj = w_hh.shape[1], w_hh.shape[2]
    if wpb.shape[1] > 0:
        packed_gemm(nr, j1 - j0, gh, a, gh, wpb[d].ctypes.data + off * 4, c, ldc,
                    1 if accumulate else 0)
    else:
        gemm(is_double, 0, 0, nr, j1 - j0, gh, 1.0, a, gh, w_hh[d, 0, j0:].ctypes.data, proj,
             1.0 if accumulate else 0.0, c, ldc)


@jit
def _carry_back(d, b0, nr, r0, dg, w_hh, wpb, rmask, has_rmask, dh, accumulate, tmp, is_double,
                j0, j1, off=0):
    """dh[d, b0:b0+nr, j0:j1] (+)= (dg rows @ W_hh[:, j0:j1]) (* rmask): the gradient reaching
    h_{t-1} through the recurrent product (off: see _times_w_hh). tmp: scratch of nr * P."""
    proj = w_hh.shape[2]
    if not has_rmask:
        _times_w_hh(is_double, nr, w_hh, wpb, off, d, dg[d, r0].ctypes.data, accumulate,
                    dh[d, b0, j0:].ctypes.data, proj, j0, j1)
        return
    _times_w_hh(is_double, nr, w_hh, wpb, off, d, dg[d, r0].ctypes.data, False, tmp.ctypes.data,
                proj, j0, j1)
    for r in range(nr):
        dr = dh[d, b0 + r]
        mr = rmask[d, b0 + r]
        for j in range(j0, j1):
            v = tmp[r * proj + j - j0] * mr[j]
            dr[j] = dr[j] + v if accumulate else v


@jit
def _add_dy(d, b0, nr, r0, dy, dh, j0, j1):
    """dh[d, b0 + r, j0:j1] += dy of the step's rows (the gradient reaching h_t from the output)."""
    proj = dh.shape[2]
    for r in range(nr):
        dhr = dh[d, b0 + r]
        dyr = dy[r0 + r, d * proj:(d + 1) * proj]
        for j in range(j0, j1):
            dhr[j] += dyr[j]


@jit
def _lstm_units(d, t, b0, nr, r0, reverse, batch_sizes, offsets, gates, cs, c0, dgates, dc,
                dh_rows, j0, j1):
    """Units [j0, j1) of the LSTM gate gradients of step t's rows: dgates (4 gates), and dc
    carried to c_{t-1}; dh_rows[r] the gradient reaching the row's o * tanh(c). One loop per
    stored stream: a single loop storing five streams stays scalar (8 rows x 512 units 71 ->
    12 us)."""
    hid = cs.shape[2]
    short = gates.itemsize == 4
    n = j1 - j0
    tc = np.empty(n)
    dcv = np.empty(n)
    for r in range(nr):
        b = b0 + r
        pr = step_before(t, b, reverse, batch_sizes, offsets)
        gr = gates[d, r0 + r]
        i_g = gr[j0:j1]
        f_g = gr[hid + j0:hid + j1]
        g_g = gr[2 * hid + j0:2 * hid + j1]
        o_g = gr[3 * hid + j0:3 * hid + j1]
        csr = cs[d, r0 + r, j0:j1]
        cpr = c0[d, b, j0:j1] if pr < 0 else cs[d, pr, j0:j1]
        dg = dgates[d, r0 + r]
        dcr = dc[d, b, j0:j1]
        dhr = dh_rows[r, j0:j1]
        for j in range(n):
            tc[j] = tanh(np.float64(csr[j]), short)
        for j in range(n):
            o = np.float64(o_g[j])
            dcv[j] = dcr[j] + np.float64(dhr[j]) * o * (1.0 - tc[j] * tc[j])
        di = dg[j0:j1]
        for j in range(n):
            i = np.float64(i_g[j])
            di[j] = dcv[j] * g_g[j] * i * (1.0 - i)
        df = dg[hid + j0:hid + j1]
        for j in range(n):
            f = np.float64(f_g[j])
            df[j] = dcv[j] * cpr[j] * f * (1.0 - f)
        dgg = dg[2 * hid + j0:2 * hid + j1]
        for j in range(n):
            g = np.float64(g_g[j])
            dgg[j] = dcv[j] * i_g[j] * (1.0 - g * g)
        do = dg[3 * hid + j0:3 * hid + j1]
        for j in range(n):
            o = np.float64(o_g[j])
            do[j] = np.float64(dhr[j]) * tc[j] * o * (1.0 - o)
        for j in range(n):
            dcr[j] = dcv[j] * f_g[j]


@jit
def _copy_units(src, dst):
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@jit
def _gru_units(d, t, b0, nr, r0, reverse, batch_sizes, offsets, y, h0, gates, hn_lin, dy, dh,
               dgates, dgates_h, j0, j1):
    """Units [j0, j1) of the GRU gate gradients of step t's rows (input side dgates, hidden side
    dgates_h: they differ in the n gate); dh keeps the direct term dh_t * z (unmasked). One loop
    per stored stream, as _lstm_units."""
    hid = hn_lin.shape[2]
    n = j1 - j0
    dht = np.empty(n)
    dnp = np.empty(n)
    for r in range(nr):
        b = b0 + r
        pr = step_before(t, b, reverse, batch_sizes, offsets)
        dhr = dh[d, b, j0:j1]
        dyr = dy[r0 + r, d * hid + j0:d * hid + j1]
        gr = gates[d, r0 + r]
        r_g = gr[j0:j1]
        z_g = gr[hid + j0:hid + j1]
        n_g = gr[2 * hid + j0:2 * hid + j1]
        lin = hn_lin[d, r0 + r, j0:j1]
        hv = h0[d, b, j0:j1] if pr < 0 else y[pr, d * hid + j0:d * hid + j1]
        dgi = dgates[d, r0 + r]
        dgh = dgates_h[d, r0 + r]
        for j in range(n):
            dht[j] = np.float64(dhr[j]) + dyr[j]
        for j in range(n):
            ng = np.float64(n_g[j])
            dnp[j] = dht[j] * (1.0 - z_g[j]) * (1.0 - ng * ng)
        out = dgi[j0:j1]
        for j in range(n):
            rg = np.float64(r_g[j])
            out[j] = dnp[j] * lin[j] * rg * (1.0 - rg)
        out = dgi[hid + j0:hid + j1]
        for j in range(n):
            zg = np.float64(z_g[j])
            out[j] = dht[j] * (np.float64(hv[j]) - n_g[j]) * zg * (1.0 - zg)
        for k in range(2):  # the r and z gradients are the same on both sides
            _copy_units(dgi[k * hid + j0:k * hid + j1], dgh[k * hid + j0:k * hid + j1])
        out = dgi[2 * hid + j0:2 * hid + j1]
        for j in range(n):
            out[j] = dnp[j]
        out = dgh[2 * hid + j0:2 * hid + j1]
        for j in range(n):
            out[j] = dnp[j] * r_g[j]
        for j in range(n):
            dhr[j] = dht[j] * z_g[j]


@jit
def _vanilla_units(d, b0, nr, r0, use_relu, gates, dy, dh, dgates, j0, j1):
    """Units [j0, j1) of the vanilla RNN's pre-activation gradient of the step's rows."""
    hid = dh.shape[2]
    for r in range(nr):
        dhr = dh[d, b0 + r]
        dyr = dy[r0 + r, d * hid:(d + 1) * hid]
        gr = gates[d, r0 + r]
        dg = dgates[d, r0 + r]
        for j in range(j0, j1):
            dht = np.float64(dhr[j]) + dyr[j]
            hv = np.float64(gr[j])
            if use_relu:
                dg[j] = dht if hv > 0.0 else 0.0
            else:
                dg[j] = dht * (1.0 - hv * hv)


@jit
def _lstm_backward_rows(d, b0, b1, batch_sizes, offsets, w_hh, wpb, w_hr, rmask, y, h0, c0,
                        gates, cs, dy, dh, dc, dgates, hprev, dw_hr, hpre, dhp, is_double):
    """LSTM BPTT of rows [b0, b1) of direction d. dh/dc (D, B, P/H) enter holding the gradient of
    the final states and leave holding that of h0/c0; dgates (D, N, 4H) gets the gradient of the
    gate pre-activations; hprev (D, N, P) the (masked) state each step started from; dw_hr (P, H)
    accumulates. hpre, dhp: scratch of rows * max(4H, P)."""
    steps = batch_sizes.shape[0]
    gh = w_hh.shape[1]
    hid = gh // 4
    proj = w_hh.shape[2]
    short = gates.itemsize == 4
    has_proj = w_hr.shape[1] > 0
    has_rmask = rmask.shape[1] > 0
    reverse = d == 1
    dhp_rows = dhp[:(dhp.shape[0] // max(hid, 1)) * hid].reshape((-1, max(hid, 1)))
    for s in range(steps):
        t = s if reverse else steps - 1 - s
        nr = min(b1, batch_sizes[t]) - b0
        if nr <= 0:
            continue
        r0 = offsets[t] + b0
        _store_hprev(d, t, b0, nr, r0, reverse, batch_sizes, offsets, y, h0, rmask, has_rmask,
                     hprev, 0, proj)
        _add_dy(d, b0, nr, r0, dy, dh, 0, proj)
        if has_proj:
            for r in range(nr):
                gr = gates[d, r0 + r]
                csr = cs[d, r0 + r]
                hq = hpre[r * hid:(r + 1) * hid]
                for j in range(hid):
                    hq[j] = gr[3 * hid + j] * tanh(np.float64(csr[j]), short)
            # dW_hr += dh^T hpre; the gradient reaching o * tanh(c) is dh W_hr.
            gemm(is_double, 1, 0, proj, hid, nr, 1.0, dh[d, b0].ctypes.data, proj,
                 hpre.ctypes.data, hid, 1.0, dw_hr.ctypes.data, hid)
            gemm(is_double, 0, 0, nr, hid, proj, 1.0, dh[d, b0].ctypes.data, proj,
                 w_hr[d].ctypes.data, hid, 0.0, dhp.ctypes.data, hid)
            _lstm_units(d, t, b0, nr, r0, reverse, batch_sizes, offsets, gates, cs, c0, dgates,
                        dc, dhp_rows, 0, hid)
        else:
            _lstm_units(d, t, b0, nr, r0, reverse, batch_sizes, offsets, gates, cs, c0, dgates,
                        dc, dh[d, b0:b0 + nr], 0, hid)
        _carry_back(d, b0, nr, r0, dgates, w_hh, wpb, rmask, has_rmask, dh, False, hpre,
                    is_double, 0, proj)


@jit
def _gru_backward_rows(d, b0, b1, batch_sizes, offsets, w_hh, wpb, rmask, y, h0, gates, hn_lin,
                       dy, dh, dgates, dgates_h, hprev, hpre, is_double):
    """GRU BPTT of rows [b0, b1) of direction d (see _gru_units)."""
    steps = batch_sizes.shape[0]
    hid = w_hh.shape[1] // 3
    has_rmask = rmask.shape[1] > 0
    reverse = d == 1
    for s in range(steps):
        t = s if reverse else steps - 1 - s
        nr = min(b1, batch_sizes[t]) - b0
        if nr <= 0:
            continue
        r0 = offsets[t] + b0
        _store_hprev(d, t, b0, nr, r0, reverse, batch_sizes, offsets, y, h0, rmask, has_rmask,
                     hprev, 0, hid)
        _gru_units(d, t, b0, nr, r0, reverse, batch_sizes, offsets, y, h0, gates, hn_lin, dy, dh,
                   dgates, dgates_h, 0, hid)
        _carry_back(d, b0, nr, r0, dgates_h, w_hh, wpb, rmask, has_rmask, dh, True, hpre,
                    is_double, 0, hid)


@jit
def _vanilla_backward_rows(d, b0, b1, batch_sizes, offsets, w_hh, wpb, use_relu, rmask, y, h0,
                           gates, dy, dh, dgates, hprev, hpre, is_double):
    """Vanilla RNN BPTT of rows [b0, b1) of direction d; gates holds each step's output h."""
    steps = batch_sizes.shape[0]
    hid = w_hh.shape[1]
    has_rmask = rmask.shape[1] > 0
    reverse = d == 1
    for s in range(steps):
        t = s if reverse else steps - 1 - s
        nr = min(b1, batch_sizes[t]) - b0
        if nr <= 0:
            continue
        r0 = offsets[t] + b0
        _store_hprev(d, t, b0, nr, r0, reverse, batch_sizes, offsets, y, h0, rmask, has_rmask,
                     hprev, 0, hid)
        _vanilla_units(d, b0, nr, r0, use_relu, gates, dy, dh, dgates, 0, hid)
        _carry_back(d, b0, nr, r0, dgates, w_hh, wpb, rmask, has_rmask, dh, False, hpre,
                    is_double, 0, hid)


@jit
def _backward_rows(mode_id, d, b0, b1, batch_sizes, offsets, w_hh, wpb, w_hr, rmask, y, h0, c0,
                   gates, saved, dy, dh, dc, dgates, dgates_h, hprev, dw_hr, hpre, dhp, is_double):
    """BPTT of rows [b0, b1) of direction d in the mode's loop (mode_id: rnn._MODE_ID)."""
    if mode_id == 0:
        _lstm_backward_rows(d, b0, b1, batch_sizes, offsets, w_hh, wpb, w_hr, rmask, y, h0, c0,
                            gates, saved, dy, dh, dc, dgates, hprev, dw_hr, hpre, dhp, is_double)
    elif mode_id == 1:
        _gru_backward_rows(d, b0, b1, batch_sizes, offsets, w_hh, wpb, rmask, y, h0, gates, saved,
                           dy, dh, dgates, dgates_h, hprev, hpre, is_double)
    else:
        _vanilla_backward_rows(d, b0, b1, batch_sizes, offsets, w_hh, wpb, mode_id == 3, rmask, y,
                               h0, gates, dy, dh, dgates, hprev, hpre, is_double)


@jit_parallel
def _backward_items(mode_id, batch_sizes, offsets, w_hh, wpb, w_hr, rmask, y, h0, c0, gates, saved,
                    dy, dh, dc, dgates, dgates_h, hprev, dw_hr_parts, hpre, dhp, chunks, per,
                    is_double):
    for it in numba.prange(dh.shape[0] * chunks):
        blas_set_local_threads(1)
        d, k = it // chunks, it % chunks
        _backward_rows(mode_id, d, k * per, min(dh.shape[1], (k + 1) * per), batch_sizes,
                       offsets, w_hh, wpb, w_hr, rmask, y, h0, c0, gates, saved, dy, dh, dc, dgates,
                       dgates_h, hprev, dw_hr_parts[it], hpre[it], dhp[it], is_double)
        blas_set_local_threads(0)


@jit
def _split_units(mode_id, s, d, j0, j1, batch_sizes, offsets, rmask, y, h0, c0, gates, saved, dy,
                 dh, dc, dgates, dgates_h, hprev):
    """First half of backward step s for units [j0, j1) of direction d, every row: hprev, the
    output's gradient, the gate gradients of these units (they read and write only these units
    of dh and dc)."""
    steps = batch_sizes.shape[0]
    reverse = d == 1
    t = s if reverse else steps - 1 - s
    nr = min(dh.shape[1], batch_sizes[t])
    if nr <= 0:
        return
    r0 = offsets[t]
    _store_hprev(d, t, 0, nr, r0, reverse, batch_sizes, offsets, y, h0, rmask, rmask.shape[1] > 0,
                 hprev, j0, j1)
    if mode_id == 0:
        _add_dy(d, 0, nr, r0, dy, dh, j0, j1)
        _lstm_units(d, t, 0, nr, r0, reverse, batch_sizes, offsets, gates, saved, c0, dgates, dc,
                    dh[d, 0:nr], j0, j1)
    elif mode_id == 1:
        _gru_units(d, t, 0, nr, r0, reverse, batch_sizes, offsets, y, h0, gates, saved, dy, dh,
                   dgates, dgates_h, j0, j1)
    else:
        _vanilla_units(d, 0, nr, r0, mode_id == 3, gates, dy, dh, dgates, j0, j1)


@jit
def _split_carry(mode_id, s, d, j0, j1, batch_sizes, offsets, w_hh, wpb, off, rmask, dh, dgates,
                 dgates_h, tmp, is_double):
    """Second half: columns [j0, j1) of the gradient reaching h_{t-1} (every gate's gradient,
    complete after the first half, times W_hh's columns)."""
    steps = batch_sizes.shape[0]
    t = s if d == 1 else steps - 1 - s
    nr = min(dh.shape[1], batch_sizes[t])
    if nr <= 0:
        return
    has_rmask = rmask.shape[1] > 0
    if mode_id == 1:  # the GRU's dh holds the direct term dh_t * z: accumulate onto it
        _carry_back(d, 0, nr, offsets[t], dgates_h, w_hh, wpb, rmask, has_rmask, dh, True, tmp,
                    is_double, j0, j1, off)
    else:
        _carry_back(d, 0, nr, offsets[t], dgates, w_hh, wpb, rmask, has_rmask, dh, False, tmp,
                    is_double, j0, j1, off)


@jit_parallel
def _backward_split(mode_id, batch_sizes, offsets, w_hh, wpb, offs, rmask, y, h0, c0, gates, saved,
                    dy, dh, dc, dgates, dgates_h, hprev, tmp, bounds, is_double):
    """BPTT with each step split over (direction, units bounds[k]:bounds[k+1]) items, the
    forward's split loop in reverse (no projection): two parallel regions per step, the gate
    gradients of each item's units, then each item's columns of dg @ W_hh."""
    slices = bounds.shape[0] - 1
    items = dh.shape[0] * slices
    for s in range(batch_sizes.shape[0]):
        for it in numba.prange(items):
            d, k = it // slices, it % slices
            _split_units(mode_id, s, d, bounds[k], bounds[k + 1], batch_sizes, offsets, rmask, y,
                         h0, c0, gates, saved, dy, dh, dc, dgates, dgates_h, hprev)
        for it in numba.prange(items):
            blas_set_local_threads(1)
            d, k = it // slices, it % slices
            _split_carry(mode_id, s, d, bounds[k], bounds[k + 1], batch_sizes, offsets, w_hh, wpb,
                         offs[k, 0], rmask, dh, dgates, dgates_h, tmp[it], is_double)
            blas_set_local_threads(0)


@jit
def _weight_grads_block(d, lo, hi, dgi, dgh, x, hprev, dw_ih, dw_hh, db_ih, db_hh, is_double):
    """Gate rows [lo, hi) of direction d: dw_ih = dgi^T x, dw_hh = dgh^T hprev, db = column sums."""
    n_rows, gh = dgi.shape[1], dgi.shape[2]
    n_in = x.shape[1]
    proj = hprev.shape[2]
    item = x.itemsize
    gemm(is_double, 1, 0, hi - lo, n_in, n_rows, 1.0, dgi[d].ctypes.data + lo * item, gh,
         x.ctypes.data, n_in, 0.0, dw_ih[d, lo].ctypes.data, n_in)
    gemm(is_double, 1, 0, hi - lo, proj, n_rows, 1.0, dgh[d].ctypes.data + lo * item, gh,
         hprev[d].ctypes.data, proj, 0.0, dw_hh[d, lo].ctypes.data, proj)
    for j in range(lo, hi):
        db_ih[d, j] = 0.0
        db_hh[d, j] = 0.0
    for r in range(n_rows):
        gi = dgi[d, r]
        gg = dgh[d, r]
        for j in range(lo, hi):
            db_ih[d, j] += gi[j]
            db_hh[d, j] += gg[j]


@jit
def _input_grads_block(lo, hi, dgi, w_ih, dx, is_double):
    """Rows [lo, hi) of dx = sum over d of dgi[d] @ w_ih[d]."""
    n_dir, gh = dgi.shape[0], dgi.shape[2]
    n_in = dx.shape[1]
    for d in range(n_dir):
        gemm(is_double, 0, 0, hi - lo, n_in, gh, 1.0, dgi[d, lo].ctypes.data, gh,
             w_ih[d].ctypes.data, n_in, 1.0 if d > 0 else 0.0, dx[lo].ctypes.data, n_in)


@jit_parallel
def _weight_grads(dgi, dgh, x, hprev, dw_ih, dw_hh, db_ih, db_hh, blocks, is_double):
    """_weight_grads_block over threads: every direction in ``blocks`` blocks of gate rows."""
    n_dir, gh = dgi.shape[0], dgi.shape[2]
    per = -(-gh // blocks)
    for it in numba.prange(n_dir * blocks):
        blas_set_local_threads(1)
        lo = (it % blocks) * per
        hi = min(gh, lo + per)
        if hi > lo:
            _weight_grads_block(it // blocks, lo, hi, dgi, dgh, x, hprev, dw_ih, dw_hh, db_ih,
                                db_hh, is_double)
        blas_set_local_threads(0)


@jit_parallel
def _input_grads_by_columns(dgi, w_ih, dx, col_blocks, is_double):
    """dx = sum over d of dgi[d] @ w_ih[d] in blocks of dx's columns over threads: for a few
    rows, where row blocks would each read all of w_ih (a cell step's dx reads 8 MB of weight)."""
    n_dir, n_rows, gh = dgi.shape
    n_in = dx.shape[1]
    item = dx.itemsize
    per = -(-n_in // col_blocks)
    for it in numba.prange(col_blocks):
        blas_set_local_threads(1)
        lo = it * per
        hi = min(n_in, lo + per)
        if hi > lo:
            for d in range(n_dir):
                gemm(is_double, 0, 0, n_rows, hi - lo, gh, 1.0, dgi[d].ctypes.data, gh,
                     w_ih[d].ctypes.data + lo * item, n_in, 1.0 if d > 0 else 0.0,
                     dx.ctypes.data + lo * item, n_in)
        blas_set_local_threads(0)


@jit_parallel
def _input_grads(dgi, w_ih, dx, row_blocks, is_double):
    """_input_grads_block over threads, in row blocks."""
    n_rows = dgi.shape[1]
    per = -(-n_rows // row_blocks)
    for it in numba.prange(row_blocks):
        blas_set_local_threads(1)
        lo = it * per
        hi = min(n_rows, lo + per)
        if hi > lo:
            _input_grads_block(lo, hi, dgi, w_ih, dx, is_double)
        blas_set_local_threads(0)


@jit
def _backward_serial(mode_id, batch_sizes, offsets, x, w_ih, w_hh, wpb, w_hr, rmask, y, h0, c0,
                     gates, saved, dy, dh, dc, dgates, dgates_h, hprev, dw_hr_parts, hpre, dhp, dx,
                     dw_ih, dw_hh, db_ih, db_hh, is_double):
    """The whole backward of a small layer on the calling thread (see rnn._forward_serial)."""
    blas_set_local_threads(1)
    n_dir, n_rows, gh = dgates.shape
    for d in range(n_dir):
        _backward_rows(mode_id, d, 0, dh.shape[1], batch_sizes, offsets, w_hh, wpb, w_hr, rmask, y,
                       h0, c0, gates, saved, dy, dh, dc, dgates, dgates_h, hprev, dw_hr_parts[d],
                       hpre[d], dhp[d], is_double)
        _weight_grads_block(d, 0, gh, dgates, dgates_h, x, hprev, dw_ih, dw_hh, db_ih, db_hh,
                            is_double)
    if x.shape[1] > 0:
        _input_grads_block(0, n_rows, dgates, w_ih, dx, is_double)
    blas_set_local_threads(0)


# Below this many packed rows the input gradient splits dx's columns over threads (each thread
# reads its share of W_ih) rather than its rows (each thread reads all of W_ih).
COLUMN_SPLIT_ROWS = 64


def layer_backward(mode, x, batch_sizes, w_ih, w_hh, w_hr, rmask, h0, c0, y, gates, saved, dy,
                   dh, dc, dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr):
    """BPTT of one layer. dh/dc enter holding the gradients of h_n/c_n and leave holding those of
    h0/c0; dx (N, I), dw_* and db_* (D, G*H) are written (dw_hr summed over work items)."""
    is_double = x.dtype == np.float64
    n_dir, batch = dh.shape[0], dh.shape[1]
    n_rows = x.shape[0]
    gh = w_hh.shape[1]
    hid = gh // GATES[mode]
    proj = w_hh.shape[2]
    has_proj = w_hr.shape[1] > 0
    threads = numba.get_num_threads()
    dgates = np.empty((n_dir, n_rows, gh), dtype=x.dtype)
    dgates_h = np.empty((n_dir, n_rows, gh), dtype=x.dtype) if mode == "gru" else dgates
    hprev = np.empty((n_dir, n_rows, proj), dtype=x.dtype)
    small = serial(n_rows, gh, x.shape[1], proj)
    chunks, per = (1, batch) if small else chunks_for(n_dir, batch)
    items = n_dir * chunks
    n = per * max(gh, proj, 1)
    hpre = np.empty((items, n), dtype=x.dtype)
    dhp = np.empty((items, per * max(hid, 1)), dtype=x.dtype)
    dw_hr_parts = np.zeros((items,) + tuple(w_hr.shape[1:]), dtype=x.dtype)
    if n_rows == 0 or x.shape[1] == 0:
        dx[...] = 0.0
        dw_ih[...] = 0.0
    if n_rows == 0:
        dw_hh[...] = 0.0
        db_ih[...] = 0.0
        db_hh[...] = 0.0
        dw_hr[...] = 0.0
        return
    offsets = step_offsets(batch_sizes)
    mode_id = _MODE_ID[mode]
    bounds = split_bounds(n_dir, batch, hid, gh, proj, x.itemsize, has_proj, small)
    if bounds is not None:
        wpb, offs = packed_blocks(w_hh, batch_sizes.shape[0], bounds, transposed=False)
    else:
        wpb = packed_recurrent(w_hh, batch_sizes.shape[0], transposed=False)
    if bounds is not None:
        _backward_split(mode_id, batch_sizes, offsets, w_hh, wpb, offs, rmask, y, h0, c0, gates,
                        saved, dy, dh, dc, dgates, dgates_h, hprev,
                        np.empty((n_dir * (bounds.shape[0] - 1), batch * proj), dtype=x.dtype),
                        bounds, is_double)
    elif small:
        _backward_serial(mode_id, batch_sizes, offsets, x, w_ih, w_hh, wpb, w_hr, rmask, y, h0,
                         c0, gates, saved, dy, dh, dc, dgates, dgates_h, hprev, dw_hr_parts, hpre,
                         dhp, dx, dw_ih, dw_hh, db_ih, db_hh, is_double)
    else:
        _backward_items(mode_id, batch_sizes, offsets, w_hh, wpb, w_hr, rmask, y, h0, c0, gates,
                        saved, dy, dh, dc, dgates, dgates_h, hprev, dw_hr_parts, hpre, dhp, chunks,
                        per, is_double)
    if bounds is not None or not small:  # (the serial loop did these on its thread)
        blocks = max(1, min(threads * 2 // n_dir, gh // 16))
        _weight_grads(dgates, dgates_h, x, hprev, dw_ih, dw_hh, db_ih, db_hh, blocks, is_double)
        if x.shape[1] > 0 and n_rows < COLUMN_SPLIT_ROWS and x.shape[1] >= 16 * threads:
            _input_grads_by_columns(dgates, w_ih, dx, threads, is_double)
        elif x.shape[1] > 0:
            _input_grads(dgates, w_ih, dx, max(1, min(threads, n_rows // 8)), is_double)
    if has_proj:
        for d in range(n_dir):
            dw_hr[d] = dw_hr_parts[d * chunks:(d + 1) * chunks].sum(axis=0)
