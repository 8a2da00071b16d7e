"""The Triton kernels of the separable family (kernels/triton/depthwise.py, separable.py) against
torch on float64 copies: depthwise convolution (through dlkern::conv with groups == C_in, and the
kernels called directly), fused depthwise-separable and spatial separable convolution, forward
and every gradient; plus an sm_90 compile of every kernel and autotune configuration.

Without a GPU the kernels run in Triton's interpreter (float32 only, tiny shapes: it is slow);
with one, on CUDA in all of TRITON_DTYPES.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import dlkern.functional as DF
from helpers import TRITON_DTYPES, assert_close, check_against_torch, make_tensor, run_isolated

TORCH = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@pytest.fixture(autouse=True)
def full_precision(monkeypatch):
    """float32 is checked to float32 accuracy: no TF32 (its default follows cuDNN's flag)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _on(device, *tensors):
    return [t.to(device) if isinstance(t, torch.Tensor) else t for t in tensors]


def _layout(t, layout):
    if layout == "channels_last":
        fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        return t.contiguous(memory_format=fmt)
    if layout == "noncontiguous":
        return torch.cat([t, t], dim=-1)[..., ::2]
    return t


# ---------------------------------------------------------------- depthwise

# (rank, C, multiplier, spatial, kernel, stride, padding, dilation, bias, layout)
DEPTHWISE = [
    (2, 4, 1, (7, 9), (3, 3), 1, 1, 1, True, "contiguous"),
    (2, 3, 2, (8, 7), (3, 2), (2, 1), (0, 2), (1, 2), False, "channels_last"),
    (2, 3, 3, (6, 5), (2, 4), 1, "same", 1, True, "noncontiguous"),
    (1, 4, 2, (13,), (5,), 2, 2, 2, True, "contiguous"),
    (3, 3, 1, (4, 5, 6), (2, 3, 3), (1, 2, 1), 1, (2, 1, 1), True, "channels_last"),
    (3, 2, 2, (3, 4, 5), (3, 1, 2), (2, 1, 3), (1, 0, 1), 1, False, "contiguous"),
]


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("case", DEPTHWISE, ids=lambda c: f"{c[0]}d-m{c[2]}-{c[9]}")
def test_depthwise_conv(case, dtype, triton_device):
    """Through dlkern's convNd with groups == C_in, which routes to the depthwise kernels."""
    rank, c, m, spatial, kernel, stride, padding, dilation, bias, layout = case
    g = torch.Generator().manual_seed(1)
    x = _layout(make_tensor((2, c) + spatial, dtype, generator=g), layout)
    w = make_tensor((c * m, 1) + kernel, dtype, generator=g)
    b = make_tensor((c * m,), dtype, generator=g) if bias else None
    x, w, b = _on(triton_device, x, w, b)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=c)
    kvol = math.prod(kernel)
    red = {"output": kvol, 0: m * kvol, 1: 2 * math.prod(spatial), 2: 2 * math.prod(spatial)}
    check_against_torch(lambda x, w, b: getattr(DF, f"conv{rank}d")(x, w, b, **kw),
                        lambda x, w, b: TORCH[rank](x, w, b, **kw), [x, w, b], red)


def test_depthwise_kernels_direct(triton_device):
    """The three launchers on rank-3 tensors: a channels_last output and input gradient, strided
    taps, multiplier 2, no bias gradient wanted."""
    from dlkern.kernels.triton import depthwise

    dtype = TRITON_DTYPES[0]
    g = torch.Generator().manual_seed(2)
    x = make_tensor((2, 3, 3, 7, 6), torch.float64, generator=g).to(triton_device)
    w = make_tensor((6, 1, 2, 3, 2), torch.float64, generator=g).to(triton_device)
    stride, padding, dilation = (1, 2, 1), (1, 1, 0), (1, 1, 2)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = F.conv3d(xr, wr, None, stride, padding, dilation, groups=3)
    dy = make_tensor(tuple(ref.shape), torch.float64, generator=g).to(triton_device)
    ref.backward(dy)
    cl = torch.channels_last_3d
    xd, wd, dyd = (t.to(dtype) for t in (x, w, dy))
    out = torch.full(ref.shape, float("nan"), dtype=dtype, device=triton_device).contiguous(
        memory_format=cl)
    depthwise.depthwise_forward(xd.contiguous(memory_format=cl), wd, None, stride, padding,
                                dilation, out)
    assert_close(out, ref, 12)
    dx = torch.full(x.shape, float("nan"), dtype=dtype, device=triton_device).contiguous(
        memory_format=cl)
    depthwise.depthwise_backward_input(dyd, wd, stride, padding, dilation, dx)
    assert_close(dx, xr.grad, 24, "grad input")
    dw, db = depthwise.depthwise_backward_weight(xd, dyd, w.shape, stride, padding, dilation,
                                                 False)
    assert db is None
    assert_close(dw, wr.grad, dy[:, 0].numel(), "grad weight")


# ---------------------------------------------------------------- depthwise-separable

# (rank, C, multiplier, C_out, spatial, kernel, stride, padding, dilation, biases, layout, batch)
DSCONV = [
    (2, 3, 1, 5, (7, 9), (3, 3), 1, 1, 1, (True, True), "contiguous", 2),
    (2, 3, 2, 4, (8, 7), (3, 2), (2, 1), (1, 0), (1, 2), (False, False), "channels_last", 2),
    (2, 17, 2, 9, (5, 6), (3, 3), 1, "same", 1, (False, True), "noncontiguous", 1),
    (1, 4, 1, 6, (13,), (5,), 1, "same", 2, (True, False), "contiguous", 2),
    (1, 3, 3, 5, (11,), (3,), 2, 1, 1, (True, True), "noncontiguous", 1),
    (2, 3, 1, 4, (5, 5), (3, 3), 1, 1, 1, (True, True), "contiguous", 0),
]


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("case", DSCONV, ids=lambda c: f"{c[0]}d-m{c[2]}-{c[10]}-n{c[11]}")
def test_depthwise_separable(case, dtype, triton_device):
    rank, c, m, c_out, spatial, kernel, stride, padding, dilation, biases, layout, batch = case
    g = torch.Generator().manual_seed(3)
    x = _layout(make_tensor((batch, c) + spatial, dtype, generator=g), layout)
    wd = make_tensor((c * m, 1) + kernel, dtype, generator=g)
    wp = make_tensor((c_out, c * m) + (1,) * rank, dtype, generator=g)
    bd = make_tensor((c * m,), dtype, generator=g) if biases[0] else None
    bp = make_tensor((c_out,), dtype, generator=g) if biases[1] else None
    tensors = _on(triton_device, x, wd, wp, bd, bp)
    kw = dict(stride=stride, padding=padding, dilation=dilation)

    def reference(x, wd, wp, bd, bp):
        return TORCH[rank](TORCH[rank](x, wd, bd, groups=c, **kw), wp, bp)

    kvol = math.prod(kernel)
    pixels = max(1, batch) * math.prod(spatial)
    red = {"output": kvol * c * m, 0: kvol * m * c_out, 1: pixels * c_out, 2: pixels,
           3: pixels * c_out, 4: pixels}
    dlkern_fn = getattr(DF, f"depthwise_separable_conv{rank}d")
    check_against_torch(lambda *t: dlkern_fn(*t, **kw), reference, tensors, red)


# ---------------------------------------------------------------- spatial separable

# (C_in, C_mid, C_out, spatial, kh, kw, stride, padding, dilation, biases, layout)
SPATIAL = [
    (3, 4, 5, (7, 9), 3, 3, 1, 1, 1, (True, True), "contiguous"),
    (3, 4, 5, (8, 9), 3, 2, (2, 3), (2, 1), (2, 1), (False, False), "channels_last"),
    (33, 6, 5, (5, 6), 4, 4, 1, "same", 1, (True, False), "noncontiguous"),
    (2, 3, 4, (6, 40), 2, 3, (1, 2), (0, 1), (1, 3), (False, True), "contiguous"),
]


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("case", SPATIAL, ids=lambda c: f"k{c[4]}x{c[5]}-{c[10]}")
def test_spatial_separable(case, dtype, triton_device):
    c_in, c_mid, c_out, spatial, kh, kw, stride, padding, dilation, biases, layout = case
    g = torch.Generator().manual_seed(4)
    x = _layout(make_tensor((2, c_in) + spatial, dtype, generator=g), layout)
    wv = make_tensor((c_mid, c_in, kh, 1), dtype, generator=g)
    wh = make_tensor((c_out, c_mid, 1, kw), dtype, generator=g)
    bv = make_tensor((c_mid,), dtype, generator=g) if biases[0] else None
    bh = make_tensor((c_out,), dtype, generator=g) if biases[1] else None
    tensors = _on(triton_device, x, wv, wh, bv, bh)
    args = dict(stride=stride, padding=padding, dilation=dilation)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    if isinstance(padding, str):
        pad_v = pad_h = padding
    else:
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        pad_v, pad_h = (ph, 0), (0, pw)

    def reference(x, wv, wh, bv, bh):
        mid = F.conv2d(x, wv, bv, (sh, 1), pad_v, (dh, 1))
        return F.conv2d(mid, wh, bh, (1, sw), pad_h, (1, dw))

    pixels = 2 * math.prod(spatial)
    red = {"output": c_in * kh * c_mid * kw, 0: c_mid * kh * c_out * kw,
           1: pixels * c_out * kw, 2: pixels, 3: pixels * c_out * kw, 4: pixels}
    check_against_torch(lambda *t: DF.spatial_separable_conv2d(*t, **args), reference, tensors,
                        red)


# ---------------------------------------------------------------- autotune prunes

# kernel name -> its configuration list in kernels/triton/configs.py
CONFIG_OF = {
    "_depthwise_forward_kernel": "depthwise_forward",
    "_depthwise_backward_input_kernel": "depthwise_backward_input",
    "_depthwise_backward_weight_kernel": "depthwise_backward_weight",
    "_depthwise_forward_planes_kernel": "depthwise_forward_planes",
    "_depthwise_backward_input_planes_kernel": "depthwise_backward_input_planes",
    "_dsconv_forward_kernel": "dsconv_forward",
    "_dsconv_pointwise_weight_kernel": "dsconv_backward_pointwise",
    "_spatial_forward_kernel": "spatial_forward",
}

SIZE_ARGS = ("C_IN", "C_OUT", "P_IN", "P_OUT", "Q", "M_TOTAL", "H_IN", "W_IN", "H_OUT", "W_OUT",
             "N_CHANNELS")


def test_autotune_prunes_get_their_arguments(triton_device, monkeypatch):
    """The interpreter never runs the prunes: record the launch arguments (positional and keyword)
    every kernel gets from its launcher and prune the full configuration lists with them, as a
    small problem (one configuration) and as a large one (all that fit the layout)."""
    from dlkern.kernels.triton import configs
    from dlkern.kernels.triton import depthwise as D
    from dlkern.kernels.triton import separable as S

    seen = {}
    for module in (D, S):
        for name in module.PRUNES:
            kernel = getattr(module, name)

            def record(*args, _run=kernel.run, _name=name, _names=kernel.arg_names, **kwargs):
                seen[_name] = {**dict(zip(_names, args)), **kwargs}
                return _run(*args, **kwargs)

            monkeypatch.setattr(kernel, "run", record)
    dtype, dev = TRITON_DTYPES[0], triton_device
    rand = lambda *shape: torch.randn(shape, dtype=dtype, device=dev)  # noqa: E731
    x, wd, wp, dy = rand(2, 3, 1, 5, 6), rand(6, 1, 1, 3, 3), rand(4, 6), rand(2, 4, 1, 5, 6)
    ones, zeros = (1, 1, 1), (0, 1, 1)
    S.dsconv_forward(x, wd, None, wp, None, ones, zeros, ones, dy.clone())
    S.dsconv_backward(x, wd, None, wp, dy, ones, zeros, ones, torch.empty_like(x), (True, True))
    cl = torch.empty(2, 6, 5, 6, dtype=dtype, device=dev).contiguous(
        memory_format=torch.channels_last)[:, :, None]
    D.depthwise_forward(x, wd, None, ones, zeros, ones, cl)  # channels_last: the tile kernel
    D.depthwise_forward(x, wd, None, ones, zeros, ones, torch.empty_like(x).repeat(1, 2, 1, 1, 1))
    D.depthwise_backward_input(cl, wd, ones, zeros, ones, torch.empty_like(cl[:, :3]))
    x2, wv, wh, dy2 = rand(2, 3, 5, 6), rand(4, 3, 3, 1), rand(5, 4, 1, 3), rand(2, 5, 5, 6)
    S.spatial_forward(x2, wv, None, wh, None, (1, 1), (1, 1), (1, 1), dy2.clone())
    S.spatial_backward(x2, wv, None, wh, dy2, (1, 1), (1, 1), (1, 1), torch.empty_like(x2),
                       (True, True))
    assert sorted(seen) == sorted(CONFIG_OF)
    for name, named in seen.items():
        prune = (D.PRUNES if name in D.PRUNES else S.PRUNES)[name]
        full = configs.CONV[CONFIG_OF[name]]
        assert prune(full, named) == full[:1] or "CHANNELS_LAST" in named, name
        large = dict(named, **{k: 4096 for k in SIZE_ARGS if k in named})
        kept = prune(full, large)
        assert 1 <= len(kept) <= len(full), name
        if "CHANNELS_LAST" in named:
            wide = bool(named["CHANNELS_LAST"])
            assert all((c.kwargs["BLOCK_C"] >= 16) == wide for c in kept), name
        else:
            assert kept == full, name
    assert seen["_depthwise_forward_kernel"]["CHANNELS_LAST"]
    assert seen["_depthwise_backward_input_kernel"]["CHANNELS_LAST"]


def test_autotune_prune_sees_keyword_arguments(monkeypatch):
    """On a GPU Triton hands a prune the positional launch arguments and the keyword ones apart;
    dlkern's launches pass keywords (kernels/triton/_launch.py), so _autotune merges them."""
    pytest.importorskip("triton", reason="Triton is not installed")
    import triton
    import triton.language as tl

    from dlkern.kernels.triton import _autotune

    monkeypatch.setattr(_autotune, "interpreting", lambda: False)  # build the GPU autotuner
    got = {}

    def prune(configs, named_args):
        got.update(named_args)
        return configs[1:]

    configs = [triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})]

    @_autotune.autotune(configs, key=["n"], prune=prune)
    @triton.jit
    def kernel(x, n, flag: tl.constexpr, BLOCK: tl.constexpr):
        pass

    kernel.nargs = {"x": "x"}  # what Autotuner.run sets from the positional arguments
    assert kernel.prune_configs({"n": 7, "flag": True}) == configs[1:]
    assert got == {"x": "x", "n": 7, "flag": True}


# ---------------------------------------------------------------- sm_90 compile

_AOT = r'''
import os
os.environ.pop("TRITON_INTERPRET", None)
import torch
import triton_aot
from dlkern.kernels.triton import depthwise as D, separable as S

def t(dtype):
    return torch.empty(1, dtype=dtype)

worst = {}
def compile_all(name, kernel, args, first_only=False, **constexprs):
    if first_only:
        configs = kernel.configs
        kernel.configs = configs[:1]
    try:
        for k in triton_aot.compile_for_h100(kernel, args, **constexprs):
            shared = k.metadata.shared
            assert shared <= triton_aot.H100_SHARED_BYTES, (name, shared)
            worst[name] = max(worst.get(name, 0), shared)
    finally:
        if first_only:
            kernel.configs = configs

# every configuration in float32 (the largest tiles in bytes, TF32 products), the first one
# in float16 and bfloat16 as well
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    first = dtype != torch.float32
    prec = "tf32" if dtype == torch.float32 else "ieee"
    x = t(dtype)
    ints = lambda k: [7] * k
    compile_all("depthwise_forward", D._depthwise_forward_kernel,
                [x, x, x, x] + ints(8) + ints(10) + ints(9), first,
                KD=1, KH=3, KW=3, HAS_BIAS=True, CHANNELS_LAST=False)
    compile_all("depthwise_backward_input", D._depthwise_backward_input_kernel,
                [x, x, x] + ints(8) + ints(10) + ints(9), first,
                KD=1, KH=3, KW=3, CHANNELS_LAST=True)
    compile_all("depthwise_forward_planes", D._depthwise_forward_planes_kernel,
                [x, x, x, x] + ints(7) + ints(10) + ints(9), first,
                KD=1, KH=3, KW=3, HAS_BIAS=True)
    compile_all("depthwise_backward_input_planes", D._depthwise_backward_input_planes_kernel,
                [x, x, x] + ints(7) + ints(10) + ints(9), first, KD=1, KH=3, KW=3)
    f32 = t(torch.float32)
    compile_all("depthwise_backward_weight", D._depthwise_backward_weight_kernel,
                [x, x, f32, f32] + ints(11) + ints(10) + ints(9), first,
                KD=3, KH=3, KW=3, BLOCK_T=16, HAS_BIAS=True)
    compile_all("dsconv_forward", S._dsconv_forward_kernel,
                [x] * 6 + ints(9) + ints(12) + ints(9), first,
                KD=1, KH=3, KW=3, HAS_BD=True, HAS_BP=True, PRECISION=prec)
    compile_all("dsconv_pointwise_weight", S._dsconv_pointwise_weight_kernel,
                [x, x, x, x, f32, f32] + ints(12) + ints(10) + ints(9), first,
                KD=1, KH=3, KW=3, HAS_BD=True, HAS_BIAS=True, PRECISION=prec)
    compile_all("spatial_forward", S._spatial_forward_kernel,
                [x] * 6 + ints(9) + ints(14) + ints(6), first,
                KH=3, KW=3, MID_W=64, HAS_BV=True, HAS_BH=True, PRECISION=prec)
print("OK", sorted(worst.items()))
'''


@pytest.mark.slow
def test_kernels_compile_for_h100():
    pytest.importorskip("triton", reason="Triton is not installed")
    import os

    tests = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {tests!r})\n" + _AOT
    returncode, output = run_isolated(code, timeout=600)
    assert returncode == 0 and "OK" in output, output[-4000:]
