"""Transposed convolution as torch custom ops, built from the convolution's kernels.

A transposed convolution is the gradient of a convolution with respect to its input, so

    conv_transpose(x, w)            = conv_backward_input(dy=x, w)      (a gather-free col2im per
                                                                           image and channel block)
    d conv_transpose / d x          = conv(grad, w)
    d conv_transpose / d w          = conv_backward_weight(dy=x, input=grad)
    d conv_transpose / d bias       = per-channel sum of grad

with the weight in torch's transposed layout (C_in, C_out / groups, *kernel), which is exactly the
layout of the weight of the convolution it is the gradient of. No second kernel family.

Op: ``dlkern::conv_transpose(input, weight, bias, stride, padding, dilation, groups, output_size)``
with a batched input and the spatial output size computed by dlkern._validate (output_padding is
folded into it). ``dlkern::channel_sum(t)`` sums over every axis but 1 (bias gradients).
"""
from typing import Optional, Sequence

import torch
from torch import Tensor

from dlkern import _dispatch
from dlkern.kernels.numba import channel as numba_channel
from dlkern.ops.conv import _backward_input_kernel, _conv_setup_context, _triton_backward_input
from dlkern.ops.conv import conv as conv_op
from dlkern.ops.conv import conv_backward_weight as conv_backward_weight_op
from dlkern.ops.layout import as_rank3_array, output_format, rank3, rank3_view, write_rank3

_dispatch.register_triton("conv_transpose")


@torch.library.custom_op("dlkern::channel_sum", mutates_args=())
def channel_sum(t: Tensor) -> Tensor:
    if _dispatch.backend_for("conv_transpose", t) == "triton":
        from dlkern.kernels.triton import conv as triton_conv
        return triton_conv.channel_sum(rank3_view(t))
    return torch.from_numpy(numba_channel.channel_sum(as_rank3_array(t)))


@channel_sum.register_fake
def _(t):
    return t.new_empty((t.shape[1],))


@torch.library.custom_op("dlkern::conv_transpose", mutates_args=())
def conv_transpose(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
                   padding: Sequence[int], dilation: Sequence[int], groups: int,
                   output_size: Sequence[int]) -> Tensor:
    c_out = weight.shape[1] * groups
    out = _dispatch.new_output((input.shape[0], c_out, *output_size), input,
                               memory_format=output_format(input, weight))
    if _dispatch.backend_for("conv_transpose", input, weight, bias) == "triton":
        _triton_backward_input(rank3_view(input), rank3_view(weight), rank3(stride, 1),
                               rank3(padding, 0), rank3(dilation, 1), groups, rank3_view(out),
                               None if bias is None else bias.detach())
        return out
    x = as_rank3_array(input)
    w = as_rank3_array(weight)
    b = None if bias is None else bias.detach().contiguous().numpy()

    def write(o):
        _backward_input_kernel(x, w, rank3(stride, 1), rank3(padding, 0), rank3(dilation, 1),
                               groups, o)
        if b is not None:
            numba_channel.add_channel_bias(o, b)

    return write_rank3(out, write)


@conv_transpose.register_fake
def _(input, weight, bias, stride, padding, dilation, groups, output_size):
    return torch.empty((input.shape[0], weight.shape[1] * groups, *output_size), dtype=input.dtype,
                       device=input.device, memory_format=output_format(input, weight))


def _backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.params
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    grad_input = grad_weight = grad_bias = None
    if need_input:
        grad_input = conv_op(grad_output, weight, None, stride, padding, dilation, groups,
                             list(input.shape[2:]))
    if need_weight:
        grad_weight, _ = conv_backward_weight_op(input, grad_output, list(weight.shape), stride,
                                                 padding, dilation, groups, False)
    if need_bias and ctx.has_bias:
        grad_bias = channel_sum(grad_output)
    return grad_input, grad_weight, grad_bias, None, None, None, None, None


conv_transpose.register_autograd(_backward, setup_context=_conv_setup_context)


_TORCH_CONV_TRANSPOSE = {1: torch.nn.functional.conv_transpose1d,
                         2: torch.nn.functional.conv_transpose2d,
                         3: torch.nn.functional.conv_transpose3d}


def convolution_transpose(op, input, weight, bias, stride, padding, output_padding, groups,
                          dilation, nsp):
    """The public transposed convolution: check, pick the backend, run (or fall back to torch)."""
    from dlkern import _validate

    x, unbatched, stride_t, pad_t, _, dil_t, out_spatial = _validate.conv_transpose_args(
        op, input, weight, bias, stride, padding, output_padding, groups, dilation, nsp)
    if _dispatch.backend_for("conv_transpose", x, weight, bias) is None:
        _dispatch.fallback("conv_transpose", x, weight, bias)
        return _TORCH_CONV_TRANSPOSE[nsp](input, weight, bias, stride, padding, output_padding,
                                          groups, dilation)
    out = conv_transpose(x, weight, bias, list(stride_t), list(pad_t), list(dil_t), int(groups),
                         list(out_spatial))
    return out.squeeze(0) if unbatched else out
