"""Bad-input cases of the separable convolutions, run by bad_input_battery.py.

torch's side is the same computation done with torch's convolutions (the separable ops have no
torch twin); each case must raise the same exception type on both sides, or give the same result
(the edge-case classes of bad_inputs_conv.py: empty dimensions, dtypes, NaN and infinities).
"""
import torch
import torch.nn.functional as F

import dlkern.functional as DF
import dlkern.nn as dnn
from bad_input_battery import forward_backward, not_strict, poisoned

NAN, INF = float("nan"), float("inf")

# Cases that fail today (test_bad_inputs.py expects them to, until the kernels are fixed): none.
KNOWN = {}

x4 = torch.randn(2, 4, 8, 8)
x3 = torch.randn(2, 4, 16)
wd = torch.randn(8, 1, 3, 3)
wp = torch.randn(6, 8, 1, 1)
wv = torch.randn(5, 4, 3, 1)
wh = torch.randn(6, 5, 1, 3)


def _torch_ds(nsp, x, d_w, p_w, d_b=None, p_b=None, stride=1, padding=0, dilation=1):
    conv = {1: F.conv1d, 2: F.conv2d}[nsp]
    groups = x.shape[-nsp - 1] if isinstance(x, torch.Tensor) and x.dim() >= nsp + 1 else 1
    return conv(conv(x, d_w, d_b, stride, padding, dilation, groups), p_w, p_b)


def _spatial_params(stride, padding, dilation):
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    sh, sw = pair(stride)
    dh, dw = pair(dilation)
    if isinstance(padding, str):
        return ((sh, 1), padding, (dh, 1)), ((1, sw), padding, (1, dw))
    ph, pw = pair(padding)
    return ((sh, 1), (ph, 0), (dh, 1)), ((1, sw), (0, pw), (1, dw))


def _torch_spatial(x, w_v, w_h, b_v=None, b_h=None, stride=1, padding=0, dilation=1):
    (s1, p1, d1), (s2, p2, d2) = _spatial_params(stride, padding, dilation)
    return F.conv2d(F.conv2d(x, w_v, b_v, s1, p1, d1), w_h, b_h, s2, p2, d2)


def cases():
    """{name: (torch call, dlkern call)} for the separable convolutions."""
    def ds(*args, **kwargs):
        return (lambda: _torch_ds(2, *args, **kwargs),
                lambda: DF.depthwise_separable_conv2d(*args, **kwargs))

    def ds1(*args, **kwargs):
        return (lambda: _torch_ds(1, *args, **kwargs),
                lambda: DF.depthwise_separable_conv1d(*args, **kwargs))

    def sp(*args, **kwargs):
        return (lambda: _torch_spatial(*args, **kwargs),
                lambda: DF.spatial_separable_conv2d(*args, **kwargs))

    def dw(x, w, b=None, stride=1, padding=0, dilation=1):
        return (lambda: F.conv2d(x, w, b, stride, padding, dilation, x.shape[-3]),
                lambda: DF.conv2d(x, w, b, stride, padding, dilation, x.shape[-3]))

    cases = {
        "depthwise: stride 0": dw(x4, wd, stride=0),
        "depthwise: negative padding": dw(x4, wd, padding=-1),
        "depthwise: dilation 0": dw(x4, wd, dilation=0),
        "depthwise: weight not (C*m, 1, k, k)": dw(x4, torch.randn(8, 2, 3, 3)),
        "depthwise: out channels not a multiple": dw(x4, torch.randn(6, 1, 3, 3)),
        "depthwise: kernel larger than input": dw(x4[..., :2, :2], wd),
        "depthwise: bias of wrong size": dw(x4, wd, torch.randn(5)),
        "depthwise: same with stride": dw(x4, wd, stride=2, padding="same"),
        "ds: stride 0": ds(x4, wd, wp, stride=0),
        "ds: negative padding": ds(x4, wd, wp, padding=-2),
        "ds: dilation 0": ds(x4, wd, wp, dilation=0),
        "ds: unknown padding string": ds(x4, wd, wp, padding="full"),
        "ds: same with stride": ds(x4, wd, wp, stride=2, padding="same"),
        "ds: depthwise weight in-channels not 1": ds(x4, torch.randn(8, 2, 3, 3), wp),
        "ds: depthwise out channels not a multiple": ds(x4, torch.randn(6, 1, 3, 3), wp),
        "ds: pointwise channels mismatch": ds(x4, wd, torch.randn(6, 5, 1, 1)),
        "ds: pointwise weight rank": ds(x4, wd, torch.randn(6, 8)),
        "ds: depthwise bias of wrong size": ds(x4, wd, wp, torch.randn(7)),
        "ds: pointwise bias of wrong size": ds(x4, wd, wp, None, torch.randn(7)),
        "ds: pointwise bias of wrong rank": ds(x4, wd, wp, None, torch.randn(6, 1)),
        "ds: pointwise weight dtype": ds(x4, wd, wp.double()),
        "ds: depthwise weight dtype": ds(x4, wd.double(), wp),
        "ds: pointwise bias dtype": ds(x4, wd, wp, None, torch.randn(6).double()),
        "ds: kernel larger than input": ds(x4[..., :2, :2], wd, wp),
        "ds: input rank too low": ds(x4[0, 0], wd, wp),
        "ds: input rank too high": ds1(x4, torch.randn(8, 1, 3), torch.randn(6, 8, 1)),
        "ds: stride of wrong length": ds(x4, wd, wp, stride=(1, 1, 1)),
        "ds: float stride": ds(x4, wd, wp, stride=1.5),
        "ds: input not a tensor": ds([[1.0]], wd, wp),
        "ds1: dilated kernel larger than input": ds1(x3[..., :5], torch.randn(8, 1, 3),
                                                     torch.randn(6, 8, 1), dilation=3),
        "ds1: unbatched channel mismatch": ds1(torch.randn(3, 10), torch.randn(8, 1, 3),
                                               torch.randn(6, 8, 1)),
        "sp: stride 0": sp(x4, wv, wh, stride=0),
        "sp: negative padding": sp(x4, wv, wh, padding=(-1, 0)),
        "sp: dilation 0": sp(x4, wv, wh, dilation=(1, 0)),
        "sp: same with stride": sp(x4, wv, wh, stride=(1, 2), padding="same"),
        "sp: unknown padding string": sp(x4, wv, wh, padding="full"),
        "sp: vertical in-channels mismatch": sp(x4, torch.randn(5, 3, 3, 1), wh),
        "sp: mid channels mismatch": sp(x4, wv, torch.randn(6, 4, 1, 3)),
        "sp: vertical bias of wrong size": sp(x4, wv, wh, torch.randn(4)),
        "sp: horizontal bias of wrong size": sp(x4, wv, wh, None, torch.randn(5)),
        "sp: weight dtype": sp(x4, wv.double(), wh),
        "sp: horizontal weight rank": sp(x4, wv, torch.randn(6, 5, 3)),
        "sp: kernel taller than input": sp(x4[..., :2, :], wv, wh),
        "sp: input rank": sp(x3, wv, wh),
    }
    # Constructor errors. torch's side: the same arguments given to the torch convs that hold
    # the parameters (the modules have no torch twin).
    module_cases = [
        ("SeparableConv2d same with stride",
         lambda m: m.SeparableConv2d(4, 6, 3, stride=2, padding="same"),
         lambda: torch.nn.Conv2d(4, 4, 3, stride=2, padding="same", groups=4)),
        ("SeparableConv2d bad padding_mode",
         lambda m: m.SeparableConv2d(4, 6, 3, padding_mode="mirror"),
         lambda: torch.nn.Conv2d(4, 4, 3, groups=4, padding_mode="mirror")),
        ("SeparableConv1d bad padding string",
         lambda m: m.SeparableConv1d(4, 6, 3, padding="foo"),
         lambda: torch.nn.Conv1d(4, 4, 3, padding="foo", groups=4)),
        ("SeparableConv2d zero in_channels",
         lambda m: m.SeparableConv2d(0, 6, 3),
         lambda: torch.nn.Conv2d(0, 0, 3, groups=0)),
        ("SpatialSeparableConv2d same with stride",
         lambda m: m.SpatialSeparableConv2d(4, 6, 3, stride=2, padding="same"),
         lambda: torch.nn.Conv2d(4, 6, (3, 1), stride=(2, 1), padding="same")),
        ("SpatialSeparableConv2d bad padding string",
         lambda m: m.SpatialSeparableConv2d(4, 6, 3, padding="foo"),
         lambda: torch.nn.Conv2d(4, 6, (3, 1), padding="foo")),
    ]
    for name, make, torch_make in module_cases:
        cases[name] = (torch_make, lambda make=make: make(dnn))
    module = dnn.SeparableConv2d(4, 6, 3)
    torch_module = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=4, bias=False),
                                       torch.nn.Conv2d(4, 6, 1))
    cases["module wrong input channels"] = (lambda: torch_module(torch.randn(1, 3, 8, 8)),
                                            lambda: module(torch.randn(1, 3, 8, 8)))
    cases.update(edge_cases())
    return cases


def _depthwise(x, w, b=None, **kwargs):
    return F.conv2d(x, w, b, groups=x.shape[1], **kwargs)


def _dl_depthwise(x, w, b=None, **kwargs):
    return DF.conv2d(x, w, b, groups=x.shape[1], **kwargs)


def edge_cases():
    g = torch.Generator().manual_seed(3)
    r = lambda *shape: torch.randn(shape, generator=g)  # noqa: E731
    x, d_w, d_b, p_w, p_b = r(2, 4, 7, 6), r(8, 1, 3, 3), r(8), r(6, 8, 1, 1), r(6)
    v_w, h_w, v_b, h_b = r(5, 4, 3, 1), r(6, 5, 1, 3), r(5), r(6)
    f64 = torch.float64

    def pair(reference, dlkern, tensors, **kwargs):
        """Output and every gradient, against the torch composition in float64."""
        return (forward_backward(reference, tensors, kwargs, f64), forward_backward(dlkern, tensors, kwargs))

    ds = lambda *t, **k: pair(lambda *a, **kw: _torch_ds(2, *a, **kw), DF.depthwise_separable_conv2d, t, **k)  # noqa: E731
    sp = lambda *t, **k: pair(_torch_spatial, DF.spatial_separable_conv2d, t, **k)  # noqa: E731
    dw = lambda *t, **k: pair(_depthwise, _dl_depthwise, t, **k)  # noqa: E731
    longs = (torch.randint(-3, 4, (2, 4, 7, 6), generator=g), torch.randint(-3, 4, (8, 1, 3, 3), generator=g),
             torch.randint(-3, 4, (6, 8, 1, 1), generator=g))
    return {
        "depthwise: empty batch": dw(r(0, 4, 7, 6), d_w, d_b, padding=1),
        "depthwise: zero channels": (lambda: _depthwise(r(2, 0, 7, 6), r(0, 1, 3, 3)),
                                     lambda: _dl_depthwise(r(2, 0, 7, 6), r(0, 1, 3, 3))),
        "depthwise: NaN and infinities in the input": dw(poisoned(x, {3: NAN, 40: INF, 77: -INF}), d_w, d_b, padding=1),
        "depthwise: NaN and infinity in the weight": dw(x, poisoned(d_w, {1: NAN, 12: INF}), d_b, padding=1),
        "depthwise: NaN and infinity in the bias, strided": dw(x, d_w, poisoned(d_b, {0: INF, 5: NAN}), stride=2),
        "ds: empty batch": ds(r(0, 4, 7, 6), d_w, p_w, d_b, p_b, padding=1),
        "ds: zero-size kernel": (lambda: _torch_ds(2, x, r(8, 1, 0, 3), p_w),
                                 lambda: DF.depthwise_separable_conv2d(x, r(8, 1, 0, 3), p_w)),
        "ds: empty spatial axis": (lambda: _torch_ds(2, r(2, 4, 0, 6), d_w, p_w, padding=1),
                                   lambda: DF.depthwise_separable_conv2d(r(2, 4, 0, 6), d_w, p_w, padding=1)),
        "ds: int64 tensors (torch's kernels)": (lambda: _torch_ds(2, *longs),
                                                not_strict(lambda: DF.depthwise_separable_conv2d(*longs))),
        "ds: NaN and infinities in the input": ds(poisoned(x, {3: NAN, 40: INF, 77: -INF}), d_w, p_w, d_b, p_b, padding=1),
        "ds: NaN and infinity in the weights": ds(x, poisoned(d_w, {4: NAN}), poisoned(p_w, {9: INF}), d_b, p_b, padding=1),
        "ds: NaN and infinity in the biases": ds(x, d_w, p_w, poisoned(d_b, {1: INF}), poisoned(p_b, {3: NAN})),
        "ds1: NaN and infinities, strided dilated": pair(
            lambda *a, **kw: _torch_ds(1, *a, **kw), DF.depthwise_separable_conv1d,
            (poisoned(r(2, 4, 11), {2: NAN, 30: -INF}), r(8, 1, 3), r(6, 8, 1), r(8), r(6)),
            stride=2, dilation=2, padding=1),
        "sp: empty batch": sp(r(0, 4, 7, 6), v_w, h_w, v_b, h_b, padding=1),
        "sp: empty spatial axis": (lambda: _torch_spatial(r(2, 4, 7, 0), v_w, h_w, padding=1),
                                   lambda: DF.spatial_separable_conv2d(r(2, 4, 7, 0), v_w, h_w, padding=1)),
        "sp: NaN and infinities in the input": sp(poisoned(x, {3: NAN, 40: INF, 77: -INF}), v_w, h_w, v_b, h_b, padding=1),
        "sp: NaN and infinity in the weights": sp(x, poisoned(v_w, {2: NAN}), poisoned(h_w, {7: INF}), v_b, h_b, padding=(1, 1)),
        "sp: NaN and infinity in the biases, strided": sp(x, v_w, h_w, poisoned(v_b, {0: NAN}), poisoned(h_b, {2: -INF}),
                                                          stride=2),
    }
