"""Benchmark shapes of the convolution family (issue targets as Case.target)."""
import math

import torch
import torch.nn.functional as F

import dlkern.functional as DF
from dlkern.benchmark import Case

OP = "conv"


def _conv_case(name, n, c_in, c_out, spatial, kernel, stride=1, padding=0, dilation=1, groups=1,
               target=None, target_fwd_bwd=None):
    rank = len(spatial)
    kernel = (kernel,) * rank if isinstance(kernel, int) else tuple(kernel)

    def build(dtype, requires_grad):
        g = torch.Generator().manual_seed(0)
        x = torch.randn((n, c_in) + tuple(spatial), generator=g, dtype=dtype)
        w = torch.randn((c_out, c_in // groups) + kernel, generator=g, dtype=dtype) * 0.1
        b = torch.randn(c_out, generator=g, dtype=dtype)
        for t in (x, w, b):
            t.requires_grad_(requires_grad)
        return (x, w, b), dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    with torch.no_grad():
        (x, w, b), kw = build(torch.float32, False)
        out_shape = getattr(F, f"conv{rank}d")(torch.empty(1, c_in, *spatial, device="meta"),
                                               w.to("meta"), None, **kw).shape
    flops = 2.0 * n * c_out * math.prod(out_shape[2:]) * (c_in // groups) * math.prod(kernel)
    return Case(name, "conv", build, getattr(F, f"conv{rank}d"), getattr(DF, f"conv{rank}d"),
                flops, target, target_fwd_bwd)


CASES = [
    _conv_case("conv2d N32 C64->64 56x56 k3 p1", 32, 64, 64, (56, 56), 3, padding=1,
               target=0.9, target_fwd_bwd=0.8),
    _conv_case("conv2d N8 C3->64 224x224 k7 s2 p3", 8, 3, 64, (224, 224), 7, stride=2,
               padding=3, target=1.2),
    _conv_case("conv2d N1 C256->256 14x14 k3 p1", 1, 256, 256, (14, 14), 3, padding=1,
               target=1.0),
    _conv_case("conv2d N16 C128->256 28x28 k1", 16, 128, 256, (28, 28), 1, target=0.9),
    _conv_case("conv2d N16 C128->128 28x28 k3 p1 g8", 16, 128, 128, (28, 28), 3, padding=1,
               groups=8, target=1.0),
    _conv_case("conv1d N32 C128->128 L1024 k5 p2", 32, 128, 128, (1024,), 5, padding=2,
               target=0.9, target_fwd_bwd=0.8),
    _conv_case("conv1d N16 C64->64 L2048 k3 d4 same", 16, 64, 64, (2048,), 3, padding="same",
               dilation=4, target=1.0),
    _conv_case("conv3d N4 C16->32 16x56x56 k3 p1", 4, 16, 32, (16, 56, 56), 3, padding=1,
               target=0.9),
]
