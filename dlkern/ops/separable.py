"""Depthwise, depthwise-separable and spatial separable convolution as torch custom ops.

Ops in the ``dlkern`` namespace, each with a fake (meta) implementation and autograd:

* ``dlkern::depthwise_separable_conv(input, depthwise_weight, pointwise_weight, depthwise_bias,
  pointwise_bias, stride, padding, dilation, output_size)``: depthwise then 1x1, fused; gradient op
  ``depthwise_separable_conv_backward``.
* ``dlkern::spatial_separable_conv(input, weight_v, weight_h, bias_v, bias_h, stride, padding,
  dilation, output_size)``: the (kh x 1) then (1 x kw) convolutions, fused; gradient op
  ``spatial_separable_conv_backward``.

As in dlkern.ops.conv: ``input`` is batched, ``padding`` is the low-side padding per axis and
``output_size`` the spatial output size; arguments are checked by dlkern._validate before these
ops run. Each op runs the Numba kernels (CPU) or the Triton kernels (CUDA, or CPU tensors under
DLKERN_BACKEND=triton with TRITON_INTERPRET=1), as dlkern._dispatch.backend_for decides; without a
kernel for the case (dtype, device) the public functions fall back to torch's two convolutions,
counted by dlkern._dispatch. (A plain depthwise convolution is
``dlkern::conv`` with groups == C_in: dlkern.ops.conv routes it to the depthwise kernels.)
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dlkern import _dispatch
from dlkern.kernels.numba import depthwise as numba_depthwise
from dlkern.kernels.numba import separable as numba_separable
from dlkern.ops.layout import (as_array, as_rank3_array, output_format, rank3, rank3_view,
                              write_array, write_rank3)

_TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

_dispatch.register_triton("depthwise_separable_conv", "spatial_separable_conv")


def _triton():
    """The Triton kernels, imported on the first call that runs them (Triton is optional)."""
    from dlkern.kernels.triton import separable

    return separable


def _empty_grad(like):
    return like.new_empty((0,))


# ---------------------------------------------------------------- depthwise convolution


def depthwise_channels_last(input, weight, bias, stride, padding, dilation, out):
    """The forward of ``dlkern::conv`` for a depthwise convolution of a channels_last input (CPU):
    the kernel reads ``input`` and writes ``out`` (channels_last too, as torch returns it) in
    place, through strided NumPy views; no layout copy either way."""
    x = rank3_view(input).numpy()
    w = as_rank3_array(weight)
    b = None if bias is None else bias.detach().contiguous().numpy()
    o = rank3_view(out).numpy()
    numba_depthwise.depthwise_forward(x, w, b, rank3(stride, 1), rank3(padding, 0),
                                      rank3(dilation, 1), o)
    return out


def depthwise_backward_input_channels_last(grad_output, weight, stride, padding, dilation,
                                           grad_input):
    """``dlkern::conv_backward_input`` of a depthwise convolution whose output gradient is
    channels_last (CPU): read and written in place through strided NumPy views."""
    numba_depthwise.depthwise_backward_input(
        rank3_view(grad_output).numpy(), as_rank3_array(weight), rank3(stride, 1),
        rank3(padding, 0), rank3(dilation, 1), rank3_view(grad_input).numpy())
    return grad_input


# ---------------------------------------------------------------- depthwise-separable


@torch.library.custom_op("dlkern::depthwise_separable_conv", mutates_args=())
def depthwise_separable_conv(input: Tensor, depthwise_weight: Tensor, pointwise_weight: Tensor,
                             depthwise_bias: Optional[Tensor], pointwise_bias: Optional[Tensor],
                             stride: Sequence[int], padding: Sequence[int],
                             dilation: Sequence[int], output_size: Sequence[int]) -> Tensor:
    out = _dispatch.new_output((input.shape[0], pointwise_weight.shape[0], *output_size), input,
                               memory_format=output_format(input))
    if _dispatch.backend_for("depthwise_separable_conv", input, depthwise_weight) == "triton":
        _triton().dsconv_forward(
            rank3_view(input), rank3_view(depthwise_weight), depthwise_bias,
            pointwise_weight.reshape(pointwise_weight.shape[0], -1), pointwise_bias,
            rank3(stride, 1), rank3(padding, 0), rank3(dilation, 1), rank3_view(out))
        return out
    x = as_rank3_array(input)
    wd = as_rank3_array(depthwise_weight)
    wp = as_array(pointwise_weight).reshape(pointwise_weight.shape[0], -1)
    write_rank3(out, lambda o: numba_separable.dsconv_forward(
        x, wd, as_array(depthwise_bias), wp, as_array(pointwise_bias), rank3(stride, 1),
        rank3(padding, 0), rank3(dilation, 1), o))
    return out


@depthwise_separable_conv.register_fake
def _(input, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias, stride, padding,
      dilation, output_size):
    return torch.empty((input.shape[0], pointwise_weight.shape[0], *output_size),
                       dtype=input.dtype, device=input.device, memory_format=output_format(input))


@torch.library.custom_op("dlkern::depthwise_separable_conv_backward", mutates_args=())
def depthwise_separable_conv_backward(grad_output: Tensor, input: Tensor, depthwise_weight: Tensor,
                                      pointwise_weight: Tensor, depthwise_bias: Optional[Tensor],
                                      stride: Sequence[int], padding: Sequence[int],
                                      dilation: Sequence[int], input_grad: bool
                                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad input (empty unless input_grad), grad depthwise weight, grad pointwise weight,
    grad depthwise bias, grad pointwise bias)."""
    if _dispatch.backend_for("depthwise_separable_conv", grad_output, input) == "triton":
        grad_input = (_dispatch.new_output(tuple(input.shape), grad_output,
                                           memory_format=output_format(grad_output))
                      if input_grad else _empty_grad(grad_output))
        dwd, dwp, dbd, dbp = _triton().dsconv_backward(
            rank3_view(input), rank3_view(depthwise_weight), depthwise_bias,
            pointwise_weight.reshape(pointwise_weight.shape[0], -1), rank3_view(grad_output),
            rank3(stride, 1), rank3(padding, 0), rank3(dilation, 1),
            rank3_view(grad_input) if input_grad else None, (True, True))
        return (grad_input, dwd.reshape(depthwise_weight.shape),
                dwp.reshape(pointwise_weight.shape), dbd, dbp)
    x = as_rank3_array(input)
    wd = as_rank3_array(depthwise_weight)
    wp = as_array(pointwise_weight).reshape(pointwise_weight.shape[0], -1)
    dy = as_rank3_array(grad_output)
    grads = []

    def run(dx):
        grads.extend(numba_separable.dsconv_backward(
            x, wd, as_array(depthwise_bias), wp, dy, rank3(stride, 1), rank3(padding, 0),
            rank3(dilation, 1), dx))

    if input_grad:
        grad_input = _dispatch.new_output(tuple(input.shape), grad_output,
                                          memory_format=output_format(grad_output))
        write_rank3(grad_input, run)
    else:
        grad_input = _empty_grad(grad_output)
        run(None)
    dwd, dwp, dbd, dbp = (torch.from_numpy(g) for g in grads)
    return (grad_input, dwd.reshape(depthwise_weight.shape), dwp.reshape(pointwise_weight.shape),
            dbd, dbp)


@depthwise_separable_conv_backward.register_fake
def _(grad_output, input, depthwise_weight, pointwise_weight, depthwise_bias, stride, padding,
      dilation, input_grad):
    grad_input = (torch.empty(tuple(input.shape), dtype=grad_output.dtype,
                              device=grad_output.device, memory_format=output_format(grad_output))
                  if input_grad else grad_output.new_empty((0,)))
    return (grad_input, grad_output.new_empty(depthwise_weight.shape),
            grad_output.new_empty(pointwise_weight.shape),
            grad_output.new_empty((depthwise_weight.shape[0],)),
            grad_output.new_empty((pointwise_weight.shape[0],)))


def _two_conv_setup_context(ctx, inputs, output):
    """Saved for the backward of both fused ops: input, both weights and the first bias."""
    input, w1, w2, b1, b2, stride, padding, dilation, output_size = inputs
    ctx.save_for_backward(input, w1, w2, b1)
    ctx.has_bias = (b1 is not None, b2 is not None)
    ctx.params = (list(stride), list(padding), list(dilation))


def _two_conv_backward(backward_op):
    """The autograd backward of a fused op whose gradient op returns all five gradients."""
    def backward(ctx, grad_output):
        input, w1, w2, b1 = ctx.saved_tensors
        stride, padding, dilation = ctx.params
        need = ctx.needs_input_grad[:5]
        if not any(need):
            return (None,) * 9
        gx, gw1, gw2, gb1, gb2 = _dispatch.call(backward_op, grad_output, input, w1, w2, b1,
                                                stride, padding, dilation, bool(need[0]))
        keep = lambda g, k: g if need[k] else None  # noqa: E731
        return (keep(gx, 0), keep(gw1, 1), keep(gw2, 2), keep(gb1, 3) if ctx.has_bias[0] else None,
                keep(gb2, 4) if ctx.has_bias[1] else None, None, None, None, None)

    return backward


depthwise_separable_conv.register_autograd(_two_conv_backward(depthwise_separable_conv_backward),
                                           setup_context=_two_conv_setup_context)


def depthwise_separable(op, input, depthwise_weight, pointwise_weight, depthwise_bias,
                        pointwise_bias, stride, padding, dilation, nsp):
    """The public depthwise-separable convolution: check, pick the backend, run or fall back."""
    from dlkern import _validate

    x, unbatched, stride_t, pad_lo, dil_t, out_spatial = _validate.depthwise_separable_args(
        op, input, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias, stride,
        padding, dilation, nsp)
    tensors = (x, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias)
    if _dispatch.backend_for("depthwise_separable_conv", *tensors) is None:
        _dispatch.fallback("depthwise_separable_conv", *tensors)
        mid = _TORCH_CONV[nsp](input, depthwise_weight, depthwise_bias, stride, padding, dilation,
                               x.shape[1])
        return _TORCH_CONV[nsp](mid, pointwise_weight, pointwise_bias)
    out = _dispatch.call(depthwise_separable_conv, x, depthwise_weight, pointwise_weight,
                         depthwise_bias, pointwise_bias, list(stride_t), list(pad_lo),
                         list(dil_t), list(out_spatial))
    return out.squeeze(0) if unbatched else out


# ---------------------------------------------------------------- spatial separable


def _spatial_arrays(input, weight_v, weight_h):
    """x (N, C_in, H, W); wv (KH, C_mid, C_in); wh (C_out, C_mid*KW); all C-contiguous."""
    x = input.detach().contiguous().numpy()
    wv = weight_v.detach()[..., 0].permute(2, 0, 1).contiguous().numpy()
    wh = weight_h.detach().contiguous().numpy().reshape(weight_h.shape[0], -1)
    return x, wv, wh


def _spatial_format(input, weight_v, weight_h):
    """The output's memory format as torch's two convolutions give it: the first is channels_last
    when the input or weight_v is, the second when that or weight_h is."""
    fmt = output_format(input, weight_v)
    return fmt if fmt is not torch.contiguous_format else output_format(weight_h)


@torch.library.custom_op("dlkern::spatial_separable_conv", mutates_args=())
def spatial_separable_conv(input: Tensor, weight_v: Tensor, weight_h: Tensor,
                           bias_v: Optional[Tensor], bias_h: Optional[Tensor],
                           stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                           output_size: Sequence[int]) -> Tensor:
    out = _dispatch.new_output((input.shape[0], weight_h.shape[0], *output_size), input,
                               memory_format=_spatial_format(input, weight_v, weight_h))
    if _dispatch.backend_for("spatial_separable_conv", input, weight_v) == "triton":
        _triton().spatial_forward(input, weight_v, bias_v, weight_h, bias_h, tuple(stride),
                                  tuple(padding), tuple(dilation), out)
        return out
    x, wv, wh = _spatial_arrays(input, weight_v, weight_h)
    write_array(out, lambda o: numba_separable.spatial_forward(
        x, wv, as_array(bias_v), wh, as_array(bias_h), weight_h.shape[3], tuple(stride),
        tuple(padding), tuple(dilation), o))
    return out


@spatial_separable_conv.register_fake
def _(input, weight_v, weight_h, bias_v, bias_h, stride, padding, dilation, output_size):
    return torch.empty((input.shape[0], weight_h.shape[0], *output_size), dtype=input.dtype,
                       device=input.device,
                       memory_format=_spatial_format(input, weight_v, weight_h))


@torch.library.custom_op("dlkern::spatial_separable_conv_backward", mutates_args=())
def spatial_separable_conv_backward(grad_output: Tensor, input: Tensor, weight_v: Tensor,
                                    weight_h: Tensor, bias_v: Optional[Tensor],
                                    stride: Sequence[int], padding: Sequence[int],
                                    dilation: Sequence[int], input_grad: bool
                                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad input (empty unless input_grad), grad weight_v, grad weight_h, grad bias_v,
    grad bias_h)."""
    if _dispatch.backend_for("spatial_separable_conv", grad_output, input) == "triton":
        grad_input = (_dispatch.new_output(tuple(input.shape), grad_output,
                                           memory_format=output_format(grad_output))
                      if input_grad else _empty_grad(grad_output))
        dwv, dwh, dbv, dbh = _triton().spatial_backward(
            input, weight_v, bias_v, weight_h, grad_output, tuple(stride), tuple(padding),
            tuple(dilation), grad_input if input_grad else None, (True, True))
        return grad_input, dwv, dwh, dbv, dbh
    x, wv, wh = _spatial_arrays(input, weight_v, weight_h)
    dy = grad_output.detach().contiguous().numpy()
    grads = []

    def run(dx):
        grads.extend(numba_separable.spatial_backward(
            x, wv, as_array(bias_v), wh, dy, weight_h.shape[3], tuple(stride), tuple(padding),
            tuple(dilation), dx))

    if input_grad:
        grad_input = _dispatch.new_output(tuple(input.shape), grad_output,
                                          memory_format=output_format(grad_output))
        write_array(grad_input, run)
    else:
        grad_input = _empty_grad(grad_output)
        run(None)
    dwv, dwh, dbv, dbh = (torch.from_numpy(g) for g in grads)
    dwv = dwv.permute(1, 2, 0).unsqueeze(-1).contiguous()
    return grad_input, dwv, dwh.reshape(weight_h.shape), dbv, dbh


@spatial_separable_conv_backward.register_fake
def _(grad_output, input, weight_v, weight_h, bias_v, stride, padding, dilation, input_grad):
    grad_input = (torch.empty(tuple(input.shape), dtype=grad_output.dtype,
                              device=grad_output.device, memory_format=output_format(grad_output))
                  if input_grad else grad_output.new_empty((0,)))
    return (grad_input, grad_output.new_empty(weight_v.shape),
            grad_output.new_empty(weight_h.shape), grad_output.new_empty((weight_v.shape[0],)),
            grad_output.new_empty((weight_h.shape[0],)))


spatial_separable_conv.register_autograd(_two_conv_backward(spatial_separable_conv_backward),
                                         setup_context=_two_conv_setup_context)


def spatial_separable(op, input, weight_v, weight_h, bias_v, bias_h, stride, padding, dilation):
    """The public spatial separable convolution: check, pick the backend, run or fall back."""
    from dlkern import _validate

    x, unbatched, stride_t, pad_lo, dil_t, out_spatial, torch_args = \
        _validate.spatial_separable_args(op, input, weight_v, weight_h, bias_v, bias_h, stride,
                                         padding, dilation)
    tensors = (x, weight_v, weight_h, bias_v, bias_h)
    if _dispatch.backend_for("spatial_separable_conv", *tensors) is None:
        _dispatch.fallback("spatial_separable_conv", *tensors)
        (s_v, p_v, d_v), (s_h, p_h, d_h) = torch_args
        mid = F.conv2d(input, weight_v, bias_v, s_v, p_v, d_v)
        return F.conv2d(mid, weight_h, bias_h, s_h, p_h, d_h)
    out = _dispatch.call(spatial_separable_conv, x, weight_v, weight_h, bias_v, bias_h,
                         list(stride_t), list(pad_lo), list(dil_t), list(out_spatial))
    return out.squeeze(0) if unbatched else out


__all__: List[str] = ["depthwise_separable", "spatial_separable"]
