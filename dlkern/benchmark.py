"""Shape suites and the measuring harness behind ``python -m dlkern bench`` and bench/.

Speed is a ratio against torch in the same process and run (median of repeats after warm-up,
torch and dlkern timed in alternating blocks), plus the fraction of the machine's measured limit:
the peak of a large float32 matmul for compute-bound ops, the bandwidth of a large copy for
memory-bound ones. Each suite is defined once here and used by the command and by bench/.
"""
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch


@dataclasses.dataclass
class Case:
    """One benchmark shape: builds its tensors and knows how to run torch and dlkern on them."""
    name: str
    op: str
    build: object            # (dtype, requires_grad) -> (args tuple, kwargs dict)
    torch_fn: object
    dlkern_fn: object
    flops: float             # forward floating-point operations
    target: float = None     # forward speedup target of the issue, if any
    target_fwd_bwd: float = None
    fwd_bwd: bool = True
    bytes: float = 0.0       # forward bytes moved at the least (inputs + outputs), for memory-bound ops
    memory_bound: bool = False  # report GB/s and % of bandwidth instead of GFLOP/s and % of peak
    # Whole-model cases (suites/models.py) also time one training step: zero-argument callables
    # that run forward, backward and an optimizer step on torch's model and on the patched one.
    train_torch: object = None
    train_dlkern: object = None
    target_train: float = None

    def inputs(self, requires_grad=False, dtype=torch.float32):
        return self.build(dtype, requires_grad)


def suites():
    """{op family: [Case, ...]}: every module in dlkern/suites/ contributes its CASES."""
    import importlib
    import pkgutil

    from dlkern import suites as package

    found = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"dlkern.suites.{info.name}")
        found[module.OP] = module.CASES
    return found


def measure_peak_gflops(size=2048, repeats=5):
    """float32 GFLOP/s of a large torch matmul on this machine (its practical compute ceiling)."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    t = median_time(lambda: torch.mm(a, b), repeats=repeats, warmup=2)
    return 2.0 * size ** 3 / t / 1e9


def measure_bandwidth_gbs(mib=256, repeats=5):
    """GB/s of a large copy (bytes read + bytes written) on this machine."""
    src = torch.empty(mib * 2 ** 18)
    src.fill_(1.0)
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), repeats=repeats, warmup=2)
    return 2.0 * src.numel() * 4 / t / 1e9


def median_time(fn, repeats=7, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def time_pair(torch_call, dlkern_call, repeats, warmup, rounds=3, min_sample=0.02):
    """Medians of torch and dlkern, timed in alternating blocks so drift hits both alike.

    A call shorter than ``min_sample`` seconds is timed in a loop of calls long enough to reach
    it (the same count for both providers), so a sub-millisecond op measures its steady-state
    cost, not the wake-up of idle worker threads after the pause between blocks.
    """
    estimates = []
    for call in (torch_call, dlkern_call):
        for _ in range(max(1, warmup)):
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
        estimates.append(elapsed)
    inner = max(1, min(1000, int(min_sample / max(1e-7, min(estimates)))))
    t_times, d_times = [], []
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for call, sink in ((torch_call, t_times), (dlkern_call, d_times)):
            time.sleep(0.05)  # let the other library's spinning worker threads go idle
            for _ in range(inner):  # and wake this one's up again before timing
                call()
            for _ in range(per_round):
                start = time.perf_counter()
                for _ in range(inner):
                    call()
                sink.append((time.perf_counter() - start) / inner)
    t_times.sort()
    d_times.sort()
    return t_times[len(t_times) // 2], d_times[len(d_times) // 2]


def forward_call(fn, args, kwargs):
    def call():
        with torch.no_grad():
            return fn(*args, **kwargs)
    return call


def forward_backward_call(fn, args, kwargs, grad_out):
    def call():
        for t in args:
            t.grad = None
        fn(*args, **kwargs).backward(grad_out)
    return call


def run_case(case, mode, peak_gflops, bandwidth_gbs, repeats, warmup):
    """Time one case in one mode ("forward" or "forward+backward"); returns a result dict."""
    if mode == "train step":
        torch_call, dlkern_call = case.train_torch, case.train_dlkern
        flops = 3 * case.flops
        target = case.target_train
        err = float("nan")
    elif mode == "forward":
        args, kwargs = case.inputs(False)
        torch_call = forward_call(case.torch_fn, args, kwargs)
        dlkern_call = forward_call(case.dlkern_fn, args, kwargs)
        flops = case.flops
        target = case.target
        with torch.no_grad():
            err = float((case.dlkern_fn(*args, **kwargs) - case.torch_fn(*args, **kwargs)).abs().max())
    else:
        args, kwargs = case.inputs(True)
        with torch.no_grad():
            grad_out = torch.randn_like(case.torch_fn(*args, **kwargs))
        torch_call = forward_backward_call(case.torch_fn, args, kwargs, grad_out)
        dlkern_call = forward_backward_call(case.dlkern_fn, args, kwargs, grad_out)
        flops = 3 * case.flops
        target = case.target_fwd_bwd
        err = float("nan")
    t_torch, t_dl = time_pair(torch_call, dlkern_call, repeats, warmup)
    gflops = flops / t_dl / 1e9
    moved = case.bytes * (1 if mode == "forward" else 3)
    gbs = moved / t_dl / 1e9
    if case.memory_bound:
        rate, pct = gbs, 100.0 * gbs / bandwidth_gbs
    else:
        rate, pct = gflops, 100.0 * gflops / peak_gflops
    return dict(name=case.name, op=case.op, mode=mode, torch_ms=t_torch * 1e3, dlkern_ms=t_dl * 1e3,
                speedup=t_torch / t_dl, dlkern_gflops=gflops, torch_gflops=flops / t_torch / 1e9,
                dlkern_gbs=gbs, memory_bound=case.memory_bound, rate=rate, pct_limit=pct,
                max_abs_err=err, target=target)


_FIRST_CALL_SNIPPET = """
import time
t0 = time.perf_counter()
import torch, dlkern, dlkern.functional as DF
t1 = time.perf_counter()
x = torch.randn(2, 8, 16, 16, requires_grad=True); w = torch.randn(8, 8, 3, 3, requires_grad=True)
DF.conv2d(x, w, padding=1)
t2 = time.perf_counter()
DF.conv2d(x, w, padding=1).sum().backward()
t3 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {t3 - t2:.3f}")
"""


def first_call_seconds(cold):
    """(import s, first forward s, first forward+backward s) in a new process.

    cold=True uses an empty Numba cache directory, so it includes the compile time; cold=False
    uses the normal cache (warmed by a first run).
    """
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if cold:
            env["NUMBA_CACHE_DIR"] = tmp
        else:
            subprocess.run([sys.executable, "-c", _FIRST_CALL_SNIPPET], env=env, check=True,
                           capture_output=True)
        out = subprocess.run([sys.executable, "-c", _FIRST_CALL_SNIPPET], env=env, check=True,
                             capture_output=True, text=True).stdout
    return tuple(float(v) for v in out.split())


def machine_info(peak, bandwidth):
    return dict(platform=platform.platform(), processor=platform.processor(),
                cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                torch=torch.__version__, torch_threads=torch.get_num_threads(),
                peak_gflops=peak, bandwidth_gbs=bandwidth)


_SHORT_MODE = {"forward": "fwd", "forward+backward": "fwd+bwd", "train step": "train"}


def format_table(results, peak, bandwidth):
    header = (f"{'shape':50s} {'mode':9s} {'torch ms':>9s} {'dlkern ms':>9s} {'speedup':>8s} "
              f"{'target':>7s} {'rate':>12s} {'% limit':>8s} {'max err':>9s}")
    lines = [f"machine: peak {peak:.0f} GFLOP/s (fp32 matmul), bandwidth {bandwidth:.1f} GB/s (copy); "
             "% limit = rate / peak (GF/s) or / bandwidth (GB/s)",
             header, "-" * len(header)]
    for r in results:
        target = "" if r["target"] is None else f"{r['target']:.1f}x"
        met = "" if r["target"] is None else (" ok" if r["speedup"] >= r["target"] else " MISS")
        err = "" if math.isnan(r["max_abs_err"]) else f"{r['max_abs_err']:.1e}"
        mode = _SHORT_MODE[r["mode"]]
        unit = "GB/s" if r["memory_bound"] else "GF/s"
        lines.append(f"{r['name']:50s} {mode:9s} {r['torch_ms']:9.2f} {r['dlkern_ms']:9.2f} "
                     f"{r['speedup']:7.2f}x {target:>7s} {r['rate']:7.1f} {unit:4s} {r['pct_limit']:6.1f}%  "
                     f"{err:>9s}{met}")
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['name']} ({_SHORT_MODE[r['mode']]})" for r in results]
    speedups = [r["speedup"] for r in results]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(results) + 1.5))
    colors = ["tab:green" if s >= 1 else "tab:red" for s in speedups]
    ax.barh(range(len(results)), speedups, color=colors)
    ax.set_yticks(range(len(results)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("speedup over torch (torch time / dlkern time, log scale)")
    ax.set_title("dlkern vs torch, float32, this machine")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total):
        self.total, self.done = total, 0

    def step(self, label):
        width = 30
        filled = int(width * self.done / max(1, self.total))
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label[:50]:50s}")
        sys.stderr.flush()
        self.done += 1

    def close(self):
        sys.stderr.write(f"\r{' ' * 100}\r")
        sys.stderr.flush()


def _modes(case):
    return (("forward",) + (("forward+backward",) if case.fwd_bwd else ())
            + (("train step",) if case.train_torch is not None else ()))


def run(ops=None, quick=False, json_path=None, plot_path=None, first_call=True):
    all_suites = suites()
    ops = ops or list(all_suites)
    repeats, warmup = (3, 1) if quick else (9, 2)
    peak = measure_peak_gflops()
    bandwidth = measure_bandwidth_gbs()
    jobs = [(c, m) for op in ops for c in all_suites[op] for m in _modes(c)]
    progress = Progress(len(jobs))
    results = []
    for case, mode in jobs:
        progress.step(f"{case.name} {mode}")
        results.append(run_case(case, mode, peak, bandwidth, repeats, warmup))
    progress.close()
    print(format_table(results, peak, bandwidth))
    report = dict(machine=machine_info(peak, bandwidth), results=results)
    if first_call and "conv" in ops:
        warm = first_call_seconds(cold=False)
        cold = first_call_seconds(cold=True)
        report["first_call"] = dict(warm_cache=warm, cold_cache=cold)
        print(f"\nnew process, conv2d: import {warm[0]:.2f} s; first forward {warm[1]:.2f} s, first "
              f"forward+backward {warm[2]:.2f} s with a warm Numba cache; {cold[1]:.2f} s and "
              f"{cold[2]:.2f} s with an empty one (compiling)")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {json_path}")
    if plot_path:
        try:
            plot(results, plot_path)
            print(f"wrote {plot_path}")
        except ImportError:
            print("matplotlib is not installed: no plot (pip install 'dlkern[plot]')")
    return report
