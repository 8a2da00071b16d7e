# cython: language_level=3, boundscheck=False, wraparound=False
"""Row-major, strided GEMM entry point for the Numba kernels, compiled ahead of time.

Numba's own ``np.dot`` needs contiguous operands, cannot accumulate into its output (no beta) and
cannot write into a strided slice of a larger array. The kernels need all three: an output tile
is a column block of ``out[n, g]`` (leading dimension = output pixels), and weight gradients
accumulate over images and tiles into one buffer. This module wraps a Fortran BLAS
``sgemm``/``dgemm`` behind a C function with a row-major interface taking integer addresses,
callable from nopython code with no GIL and no Python objects:

    gemm_rowmajor(is_double, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

computes ``C[m, n] = alpha * op(A) @ op(B) + beta * C`` on row-major matrices whose rows are
``lda``/``ldb``/``ldc`` elements apart.

Which BLAS: scipy's (``scipy.linalg.cython_blas``, OpenBLAS) unless ``use_blas`` installs other
Fortran ``sgemm_``/``dgemm_`` entry points (dlkern.kernels.numba._jit installs the MKL that torch's
CPU library carries when it exports them: single-threaded, it runs the kernels' small products up
to ~2.5x faster than OpenBLAS here). ``set_local_threads(n)`` sets the calling thread's BLAS
thread count in every BLAS in use (1 inside parallel kernels; 0 restores the global setting).

The module also carries ``packed_gemm.c`` (C, compiled with it): a single-precision GEMM against
a B packed into 16-column panels, for the recurrent layers' small per-step products
(``sgemm_packed_address``, ``packed_nr``; ``packed_variant`` / ``use_packed_variant`` name and
force its instruction-set variant for the tests).
"""
from libc.stddef cimport size_t
from libc.stdint cimport uintptr_t
from scipy.linalg.cython_blas cimport sgemm, dgemm

cdef extern from "packed_gemm.h" nogil:
    int PACKED_NR
    void dlkern_sgemm_packed(int m, int n, int k, uintptr_t a, int lda, uintptr_t bp,
                             uintptr_t c, int ldc, int accumulate)
    int dlkern_packed_variant()
    void dlkern_pack_transposed(int n, int k, uintptr_t w, int ldw, uintptr_t out)
    void dlkern_pack_plain(int k, int n, uintptr_t b, int ldb, uintptr_t out)
    void dlkern_packed_use_variant(int variant)

ctypedef void (*sgemm_t)(char*, char*, int*, int*, int*, float*, float*, int*, float*, int*,
                         float*, float*, int*) noexcept nogil
ctypedef void (*dgemm_t)(char*, char*, int*, int*, int*, double*, double*, int*, double*, int*,
                         double*, double*, int*) noexcept nogil
ctypedef int (*set_threads_t)(int) noexcept nogil

cdef sgemm_t _sgemm = sgemm
cdef dgemm_t _dgemm = dgemm
cdef set_threads_t _set_threads_a = NULL
cdef set_threads_t _set_threads_b = NULL


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
        _dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda,
               &beta, <double*>c, &ldc)
    else:
        _sgemm(&tb, &ta, &n, &m, &k, &falpha, <float*>b, &ldb, <float*>a, &lda,
               &fbeta, <float*>c, &ldc)


cdef int set_local_threads(int n) noexcept nogil:
    if _set_threads_a != NULL:
        _set_threads_a(n)
    if _set_threads_b != NULL:
        _set_threads_b(n)
    return 0


def use_blas(size_t sgemm_address, size_t dgemm_address):
    """Route gemm_rowmajor to these Fortran sgemm_/dgemm_ entry points (0, 0: scipy's again)."""
    global _sgemm, _dgemm
    if sgemm_address == 0 or dgemm_address == 0:
        _sgemm, _dgemm = sgemm, dgemm
    else:
        _sgemm = <sgemm_t>sgemm_address
        _dgemm = <dgemm_t>dgemm_address


def use_thread_setters(size_t first, size_t second):
    """``int f(int)`` functions that set the calling thread's BLAS thread count (0 = none)."""
    global _set_threads_a, _set_threads_b
    _set_threads_a = <set_threads_t>first if first else NULL
    _set_threads_b = <set_threads_t>second if second else NULL


def gemm_rowmajor_address():
    """The address of the C function ``gemm_rowmajor``, for registration with LLVM."""
    return <size_t>&gemm_rowmajor


def set_local_threads_address():
    """The address of the C function ``set_local_threads``."""
    return <size_t>&set_local_threads


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


def sgemm_packed_address():
    """The address of the C function ``dlkern_sgemm_packed`` (packed_gemm.c)."""
    return <size_t>&dlkern_sgemm_packed


def packed_nr():
    """Columns per panel of a packed B."""
    return PACKED_NR


def packed_variant():
    """The packed GEMM's instruction-set variant in use: 2 AVX-512, 1 AVX2 + FMA, 0 portable."""
    return dlkern_packed_variant()


def use_packed_variant(int variant):
    """Use this variant (clamped to what the CPU runs; -1: the best one)."""
    dlkern_packed_use_variant(variant)
    return dlkern_packed_variant()


def sgemm_packed(a, bp, c, int n, bint accumulate=False):
    """Python-level check of dlkern_sgemm_packed (used by the tests): ``c (+)= a @ B`` with a
    (m, k) and c (m, >= n) float32 with contiguous rows, bp the packed B (panels of packed_nr()
    columns, k rows each, as a contiguous float32 array)."""
    import numpy as np
    for name, arr in (("a", a), ("bp", bp), ("c", c)):
        if arr.dtype != np.float32:
            raise TypeError(f"sgemm_packed: {name} must be float32")
    if a.ndim != 2 or c.ndim != 2 or a.strides[1] != 4 or c.strides[1] != 4:
        raise ValueError("sgemm_packed: a and c must be 2-d with contiguous rows")
    if not bp.flags.c_contiguous:
        raise ValueError("sgemm_packed: bp must be contiguous")
    cdef int m = a.shape[0]
    cdef int k = a.shape[1]
    cdef int panels = (n + PACKED_NR - 1) // PACKED_NR
    if c.shape[0] != m or c.shape[1] < n or bp.size < panels * k * PACKED_NR:
        raise ValueError("sgemm_packed: shapes do not agree")
    dlkern_sgemm_packed(m, n, k, <uintptr_t>a.ctypes.data, max(1, a.strides[0] // 4),
                        <uintptr_t>bp.ctypes.data, <uintptr_t>c.ctypes.data,
                        max(1, c.strides[0] // 4), accumulate)
    return c


cdef object _pack(src, out, bint transposed):
    import numpy as np
    name = "pack_transposed" if transposed else "pack_plain"
    if src.dtype != np.float32 or out.dtype != np.float32 or src.ndim != 2 or src.strides[1] != 4:
        raise ValueError(f"{name}: the source must be 2-d float32 with contiguous rows")
    cdef int rows = src.shape[0]
    cdef int cols = src.shape[1]
    cdef int n = rows if transposed else cols
    cdef int k = cols if transposed else rows
    if not out.flags.c_contiguous or out.shape != ((n + PACKED_NR - 1) // PACKED_NR, k, PACKED_NR):
        raise ValueError(f"{name}: out has the wrong shape")
    cdef uintptr_t s = <uintptr_t>src.ctypes.data
    cdef uintptr_t d = <uintptr_t>out.ctypes.data
    cdef int ld = max(1, src.strides[0] // 4)
    with nogil:
        if transposed:
            dlkern_pack_transposed(n, k, s, ld, d)
        else:
            dlkern_pack_plain(k, n, s, ld, d)
    return out


def pack_transposed(w, out):
    """out (ceil(n / 16), k, 16) float32 = w (n, k)^T packed (packed_gemm.c), no GIL held."""
    return _pack(w, out, True)


def pack_plain(b, out):
    """out (ceil(n / 16), k, 16) float32 = b (k, n) packed (packed_gemm.c), no GIL held."""
    return _pack(b, out, False)
