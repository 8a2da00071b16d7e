"""LSTM and GRU kernels for the CPU: whole layers (every direction, every time step) and their BPTT.

A layer direction works on a *packed* sequence, the layout of torch's PackedSequence:

    x            (N, I)        the rows of every time step, step after step; N = sum(batch_sizes)
    batch_sizes  (T,) int64    rows of step t; non-increasing (a padded batch has all equal to B)
    offsets      (T,) int64    first row of step t in x
    w_ih         (D, G*H, I)   D directions; G gates (LSTM: i, f, g, o; GRU: r, z, n), torch's order
    w_hh         (D, G*H, P)   P = proj_size (LSTM) or H
    b_ih, b_hh   (D, G*H)      zeros when the layer has no bias
    w_hr         (D, P, H)     LSTM projection (an empty array without one)
    h0           (D, B, P), c0 (D, B, H)
    y            (N, D*P)      output; direction d writes columns [d*P, (d+1)*P)
    gates        (D, N, G*H)   input projection, then the activated gates (saved for the backward)
    cs (LSTM)    (D, N, H)     cell state after each step; hn_lin (GRU) (D, N, H): W_hn h + b_hn

At step t only rows [0, batch_sizes[t]) are active. Direction 1 runs backwards in time: a row
starts from h0 at its own last step. The running state of each row is kept in ``h_n``/``c_n``
(shape of h0/c0), which therefore end holding torch's final states.

Method. The input projection of all steps is one matrix product (BLAS, split over threads by
rows). The time loop is sequential, but rows of a batch are independent: a work item is
(direction, block of batch rows) and runs the whole time loop of its rows on one core, the
recurrent product of each step a small BLAS call on the item's rows with W_hh kept hot in that
core's cache, then the fused gate arithmetic. The backward runs the same items in reverse time,
writing the gradient of the gate pre-activations; the weight gradients are then a few large
matrix products over all steps at once.

Transcendentals. Numba has no vector libm here (no SVML), and a scalar exp per gate element costs
more than the matrix products at the target sizes. ``_exp_inplace`` is a vectorisable exp
(Cody-Waite reduction, Taylor polynomial of degree 12 in float64 or 7 in float32, 2^k by building
the exponent bits), accurate to a few ulp; sigmoid(x) = 1 / (1 + exp(-x)) and
tanh(x) = 2 sigmoid(2x) - 1. The forward's gate arithmetic runs in the data's dtype.

BLAS. Every product goes through _jit's ``gemm``; each prange work item runs its BLAS calls on
its own thread and hands the thread's BLAS setting back when it ends (_jit's convention).
"""
import numba
import numpy as np

from ._jit import blas_set_local_threads, gemm, jit, jit_parallel

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693147180369123816490
_LN2_LO = 1.90821492927058770002e-10
_EXP_CLAMP = 708.0


@jit
def _exp_inplace(z, bits, n):
    """z[:n] = exp(z[:n]), NaN propagates. z is float64 (bits int64) or float32 (bits int32):
    float32 uses its own constants and a shorter polynomial, twice the lanes per vector."""
    if z.itemsize == 4:
        _exp32(z, bits, n)
    else:
        _exp64(z, bits, n)


@jit
def _exp64(z, bits, n):
    scale = bits[:n].view(np.float64)
    for j in range(n):
        v = z[j]
        if v < -_EXP_CLAMP:
            v = -_EXP_CLAMP
        if v > _EXP_CLAMP:
            v = _EXP_CLAMP
        k = np.floor(v * _LOG2E + 0.5)
        if k != k:
            k = 0.0
        r = v - k * _LN2_HI - k * _LN2_LO
        p = 1.0 + r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (
            1.0 / 120 + r * (1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (
                1.0 / 362880 + r * (1.0 / 3628800 + r * (1.0 / 39916800 + r * (
                    1.0 / 479001600))))))))))))
        z[j] = p
        bits[j] = (np.int64(k) + 1023) << 52
    for j in range(n):
        z[j] = z[j] * scale[j]


@jit
def _exp32(z, bits, n):
    """float32 exp: |x| clamped to 87 (2^k stays normal), degree-7 Taylor on |r| <= ln2/2
    (truncation 5e-9 relative, below float32's rounding)."""
    scale = bits[:n].view(np.float32)
    lo, hi = np.float32(-87.0), np.float32(87.0)
    log2e, half = np.float32(_LOG2E), np.float32(0.5)
    ln2_hi, ln2_lo = np.float32(0.693145751953125), np.float32(1.428606765330187e-06)
    c2, c3, c4 = np.float32(1.0 / 2), np.float32(1.0 / 6), np.float32(1.0 / 24)
    c5, c6, c7 = np.float32(1.0 / 120), np.float32(1.0 / 720), np.float32(1.0 / 5040)
    one, zero = np.float32(1.0), np.float32(0.0)
    for j in range(n):
        v = z[j]
        if v < lo:
            v = lo
        if v > hi:
            v = hi
        k = np.floor(v * log2e + half)
        if k != k:
            k = zero
        r = (v - k * ln2_hi) - k * ln2_lo
        p = one + r * (one + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * c7))))))
        z[j] = p
        bits[j] = (np.int32(k) + np.int32(127)) << np.int32(23)
    for j in range(n):
        z[j] = z[j] * scale[j]


@jit
def _prev_row(t, b, reverse, batch_sizes, offsets):
    """The row of batch entry b at the step before t in this direction's order, or -1 (initial)."""
    if reverse:
        if t + 1 < batch_sizes.shape[0] and b < batch_sizes[t + 1]:
            return offsets[t + 1] + b
        return -1
    if t > 0:
        return offsets[t - 1] + b
    return -1


@jit
def _lstm_forward_rows(d, b0, b1, batch_sizes, offsets, w_hh, b_ih, b_hh, w_hr, has_proj,
                       y, h_n, c_n, gates, cs, z, bits, hpre, is_double):
    """The time loop of rows [b0, b1) of direction d (see the module docstring for shapes).

    z, bits: (rows * 4H,) scratch of the dtype and the int of its width; hpre: (rows * H,)
    scratch for the projection. The gate arithmetic runs in the data's dtype, as torch's does (no
    float literals below: they would promote float32 to float64, half the lanes per vector)."""
    one = np.ones(1, dtype=gates.dtype)[0]
    two = one + one
    steps = batch_sizes.shape[0]
    gh = w_hh.shape[1]
    hid = gh // 4
    proj = w_hh.shape[2]
    y_cols = y.shape[1]
    item = y.itemsize
    reverse = d == 1
    for s in range(steps):
        t = steps - 1 - s if reverse else s
        e = min(b1, batch_sizes[t])
        nr = e - b0
        if nr <= 0:
            continue
        r0 = offsets[t] + b0
        g = gates[d, r0:r0 + nr]
        # Recurrent product, accumulated onto the input projection of this step.
        gemm(is_double, 0, 1, nr, gh, proj, 1.0, h_n[d, b0].ctypes.data, proj,
             w_hh[d].ctypes.data, proj, 1.0, g.ctypes.data, gh)
        bi = b_ih[d]
        bh = b_hh[d]
        for r in range(nr):
            zr = z[r * gh:(r + 1) * gh]
            gr = g[r]
            for j in range(gh):
                zr[j] = -(gr[j] + bi[j] + bh[j])
            for j in range(2 * hid, 3 * hid):
                zr[j] *= two
        _exp_inplace(z, bits, nr * gh)
        for r in range(nr):
            zr = z[r * gh:(r + 1) * gh]
            gr = g[r]
            for j in range(gh):
                gr[j] = one / (one + zr[j])
            for j in range(2 * hid, 3 * hid):
                gr[j] = two * gr[j] - one
            cr = c_n[d, b0 + r]
            csr = cs[d, r0 + r]
            zc = z[r * hid:(r + 1) * hid]
            for j in range(hid):
                c = gr[hid + j] * cr[j] + gr[j] * gr[2 * hid + j]
                cr[j] = c
                csr[j] = c
                zc[j] = -two * c
        # z rows now hold -2c in their first H entries, packed per row with stride H.
        _exp_inplace(z, bits, nr * hid)
        for r in range(nr):
            gr = g[r]
            zc = z[r * hid:(r + 1) * hid]
            if has_proj:
                hp = hpre[r * hid:(r + 1) * hid]
                for j in range(hid):
                    hp[j] = gr[3 * hid + j] * (two / (one + zc[j]) - one)
            else:
                hr = h_n[d, b0 + r]
                yr = y[r0 + r, d * proj:(d + 1) * proj]
                for j in range(hid):
                    v = gr[3 * hid + j] * (two / (one + zc[j]) - one)
                    hr[j] = v
                    yr[j] = v
        if has_proj:
            y_addr = y.ctypes.data + (r0 * y_cols + d * proj) * item
            gemm(is_double, 0, 1, nr, proj, hid, 1.0, hpre.ctypes.data, hid,
                 w_hr[d].ctypes.data, hid, 0.0, y_addr, y_cols)
            for r in range(nr):
                hr = h_n[d, b0 + r]
                yr = y[r0 + r, d * proj:(d + 1) * proj]
                for j in range(proj):
                    hr[j] = yr[j]


@jit
def _gru_forward_rows(d, b0, b1, batch_sizes, offsets, w_hh, b_ih, b_hh, w_hr, has_proj,
                      y, h_n, c_n, gates, hn_lin, z, bits, hproj, is_double):
    """The GRU time loop of rows [b0, b1) of direction d; hproj: (rows * 3H,) scratch. Gate
    arithmetic in the data's dtype, as in _lstm_forward_rows."""
    one = np.ones(1, dtype=gates.dtype)[0]
    two = one + one
    steps = batch_sizes.shape[0]
    gh = w_hh.shape[1]
    hid = gh // 3
    reverse = d == 1
    for s in range(steps):
        t = steps - 1 - s if reverse else s
        e = min(b1, batch_sizes[t])
        nr = e - b0
        if nr <= 0:
            continue
        r0 = offsets[t] + b0
        g = gates[d, r0:r0 + nr]
        gemm(is_double, 0, 1, nr, gh, hid, 1.0, h_n[d, b0].ctypes.data, hid,
             w_hh[d].ctypes.data, hid, 0.0, hproj.ctypes.data, gh)
        hp2 = hproj[:nr * gh].reshape((nr, gh))
        bi = b_ih[d]
        bh = b_hh[d]
        # z[:nr*2H]: the r and z gates of each row; z[nr*2H:nr*3H]: the n gate of each row.
        for r in range(nr):
            zr = z[r * 2 * hid:(r + 1) * 2 * hid]
            gr = g[r]
            hr = hp2[r]
            for j in range(2 * hid):
                zr[j] = -(gr[j] + bi[j] + hr[j] + bh[j])
        _exp_inplace(z, bits, nr * 2 * hid)
        zn = z[nr * 2 * hid:nr * 3 * hid]
        for r in range(nr):
            zr = z[r * 2 * hid:(r + 1) * 2 * hid]
            znr = zn[r * hid:(r + 1) * hid]
            gr = g[r]
            hr = hp2[r]
            lin = hn_lin[d, r0 + r]
            for j in range(2 * hid):
                gr[j] = one / (one + zr[j])
            for j in range(hid):
                hl = hr[2 * hid + j] + bh[2 * hid + j]
                lin[j] = hl
                znr[j] = -two * (gr[2 * hid + j] + bi[2 * hid + j] + gr[j] * hl)
        _exp_inplace(zn, bits, nr * hid)
        for r in range(nr):
            znr = zn[r * hid:(r + 1) * hid]
            gr = g[r]
            hs = h_n[d, b0 + r]
            yr = y[r0 + r, d * hid:(d + 1) * hid]
            for j in range(hid):
                n = two / (one + znr[j]) - one
                gr[2 * hid + j] = n
                zg = gr[hid + j]
                v = (one - zg) * n + zg * hs[j]
                hs[j] = v
                yr[j] = v


@jit
def _lstm_backward_rows(d, b0, b1, batch_sizes, offsets, w_hh, w_hr, has_proj, y, h0, c0,
                        gates, cs, dy, dh, dc, dgates, dgates_h, hprev, dw_hr, z, bits, hpre,
                        dhp, is_double):
    """BPTT of rows [b0, b1) of direction d. dh/dc (D, B, P/H) enter holding the gradient of the
    final states and leave holding that of h0/c0; dgates (D, N, 4H) gets the gradient of the gate
    pre-activations; hprev (D, N, P) the state each step started from; dw_hr (P, H) accumulates.
    dgates_h is unused (the GRU's hidden-side gate gradient)."""
    steps = batch_sizes.shape[0]
    gh = w_hh.shape[1]
    hid = gh // 4
    proj = w_hh.shape[2]
    reverse = d == 1
    for s in range(steps):
        t = s if reverse else steps - 1 - s
        e = min(b1, batch_sizes[t])
        nr = e - b0
        if nr <= 0:
            continue
        r0 = offsets[t] + b0
        for r in range(nr):
            b = b0 + r
            pr = _prev_row(t, b, reverse, batch_sizes, offsets)
            hp = hprev[d, r0 + r]
            dhr = dh[d, b]
            dyr = dy[r0 + r, d * proj:(d + 1) * proj]
            for j in range(proj):
                hp[j] = h0[d, b, j] if pr < 0 else y[pr, d * proj + j]
                dhr[j] += dyr[j]
            zc = z[r * hid:(r + 1) * hid]
            csr = cs[d, r0 + r]
            for j in range(hid):
                zc[j] = -2.0 * np.float64(csr[j])
        _exp_inplace(z, bits, nr * hid)
        for r in range(nr):
            zc = z[r * hid:(r + 1) * hid]
            for j in range(hid):
                zc[j] = 2.0 / (1.0 + zc[j]) - 1.0     # tanh(c)
        if has_proj:
            for r in range(nr):
                gr = gates[d, r0 + r]
                zc = z[r * hid:(r + 1) * hid]
                hq = hpre[r * hid:(r + 1) * hid]
                for j in range(hid):
                    hq[j] = gr[3 * hid + j] * zc[j]
            # dW_hr += dh^T hpre; the gradient reaching o * tanh(c) is dh W_hr.
            gemm(is_double, 1, 0, proj, hid, nr, 1.0, dh[d, b0].ctypes.data, proj,
                 hpre.ctypes.data, hid, 1.0, dw_hr.ctypes.data, hid)
            gemm(is_double, 0, 0, nr, hid, proj, 1.0, dh[d, b0].ctypes.data, proj,
                 w_hr[d].ctypes.data, hid, 0.0, dhp.ctypes.data, hid)
        for r in range(nr):
            b = b0 + r
            pr = _prev_row(t, b, reverse, batch_sizes, offsets)
            gr = gates[d, r0 + r]
            dg = dgates[d, r0 + r]
            dcr = dc[d, b]
            dhr = dh[d, b] if not has_proj else dhp[r * hid:(r + 1) * hid]
            zc = z[r * hid:(r + 1) * hid]
            for j in range(hid):
                i_g = np.float64(gr[j])
                f_g = np.float64(gr[hid + j])
                g_g = np.float64(gr[2 * hid + j])
                o_g = np.float64(gr[3 * hid + j])
                tc = zc[j]
                cp = c0[d, b, j] if pr < 0 else cs[d, pr, j]
                dhv = np.float64(dhr[j])
                dcv = dcr[j] + dhv * o_g * (1.0 - tc * tc)
                dg[j] = dcv * g_g * i_g * (1.0 - i_g)
                dg[hid + j] = dcv * cp * f_g * (1.0 - f_g)
                dg[2 * hid + j] = dcv * i_g * (1.0 - g_g * g_g)
                dg[3 * hid + j] = dhv * tc * o_g * (1.0 - o_g)
                dcr[j] = dcv * f_g
        gemm(is_double, 0, 0, nr, proj, gh, 1.0, dgates[d, r0].ctypes.data, gh,
             w_hh[d].ctypes.data, proj, 0.0, dh[d, b0].ctypes.data, proj)


@jit
def _gru_backward_rows(d, b0, b1, batch_sizes, offsets, w_hh, w_hr, has_proj, y, h0, c0,
                       gates, hn_lin, dy, dh, dc, dgates, dgates_h, hprev, dw_hr, z, bits, hpre,
                       dhp, is_double):
    """GRU BPTT of rows [b0, b1) of direction d: dgates gets the gradient of the input-side gate
    pre-activations, dgates_h that of the hidden-side ones (they differ in the n gate)."""
    steps = batch_sizes.shape[0]
    gh = w_hh.shape[1]
    hid = gh // 3
    reverse = d == 1
    for s in range(steps):
        t = s if reverse else steps - 1 - s
        e = min(b1, batch_sizes[t])
        nr = e - b0
        if nr <= 0:
            continue
        r0 = offsets[t] + b0
        for r in range(nr):
            b = b0 + r
            pr = _prev_row(t, b, reverse, batch_sizes, offsets)
            hp = hprev[d, r0 + r]
            dhr = dh[d, b]
            dyr = dy[r0 + r, d * hid:(d + 1) * hid]
            gr = gates[d, r0 + r]
            lin = hn_lin[d, r0 + r]
            dgi = dgates[d, r0 + r]
            dgh = dgates_h[d, r0 + r]
            for j in range(hid):
                hv = h0[d, b, j] if pr < 0 else y[pr, d * hid + j]
                hp[j] = hv
                dht = np.float64(dhr[j]) + dyr[j]
                r_g = np.float64(gr[j])
                z_g = np.float64(gr[hid + j])
                n_g = np.float64(gr[2 * hid + j])
                dnp = dht * (1.0 - z_g) * (1.0 - n_g * n_g)
                drp = dnp * lin[j] * r_g * (1.0 - r_g)
                dzp = dht * (np.float64(hv) - n_g) * z_g * (1.0 - z_g)
                dgi[j] = drp
                dgi[hid + j] = dzp
                dgi[2 * hid + j] = dnp
                dgh[j] = drp
                dgh[hid + j] = dzp
                dgh[2 * hid + j] = dnp * r_g
                dhr[j] = dht * z_g
        gemm(is_double, 0, 0, nr, hid, gh, 1.0, dgates_h[d, r0].ctypes.data, gh,
             w_hh[d].ctypes.data, hid, 1.0, dh[d, b0].ctypes.data, hid)


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
def _lstm_forward_items(x, batch_sizes, offsets, w_hh, b_ih, b_hh, w_hr, has_proj, y, h_n, c_n,
                        gates, saved, z, bits, hpre, chunks, per, is_double):
    for it in numba.prange(h_n.shape[0] * chunks):
        blas_set_local_threads(1)
        d, k = it // chunks, it % chunks
        _lstm_forward_rows(d, k * per, min(h_n.shape[1], (k + 1) * per), batch_sizes,
                           offsets, w_hh, b_ih, b_hh, w_hr, has_proj, y, h_n, c_n, gates, saved,
                           z[it], bits[it], hpre[it], is_double)
        blas_set_local_threads(0)


@jit_parallel
def _gru_forward_items(x, batch_sizes, offsets, w_hh, b_ih, b_hh, w_hr, has_proj, y, h_n, c_n,
                       gates, saved, z, bits, hpre, chunks, per, is_double):
    for it in numba.prange(h_n.shape[0] * chunks):
        blas_set_local_threads(1)
        d, k = it // chunks, it % chunks
        _gru_forward_rows(d, k * per, min(h_n.shape[1], (k + 1) * per), batch_sizes,
                          offsets, w_hh, b_ih, b_hh, w_hr, has_proj, y, h_n, c_n, gates, saved,
                          z[it], bits[it], hpre[it], is_double)
        blas_set_local_threads(0)


@jit_parallel
def _lstm_backward_items(batch_sizes, offsets, w_hh, w_hr, has_proj, y, h0, c0, gates, saved, dy,
                         dh, dc, dgates, dgates_h, hprev, dw_hr_parts, z, bits, hpre, dhp, chunks,
                         per, is_double):
    for it in numba.prange(dh.shape[0] * chunks):
        blas_set_local_threads(1)
        d, k = it // chunks, it % chunks
        _lstm_backward_rows(d, k * per, min(dh.shape[1], (k + 1) * per), batch_sizes, offsets,
                            w_hh, w_hr, has_proj, y, h0, c0, gates, saved, dy, dh, dc, dgates,
                            dgates_h, hprev, dw_hr_parts[it], z[it], bits[it], hpre[it], dhp[it],
                            is_double)
        blas_set_local_threads(0)


@jit_parallel
def _gru_backward_items(batch_sizes, offsets, w_hh, w_hr, has_proj, y, h0, c0, gates, saved, dy,
                        dh, dc, dgates, dgates_h, hprev, dw_hr_parts, z, bits, hpre, dhp, chunks,
                        per, is_double):
    for it in numba.prange(dh.shape[0] * chunks):
        blas_set_local_threads(1)
        d, k = it // chunks, it % chunks
        _gru_backward_rows(d, k * per, min(dh.shape[1], (k + 1) * per), batch_sizes, offsets,
                           w_hh, w_hr, has_proj, y, h0, c0, gates, saved, dy, dh, dc, dgates,
                           dgates_h, hprev, dw_hr_parts[it], z[it], bits[it], hpre[it], dhp[it],
                           is_double)
        blas_set_local_threads(0)


@jit_parallel
def _weight_grads(dgi, dgh, x, hprev, dw_ih, dw_hh, db_ih, db_hh, blocks, is_double):
    """dw_ih[d] = dgi[d]^T x, dw_hh[d] = dgh[d]^T hprev[d], db = column sums; blocks of gate rows."""
    n_dir, n_rows, gh = dgi.shape
    n_in = x.shape[1]
    proj = hprev.shape[2]
    item = x.itemsize
    per = -(-gh // blocks)
    for it in numba.prange(n_dir * blocks):
        blas_set_local_threads(1)
        d = it // blocks
        lo = (it % blocks) * per
        hi = min(gh, lo + per)
        if hi > lo:
            gemm(is_double, 1, 0, hi - lo, n_in, n_rows, 1.0, dgi[d].ctypes.data + lo * item, gh,
                 x.ctypes.data, n_in, 0.0, dw_ih[d, lo].ctypes.data, n_in)
            gemm(is_double, 1, 0, hi - lo, proj, n_rows, 1.0, dgh[d].ctypes.data + lo * item,
                 gh, hprev[d].ctypes.data, proj, 0.0, dw_hh[d, lo].ctypes.data, proj)
            for j in range(lo, hi):
                db_ih[d, j] = 0.0
                db_hh[d, j] = 0.0
            for r in range(n_rows):
                gi = dgi[d, r]
                gg = dgh[d, r]
                for j in range(lo, hi):
                    db_ih[d, j] += gi[j]
                    db_hh[d, j] += gg[j]
        blas_set_local_threads(0)


@jit_parallel
def _input_grads(dgi, w_ih, dx, row_blocks, is_double):
    """dx = sum over d of dgi[d] @ w_ih[d], in row blocks."""
    n_dir, n_rows, gh = dgi.shape
    n_in = dx.shape[1]
    item = dx.itemsize
    per = -(-n_rows // row_blocks)
    for it in numba.prange(row_blocks):
        blas_set_local_threads(1)
        lo = it * per
        hi = min(n_rows, lo + per)
        if hi > lo:
            for d in range(n_dir):
                gemm(is_double, 0, 0, hi - lo, n_in, gh, 1.0, dgi[d, lo].ctypes.data, gh,
                     w_ih[d].ctypes.data, n_in, 1.0 if d > 0 else 0.0,
                     dx.ctypes.data + lo * n_in * item, n_in)
        blas_set_local_threads(0)


@jit
def _forward_serial(is_lstm, x, batch_sizes, offsets, w_ih, w_hh, b_ih, b_hh, w_hr, has_proj, y,
                    h_n, c_n, gates, saved, z, bits, hpre, is_double):
    """A layer of one direction and one work item (a batch of one) on the calling thread: no
    thread team to wake, whose wake-up can cost more than such a layer."""
    blas_set_local_threads(1)
    n_rows, n_in = x.shape
    gh = gates.shape[2]
    gemm(is_double, 0, 1, n_rows, gh, n_in, 1.0, x.ctypes.data, n_in, w_ih[0].ctypes.data, n_in,
         0.0, gates[0, 0].ctypes.data, gh)
    if is_lstm:
        _lstm_forward_rows(0, 0, h_n.shape[1], batch_sizes, offsets, w_hh, b_ih, b_hh, w_hr,
                           has_proj, y, h_n, c_n, gates, saved, z, bits, hpre, is_double)
    else:
        _gru_forward_rows(0, 0, h_n.shape[1], batch_sizes, offsets, w_hh, b_ih, b_hh, w_hr,
                          has_proj, y, h_n, c_n, gates, saved, z, bits, hpre, is_double)
    blas_set_local_threads(0)


@jit
def _cell_step(is_lstm, x, h, c, w_ih, w_hh, b_ih, b_hh, y, c_out, z, bits, is_double):
    """One cell step of B rows on the calling thread (the lean path, no thread team).

    x (B, I), h (B, H), c (B, H) (any array for a GRU), w_ih (G*H, I), w_hh (G*H, H),
    b_ih/b_hh (G*H,), y (B, H) the new h, c_out (B, H) the new c; z/bits (B * G*H,) scratch."""
    batch, n_in = x.shape
    gh, hid = w_hh.shape
    gates = np.empty((1, batch, gh), dtype=x.dtype)
    saved = np.empty((1, batch, hid), dtype=x.dtype)
    h_n = np.empty((1, batch, hid), dtype=x.dtype)
    h_n[0, :, :] = h
    c_n = c_out.reshape((1, batch, hid))
    if is_lstm:
        c_n[0, :, :] = c
    batch_sizes = np.full(1, batch, dtype=np.int64)
    offsets = np.zeros(1, dtype=np.int64)
    w_hr = np.empty((1, 0, 0), dtype=x.dtype)
    hpre = np.empty(0 if is_lstm else batch * gh, dtype=x.dtype)  # the GRU's W_hh h rows
    w_hh3 = w_hh.reshape((1, gh, hid))
    b_ih2 = b_ih.reshape((1, gh))
    b_hh2 = b_hh.reshape((1, gh))
    blas_set_local_threads(1)  # a product this small loses more waking a thread team
    gemm(is_double, 0, 1, batch, gh, n_in, 1.0, x.ctypes.data, n_in, w_ih.ctypes.data, n_in, 0.0,
         gates.ctypes.data, gh)
    if is_lstm:
        _lstm_forward_rows(0, 0, batch, batch_sizes, offsets, w_hh3, b_ih2, b_hh2, w_hr,
                           False, y, h_n, c_n, gates, saved, z, bits, hpre, is_double)
    else:
        _gru_forward_rows(0, 0, batch, batch_sizes, offsets, w_hh3, b_ih2, b_hh2, w_hr,
                          False, y, h_n, c_n, gates, saved, z, bits, hpre, is_double)
    blas_set_local_threads(0)


_GATES = {"lstm": 4, "gru": 3}
_FORWARD = {"lstm": _lstm_forward_items, "gru": _gru_forward_items}
_BACKWARD = {"lstm": _lstm_backward_items, "gru": _gru_backward_items}


def step_offsets(batch_sizes):
    """First row of each step in the packed rows (int64)."""
    offsets = np.zeros(batch_sizes.shape[0], dtype=np.int64)
    if batch_sizes.shape[0] > 1:
        np.cumsum(batch_sizes[:-1], out=offsets[1:])
    return offsets


def _chunks(n_dir, batch):
    """Work items per direction (blocks of batch rows) and rows per block."""
    threads = numba.get_num_threads()
    chunks = max(1, min(batch, -(-threads // n_dir)))
    per = -(-batch // chunks) if batch else 1
    chunks = -(-batch // per) if batch else 1
    return chunks, per


def _scratch(items, rows, gh, hid, proj, dtype):
    z = np.empty((items, rows * max(gh, 1)), dtype=dtype)
    bits = np.empty((items, rows * max(gh, 1)), dtype=np.int32 if dtype == np.float32 else np.int64)
    hpre = np.empty((items, rows * max(gh, hid, proj, 1)), dtype=dtype)
    return z, bits, hpre


def layer_forward(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, y, h_n, c_n, gates,
                  saved):
    """Run every direction of one layer. Shapes as in the module docstring; writes y, h_n, c_n
    (final states; h_n/c_n must enter holding h0/c0), gates and saved (cs or hn_lin)."""
    is_double = x.dtype == np.float64
    n_dir, batch = h_n.shape[0], h_n.shape[1]
    gh = w_hh.shape[1]
    hid = gh // _GATES[mode]
    if x.shape[0] == 0:
        return
    offsets = step_offsets(batch_sizes)
    threads = numba.get_num_threads()
    chunks, per = _chunks(n_dir, batch)
    if n_dir * chunks == 1:
        z, bits, hpre = _scratch(1, per, gh, hid, w_hh.shape[2], x.dtype)
        _forward_serial(mode == "lstm", x, batch_sizes, offsets, w_ih, w_hh, b_ih, b_hh, w_hr,
                        w_hr.shape[1] > 0, y, h_n, c_n, gates, saved, z[0], bits[0], hpre[0],
                        is_double)
        return
    _project(x, w_ih, gates, max(1, min(threads, x.shape[0] // 8)), is_double)
    z, bits, hpre = _scratch(n_dir * chunks, per, gh, hid, w_hh.shape[2], x.dtype)
    _FORWARD[mode](x, batch_sizes, offsets, w_hh, b_ih, b_hh, w_hr, w_hr.shape[1] > 0, y, h_n,
                   c_n, gates, saved, z, bits, hpre, chunks, per, is_double)


def cell_forward(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, y, c_out):
    """One step of one cell on the calling thread (the lean path). x (B, I), h and c (B, H)
    (c any array for a GRU), w_ih (G*H, I), w_hh (G*H, H), b_ih/b_hh (G*H,) (zeros without
    bias); writes y (B, H), the new h, and c_out (B, H), the new c (LSTM)."""
    n = x.shape[0] * w_hh.shape[0]
    z = np.empty(n, dtype=x.dtype)
    bits = np.empty(n, dtype=np.int32 if x.dtype == np.float32 else np.int64)
    _cell_step(mode == "lstm", x, h, c, w_ih, w_hh, b_ih, b_hh, y, c_out, z, bits,
               x.dtype == np.float64)


def layer_backward(mode, x, batch_sizes, w_ih, w_hh, w_hr, h0, c0, y, gates, saved, dy, dh, dc,
                   dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr):
    """BPTT of one layer. dh/dc enter holding the gradients of h_n/c_n and leave holding those of
    h0/c0; dx (N, I), dw_* and db_* (D, G*H) are written (dw_hr summed over work items)."""
    is_double = x.dtype == np.float64
    n_dir, batch = dh.shape[0], dh.shape[1]
    n_rows = x.shape[0]
    gh = w_hh.shape[1]
    hid = gh // _GATES[mode]
    proj = w_hh.shape[2]
    has_proj = w_hr.shape[1] > 0
    threads = numba.get_num_threads()
    dgates = np.empty((n_dir, n_rows, gh), dtype=x.dtype)
    dgates_h = np.empty((n_dir, n_rows, gh), dtype=x.dtype) if mode == "gru" else dgates
    hprev = np.empty((n_dir, n_rows, proj), dtype=x.dtype)
    chunks, per = _chunks(n_dir, batch)
    items = n_dir * chunks
    z, bits, hpre = _scratch(items, per, gh, hid, proj, x.dtype)
    dhp = np.empty((items, per * max(hid, 1)), dtype=x.dtype)
    dw_hr_parts = np.zeros((items,) + tuple(w_hr.shape[1:]), dtype=x.dtype)
    if n_rows > 0:
        offsets = step_offsets(batch_sizes)
        _BACKWARD[mode](batch_sizes, offsets, w_hh, w_hr, has_proj, y, h0, c0, gates, saved, dy,
                        dh, dc, dgates, dgates_h, hprev, dw_hr_parts, z, bits, hpre, dhp, chunks,
                        per, is_double)
    if has_proj:
        for d in range(n_dir):
            dw_hr[d] = dw_hr_parts[d * chunks:(d + 1) * chunks].sum(axis=0)
    if n_rows == 0 or x.shape[1] == 0:
        dx[...] = 0.0
        dw_ih[...] = 0.0
    if n_rows == 0:
        dw_hh[...] = 0.0
        db_ih[...] = 0.0
        db_hh[...] = 0.0
        return
    blocks = max(1, min(threads * 2 // n_dir, gh // 16))
    _weight_grads(dgates, dgates_h, x, hprev, dw_ih, dw_hh, db_ih, db_hh, blocks, is_double)
    if x.shape[1] > 0:
        _input_grads(dgates, w_ih, dx, max(1, min(threads, n_rows // 8)), is_double)
