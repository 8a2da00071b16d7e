import os

import numpy as np
import pytest
import torch

# Triton kernels run on CPU tensors through Triton's interpreter on machines without a GPU. triton.jit
# reads TRITON_INTERPRET when a kernel is defined, so it is set before any test module imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def strict_and_poisoned(monkeypatch):
    """Every test runs strict (no silent fallback to torch) with NaN-poisoned kernel outputs, and
    patch/enable run dlkern on every covered call (policy "always": no timing decides the path)."""
    monkeypatch.setenv("DLKERN_STRICT", "1")
    monkeypatch.setenv("DLKERN_POLICY", "always")
    monkeypatch.setenv("DLKERN_POISON_OUTPUTS", "1")
    monkeypatch.delenv("DLKERN_BACKEND", raising=False)
    yield


@pytest.fixture
def triton_device(monkeypatch):
    """The device on which dlkern's Triton kernels run in this test: "cuda" when a GPU is present,
    else "cpu" with DLKERN_BACKEND=triton (CPU tensors through Triton's interpreter)."""
    pytest.importorskip("triton", reason="Triton is not installed")
    if torch.cuda.is_available():
        return "cuda"
    monkeypatch.setenv("DLKERN_BACKEND", "triton")
    _interpreter_numpy_fix(monkeypatch)
    return "cpu"


def _interpreter_numpy_fix(monkeypatch):
    """Triton 3.6's interpreter turns a runtime scalar into a loop bound with int() of a shape-(1,)
    array, which NumPy >= 2.4 refuses ("only 0-dimensional arrays can be converted to Python
    scalars"); give its tensors an __index__ that reads the element (only while a test runs)."""
    if np.lib.NumpyVersion(np.__version__) < "2.4.0":
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", patch_lang_tensor)
