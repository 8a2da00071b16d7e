"""The harness behind ``python -m dlkern bench`` and bench/: what runs, how it is timed and checked,
how results are reported. What is measured lives in dlkern.suites (layer tables, models).

* ``timing``: ``time_pair`` / ``measure_pair``, torch and dlkern timed in alternating blocks in the
  same process (medians), with an adaptive number of samples;
* ``machine``: the machine object of every result (ISA, caches, measured peak and bandwidth);
* ``runner``: one case in one mode: agreement with torch (strict, tolerance scaled by the reduction
  length), then the timing, as a result row;
* ``summary``: per-family geometric means, worst rows, rows below 1.0x; comparison of two runs;
* ``report``: the printed table, summary, comparison and the chart;
* ``cli``: the ``bench`` command; ``first_call``: a new process's first call.

Speed is a ratio against torch in the same process and run, plus the fraction of the machine's
roofline (measured peak of a large float32 matmul, bandwidth of a large copy).
"""
from dlkern.benchmark.runner import forward_backward_call, forward_call  # noqa: F401
from dlkern.benchmark.timing import measure_pair, median_time, time_pair  # noqa: F401

__all__ = ["forward_backward_call", "forward_call", "measure_pair", "median_time", "time_pair"]
