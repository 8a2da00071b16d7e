"""The one precision policy of the Triton kernels (kernels/triton/precision.py): which torch switch
each op family follows, and never TF32 off a GPU or for 16-bit operands."""
import types

import pytest
import torch

from dlkern.kernels.triton.precision import CUDNN, MATMUL, dot_precision


@pytest.fixture
def switches(monkeypatch):
    """Sets both TF32 switches for a test and restores them (cuda.matmul's switch is a property
    of a module object that monkeypatch cannot set)."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32

    def set_switches(cudnn_flag, matmul_flag):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", cudnn_flag)
        matmul.allow_tf32 = matmul_flag

    yield set_switches
    matmul.allow_tf32 = saved


def _fake(dtype, device):
    """Only dtype and device.type are read: a stand-in lets a CPU machine test the CUDA rows."""
    return types.SimpleNamespace(dtype=dtype, device=torch.device(device))


@pytest.mark.parametrize("cudnn_flag", [False, True])
@pytest.mark.parametrize("matmul_flag", [False, True])
def test_float32_on_cuda_follows_the_twins_switch(switches, cudnn_flag, matmul_flag):
    switches(cudnn_flag, matmul_flag)
    t = _fake(torch.float32, "cuda")
    assert dot_precision(t, CUDNN) == ("tf32" if cudnn_flag else "ieee")
    assert dot_precision(t, MATMUL) == ("tf32" if matmul_flag else "ieee")


@pytest.mark.parametrize("dtype, device", [(torch.float16, "cuda"), (torch.bfloat16, "cuda"),
                                           (torch.float32, "cpu")])
def test_never_tf32_for_16_bit_or_the_interpreter(switches, dtype, device):
    switches(True, True)
    for follows in (CUDNN, MATMUL):
        assert dot_precision(_fake(dtype, device), follows) == "ieee"


def test_unknown_switch_raises():
    with pytest.raises(ValueError, match="follows"):
        dot_precision(_fake(torch.float32, "cuda"), "cublas")
