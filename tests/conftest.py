import os

import pytest
import torch

# Triton kernels run on CPU tensors through Triton's interpreter on machines without a GPU. triton.jit
# reads TRITON_INTERPRET when a kernel is defined, so it is set before any test module imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Files whose tests mostly run kernels that the op-family files compile (whole models, DDP, the
# enable() routing, the bad-input batteries): scheduled after them, so that on a cold Numba cache
# they load compiled code instead of compiling it again in parallel (two DDP ranks compiling the
# same kernels cost 120 s of CPU against 20 s warm).
RUN_AFTER_KERNELS = ("test_bad_inputs.py", "test_enable.py", "test_models.py",
                     "test_distributed.py")


def pytest_collection_modifyitems(config, items):
    """The order the suite runs in, made for `make test` (pytest-xdist with ``--dist loadfile
    --no-loadscope-reorder``: one file per worker at a time, handed out in this order). Files with
    a test marked ``slow`` first, so that they overlap everything else instead of finishing last
    on one worker; the files of RUN_AFTER_KERNELS last, in its order; the others in between. Files
    stay whole: one worker compiles the Numba kernels a file needs, the disk cache serves the rest.
    (xdist's ``loadgroup`` cannot split a slow test from its file here: with pytest 9 its group
    suffix no longer reaches the node ids.)"""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item):
        if item.path in slow_files:
            return 0
        if item.path.name in RUN_AFTER_KERNELS:
            return 2 + RUN_AFTER_KERNELS.index(item.path.name)
        return 1

    items.sort(key=rank)  # stable: collection order within each rank


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
    return "cpu"

