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
import torch.nn.functional as F

import dlkern.functional as DF


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

    def inputs(self, requires_grad=False, dtype=torch.float32):
        return self.build(dtype, requires_grad)


def _conv_case(name, n, c_in, c_out, spatial, kernel, stride=1, padding=0, dilation=1, groups=1,
               target=None, target_fwd_bwd=None):
    rank = len(spatial)
    kernel = (kernel,) * rank if isinstance(kernel, int) else tuple(kernel)

    def build(dtype, requires_grad):
        g = torch.Generator().manual_seed(0)
        x = torch.randn((n, c_in) + tuple(spatial), generator=g, dtype=dtype)
        w = torch.randn((c_out, c_in // groups) + kernel, generator=g, dtype=dtype) * 0.1
        b = torch.randn(c_out, generator=g, dtype=dtype)
        for t in (x, w, b):
            t.requires_grad_(requires_grad)
        return (x, w, b), dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    with torch.no_grad():
        (x, w, b), kw = build(torch.float32, False)
        out_shape = getattr(F, f"conv{rank}d")(torch.empty(1, c_in, *spatial, device="meta"),
                                               w.to("meta"), None, **kw).shape
    flops = 2.0 * n * c_out * math.prod(out_shape[2:]) * (c_in // groups) * math.prod(kernel)
    return Case(name, "conv", build, getattr(F, f"conv{rank}d"), getattr(DF, f"conv{rank}d"),
                flops, target, target_fwd_bwd)


SUITES = {
    "conv": [
        _conv_case("conv2d N32 C64->64 56x56 k3 p1", 32, 64, 64, (56, 56), 3, padding=1,
                   target=0.9, target_fwd_bwd=0.8),
        _conv_case("conv2d N8 C3->64 224x224 k7 s2 p3", 8, 3, 64, (224, 224), 7, stride=2,
                   padding=3, target=1.2),
        _conv_case("conv2d N1 C256->256 14x14 k3 p1", 1, 256, 256, (14, 14), 3, padding=1,
                   target=1.0),
        _conv_case("conv2d N16 C128->256 28x28 k1", 16, 128, 256, (28, 28), 1, target=0.9),
        _conv_case("conv2d N16 C128->128 28x28 k3 p1 g8", 16, 128, 128, (28, 28), 3, padding=1,
                   groups=8, target=1.0),
        _conv_case("conv1d N32 C128->128 L1024 k5 p2", 32, 128, 128, (1024,), 5, padding=2,
                   target=0.9, target_fwd_bwd=0.8),
        _conv_case("conv1d N16 C64->64 L2048 k3 d4 same", 16, 64, 64, (2048,), 3, padding="same",
                   dilation=4, target=1.0),
        _conv_case("conv3d N4 C16->32 16x56x56 k3 p1", 4, 16, 32, (16, 56, 56), 3, padding=1,
                   target=0.9),
    ],
}


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


def time_pair(torch_call, dlkern_call, repeats, warmup, rounds=3):
    """Medians of torch and dlkern, timed in alternating blocks so drift hits both alike."""
    t_times, d_times = [], []
    for call in (torch_call, dlkern_call):
        for _ in range(warmup):
            call()
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for call, sink in ((torch_call, t_times), (dlkern_call, d_times)):
            time.sleep(0.05)  # let the other library's spinning worker threads go idle
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                sink.append(time.perf_counter() - start)
    t_times.sort()
    d_times.sort()
    return t_times[len(t_times) // 2], d_times[len(d_times) // 2]


def _forward(fn, args, kwargs):
    def call():
        with torch.no_grad():
            return fn(*args, **kwargs)
    return call


def _forward_backward(fn, args, kwargs, grad_out):
    def call():
        for t in args:
            t.grad = None
        fn(*args, **kwargs).backward(grad_out)
    return call


def run_case(case, mode, peak_gflops, repeats, warmup):
    """Time one case in one mode ("forward" or "forward+backward"); returns a result dict."""
    if mode == "forward":
        args, kwargs = case.inputs(False)
        torch_call = _forward(case.torch_fn, args, kwargs)
        dlkern_call = _forward(case.dlkern_fn, args, kwargs)
        flops = case.flops
        target = case.target
        with torch.no_grad():
            err = float((case.dlkern_fn(*args, **kwargs) - case.torch_fn(*args, **kwargs)).abs().max())
    else:
        args, kwargs = case.inputs(True)
        with torch.no_grad():
            grad_out = torch.randn_like(case.torch_fn(*args, **kwargs))
        torch_call = _forward_backward(case.torch_fn, args, kwargs, grad_out)
        dlkern_call = _forward_backward(case.dlkern_fn, args, kwargs, grad_out)
        flops = 3 * case.flops
        target = case.target_fwd_bwd
        err = float("nan")
    t_torch, t_dl = time_pair(torch_call, dlkern_call, repeats, warmup)
    gflops = flops / t_dl / 1e9
    return dict(name=case.name, op=case.op, mode=mode, torch_ms=t_torch * 1e3, dlkern_ms=t_dl * 1e3,
                speedup=t_torch / t_dl, dlkern_gflops=gflops, torch_gflops=flops / t_torch / 1e9,
                pct_peak=100.0 * gflops / peak_gflops, max_abs_err=err, target=target)


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


def format_table(results, peak, bandwidth):
    header = (f"{'shape':40s} {'mode':9s} {'torch ms':>9s} {'dlkern ms':>9s} {'speedup':>8s} "
              f"{'target':>7s} {'GFLOP/s':>8s} {'% peak':>7s} {'max err':>9s}")
    lines = [f"machine: peak {peak:.0f} GFLOP/s (fp32 matmul), bandwidth {bandwidth:.1f} GB/s (copy)",
             header, "-" * len(header)]
    for r in results:
        target = "" if r["target"] is None else f"{r['target']:.1f}x"
        met = "" if r["target"] is None else (" ok" if r["speedup"] >= r["target"] else " MISS")
        err = "" if math.isnan(r["max_abs_err"]) else f"{r['max_abs_err']:.1e}"
        mode = "fwd" if r["mode"] == "forward" else "fwd+bwd"
        lines.append(f"{r['name']:40s} {mode:9s} {r['torch_ms']:9.2f} {r['dlkern_ms']:9.2f} "
                     f"{r['speedup']:7.2f}x {target:>7s} {r['dlkern_gflops']:8.1f} {r['pct_peak']:6.1f}% "
                     f"{err:>9s}{met}")
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['name']} ({'fwd' if r['mode'] == 'forward' else 'fwd+bwd'})" for r in results]
    speedups = [r["speedup"] for r in results]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(results) + 1.5))
    colors = ["tab:green" if s >= 1 else "tab:red" for s in speedups]
    ax.barh(range(len(results)), speedups, color=colors)
    ax.set_yticks(range(len(results)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("speedup over torch (torch time / dlkern time)")
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


def run(ops=None, quick=False, json_path=None, plot_path=None, first_call=True):
    ops = ops or list(SUITES)
    repeats, warmup = (3, 1) if quick else (9, 2)
    peak = measure_peak_gflops()
    bandwidth = measure_bandwidth_gbs()
    jobs = [(c, m) for op in ops for c in SUITES[op]
            for m in (("forward", "forward+backward") if c.fwd_bwd else ("forward",))]
    progress = Progress(len(jobs))
    results = []
    for case, mode in jobs:
        progress.step(f"{case.name} {mode}")
        results.append(run_case(case, mode, peak, repeats, warmup))
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
