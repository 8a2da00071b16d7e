"""Timing torch against dlkern in the same process: medians of alternating blocks.

``time_pair`` is the one timer of the benchmark (and of any helper script that compares the two):
both calls are warmed up, then timed in alternating blocks (torch, dlkern, torch, ...) so drift in
the machine's load hits both alike. A call shorter than ``min_sample`` is timed in loops of calls
long enough to reach it, so a sub-millisecond op measures its steady
state, not the wake-up of idle worker threads. Without ``repeats`` the timer is adaptive: it
spends about ``budget`` seconds on the timed samples, at least 3 and at most ``max_repeats`` per
call, so a fast row gets many samples and a slow one a few.
"""
import math
import time

MIN_REPEATS = 3
MIN_SAMPLE = 0.01  # seconds: shorter calls are timed in loops that last this long


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    return 0.5 * (values[middle - 1] + values[middle])


def median_time(fn, repeats=7, warmup=2):
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def _once(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def time_pair(torch_call, dlkern_call, repeats=None, warmup=1, **options):
    """(torch seconds, dlkern seconds): medians over alternating blocks (see ``measure_pair``)."""
    t_torch, t_dlkern, _ = measure_pair(torch_call, dlkern_call, repeats, warmup, **options)
    return t_torch, t_dlkern


def measure_pair(torch_call, dlkern_call, repeats=None, warmup=1, rounds=3, min_sample=None,
                 budget=0.5, max_repeats=25, pause=0.01):
    """(torch seconds, dlkern seconds, samples per call): medians over alternating blocks.

    ``repeats`` fixes the number of samples per call; None spends about ``budget`` seconds.
    Each call is looped to last ``min_sample`` seconds per sample (default MIN_SAMPLE).
    ``pause`` seconds of sleep before each block let the other library's spinning worker threads
    go idle; a block of looped calls then runs one untimed sample to wake its own threads.
    """
    min_sample = MIN_SAMPLE if min_sample is None else min_sample
    calls = (torch_call, dlkern_call)
    estimates = [min(_once(call) for _ in range(max(1, warmup))) for call in calls]
    loops = [max(1, min(1000, int(min_sample / max(1e-7, e)))) for e in estimates]
    if repeats is None:
        per_sample = sum(n * e for n, e in zip(loops, estimates))
        repeats = max(MIN_REPEATS, min(max_repeats, int(budget / max(per_sample, 1e-9))))
    rounds = max(1, min(rounds, repeats))
    per_round = math.ceil(repeats / rounds)
    samples = ([], [])
    for _ in range(rounds):
        for call, inner, sink in zip(calls, loops, samples):
            time.sleep(pause)
            if inner > 1:
                for _ in range(inner):
                    call()
            for _ in range(per_round):
                start = time.perf_counter()
                for _ in range(inner):
                    call()
                sink.append((time.perf_counter() - start) / inner)
    return median(samples[0]), median(samples[1]), len(samples[0])
