"""Benchmark shapes of transposed convolution (issue targets as Case.target)."""
import math

import torch
import torch.nn.functional as F

import dlkern.functional as DF
from dlkern.benchmark import Case

OP = "conv_transpose"


def _case(name, n, c_in, c_out, spatial, kernel, stride, padding, target=None, target_fwd_bwd=None):
    rank = len(spatial)
    kernel = (kernel,) * rank

    def build(dtype, requires_grad):
        g = torch.Generator().manual_seed(0)
        x = torch.randn((n, c_in) + tuple(spatial), generator=g, dtype=dtype)
        w = torch.randn((c_in, c_out) + kernel, generator=g, dtype=dtype) * 0.1
        b = torch.randn(c_out, generator=g, dtype=dtype)
        for t in (x, w, b):
            t.requires_grad_(requires_grad)
        return (x, w, b), dict(stride=stride, padding=padding)

    # Every input element meets every kernel tap once: 2 * N * C_in * C_out * in_pixels * taps.
    flops = 2.0 * n * c_in * c_out * math.prod(spatial) * math.prod(kernel)
    return Case(name, OP, build, getattr(F, f"conv_transpose{rank}d"),
                getattr(DF, f"conv_transpose{rank}d"), flops, target, target_fwd_bwd)


CASES = [
    _case("conv_transpose2d N16 C128->64 28x28 k4 s2 p1", 16, 128, 64, (28, 28), 4, 2, 1,
          target=0.9, target_fwd_bwd=0.8),
    _case("conv_transpose1d N16 C64->32 L1024 k4 s2 p1", 16, 64, 32, (1024,), 4, 2, 1, target=1.0),
    _case("conv_transpose3d N2 C32->16 8x28x28 k4 s2 p1", 2, 32, 16, (8, 28, 28), 4, 2, 1,
          target=0.9),
]
