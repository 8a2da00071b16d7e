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

The CPU forward has three algorithms, chosen in ``algorithm`` (override:
``DLKERN_CONV_TRANSPOSE_ALGO`` = ``phase``, ``pixel`` or ``col2im``, used where it applies;
``auto`` otherwise):

| algorithm | how                                                            | applies when     | auto picks it when |
| --------- | -------------------------------------------------------------- | ---------------- | ------------------ |
| pixel     | one product per group, (N x C_in/g) @ (C_in/g x C_out/g*taps)  | 1x1(x1) input, no | it applies |
|           | (a generator's first layer)                                      | padding, output = | |
|           |                                                                  | kernel, dilation 1 | |
| phase     | per output phase r (o = s*j + r on each axis) one dense, unit-  | dilation 1, not  | it applies, taps |
|           | stride convolution of the input with the taps k = (r + p) mod s | depthwise        | overlap (k > s) on >= 2 axes, C_out/g >= 16 (1-d: col2im measured faster) |
|           | + s*t of the flipped kernel (ceil(k/s) taps), written to the     |                  | |
|           | interleaved output: no zero insertion, no col2im scatter-add;    |                  | |
|           | each phase runs through conv's choice point (Winograd for the    |                  | |
|           | stride-1 3x3 case, GEMM else)                                    |                  | |
| col2im    | conv's input-gradient kernel (GEMM to columns, then scatter)     | always           | otherwise |

The gradients are convolutions (conv's choice point): d/dx = conv(grad, w) with the stride, d/dw
= conv's weight gradient with x as the output gradient.
"""
import os
from typing import Optional, Sequence

import numpy as np

import torch
from torch import Tensor

from dlkern import _dispatch
from dlkern.kernels.numba import channel as numba_channel
from dlkern.kernels.numba import conv as numba_conv
from dlkern.ops.conv import (_backward_input_kernel, _conv_setup_context, _forward_kernel,
                             _is_depthwise, _triton_backward_input)
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


ALGORITHMS = ("auto", "phase", "pixel", "col2im")


# Output channels per group below which the phase products (C_out/g rows) run slower than col2im's
# (C_out/g x taps rows).
PHASE_MIN_CHANNELS = 16


def algorithm(w_shape, stride, dilation, groups, padding=(0, 0, 0), in_spatial=None,
              out_spatial=None, force=None):
    """The CPU algorithm of a transposed convolution's forward (the table in the docstring);
    w_shape is the rank-3 transposed weight (C_in, C_out/g, KD, KH, KW), the rest rank-3 too."""
    forced = (force or os.environ.get("DLKERN_CONV_TRANSPOSE_ALGO", "") or "auto").strip().lower()
    if forced not in ALGORITHMS:
        raise ValueError(f"DLKERN_CONV_TRANSPOSE_ALGO={forced!r}: expected one of "
                         f"{', '.join(ALGORITHMS)}")
    dense = tuple(dilation) == (1, 1, 1) and not _is_depthwise(w_shape, groups)
    if forced == "col2im" or not dense:
        return "col2im"
    pixel = (in_spatial is not None and tuple(in_spatial) == (1, 1, 1)
             and tuple(padding) == (0, 0, 0) and tuple(out_spatial) == tuple(w_shape[2:]))
    if forced in ("phase", "pixel"):
        return forced if forced == "phase" or pixel else "col2im"
    if pixel:
        return "pixel"
    # taps overlap (kernel > stride) on two axes or more, and the phase products have enough rows
    overlaps = sum(k > s for k, s in zip(w_shape[2:], stride))
    return "phase" if overlaps >= 2 and w_shape[1] >= PHASE_MIN_CHANNELS else "col2im"


def _phase_taps(kernel, stride, padding, phase):
    """(first tap, tap count, conv padding) of output phase ``phase`` along one axis: outputs
    o = stride*j + phase take taps k = first + stride*t, t < count, from inputs j + (first tap's
    input offset) - t; as a correlation with the reversed taps, the padding before is count - 1 -
    (phase + padding - first) // stride (negative: the first inputs are skipped)."""
    first = (phase + padding) % stride
    count = max(0, -(-(kernel - first) // stride))
    shift = (phase + padding - first) // stride
    return first, count, count - 1 - shift


def pixel_forward(x, w, bias, groups, out):
    """out = conv_transpose(x, w) + bias for one input pixel, no padding and the output as large
    as the kernel (a generator's first layer): per group one product (N x C_in/g) @ (C_in/g x
    C_out/g * taps)."""
    n_img, c_in = x.shape[:2]
    cin_g, cout_g = c_in // groups, w.shape[1]
    taps = w[0, 0].size
    x2 = x.reshape(n_img, c_in)
    flat = out.reshape(n_img, groups, cout_g * taps)
    for g in range(groups):
        numba_conv.product(np.ascontiguousarray(x2[:, g * cin_g:(g + 1) * cin_g]),
                           w[g * cin_g:(g + 1) * cin_g].reshape(cin_g, cout_g * taps), flat[:, g])
    if bias is not None:
        numba_channel.add_channel_bias(out, bias)
    return out


def phase_forward(x, w, bias, stride, padding, groups, out):
    """out = conv_transpose(x, w) + bias (dilation 1) by output phases; rank-3 arrays as in
    numba/conv.py with w in the transposed layout (C_in, C_out/g, KD, KH, KW)."""
    import itertools

    if out.size == 0:
        return out
    c_in, cout_g = w.shape[:2]
    w3 = w.reshape(c_in, cout_g, -1)
    for phase in itertools.product(*(range(min(s, o)) for s, o in zip(stride, out.shape[2:]))):
        taps = [_phase_taps(k, s, p, r) for k, s, p, r in zip(w.shape[2:], stride, padding, phase)]
        view = out[:, :, phase[0]::stride[0], phase[1]::stride[1], phase[2]::stride[2]]
        if any(count == 0 for _, count, _ in taps):
            view[...] = 0.0 if bias is None else bias.reshape(1, -1, 1, 1, 1)
            continue
        # the phase's taps, reversed, as a convolution weight (C_out, C_in/g, taps)
        axes = [first + s * np.arange(count)[::-1] for (first, count, _), s in zip(taps, stride)]
        flat = np.ravel_multi_index(np.ix_(*axes), w.shape[2:]).ravel().astype(np.int64)
        sub = np.empty((groups * cout_g, c_in // groups, flat.size), dtype=w.dtype)
        numba_conv.gather_taps(w3, flat, groups, sub)
        sub = sub.reshape(sub.shape[:2] + tuple(count for _, count, _ in taps))
        xs = x
        crop = [max(0, -pad) for _, _, pad in taps]
        if any(crop):
            xs = np.ascontiguousarray(x[:, :, crop[0]:, crop[1]:, crop[2]:])
        pad = tuple(max(0, pad) for _, _, pad in taps)
        target = view if view.flags.c_contiguous else np.empty(view.shape, dtype=out.dtype)
        _forward_kernel(xs, sub, bias, (1, 1, 1), pad, (1, 1, 1), groups, target)
        if target is not view:
            view[...] = target
    return out


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
        name = algorithm(w.shape, rank3(stride, 1), rank3(dilation, 1), groups,
                         rank3(padding, 0), x.shape[2:], o.shape[2:])
        if name == "pixel":
            pixel_forward(x, w, b, groups, o)
            return
        if name == "phase":
            phase_forward(x, w, b, rank3(stride, 1), rank3(padding, 0), groups, o)
            return
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
        grad_input = _dispatch.call(conv_op, grad_output, weight, None, stride, padding,
                                    dilation, groups, list(input.shape[2:]))
    if need_weight:
        grad_weight, _ = _dispatch.call(conv_backward_weight_op, input, grad_output,
                                        list(weight.shape), stride, padding, dilation, groups,
                                        False)
    if need_bias and ctx.has_bias:
        grad_bias = _dispatch.call(channel_sum, grad_output)
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
    out = _dispatch.call(conv_transpose, x, weight, bias, list(stride_t), list(pad_t),
                         list(dil_t), int(groups), list(out_spatial))
    return out.squeeze(0) if unbatched else out
