import os

import pytest
import torch

# Triton kernels run on CPU tensors through Triton's interpreter on machines without a GPU. triton.jit
# reads TRITON_INTERPRET when a kernel is defined, so it is set before any test module imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def strict_and_poisoned(monkeypatch):
    """Every test runs strict (no silent fallback to torch) with NaN-poisoned kernel outputs."""
    monkeypatch.setenv("DLKERN_STRICT", "1")
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
    return "cpu"

