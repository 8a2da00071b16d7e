"""pytest-benchmark suite of the depthwise family (see family.py); rows in dlkern/suites/depthwise.py.

    .venv/bin/python -m pytest bench/bench_depthwise.py --benchmark-only
"""
from family import benchmark_test

test_depthwise = benchmark_test("depthwise")
