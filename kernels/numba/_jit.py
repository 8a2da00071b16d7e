"""Compile options and the BLAS binding shared by every Numba kernel (one place for both).

* ``jit`` / ``jit_parallel``: the decorators every kernel uses. Compiled code is cached on disk
  (``cache=True``) so a new process loads it instead of compiling again. fastmath is off: results
  must match torch's float64 reference, and NaN/inf must propagate as they do in torch.
* The threading layer is ``threadsafe`` (TBB or OpenMP): Numba's default fallback, workqueue,
  aborts the process when two Python threads run parallel kernels at once.
* ``gemm``: the row-major strided GEMM from the Cython extension (scipy's BLAS, no GIL), typed for
  nopython callers; ``blas_set_local_threads(1)``: makes the BLAS calls of the calling thread run
  on that thread alone, so BLAS inside a ``prange`` body never starts a thread team of its own (no
  nested parallelism; the kernels parallelise over their own work items).
  Both are external functions called by symbol name, with the symbol's address registered with
  LLVM at import: code that calls them can be cached on disk (a ctypes pointer could not).
"""
import ctypes
import glob
import os

import numba
from llvmlite import binding as llvm
from numba import types

from dlkern.kernels.cython import gemm as _gemm_module

if numba.config.THREADING_LAYER in ("default", "workqueue"):
    numba.config.THREADING_LAYER = "threadsafe"

JIT_OPTIONS = dict(nogil=True, cache=True, fastmath=False, error_model="numpy", boundscheck=False)


def jit(fn):
    return numba.njit(**JIT_OPTIONS)(fn)


def jit_parallel(fn):
    return numba.njit(parallel=True, **JIT_OPTIONS)(fn)


llvm.add_symbol("dlkern_gemm_rowmajor", _gemm_module.gemm_rowmajor_address())
gemm = types.ExternalFunction(
    "dlkern_gemm_rowmajor",
    types.void(
        types.intc, types.intc, types.intc, types.intc, types.intc, types.intc,
        types.float64, types.uintp, types.intc, types.uintp, types.intc,
        types.float64, types.uintp, types.intc,
    ),
)


def _openblas_thread_setter_address():
    """Address of ``openblas_set_num_threads_local`` in the OpenBLAS that scipy's cython_blas calls.

    None when that OpenBLAS lacks it: then BLAS calls from worker threads may start OpenBLAS's own
    threads (slower, still correct).
    """
    import scipy

    base = os.path.dirname(os.path.dirname(scipy.__file__))
    for path in sorted(glob.glob(os.path.join(base, "scipy.libs", "*openblas*.so*"))):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        return ctypes.cast(fn, ctypes.c_void_p).value
    return None


_setter_address = _openblas_thread_setter_address()
HAVE_LOCAL_BLAS_THREADS = _setter_address is not None
if not HAVE_LOCAL_BLAS_THREADS:
    _setter_address = _gemm_module.set_threads_noop_address()
llvm.add_symbol("dlkern_blas_set_local_threads", _setter_address)
blas_set_local_threads = types.ExternalFunction(
    "dlkern_blas_set_local_threads", types.intc(types.intc)
)
