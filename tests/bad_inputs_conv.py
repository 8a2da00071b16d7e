"""Bad-input and edge cases of the convolution family, run by bad_input_battery.py.

Beyond the argument errors, the classes of torch's OpInfo error_inputs and sample_inputs: empty
dimensions of every kind, dtype and device mismatches, dtypes dlkern has no kernel for (they fall
back to torch), NaN and infinities (forward and gradients, against torch in float64, the tests'
reference: zero padding is zeros there, so a NaN weight reaches every output of its channel; torch's
float32 oneDNN path skips the padded taps instead).
"""
import torch
import torch.nn.functional as F

import dlkern.functional as DF
import dlkern.nn as dnn
from bad_input_battery import forward_backward, not_strict, poisoned

NAN, INF = float("nan"), float("inf")

x4 = torch.randn(2, 4, 8, 8)
w4 = torch.randn(6, 4, 3, 3)


def cases():
    """(name, torch call, dlkern call) for convolution."""
    def both(fn_name, *args, **kwargs):
        return (lambda: getattr(F, fn_name)(*args, **kwargs),
                lambda: getattr(DF, fn_name)(*args, **kwargs))

    cases = {
        "stride 0": both("conv2d", x4, w4, stride=0),
        "negative stride": both("conv2d", x4, w4, stride=(1, -1)),
        "negative padding": both("conv2d", x4, w4, padding=-1),
        "dilation 0": both("conv2d", x4, w4, dilation=0),
        "groups 0": both("conv2d", x4, w4, groups=0),
        "negative groups": both("conv2d", x4, w4, groups=-2),
        "groups do not divide in_channels": both("conv2d", x4, w4, groups=2),
        "groups do not divide out_channels": both("conv2d", x4, torch.randn(5, 2, 3, 3), groups=2),
        "input channels mismatch": both("conv2d", x4, torch.randn(6, 3, 3, 3)),
        "same with stride": both("conv2d", x4, w4, stride=2, padding="same"),
        "unknown padding string": both("conv2d", x4, w4, padding="full"),
        "stride of wrong length": both("conv2d", x4, w4, stride=(1, 1, 1)),
        "padding of wrong length": both("conv2d", x4, w4, padding=(1, 1, 1)),
        "dilation of wrong length": both("conv3d", torch.randn(1, 4, 5, 5, 5), torch.randn(2, 4, 1, 1, 1), dilation=(1, 2)),
        "bias of wrong size": both("conv2d", x4, w4, torch.randn(5)),
        "bias of wrong rank": both("conv2d", x4, w4, torch.randn(6, 1)),
        "bias dtype mismatch": both("conv2d", x4, w4, torch.randn(6).double()),
        "weight dtype mismatch": both("conv2d", x4, w4.double()),
        "kernel larger than input": both("conv2d", x4[:, :, :2, :2], w4),
        "dilated kernel larger than input": both("conv1d", torch.randn(1, 2, 5), torch.randn(2, 2, 3), dilation=3),
        "input rank too low": both("conv2d", x4[0, 0], w4),
        "input rank too high": both("conv1d", x4, torch.randn(6, 4, 3)),
        "weight rank wrong": both("conv2d", x4, w4[0]),
        "float stride": both("conv2d", x4, w4, stride=1.5),
        "input not a tensor": both("conv2d", [[1.0]], w4),
        "unbatched channel mismatch": both("conv1d", torch.randn(3, 10), torch.randn(2, 4, 3)),
    }
    for mod_name, args, kwargs in [
        ("Conv2d", (4, 6, 3), dict(stride=2, padding="same")),
        ("Conv2d", (4, 6, 3), dict(padding="foo")),
        ("Conv2d", (4, 6, 3), dict(groups=3)),
        ("Conv2d", (4, 6, 3), dict(padding_mode="mirror")),
        ("Conv1d", (4, 6, 3), dict(groups=0)),
        ("Conv3d", (4, 6, 0), dict()),
    ]:
        cases[f"{mod_name}{args}{kwargs}"] = (
            lambda m=mod_name, a=args, k=kwargs: getattr(torch.nn, m)(*a, **k),
            lambda m=mod_name, a=args, k=kwargs: getattr(dnn, m)(*a, **k),
        )
    module = dnn.Conv2d(4, 6, 3)
    torch_module = torch.nn.Conv2d(4, 6, 3)
    cases["module wrong input channels"] = (lambda: torch_module(torch.randn(1, 3, 8, 8)),
                                            lambda: module(torch.randn(1, 3, 8, 8)))
    cases.update(edge_cases(both))
    return cases


def empty_sum_conv(fn_name):
    """torch's convolution ``fn_name`` extended to zero input channels as the empty sum (the bias,
    or zeros): computed by torch with one zero channel per group added to input and weight."""
    def conv(x, w, b=None, groups=1, **kwargs):
        unbatched = x.dim() == w.dim() - 1
        x = x.unsqueeze(0) if unbatched else x
        x = torch.cat([x, x.new_zeros((x.shape[0], groups) + tuple(x.shape[2:]))], 1)
        w = torch.cat([w, w.new_zeros((w.shape[0], 1) + tuple(w.shape[2:]))], 1)
        out = getattr(F, fn_name)(x, w, b, groups=groups, **kwargs)
        return out.squeeze(0) if unbatched else out

    return conv


def edge_cases(both):
    g = torch.Generator().manual_seed(1)
    r = lambda *shape: torch.randn(shape, generator=g)  # noqa: E731
    x, w, b = r(2, 4, 7, 6), r(6, 4, 3, 3), r(6)

    def fwd_bwd(fn_name, tensors, **kwargs):
        """Output and every gradient, against torch in float64."""
        return (forward_backward(getattr(F, fn_name), tensors, kwargs, torch.float64),
                forward_backward(getattr(DF, fn_name), tensors, kwargs))

    zero_channels = ("torch returns zero output channels for zero input channels; dlkern returns "
                     "the empty sum, (N, C_out, ...) filled with the bias")
    longs = (torch.randint(-3, 4, (2, 4, 7, 6), generator=g), torch.randint(-3, 4, (6, 4, 3, 3), generator=g))
    meta = (torch.empty(2, 4, 7, 6, device="meta"), torch.empty(6, 4, 3, 3, device="meta"))
    return {
        # empty dimensions
        "empty batch": fwd_bwd("conv2d", (r(0, 4, 7, 6), w, b), padding=1),
        "empty batch, conv3d": fwd_bwd("conv3d", (r(0, 4, 3, 4, 5), r(6, 4, 2, 1, 3), b)),
        "zero out_channels": both("conv2d", x, r(0, 4, 3, 3)),
        "zero out_channels, empty bias": both("conv2d", x, r(0, 4, 3, 3), r(0)),
        "zero-size kernel": both("conv2d", x, r(6, 4, 0, 3)),
        "empty spatial axis": both("conv2d", r(2, 4, 0, 6), w),
        "empty spatial axis, padded": both("conv2d", r(2, 4, 0, 6), w, padding=2),
        "empty spatial axis, conv1d": both("conv1d", r(2, 4, 0), r(6, 4, 1)),
        "zero in_channels": (forward_backward(empty_sum_conv("conv2d"), (r(2, 0, 7, 6), r(6, 0, 3, 3), b), dict(padding=1)),
                             forward_backward(DF.conv2d, (r(2, 0, 7, 6), r(6, 0, 3, 3), b), dict(padding=1)),
                             zero_channels),
        "zero in_channels, groups 2": (forward_backward(empty_sum_conv("conv2d"), (r(2, 0, 7, 6), r(6, 0, 3, 3)), dict(groups=2)),
                                       forward_backward(DF.conv2d, (r(2, 0, 7, 6), r(6, 0, 3, 3)), dict(groups=2)),
                                       zero_channels),
        "zero in_channels, unbatched conv1d": (lambda: empty_sum_conv("conv1d")(r(0, 8), r(3, 0, 3)),
                                               lambda: DF.conv1d(r(0, 8), r(3, 0, 3)), zero_channels),
        # dtypes and devices
        "input float64, weight float32": both("conv2d", x.double(), w),
        "bias float16": both("conv2d", x, w, b.half()),
        "int64 tensors (torch's kernel)": (lambda: F.conv2d(*longs), not_strict(lambda: DF.conv2d(*longs))),
        "bool tensors (torch's kernel)": (lambda: F.conv2d(x > 0, w > 0), not_strict(lambda: DF.conv2d(x > 0, w > 0))),
        "float16 on the CPU (torch's kernel)": (lambda: F.conv2d(x.half(), w.half()),
                                                not_strict(lambda: DF.conv2d(x.half(), w.half()))),
        "meta tensors (torch's kernel)": (lambda: F.conv2d(*meta), not_strict(lambda: DF.conv2d(*meta))),
        "input on meta, weight on the CPU": (lambda: _raise(RuntimeError),
                                             lambda: DF.conv2d(meta[0], w),
                                             "torch's meta kernels accept a meta tensor with CPU ones; "
                                             "dlkern raises for any two devices, as torch does for real ones"),
        # NaN and infinities, forward and gradients
        "NaN and infinities in the input": fwd_bwd("conv2d", (poisoned(x, {3: NAN, 40: INF, 77: -INF}), w, b), padding=1),
        "NaN and infinity in the weight": fwd_bwd("conv2d", (x, poisoned(w, {1: NAN, 40: INF}), b), padding=1),
        "NaN and infinity in the bias": fwd_bwd("conv2d", (x, w, poisoned(b, {2: INF, 4: NAN}))),
        "NaN and infinities, strided dilated grouped": fwd_bwd(
            "conv2d", (poisoned(x, {5: NAN, 50: -INF}), poisoned(r(6, 2, 2, 2), {9: INF}), b),
            stride=2, dilation=2, padding=1, groups=2),
        "NaN and infinities, conv1d": fwd_bwd("conv1d", (poisoned(r(2, 4, 9), {4: NAN, 20: INF}), r(6, 4, 3), b), padding=1),
        "NaN and infinities, conv3d": fwd_bwd("conv3d", (poisoned(r(1, 2, 3, 4, 5), {7: INF, 30: NAN}), r(3, 2, 2, 2, 2), r(3)), padding=1),
    }


def _raise(kind):
    raise kind("the documented behaviour is an error")
