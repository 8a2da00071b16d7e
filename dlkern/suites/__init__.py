"""Benchmark shape suites, one module per op family, each defining OP (its --op name) and CASES
(a list of dlkern.benchmark.Case). dlkern.benchmark.suites() collects every module here."""
