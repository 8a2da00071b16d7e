"""dlkern.kernels: the raw kernels, below dlkern's torch layer (no autograd, no validation, no
dispatch).

numba/   CPU kernels, one file per op family; NumPy arrays in and out, no torch in them
cython/  ahead-of-time helpers (row-major strided BLAS entry point)
triton/  GPU kernels, one file per op family, the same names as numba/; their launchers take and
         allocate torch tensors (CUDA, or CPU tensors under Triton's interpreter)
"""
