"""gpu_check section: convolution and transposed convolution (kernels/triton/conv.py).

check(ctx): forward and the gradients of input, weight and bias against torch on float64 copies,
in float32, float16 and bfloat16, on small shapes that run every kernel and variant: conv1d/2d/3d,
stride, padding, dilation, groups, channels_last, a 3-channel stem (the SMALL_K reduction), split
weight-gradient reductions, conv_transpose1d/2d/3d.
time(ctx): forward and forward+backward against torch (cuDNN) in float16 and float32, NCHW, with
bias, on the issue's shapes and targets (TFLOP/s counts 2 * MACs; forward+backward counts 3x).

Runs strict (DLKERN_STRICT=1 while the section runs): a call that would fall back to torch fails
instead of timing torch against itself.
"""
import math

import torch
import torch.nn.functional as F

import dlkern.functional as DF
from gpu_common import CHECK_DTYPES, device, strict

TIME_DTYPES = (torch.float16, torch.float32)
CONV = {1: (DF.conv1d, F.conv1d), 2: (DF.conv2d, F.conv2d), 3: (DF.conv3d, F.conv3d)}
CONV_T = {1: (DF.conv_transpose1d, F.conv_transpose1d), 2: (DF.conv_transpose2d, F.conv_transpose2d),
          3: (DF.conv_transpose3d, F.conv_transpose3d)}


class Case:
    """One convolution: ``transposed`` picks conv_transposeNd; ``x`` and ``w`` are shapes."""

    def __init__(self, name, rank, x, w, transposed=False, bias=True, channels_last=False,
                 target=None, **kwargs):
        self.name, self.rank, self.x, self.w = name, rank, x, w
        self.transposed, self.bias, self.channels_last = transposed, bias, channels_last
        self.target, self.kwargs = target, kwargs
        self.dlkern, self.torch = (CONV_T if transposed else CONV)[rank]

    def c_out(self):
        groups = self.kwargs.get("groups", 1)
        return self.w[1] * groups if self.transposed else self.w[0]

    def inputs(self, dtype, seed=0):
        g = torch.Generator().manual_seed(seed)
        shapes = [self.x, self.w] + ([(self.c_out(),)] if self.bias else [])
        ts = [torch.randn(s, generator=g, dtype=torch.float64).to(device(), dtype) for s in shapes]
        if self.channels_last:
            fmt = torch.channels_last if len(self.x) == 4 else torch.channels_last_3d
            ts[0] = ts[0].contiguous(memory_format=fmt)
        return ts

    def fns(self):
        def run(fn):
            return lambda x, w, b=None: fn(x, w, b, **self.kwargs)

        return run(self.dlkern), run(self.torch)

    def flops(self):
        """2 * multiply-adds of the forward."""
        groups = self.kwargs.get("groups", 1)
        with torch.no_grad():
            meta = [torch.empty(s, device="meta") for s in (self.x, self.w)]
            out = self.torch(*meta, None, **self.kwargs)
        if self.transposed:  # every input element meets every weight element of its group
            return 2 * math.prod(self.x) * self.w[1] * math.prod(self.w[2:])
        return 2 * math.prod(out.shape) * (self.x[1] // groups) * math.prod(self.w[2:])


CHECKS = [
    Case("conv2d N2 C16->24 15x17 k3 p1", 2, (2, 16, 15, 17), (24, 16, 3, 3), padding=1),
    Case("conv2d channels_last N2 C32->24 14x13 k3 s2 p1 g2", 2, (2, 32, 14, 13), (24, 16, 3, 3),
         channels_last=True, stride=2, padding=1, groups=2),
    Case("conv2d stem N2 C3->16 23x21 k7 s2 p3", 2, (2, 3, 23, 21), (16, 3, 7, 7), stride=2,
         padding=3),
    Case("conv2d N3 C8->16 40x40 k3 p1 (split weight gradient)", 2, (3, 8, 40, 40), (16, 8, 3, 3),
         padding=1),
    Case("conv1d N2 C32->32 L100 k5 p4 d2", 1, (2, 32, 100), (32, 32, 5), padding=4, dilation=2),
    Case("conv3d N2 C8->16 5x9x9 k3 p1", 3, (2, 8, 5, 9, 9), (16, 8, 3, 3, 3), padding=1),
    Case("conv_transpose2d N2 C32->16 9x9 k4 s2 p1", 2, (2, 32, 9, 9), (32, 16, 4, 4),
         transposed=True, stride=2, padding=1),
    Case("conv_transpose1d N2 C16->8 L31 k3 s3 p1 op2 g2", 1, (2, 16, 31), (16, 4, 3),
         transposed=True, stride=3, padding=1, output_padding=2, groups=2),
    Case("conv_transpose3d N1 C8->8 4x5x5 k3 s2 p1 d(1,2,1)", 3, (1, 8, 4, 5, 5), (8, 8, 3, 3, 3),
         transposed=True, stride=2, padding=1, dilation=(1, 2, 1), bias=False),
]


def _check_case(ctx, case, dtype):
    dlkern_fn, torch_fn = case.fns()
    base = case.inputs(torch.float64)
    ins64 = [t.clone().requires_grad_() for t in base]
    ins_torch = [t.detach().to(dtype).requires_grad_() for t in base]
    ins = [t.detach().to(dtype).requires_grad_() for t in base]
    ref64 = torch_fn(*ins64)
    ref = torch_fn(*ins_torch)
    out = dlkern_fn(*ins)
    ctx.check(f"{case.name} fwd", dtype, out, ref64, ref)
    g = torch.Generator().manual_seed(1)
    grad = torch.randn(tuple(ref64.shape), generator=g, dtype=torch.float64).to(device())
    g64 = torch.autograd.grad(ref64, ins64, grad)
    g_torch = torch.autograd.grad(ref, ins_torch, grad.to(dtype))
    g_dl = torch.autograd.grad(out, ins, grad.to(dtype))
    for arg, a, e, t in zip(("input", "weight", "bias"), g_dl, g64, g_torch):
        ctx.check(f"{case.name} grad {arg}", dtype, a, e, t)


def check(ctx, dtypes=CHECK_DTYPES, cases=CHECKS):
    with strict():
        for case in cases:
            for dtype in dtypes:
                try:
                    _check_case(ctx, case, dtype)
                except Exception as exc:  # a failing case is reported, the others still run
                    ctx.check_failed(case.name, dtype, exc)


# ---------------------------------------------------------------- timings

TARGETS = {"core": {torch.float16: "≥0.9x", torch.float32: "≥0.8x"},
           "stem": {torch.float16: "≥1.0x", torch.float32: "≥1.0x"}}

TIMINGS = [
    Case("conv2d N32 C64->64 56x56 k3 p1", 2, (32, 64, 56, 56), (64, 64, 3, 3), target="core",
         padding=1),
    Case("conv2d N64 C256->256 14x14 k3 p1", 2, (64, 256, 14, 14), (256, 256, 3, 3),
         target="core", padding=1),
    Case("conv2d N8 C3->64 224x224 k7 s2 p3", 2, (8, 3, 224, 224), (64, 3, 7, 7), target="stem",
         stride=2, padding=3),
    Case("conv_transpose2d N16 C128->64 28x28 k4 s2 p1", 2, (16, 128, 28, 28), (128, 64, 4, 4),
         transposed=True, target="core", stride=2, padding=1),
    Case("conv1d N32 C128->128 L1024 k5 p2", 1, (32, 128, 1024), (128, 128, 5), target="core",
         padding=2),
    Case("conv3d N4 C16->32 16x56x56 k3 p1", 3, (4, 16, 16, 56, 56), (32, 16, 3, 3, 3),
         target="core", padding=1),
]


def _time_case(ctx, case, dtype):
    dlkern_fn, torch_fn = case.fns()
    target = TARGETS[case.target][dtype]
    flops = case.flops()
    with torch.no_grad():
        ins = case.inputs(dtype)
        ctx.time(case.name, dtype, "fwd", lambda: torch_fn(*ins), lambda: dlkern_fn(*ins),
                 flops=flops, target=target)
    ins = [t.requires_grad_() for t in case.inputs(dtype)]
    with torch.no_grad():
        out_shape = tuple(torch_fn(*ins).shape)
    grad = torch.randn(out_shape, device=device(), dtype=dtype)

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(*ins), ins, grad)

    ctx.time(case.name, dtype, "fwd+bwd", fwd_bwd(torch_fn), fwd_bwd(dlkern_fn), flops=3 * flops,
             target=target)


def time(ctx, dtypes=TIME_DTYPES, cases=TIMINGS):
    with strict():
        for dtype in dtypes:
            for case in cases:
                _time_case(ctx, case, dtype)
