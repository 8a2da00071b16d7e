import dlkern  # noqa: F401  (pins torch and Numba thread counts)
