"""gpu_check section: depthwise, depthwise-separable and spatial separable convolution.

check(ctx): forward and every gradient against torch on float64 copies, in float32, float16 and
bfloat16, on small shapes (every kernel of kernels/triton/depthwise.py and separable.py runs; the
kernel sizes are those of the timed shapes, so that the checks and timings share compiled
kernels: other kernel sizes, 1-d and 3-d are checked by tests/test_triton_separable.py).
time(ctx): forward and forward+backward against torch (cuDNN / torch's depthwise kernel, and
torch's two-convolution sequences for the fused ops) in float16 and float32:

* depthwise conv2d N32 C128 56x56 k3 p1 (memory-bound: TB/s), target >= 1.5x;
* depthwise_separable_conv2d N16 C64->128 56x56 k3 p1, target >= 2x;
* spatial_separable_conv2d N16 C64->64->64 56x56 k7 p3 (a 7x7 factorised as 7x1 then 1x7).
"""
import torch
import torch.nn.functional as F

import dlkern.functional as DF
from gpu_common import CHECK_DTYPES, device

TIME_DTYPES = (torch.float16, torch.float32)


# ---------------------------------------------------------------- the cases


def _depthwise(c, stride=1, padding=1, dilation=1):
    def dlkern_fn(x, w, b):
        return DF.conv2d(x, w, b, stride, padding, dilation, c)

    def torch_fn(x, w, b):
        return F.conv2d(x, w, b, stride, padding, dilation, c)

    return dlkern_fn, torch_fn


def _depthwise_separable(c, rank=2, stride=1, padding=1, dilation=1):
    conv = F.conv2d if rank == 2 else F.conv1d
    dl = DF.depthwise_separable_conv2d if rank == 2 else DF.depthwise_separable_conv1d

    def dlkern_fn(x, wd, wp, bd, bp):
        return dl(x, wd, wp, bd, bp, stride, padding, dilation)

    def torch_fn(x, wd, wp, bd, bp):
        return conv(conv(x, wd, bd, stride, padding, dilation, c), wp, bp)

    return dlkern_fn, torch_fn


def _spatial(stride=(1, 1), padding=(1, 1), dilation=(1, 1)):
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation

    def dlkern_fn(x, wv, wh, bv, bh):
        return DF.spatial_separable_conv2d(x, wv, wh, bv, bh, stride, padding, dilation)

    def torch_fn(x, wv, wh, bv, bh):
        mid = F.conv2d(x, wv, bv, (sh, 1), (ph, 0), (dh, 1))
        return F.conv2d(mid, wh, bh, (1, sw), (0, pw), (1, dw))

    return dlkern_fn, torch_fn


def _inputs(shapes, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(device(), dtype)
            for s in shapes]


# (name, (dlkern_fn, torch_fn), shapes of the inputs, names of the inputs)
CHECKS = [
    ("depthwise conv2d N4 C32 28x28 k3 p1", _depthwise(32),
     [(4, 32, 28, 28), (32, 1, 3, 3), (32,)], ("x", "w", "b")),
    ("depthwise conv2d N2 C16x2 15x17 k3 s2 p1 m2", _depthwise(16, 2, 1),
     [(2, 16, 15, 17), (32, 1, 3, 3), (32,)], ("x", "w", "b")),
    ("depthwise conv2d channels_last N2 C48 14x14 k3 p1", _depthwise(48),
     [(2, 48, 14, 14), (48, 1, 3, 3), (48,)], ("x", "w", "b")),
    ("depthwise_separable_conv2d N4 C32->64 28x28 k3 p1", _depthwise_separable(32),
     [(4, 32, 28, 28), (32, 1, 3, 3), (64, 32, 1, 1), (32,), (64,)],
     ("x", "wd", "wp", "bd", "bp")),
    ("depthwise_separable_conv2d N2 C24x2->40 15x17 k3 s2 p1 m2",
     _depthwise_separable(24, 2, 2, 1),
     [(2, 24, 15, 17), (48, 1, 3, 3), (40, 48, 1, 1), (48,), (40,)],
     ("x", "wd", "wp", "bd", "bp")),
    ("spatial_separable_conv2d N4 C32->48->40 28x28 k7 p3", _spatial(padding=(3, 3)),
     [(4, 32, 28, 28), (48, 32, 7, 1), (40, 48, 1, 7), (48,), (40,)],
     ("x", "wv", "wh", "bv", "bh")),
    ("spatial_separable_conv2d N2 C16->24->32 30x31 k7 s2 p3 d(1,2)",
     _spatial((2, 2), (3, 3), (1, 2)),
     [(2, 16, 30, 31), (24, 16, 7, 1), (32, 24, 1, 7), (24,), (32,)],
     ("x", "wv", "wh", "bv", "bh")),
]


def _check_case(ctx, name, fns, shapes, names, dtype):
    dlkern_fn, torch_fn = fns
    base = _inputs(shapes, torch.float64)
    if "channels_last" in name:
        base[0] = base[0].contiguous(memory_format=torch.channels_last)
    ins64 = [t.clone().requires_grad_() for t in base]
    ins_torch = [t.detach().to(dtype).requires_grad_() for t in base]
    ins = [t.detach().to(dtype).requires_grad_() for t in base]
    ref64 = torch_fn(*ins64)
    ref = torch_fn(*ins_torch)
    out = dlkern_fn(*ins)
    ctx.check(f"{name} fwd", dtype, out, ref64, ref)
    grad = _inputs([tuple(ref64.shape)], torch.float64, seed=1)[0]
    g64 = torch.autograd.grad(ref64, ins64, grad)
    g_torch = torch.autograd.grad(ref, ins_torch, grad.to(dtype))
    g = torch.autograd.grad(out, ins, grad.to(dtype))
    for arg, a, e, t in zip(names, g, g64, g_torch):
        ctx.check(f"{name} grad {arg}", dtype, a, e, t)


def check(ctx, dtypes=CHECK_DTYPES):
    for name, fns, shapes, names in CHECKS:
        for dtype in dtypes:
            try:
                _check_case(ctx, name, fns, shapes, names, dtype)
            except Exception as exc:  # a failing case is reported, the others still run
                ctx.check_failed(name, dtype, exc)


# ---------------------------------------------------------------- timings


def _fwd_bwd(fn, ins, grad):
    def run():
        return torch.autograd.grad(fn(*ins), ins, grad)

    return run


def _time_case(ctx, name, fns, shapes, dtype, flops, bytes_fwd, bytes_fwd_bwd, target):
    dlkern_fn, torch_fn = fns
    with torch.no_grad():
        ins = _inputs(shapes, dtype)
        ctx.time(name, dtype, "fwd", lambda: torch_fn(*ins), lambda: dlkern_fn(*ins),
                 flops=flops, bytes_moved=bytes_fwd, target=target)
    ins = [t.requires_grad_() for t in _inputs(shapes, dtype)]
    with torch.no_grad():
        out_shape = tuple(torch_fn(*ins).shape)
    grad = _inputs([out_shape], dtype, seed=1)[0]
    ctx.time(name, dtype, "fwd+bwd", _fwd_bwd(torch_fn, ins, grad), _fwd_bwd(dlkern_fn, ins, grad),
             flops=None if flops is None else 3 * flops,
             bytes_moved=bytes_fwd_bwd, target=target)


def time(ctx, dtypes=TIME_DTYPES):
    for dtype in dtypes:
        size = torch.empty((), dtype=dtype).element_size()
        # depthwise: memory-bound; fwd reads x, writes y; fwd+bwd also reads dy twice and x
        # once more and writes dx
        n, c, hw = 32, 128, 56 * 56
        act = n * c * hw * size
        _time_case(ctx, "depthwise conv2d N32 C128 56x56 k3 p1", _depthwise(c),
                   [(n, c, 56, 56), (c, 1, 3, 3), (c,)], dtype, None, 2 * act, 6 * act,
                   "≥1.5x")
        n, c, co = 16, 64, 128
        flops = 2 * n * hw * (c * 9 + c * co)
        _time_case(ctx, "depthwise_separable_conv2d N16 C64->128 56x56 k3 p1",
                   _depthwise_separable(c),
                   [(n, c, 56, 56), (c, 1, 3, 3), (co, c, 1, 1), (c,), (co,)], dtype, flops,
                   None, None, "≥2x")
        n, c = 16, 64
        flops = 2 * n * hw * (c * c * 7 * 2)
        _time_case(ctx, "spatial_separable_conv2d N16 C64->64->64 56x56 k7 p3",
                   _spatial(padding=(3, 3)),
                   [(n, c, 56, 56), (c, c, 7, 1), (c, c, 1, 7), (c,), (c,)], dtype, flops,
                   None, None, None)
