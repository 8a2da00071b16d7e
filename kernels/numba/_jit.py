"""Compile options and the BLAS binding shared by every Numba kernel (one place for both).

* ``jit`` / ``jit_parallel``: the decorators every kernel uses. Compiled code is cached on disk
  (``cache=True``) so a new process loads it instead of compiling again. fastmath is off: results
  must match torch's float64 reference, and NaN/inf must propagate as they do in torch.
* The disk cache is safe for processes that compile the same kernel at once (the test suite's
  workers, DDP ranks on a cold cache): see ``_LockedCacheFile``; and it is stamped with the
  source of every kernel module, so a change to one module recompiles the kernels of the others
  that call into it (``_cached``).
* The threading layer is ``threadsafe`` (TBB or OpenMP): Numba's default fallback, workqueue,
  aborts the process when two Python threads run parallel kernels at once.
* ``gemm``: the row-major strided GEMM of the Cython extension (no GIL), typed for nopython
  callers. It runs on MKL when torch's CPU library carries and exports it (single-threaded, MKL
  multiplies the kernels' small products up to ~2.5x faster than OpenBLAS here), else on scipy's
  OpenBLAS. The choice is made at import, behind one symbol: cached code never bakes it in.
* ``packed_gemm``: float32 only, against a B packed once into 16-column panels (``packing.py``),
  for the small per-step products of the recurrent layers (1-16 rows), where it runs 1.5-2.5x
  faster than BLAS's sgemm.
* ``blas_set_local_threads(1)`` at the start of a ``prange`` body keeps BLAS on the calling
  thread (no nested parallelism: the kernels parallelise over their own work items);
  ``blas_set_local_threads(0)`` at its end hands the thread back to the global setting (the
  calling Python thread runs items too, and torch's and scipy's own calls on it must keep their
  threads afterwards).
  Both are external functions called by symbol name, with the symbol's address registered with
  LLVM at import: code that calls them can be cached on disk (a ctypes pointer could not).
"""
import contextlib
import ctypes
import glob
import hashlib
import importlib.util
import itertools
import os

import numba
from llvmlite import binding as llvm
from numba import types
from numba.core.caching import IndexDataCacheFile

try:
    import fcntl
except ImportError:  # not POSIX: no inter-process lock (Numba's own behaviour)
    fcntl = None

from dlkern.kernels.cython import gemm as _gemm_module

if numba.config.THREADING_LAYER in ("default", "workqueue"):
    numba.config.THREADING_LAYER = "threadsafe"

JIT_OPTIONS = dict(nogil=True, cache=True, fastmath=False, error_model="numpy", boundscheck=False)


@contextlib.contextmanager
def _file_lock(path):
    if fcntl is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _LockedCacheFile(IndexDataCacheFile):
    """Numba's cache file (one index per function, mapping signature -> data file), saved safely by
    processes that compile the same function at once.

    Numba's own ``save`` reads the index, picks the first free data-file number, writes the index,
    then the data, with no lock: two processes compiling two signatures of one function both pick
    number 1, and the index can end up naming a data file that holds the other signature's code,
    which a later process would load and call with the wrong argument types. Here a save holds an
    exclusive lock on ``<index>.lock`` while it re-reads the index, writes the data file, then
    the index (both by atomic rename), so an index entry only ever names finished data of its own
    signature. Loads take no lock (they only read files that are replaced atomically).
    """

    def save(self, key, data):
        with _file_lock(self._index_path + ".lock"):
            overloads = self._load_index()
            name = overloads.get(key)
            if name is None:
                taken = set(overloads.values())
                name = next(n for n in map(self._data_name, itertools.count(1)) if n not in taken)
            self._save_data(name, data)
            overloads[key] = name
            self._save_index(overloads)


def _sources_digest(folder=None):
    """A hash of every kernel module's source (the .py files of this folder, or of ``folder``)."""
    digest = hashlib.sha256()
    folder = folder or os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), "rb") as handle:
                digest.update(name.encode() + b"\0" + handle.read())
    return digest.hexdigest()


_SOURCES = _sources_digest()


def _cached(dispatcher):
    """The dispatcher with the locked cache file, and its cache stamped with every kernel
    module's source, not only its own file's (Numba's stamp): a kernel calling a function of
    another module inlines that function's code, and a cache stamped with the caller's file
    alone would keep running the old callee after the callee's module changed."""
    cache = getattr(dispatcher, "_cache", None)
    cache_file = getattr(cache, "_cache_file", None)
    if type(cache_file) is IndexDataCacheFile:
        cache_file.__class__ = _LockedCacheFile
        cache_file._source_stamp = (cache_file._source_stamp, _SOURCES)
    return dispatcher


def jit(fn):
    return _cached(numba.njit(**JIT_OPTIONS)(fn))


def jit_parallel(fn):
    return _cached(numba.njit(parallel=True, **JIT_OPTIONS)(fn))


# FMA contraction (a*b + c in one rounding, as torch's vectorised kernels do), for kernels whose
# multiply-adds are the bottleneck; and reassociation on top for small reduction helpers only, so
# a sum vectorises into per-lane partial sums reduced in a fixed order (deterministic per build).
JIT_FMA_OPTIONS = dict(JIT_OPTIONS, fastmath={"contract"})
JIT_REDUCE_OPTIONS = dict(JIT_OPTIONS, fastmath={"contract", "reassoc"})


def jit_fma(fn):
    return _cached(numba.njit(**JIT_FMA_OPTIONS)(fn))


def jit_parallel_fma(fn):
    return _cached(numba.njit(parallel=True, **JIT_FMA_OPTIONS)(fn))


def jit_reduce(fn):
    return _cached(numba.njit(**JIT_REDUCE_OPTIONS)(fn))


def _symbol(path, name):
    try:
        return ctypes.cast(getattr(ctypes.CDLL(path), name), ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


def _openblas_thread_setter():
    """``openblas_set_num_threads_local`` of the OpenBLAS behind scipy's cython_blas, or None."""
    spec = importlib.util.find_spec("scipy")
    base = os.path.dirname(spec.submodule_search_locations[0])
    for path in sorted(glob.glob(os.path.join(base, "scipy.libs", "*openblas*.so*"))):
        address = _symbol(path, "openblas_set_num_threads_local")
        if address:
            return address
    return None


def _torch_mkl():
    """(sgemm_, dgemm_, MKL_Set_Num_Threads_Local) of the MKL inside torch's CPU library, or None.

    Found by path without importing torch (kernels/ stays torch-free). The upper-case
    MKL_Set_Num_Threads_Local takes its argument by value (the lower-case one is Fortran's).
    """
    if os.environ.get("DLKERN_BLAS", "").lower() == "openblas":
        return None
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "lib", "libtorch_cpu.so")
    if not os.path.exists(path):
        return None
    found = tuple(_symbol(path, n) for n in ("sgemm_", "dgemm_", "MKL_Set_Num_Threads_Local"))
    return found if all(found) else None


_mkl = _torch_mkl()
BLAS = "mkl" if _mkl else "openblas"
if _mkl:
    _gemm_module.use_blas(_mkl[0], _mkl[1])
_gemm_module.use_thread_setters(_openblas_thread_setter() or 0, _mkl[2] if _mkl else 0)

llvm.add_symbol("dlkern_gemm_rowmajor", _gemm_module.gemm_rowmajor_address())
gemm = types.ExternalFunction(
    "dlkern_gemm_rowmajor",
    types.void(
        types.intc, types.intc, types.intc, types.intc, types.intc, types.intc,
        types.float64, types.uintp, types.intc, types.uintp, types.intc,
        types.float64, types.uintp, types.intc,
    ),
)
llvm.add_symbol("dlkern_sgemm_packed", _gemm_module.sgemm_packed_address())
packed_gemm = types.ExternalFunction(
    "dlkern_sgemm_packed",
    types.void(
        types.intc, types.intc, types.intc, types.uintp, types.intc, types.uintp, types.uintp,
        types.intc, types.intc,
    ),
)
"""``packed_gemm(m, n, k, a, lda, bp, c, ldc, accumulate)``: float32 C (+)= A @ B with B packed by
``packing.pack_*`` (the Cython extension's packed_gemm.c)."""
PACKED_NR = _gemm_module.packed_nr()
llvm.add_symbol("dlkern_blas_set_local_threads", _gemm_module.set_local_threads_address())
blas_set_local_threads = types.ExternalFunction(
    "dlkern_blas_set_local_threads", types.intc(types.intc)
)
