# cython: language_level=3, boundscheck=False, wraparound=False
"""Row-major, strided GEMM entry point for the Numba kernels, compiled ahead of time.

Numba's own ``np.dot`` needs contiguous operands, cannot accumulate into its output (no beta) and
cannot write into a strided slice of a larger array.  The convolution kernels need all three: an
output tile is a column block of ``out[n, g]`` (leading dimension = output pixels), and the weight
gradient accumulates over images and tiles into one buffer.  This module wraps the Fortran BLAS
``sgemm``/``dgemm`` from ``scipy.linalg.cython_blas`` behind a C function with a row-major interface
and integer addresses, callable from nopython code through ctypes with no GIL and no Python objects.

The C function is

    gemm_rowmajor(is_double, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

computing ``C[m, n] = alpha * op(A) @ op(B) + beta * C`` on row-major matrices whose rows are
``lda``/``ldb``/``ldc`` elements apart; ``a``, ``b``, ``c`` are addresses (size_t).
"""
from libc.stddef cimport size_t
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef void gemm_rowmajor(int is_double, int trans_a, int trans_b, int m, int n, int k,
                        double alpha, size_t a, int lda, size_t b, int ldb,
                        double beta, size_t c, int ldc) noexcept nogil:
    # Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands and
    # keep each one's transpose flag (a row-major matrix read column-major is its transpose).
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef float falpha = <float>alpha
    cdef float fbeta = <float>beta
    if m <= 0 or n <= 0:
        return
    if is_double:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda,
              &beta, <double*>c, &ldc)
    else:
        sgemm(&tb, &ta, &n, &m, &k, &falpha, <float*>b, &ldb, <float*>a, &lda,
              &fbeta, <float*>c, &ldc)


cdef int set_threads_noop(int n) noexcept nogil:
    # Stand-in for openblas_set_num_threads_local when scipy's OpenBLAS does not export it.
    return 0


def set_threads_noop_address():
    """The address of a C function ``int f(int)`` that does nothing (see dlkern.kernels.numba._jit)."""
    return <size_t>&set_threads_noop


def gemm_rowmajor_address():
    """The address of the C function ``gemm_rowmajor``, for ``ctypes.CFUNCTYPE``."""
    return <size_t>&gemm_rowmajor


def gemm(a, b, c, double alpha=1.0, double beta=0.0, bint trans_a=False, bint trans_b=False):
    """Python-level check of the C entry point on NumPy arrays (used by the tests).

    ``a``, ``b``, ``c`` are 2-d arrays of one float dtype whose rows are contiguous; ``c`` is
    updated in place: ``c = alpha * op(a) @ op(b) + beta * c``.
    """
    import numpy as np
    if a.dtype != b.dtype or a.dtype != c.dtype or a.dtype not in (np.float32, np.float64):
        raise TypeError("gemm: a, b and c must share one dtype, float32 or float64")
    for name, arr in (("a", a), ("b", b), ("c", c)):
        if arr.ndim != 2 or arr.strides[1] != arr.itemsize:
            raise ValueError(f"gemm: {name} must be 2-d with contiguous rows")
    cdef int m = a.shape[1] if trans_a else a.shape[0]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int kb = b.shape[1] if trans_b else b.shape[0]
    cdef int n = b.shape[0] if trans_b else b.shape[1]
    if kb != k or c.shape[0] != m or c.shape[1] != n:
        raise ValueError(f"gemm: shapes {a.shape}, {b.shape} -> {c.shape} do not agree")
    cdef int itemsize = a.itemsize
    gemm_rowmajor(a.dtype == np.float64, trans_a, trans_b, m, n, k, alpha,
                  <size_t>a.ctypes.data, max(1, a.strides[0] // itemsize),
                  <size_t>b.ctypes.data, max(1, b.strides[0] // itemsize),
                  beta, <size_t>c.ctypes.data, max(1, c.strides[0] // itemsize))
    return c
