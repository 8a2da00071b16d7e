"""Packing a float32 matrix into the panels of ``_jit.packed_gemm`` (the B operand of
``C (+)= A @ B``): panel p holds columns [16p, 16p + 16) of B, row after row,

    out[p, kk, j] = B[kk, 16p + j]        (zero past B's last column)

so a step of the product's k loop reads 16 contiguous floats. A weight is packed once per layer
call and read at every time step (the C loops of packed_gemm.c, no GIL: 0.4-1 ms for a 4 MB
weight here, a few time steps' worth of the product it speeds up).

* ``pack_transposed(w, out=None)``: B = w^T for w (N, K) (torch's Linear weight: C = A @ w^T);
* ``pack_plain(b, out=None)``: B = b for b (K, N);
* ``panels(n, k)``: the array they fill, C-contiguous float32 of shape (ceil(n / 16), k, 16);
* ``scratch(key, count, n, k)``: ``count`` such arrays stacked, kept per thread and key between
  calls (a fresh 4 MB array costs ~1000 page faults, more than packing into it); ``buffer(key,
  shape)`` any float32 shape kept the same way.
"""
import threading

import numpy as np

from ._jit import PACKED_NR, _gemm_module

_kept = threading.local()


def panels(n, k):
    return np.empty((-(-n // PACKED_NR), k, PACKED_NR), dtype=np.float32)


def buffer(key, shape):
    """A float32 array of this shape, kept per thread and key between calls."""
    kept = getattr(_kept, "arrays", None)
    if kept is None:
        kept = _kept.arrays = {}
    out = kept.get(key)
    if out is None or out.shape != shape:
        out = kept[key] = np.empty(shape, dtype=np.float32)
    return out


def scratch(key, count, n, k):
    return buffer(key, (count, -(-n // PACKED_NR), k, PACKED_NR))


def _pack(pack, src, n, k, out):
    out = panels(n, k) if out is None else out
    if src.size == 0:
        out[...] = 0.0
        return out
    return pack(np.ascontiguousarray(src, dtype=np.float32), out)


def pack_transposed(w, out=None):
    return _pack(_gemm_module.pack_transposed, w, w.shape[0], w.shape[1], out)


def pack_plain(b, out=None):
    return _pack(_gemm_module.pack_plain, b, b.shape[1], b.shape[0], out)
