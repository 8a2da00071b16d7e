"""Depthwise convolution (conv with groups == C_in, any channel multiplier) against torch on
float64 copies, forward and every gradient: both forward algorithms (row streams over the phase
slab, channel vectors), every stride, kernel size, dilation, multiplier, rank and layout."""
import itertools
import math
import random

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlkern.functional as DF
from dlkern.kernels.numba import depthwise as numba_depthwise
from helpers import assert_close, check_against_torch, make_tensor

TORCH = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
SPATIAL = {1: (13,), 2: (7, 9), 3: (5, 6, 4)}
LAYOUTS = ["contiguous", "noncontiguous", "channels_last"]
ALGORITHMS = ["row_stream", "channel_vector", "same", "blocked"]


def depthwise(rank, x, w, b, **kwargs):
    # dlkern's conv routes groups == in_channels to the depthwise kernels.
    return getattr(DF, f"conv{rank}d")(x, w, b, groups=x.shape[-rank - 1], **kwargs)


def _out_shape(fn, *args):
    with torch.no_grad():
        return fn(*[a.detach().double() if a is not None else None for a in args]).shape


def run_depthwise(rank, x, w, b, **kwargs):
    c = x.shape[-rank - 1]
    ref = lambda x, w, b: TORCH[rank](x, w, b, groups=c, **kwargs)  # noqa: E731
    out_shape = _out_shape(ref, x, w, None)
    kvol = math.prod(w.shape[2:])
    per_channel = out_shape[0] * math.prod(out_shape[2:]) if len(out_shape) == rank + 2 \
        else math.prod(out_shape[1:])
    red = {"output": kvol, 0: w.shape[0] // c * kvol, 1: per_channel, 2: per_channel}
    return check_against_torch(lambda x, w, b: depthwise(rank, x, w, b, **kwargs), ref,
                               [x, w, b], red)


def _kernel(rank, k):
    return (k,) * rank if k != 2 else (2, 3, 1)[:rank]


def _padding(rank, padding):
    return tuple(range(1, rank + 1)) if padding == "asym" else padding


def _valid(c):
    """torch accepts the case: 'same' only with stride 1, the dilated kernel within the padded
    input."""
    if c["padding"] == "same":
        return c["stride"] == 1
    rank = c["rank"]
    pad = _padding(rank, c["padding"])
    pads = (0,) * rank if pad == "valid" else (pad,) * rank if isinstance(pad, int) else pad
    return all(size + 2 * p - c["dilation"] * (k - 1) - 1 >= 0
               for size, p, k in zip(SPATIAL[rank], pads, _kernel(rank, c["kernel"])))


def _sample(axes, count, seed):
    """A fixed random sample of the product of ``axes`` (the full product is too many cases)."""
    cases = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    cases = [c for c in cases if _valid(c)]
    return random.Random(seed).sample(cases, min(count, len(cases)))


def _case_id(c):
    return "-".join(f"{k}={str(v).replace('torch.', '')}" for k, v in c.items())


DW_AXES = dict(rank=[1, 2, 3], kernel=[1, 2, 3, 5], stride=[1, 2, 3],
               padding=[0, 1, "same", "valid", "asym"], dilation=[1, 2], multiplier=[1, 2, 3],
               bias=[True, False], batch=[0, 1, 3], layout=LAYOUTS,
               dtype=[torch.float32, torch.float64], algorithm=ALGORITHMS)
DW_SWEEP = _sample(DW_AXES, 110, 11)


@pytest.mark.parametrize("case", DW_SWEEP, ids=_case_id)
def test_depthwise_sweep(case, monkeypatch):
    monkeypatch.setenv("DLKERN_DEPTHWISE_ALGO", case["algorithm"])
    rank, c_in, m = case["rank"], 3, case["multiplier"]
    g = torch.Generator().manual_seed(1)
    x = make_tensor((case["batch"], c_in) + SPATIAL[rank], case["dtype"], case["layout"], g)
    w = make_tensor((c_in * m, 1) + _kernel(rank, case["kernel"]), case["dtype"], generator=g)
    b = make_tensor((c_in * m,), case["dtype"], generator=g) if case["bias"] else None
    run_depthwise(rank, x, w, b, stride=case["stride"], padding=_padding(rank, case["padding"]),
                  dilation=case["dilation"])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_depthwise_larger_planes_and_unbatched(rank, algorithm, monkeypatch):
    # Planes split into several row bands; channel counts past one channel block (16 lanes).
    monkeypatch.setenv("DLKERN_DEPTHWISE_ALGO", algorithm)
    g = torch.Generator().manual_seed(2)
    spatial = {1: (1000,), 2: (33, 47), 3: (6, 19, 23)}[rank]
    x = make_tensor((2, 18) + spatial, torch.float32, generator=g)
    w = make_tensor((18, 1) + (3,) * rank, torch.float32, generator=g)
    b = make_tensor((18,), torch.float32, generator=g)
    run_depthwise(rank, x, w, b, padding=1)
    run_depthwise(rank, x, w, b, stride=2, padding=2, dilation=2)
    out = run_depthwise(rank, x[0], w, b, padding="same")
    assert out.dim() == rank + 1


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_depthwise_real_kernel_sizes(layout):
    # ConvNeXt's 7x7, EfficientNet's 5x5 stride 2, Conformer's 1-d k31 (odd plane sizes)
    g = torch.Generator().manual_seed(5)
    x = make_tensor((2, 20, 23, 19), torch.float32, layout, g)
    for k, stride in ((7, 1), (5, 2), (3, 3)):
        w = make_tensor((20, 1, k, k), torch.float32, generator=g)
        run_depthwise(2, x, w, None, stride=stride, padding=k // 2)
    x1 = make_tensor((2, 8, 150), torch.float32, generator=g)
    for k in (9, 31):
        run_depthwise(1, x1, make_tensor((8, 1, k), torch.float32, generator=g), None,
                      padding=k // 2)


@pytest.mark.parametrize("rank", [1, 2])
def test_depthwise_padding_beyond_kernel(rank):
    # padding wider than the dilated kernel: output elements that see only padding (= bias)
    g = torch.Generator().manual_seed(3)
    x = make_tensor((2, 2) + SPATIAL[rank], torch.float64, generator=g)
    w = make_tensor((4, 1) + (2,) * rank, torch.float64, generator=g)
    b = make_tensor((4,), torch.float64, generator=g)
    for stride in (1, 2):
        run_depthwise(rank, x, w, b, stride=stride, padding=4)


def test_channels_last_output_layout():
    g = torch.Generator().manual_seed(4)
    x = make_tensor((2, 20, 9, 8), torch.float32, "channels_last", g)
    w = make_tensor((40, 1, 3, 3), torch.float32, generator=g)
    out = DF.conv2d(x, w, None, padding=1, groups=20)
    ref = F.conv2d(x, w, None, padding=1, groups=20)
    assert out.is_contiguous(memory_format=torch.channels_last) == \
        ref.is_contiguous(memory_format=torch.channels_last)


def test_weight_gradient_does_not_depend_on_thread_count():
    # per-lane partial sums reduced in a fixed order, per channel: the same bits on 1 or n threads
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 5, 1, 30, 31)).astype(np.float32)
    dy = rng.standard_normal((3, 10, 1, 15, 16)).astype(np.float32)
    args = ((10, 1, 1, 3, 3), (1, 2, 2), (0, 1, 1), (1, 1, 1), True)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = numba_depthwise.depthwise_backward_weight(x, dy, *args)
    finally:
        numba.set_num_threads(threads)
    many = numba_depthwise.depthwise_backward_weight(x, dy, *args)
    assert np.array_equal(one[0], many[0]) and np.array_equal(one[1], many[1])


@pytest.mark.parametrize("stride,multiplier,kernel", [(1, 1, 3), (1, 1, 5), (2, 1, 3), (1, 2, 3)])
def test_channels_last_gradients_in_place(stride, multiplier, kernel):
    # channels_last input and output gradient: the backward kernels read and write them in place
    g = torch.Generator().manual_seed(7)
    x = make_tensor((2, 18, 11, 10), torch.float32, "channels_last", g, requires_grad=True)
    w = make_tensor((18 * multiplier, 1, kernel, kernel), torch.float32, generator=g,
                    requires_grad=True)
    b = make_tensor((18 * multiplier,), torch.float32, generator=g, requires_grad=True)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    kwargs = dict(stride=stride, padding=kernel // 2, groups=18)
    out = DF.conv2d(x, w, b, **kwargs)
    ref = F.conv2d(x64, w64, b64, **kwargs)
    grad = make_tensor(tuple(out.shape), torch.float64, "channels_last", g)
    out.backward(grad.float())
    ref.backward(grad)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    pixels = 2 * math.prod(out.shape[2:])
    from helpers import assert_close
    assert_close(out, ref, kernel * kernel)
    assert_close(x.grad, x64.grad, multiplier * kernel * kernel, "grad of input")
    assert_close(w.grad, w64.grad, pixels, "grad of weight")
    assert_close(b.grad, b64.grad, pixels, "grad of bias")



@pytest.mark.parametrize("rank,stride,padding,dilation", [
    (2, 1, 1, 1), (2, 2, 1, 1), (2, 1, "same", 2), (2, 2, 0, 2), (2, (1, 2), (2, 0), 1),
    (3, 1, 1, 1), (3, 2, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_last_wide_pixels(rank, stride, padding, dilation, dtype):
    # channels_last with DIRECT_MIN_CHANNELS channels or more: depthwise_nhwc.direct_kernel
    c = numba_depthwise.DIRECT_MIN_CHANNELS[0]
    g = torch.Generator().manual_seed(11)
    spatial = {2: (7, 6), 3: (3, 5, 4)}[rank]
    x = make_tensor((2, c) + spatial, dtype, "channels_last", g)
    w = make_tensor((c, 1) + (3,) * rank, dtype, generator=g)
    b = make_tensor((c,), dtype, generator=g)
    run_depthwise(rank, x, w, b, stride=stride, padding=padding, dilation=dilation)
    run_depthwise(rank, x, w, None, stride=stride, padding=padding, dilation=dilation)
    if rank == 3:
        return  # NaN and infinities in 3-d: test_3d_nonfinite_weight_in_depth_padding
    # NaN and infinities: torch multiplies the zero padding too (0 * inf = NaN there)
    xp = _poisoned(x.double(), {(0, 0, 0, 0): math.nan, (1, 3, -1, -1): math.inf})
    wp = _poisoned(w.double(), {(0, 0, 0, 0): math.inf, (5, 0, 2, 2): -math.inf})
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    assert_same_pattern(depthwise(rank, xp, wp, None, **kwargs),
                        TORCH[rank](xp, wp, None, groups=c, **kwargs), 3 ** rank, "output")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_3d_nonfinite_weight_in_depth_padding(algorithm, monkeypatch, one_thread):
    # torch multiplies the zero depth padding by every tap (0 * inf = NaN there); the kernels
    # skip depth taps outside the input, so a non-finite weight pads the depth axis first
    monkeypatch.setenv("DLKERN_DEPTHWISE_ALGO", algorithm)
    g = torch.Generator().manual_seed(12)
    for layout, padding, stride in itertools.product(["contiguous", "channels_last"],
                                                     [1, (1, 0, 0), (2, 1, 1)], [1, 2]):
        x = make_tensor((2, 4, 3, 5, 4), torch.float64, layout, g)
        w = _poisoned(make_tensor((4, 1, 3, 3, 3), torch.float64, generator=g),
                      {(0, 0, 0, 1, 1): math.inf, (2, 0, 2, 0, 1): math.nan})
        assert_same_pattern(depthwise(3, x, w, None, padding=padding, stride=stride),
                            F.conv3d(x, w, None, padding=padding, stride=stride, groups=4), 27,
                            f"output ({layout}, padding {padding}, stride {stride})")

# NaN and infinities. torch's gradients are NaN or infinite exactly where one of the products it
# forms involves a NaN or an infinity; the kernels' zero padding (of the output gradient, or the
# junk columns past a row's end) must never be multiplied by one (0 * inf = NaN).

def assert_same_pattern(actual, expected, reduction, what):
    """NaN where torch has NaN, infinities of torch's sign where it has them, the finite
    elements close."""
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}")
    for name, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        diff = test(a) != test(e)
        if diff.any():
            idx = diff.nonzero()[0].tolist()
            raise AssertionError(f"{what}: {name} pattern differs at {idx} ({int(diff.sum())} "
                                 f"elements; dlkern {a[tuple(idx)].item()}, torch "
                                 f"{e[tuple(idx)].item()})")
    finite = torch.isfinite(e)
    assert_close(torch.where(finite, a, 0.0), torch.where(finite, e, 0.0), reduction, what)


NONFINITE_INPUT = {2: {(0, 0, 0, -1): math.inf, (0, 1, 3, 4): math.nan, (1, 2, -1, 0): -math.inf,
                       (1, 0, 2, -1): -math.inf, (1, 1, 0, 0): math.nan},
                   1: {(0, 0, -1): math.inf, (0, 1, 6): math.nan, (1, 2, 0): -math.inf,
                       (1, 0, -2): math.inf}}
NONFINITE_WEIGHT = {2: {(0, 0, 0, 0): math.nan, (1, 0, 2, 2): math.inf, (-1, 0, 1, 2): -math.inf},
                    1: {(0, 0, 0): math.nan, (1, 0, 2): math.inf, (-1, 0, 1): -math.inf}}


def _poisoned(t, where):
    t = t.clone()
    for idx, v in where.items():
        t[idx] = v
    return t


@pytest.fixture
def one_thread():
    # tiny planes: with several threads, waking the pool costs more than the work (the pattern
    # of NaN and infinities does not depend on the thread count)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


def _nonfinite_cases():
    for rank, stride, padding, dilation, m, layout in itertools.product(
            [1, 2], [1, 2], [0, 1, "same"], [1, 2], [1, 2], ["contiguous", "channels_last"]):
        if (padding == "same" and stride != 1) or (layout == "channels_last" and rank == 1):
            continue
        yield rank, stride, padding, dilation, m, layout


@pytest.mark.parametrize("poisoned", ["input", "weight"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_depthwise_nonfinite_pattern(algorithm, poisoned, monkeypatch, one_thread):
    monkeypatch.setenv("DLKERN_DEPTHWISE_ALGO", algorithm)
    g = torch.Generator().manual_seed(8)
    failures = []
    for rank, stride, padding, dilation, m, layout in _nonfinite_cases():
        spatial = {1: (13,), 2: (7, 9)}[rank]
        x = make_tensor((2, 3) + spatial, torch.float64, layout, g)
        w = make_tensor((3 * m, 1) + (3,) * rank, torch.float64, generator=g)
        if poisoned == "input":
            x = _poisoned(x, NONFINITE_INPUT[rank])
        else:
            w = _poisoned(w, NONFINITE_WEIGHT[rank])
        kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=3)
        xd, wd = x.clone().requires_grad_(), w.clone().requires_grad_()
        xt, wt = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = getattr(DF, f"conv{rank}d")(xd, wd, None, **kwargs)
        ref = TORCH[rank](xt, wt, None, **kwargs)
        grad = make_tensor(tuple(ref.shape), torch.float64, layout, g)
        out.backward(grad)
        ref.backward(grad)
        case = f"rank {rank} stride {stride} padding {padding} dilation {dilation} m {m} {layout}"
        pixels = 2 * math.prod(ref.shape[2:])
        for what, a, e, red in (("output", out, ref, 3 ** rank),
                                ("grad of input", xd.grad, xt.grad, m * 3 ** rank),
                                ("grad of weight", wd.grad, wt.grad, pixels)):
            try:
                assert_same_pattern(a, e, red, what)
            except AssertionError as err:
                failures.append(f"{case}: {err}")
    assert not failures, f"{len(failures)} mismatches:\n" + "\n".join(failures)


@pytest.mark.parametrize("poisoned", ["input", "weight"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_depthwise_separable_nonfinite(layout, poisoned, one_thread):
    # the fused kernels' depthwise gradients with NaN and infinities in the input (the weight
    # gradient) or in the depthwise weight (the input gradient)
    g = torch.Generator().manual_seed(9)
    failures = []
    for stride, padding, dilation, m in itertools.product([1, 2], [0, 1, "same"], [1, 2], [1, 2]):
        if padding == "same" and stride != 1:
            continue
        x = make_tensor((2, 3, 7, 9), torch.float64, layout, g)
        d_w = make_tensor((3 * m, 1, 3, 3), torch.float64, generator=g)
        if poisoned == "input":
            x = _poisoned(x, NONFINITE_INPUT[2])
        else:
            d_w = _poisoned(d_w, NONFINITE_WEIGHT[2])
        p_w = make_tensor((4, 3 * m, 1, 1), torch.float64, generator=g)
        d_b = make_tensor((3 * m,), torch.float64, generator=g)
        kwargs = dict(stride=stride, padding=padding, dilation=dilation)
        dl = [t.clone().requires_grad_() for t in (x, d_w, p_w, d_b)]
        th = [t.clone().requires_grad_() for t in (x, d_w, p_w, d_b)]
        out = DF.depthwise_separable_conv2d(dl[0], dl[1], dl[2], dl[3], None, **kwargs)
        mid = F.conv2d(th[0], th[1], th[3], groups=3, **kwargs)
        ref = F.conv2d(mid, th[2])
        # the gradient of a sum: the depthwise output's gradient is finite
        out.sum().backward()
        ref.sum().backward()
        case = f"stride {stride} padding {padding} dilation {dilation} m {m}"
        pixels = 2 * math.prod(ref.shape[2:])
        for what, a, e, red in (("output", out, ref, 9 * 3 * m),
                                ("grad of input", dl[0].grad, th[0].grad, 4 * 9 * m),
                                ("grad of depthwise weight", dl[1].grad, th[1].grad, 4 * pixels),
                                ("grad of pointwise weight", dl[2].grad, th[2].grad, pixels),
                                ("grad of depthwise bias", dl[3].grad, th[3].grad, 4 * pixels)):
            try:
                assert_same_pattern(a, e, red, what)
            except AssertionError as err:
                failures.append(f"{case}: {err}")
    assert not failures, f"{len(failures)} mismatches:\n" + "\n".join(failures)
