"""The machine a result was measured on: what it is (read by dlkern.kernels.machine) and what it
can do (measured here: the float32 peak of a large matmul or convolution, the bandwidth of a large
copy).

Ratios travel between machines, times do not: every JSON result carries this object, and its file
is named after it (``result_name``: ``cpu-<isa>-<cores>c-<date>``).
"""
import datetime
import platform

import torch

from dlkern.benchmark.timing import median_time
from dlkern.kernels import machine


def measure_peak_gflops(size=2048, repeats=5):
    """float32 GFLOP/s of the machine's practical compute ceiling: the faster of a large torch
    matmul and a large 3x3 convolution. The two run on different libraries (the matmul on BLAS,
    the convolution on oneDNN), and on some machines one of them stays well below the other
    (measured on a 2-core AMD EPYC: matmul 167 GFLOP/s, oneDNN's convolutions 190-220), which
    would put layers above 100% of a matmul-only ceiling."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    mm = 2.0 * size ** 3 / median_time(lambda: torch.mm(a, b), repeats, warmup=2) / 1e9
    x = torch.randn(8, 256, 28, 28)
    w = torch.randn(256, 256, 3, 3)
    flops = 2.0 * 8 * 256 * 256 * 9 * 28 * 28
    conv = flops / median_time(lambda: torch.nn.functional.conv2d(x, w, padding=1), repeats,
                               warmup=2) / 1e9
    return max(mm, conv)


def measure_bandwidth_gbs(mib=256, repeats=5):
    """GB/s of a large copy, bytes read plus bytes written."""
    src = torch.ones(mib * 2 ** 18)
    dst = torch.empty_like(src)
    return 2.0 * src.numel() * 4 / median_time(lambda: dst.copy_(src), repeats, warmup=2) / 1e9


def machine_info(peak_gflops, bandwidth_gbs):
    """The JSON ``machine`` object."""
    import numba

    caches = machine.cache_bytes()
    return dict(cpu=machine.cpu_model(), isa=machine.isa(), cores=machine.core_count(),
                l1d_bytes=caches["l1d"], l2_bytes=caches["l2"], l3_bytes=caches["l3"],
                peak_gflops=peak_gflops, bandwidth_gbs=bandwidth_gbs, torch=torch.__version__,
                numba=numba.__version__, torch_threads=torch.get_num_threads(),
                platform=platform.platform(), python=platform.python_version(),
                fingerprint=machine.fingerprint())


def result_name(info, date=None):
    """``cpu-<isa>-<cores>c-<date>``: how results files are named in bench/results/."""
    date = date or datetime.date.today().isoformat()
    return f"cpu-{info['isa']}-{info['cores']}c-{date}"
