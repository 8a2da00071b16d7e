"""pytest-benchmark suite of the attention family (see family.py); rows in dlkern/suites/attention.py.

    .venv/bin/python -m pytest bench/bench_attention.py --benchmark-only
"""
from family import benchmark_test

test_attention = benchmark_test("attention")
