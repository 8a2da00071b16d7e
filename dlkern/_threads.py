"""Thread pinning: Numba's pool gets as many threads as torch's intra-op pool (both at most the
usable cores), so the two never oversubscribe the machine. Set DLKERN_NUM_THREADS to override."""
import os

import numba
import torch


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def pin():
    """Set Numba's thread count to DLKERN_NUM_THREADS, else to torch's (at most the usable cores)."""
    threads = int(os.environ.get("DLKERN_NUM_THREADS", "0")) or min(
        torch.get_num_threads(), _usable_cores())
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    return threads


pin()
