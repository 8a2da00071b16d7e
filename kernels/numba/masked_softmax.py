"""Masked softmax on the CPU, forward and backward: one row per work item, the mask read through
per-row offsets and a column stride (a broadcast mask is never expanded).

float32 uses the vectorisable exp of attention.py; float64 the libm exp.
"""
import math

import numba
import numpy as np
from numba import prange

from dlkern.kernels.numba._jit import jit, jit_parallel
from dlkern.kernels.numba.attention import _exp32

LANES = 16


@jit
def _row_max(x, n, lanes):
    """max of x[j], j < n (NaN skipped; -inf if nothing else).

    Sixteen running maxima, one per lane, updated by masked stores: vectorised (the select form
    "lanes[t] = v if v > lanes[t] else lanes[t]" stays scalar).
    """
    lanes[:] = -np.inf
    n16 = n - n % LANES
    for j0 in range(0, n16, LANES):
        for t in range(LANES):
            v = x[j0 + t]
            if v > lanes[t]:
                lanes[t] = v
    for j in range(n16, n):
        v = x[j]
        if v > lanes[0]:
            lanes[0] = v
    m = lanes[0]
    for t in range(1, LANES):
        if lanes[t] > m:
            m = lanes[t]
    return m


@jit
def _lane_sum(y, n, lanes):
    lanes[:] = 0.0
    n16 = n - n % LANES
    for j0 in range(0, n16, LANES):
        for t in range(LANES):
            lanes[t] += y[j0 + t]
    s = 0.0
    for j in range(n16, n):
        s += y[j]
    for t in range(LANES):
        s += lanes[t]
    return s


@jit
def _softmax_row(x, y, keep, has_mask, lanes):
    """y = softmax of x over the entries keep[j] != 0 (every entry without a mask); zeros if none.

    x, y (N,) one dtype; keep (N,) uint8, contiguous (indexed by the loop counter alone, so the
    loads vectorise). Masked entries become -inf in y first: exp then gives them 0 with no mask.
    """
    n = x.shape[0]
    if has_mask:
        for j in range(n):
            y[j] = x[j] if keep[j] != 0 else -np.inf
        m = _row_max(y, n, lanes)
        if m == -np.inf:
            y[:] = 0.0
            return
    else:
        y[:] = x
        m = _row_max(y, n, lanes)
    if x.itemsize == 4:
        for j in range(n):
            y[j] = _exp32(y[j] - m)
    else:
        for j in range(n):
            y[j] = math.exp(y[j] - m)
    inv = 1.0 / _lane_sum(y, n, lanes)
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
def masked_softmax_backward(y, grad_y, grad_x, lane_scratch, product_scratch):
    """grad_x = y * (grad_y - sum(grad_y * y)) per row; y, grad_y, grad_x (R, N) contiguous.

    Masked entries have y = 0, so their gradient is 0 with no mask needed. Scratch per thread t:
    lane_scratch[t] (LANES,), product_scratch[t] (N,), y's dtype.
    """
    rows, n = y.shape
    for r in prange(rows):
        tid = numba.get_thread_id()
        prod = product_scratch[tid]
        for j in range(n):
            prod[j] = grad_y[r, j] * y[r, j]
        s = _lane_sum(prod, n, lane_scratch[tid])
        for j in range(n):
            grad_x[r, j] = y[r, j] * (grad_y[r, j] - s)
