"""The documented interpreter mode, as a user runs it: ``DLKERN_BACKEND=triton TRITON_INTERPRET=1``
runs dlkern's Triton kernels on CPU tensors. A new process without any test fixture, so the library
itself must make Triton's interpreter work with the NumPy installed (>= 2.4 needs the fix in
kernels/triton/_interpreter.py)."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="Triton is not installed")

CODE = r"""
import sys
import torch
import torch.nn.functional as F
import dlkern.functional as DF

g = torch.Generator().manual_seed(0)
x = torch.randn(2, 3, 7, 6, generator=g, requires_grad=True)
w = torch.randn(4, 3, 3, 3, generator=g, requires_grad=True)
b = torch.randn(4, generator=g, requires_grad=True)
y = DF.conv2d(x, w, b, stride=(2, 1), padding=1)
y.backward(torch.ones_like(y))
# DLKERN_STRICT=1: with DLKERN_BACKEND=triton, anything but the Triton kernels would have raised.
assert "dlkern.kernels.triton.conv" in sys.modules, "the Triton kernels did not run"

x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
ref = F.conv2d(x64, w64, b64, stride=(2, 1), padding=1)
ref.backward(torch.ones_like(ref))
for name, got, want in (("output", y, ref), ("grad input", x.grad, x64.grad),
                        ("grad weight", w.grad, w64.grad), ("grad bias", b.grad, b64.grad)):
    err = (got.detach().double() - want.detach()).abs().max().item()
    assert err < 1e-4, (name, err)
import numpy
print("ok numpy", numpy.__version__)
"""


def test_interpreter_mode_without_fixture(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLKERN_", "TRITON_"))}
    env.update(DLKERN_BACKEND="triton", TRITON_INTERPRET="1", DLKERN_STRICT="1")
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ok numpy" in proc.stdout
