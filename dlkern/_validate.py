"""Every argument check of dlkern, in one place, raising the exception type torch raises.

Kernels assume valid arguments: nothing reaches them before these checks have passed. Messages
name the argument and the shapes. No ``assert`` (it vanishes under ``python -O``).
"""
import numbers

import torch


def _shape(t):
    return list(t.shape)


def expand_param(value, n, name):
    """An int or a sequence of n ints (a 1-sequence is broadcast, as torch does) -> tuple of n ints."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor)):
        raise TypeError(f"{name} must be an int or a tuple of ints, got {type(value).__name__}")
    if isinstance(value, numbers.Integral):
        return (int(value),) * n
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of ints, got {value!r}") from None
    for v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int or a tuple of ints, got {value!r}")
    if len(items) == 1:
        items = items * n
    if len(items) != n:
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of {n} values to match the "
            f"convolution dimensions, but got {name}={[int(v) for v in items]}"
        )
    return tuple(int(v) for v in items)


def check_tensor(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")


def conv_args(op, input, weight, bias, stride, padding, dilation, groups, nsp):
    """Check a convolution call of spatial rank ``nsp`` and canonicalise it.

    Returns ``(batched_input, unbatched, stride, pad_lo, dilation, out_spatial)``: tuples of nsp
    ints; ``pad_lo`` is the padding before each axis and ``out_spatial`` the output size (the
    padding after each axis, which differs from pad_lo for even 'same' kernels, is implied by it).
    """
    check_tensor(input, "input")
    check_tensor(weight, "weight")
    if bias is not None:
        check_tensor(bias, "bias")
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    groups = int(groups)
    if weight.dim() != nsp + 2:
        raise RuntimeError(
            f"{op}: expected weight to be {nsp + 2}-dimensional (out_channels, in_channels/groups, "
            f"*kernel), but got weight of size {_shape(weight)}"
        )
    stride = expand_param(stride, nsp, "stride")
    dilation = expand_param(dilation, nsp, "dilation")
    if input.dim() not in (nsp + 1, nsp + 2):
        raise RuntimeError(
            f"Expected {nsp + 1}D (unbatched) or {nsp + 2}D (batched) input to {op}, but got input "
            f"of size: {_shape(input)}"
        )
    unbatched = input.dim() == nsp + 1
    x = input.unsqueeze(0) if unbatched else input
    if x.dtype != weight.dtype:
        raise RuntimeError(
            f"{op}: input type ({x.dtype}) and weight type ({weight.dtype}) should be the same"
        )
    if bias is not None and bias.dtype != weight.dtype:
        raise RuntimeError(f"{op}: input type ({x.dtype}) and bias type ({bias.dtype}) should be the same")
    devices = {t.device for t in (x, weight, bias) if t is not None}
    if len(devices) != 1:
        raise RuntimeError(
            f"{op}: expected input, weight and bias on one device, got {sorted(map(str, devices))}"
        )
    if any(s <= 0 for s in stride):
        raise RuntimeError(f"{op}: non-positive stride is not supported (stride={list(stride)})")
    if any(d <= 0 for d in dilation):
        raise RuntimeError(f"{op}: non-positive dilation is not supported (dilation={list(dilation)})")
    if groups <= 0:
        raise RuntimeError(f"{op}: non-positive groups is not supported (groups={groups})")
    c_out, cin_g = weight.shape[0], weight.shape[1]
    if c_out % groups != 0:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
            f"but got weight of shape {_shape(weight)} instead"
        )
    if x.shape[1] != cin_g * groups:
        raise RuntimeError(
            f"Given groups={groups}, weight of size {_shape(weight)}, expected input{_shape(x)} to "
            f"have {cin_g * groups} channels, but got {x.shape[1]} channels instead"
        )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != c_out):
        raise RuntimeError(
            f"Given weight of size {_shape(weight)}, expected bias to be 1-dimensional with {c_out} "
            f"elements, but got bias of size {_shape(bias)} instead"
        )
    kernel = tuple(weight.shape[2:])
    if isinstance(padding, str):
        if padding == "valid":
            pad_lo = pad_hi = (0,) * nsp
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise RuntimeError(f"{op}: padding='same' is not supported for strided convolutions")
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            pad_lo = tuple(t // 2 for t in total)
            pad_hi = tuple(t - lo for t, lo in zip(total, pad_lo))
        else:
            raise RuntimeError(f"{op}: Invalid padding string: {padding!r}")
    else:
        pad_lo = pad_hi = expand_param(padding, nsp, "padding")
        if any(p < 0 for p in pad_lo):
            raise RuntimeError(f"{op}: negative padding is not supported (padding={list(pad_lo)})")
    spatial = tuple(x.shape[2:])
    padded = [s + lo + hi for s, lo, hi in zip(spatial, pad_lo, pad_hi)]
    dilated = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    if any(p < k for p, k in zip(padded, dilated)):
        raise RuntimeError(
            f"{op}: Calculated padded input size per channel: ({' x '.join(map(str, padded))}). "
            f"Kernel size: ({' x '.join(map(str, dilated))}). Kernel size can't be greater than "
            "actual input size"
        )
    out_spatial = tuple((p - k) // s + 1 for p, k, s in zip(padded, dilated, stride))
    return x, unbatched, stride, pad_lo, dilation, out_spatial


def conv_transpose_args(op, input, weight, bias, stride, padding, output_padding, groups,
                        dilation, nsp):
    """Check a transposed convolution call of spatial rank ``nsp`` and canonicalise it.

    Returns ``(batched_input, unbatched, stride, padding, output_padding, dilation, out_spatial)``.
    The weight is (C_in, C_out / groups, *kernel), as torch's.
    """
    check_tensor(input, "input")
    check_tensor(weight, "weight")
    if bias is not None:
        check_tensor(bias, "bias")
    if isinstance(padding, str):
        raise TypeError(f"{op}(): argument 'padding' must be tuple of ints, not str")
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    groups = int(groups)
    if weight.dim() != nsp + 2:
        raise RuntimeError(
            f"{op}: expected weight to be {nsp + 2}-dimensional (in_channels, out_channels/groups, "
            f"*kernel), but got weight of size {_shape(weight)}"
        )
    stride = expand_param(stride, nsp, "stride")
    padding = expand_param(padding, nsp, "padding")
    output_padding = expand_param(output_padding, nsp, "output_padding")
    dilation = expand_param(dilation, nsp, "dilation")
    if input.dim() not in (nsp + 1, nsp + 2):
        raise RuntimeError(
            f"Expected {nsp + 1}D (unbatched) or {nsp + 2}D (batched) input to {op}, but got input "
            f"of size: {_shape(input)}"
        )
    unbatched = input.dim() == nsp + 1
    x = input.unsqueeze(0) if unbatched else input
    if x.dtype != weight.dtype:
        raise RuntimeError(f"{op}: input type ({x.dtype}) and weight type ({weight.dtype}) should be the same")
    if bias is not None and bias.dtype != weight.dtype:
        raise RuntimeError(f"{op}: input type ({x.dtype}) and bias type ({bias.dtype}) should be the same")
    devices = {t.device for t in (x, weight, bias) if t is not None}
    if len(devices) != 1:
        raise RuntimeError(f"{op}: expected input, weight and bias on one device, got {sorted(map(str, devices))}")
    if any(s <= 0 for s in stride):
        raise RuntimeError(f"{op}: non-positive stride is not supported (stride={list(stride)})")
    if any(d <= 0 for d in dilation):
        raise RuntimeError(f"{op}: non-positive dilation is not supported (dilation={list(dilation)})")
    if any(p < 0 for p in padding):
        raise RuntimeError(f"{op}: negative padding is not supported (padding={list(padding)})")
    if any(p < 0 for p in output_padding):
        raise RuntimeError(f"{op}: negative output_padding is not supported (output_padding={list(output_padding)})")
    if any(op_ >= s and op_ >= d for op_, s, d in zip(output_padding, stride, dilation)):
        raise RuntimeError(
            f"{op}: output padding must be smaller than either stride or dilation, but got "
            f"output_padding={list(output_padding)}, stride={list(stride)}, dilation={list(dilation)}"
        )
    if groups <= 0:
        raise RuntimeError(f"{op}: non-positive groups is not supported (groups={groups})")
    c_in, cout_g = weight.shape[0], weight.shape[1]
    if c_in % groups != 0:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
            f"but got weight of size {_shape(weight)} instead"
        )
    if x.shape[1] != c_in:
        raise RuntimeError(
            f"Given transposed=1, weight of size {_shape(weight)}, expected input{_shape(x)} to "
            f"have {c_in} channels, but got {x.shape[1]} channels instead"
        )
    c_out = cout_g * groups
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != c_out):
        raise RuntimeError(
            f"Given transposed=1, weight of size {_shape(weight)}, expected bias to be 1-dimensional "
            f"with {c_out} elements, but got bias of size {_shape(bias)} instead"
        )
    kernel = tuple(weight.shape[2:])
    out_spatial = tuple((i - 1) * s - 2 * p + d * (k - 1) + o + 1 for i, s, p, d, k, o in
                        zip(x.shape[2:], stride, padding, dilation, kernel, output_padding))
    if any(o < 0 for o in out_spatial):
        raise RuntimeError(
            f"{op}: the output size {list(out_spatial)} computed from input {_shape(x)}, weight "
            f"{_shape(weight)}, stride {list(stride)}, padding {list(padding)}, output_padding "
            f"{list(output_padding)} and dilation {list(dilation)} is negative"
        )
    return x, unbatched, stride, padding, output_padding, dilation, out_spatial
