"""dlkern.kernels: the raw kernels (NumPy arrays in, NumPy arrays out), no torch in them.

numba/   CPU kernels, one file per op family
cython/  ahead-of-time helpers (row-major strided BLAS entry point)
triton/  GPU kernels, one file per op family, the same names as numba/
"""
