"""Recurrent layers for the CPU, forward: whole layers (every direction, every time step) and cells
of the LSTM, the GRU and the vanilla RNN (tanh or relu). The backward is in ``rnn_backward.py``.

A layer direction works on a *packed* sequence, the layout of torch's PackedSequence:

    x            (N, I)        the rows of every time step, step after step; N = sum(batch_sizes)
    batch_sizes  (T,) int64    rows of step t; non-increasing (a padded batch has all equal to B)
    offsets      (T,) int64    first row of step t in x
    w_ih         (D, G*H, I)   D directions; G gates (rnn_modes.GATES) in torch's order
    w_hh         (D, G*H, P)   P = proj_size (LSTM) or H
    b_ih, b_hh   (D, G*H)      zeros when the layer has no bias
    w_hr         (D, P, H)     LSTM projection (an empty array without one)
    rmask        (D, B, P)     recurrent dropout mask (an empty array without one): h_{t-1} * rmask
                               is what enters W_hh at every step; the state itself is not masked
    h0           (D, B, P), c0 (D, B, H)
    y            (N, D*P)      output; direction d writes columns [d*P, (d+1)*P)
    gates        (D, N, G*H)   input projection, then the activated gates (saved for the backward;
                               the vanilla RNN's one gate is its output h)
    saved        LSTM (D, N, H): the cell state after each step; GRU (D, N, H): W_hn h + b_hn;
                 vanilla: unused

At step t only rows [0, batch_sizes[t]) are active. Direction 1 runs backwards in time: a row
starts from h0 at its own last step. The running state of each row is kept in ``h_n``/``c_n``
(shape of h0/c0), which therefore end holding torch's final states.

Method. The input projection of all steps is one matrix product (BLAS, split over threads by
rows). The time loop is sequential, but rows of a batch are independent: a work item is
(direction, block of batch rows) and runs the whole time loop of its rows on one core (so the two
directions of a bidirectional layer run concurrently), the recurrent product of each step a small
BLAS call on the item's rows with W_hh kept hot in that core's cache, then the fused gate
arithmetic, one pass over each row with rnn_math's activations inlined (float64 whatever the
data's dtype: float32 results within an ulp of the correctly rounded activations); states and saved
gates are stored in the data's dtype.

BLAS. Every product goes through _jit's ``gemm``; each prange work item runs its BLAS calls on
its own thread and hands the thread's BLAS setting back when it ends (_jit's convention).
"""
import os
import threading

import numba
import numpy as np

from ..rnn_modes import GATES
from ._jit import PACKED_NR, blas_set_local_threads, gemm, jit, jit_parallel, packed_gemm
from . import packing
from .packing import pack_transposed
from .rnn_math import relu, sigmoid, tanh


@jit
def step_rows(s, reverse, b0, b1, batch_sizes, offsets):
    """(t, rows of [b0, b1) active at step s of this direction's order, first packed row)."""
    steps = batch_sizes.shape[0]
    t = steps - 1 - s if reverse else s
    nr = min(b1, batch_sizes[t]) - b0
    return t, nr, offsets[t] + b0


@jit
def step_before(t, b, reverse, batch_sizes, offsets):
    """The packed row of batch entry b at the step before t in this direction's order, or -1 (it
    starts from h0 at t)."""
    if reverse:
        if t + 1 < batch_sizes.shape[0] and b < batch_sizes[t + 1]:
            return offsets[t + 1] + b
        return -1
    if t > 0:
        return offsets[t - 1] + b
    return -1


@jit
def masked_state(d, b0, nr, h_n, rmask, has_rmask, hmask):
    """Address of rows [b0, b0 + nr) of the state as it enters W_hh: h_n's own rows, or (recurrent
    dropout) their product with rmask, written to the scratch hmask."""
    if not has_rmask:
        return h_n[d, b0].ctypes.data
    p = h_n.shape[2]
    for r in range(nr):
        hr = h_n[d, b0 + r]
        mr = rmask[d, b0 + r]
        for j in range(p):
            hmask[r * p + j] = hr[j] * mr[j]
    return hmask.ctypes.data


@jit
def recurrent_product(is_double, nr, w_hh, wp, d, a, accumulate, c, ldc):
    """c[0:nr, 0:G*H] (+)= a @ W_hh[d]^T (a: nr rows of P at address a, c: rows ldc apart): on
    the packed W_hh (wp[d], float32 layers) when there is one, else BLAS."""
    gh, proj = w_hh.shape[1], w_hh.shape[2]
    if wp.shape[1] > 0:
        packed_gemm(nr, gh, proj, a, proj, wp[d].ctypes.data, c, ldc, 1 if accumulate else 0)
    else:
        gemm(is_double, 0, 1, nr, gh, proj, 1.0, a, proj, w_hh[d].ctypes.data, proj,
             1.0 if accumulate else 0.0, c, ldc)


@jit
def _copy(src, dst):
    """dst[:] = src (converting to dst's dtype)."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@jit
def _sigmoid_pass(g, bi, bh, out, short):
    """out = sigmoid(g + bi + bh) over equal-length slices (float64 out)."""
    for j in range(out.shape[0]):
        out[j] = sigmoid(np.float64(g[j]) + bi[j] + bh[j], short)


@jit
def _tanh_pass(g, bi, bh, out, short):
    """out = tanh(g + bi + bh) over equal-length slices (float64 out)."""
    for j in range(out.shape[0]):
        out[j] = tanh(np.float64(g[j]) + bi[j] + bh[j], short)


@jit
def _lstm_gates(gr, bi, bh, cr, act, hid, j0, j1):
    """Units [j0, j1) of one row's LSTM gate arithmetic into act (float64 scratch, rows i, f, g,
    o, c, o * tanh(c)); the caller copies the results out. One pass per gate, each a loop with one
    store stream: a single loop storing six streams needs more run-time alias checks than LLVM
    makes, and stays scalar (4x slower measured). float32 data: short polynomials."""
    short = gr.itemsize == 4
    for k in range(4):
        a, b = k * hid + j0, k * hid + j1
        if k == 2:
            _tanh_pass(gr[a:b], bi[a:b], bh[a:b], act[a:b], short)
        else:
            _sigmoid_pass(gr[a:b], bi[a:b], bh[a:b], act[a:b], short)
    i_g = act[j0:j1]
    f_g = act[hid + j0:hid + j1]
    g_g = act[2 * hid + j0:2 * hid + j1]
    o_g = act[3 * hid + j0:3 * hid + j1]
    c_out = act[4 * hid + j0:4 * hid + j1]
    h_out = act[5 * hid + j0:5 * hid + j1]
    c_in = cr[j0:j1]
    for j in range(j1 - j0):
        c_out[j] = f_g[j] * c_in[j] + i_g[j] * g_g[j]
    for j in range(j1 - j0):
        h_out[j] = o_g[j] * tanh(c_out[j], short)


@jit
def _lstm_forward_rows(d, b0, b1, batch_sizes, offsets, w_hh, wp, b_ih, b_hh, w_hr, has_proj, rmask,
                       has_rmask, y, h_n, c_n, gates, cs, hbuf, hmask, act, save, is_double):
    """The LSTM time loop of rows [b0, b1) of direction d (shapes in the module docstring).
    Scratch of the data's dtype: hbuf (rows * H, o * tanh(c) before the projection), hmask
    (rows * P, the masked state); act: float64 (6H)."""
    gh = w_hh.shape[1]
    hid = gh // 4
    proj = w_hh.shape[2]
    y_cols = y.shape[1]
    item = y.itemsize
    reverse = d == 1
    bi = b_ih[d]
    bh = b_hh[d]
    for s in range(batch_sizes.shape[0]):
        t, nr, r0 = step_rows(s, reverse, b0, b1, batch_sizes, offsets)
        if nr <= 0:
            continue
        g = gates[d, r0:r0 + nr]
        # Recurrent product, accumulated onto the input projection of this step.
        a = masked_state(d, b0, nr, h_n, rmask, has_rmask, hmask)
        recurrent_product(is_double, nr, w_hh, wp, d, a, True, g.ctypes.data, gh)
        for r in range(nr):
            gr = g[r]
            cr = c_n[d, b0 + r]
            _lstm_gates(gr, bi, bh, cr, act, hid, 0, hid)
            _copy(act[4 * hid:5 * hid], cr)
            if save:  # what the backward reads
                for j in range(gh):
                    gr[j] = act[j]
                _copy(act[4 * hid:5 * hid], cs[d, r0 + r])
            if has_proj:
                _copy(act[5 * hid:], hbuf[r * hid:(r + 1) * hid])
            else:
                _copy(act[5 * hid:], h_n[d, b0 + r])
                _copy(act[5 * hid:], y[r0 + r, d * proj:(d + 1) * proj])
        if has_proj:
            y_addr = y.ctypes.data + (r0 * y_cols + d * proj) * item
            gemm(is_double, 0, 1, nr, proj, hid, 1.0, hbuf.ctypes.data, hid,
                 w_hr[d].ctypes.data, hid, 0.0, y_addr, y_cols)
            for r in range(nr):
                hr = h_n[d, b0 + r]
                yr = y[r0 + r, d * proj:(d + 1) * proj]
                for j in range(proj):
                    hr[j] = yr[j]


@jit
def _gru_gate_pass(g, h, bi, bh, out, short):
    """out = sigmoid(g + bi + h + bh) (the GRU's r and z gates)."""
    for j in range(out.shape[0]):
        out[j] = sigmoid(np.float64(g[j]) + bi[j] + h[j] + bh[j], short)


@jit
def _gru_new_pass(g, bi, h, bh, r, lin, out, short):
    """lin = h + bh (W_hn h + b_hn), out = tanh(g + bi + r * lin) (the GRU's n gate)."""
    for j in range(out.shape[0]):
        lin[j] = np.float64(h[j]) + bh[j]
    for j in range(out.shape[0]):
        out[j] = tanh(np.float64(g[j]) + bi[j] + r[j] * lin[j], short)


@jit
def _gru_blend_pass(z, n, hs, out):
    """out = (1 - z) * n + z * h_{t-1}."""
    for j in range(out.shape[0]):
        out[j] = (1.0 - z[j]) * n[j] + z[j] * hs[j]


@jit
def _gru_gates(gr, hr, bi, bh, hs, act, hid, j0, j1):
    """Units [j0, j1) of one row's GRU gates into act (float64: r, z, n, W_hn h + b_hn, h');
    gr: the input projection, hr: W_hh h, hs: h_{t-1} (unmasked). One pass per stored stream,
    each its own function (one loop storing five streams stayed scalar: 8 rows x 512 units
    145 -> ~30 us)."""
    short = gr.itemsize == 4
    for k in range(2):
        a, b = k * hid + j0, k * hid + j1
        _gru_gate_pass(gr[a:b], hr[a:b], bi[a:b], bh[a:b], act[a:b], short)
    a, b = 2 * hid + j0, 2 * hid + j1
    _gru_new_pass(gr[a:b], bi[a:b], hr[a:b], bh[a:b], act[j0:j1], act[3 * hid + j0:3 * hid + j1],
                  act[a:b], short)
    _gru_blend_pass(act[hid + j0:hid + j1], act[a:b], hs[j0:j1], act[4 * hid + j0:4 * hid + j1])


@jit
def _gru_forward_rows(d, b0, b1, batch_sizes, offsets, w_hh, wp, b_ih, b_hh, rmask, has_rmask, y,
                      h_n, gates, hn_lin, hbuf, hmask, act, save, is_double):
    """The GRU time loop of rows [b0, b1) of direction d; hbuf (rows * 3H) holds W_hh h, act
    (float64, 5H) a row's activations."""
    gh = w_hh.shape[1]
    hid = gh // 3
    reverse = d == 1
    bi = b_ih[d]
    bh = b_hh[d]
    for s in range(batch_sizes.shape[0]):
        t, nr, r0 = step_rows(s, reverse, b0, b1, batch_sizes, offsets)
        if nr <= 0:
            continue
        g = gates[d, r0:r0 + nr]
        a = masked_state(d, b0, nr, h_n, rmask, has_rmask, hmask)
        recurrent_product(is_double, nr, w_hh, wp, d, a, False, hbuf.ctypes.data, gh)
        for r in range(nr):
            gr = g[r]
            hs = h_n[d, b0 + r]
            _gru_gates(gr, hbuf[r * gh:(r + 1) * gh], bi, bh, hs, act, hid, 0, hid)
            if save:
                for j in range(gh):
                    gr[j] = act[j]
                _copy(act[3 * hid:4 * hid], hn_lin[d, r0 + r])
            _copy(act[4 * hid:5 * hid], hs)
            _copy(act[4 * hid:5 * hid], y[r0 + r, d * hid:(d + 1) * hid])


@jit
def _vanilla_forward_rows(d, b0, b1, batch_sizes, offsets, w_hh, wp, b_ih, b_hh, use_relu, rmask,
                          has_rmask, y, h_n, gates, hmask, act, save, is_double):
    """The vanilla RNN time loop (h' = tanh or relu of the pre-activation) of rows [b0, b1) of
    direction d; gates receives h'."""
    hid = w_hh.shape[1]
    short = gates.itemsize == 4
    reverse = d == 1
    bi = b_ih[d]
    bh = b_hh[d]
    for s in range(batch_sizes.shape[0]):
        t, nr, r0 = step_rows(s, reverse, b0, b1, batch_sizes, offsets)
        if nr <= 0:
            continue
        g = gates[d, r0:r0 + nr]
        a = masked_state(d, b0, nr, h_n, rmask, has_rmask, hmask)
        recurrent_product(is_double, nr, w_hh, wp, d, a, True, g.ctypes.data, hid)
        for r in range(nr):
            gr = g[r]
            if use_relu:
                for j in range(hid):
                    act[j] = relu(np.float64(gr[j]) + bi[j] + bh[j])
            else:
                for j in range(hid):
                    act[j] = tanh(np.float64(gr[j]) + bi[j] + bh[j], short)
            if save:
                _copy(act[:hid], gr)
            _copy(act[:hid], h_n[d, b0 + r])
            _copy(act[:hid], y[r0 + r, d * hid:(d + 1) * hid])


@jit
def _run_rows(mode_id, d, b0, b1, batch_sizes, offsets, w_hh, wp, b_ih, b_hh, w_hr, rmask, y, h_n,
              c_n, gates, saved, hbuf, hmask, save, is_double):
    """Rows [b0, b1) of direction d in the mode's time loop (mode_id: _MODE_ID); save: write the
    activated gates and saved states the backward reads (not without a gradient)."""
    has_rmask = rmask.shape[1] > 0
    act = np.empty(6 * c_n.shape[2])
    if mode_id == 0:
        _lstm_forward_rows(d, b0, b1, batch_sizes, offsets, w_hh, wp, b_ih, b_hh, w_hr,
                           w_hr.shape[1] > 0, rmask, has_rmask, y, h_n, c_n, gates, saved, hbuf,
                           hmask, act, save, is_double)
    elif mode_id == 1:
        _gru_forward_rows(d, b0, b1, batch_sizes, offsets, w_hh, wp, b_ih, b_hh, rmask, has_rmask,
                          y, h_n, gates, saved, hbuf, hmask, act, save, is_double)
    else:
        _vanilla_forward_rows(d, b0, b1, batch_sizes, offsets, w_hh, wp, b_ih, b_hh, mode_id == 3,
                              rmask, has_rmask, y, h_n, gates, hmask, act, save, is_double)


@jit_parallel
def _project(x, w_ih, gates, row_blocks, is_double):
    """gates[d] = x @ w_ih[d]^T for every direction, split into row blocks over threads."""
    n_rows, n_in = x.shape
    n_dir, gh = gates.shape[0], gates.shape[2]
    item = x.itemsize
    per = -(-n_rows // row_blocks)
    for it in numba.prange(n_dir * row_blocks):
        blas_set_local_threads(1)
        d = it // row_blocks
        lo = (it % row_blocks) * per
        hi = min(n_rows, lo + per)
        if hi > lo:
            gemm(is_double, 0, 1, hi - lo, gh, n_in, 1.0, x.ctypes.data + lo * n_in * item, n_in,
                 w_ih[d].ctypes.data, n_in, 0.0, gates[d, lo].ctypes.data, gh)
        blas_set_local_threads(0)


@jit_parallel
def _forward_items(mode_id, batch_sizes, offsets, w_hh, wp, b_ih, b_hh, w_hr, rmask, y, h_n, c_n,
                   gates, saved, hbuf, hmask, chunks, per, save, is_double):
    for it in numba.prange(h_n.shape[0] * chunks):
        blas_set_local_threads(1)
        d, k = it // chunks, it % chunks
        _run_rows(mode_id, d, k * per, min(h_n.shape[1], (k + 1) * per), batch_sizes, offsets,
                  w_hh, wp, b_ih, b_hh, w_hr, rmask, y, h_n, c_n, gates, saved, hbuf[it], hmask[it],
                  save, is_double)
        blas_set_local_threads(0)


@jit
def _forward_serial(mode_id, x, batch_sizes, offsets, w_ih, w_hh, wp, b_ih, b_hh, w_hr, rmask, y,
                    h_n, c_n, gates, saved, hbuf, hmask, project, save, is_double):
    """The whole layer on the calling thread, one direction after the other (scratch: one row
    per direction): small layers, where waking a thread team costs more than it saves (and, on
    a busy machine, can wait a whole scheduler time slice), and layers of a single work item.
    project: compute the input projection here (else gates holds it already)."""
    blas_set_local_threads(1)
    n_rows, n_in = x.shape
    n_dir, gh = gates.shape[0], gates.shape[2]
    for d in range(n_dir):
        if project:
            gemm(is_double, 0, 1, n_rows, gh, n_in, 1.0, x.ctypes.data, n_in,
                 w_ih[d].ctypes.data, n_in, 0.0, gates[d, 0].ctypes.data, gh)
        _run_rows(mode_id, d, 0, h_n.shape[1], batch_sizes, offsets, w_hh, wp, b_ih, b_hh, w_hr,
                  rmask, y, h_n, c_n, gates, saved, hbuf[d], hmask[d], save, is_double)
    blas_set_local_threads(0)


@jit
def _slice_product(is_double, nr, w_hh, wp, off, d, col, ncols, a, accumulate, c, ldc):
    """Columns [col, col + ncols) of W_hh[d] h: c[0:nr, 0:ncols] (+)= a @ W_hh[d, col:col+ncols]^T;
    on the packed rows of W_hh starting ``off`` floats into wp[d] (packed_blocks) when there are
    some, else BLAS."""
    proj = w_hh.shape[2]
    if wp.shape[1] > 0:
        packed_gemm(nr, ncols, proj, a, proj, wp[d].ctypes.data + off * 4, c, ldc,
                    1 if accumulate else 0)
    else:
        gemm(is_double, 0, 1, nr, ncols, proj, 1.0, a, proj, w_hh[d, col].ctypes.data, proj,
             1.0 if accumulate else 0.0, c, ldc)


@jit
def _slice_step(mode_id, s, d, j0, j1, batch_sizes, offsets, w_hh, wp, offs, b_ih, b_hh, rmask,
                h0, y, h_n, c_n, gates, saved, prev, hbuf, act, save, is_double):
    """Step s of direction d for hidden units [j0, j1) of every row (the split time loop): gather
    h_{t-1} of every active row (from y's previous step or h0, times the recurrent mask) into
    prev, the gates' columns of these units from W_hh, their gate arithmetic, and writes of
    these units only (h_n, c_n, y, the saved gates): no other item reads them during the step.
    offs[g]: where gate g's rows of these units start in wp[d] (packed_blocks)."""
    gh = w_hh.shape[1]
    proj = w_hh.shape[2]
    hid = proj
    n_gates = gh // hid
    reverse = d == 1
    t, nr, r0 = step_rows(s, reverse, 0, h_n.shape[1], batch_sizes, offsets)
    if nr <= 0:
        return
    has_rmask = rmask.shape[1] > 0
    for r in range(nr):
        pr = step_before(t, r, reverse, batch_sizes, offsets)
        src = h0[d, r] if pr < 0 else y[pr, d * proj:(d + 1) * proj]
        for j in range(proj):
            prev[r * proj + j] = src[j] * rmask[d, r, j] if has_rmask else src[j]
    g = gates[d, r0:r0 + nr]
    a = prev.ctypes.data
    width = j1 - j0
    bi = b_ih[d]
    bh = b_hh[d]
    if mode_id == 1:  # GRU: W_hh h into hbuf (rows of gh), the gates read it
        for k in range(n_gates):
            _slice_product(is_double, nr, w_hh, wp, offs[k], d, k * hid + j0, width, a, False,
                           hbuf[k * hid + j0:].ctypes.data, gh)
    else:  # accumulated onto the input projection
        for k in range(n_gates):
            _slice_product(is_double, nr, w_hh, wp, offs[k], d, k * hid + j0, width, a, True,
                           g[0, k * hid + j0:].ctypes.data, gh)
    short = gates.itemsize == 4
    for r in range(nr):
        gr = g[r]
        hs = h_n[d, r]
        if mode_id == 0:
            cr = c_n[d, r]
            _lstm_gates(gr, bi, bh, cr, act, hid, j0, j1)
            _copy(act[4 * hid + j0:4 * hid + j1], cr[j0:j1])
            if save:
                _copy(act[4 * hid + j0:4 * hid + j1], saved[d, r0 + r, j0:j1])
            out = act[5 * hid + j0:5 * hid + j1]
        elif mode_id == 1:
            _gru_gates(gr, hbuf[r * gh:(r + 1) * gh], bi, bh, hs, act, hid, j0, j1)
            if save:
                _copy(act[3 * hid + j0:3 * hid + j1], saved[d, r0 + r, j0:j1])
            out = act[4 * hid + j0:4 * hid + j1]
        else:
            for j in range(j0, j1):
                v = np.float64(gr[j]) + bi[j] + bh[j]
                act[j] = relu(v) if mode_id == 3 else tanh(v, short)
            out = act[j0:j1]
        if save:
            for k in range(n_gates):
                _copy(act[k * hid + j0:k * hid + j1], gr[k * hid + j0:k * hid + j1])
        _copy(out, hs[j0:j1])
        _copy(out, y[r0 + r, d * proj + j0:d * proj + j1])


@jit_parallel
def _split_forward(mode_id, batch_sizes, offsets, w_hh, wp, offs, b_ih, b_hh, rmask, h0, y, h_n,
                   c_n, gates, saved, prev, hbuf, act, bounds, save, is_double):
    """The time loop with each step split over (direction, hidden units bounds[k]:bounds[k+1])
    items, one parallel region per step (its end is the barrier before the next step reads the
    new state). For a few batch rows per direction, where splitting rows leaves threads idle:
    each thread reads only its units' share of W_hh at every step."""
    slices = bounds.shape[0] - 1
    for s in range(batch_sizes.shape[0]):
        for it in numba.prange(h_n.shape[0] * slices):
            blas_set_local_threads(1)
            d, k = it // slices, it % slices
            _slice_step(mode_id, s, d, bounds[k], bounds[k + 1], batch_sizes, offsets, w_hh, wp,
                        offs[k], b_ih, b_hh, rmask, h0, y, h_n, c_n, gates, saved, prev[it],
                        hbuf[it], act[it], save, is_double)
            blas_set_local_threads(0)


@jit_parallel
def _cell_split(mode_id, x, w_ih, batch_sizes, offsets, w_hh, b_ih, b_hh, rmask, h0, y, h_n, c_n,
                gates, saved, prev, hbuf, act, bounds, save, is_double):
    """One cell step in one parallel region: item k takes hidden units [bounds[k], bounds[k+1]):
    their columns of the input product, then _slice_step (recurrent product, gates, outputs). A
    single step needs no barrier: every item reads only the step's inputs and its own columns."""
    slices = bounds.shape[0] - 1
    gh = w_hh.shape[1]
    hid = w_hh.shape[2]
    n_in = x.shape[1]
    batch = x.shape[0]
    for it in numba.prange(slices):
        blas_set_local_threads(1)
        j0, j1 = bounds[it], bounds[it + 1]
        for k in range(gh // hid):
            col = k * hid + j0
            gemm(is_double, 0, 1, batch, j1 - j0, n_in, 1.0, x.ctypes.data, n_in,
                 w_ih[0, col].ctypes.data, n_in, 0.0, gates[0, 0, col:].ctypes.data, gh)
        _slice_step(mode_id, 0, 0, j0, j1, batch_sizes, offsets, w_hh, NOT_PACKED, NO_OFFSETS[0],
                    b_ih, b_hh, rmask, h0, y, h_n, c_n, gates, saved, prev[it], hbuf[it], act[it],
                    save, is_double)
        blas_set_local_threads(0)


# The split time loop: when each thread would get at most this many batch rows by splitting rows,
# and the recurrent weight of a direction is at least SPLIT_MIN_WEIGHT bytes (a smaller one stays
# in one core's cache, where a step is too short to pay for a parallel region).
SPLIT_MAX_ROWS = 4
SPLIT_MIN_WEIGHT = 1 << 20


def split_bounds(n_dir, batch, hid, gh, proj, itemsize, has_proj, small):
    """Unit boundaries of the split time loop, or None when the layer runs by rows (or serially:
    ``small``). DLKERN_RNN_SPLIT=1 splits every layer that can be (the tests' way to run this
    loop on small shapes), =0 none."""
    threads = numba.get_num_threads()
    slices = min(threads // n_dir, hid)
    forced = os.environ.get("DLKERN_RNN_SPLIT", "")
    if slices < 2 or has_proj or forced == "0":
        return None
    if forced != "1" and (small or -(-batch // max(1, -(-threads // n_dir))) > SPLIT_MAX_ROWS
                          or gh * proj * itemsize < SPLIT_MIN_WEIGHT):
        return None
    return np.array([hid * k // slices for k in range(slices + 1)], dtype=np.int64)


def packed_blocks(w_hh, steps, bounds, transposed=True):
    """W_hh (D, G*H, P) packed per direction in blocks for the split loops, with each block's
    offset (floats into a direction's row): transposed, for the forward, block (k, g) holds gate
    g's rows of units [bounds[k], bounds[k+1]) (offsets (slices, G)); else, for the backward,
    block k holds those columns of W_hh itself (offsets (slices, 1)). Every block starts its own
    panels, whatever the unit counts. (NOT_PACKED, zero offsets) where packed_recurrent would not
    pack."""
    if not _packs(w_hh, steps):
        return NOT_PACKED, np.zeros((len(bounds) - 1, max(1, w_hh.shape[1] // bounds[-1])),
                                    dtype=np.int64)
    n_dir, gh, proj = w_hh.shape
    hid = bounds[-1]
    gates = gh // hid
    widths = np.diff(bounds)
    panels = -(-widths // PACKED_NR)
    if transposed:
        sizes = np.repeat(panels * proj * PACKED_NR, gates)
        offs = np.concatenate(([0], np.cumsum(sizes)[:-1])).reshape(len(widths), gates)
    else:
        sizes = panels * gh * PACKED_NR
        offs = np.concatenate(([0], np.cumsum(sizes)[:-1])).reshape(len(widths), 1)
    out = packing.buffer("split^T" if transposed else "split", (n_dir, int(sizes.sum())))
    for d in range(n_dir):
        for k in range(len(widths)):
            j0, j1 = bounds[k], bounds[k + 1]
            if transposed:
                for g in range(gates):
                    block = out[d, offs[k, g]:offs[k, g] + sizes[k * gates + g]]
                    pack_transposed(w_hh[d, g * hid + j0:g * hid + j1],
                                    block.reshape(panels[k], proj, PACKED_NR))
            else:
                block = out[d, offs[k, 0]:offs[k, 0] + sizes[k]]
                packing.pack_plain(w_hh[d, :, j0:j1], block.reshape(panels[k], gh, PACKED_NR))
    return out, offs.astype(np.int64)


_MODE_ID = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 3}


def step_offsets(batch_sizes):
    """First row of each step in the packed rows (int64)."""
    offsets = np.zeros(batch_sizes.shape[0], dtype=np.int64)
    if batch_sizes.shape[0] > 1:
        np.cumsum(batch_sizes[:-1], out=offsets[1:])
    return offsets


# Layers below this many multiply-adds (recurrent and input products, all steps) run on the
# calling thread: a parallel region costs ~10 us to start on an idle machine, and can wait a
# scheduler time slice (milliseconds) for its second thread when other processes keep the cores
# busy.
SERIAL_WORK = 1 << 21


def serial(n_rows, gh, n_in, proj):
    """Whether a layer of this size runs on the calling thread: little work, or a handful of
    packed rows (a cell step of batch 1 and its kind: one work item, and weight gradients that are
    outer products, memory-bound, 2x faster measured on one thread of a busy machine)."""
    return (numba.get_num_threads() == 1 or n_rows <= 4
            or n_rows * gh * (n_in + proj) < SERIAL_WORK)


def chunks_for(n_dir, batch):
    """Work items per direction (blocks of batch rows) and rows per block."""
    threads = numba.get_num_threads()
    chunks = max(1, min(batch, -(-threads // n_dir)))
    per = -(-batch // chunks) if batch else 1
    chunks = -(-batch // per) if batch else 1
    return chunks, per


def scratch(items, rows, gh, hid, proj, dtype):
    """Per-work-item scratch of the forward rows, of the data's dtype: hbuf (W_hh h of a GRU, or
    o * tanh(c) before an LSTM's projection) and hmask (the state times the recurrent mask)."""
    return (np.empty((items, rows * max(gh, 1)), dtype=dtype),
            np.empty((items, rows * max(proj, 1)), dtype=dtype))


# The packed product (float32) from this many time steps on: packing W_hh reads and writes it once,
# about what one step's product reads, so a short sequence gains nothing. DLKERN_RNN_PACKED=0 turns
# it off (BLAS for every step, the way to compare the two).
PACKED_MIN_STEPS = 4
NOT_PACKED = np.empty((1, 0), dtype=np.float32)
NO_OFFSETS = np.zeros((1, 4), dtype=np.int64)  # the block offsets of a cell step (not packed)


def _packs(w_hh, steps):
    """Whether W_hh is packed for the per-step products (float32, enough steps, not turned off)."""
    return (w_hh.dtype == np.float32 and steps >= PACKED_MIN_STEPS and w_hh.shape[1] > 0
            and w_hh.shape[2] > 0 and os.environ.get("DLKERN_RNN_PACKED", "1") != "0")


def packed_recurrent(w_hh, steps, transposed=True):
    """W_hh (D, G*H, P) packed per direction, shape (D, panels * K * 16), or NOT_PACKED (float64,
    short sequences, or turned off): transposed, W_hh^T for the forward's h @ W_hh^T
    (recurrent_product); else W_hh itself for the backward's dg @ W_hh. Kept per thread between
    calls (packing.scratch)."""
    if not _packs(w_hh, steps):
        return NOT_PACKED
    n_dir, gh, proj = w_hh.shape
    if transposed:
        out = packing.scratch("w_hh^T", n_dir, gh, proj)
        for d in range(n_dir):
            pack_transposed(w_hh[d], out[d])
    else:
        out = packing.scratch("w_hh", n_dir, proj, gh)
        for d in range(n_dir):
            packing.pack_plain(w_hh[d], out[d])
    return out.reshape((n_dir, -1))


def layer_forward(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, rmask, h0, c0, y, h_n, c_n,
                  gates, saved, save=True):
    """Run every direction of one layer. Shapes as in the module docstring; writes y, h_n, c_n
    (final states; h_n/c_n must enter holding h0/c0), and with ``save`` gates and saved."""
    is_double = x.dtype == np.float64
    n_dir, batch = h_n.shape[0], h_n.shape[1]
    gh = w_hh.shape[1]
    hid = gh // GATES[mode]
    if x.shape[0] == 0:
        return
    mode_id = _MODE_ID[mode]
    offsets = step_offsets(batch_sizes)
    threads = numba.get_num_threads()
    small = serial(x.shape[0], gh, x.shape[1], w_hh.shape[2])
    chunks, per = chunks_for(n_dir, batch)
    forced = os.environ.get("DLKERN_RNN_SPLIT", "")
    if (batch_sizes.shape[0] == 1 and n_dir == 1 and w_hr.shape[1] == 0 and threads > 1
            and hid >= threads and forced != "0" and (forced == "1" or not small)):
        # One step (a cell with a gradient): the lean cell's split, saving what the backward
        # reads.
        bounds = np.array([hid * k // threads for k in range(threads + 1)], dtype=np.int64)
        _cell_split(mode_id, x, w_ih, batch_sizes, offsets, w_hh, b_ih, b_hh, rmask, h0, y, h_n,
                    c_n, gates, saved, np.empty((threads, batch * hid), x.dtype),
                    np.empty((threads, batch * gh), x.dtype), np.empty((threads, 6 * hid)),
                    bounds, save, is_double)
        return
    bounds = split_bounds(n_dir, batch, hid, gh, w_hh.shape[2], x.itemsize, w_hr.shape[1] > 0,
                          small)
    if bounds is not None:
        items = n_dir * (bounds.shape[0] - 1)
        wps, offs = packed_blocks(w_hh, batch_sizes.shape[0], bounds)
        _project(x, w_ih, gates, max(1, min(threads, x.shape[0] // 8)), is_double)
        _split_forward(mode_id, batch_sizes, offsets, w_hh, wps, offs, b_ih, b_hh, rmask, h0, y,
                       h_n, c_n, gates, saved, np.empty((items, batch * w_hh.shape[2]), x.dtype),
                       np.empty((items, batch * gh), x.dtype), np.empty((items, 6 * hid)),
                       bounds, save, is_double)
        return
    wp = packed_recurrent(w_hh, batch_sizes.shape[0])
    if small or n_dir * chunks == 1:
        if not small:
            _project(x, w_ih, gates, max(1, min(threads, x.shape[0] // 8)), is_double)
        work = scratch(n_dir, batch, gh, hid, w_hh.shape[2], x.dtype)
        _forward_serial(mode_id, x, batch_sizes, offsets, w_ih, w_hh, wp, b_ih, b_hh, w_hr, rmask,
                        y, h_n, c_n, gates, saved, *work, small, save, is_double)
        return
    work = scratch(n_dir * chunks, per, gh, hid, w_hh.shape[2], x.dtype)
    _project(x, w_ih, gates, max(1, min(threads, x.shape[0] // 8)), is_double)
    _forward_items(mode_id, batch_sizes, offsets, w_hh, wp, b_ih, b_hh, w_hr, rmask, y, h_n, c_n,
                   gates, saved, *work, chunks, per, save, is_double)


_cell_work = threading.local()  # per thread: (dtype, batch, gh, hid) -> the step's scratch


def _cell_scratch(mode, dtype, batch, gh, hid):
    """The arrays a cell step needs besides its inputs and outputs, kept per thread and shape
    (a decoder calls the same cell hundreds of times: allocating them each time costs more than
    the step's gate arithmetic)."""
    cache = getattr(_cell_work, "arrays", None)
    if cache is None:
        cache = _cell_work.arrays = {}
    key = (mode, dtype, batch, gh, hid)
    work = cache.get(key)
    if work is None:
        if len(cache) > 64:
            cache.clear()
        saved = (1, batch, hid) if mode in ("lstm", "gru") else (1, 0, 0)
        work = (np.full(1, batch, dtype=np.int64), np.zeros(1, dtype=np.int64),
                np.empty((1, 0, 0), dtype=dtype), np.empty((1, batch, gh), dtype=dtype),
                np.empty(saved, dtype=dtype)) + scratch(1, batch, gh, hid, hid, dtype)
        cache[key] = work
    return work


def cell_weights(w_ih, w_hh, b_ih, b_hh):
    """A cell's weights (G*H, I), (G*H, H), (G*H,), (G*H,) as the layer loop takes them: one
    direction, (1, G*H, .) and (1, G*H)."""
    gh = w_hh.shape[0]
    return (w_ih.reshape((1, gh, w_ih.shape[1])), w_hh.reshape((1, gh, w_hh.shape[1])),
            b_ih.reshape((1, gh)), b_hh.reshape((1, gh)))


def cell_forward(mode, x, h, c, weights, y, c_out):
    """One step of one cell (the lean path): the layer's serial loop over one step, with the same
    compiled code, on the calling thread; a large step (the layer's ``serial`` rule) split over
    hidden units on every thread instead (DLKERN_RNN_SPLIT=1 / 0: always / never). x (B, I), h
    and c (B, H) (c any array unless LSTM), weights from cell_weights, all C-contiguous; writes
    y (B, H), the new h, and c_out (B, H), the new c (LSTM). y enters the loop holding h: the
    step's product reads all of it before the gate pass writes any row."""
    batch, hid = y.shape
    w_ih, w_hh, b_ih, b_hh = weights
    gh = w_hh.shape[1]
    dtype = x.dtype
    sizes, offsets, empty, gates, saved, hbuf, hmask = _cell_scratch(mode, dtype, batch, gh, hid)
    y[...] = h
    c_n = c_out.reshape((1, batch, hid))
    if mode == "lstm":
        c_n[0] = c
    threads = numba.get_num_threads()
    forced = os.environ.get("DLKERN_RNN_SPLIT", "")
    if threads > 1 and hid >= threads and forced != "0" and (
            forced == "1" or not serial(batch, gh, x.shape[1], hid)):
        # A large step (the weights' read alone takes longer than waking the threads): split
        # over hidden units, each thread reading its share of both weights.
        bounds = np.array([hid * k // threads for k in range(threads + 1)], dtype=np.int64)
        h0 = h.reshape((1, batch, hid))
        _cell_split(_MODE_ID[mode], x, w_ih, sizes, offsets, w_hh, b_ih, b_hh, empty, h0, y,
                    y.reshape((1, batch, hid)), c_n, gates, saved,
                    np.empty((threads, batch * hid), dtype), np.empty((threads, batch * gh), dtype),
                    np.empty((threads, 6 * hid)), bounds, False, dtype == np.float64)
        return
    _forward_serial(_MODE_ID[mode], x, sizes, offsets, w_ih, w_hh, NOT_PACKED, b_ih, b_hh, empty,
                    empty, y,
                    y.reshape((1, batch, hid)), c_n, gates, saved, hbuf, hmask, True, False,
                    dtype == np.float64)
