"""Bad-input cases of the convolution family, run by bad_input_battery.py."""
import torch
import torch.nn.functional as F

import dlkern.functional as DF
import dlkern.nn as dnn

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
    return cases
