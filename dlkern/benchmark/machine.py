"""The machine a result was measured on: what it is (read by dlkern.kernels.machine) and what it
can do (measured here: the float32 peak of a large matmul, the bandwidth of a large copy).

Ratios travel between machines, times do not: every JSON result carries this object, and its file
is named after it (``result_name``: ``cpu-<isa>-<cores>c-<date>``).
"""
import datetime
import platform

import torch

from dlkern.benchmark.timing import median_time
from dlkern.kernels import machine


def measure_peak_gflops(size=2048, repeats=5):
    """float32 GFLOP/s of a large torch matmul: the machine's practical compute ceiling."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    return 2.0 * size ** 3 / median_time(lambda: torch.mm(a, b), repeats, warmup=2) / 1e9


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
