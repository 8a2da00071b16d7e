"""Depthwise, depthwise-separable and spatial separable convolution against torch (float64
reference: the same computation done with torch's convolutions), forward and every gradient."""
import itertools
import math
import random
import threading

import pytest
import torch
import torch.nn.functional as F

import dlkern
import dlkern.functional as DF
import dlkern.nn as dnn
import dlkern.ops.separable  # noqa: F401  (registers the dlkern:: ops that opcheck names)
from helpers import assert_close, check_against_torch, float64_copy, make_tensor

TORCH = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
DS = {1: DF.depthwise_separable_conv1d, 2: DF.depthwise_separable_conv2d}
SPATIAL = {1: (13,), 2: (7, 6), 3: (5, 6, 4)}
KERNEL = {1: (3,), 2: (3, 2), 3: (2, 3, 1)}
DTYPES = [torch.float32, torch.float64]
LAYOUTS = ["contiguous", "noncontiguous", "channels_last"]


def _padding(padding, rank):
    return tuple(range(1, rank + 1)) if padding == "asym" else padding


def _sample(axes, count, seed, keep=lambda c: True):
    """A fixed random sample of the product of ``axes`` (the full product is too many cases)."""
    cases = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    cases = [c for c in cases if keep(c) and not (c["padding"] == "same" and c["stride"] != 1)]
    return random.Random(seed).sample(cases, min(count, len(cases)))


def _case_id(c):
    return "-".join(f"{k}={str(v).replace('torch.', '')}" for k, v in c.items())


def _out_shape(fn, *args, **kwargs):
    with torch.no_grad():
        return fn(*[float64_copy(a) for a in args], **kwargs).shape


# ---------------------------------------------------------------- depthwise-separable


def run_dsconv(rank, x, wd, wp, bd, bp, **kwargs):
    c = x.shape[-rank - 1]

    def ref(x, wd, wp, bd, bp):
        return TORCH[rank](TORCH[rank](x, wd, bd, groups=c, **kwargs), wp, bp)

    out_shape = _out_shape(ref, x, wd, wp, None, None)
    kvol = math.prod(wd.shape[2:])
    cm, c_out = wd.shape[0], wp.shape[0]
    pixels = math.prod(out_shape[2:]) * out_shape[0] if len(out_shape) == rank + 2 \
        else math.prod(out_shape[1:])
    red = {"output": cm * kvol, 0: c_out * cm * kvol, 1: pixels * c_out, 2: pixels,
           3: pixels * c_out, 4: pixels}
    dl = lambda x, wd, wp, bd, bp: DS[rank](x, wd, wp, bd, bp, **kwargs)  # noqa: E731
    return check_against_torch(dl, ref, [x, wd, wp, bd, bp], red)


def dsconv_case(rank, c_in, m, c_out, batch, spatial, kernel, dtype, layout="contiguous",
                biases=(True, True), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = make_tensor((batch, c_in) + spatial, dtype, layout, g)
    wd = make_tensor((c_in * m, 1) + kernel, dtype, generator=g)
    wp = make_tensor((c_out, c_in * m) + (1,) * rank, dtype, generator=g)
    bd = make_tensor((c_in * m,), dtype, generator=g) if biases[0] else None
    bp = make_tensor((c_out,), dtype, generator=g) if biases[1] else None
    return x, wd, wp, bd, bp


DS_AXES = dict(rank=[1, 2], stride=[1, 2], padding=[0, 1, "same", "valid", "asym"],
               dilation=[1, 2], multiplier=[1, 2],
               biases=["both", "none", "depthwise", "pointwise"],
               batch=[0, 1, 3], layout=LAYOUTS, dtype=DTYPES)
DS_SWEEP = _sample(DS_AXES, 70, 12)
_BIASES = {"both": (True, True), "none": (False, False), "depthwise": (True, False),
           "pointwise": (False, True)}


@pytest.mark.parametrize("case", DS_SWEEP, ids=_case_id)
def test_depthwise_separable_sweep(case):
    rank = case["rank"]
    tensors = dsconv_case(rank, 3, case["multiplier"], 5, case["batch"], SPATIAL[rank],
                          KERNEL[rank], case["dtype"], case["layout"], _BIASES[case["biases"]])
    run_dsconv(rank, *tensors, stride=case["stride"], padding=_padding(case["padding"], rank),
               dilation=case["dilation"])


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_depthwise_separable_many_tiles(rank, batch):
    # Enough rows and channels that the forward splits each image into several row tiles.
    spatial = {1: (700,), 2: (37, 45)}[rank]
    tensors = dsconv_case(rank, 24, 2, 20, batch, spatial, (3,) * rank, torch.float32, seed=4)
    run_dsconv(rank, *tensors, padding=1)
    run_dsconv(rank, *tensors, stride=2, padding=2, dilation=2)


# ---------------------------------------------------------------- spatial separable


def _spatial_torch_args(stride, padding, dilation):
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    if isinstance(padding, str):
        pv = ph = padding
    else:
        p = (padding, padding) if isinstance(padding, int) else padding
        pv, ph = (p[0], 0), (0, p[1])
    return dict(stride=(sh, 1), padding=pv, dilation=(dh, 1)), \
        dict(stride=(1, sw), padding=ph, dilation=(1, dw))


def run_spatial(x, wv, wh, bv, bh, **kwargs):
    kv, kh = _spatial_torch_args(kwargs.get("stride", 1), kwargs.get("padding", 0),
                                 kwargs.get("dilation", 1))

    def ref(x, wv, wh, bv, bh):
        return F.conv2d(F.conv2d(x, wv, bv, **kv), wh, bh, **kh)

    out_shape = _out_shape(ref, x, wv, wh, None, None)
    c_mid, c_in, k_v = wv.shape[:3]
    c_out, k_h = wh.shape[0], wh.shape[3]
    pixels = math.prod(out_shape[-2:]) * (out_shape[0] if len(out_shape) == 4 else 1)
    mid_pixels = pixels * max(1, x.shape[-1] // max(1, out_shape[-1]))
    red = {"output": c_mid * c_in * k_v * k_h, 0: c_out * c_mid * k_v * k_h,
           1: mid_pixels * c_out * k_h, 2: pixels * c_in * k_v, 3: mid_pixels * c_out * k_h,
           4: pixels}
    def dl(x, wv, wh, bv, bh):
        return DF.spatial_separable_conv2d(x, wv, wh, bv, bh, **kwargs)

    return check_against_torch(dl, ref, [x, wv, wh, bv, bh], red)


def spatial_case(c_in, c_mid, c_out, batch, spatial, kernel, dtype, layout="contiguous",
                 biases=(True, True), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = make_tensor((batch, c_in) + spatial, dtype, layout, g)
    wv = make_tensor((c_mid, c_in, kernel[0], 1), dtype, generator=g)
    wh = make_tensor((c_out, c_mid, 1, kernel[1]), dtype, generator=g)
    bv = make_tensor((c_mid,), dtype, generator=g) if biases[0] else None
    bh = make_tensor((c_out,), dtype, generator=g) if biases[1] else None
    return x, wv, wh, bv, bh


SP_AXES = dict(kernel=[(3, 3), (2, 3), (3, 1)], stride=[1, 2, (1, 3)],
               padding=[0, 1, "same", "valid", (2, 1)], dilation=[1, (2, 1)],
               biases=["both", "none", "depthwise", "pointwise"], batch=[0, 1, 3],
               layout=LAYOUTS, dtype=DTYPES)
SP_SWEEP = _sample(SP_AXES, 60, 13)


@pytest.mark.parametrize("case", SP_SWEEP, ids=_case_id)
def test_spatial_separable_sweep(case):
    tensors = spatial_case(3, 4, 5, case["batch"], (8, 9), case["kernel"], case["dtype"],
                           case["layout"], _BIASES[case["biases"]])
    run_spatial(*tensors, stride=case["stride"], padding=case["padding"],
                dilation=case["dilation"])


@pytest.mark.parametrize("batch", [1, 2])
def test_spatial_separable_many_tiles(batch):
    tensors = spatial_case(16, 24, 12, batch, (41, 37), (5, 5), torch.float32, seed=5)
    run_spatial(*tensors, padding=2)
    run_spatial(*tensors, stride=(2, 3), padding=(3, 1), dilation=(1, 2))


def test_spatial_separable_unbatched_and_padding_beyond_kernel():
    x, wv, wh, bv, bh = spatial_case(2, 3, 2, 1, (5, 6), (2, 3), torch.float64, seed=6)
    out = run_spatial(x[0], wv, wh, bv, bh, padding=1)
    assert out.dim() == 3
    run_spatial(x, wv, wh, bv, bh, padding=4, stride=2)


def test_row_range_stays_inside_the_tile():
    """The spatial kernels zero and copy rows [oh0, lo) and [hi, oh1) of a tile's pack: lo and hi
    must lie inside the tile even where padding exceeds the rows a tile covers (a lo past oh1
    once wrote past the tile, into the next thread's buffer)."""
    from kernels.numba.separable import _row_range
    for oh0, oh1, sh, shift, h_in in itertools.product(range(4), range(1, 6), (1, 2, 3),
                                                       range(-9, 7), (1, 3, 5)):
        if oh1 <= oh0:
            continue
        lo, hi = _row_range(oh0, oh1, sh, shift, h_in)
        inside = [oh for oh in range(oh0, oh1) if 0 <= oh * sh + shift < h_in]
        assert oh0 <= lo <= hi <= oh1, (oh0, oh1, sh, shift, h_in, lo, hi)
        if inside:
            assert (lo, hi) == (inside[0], inside[-1] + 1), (oh0, oh1, sh, shift, h_in)
        else:
            assert lo == hi


# ---------------------------------------------------------------- gradcheck, registration


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(7)
    mk = lambda *s: make_tensor(s, torch.float64, generator=g, requires_grad=True)  # noqa: E731
    x = mk(2, 3, 6, 5)
    wd, bd = mk(6, 1, 3, 2), mk(6)
    assert torch.autograd.gradcheck(
        lambda x, w, b: DF.conv2d(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2), groups=3),
        (x, wd, bd), eps=1e-6, atol=1e-8)
    wp, bp = mk(4, 6, 1, 1), mk(4)
    assert torch.autograd.gradcheck(
        lambda *a: DF.depthwise_separable_conv2d(*a, stride=2, padding=1), (x, wd, wp, bd, bp),
        eps=1e-6, atol=1e-8)
    x1, wd1, wp1 = mk(2, 3, 9), mk(3, 1, 3), mk(2, 3, 1)
    assert torch.autograd.gradcheck(
        lambda *a: DF.depthwise_separable_conv1d(*a, padding="same", dilation=2),
        (x1, wd1, wp1), eps=1e-6, atol=1e-8)
    wv, wh, bv, bh = mk(4, 3, 3, 1), mk(2, 4, 1, 2), mk(4), mk(2)
    assert torch.autograd.gradcheck(
        lambda *a: DF.spatial_separable_conv2d(*a, stride=(1, 2), padding=(1, 1)),
        (x, wv, wh, bv, bh), eps=1e-6, atol=1e-8)


def test_only_some_inputs_require_grad():
    x, wd, wp, bd, bp = dsconv_case(2, 3, 2, 4, 2, (6, 7), (3, 3), torch.float64, seed=8)
    wp.requires_grad_()
    DF.depthwise_separable_conv2d(x, wd, wp, bd, bp, padding=1).sum().backward()
    assert x.grad is None and wd.grad is None and wp.grad is not None
    wpr = float64_copy(wp)
    F.conv2d(F.conv2d(x, wd, bd, padding=1, groups=3), wpr, bp).sum().backward()
    assert_close(wp.grad, wpr.grad, 2 * 42)
    x, wv, wh, bv, bh = spatial_case(3, 4, 2, 2, (6, 7), (3, 3), torch.float64, seed=9)
    x.requires_grad_()
    xr = float64_copy(x)
    DF.spatial_separable_conv2d(x, wv, wh, bv, bh, padding=1).sum().backward()
    F.conv2d(F.conv2d(xr, wv, bv, padding=(1, 0)), wh, bh, padding=(0, 1)).sum().backward()
    assert_close(x.grad, xr.grad, 64)


def test_custom_op_registration():
    g = torch.Generator().manual_seed(10)
    mk = lambda *s: make_tensor(s, torch.float32, generator=g, requires_grad=True)  # noqa: E731
    x = mk(2, 3, 7, 6)
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    wd, bd, wp, bp = mk(6, 1, 3, 3), mk(6), mk(4, 6, 1, 1), mk(4)
    for inp in (x, xc):
        torch.library.opcheck(torch.ops.dlkern.conv.default,
                              (inp, wd, bd, [2, 1], [1, 0], [1, 2], 3, [4, 2]))
        torch.library.opcheck(torch.ops.dlkern.depthwise_separable_conv.default,
                              (inp, wd, wp, bd, bp, [1, 1], [1, 1], [1, 1], [7, 6]))
        torch.library.opcheck(torch.ops.dlkern.spatial_separable_conv.default,
                              (inp, mk(5, 3, 3, 1), mk(4, 5, 1, 2), None, bp, [1, 2], [1, 0],
                               [1, 1], [7, 3]))


def test_dlkern_specific_shape_errors():
    # Shapes the two-conv reference accepts but these ops do not define (torch has no twin).
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(RuntimeError, match="weight_v"):
        DF.spatial_separable_conv2d(x, torch.randn(5, 4, 3, 2), torch.randn(6, 5, 1, 3))
    with pytest.raises(RuntimeError, match="weight_h"):
        DF.spatial_separable_conv2d(x, torch.randn(5, 4, 3, 1), torch.randn(6, 5, 2, 3))
    with pytest.raises(RuntimeError, match="1x1 pointwise_weight"):
        DF.depthwise_separable_conv2d(x, torch.randn(8, 1, 3, 3), torch.randn(6, 8, 3, 3))


def test_fallback_is_counted_or_strict(monkeypatch):
    x = torch.randn(1, 2, 5, 5).half()
    wd, wp = torch.randn(2, 1, 3, 3).half(), torch.randn(3, 2, 1, 1).half()
    wv, wh = torch.randn(3, 2, 3, 1).half(), torch.randn(3, 3, 1, 3).half()
    with pytest.raises(RuntimeError, match="DLKERN_STRICT"):
        DF.depthwise_separable_conv2d(x, wd, wp)
    with pytest.raises(RuntimeError, match="DLKERN_STRICT"):
        DF.spatial_separable_conv2d(x, wv, wh)
    monkeypatch.setenv("DLKERN_STRICT", "0")
    dlkern.reset_stats()
    assert DF.depthwise_separable_conv2d(x, wd, wp).dtype == torch.float16
    assert DF.spatial_separable_conv2d(x, wv, wh).dtype == torch.float16
    assert dlkern.stats()["fallbacks"] == {"depthwise_separable_conv": 1,
                                           "spatial_separable_conv": 1}
    dlkern.reset_stats()


def test_threads_calling_at_once():
    cases = [dsconv_case(2, 8, 2, 12, 3, (20 + i, 17), (3, 3), torch.float32, seed=i)
             for i in range(6)]
    results, errors = [None] * 6, []

    def work(i):
        try:
            x, wd, wp, bd, bp = cases[i]
            for _ in range(3):
                results[i] = DF.depthwise_separable_conv2d(x, wd, wp, bd, bp, padding=1)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (x, wd, wp, bd, bp), out in zip(cases, results):
        ref = F.conv2d(F.conv2d(x.double(), wd.double(), bd.double(), padding=1, groups=8),
                       wp.double(), bp.double())
        assert_close(out, ref, 9 * 16)


# ---------------------------------------------------------------- modules


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("rank", [1, 2])
def test_separable_modules(rank, mode):
    dl_cls = {1: dnn.SeparableConv1d, 2: dnn.SeparableConv2d}[rank]
    torch_cls = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d}[rank]
    torch.manual_seed(rank)
    mod = dl_cls(4, 6, 3, stride=1, padding=1, dilation=1, depth_multiplier=2, bias=True,
                 padding_mode=mode)
    assert list(mod.state_dict()) == ["depthwise.weight", "pointwise.weight", "pointwise.bias"]
    depthwise_ref = torch_cls(4, 8, 3, padding=1, groups=4, bias=False, padding_mode=mode).double()
    pointwise_ref = torch_cls(8, 6, 1).double()
    with torch.no_grad():
        depthwise_ref.weight.copy_(mod.depthwise.weight)
        pointwise_ref.weight.copy_(mod.pointwise.weight)
        pointwise_ref.bias.copy_(mod.pointwise.bias)
    x = make_tensor((2, 4) + SPATIAL[rank], torch.float32)
    x64 = float64_copy(x)
    out = mod(x)
    expected = pointwise_ref(depthwise_ref(x64))
    assert_close(out, expected, 8 * 9)
    out.sum().backward()
    expected.sum().backward()
    pixels = 2 * math.prod(SPATIAL[rank])
    assert_close(mod.depthwise.weight.grad, depthwise_ref.weight.grad, pixels * 6)
    assert_close(mod.pointwise.weight.grad, pointwise_ref.weight.grad, pixels)
    assert_close(mod.pointwise.bias.grad, pointwise_ref.bias.grad, pixels)
    assert_close(mod(x[0]), pointwise_ref(depthwise_ref(x64[0])), 8 * 9)
    back = dl_cls(4, 6, 3, padding=1, depth_multiplier=2, padding_mode=mode)
    back.load_state_dict(mod.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(),
                                                  mod.state_dict().values()))
    assert torch.equal(back(x), mod(x))


def test_separable_module_same_padding_no_bias():
    torch.manual_seed(0)
    mod = dnn.SeparableConv2d(3, 5, (4, 3), padding="same", dilation=(1, 2), bias=False)
    assert list(mod.state_dict()) == ["depthwise.weight", "pointwise.weight"]
    x = make_tensor((2, 3, 9, 10), torch.float32)
    ref = F.conv2d(F.conv2d(float64_copy(x), mod.depthwise.weight.double(), padding="same",
                            dilation=(1, 2), groups=3), mod.pointwise.weight.double())
    assert_close(mod(x), ref, 3 * 12)


@pytest.mark.parametrize("padding", [1, "same", (2, 0)])
def test_spatial_separable_module(padding):
    torch.manual_seed(1)
    mod = dnn.SpatialSeparableConv2d(4, 6, (3, 5), mid_channels=5, stride=1, padding=padding)
    assert list(mod.state_dict()) == ["vertical.weight", "vertical.bias", "horizontal.weight",
                                      "horizontal.bias"]
    assert mod.vertical.weight.shape == (5, 4, 3, 1) and mod.horizontal.weight.shape == (6, 5, 1, 5)
    x = make_tensor((2, 4, 9, 8), torch.float32)
    ref_v = torch.nn.Conv2d(4, 5, (3, 1), padding=mod.vertical.padding).double()
    ref_h = torch.nn.Conv2d(5, 6, (1, 5), padding=mod.horizontal.padding).double()
    ref_v.load_state_dict({k: v.double() for k, v in mod.vertical.state_dict().items()})
    ref_h.load_state_dict({k: v.double() for k, v in mod.horizontal.state_dict().items()})
    out = mod(x)
    expected = ref_h(ref_v(float64_copy(x)))
    assert_close(out, expected, 4 * 3 * 5 * 5)
    out.sum().backward()
    expected.sum().backward()
    assert_close(mod.vertical.weight.grad, ref_v.weight.grad, 2 * 72 * 30)
    assert_close(mod.horizontal.bias.grad, ref_h.bias.grad, 2 * 72)
    default = dnn.SpatialSeparableConv2d(4, 6, 3)
    assert default.vertical.out_channels == 6
    back = dnn.SpatialSeparableConv2d(4, 6, (3, 5), mid_channels=5, padding=padding)
    back.load_state_dict(mod.state_dict())
    assert torch.equal(back(x), mod(x))
