"""Bad-input cases of transposed convolution, run by bad_input_battery.py."""
import torch
import torch.nn.functional as F

import dlkern.functional as DF
import dlkern.nn as dnn

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
    return cases
