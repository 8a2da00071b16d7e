"""Argument checks of the convolution family: conv, conv_transpose, depthwise, depthwise-separable
and spatial separable convolution.

Zero-size tensors follow torch (the classes of torch's OpInfo error and sample inputs): an empty
batch gives an empty batch; a weight with no filters (conv: out_channels, conv_transpose:
in_channels or out_channels/groups), a kernel of size 0, or an input with an empty spatial axis
raise RuntimeError. One deliberate difference: a convolution with zero input channels (weight
(C_out, 0, *k)) returns (N, C_out, *out) filled with the bias (zeros without one), the value of
an empty sum, where torch returns zero output channels.
Mixed devices raise RuntimeError, including a meta tensor with CPU ones (which torch's meta kernels
let through; no two real devices mix in torch).
"""
import numbers

from dlkern._validate.common import _check_same_kind, _shape, check_tensor, expand_param


def _conv_common(op, input, weight, bias, stride, dilation, groups, nsp, weight_layout):
    """The checks every convolution shares: tensors, groups, ranks, dtypes, device, stride and
    dilation. Returns ``(batched_input, unbatched, stride, dilation, groups)``."""
    check_tensor(input, "input")
    check_tensor(weight, "weight")
    if bias is not None:
        check_tensor(bias, "bias")
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    groups = int(groups)
    if weight.dim() != nsp + 2:
        raise RuntimeError(
            f"{op}: expected weight to be {nsp + 2}-dimensional ({weight_layout}, *kernel), but "
            f"got weight of size {_shape(weight)}"
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
    if weight.shape[0] == 0:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be at least 1 at dimension 0, but got "
            f"weight of size {_shape(weight)} instead"
        )
    if any(k == 0 for k in weight.shape[2:]):
        raise RuntimeError(f"{op}: expected a kernel of positive size, but got weight of size "
                           f"{_shape(weight)}")
    if any(s == 0 for s in x.shape[2:]):
        raise RuntimeError(
            f"{op}: Only zero batch or zero channel inputs are supported, but got input shape: "
            f"{_shape(input)}"
        )
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
    if any(v <= 0 for v in stride):
        raise RuntimeError(f"{op}: non-positive stride is not supported (stride={list(stride)})")
    if any(d <= 0 for d in dilation):
        raise RuntimeError(f"{op}: non-positive dilation is not supported (dilation={list(dilation)})")
    if groups <= 0:
        raise RuntimeError(f"{op}: non-positive groups is not supported (groups={groups})")
    return x, unbatched, stride, dilation, groups


def conv_args(op, input, weight, bias, stride, padding, dilation, groups, nsp):
    """Check a convolution call of spatial rank ``nsp`` and canonicalise it.

    Returns ``(batched_input, unbatched, stride, pad_lo, dilation, out_spatial)``: tuples of nsp
    ints; ``pad_lo`` is the padding before each axis and ``out_spatial`` the output size (the
    padding after each axis, which differs from pad_lo for even 'same' kernels, is implied by it).
    """
    x, unbatched, stride, dilation, groups = _conv_common(
        op, input, weight, bias, stride, dilation, groups, nsp, "out_channels, in_channels/groups")
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
    if isinstance(padding, str):
        raise TypeError(f"{op}(): argument 'padding' must be tuple of ints, not str")
    x, unbatched, stride, dilation, groups = _conv_common(
        op, input, weight, bias, stride, dilation, groups, nsp, "in_channels, out_channels/groups")
    padding = expand_param(padding, nsp, "padding")
    output_padding = expand_param(output_padding, nsp, "output_padding")
    if any(p < 0 for p in padding):
        raise RuntimeError(f"{op}: negative padding is not supported (padding={list(padding)})")
    if any(p < 0 for p in output_padding):
        raise RuntimeError(f"{op}: negative output_padding is not supported (output_padding={list(output_padding)})")
    if any(op_ >= s and op_ >= d for op_, s, d in zip(output_padding, stride, dilation)):
        raise RuntimeError(
            f"{op}: output padding must be smaller than either stride or dilation, but got "
            f"output_padding={list(output_padding)}, stride={list(stride)}, dilation={list(dilation)}"
        )
    c_in, cout_g = weight.shape[0], weight.shape[1]
    if cout_g == 0:
        raise RuntimeError(f"{op}: expected weight to be at least 1 at dimension 1 (out_channels / "
                           f"groups), but got weight of size {_shape(weight)}")
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


# ---- separable convolutions (depthwise, depthwise-separable, spatial separable)

def depthwise_args(op, input, weight, bias, stride, padding, dilation, nsp):
    """Check a convolution with groups == in_channels (weight (C_in*m, 1, *k)); as conv_args."""
    check_tensor(input, "input")
    check_tensor(weight, "weight")
    c_in = input.shape[-(nsp + 1)] if input.dim() in (nsp + 1, nsp + 2) else 1
    if weight.dim() == nsp + 2 and input.dim() in (nsp + 1, nsp + 2):
        if weight.shape[1] != 1:
            raise RuntimeError(
                f"{op}: expected a depthwise weight of size (in_channels*multiplier, 1, *kernel), "
                f"but got weight of size {_shape(weight)}"
            )
        if c_in == 0 or weight.shape[0] % c_in != 0:
            raise RuntimeError(
                f"{op}: depthwise weight of size {_shape(weight)} does not fit input of size "
                f"{_shape(input)}: its {weight.shape[0]} output channels are not a multiple of "
                f"the input's {c_in} channels"
            )
    return conv_args(op, input, weight, bias, stride, padding, dilation, c_in, nsp)


def depthwise_separable_args(op, input, depthwise_weight, pointwise_weight, depthwise_bias,
                             pointwise_bias, stride, padding, dilation, nsp):
    """Check a depthwise-separable convolution; returns what conv_args returns for its depthwise
    stage (the pointwise stage keeps the spatial size)."""
    result = depthwise_args(op, input, depthwise_weight, depthwise_bias, stride, padding, dilation,
                            nsp)
    x = result[0]
    _check_same_kind(op, "pointwise_weight", pointwise_weight, x)
    cm = depthwise_weight.shape[0]
    if pointwise_weight.dim() != nsp + 2:
        raise RuntimeError(
            f"{op}: expected pointwise_weight to be {nsp + 2}-dimensional (out_channels, "
            f"{cm}{', 1' * nsp}), but got pointwise_weight of size {_shape(pointwise_weight)}"
        )
    if pointwise_weight.shape[1] != cm:
        raise RuntimeError(
            f"{op}: pointwise_weight of size {_shape(pointwise_weight)} expects input with "
            f"{pointwise_weight.shape[1]} channels, but the depthwise stage (depthwise_weight of "
            f"size {_shape(depthwise_weight)}) gives {cm} channels"
        )
    if any(k != 1 for k in pointwise_weight.shape[2:]):
        raise RuntimeError(
            f"{op}: expected a 1x1 pointwise_weight, but got pointwise_weight of size "
            f"{_shape(pointwise_weight)}"
        )
    if pointwise_bias is not None:
        _check_same_kind(op, "pointwise_bias", pointwise_bias, x)
        if pointwise_bias.dim() != 1 or pointwise_bias.shape[0] != pointwise_weight.shape[0]:
            raise RuntimeError(
                f"{op}: given pointwise_weight of size {_shape(pointwise_weight)}, expected "
                f"pointwise_bias to be 1-dimensional with {pointwise_weight.shape[0]} elements, "
                f"but got pointwise_bias of size {_shape(pointwise_bias)}"
            )
    return result


def spatial_separable_args(op, input, weight_v, weight_h, bias_v, bias_h, stride, padding,
                           dilation):
    """Check a spatial separable convolution: conv2d(input, weight_v (C_mid, C_in, kh, 1), bias_v,
    stride (sh, 1), padding (ph, 0), dilation (dh, 1)) then conv2d(., weight_h (C_out, C_mid, 1, kw),
    bias_h, stride (1, sw), padding (0, pw), dilation (1, dw)); padding strings apply to both.

    Returns (batched_input, unbatched, stride, pad_lo, dilation, out_spatial, torch_args) with
    (vertical, horizontal) pairs and torch_args = the (stride, padding, dilation) of each conv.
    """
    check_tensor(input, "input")
    check_tensor(weight_v, "weight_v")
    check_tensor(weight_h, "weight_h")
    for name, w, axis in (("weight_v", weight_v, 3), ("weight_h", weight_h, 2)):
        if w.dim() != 4:
            raise RuntimeError(
                f"{op}: expected {name} to be 4-dimensional, but got {name} of size {_shape(w)}"
            )
        if w.shape[axis] != 1:
            shape = "(C_mid, C_in, kh, 1)" if name == "weight_v" else "(C_out, C_mid, 1, kw)"
            raise RuntimeError(f"{op}: expected {name} of shape {shape}, but got {_shape(w)}")
    sh, sw = expand_param(stride, 2, "stride")
    dh, dw = expand_param(dilation, 2, "dilation")
    if isinstance(padding, str):
        pad_v = pad_h = padding
    else:
        ph, pw = expand_param(padding, 2, "padding")
        pad_v, pad_h = (ph, 0), (0, pw)
    x, unbatched, _, lo_v, _, out_v = conv_args(op, input, weight_v, bias_v, (sh, 1), pad_v,
                                                (dh, 1), 1, 2)
    mid = x.new_zeros(()).expand(x.shape[0], weight_v.shape[0], *out_v)
    _, _, _, lo_h, _, out_h = conv_args(op, mid, weight_h, bias_h, (1, sw), pad_h, (1, dw), 1, 2)
    torch_args = (((sh, 1), pad_v, (dh, 1)), ((1, sw), pad_h, (1, dw)))
    return (x, unbatched, (sh, sw), (lo_v[0], lo_h[1]), (dh, dw), (out_v[0], out_h[1]),
            torch_args)
