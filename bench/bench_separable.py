"""pytest-benchmark suite of the separable family (see family.py); rows in dlkern/suites/separable.py.

    .venv/bin/python -m pytest bench/bench_separable.py --benchmark-only
"""
from family import benchmark_test

test_separable = benchmark_test("separable")
