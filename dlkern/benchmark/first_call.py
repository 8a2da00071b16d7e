"""How long a new process takes to import dlkern and run its first conv2d (forward, then
forward+backward), with a warm Numba disk cache and with an empty one (compiling)."""
import os
import subprocess
import sys
import tempfile

_SNIPPET = """
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
    """(import s, first forward s, first forward+backward s) in a new process; cold=True uses an
    empty Numba cache directory, so the times include compiling."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if cold:
            env["NUMBA_CACHE_DIR"] = tmp
        else:  # a first run fills the normal cache
            subprocess.run([sys.executable, "-c", _SNIPPET], env=env, check=True,
                           capture_output=True)
        out = subprocess.run([sys.executable, "-c", _SNIPPET], env=env, check=True,
                             capture_output=True, text=True).stdout
    return tuple(float(v) for v in out.split())
