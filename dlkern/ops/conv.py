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
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from dlkern import _dispatch
from dlkern.kernels.numba import conv as numba_conv
from dlkern.kernels.numba import depthwise as numba_depthwise
from dlkern.ops.layout import (as_rank3_array, channels_last_format, output_format, rank3,
                               rank3_view, write_rank3)

_dispatch.register_triton("conv")


def _is_depthwise(weight_shape, groups):
    """groups == C_in (one input channel per group), any multiplier: the direct depthwise kernels
    (memory-bound) instead of the implicit GEMM, whose per-group products would be 1 x K x tile."""
    return groups > 1 and weight_shape[1] == 1


def _forward_kernel(x, w, b, stride, padding, dilation, groups, out):
    if _is_depthwise(w.shape, groups):
        return numba_depthwise.depthwise_forward(x, w, b, stride, padding, dilation, out)
    return numba_conv.conv_forward(x, w, b, stride, padding, dilation, groups, out)


def _backward_input_kernel(dy, w, stride, padding, dilation, groups, dx):
    if _is_depthwise(w.shape, groups):
        return numba_depthwise.depthwise_backward_input(dy, w, stride, padding, dilation, dx)
    return numba_conv.conv_backward_input(dy, w, stride, padding, dilation, groups, dx)


def _backward_weight_kernel(x, dy, w_shape, stride, padding, dilation, groups, want_bias):
    if _is_depthwise(w_shape, groups):
        return numba_depthwise.depthwise_backward_weight(x, dy, w_shape, stride, padding, dilation,
                                                         want_bias)
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
        grad_input = conv_backward_input(grad_output, weight, list(input.shape), stride, padding,
                                         dilation, groups)
    if need_weight or (need_bias and ctx.has_bias):
        want_bias = bool(need_bias and ctx.has_bias)
        gw, gb = conv_backward_weight(grad_output, input, list(weight.shape), stride, padding,
                                      dilation, groups, want_bias)
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
    out = conv(x, weight, bias, list(stride_t), list(pad_lo), list(dil_t), int(groups),
               list(out_spatial))
    return out.squeeze(0) if unbatched else out
