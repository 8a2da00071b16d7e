"""The Triton convolution kernels (kernels/triton/conv.py) against torch on float64 copies.

conv1d/2d/3d and conv_transpose1d/2d/3d, forward and the gradients of input, weight and bias, over
stride, padding (including 'same' and asymmetric), dilation, groups > 1, bias or none, batch 1 and
0, odd sizes, contiguous, strided and channels_last inputs. On a GPU they run on CUDA in float32,
float16 and bfloat16; elsewhere through Triton's interpreter in float32 (tiny shapes: it is slow).
The last test compiles every kernel, with every autotune configuration, for an H100.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import dlkern.functional as DF
from helpers import TRITON_DTYPES, check_against_torch, float64_copy, make_tensor, run_isolated

CONV = {1: (DF.conv1d, F.conv1d), 2: (DF.conv2d, F.conv2d), 3: (DF.conv3d, F.conv3d)}
CONV_T = {1: (DF.conv_transpose1d, F.conv_transpose1d), 2: (DF.conv_transpose2d, F.conv_transpose2d),
          3: (DF.conv_transpose3d, F.conv_transpose3d)}


@pytest.fixture(autouse=True)
def exact_float32(monkeypatch):
    """float32 convolutions follow cuDNN's TF32 switch (on by default): off here, so float32 is
    checked at full precision. (The TF32 variant is compiled by the AOT test.)"""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _reductions_conv(w, out_shape):
    taps = math.prod(w.shape[2:])
    per_channel = out_shape[0] * math.prod(out_shape[2:])
    return {"output": w.shape[1] * taps, 0: w.shape[0] * taps, 1: per_channel, 2: per_channel}


def _reductions_transpose(x, w, out_shape):
    taps = math.prod(w.shape[2:])
    return {"output": w.shape[0] * taps, 0: w.shape[1] * taps,
            1: x.shape[0] * math.prod(x.shape[2:]), 2: out_shape[0] * math.prod(out_shape[2:])}


def _tensors(device, dtype, x_shape, w_shape, bias, layout, seed):
    g = torch.Generator().manual_seed(seed)
    x = make_tensor(x_shape, torch.float32, layout, generator=g)
    w = make_tensor(w_shape, torch.float32, generator=g)
    b = make_tensor((bias,), torch.float32, generator=g) if bias else None
    # Same values, same layout, on the device and in the dtype under test.
    move = lambda t: None if t is None else _to(t, device, dtype)  # noqa: E731
    return move(x), move(w), move(b)


def _to(t, device, dtype):
    if t.is_contiguous() or t.dim() < 4:
        moved = t.to(device=device, dtype=dtype)
        if not t.is_contiguous():  # a strided view stays a strided view
            full = torch.empty(t.shape[:-1] + (2 * t.shape[-1],), device=device, dtype=dtype)
            moved = full[..., ::2].copy_(moved)
        return moved
    fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
    if t.is_contiguous(memory_format=fmt):
        return t.to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    full = torch.empty(t.shape[:-1] + (2 * t.shape[-1],), device=device, dtype=dtype)
    return full[..., ::2].copy_(t)


def _layout(rank, layout):
    """The memory format torch gives the output for an input in ``layout``."""
    if layout != "channels_last" or rank == 1:
        return torch.contiguous_format
    return torch.channels_last if rank == 2 else torch.channels_last_3d


# (rank, N, C_in, C_out, spatial, kernel, stride, padding, dilation, groups, bias, layout)
CONV_CASES = [
    (1, 2, 3, 5, (11,), (3,), 2, 1, 2, 1, True, "contiguous"),
    (1, 2, 4, 6, (10,), (4,), 1, "same", 1, 2, False, "noncontiguous"),
    (2, 1, 4, 6, (7, 6), (3, 2), (2, 1), (1, 0), (1, 2), 2, True, "channels_last"),
    (2, 2, 3, 5, (9, 8), (3, 3), 1, "same", 2, 1, True, "noncontiguous"),
    (2, 2, 20, 18, (5, 7), (3, 3), 1, 1, 1, 1, True, "channels_last"),   # 2 channel blocks
    (2, 2, 32, 8, (6, 5), (1, 1), 2, 0, 1, 2, False, "contiguous"),      # 1x1, 16 channels/group
    (2, 2, 3, 4, (17, 19), (3, 3), 1, 1, 1, 1, True, "contiguous"),      # split reductions
    (3, 2, 4, 6, (5, 6, 4), (2, 3, 1), (2, 1, 1), (1, 1, 0), (1, 2, 1), 2, True, "channels_last"),
    (3, 1, 3, 4, (4, 5, 3), (2, 2, 2), 1, "valid", 1, 1, False, "contiguous"),
]


def _conv_id(case):
    rank, n, cin, cout, sp, k, s, p, d, g, b, layout = case
    return f"{rank}d-n{n}-c{cin}to{cout}-k{'x'.join(map(str, k))}-s{s}-p{p}-d{d}-g{g}-{'b' if b else 'nob'}-{layout}"


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=_conv_id)
def test_conv_forward_and_gradients(triton_device, case, dtype):
    rank, n, cin, cout, spatial, kernel, stride, padding, dilation, groups, bias, layout = case
    x, w, b = _tensors(triton_device, dtype, (n, cin) + spatial, (cout, cin // groups) + kernel,
                       cout if bias else 0, layout, seed=rank)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    dl, ref = CONV[rank]
    with torch.no_grad():
        out_shape = ref(float64_copy(x), float64_copy(w), None, **kwargs).shape
    out = check_against_torch(lambda x, w, b: dl(x, w, b, **kwargs),
                              lambda x, w, b: ref(x, w, b, **kwargs),
                              [x, w, b], _reductions_conv(w, out_shape))
    assert out.is_contiguous(memory_format=_layout(rank, layout))


# (rank, N, C_in, C_out, spatial, kernel, stride, padding, output_padding, dilation, groups, bias,
#  layout); C_out is the transposed convolution's output channels.
CONV_T_CASES = [
    (1, 2, 4, 6, (9,), (3,), 2, 1, 1, 1, 2, True, "contiguous"),
    (1, 1, 3, 5, (8,), (4,), 3, 2, 2, 2, 1, False, "noncontiguous"),
    (2, 2, 3, 5, (5, 6), (3, 4), (2, 3), (1, 1), (1, 0), (1, 2), 1, True, "channels_last"),
    (2, 2, 20, 18, (4, 5), (4, 4), 2, 1, 0, 1, 1, True, "noncontiguous"),
    (2, 2, 6, 4, (5, 4), (3, 3), 1, 1, 0, 3, 2, False, "contiguous"),
    (3, 2, 4, 6, (3, 4, 3), (2, 3, 2), (2, 1, 2), (0, 1, 1), (1, 0, 1), (1, 1, 2), 2, True,
     "channels_last"),
    (3, 1, 2, 3, (3, 3, 4), (3, 1, 2), (3, 2, 1), (1, 0, 0), 0, 1, 1, True, "contiguous"),
]


def _conv_t_id(case):
    rank, n, cin, cout, sp, k, s, p, op, d, g, b, layout = case
    return (f"{rank}d-n{n}-c{cin}to{cout}-k{'x'.join(map(str, k))}-s{s}-p{p}-op{op}-d{d}-g{g}-"
            f"{'b' if b else 'nob'}-{layout}")


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV_T_CASES, ids=_conv_t_id)
def test_conv_transpose_forward_and_gradients(triton_device, case, dtype):
    (rank, n, cin, cout, spatial, kernel, stride, padding, output_padding, dilation, groups, bias,
     layout) = case
    x, w, b = _tensors(triton_device, dtype, (n, cin) + spatial, (cin, cout // groups) + kernel,
                       cout if bias else 0, layout, seed=10 + rank)
    kwargs = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
                  dilation=dilation)
    dl, ref = CONV_T[rank]
    with torch.no_grad():
        out_shape = ref(float64_copy(x), float64_copy(w), None, **kwargs).shape
    out = check_against_torch(lambda x, w, b: dl(x, w, b, **kwargs),
                              lambda x, w, b: ref(x, w, b, **kwargs),
                              [x, w, b], _reductions_transpose(x, w, out_shape))
    assert out.is_contiguous(memory_format=_layout(rank, layout))


def test_depthwise_transpose_with_bias(triton_device):
    # groups == C_in goes to the depthwise kernels; the transposed convolution's bias is then
    # added by conv.py's add_channel_bias.
    dtype = TRITON_DTYPES[0]
    x, w, b = _tensors(triton_device, dtype, (2, 4, 5, 6), (4, 2, 3, 3), 8, "contiguous", seed=3)
    kwargs = dict(stride=2, padding=1, groups=4)
    with torch.no_grad():
        out_shape = F.conv_transpose2d(float64_copy(x), float64_copy(w), None, **kwargs).shape
    check_against_torch(lambda x, w, b: DF.conv_transpose2d(x, w, b, **kwargs),
                        lambda x, w, b: F.conv_transpose2d(x, w, b, **kwargs),
                        [x, w, b], _reductions_transpose(x, w, out_shape))


def test_float32_follows_cudnn_tf32_switch(triton_device, monkeypatch):
    # With allow_tf32 the products may round their inputs to TF32 (10-bit mantissa), as cuDNN's.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    x, w, b = _tensors(triton_device, torch.float32, (2, 16, 7, 6), (8, 16, 3, 3), 8,
                       "contiguous", seed=5)
    out = DF.conv2d(x, w, b, padding=1)
    ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    scale = float(ref.abs().max())
    assert float((out.double() - ref).abs().max()) <= 2e-3 * scale * math.sqrt(16 * 9)


def test_empty_batch(triton_device):
    dtype = TRITON_DTYPES[0]
    x, w, b = _tensors(triton_device, dtype, (0, 3, 5, 6), (4, 3, 3, 3), 4, "contiguous", seed=4)
    x.requires_grad_(True)
    w.requires_grad_(True)
    b.requires_grad_(True)
    out = DF.conv2d(x, w, b, padding=1)
    assert out.shape == (0, 4, 5, 6)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
    out_t = DF.conv_transpose2d(x.detach(), w.detach().transpose(0, 1).contiguous(), None, stride=2)
    assert out_t.shape == (0, 4, 11, 13)


AOT_CODE = r"""
import os
os.environ.pop("TRITON_INTERPRET", None)
import sys
sys.path.insert(0, {tests!r})
import torch
import triton
import triton_aot
from dlkern.kernels.triton import conv

from triton.runtime.autotuner import Autotuner


def compile_all(kernel, pointers, configs=None, **constexprs):
    # Compile kernel for every configuration in configs (default: all of its own).
    global count, largest
    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    if configs is not None:
        kernel = triton.autotune(configs=configs, key=[])(fn)
    args = list(pointers) + [7] * (sum(not p.is_constexpr for p in fn.params) - len(pointers))
    for k in triton_aot.compile_for_h100(kernel, args, **constexprs):
        count += 1
        largest = max(largest, k.metadata.shared)
        assert k.metadata.shared <= triton_aot.H100_SHARED_BYTES, (fn.__name__, k.metadata.shared)


count = largest = 0
f32, f16, bf16 = (torch.empty(2, dtype=dt) for dt in (torch.float32, torch.float16, torch.bfloat16))
gemm, weight = conv._conv_gemm_kernel.configs, conv._conv_weight_kernel.configs
biggest = lambda configs: [max(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"]
                                                      * c.kwargs["BLOCK_K"] * c.num_stages)]
# Every configuration where it needs the most shared memory (float32 on TF32 tensor cores), then
# the other dtypes, precisions and variants with the largest tile.
compile_all(conv._conv_gemm_kernel, [f32] * 4, HAS_BIAS=True, SMALL_K=False, PHASED=False,
            PRECISION="tf32")
for t, small_k, phased, precision in ((f32, True, True, "ieee"), (f16, True, False, "ieee"),
                                      (f16, False, True, "ieee"), (bf16, False, True, "ieee")):
    compile_all(conv._conv_gemm_kernel, [t] * 4, biggest(gemm), HAS_BIAS=not phased,
                SMALL_K=small_k, PHASED=phased, PRECISION=precision)
compile_all(conv._conv_weight_kernel, [f32] * 3, PRECISION="tf32")
compile_all(conv._conv_weight_kernel, [f32] * 3, biggest(weight), PRECISION="ieee")
compile_all(conv._conv_weight_kernel, [f16, f16, f32], biggest(weight), PRECISION="ieee")
compile_all(conv._conv_weight_kernel, [bf16, bf16, bf16], biggest(weight), PRECISION="ieee")
compile_all(conv._channel_sum_kernel, [f16, f32])
compile_all(conv._channel_sum_kernel, [bf16, f32], conv._channel_sum_kernel.configs[:1])
compile_all(conv._channel_sum_kernel, [f32, f32], conv._channel_sum_kernel.configs[:1])
for t in (f32, f16, bf16):
    compile_all(conv._sum_splits_kernel, [f32, t], BLOCK=1024)
    compile_all(conv._add_channel_bias_kernel, [t, t], BLOCK=1024)
print("compiled", count, "largest shared", largest)
"""


@pytest.mark.slow
def test_kernels_compile_for_h100():
    pytest.importorskip("triton", reason="Triton is not installed")
    import os

    tests = os.path.dirname(os.path.abspath(__file__))
    rc, out = run_isolated(AOT_CODE.format(tests=tests), timeout=600)
    assert rc == 0, out[-4000:]
    assert "compiled" in out
