"""Every CPU convolution algorithm, forced (DLKERN_CONV_ALGO), against torch: forward and every
gradient, float32 and float64, every layout; plus the choice point's rules.

The shapes cover each path's conditions: Winograd's 3-tap axes (1-d, 2-d, 3-d with any depth
kernel and depth stride, dilation, negative effective padding in the input gradient, groups,
partial tiles), pointwise with strides, and the GEMM fallback on everything.
"""
import itertools
import random

import pytest
import torch

import test_conv as base
from dlkern.ops import conv as conv_ops
from helpers import make_tensor

# Kernels with 3-tap H/W axes (Winograd applies at unit H/W stride); the 3-d one has a 2-tap depth.
KERNEL_3TAP = {1: (3,), 2: (3, 3), 3: (2, 3, 3)}
KERNEL_1TAP = {1: (1,), 2: (1, 1), 3: (1, 1, 1)}
SPATIAL = {1: (11,), 2: (7, 6), 3: (5, 6, 7)}


def _case(rank, kernel, stride, padding, dilation, groups, channels, bias, batch, layout, dtype):
    g = torch.Generator().manual_seed(rank * 100 + batch)
    c_in, c_out = channels
    x = make_tensor((batch, c_in) + SPATIAL[rank], dtype, layout, generator=g)
    w = make_tensor((c_out, c_in // groups) + kernel, dtype, generator=g)
    b = make_tensor((c_out,), dtype, generator=g) if bias else None
    return (x, w, b), dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


AXES = dict(
    rank=[1, 2, 3], stride=[1, 2], padding=[0, 1, 3, "same"], dilation=[1, 2],
    groups=[1, 2], channels=[(4, 6), (10, 8)], bias=[True, False], batch=[0, 1, 3],
    layout=["contiguous", "noncontiguous", "channels_last"], dtype=base.DTYPES,
)
_ALL = [dict(zip(AXES, v)) for v in itertools.product(*AXES.values())]
_ALL = [c for c in _ALL if not (c["padding"] == "same" and c["stride"] != 1)]
# stride 2 only along the depth axis for 3-d (Winograd's depth stride), else everywhere
WINOGRAD_SWEEP = random.Random(7).sample(_ALL, 48)
POINTWISE_SWEEP = random.Random(8).sample([c for c in _ALL if c["padding"] in (0, "same")], 24)


def _count_calls(monkeypatch, module, name):
    """Count the calls of module.name (the forced path must really run)."""
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def _stride(rank, stride, winograd):
    if winograd and rank == 3:
        return (stride, 1, 1)
    return stride if not winograd else 1


@pytest.mark.parametrize("algo", ["winograd2", "winograd4"])
@pytest.mark.parametrize("case", WINOGRAD_SWEEP, ids=base._case_id)
def test_winograd_forced(monkeypatch, algo, case):
    monkeypatch.setenv("DLKERN_CONV_ALGO", algo)
    c = dict(case)
    rank = c.pop("rank")
    c["stride"] = _stride(rank, c["stride"], True)
    tensors, kwargs = _case(rank, KERNEL_3TAP[rank], **c)
    calls = _count_calls(monkeypatch, conv_ops.numba_winograd, "conv_forward")
    base.run_case(rank, tensors, kwargs)
    # forward, and the input gradient where every stride is 1
    if c["batch"]:
        assert len(calls) == (2 if c["stride"] in (1, (1, 1, 1)) else 1)


@pytest.mark.parametrize("case", POINTWISE_SWEEP, ids=base._case_id)
def test_pointwise_forced(monkeypatch, case):
    monkeypatch.setenv("DLKERN_CONV_ALGO", "pointwise")
    c = dict(case)
    rank = c.pop("rank")
    c["padding"] = 0
    tensors, kwargs = _case(rank, KERNEL_1TAP[rank], **c)
    calls = _count_calls(monkeypatch, conv_ops, "_pointwise_input")
    base.run_case(rank, tensors, kwargs)
    if c["batch"]:
        assert len(calls) == 2  # forward and weight gradient


@pytest.mark.parametrize("case", WINOGRAD_SWEEP[:24], ids=base._case_id)
def test_gemm_forced(monkeypatch, case):
    monkeypatch.setenv("DLKERN_CONV_ALGO", "gemm")
    c = dict(case)
    rank = c.pop("rank")
    tensors, kwargs = _case(rank, KERNEL_3TAP[rank], **c)
    calls = _count_calls(monkeypatch, conv_ops.numba_winograd, "conv_forward")
    base.run_case(rank, tensors, kwargs)
    assert not calls


def test_winograd_partial_tiles_and_multiple_blocks(monkeypatch):
    # Odd planes (partial tiles), enough tiles for several blocks per thread, a 1-d conv and
    # output channels beyond one output-channel block.
    monkeypatch.setenv("DLKERN_CONV_ALGO", "winograd")
    g = torch.Generator().manual_seed(3)
    x = make_tensor((3, 12, 23, 29), torch.float32, generator=g)
    w = make_tensor((70, 12, 3, 3), torch.float32, generator=g)
    base.run_case(2, (x, w, None), dict(padding=1))
    x1 = make_tensor((2, 9, 301), torch.float32, generator=g)
    w1 = make_tensor((20, 9, 3), torch.float32, generator=g)
    base.run_case(1, (x1, w1, None), dict(padding=2, dilation=2))


RULES = [
    # (kind, w_shape, stride, padding, groups, expected); 256 output tiles unless noted
    ("forward", (64, 64, 1, 3, 3), (1, 1, 1), (0, 1, 1), 1, "winograd"),
    ("backward_input", (64, 64, 1, 3, 3), (1, 1, 1), (0, 1, 1), 1, "winograd"),
    ("backward_weight", (64, 64, 1, 3, 3), (1, 1, 1), (0, 1, 1), 1, "gemm"),
    ("forward", (64, 64, 3, 3, 3), (2, 1, 1), (1, 1, 1), 1, "winograd"),
    ("backward_input", (64, 64, 3, 3, 3), (2, 1, 1), (1, 1, 1), 1, "gemm"),
    ("forward", (64, 64, 1, 1, 3), (1, 1, 1), (0, 0, 1), 1, "winograd"),
    ("forward", (64, 3, 1, 3, 3), (1, 1, 1), (0, 1, 1), 1, "gemm"),       # RGB input
    ("forward", (64, 64, 1, 3, 3), (1, 2, 2), (0, 1, 1), 1, "gemm"),      # strided
    ("forward", (64, 64, 1, 5, 5), (1, 1, 1), (0, 2, 2), 1, "gemm"),
    ("forward", (128, 64, 1, 1, 1), (1, 2, 2), (0, 0, 0), 1, "pointwise"),
    ("backward_weight", (128, 64, 1, 1, 1), (1, 2, 2), (0, 0, 0), 1, "pointwise"),
    ("backward_input", (128, 64, 1, 1, 1), (1, 2, 2), (0, 0, 0), 1, "gemm"),
    ("forward", (32, 1, 1, 3, 3), (1, 1, 1), (0, 1, 1), 32, "depthwise"),
]


@pytest.mark.parametrize("kind,w_shape,stride,padding,groups,expected", RULES)
def test_choice_point_rules(monkeypatch, kind, w_shape, stride, padding, groups, expected):
    monkeypatch.delenv("DLKERN_CONV_ALGO", raising=False)
    assert conv_ops.algorithm(kind, w_shape, stride, padding, groups, tiles=256) == expected


def test_winograd_needs_enough_tiles(monkeypatch):
    monkeypatch.delenv("DLKERN_CONV_ALGO", raising=False)
    w_shape = (512, 512, 1, 3, 3)
    small = conv_ops.winograd_tiles((1, 512, 1, 7, 7))        # ResNet layer4 at batch 1: 16 tiles
    large = conv_ops.winograd_tiles((8, 512, 1, 14, 14))      # 392 tiles
    assert conv_ops.algorithm("forward", w_shape, (1, 1, 1), (0, 1, 1), 1, small) == "gemm"
    assert conv_ops.algorithm("forward", w_shape, (1, 1, 1), (0, 1, 1), 1, large) == "winograd"
    monkeypatch.setenv("DLKERN_CONV_ALGO", "winograd")
    assert conv_ops.algorithm("forward", w_shape, (1, 1, 1), (0, 1, 1), 1, small) == "winograd"


def test_forcing_a_path_that_does_not_apply_uses_auto(monkeypatch):
    monkeypatch.setenv("DLKERN_CONV_ALGO", "winograd")
    assert conv_ops.algorithm("forward", (8, 8, 1, 3, 3), (1, 2, 2), (0, 1, 1), 1) == "gemm"
    monkeypatch.setenv("DLKERN_CONV_ALGO", "gemm")
    assert conv_ops.algorithm("forward", (64, 64, 1, 3, 3), (1, 1, 1), (0, 1, 1), 1, 256) == "gemm"
    monkeypatch.setenv("DLKERN_CONV_ALGO", "fft")
    with pytest.raises(ValueError, match="DLKERN_CONV_ALGO"):
        conv_ops.algorithm("forward", (8, 8, 1, 3, 3), (1, 1, 1), (0, 1, 1), 1)


PATCHIFY = [
    # (rank, kernel = stride, spatial, groups, dtype)
    (2, (2, 2), (8, 9), 1, torch.float32),        # ConvNeXt downsampling (odd size: cropped)
    (2, (4, 4), (12, 16), 2, torch.float64),      # groups
    (1, (3,), (10,), 1, torch.float32),
    (3, (2, 2, 2), (4, 5, 6), 1, torch.float32),
    (2, (2, 3), (6, 9), 1, torch.float64),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("rank,kernel,spatial,groups,dtype", PATCHIFY)
def test_patchify(monkeypatch, rank, kernel, spatial, groups, dtype, layout):
    monkeypatch.setenv("DLKERN_CONV_ALGO", "patchify")  # auto takes it from 16 channels
    calls = _count_calls(monkeypatch, conv_ops, "_patches_as_channels")
    g = torch.Generator().manual_seed(rank)
    x = make_tensor((3, 4) + spatial, dtype, layout, generator=g)
    w = make_tensor((6, 4 // groups) + kernel, dtype, generator=g)
    b = make_tensor((6,), dtype, generator=g)
    base.run_case(rank, (x, w, b), dict(stride=kernel, groups=groups))
    assert len(calls) == 2  # forward and weight gradient
    monkeypatch.delenv("DLKERN_CONV_ALGO")
    assert conv_ops.algorithm("forward", (6, 32, 1, 2, 2), (1, 2, 2), (0, 0, 0), 1) == "patchify"
    assert conv_ops.algorithm("forward", (6, 3, 1, 4, 4), (1, 4, 4), (0, 0, 0), 1) == "gemm"
    assert conv_ops.algorithm("forward", (6, 32, 1, 2, 2), (1, 2, 2), (0, 0, 0), 1,
                              dilation=(1, 2, 2)) == "gemm"


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_winograd_keeps_inf_and_nan_where_torch_puts_them(monkeypatch, value):
    # An inf or NaN would spread over a whole Winograd tile: such inputs take the GEMM.
    monkeypatch.setenv("DLKERN_CONV_ALGO", "winograd")
    g = torch.Generator().manual_seed(0)
    x = make_tensor((2, 8, 12, 12), torch.float32, generator=g)
    w = make_tensor((8, 8, 3, 3), torch.float32, generator=g)
    x[0, 3, 5, 6] = value
    ours = conv_ops.convolution("conv2d", x, w, None, 1, 1, 1, 1, 2)
    theirs = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
    assert torch.equal(torch.isnan(ours), torch.isnan(theirs))
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    finite = torch.isfinite(theirs)
    torch.testing.assert_close(ours[finite].double(), theirs[finite], rtol=1e-4, atol=1e-4)
