"""The BLAS binding of the Numba kernels: correct products, and the calling thread's BLAS thread
counts handed back after a kernel (the calling Python thread runs work items too)."""
import ctypes
import glob
import os

import numpy as np
import pytest
import scipy
import torch

import dlkern.functional as DF
from dlkern.kernels.cython import gemm as gemm_module
from dlkern.kernels.numba import _jit


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_rowmajor_gemm_matches_numpy(dtype, trans_a, trans_b):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 5) if trans_a else (5, 7)).astype(dtype)
    b = rng.standard_normal((3, 7) if trans_b else (7, 3)).astype(dtype)
    c = rng.standard_normal((5, 3)).astype(dtype)
    expected = 0.5 * (a.T if trans_a else a) @ (b.T if trans_b else b) + 2.0 * c
    gemm_module.gemm(a, b, c, alpha=0.5, beta=2.0, trans_a=trans_a, trans_b=trans_b)
    np.testing.assert_allclose(c, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


def _run_kernels():
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    w = torch.randn(8, 8, 3, 3, requires_grad=True)
    DF.conv2d(x, w, padding=1).sum().backward()
    q = torch.randn(2, 2, 70, 16, requires_grad=True)
    DF.scaled_dot_product_attention(q, q, q).sum().backward()


@pytest.mark.skipif(_jit.BLAS != "mkl", reason="torch's library carries no MKL here")
def test_mkl_threads_of_the_calling_thread_are_restored():
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    before = lib.MKL_Get_Max_Threads()
    _run_kernels()
    assert lib.MKL_Get_Max_Threads() == before


def test_openblas_threads_of_the_calling_thread_are_restored():
    base = os.path.dirname(os.path.dirname(scipy.__file__))
    paths = glob.glob(os.path.join(base, "scipy.libs", "*openblas*.so*"))
    if not paths:
        pytest.skip("scipy's OpenBLAS library was not found")
    get = getattr(ctypes.CDLL(paths[0]), "scipy_openblas_get_num_threads", None)
    if get is None:
        pytest.skip("this OpenBLAS has no scipy_openblas_get_num_threads")
    before = get()
    _run_kernels()
    assert get() == before


def _packed_variants():
    best = gemm_module.use_packed_variant(-1)
    return list(range(best + 1))


@pytest.mark.parametrize("variant", _packed_variants())
def test_packed_gemm_every_shape_class(variant):
    """The packed product (packed_gemm.c) in each instruction-set variant this CPU runs: every
    row-tile size and panel grouping (1-3 rows take several panels per tile), partial last panels,
    k of 0, below, at and across the k-block (256), A read in place and A packed in blocks (more
    than 4096 elements; up to 32 rows on the stack, 70 on the heap), strided A and C, overwrite
    and accumulate; against float64 products, and C's columns past n untouched."""
    from dlkern.kernels.numba import packing

    rng = np.random.default_rng(1)
    try:
        assert gemm_module.use_packed_variant(variant) == variant
        for m in (1, 2, 3, 4, 6, 7, 13, 14, 15, 29, 70):
            for n, k in ((1, 3), (15, 1), (16, 257), (17, 0), (33, 64), (64, 300), (100, 600)):
                w = rng.standard_normal((n, k)).astype(np.float32)
                a_wide = rng.standard_normal((m, k + 3)).astype(np.float32)
                a = a_wide[:, 1:k + 1]  # lda = k + 3
                for accumulate in (False, True):
                    c = rng.standard_normal((m, n + 5)).astype(np.float32)
                    before = c.copy()
                    gemm_module.sgemm_packed(a, packing.pack_transposed(w), c, n, accumulate)
                    want = a.astype(np.float64) @ w.T.astype(np.float64)
                    if accumulate:
                        want += before[:, :n]
                    tol = 1e-6 * (k + 1) * (1 + np.abs(a).max() * np.abs(w).max() if k else 1)
                    np.testing.assert_allclose(c[:, :n], want, rtol=0, atol=tol,
                                               err_msg=f"m={m} n={n} k={k} acc={accumulate}")
                    assert np.array_equal(c[:, n:], before[:, n:])
    finally:
        gemm_module.use_packed_variant(-1)


def test_packing_layouts():
    """pack_transposed(w) and pack_plain(w.T) give the documented panels, zero-padded."""
    from dlkern.kernels.numba import packing

    rng = np.random.default_rng(2)
    for n, k in ((1, 1), (16, 5), (37, 19), (48, 256)):
        w = rng.standard_normal((n, k)).astype(np.float32)
        panels = -(-n // 16)
        want = np.zeros((panels * 16, k), np.float32)
        want[:n] = w
        want = want.reshape(panels, 16, k).transpose(0, 2, 1)
        assert np.array_equal(packing.pack_transposed(w), want)
        assert np.array_equal(packing.pack_transposed(np.asfortranarray(w)), want)
        assert np.array_equal(packing.pack_plain(np.ascontiguousarray(w.T)), want)
