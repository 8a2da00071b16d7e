"""conv_transpose1d/2d/3d and ConvTranspose1d/2d/3d against torch (float64 reference)."""
import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F

import dlkern.functional as DF
import dlkern.nn as dnn
from helpers import assert_close, check_against_torch, float64_copy, make_tensor

DL = {1: DF.conv_transpose1d, 2: DF.conv_transpose2d, 3: DF.conv_transpose3d}
TORCH = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
SPATIAL = {1: (9,), 2: (5, 6), 3: (3, 4, 5)}
KERNEL = {1: (3,), 2: (3, 2), 3: (2, 3, 1)}
DTYPES = [torch.float32, torch.float64]


def run_case(rank, tensors, kwargs):
    x, w, b = tensors
    with torch.no_grad():
        out_shape = TORCH[rank](float64_copy(x), float64_copy(w), None, **kwargs).shape
    taps = math.prod(w.shape[2:])
    reductions = {"output": w.shape[0] * taps, 0: w.shape[1] * taps,
                  1: out_shape[0] * math.prod(x.shape[2:]) if x.dim() == rank + 2 else math.prod(x.shape[1:]),
                  2: out_shape[0] * math.prod(out_shape[2:])}
    return check_against_torch(lambda x, w, b: DL[rank](x, w, b, **kwargs),
                               lambda x, w, b: TORCH[rank](x, w, b, **kwargs),
                               list(tensors), reductions)


def make_case(rank, stride, padding, output_padding, dilation, groups_kind, bias, batch, layout, dtype,
              seed=0):
    g = torch.Generator().manual_seed(seed)
    c_in, cout_g, groups = {"1": (3, 5, 1), "2": (4, 3, 2), "dw": (4, 1, 4), "dw2": (4, 2, 4)}[groups_kind]
    x = make_tensor((batch, c_in) + SPATIAL[rank], dtype, layout, generator=g)
    w = make_tensor((c_in, cout_g) + KERNEL[rank], dtype, generator=g)
    b = make_tensor((cout_g * groups,), dtype, generator=g) if bias else None
    # output_padding must be below stride or dilation on every axis.
    output_padding = min(output_padding, max(stride, dilation) - 1)
    return (x, w, b), dict(stride=stride, padding=padding, output_padding=output_padding,
                           groups=groups, dilation=dilation)


AXES = dict(rank=[1, 2, 3], stride=[1, 2, 3], padding=[0, 1], output_padding=[0, 1],
            dilation=[1, 2], groups_kind=["1", "2", "dw", "dw2"], bias=[True, False],
            batch=[0, 1, 3], layout=["contiguous", "noncontiguous", "channels_last"], dtype=DTYPES)
SWEEP = random.Random(99).sample([dict(zip(AXES, v)) for v in itertools.product(*AXES.values())], 200)


def _case_id(c):
    return "-".join(f"{k}={str(v).replace('torch.', '')}" for k, v in c.items())


@pytest.mark.parametrize("case", SWEEP, ids=_case_id)
def test_sweep_forward_and_gradients(case):
    c = dict(case)
    rank = c.pop("rank")
    tensors, kwargs = make_case(rank, **c)
    run_case(rank, tensors, kwargs)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_large_shapes_multiple_blocks(rank):
    g = torch.Generator().manual_seed(rank)
    spatial = {1: (1500,), 2: (30, 41), 3: (6, 11, 13)}[rank]
    x = make_tensor((2, 16) + spatial, torch.float32, generator=g)
    w = make_tensor((16, 12) + (4,) * rank, torch.float32, generator=g)
    b = make_tensor((12,), torch.float32, generator=g)
    run_case(rank, (x, w, b), dict(stride=2, padding=1))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_unbatched_and_output_padding_with_dilation(rank):
    # output_padding may reach the stride when it stays below the dilation.
    g = torch.Generator().manual_seed(5)
    x = make_tensor((4,) + SPATIAL[rank], torch.float64, generator=g)
    w = make_tensor((4, 2) + KERNEL[rank], torch.float64, generator=g)
    out = run_case(rank, (x, w, None), dict(stride=1, output_padding=2, dilation=3))
    assert out.dim() == rank + 1


def test_empty_output_from_large_padding():
    x = make_tensor((2, 4, 8, 8), torch.float32)
    w = make_tensor((4, 3, 3, 3), torch.float32)
    out = DF.conv_transpose2d(x, w, padding=5)
    assert out.shape == F.conv_transpose2d(x, w, padding=5).shape == (2, 3, 0, 0)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_gradcheck_float64(rank):
    g = torch.Generator().manual_seed(3)
    spatial = {1: (5,), 2: (3, 4), 3: (2, 3, 3)}[rank]
    x = make_tensor((2, 4) + spatial, torch.float64, generator=g, requires_grad=True)
    w = make_tensor((4, 3) + (2,) * rank, torch.float64, generator=g, requires_grad=True)
    b = make_tensor((6,), torch.float64, generator=g, requires_grad=True)
    fn = lambda x, w, b: DL[rank](x, w, b, stride=2, padding=1, output_padding=1, groups=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_modules_match_torch(rank):
    torch_cls = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}[rank]
    dl_cls = {1: dnn.ConvTranspose1d, 2: dnn.ConvTranspose2d, 3: dnn.ConvTranspose3d}[rank]
    torch.manual_seed(rank)
    ref = torch_cls(4, 6, 3, stride=2, padding=1, groups=2).double()
    mod = dl_cls(4, 6, 3, stride=2, padding=1, groups=2)
    assert isinstance(mod, torch_cls)
    mod.load_state_dict(ref.state_dict())
    assert set(mod.state_dict()) == set(ref.state_dict())
    x = make_tensor((2, 4) + SPATIAL[rank], torch.float32)
    x64 = float64_copy(x)
    for output_size in (None, [2 * s for s in SPATIAL[rank]]):
        out = mod(x, output_size=output_size)
        expected = ref(x64, output_size=output_size)
        assert_close(out, expected, 18)
    out.sum().backward()
    expected.sum().backward()
    assert_close(mod.weight.grad, ref.weight.grad, 2 * math.prod(out.shape[2:]))
    assert_close(mod.bias.grad, ref.bias.grad, 2 * math.prod(out.shape[2:]))
    assert_close(mod(x[0]), ref(x64[0]), 18)
    back = torch_cls(4, 6, 3, stride=2, padding=1, groups=2)
    back.load_state_dict(mod.state_dict())
    assert torch.equal(back.weight, mod.weight)


def test_custom_op_registration():
    g = torch.Generator().manual_seed(9)
    x = make_tensor((2, 4, 5, 6), torch.float32, generator=g, requires_grad=True)
    w = make_tensor((4, 3, 3, 2), torch.float32, generator=g, requires_grad=True)
    b = make_tensor((6,), torch.float32, generator=g, requires_grad=True)
    out_size = list(F.conv_transpose2d(x, w, b, stride=2, padding=1, groups=2).shape[2:])
    torch.library.opcheck(torch.ops.dlkern.conv_transpose.default,
                          (x, w, b, [2, 2], [1, 1], [1, 1], 2, out_size))
    torch.library.opcheck(torch.ops.dlkern.channel_sum.default, (x.detach(),))


# Each forward algorithm forced (DLKERN_CONV_TRANSPOSE_ALGO) on a sample of the sweep; the phase
# sample runs with Winograd allowed (a stride-1 3-tap phase goes through it) and with GEMM only.
_PHASE_SAMPLE = [c for c in SWEEP if c["dilation"] == 1 and c["groups_kind"] in ("1", "2")][:40]


@pytest.mark.parametrize("conv_algo", ["auto", "gemm"])
@pytest.mark.parametrize("case", _PHASE_SAMPLE, ids=_case_id)
def test_phase_forced(monkeypatch, case, conv_algo):
    from dlkern.ops import conv_transpose as ct

    monkeypatch.setenv("DLKERN_CONV_TRANSPOSE_ALGO", "phase")
    monkeypatch.setenv("DLKERN_CONV_ALGO", conv_algo)
    c = dict(case)
    rank = c.pop("rank")
    tensors, kwargs = make_case(rank, **c)
    calls = []
    original = ct.phase_forward
    monkeypatch.setattr(ct, "phase_forward", lambda *a: calls.append(1) or original(*a))
    run_case(rank, tensors, kwargs)
    assert calls or c["batch"] == 0


@pytest.mark.parametrize("case", _PHASE_SAMPLE[:20], ids=_case_id)
def test_col2im_forced(monkeypatch, case):
    monkeypatch.setenv("DLKERN_CONV_TRANSPOSE_ALGO", "col2im")
    c = dict(case)
    rank = c.pop("rank")
    tensors, kwargs = make_case(rank, **c)
    run_case(rank, tensors, kwargs)


@pytest.mark.parametrize("rank,kernel,stride,padding", [(1, 4, 2, 1), (2, 4, 2, 1), (2, 3, 1, 1),
                                                        (3, 4, 2, 1), (2, 2, 3, 4), (1, 5, 2, 6)])
def test_phase_shapes_of_real_decoders(monkeypatch, rank, kernel, stride, padding):
    # DCGAN k4 s2 p1, stride 1 (one phase, Winograd), a kernel shorter than the stride (phases
    # with no taps: bias only) and padding beyond the kernel (phases that skip input rows).
    monkeypatch.setenv("DLKERN_CONV_TRANSPOSE_ALGO", "phase")
    g = torch.Generator().manual_seed(rank)
    spatial = {1: (40,), 2: (9, 11), 3: (4, 5, 6)}[rank]
    x = make_tensor((2, 16) + spatial, torch.float32, generator=g)
    w = make_tensor((16, 20) + (kernel,) * rank, torch.float32, generator=g)
    b = make_tensor((20,), torch.float32, generator=g)
    run_case(rank, (x, w, b), dict(stride=stride, padding=padding))


def test_algorithm_rules(monkeypatch):
    from dlkern.ops import conv_transpose as ct

    monkeypatch.delenv("DLKERN_CONV_TRANSPOSE_ALGO", raising=False)
    s2, d1 = (1, 2, 2), (1, 1, 1)
    assert ct.algorithm((512, 256, 1, 4, 4), s2, d1, 1) == "phase"                 # DCGAN
    assert ct.algorithm((128, 64, 1, 2, 2), s2, d1, 1) == "col2im"                 # UNet k2 s2
    assert ct.algorithm((64, 3, 1, 4, 4), s2, d1, 1) == "col2im"                   # RGB output
    assert ct.algorithm((64, 64, 1, 4, 4), s2, (1, 2, 2), 1) == "col2im"           # dilated
    assert ct.algorithm((512, 256, 1, 1, 16), (1, 1, 8), d1, 1) == "col2im"        # 1-d
    assert ct.algorithm((100, 512, 1, 4, 4), d1, d1, 1, (0, 0, 0), (1, 1, 1),
                        (1, 4, 4)) == "pixel"                                       # DCGAN input
    monkeypatch.setenv("DLKERN_CONV_TRANSPOSE_ALGO", "phase")
    assert ct.algorithm((64, 3, 1, 4, 4), s2, d1, 1) == "phase"
    monkeypatch.setenv("DLKERN_CONV_TRANSPOSE_ALGO", "pixel")
    assert ct.algorithm((64, 3, 1, 4, 4), s2, d1, 1, (0, 1, 1), (1, 5, 5), (1, 8, 8)) == "col2im"
    monkeypatch.setenv("DLKERN_CONV_TRANSPOSE_ALGO", "bogus")
    with pytest.raises(ValueError, match="DLKERN_CONV_TRANSPOSE_ALGO"):
        ct.algorithm((64, 3, 1, 4, 4), s2, d1, 1)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2])
def test_pixel_input(monkeypatch, rank, dtype, groups):
    # A generator's first layer: a 1x1 input, the output as large as the kernel.
    from dlkern.ops import conv_transpose as ct

    calls = []
    original = ct.pixel_forward
    monkeypatch.setattr(ct, "pixel_forward", lambda *a: calls.append(1) or original(*a))
    g = torch.Generator().manual_seed(rank)
    x = make_tensor((3, 6) + (1,) * rank, dtype, generator=g)
    w = make_tensor((6, 5) + (4, 3, 2)[:rank], dtype, generator=g)
    b = make_tensor((5 * groups,), dtype, generator=g)
    run_case(rank, (x, w, b), dict(stride=2, groups=groups))
    assert calls
