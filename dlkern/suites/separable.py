"""Benchmark shapes of the separable family: depthwise conv, depthwise-separable and spatial
separable convolution (issue targets as Case.target). torch's time for a separable op is its two
convolutions in sequence."""
import math

import torch
import torch.nn.functional as F

import dlkern.functional as DF
from dlkern.benchmark import Case

OP = "separable"
_CONV = {1: F.conv1d, 2: F.conv2d}


def _torch_depthwise2d(x, w, b, padding):
    return F.conv2d(x, w, b, padding=padding, groups=x.shape[1])


def _dlkern_depthwise2d(x, w, b, padding):
    return DF.conv2d(x, w, b, padding=padding, groups=x.shape[1])


def _depthwise_case(name, n, c, spatial, k, padding, target, target_fwd_bwd):
    def build(dtype, requires_grad):
        g = torch.Generator().manual_seed(0)
        x = torch.randn((n, c) + spatial, generator=g, dtype=dtype)
        w = torch.randn((c, 1, k, k), generator=g, dtype=dtype) * 0.3
        b = torch.randn(c, generator=g, dtype=dtype)
        for t in (x, w, b):
            t.requires_grad_(requires_grad)
        return (x, w, b), dict(padding=padding)

    pixels = n * c * math.prod(spatial)
    return Case(name, OP, build, _torch_depthwise2d, _dlkern_depthwise2d, 2.0 * pixels * k * k,
                target, target_fwd_bwd, bytes=4.0 * (2 * pixels + c * (k * k + 1)),
                memory_bound=True)


def _ds_torch(rank):
    def fn(x, wd, wp, bd, bp, padding):
        return _CONV[rank](_CONV[rank](x, wd, bd, padding=padding, groups=x.shape[1]), wp, bp)
    return fn


def _ds_dlkern(rank):
    op = {1: DF.depthwise_separable_conv1d, 2: DF.depthwise_separable_conv2d}[rank]

    def fn(x, wd, wp, bd, bp, padding):
        return op(x, wd, wp, bd, bp, padding=padding)
    return fn


def _ds_case(name, n, c_in, c_out, spatial, k, padding, target, target_fwd_bwd=None):
    rank = len(spatial)

    def build(dtype, requires_grad):
        g = torch.Generator().manual_seed(0)
        x = torch.randn((n, c_in) + spatial, generator=g, dtype=dtype)
        wd = torch.randn((c_in, 1) + (k,) * rank, generator=g, dtype=dtype) * 0.3
        wp = torch.randn((c_out, c_in) + (1,) * rank, generator=g, dtype=dtype) * 0.1
        bd = torch.randn(c_in, generator=g, dtype=dtype)
        bp = torch.randn(c_out, generator=g, dtype=dtype)
        for t in (x, wd, wp, bd, bp):
            t.requires_grad_(requires_grad)
        return (x, wd, wp, bd, bp), dict(padding=padding)

    pixels = n * math.prod(spatial)
    flops = 2.0 * pixels * (c_in * k ** rank + c_out * c_in)
    return Case(name, OP, build, _ds_torch(rank), _ds_dlkern(rank), flops, target, target_fwd_bwd)


def _spatial_torch(x, wv, wh, bv, bh, padding):
    return F.conv2d(F.conv2d(x, wv, bv, padding=(padding, 0)), wh, bh, padding=(0, padding))


def _spatial_dlkern(x, wv, wh, bv, bh, padding):
    return DF.spatial_separable_conv2d(x, wv, wh, bv, bh, padding=padding)


def _spatial_case(name, n, c_in, c_mid, c_out, spatial, k, padding, target):
    def build(dtype, requires_grad):
        g = torch.Generator().manual_seed(0)
        x = torch.randn((n, c_in) + spatial, generator=g, dtype=dtype)
        wv = torch.randn((c_mid, c_in, k, 1), generator=g, dtype=dtype) * 0.1
        wh = torch.randn((c_out, c_mid, 1, k), generator=g, dtype=dtype) * 0.1
        bv = torch.randn(c_mid, generator=g, dtype=dtype)
        bh = torch.randn(c_out, generator=g, dtype=dtype)
        for t in (x, wv, wh, bv, bh):
            t.requires_grad_(requires_grad)
        return (x, wv, wh, bv, bh), dict(padding=padding)

    pixels = n * math.prod(spatial)
    flops = 2.0 * pixels * k * (c_mid * c_in + c_out * c_mid)
    return Case(name, OP, build, _spatial_torch, _spatial_dlkern, flops, target)


CASES = [
    _depthwise_case("depthwise conv2d N32 C128 56x56 k3 p1", 32, 128, (56, 56), 3, 1,
                    target=5.0, target_fwd_bwd=3.0),
    _ds_case("depthwise_separable_conv2d N16 C64->128 56x56 k3 p1", 16, 64, 128, (56, 56), 3, 1,
             target=3.0, target_fwd_bwd=2.0),
    _ds_case("depthwise_separable_conv1d N32 C128->128 L1024 k9 p4", 32, 128, 128, (1024,), 9, 4,
             target=2.0),
    _spatial_case("spatial_separable_conv2d N16 C64->64(mid 64) 56x56 k7 p3", 16, 64, 64, 64,
                  (56, 56), 7, 3, target=1.5),
]
