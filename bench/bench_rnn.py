"""pytest-benchmark suite of the rnn family (see family.py); rows in dlkern/suites/rnn.py.

    .venv/bin/python -m pytest bench/bench_rnn.py --benchmark-only
"""
from family import benchmark_test

test_rnn = benchmark_test("rnn")
