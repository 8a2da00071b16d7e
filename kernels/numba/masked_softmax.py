"""Masked softmax on the CPU, forward and backward: one row per work item, the mask read through
per-row offsets and a column stride (a broadcast mask is never expanded).

float32 uses the vectorisable exp of attention.py; float64 the libm exp.
"""
import math

import numba
import numpy as np
from numba import prange

from dlkern.kernels.numba._jit import jit, jit_parallel, jit_reduce
from dlkern.kernels.numba.attention import _bits_as_float32, _exp32

LANES = 64  # lanes of the float64 row maximum: LLVM vectorises them 64 wide (4 x 16, unrolled)


@jit
def _fold_max(lanes):
    """max of the lanes (NaN skipped), folded in halves (vectorised) down to 16, then scalar."""
    h = lanes.shape[0] // 2
    while h >= 8:
        for t in range(h):
            lanes[t] = np.fmax(lanes[t], lanes[t + h])
        h //= 2
    m = lanes[0]
    for t in range(1, 2 * h):
        m = np.fmax(m, lanes[t])
    return m


@jit
def _row_max32(x, n):
    """max of float32 x[j], j < n, as an integer maximum of keys ordered as the floats (sign and
    magnitude made two's complement): LLVM vectorises an integer max reduction, not a float one
    (5x faster on 197-wide rows). A NaN of either sign never hides a larger number, but a
    positive NaN is itself the largest key: the row's result is all NaN either way (its exp
    term), as torch's."""
    bits = x[:n].view(np.int32)
    best = np.int32(-2147483648)
    for j in range(n):
        b = bits[j]
        k = b ^ ((b >> np.int32(31)) & np.int32(0x7FFFFFFF))
        best = k if k > best else best
    return _bits_as_float32(best ^ ((best >> np.int32(31)) & np.int32(0x7FFFFFFF)))


@jit
def _row_max(x, n, lanes):
    """max of x[j], j < n (-inf if nothing else), in x's dtype: float32 by _row_max32; float64
    skipping NaN, in lanes.

    One running maximum per lane (np.fmax: vectorised; a conditional store per lane stalls on
    store forwarding), over a (rows, lanes) view indexed by loop counters alone. The lane count
    is read from the array at run time: with a constant count LLVM unrolls the lane loop into
    scalar code.
    """
    if x.itemsize == 4:
        return _row_max32(x, n)
    w = lanes.shape[0]
    lanes[:] = -np.inf
    nw = n - n % w
    blocks = x[:nw].reshape((nw // w, w))
    for r in range(nw // w):
        for t in range(w):
            lanes[t] = np.fmax(lanes[t], blocks[r, t])
    for j in range(nw, n):
        lanes[j - nw] = np.fmax(lanes[j - nw], x[j])
    return _fold_max(lanes)


@jit_reduce
def _row_sum(y, n):
    """sum of y[j], j < n, accumulated in float64: a plain loop that LLVM vectorises into
    per-lane partial sums (reassociation is allowed in this helper only; the order is fixed per
    build). 10x faster than summing in explicit lanes on 197-wide rows."""
    s = 0.0
    for j in range(n):
        s += y[j]
    return s


@jit
def _exp_sum(src, y, m, n):
    """y[j] = exp(src[j] - m) for j < n; returns their sum (_row_sum). src and y
    are distinct arrays (in place, LLVM's overlap check fails and the loop runs scalar)."""
    if src.itemsize == 4:
        for j in range(n):
            y[j] = _exp32(src[j] - m)
    else:
        for j in range(n):
            y[j] = math.exp(src[j] - m)
    return _row_sum(y, n)


@jit
def _exp_sum_in_place(y, m, n):
    """_exp_sum(y, y, ...) written for one array (a loop LLVM vectorises)."""
    if y.itemsize == 4:
        for j in range(n):
            y[j] = _exp32(y[j] - m)
    else:
        for j in range(n):
            y[j] = math.exp(y[j] - m)
    return _row_sum(y, n)


@jit
def _softmax_row(x, y, keep, has_mask, lanes):
    """y = softmax of x over the entries keep[j] != 0 (every entry without a mask); zeros if none.

    x, y (N,) one dtype; keep (N,) uint8, contiguous (indexed by the loop counter alone, so the
    loads vectorise). Masked entries become -inf in y first: exp then gives them 0 with no mask.
    """
    n = x.shape[0]
    # two paths, not one "src = y if has_mask else x": the merged array type loses contiguity
    # and every loop on it runs 4x slower
    if has_mask:
        for j in range(n):
            y[j] = x[j] if keep[j] != 0 else -np.inf
        m = _row_max(y, n, lanes)
        if m == -np.inf:
            y[:] = 0.0
            return
        total = _exp_sum_in_place(y, m, n)
    else:
        m = _row_max(x, n, lanes)
        total = _exp_sum(x, y, m, n)
    inv = 1.0 / total
    for j in range(n):
        y[j] *= inv


@jit_parallel
def masked_softmax_forward(x, mask, mask_row_offset, mask_col_stride, has_mask, out, lane_scratch,
                           mask_scratch):
    """Softmax of each row of x (R, N) over the entries its mask keeps; out (R, N) contiguous.

    mask: flat uint8 (1 = keep) read at mask_row_offset[r] + j * mask_col_stride, if has_mask.
    A row with nothing kept is all zeros. Scratch per thread t: lane_scratch[t] (LANES,) x's dtype,
    mask_scratch[t] (N,) uint8 (a contiguous copy of a row's mask when mask_col_stride != 1).
    """
    rows, n = x.shape
    for r in prange(rows):
        tid = numba.get_thread_id()
        lanes = lane_scratch[tid]
        if not has_mask:
            _softmax_row(x[r], out[r], mask, False, lanes)
            continue
        moff = mask_row_offset[r]
        if mask_col_stride == 1:
            _softmax_row(x[r], out[r], mask[moff:moff + n], True, lanes)
        elif mask_col_stride == 0:
            if mask[moff] != 0:
                _softmax_row(x[r], out[r], mask, False, lanes)
            else:
                out[r, :] = 0.0
        else:
            row_mask = mask_scratch[tid]
            for j in range(n):
                row_mask[j] = mask[moff + j * mask_col_stride]
            _softmax_row(x[r], out[r], row_mask, True, lanes)


@jit_parallel
def masked_softmax_backward(y, grad_y, grad_x, product_scratch):
    """grad_x = y * (grad_y - sum(grad_y * y)) per row; y, grad_y, grad_x (R, N) contiguous.

    Masked entries have y = 0, so their gradient is 0 with no mask needed. Scratch per thread t:
    product_scratch[t] (N,), y's dtype.
    """
    rows, n = y.shape
    for r in prange(rows):
        tid = numba.get_thread_id()
        prod = product_scratch[tid]
        for j in range(n):
            prod[j] = grad_y[r, j] * y[r, j]
        s = _row_sum(prod, n)
        for j in range(n):
            grad_x[r, j] = y[r, j] * (grad_y[r, j] - s)
