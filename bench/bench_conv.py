"""pytest-benchmark suite of the conv family (see family.py); rows in dlkern/suites/conv.py.

    .venv/bin/python -m pytest bench/bench_conv.py --benchmark-only
"""
from family import benchmark_test

test_conv = benchmark_test("conv")
