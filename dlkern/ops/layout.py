"""Layout helpers shared by the convolution-family ops (conv, conv_transpose, separable).

Every convolution is a rank-3 convolution inside: (N, C, *spatial) with 1-3 spatial axes is
viewed as (N, C, D, H, W) with size-1 axes in front. These helpers build those views, pick the
memory format torch gives an output, and let a NumPy kernel fill a torch output of any layout.
"""
import torch

from dlkern import _dispatch


def rank3(values, fill):
    """Pad a per-axis tuple of 1-3 values to 3 (leading axes get ``fill``): the rank-3 form."""
    return (fill,) * (3 - len(values)) + tuple(int(v) for v in values)


def rank3_view(t):
    """``t`` (N, C, *spatial) as a rank-3 torch view (N, C, D, H, W), strides kept: no copy."""
    t = t.detach()
    while t.dim() < 5:
        t = t.unsqueeze(2)
    return t


def as_rank3_array(t):
    """A C-contiguous NumPy view (or copy) of ``t`` as (N, C, D, H, W); never writes to ``t``."""
    t = t.detach().contiguous()
    shape = tuple(t.shape[:2]) + rank3(t.shape[2:], 1)
    return t.numpy().reshape(shape)


def as_array(t):
    """A C-contiguous NumPy view (or copy) of ``t`` in its own shape, or None for None."""
    return None if t is None else t.detach().contiguous().numpy()


def channels_last_format(t):
    """torch.channels_last / channels_last_3d when ``t`` is laid out so (and not also contiguous),
    else None."""
    if t.is_contiguous():
        return None
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def output_format(t, weight=None):
    """The memory format torch gives a convolution's output for this input (and weight: torch
    returns channels_last when either of them is channels_last)."""
    return (channels_last_format(t) or (weight is not None and channels_last_format(weight))
            or torch.contiguous_format)


def write_rank3(result, write):
    """Let ``write(array)`` fill ``result`` through a C-contiguous (N, C, D, H, W) NumPy view,
    going through a contiguous buffer when ``result`` is not contiguous; returns ``result``."""
    if result.is_contiguous():
        shape = tuple(result.shape[:2]) + rank3(result.shape[2:], 1)
        write(result.numpy().reshape(shape))
        return result
    buffer = _dispatch.new_output(result.shape, result)
    write_rank3(buffer, write)
    result.copy_(buffer)
    return result


def write_array(result, write):
    """Let ``write(array)`` fill ``result`` through a C-contiguous NumPy view in its own shape,
    going through a contiguous buffer when ``result`` is not contiguous; returns ``result``."""
    if result.is_contiguous():
        write(result.numpy())
        return result
    buffer = _dispatch.new_output(result.shape, result)
    write(buffer.numpy())
    result.copy_(buffer)
    return result
