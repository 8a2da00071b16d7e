"""pytest-benchmark suite of the conv transpose family (see family.py); rows in dlkern/suites/conv_transpose.py.

    .venv/bin/python -m pytest bench/bench_conv_transpose.py --benchmark-only
"""
from family import benchmark_test

test_conv_transpose = benchmark_test("conv_transpose")
