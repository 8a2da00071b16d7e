"""Helpers shared by the gpu_check sections (gpu_conv.py, gpu_separable.py, gpu_attention.py,
gpu_rnn.py)."""
import contextlib
import os

import torch

CHECK_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def device():
    """"cuda"; a dry run without a GPU (DLKERN_BACKEND=triton, TRITON_INTERPRET=1) uses "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def strict():
    """DLKERN_STRICT=1 for a block: a silent fallback to torch would time torch against torch."""
    before = os.environ.get("DLKERN_STRICT")
    os.environ["DLKERN_STRICT"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DLKERN_STRICT", None)
        else:
            os.environ["DLKERN_STRICT"] = before
