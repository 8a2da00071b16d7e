"""Convolution as torch custom ops: canonicalisation to rank 3, registration, autograd, dispatch.

Three ops in the ``dlkern`` namespace, each with a fake (meta) implementation:

* ``dlkern::conv(input, weight, bias, stride, padding, dilation, groups, output_size)``
* ``dlkern::conv_backward_input(grad_output, weight, input_size, stride, padding, dilation, groups)``
* ``dlkern::conv_backward_weight(grad_output, input, weight_size, stride, padding, dilation, groups,
  bias_grad) -> (grad_weight, grad_bias)``

``input`` is batched, ``(N, C_in, *spatial)`` with 1 to 3 spatial axes; ``padding`` is the padding
before each axis and ``output_size`` the spatial output size (so asymmetric 'same' padding needs
no extra argument). Arguments are checked by dlkern._validate before these ops are called. The
backward ops are the gradient of the forward; transposed convolution reuses them.

Backends: CPU float32/float64 tensors run the Numba kernels on NumPy views; CUDA tensors (and CPU
tensors under ``DLKERN_BACKEND=triton`` with ``TRITON_INTERPRET=1``) run the Triton kernels on
rank-3 torch views of any strides, imported on the first such call.

The CPU algorithm is chosen in one place, ``algorithm(kind, ...)``, for each of the three kernels
(kind ``forward``, ``backward_input``, ``backward_weight``), from the rank-3 shapes:

| algorithm  | kernels                     | applies when                                         | auto picks it when |
| ---------- | --------------------------- | ---------------------------------------------------- | ------------------ |
| depthwise  | numba/depthwise.py          | one input channel per group (groups > 1)            | it applies |
| pointwise  | numba/conv.py (no packing)  | 1x1x1 kernel, no padding (any stride: strided input  | it applies |
|            |                             | is subsampled first); forward and backward_weight    | |
| patchify   | numba/conv.py, pointwise    | stride = kernel (non-overlapping patches: ViT,       | it applies, C_in/g >= 16 |
|            | on the patches moved into   | ConvNeXt stems and downsampling), no padding;        | |
|            | channels (one copy)         | forward and backward_weight                          | |
| winograd   | numba/winograd.py           | KH, KW in {1, 3}, not both 1; H and W strides 1      | forward/backward_input: it applies, the reduction |
|            |                             | (backward_input: every stride 1); any dilation,      | (C/groups x KD) and the product rows are both >= |
|            |                             | depth kernel, groups; forward and backward_input     | WINOGRAD_MIN_CHANNELS, the output has >= |
|            |                             |                                                      | WINOGRAD_MIN_TILES 2x2 tiles |
| gemm       | numba/conv.py (im2col+BLAS; | always                                               | nothing else does |
|            | small images several to a   |                                                      | |
|            | product)                    |                                                      | |

Winograd's tile is F(2x2, 3x3) (F(2, 3) along a single 3-tap axis) for float32, within the
accuracy contract of numba/winograd.py; float64 takes F(4x4, 3x3). The weight gradient is the
im2col GEMM (a Winograd weight gradient is not written; the GEMM measured 0.9-1.1x torch's on
the 3x3 ResNet layers, single thread). ``DLKERN_CONV_ALGO`` (or the
``force`` argument) = ``gemm``, ``winograd``, ``winograd2``, ``winograd4``, ``pointwise`` or
``depthwise`` forces that algorithm wherever it applies (``auto`` elsewhere); tests and benchmarks
use it to run every path. ``winograd4`` forces F(4x4) even in float32 (outside the contract:
for measurements only). Inputs holding an inf or NaN never run Winograd (``_finite``).
"""
import os
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from dlkern import _dispatch
from dlkern.kernels.numba import conv as numba_conv
from dlkern.kernels.numba import depthwise as numba_depthwise
from dlkern.kernels.numba import winograd as numba_winograd
from dlkern.ops.layout import (as_rank3_array, channels_last_format, output_format, rank3,
                               rank3_view, write_rank3)

_dispatch.register_triton("conv")


def _is_depthwise(weight_shape, groups):
    """groups == C_in (one input channel per group), any multiplier: the direct depthwise kernels
    (memory-bound) instead of the implicit GEMM, whose per-group products would be 1 x K x tile."""
    return groups > 1 and weight_shape[1] == 1


# Winograd's products are (C_out/g x C_in/g*KD) @ (C_in/g*KD x tiles): below this many channels
# on either side the transforms cost more than the multiplications they save, and with fewer
# tiles (small planes, one image) the transformed weight (16/9 of the weight) is read for too few
# columns: the GEMM runs faster (measured on the ResNet/r3d tables).
WINOGRAD_MIN_CHANNELS = 8
WINOGRAD_MIN_TILES = 128
PATCHIFY_MIN_CHANNELS = 16
ALGORITHMS = ("auto", "gemm", "winograd", "winograd2", "winograd4", "pointwise", "patchify",
              "depthwise")


def _applies(name, kind, w_shape, stride, padding, groups, dilation=(1, 1, 1)):
    if name == "depthwise":
        return _is_depthwise(w_shape, groups)
    if name == "pointwise":
        return (kind != "backward_input" and tuple(w_shape[2:]) == (1, 1, 1)
                and tuple(padding) == (0, 0, 0))
    if name == "patchify":
        return (kind != "backward_input" and tuple(w_shape[2:]) == tuple(stride)
                and tuple(w_shape[2:]) != (1, 1, 1) and tuple(padding) == (0, 0, 0)
                and tuple(dilation) == (1, 1, 1))
    if name.startswith("winograd"):
        if kind == "backward_weight" or not numba_winograd.applies(w_shape, stride):
            return False
        return kind == "forward" or tuple(stride) == (1, 1, 1)
    return name == "gemm"


def algorithm(kind, w_shape, stride, padding, groups, tiles=None, force=None, dilation=(1, 1, 1)):
    """The CPU algorithm for one kernel of a convolution (the table in the module docstring).

    kind: "forward", "backward_input" or "backward_weight"; w_shape the rank-3 weight shape
    (C_out, C_in/g, KD, KH, KW); tiles: ``winograd_tiles`` of the kernel's output (Winograd is
    not picked without it); force (else DLKERN_CONV_ALGO) one of ALGORITHMS."""
    forced = (force or os.environ.get("DLKERN_CONV_ALGO", "") or "auto").strip().lower()
    if forced not in ALGORITHMS:
        raise ValueError(f"DLKERN_CONV_ALGO={forced!r}: expected one of {', '.join(ALGORITHMS)}")
    if forced != "auto" and _applies(forced, kind, w_shape, stride, padding, groups, dilation):
        return forced
    for name in ("depthwise", "pointwise"):
        if _applies(name, kind, w_shape, stride, padding, groups, dilation):
            return name
    # patches of few channels (RGB stems) pack faster through im2col (measured)
    if (_applies("patchify", kind, w_shape, stride, padding, groups, dilation)
            and w_shape[1] >= PATCHIFY_MIN_CHANNELS):
        return "patchify"
    if _applies("winograd", kind, w_shape, stride, padding, groups) and tiles is not None:
        c_out, cin_g, kd = w_shape[:3]
        reduction = (cin_g if kind == "forward" else c_out // groups) * kd
        rows = c_out // groups if kind == "forward" else cin_g
        if min(reduction, rows) >= WINOGRAD_MIN_CHANNELS and tiles >= WINOGRAD_MIN_TILES:
            return "winograd"
    return "gemm"


def winograd_tiles(out_shape):
    """F(2x2) tiles of a rank-3 output shape (N, C, OD, OH, OW): images x depth x 2x2 tiles."""
    n, _, od, oh, ow = out_shape
    return n * od * -(-oh // 2) * -(-ow // 2)


def _winograd_tile(name, dtype):
    """m of F(m, 3): 2 in float32 (the accuracy contract), 4 in float64, or as forced."""
    if name == "winograd2":
        return 2
    if name == "winograd4":
        return 4
    return numba_winograd.tile_size(dtype)


def _finite(*arrays):
    """Whether every element is finite: Winograd's transforms would spread an inf or NaN over
    its whole tile (inf - inf), where the direct sum keeps it in its receptive field as torch
    does, so such inputs take the GEMM instead (one read of the input)."""
    return all(bool(np.isfinite(a).all()) for a in arrays)


def _pointwise_input(x, stride, out_spatial):
    """The input of a 1x1x1 convolution with this stride, subsampled to the output grid."""
    if tuple(stride) == (1, 1, 1):
        return x
    od, oh, ow = out_spatial
    sd, sh, sw = stride
    return np.ascontiguousarray(x[:, :, :od * sd:sd, :oh * sh:sh, :ow * sw:sw])


def _patches_as_channels(x, kernel, out_spatial):
    """Non-overlapping patches (stride = kernel, no padding) moved into channels: (N, C, D, H, W)
    -> (N, C*KD*KH*KW, OD, OH, OW), channel order (c, kd, kh, kw) as in the weight, so that the
    convolution becomes a 1x1x1 one (one transposing copy; dilation 1)."""
    n, c = x.shape[:2]
    (kd, kh, kw), (od, oh, ow) = kernel, out_spatial
    x = x[:, :, :od * kd, :oh * kh, :ow * kw].reshape(n, c, od, kd, oh, kh, ow, kw)
    return np.ascontiguousarray(x.transpose(0, 1, 3, 5, 7, 2, 4, 6)).reshape(
        n, c * kd * kh * kw, od, oh, ow)


def _forward_kernel(x, w, b, stride, padding, dilation, groups, out, force=None):
    name = algorithm("forward", w.shape, stride, padding, groups, winograd_tiles(out.shape), force,
                     dilation)
    if name == "depthwise":
        return numba_depthwise.depthwise_forward(x, w, b, stride, padding, dilation, out)
    if name.startswith("winograd") and _finite(x, w):
        return numba_winograd.conv_forward(x, w, b, stride, padding, dilation, groups, out,
                                           _winograd_tile(name, x.dtype))
    if name == "pointwise":
        x = _pointwise_input(x, stride, out.shape[2:])
        stride = (1, 1, 1)
    if name == "patchify":
        x = _patches_as_channels(x, w.shape[2:], out.shape[2:])
        w = w.reshape(w.shape[0], -1, 1, 1, 1)
        stride = (1, 1, 1)
    return numba_conv.conv_forward(x, w, b, stride, padding, dilation, groups, out)


def _backward_input_kernel(dy, w, stride, padding, dilation, groups, dx, force=None):
    name = algorithm("backward_input", w.shape, stride, padding, groups, winograd_tiles(dx.shape),
                     force)
    if name == "depthwise":
        return numba_depthwise.depthwise_backward_input(dy, w, stride, padding, dilation, dx)
    if name.startswith("winograd") and _finite(dy, w):
        return numba_winograd.conv_backward_input(dy, w, stride, padding, dilation, groups, dx,
                                                  _winograd_tile(name, dy.dtype))
    return numba_conv.conv_backward_input(dy, w, stride, padding, dilation, groups, dx)


def _backward_weight_kernel(x, dy, w_shape, stride, padding, dilation, groups, want_bias,
                            force=None):
    name = algorithm("backward_weight", w_shape, stride, padding, groups, force=force,
                     dilation=dilation)
    if name == "depthwise":
        return numba_depthwise.depthwise_backward_weight(x, dy, w_shape, stride, padding, dilation,
                                                         want_bias)
    # the depthwise kernels take channels_last views; every other algorithm C-contiguous arrays
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    if name == "pointwise":
        x = _pointwise_input(x, stride, dy.shape[2:])
        stride = (1, 1, 1)
    if name == "patchify":
        x = _patches_as_channels(x, w_shape[2:], dy.shape[2:])
        dw, db = numba_conv.conv_backward_weight(
            x, dy, (w_shape[0], x.shape[1] // groups, 1, 1, 1), (1, 1, 1), padding, dilation,
            groups, want_bias)
        return dw.reshape(w_shape), db
    return numba_conv.conv_backward_weight(x, dy, w_shape, stride, padding, dilation, groups,
                                           want_bias)


def _triton_forward(x, w, b, stride, padding, dilation, groups, out):
    """The Triton forward on rank-3 views (``layout.rank3_view``); writes ``out``. Triton is
    imported on the first such call only (it is optional on the CPU)."""
    if _is_depthwise(w.shape, groups):
        from dlkern.kernels.triton import depthwise
        return depthwise.depthwise_forward(x, w, b, stride, padding, dilation, out)
    from dlkern.kernels.triton import conv as triton_conv
    return triton_conv.conv_forward(x, w, b, stride, padding, dilation, groups, out)


def _triton_backward_input(dy, w, stride, padding, dilation, groups, dx, bias=None):
    """The Triton input gradient on rank-3 views; writes ``dx``, plus ``bias`` per channel when
    given (which makes it transposed convolution's forward)."""
    from dlkern.kernels.triton import conv as triton_conv
    if not _is_depthwise(w.shape, groups):
        return triton_conv.conv_backward_input(dy, w, stride, padding, dilation, groups, dx, bias)
    from dlkern.kernels.triton import depthwise
    depthwise.depthwise_backward_input(dy, w, stride, padding, dilation, dx)
    return dx if bias is None else triton_conv.add_channel_bias(dx, bias)


def _triton_backward_weight(x, dy, w_shape, stride, padding, dilation, groups, want_bias):
    """The Triton weight (and bias) gradient on rank-3 views: (dw of shape w_shape, db or None)."""
    if _is_depthwise(w_shape, groups):
        from dlkern.kernels.triton import depthwise
        return depthwise.depthwise_backward_weight(x, dy, w_shape, stride, padding, dilation,
                                                   want_bias)
    from dlkern.kernels.triton import conv as triton_conv
    return triton_conv.conv_backward_weight(x, dy, w_shape, stride, padding, dilation, groups,
                                            want_bias)


@torch.library.custom_op("dlkern::conv", mutates_args=())
def conv(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
         padding: Sequence[int], dilation: Sequence[int], groups: int,
         output_size: Sequence[int]) -> Tensor:
    out = _dispatch.new_output((input.shape[0], weight.shape[0], *output_size), input,
                               memory_format=output_format(input, weight))
    if _dispatch.backend_for("conv", input, weight, bias) == "triton":
        _triton_forward(rank3_view(input), rank3_view(weight),
                        None if bias is None else bias.detach(), rank3(stride, 1),
                        rank3(padding, 0), rank3(dilation, 1), groups, rank3_view(out))
        return out
    if _is_depthwise(weight.shape, groups) and channels_last_format(input) is not None:
        # channels_last depthwise: the channel-vectorised kernels read and write it in place
        from dlkern.ops.separable import depthwise_channels_last
        return depthwise_channels_last(input, weight, bias, stride, padding, dilation, out)
    x = as_rank3_array(input)
    w = as_rank3_array(weight)
    b = None if bias is None else bias.detach().contiguous().numpy()
    write_rank3(out, lambda o: _forward_kernel(
        x, w, b, rank3(stride, 1), rank3(padding, 0), rank3(dilation, 1), groups, o))
    return out


@conv.register_fake
def _(input, weight, bias, stride, padding, dilation, groups, output_size):
    return torch.empty((input.shape[0], weight.shape[0], *output_size), dtype=input.dtype,
                       device=input.device, memory_format=output_format(input, weight))


@torch.library.custom_op("dlkern::conv_backward_input", mutates_args=())
def conv_backward_input(grad_output: Tensor, weight: Tensor, input_size: Sequence[int],
                        stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                        groups: int) -> Tensor:
    grad_input = _dispatch.new_output(tuple(input_size), grad_output,
                                      memory_format=output_format(grad_output))
    if _dispatch.backend_for("conv", grad_output, weight) == "triton":
        _triton_backward_input(rank3_view(grad_output), rank3_view(weight), rank3(stride, 1),
                               rank3(padding, 0), rank3(dilation, 1), groups,
                               rank3_view(grad_input))
        return grad_input
    if _is_depthwise(weight.shape, groups) and channels_last_format(grad_output) is not None:
        from dlkern.ops.separable import depthwise_backward_input_channels_last
        return depthwise_backward_input_channels_last(grad_output, weight, stride, padding,
                                                      dilation, grad_input)
    dy = as_rank3_array(grad_output)
    w = as_rank3_array(weight)
    write_rank3(grad_input, lambda dx: _backward_input_kernel(
        dy, w, rank3(stride, 1), rank3(padding, 0), rank3(dilation, 1), groups, dx))
    return grad_input


@conv_backward_input.register_fake
def _(grad_output, weight, input_size, stride, padding, dilation, groups):
    return torch.empty(tuple(input_size), dtype=grad_output.dtype, device=grad_output.device,
                       memory_format=output_format(grad_output))


@torch.library.custom_op("dlkern::conv_backward_weight", mutates_args=())
def conv_backward_weight(grad_output: Tensor, input: Tensor, weight_size: Sequence[int],
                         stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                         groups: int, bias_grad: bool) -> Tuple[Tensor, Tensor]:
    w_shape = tuple(weight_size[:2]) + rank3(weight_size[2:], 1)
    if _dispatch.backend_for("conv", grad_output, input) == "triton":
        dw, db = _triton_backward_weight(
            rank3_view(input), rank3_view(grad_output), w_shape, rank3(stride, 1),
            rank3(padding, 0), rank3(dilation, 1), groups, bias_grad)
        return dw.reshape(tuple(weight_size)), db if bias_grad else grad_output.new_empty((0,))
    if _is_depthwise(w_shape, groups) and channels_last_format(input) is not None:
        # channels_last depthwise: strided views, read in place (the kernels copy if they must)
        x, dy = rank3_view(input).numpy(), rank3_view(grad_output).numpy()
    else:
        x, dy = as_rank3_array(input), as_rank3_array(grad_output)
    dw, db = _backward_weight_kernel(
        x, dy, w_shape, rank3(stride, 1), rank3(padding, 0), rank3(dilation, 1), groups, bias_grad)
    grad_weight = torch.from_numpy(dw).reshape(tuple(weight_size))
    grad_bias = torch.from_numpy(db) if bias_grad else grad_output.new_empty((0,))
    return grad_weight, grad_bias


@conv_backward_weight.register_fake
def _(grad_output, input, weight_size, stride, padding, dilation, groups, bias_grad):
    grad_bias = grad_output.new_empty((weight_size[0],) if bias_grad else (0,))
    return grad_output.new_empty(tuple(weight_size)), grad_bias


def _conv_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, output_size = inputs
    ctx.save_for_backward(input, weight)
    ctx.has_bias = bias is not None
    ctx.params = (list(stride), list(padding), list(dilation), groups)


def _conv_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.params
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    grad_input = grad_weight = grad_bias = None
    if need_input:
        grad_input = _dispatch.call(conv_backward_input, grad_output, weight,
                                    list(input.shape), stride, padding, dilation, groups)
    if need_weight or (need_bias and ctx.has_bias):
        want_bias = bool(need_bias and ctx.has_bias)
        gw, gb = _dispatch.call(conv_backward_weight, grad_output, input, list(weight.shape),
                                stride, padding, dilation, groups, want_bias)
        grad_weight = gw if need_weight else None
        grad_bias = gb if want_bias else None
    return grad_input, grad_weight, grad_bias, None, None, None, None, None


conv.register_autograd(_conv_backward, setup_context=_conv_setup_context)


_TORCH_CONV = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d,
               3: torch.nn.functional.conv3d}


def convolution(op, input, weight, bias, stride, padding, dilation, groups, nsp):
    """The public convolution: check, pick the backend, run (or fall back to torch)."""
    from dlkern import _validate

    x, unbatched, stride_t, pad_lo, dil_t, out_spatial = _validate.conv_args(
        op, input, weight, bias, stride, padding, dilation, groups, nsp)
    if _dispatch.backend_for("conv", x, weight, bias) is None:
        _dispatch.fallback("conv", x, weight, bias)
        return _TORCH_CONV[nsp](input, weight, bias, stride, padding, dilation, groups)
    out = _dispatch.call(conv, x, weight, bias, list(stride_t), list(pad_lo), list(dil_t),
                         int(groups), list(out_spatial))
    return out.squeeze(0) if unbatched else out
