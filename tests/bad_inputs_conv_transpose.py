"""Bad-input and edge cases of transposed convolution, run by bad_input_battery.py (the edge-case
classes as in bad_inputs_conv.py)."""
import torch
import torch.nn.functional as F

import dlkern.functional as DF
import dlkern.nn as dnn
from bad_input_battery import forward_backward, not_strict, poisoned

NAN, INF = float("nan"), float("inf")

x4 = torch.randn(2, 4, 8, 8)
w4 = torch.randn(4, 3, 3, 3)


def cases():
    def both(fn_name, *args, **kwargs):
        return (lambda: getattr(F, fn_name)(*args, **kwargs),
                lambda: getattr(DF, fn_name)(*args, **kwargs))

    cases = {
        "output_padding >= stride and dilation": both("conv_transpose2d", x4, w4, stride=2, output_padding=2),
        "output_padding with stride 1": both("conv_transpose1d", torch.randn(1, 4, 5), torch.randn(4, 2, 3), output_padding=1),
        "negative output_padding": both("conv_transpose2d", x4, w4, output_padding=-1),
        "input channels mismatch": both("conv_transpose2d", x4, torch.randn(5, 3, 3, 3)),
        "groups do not divide weight": both("conv_transpose2d", x4, w4, groups=3),
        "bias of wrong size": both("conv_transpose2d", x4, w4, torch.randn(4)),
        "string padding": both("conv_transpose2d", x4, w4, padding="same"),
        "stride 0": both("conv_transpose2d", x4, w4, stride=0),
        "negative padding": both("conv_transpose2d", x4, w4, padding=-1),
        "groups 0": both("conv_transpose2d", x4, w4, groups=0),
        "weight dtype mismatch": both("conv_transpose2d", x4, w4.double()),
        "input rank wrong": both("conv_transpose2d", x4[0, 0], w4),
        "weight rank wrong": both("conv_transpose3d", torch.randn(1, 4, 3, 3, 3), w4),
        "output_padding of wrong length": both("conv_transpose2d", x4, w4, stride=2, output_padding=(1, 1, 1)),
    }
    m, tm = dnn.ConvTranspose2d(4, 3, 3, stride=2), torch.nn.ConvTranspose2d(4, 3, 3, stride=2)
    cases["output_size out of range"] = (lambda: tm(x4, output_size=[19, 19]), lambda: m(x4, output_size=[19, 19]))
    cases["output_size of wrong length"] = (lambda: tm(x4, output_size=[1, 2, 3]), lambda: m(x4, output_size=[1, 2, 3]))
    cases["padding_mode reflect"] = (lambda: torch.nn.ConvTranspose2d(4, 3, 3, padding_mode="reflect"),
                                     lambda: dnn.ConvTranspose2d(4, 3, 3, padding_mode="reflect"))
    cases.update(edge_cases(both))
    return cases


def edge_cases(both):
    g = torch.Generator().manual_seed(2)
    r = lambda *shape: torch.randn(shape, generator=g)  # noqa: E731
    x, w, b = r(2, 4, 5, 6), r(4, 3, 3, 3), r(3)

    def fwd_bwd(fn_name, tensors, **kwargs):
        """Output and every gradient, against torch in float64."""
        return (forward_backward(getattr(F, fn_name), tensors, kwargs, torch.float64),
                forward_backward(getattr(DF, fn_name), tensors, kwargs))

    longs = (torch.randint(-3, 4, (2, 4, 5, 6), generator=g), torch.randint(-3, 4, (4, 3, 3, 3), generator=g))
    return {
        "empty batch": fwd_bwd("conv_transpose2d", (r(0, 4, 5, 6), w, b), stride=2),
        "zero in_channels": both("conv_transpose2d", r(2, 0, 5, 6), r(0, 3, 3, 3)),
        "zero out_channels": both("conv_transpose2d", x, r(4, 0, 3, 3)),
        "zero-size kernel": both("conv_transpose2d", x, r(4, 3, 3, 0)),
        "empty spatial axis": both("conv_transpose2d", r(2, 4, 0, 6), w),
        "input float64, weight float32": both("conv_transpose2d", x.double(), w),
        "int64 tensors (torch's kernel)": (lambda: F.conv_transpose2d(*longs),
                                           not_strict(lambda: DF.conv_transpose2d(*longs))),
        "NaN and infinities in the input": fwd_bwd(
            "conv_transpose2d", (poisoned(x, {3: NAN, 40: INF, 47: -INF}), w, b), stride=2, padding=1,
            output_padding=1),
        "NaN and infinity in the weight": fwd_bwd("conv_transpose2d", (x, poisoned(w, {1: NAN, 30: INF}), b),
                                                  stride=2),
        "NaN and infinity in the bias": fwd_bwd("conv_transpose2d", (x, w, poisoned(b, {0: INF, 2: NAN}))),
        "NaN and infinities, conv_transpose1d grouped": fwd_bwd(
            "conv_transpose1d", (poisoned(r(2, 4, 7), {2: NAN, 20: -INF}), r(4, 2, 3), r(4)), groups=2,
            dilation=2),
    }
