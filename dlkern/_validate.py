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


# --- attention (masked_softmax, scaled_dot_product_attention) ----------------------------------

def masked_softmax_args(input, mask, dim):
    """Check a masked_softmax call; returns ``dim`` as a non-negative int."""
    check_tensor(input, "input")
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"masked_softmax: dim must be an int, got {dim!r}")
    rank = max(1, input.dim())
    if not -rank <= int(dim) < rank:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-rank}, {rank - 1}], but got "
            f"{int(dim)}) for input of size {_shape(input)}"
        )
    if not input.is_floating_point():
        # torch.softmax raises NotImplementedError for integer tensors
        raise NotImplementedError(
            f"masked_softmax: input must be a floating-point tensor, got {input.dtype} of size "
            f"{_shape(input)}"
        )
    if mask is not None:
        check_tensor(mask, "mask")
        if mask.dtype != torch.bool:
            raise RuntimeError(f"masked_softmax: mask must be a bool tensor (True = keep), got {mask.dtype}")
        if mask.device != input.device:
            raise RuntimeError(
                f"masked_softmax: mask is on {mask.device} but input is on {input.device}"
            )
        if not _broadcasts_to(mask.shape, input.shape):
            raise RuntimeError(
                f"masked_softmax: mask of size {_shape(mask)} cannot be broadcast to input of size "
                f"{_shape(input)}"
            )
    return int(dim) % rank


def _broadcasts_to(shape, target):
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target)))


def sdpa_args(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    """Check a scaled_dot_product_attention call as torch does (plus key/value length, which torch's
    CPU kernel leaves unchecked for batched inputs and then reads past the end of value).

    Returns ``(batch, heads_q, heads_k, heads_v)``: the broadcast batch axes (those before the head
    axis) and the head counts; the output has ``heads_q`` heads.
    """
    for t, name in ((query, "query"), (key, "key"), (value, "value")):
        check_tensor(t, name)
    if attn_mask is not None:
        check_tensor(attn_mask, "attn_mask")
    if min(query.dim(), key.dim(), value.dim()) < 2:
        raise RuntimeError(
            "Expected query, key, and value to all be at least 2 dimensional, but got query.dim: "
            f"{query.dim()} key.dim: {key.dim()} and value.dim: {value.dim()} instead."
        )
    if not (query.dtype == key.dtype == value.dtype):
        raise RuntimeError(
            "Expected query, key, and value to have the same dtype, but got query.dtype: "
            f"{query.dtype} key.dtype: {key.dtype} and value.dtype: {value.dtype} instead."
        )
    if not (query.device == key.device == value.device):
        raise RuntimeError(
            "Expected query, key, and value to have the same device type, but got query.device: "
            f"{query.device} key.device: {key.device} and value.device: {value.device} instead."
        )
    if not query.is_floating_point():
        raise RuntimeError(
            f"scaled_dot_product_attention: expected floating-point query, key and value, got "
            f"{query.dtype}"
        )
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool and attn_mask.dtype != query.dtype:
            raise RuntimeError(
                "Expected attn_mask dtype to be bool or float or to match query dtype, but got "
                f"attn_mask.dtype: {attn_mask.dtype} and query.dtype: {query.dtype} instead."
            )
        if attn_mask.device != query.device:
            raise RuntimeError(
                f"scaled_dot_product_attention: attn_mask is on {attn_mask.device} but query is on "
                f"{query.device}"
            )
        if is_causal:
            raise RuntimeError(
                "_scaled_dot_product_attention: Explicit attn_mask should not be set when "
                "is_causal=True"
            )
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"scaled_dot_product_attention: dropout_p must be a float, got {dropout_p!r}")
    if not 0.0 <= float(dropout_p) <= 1.0:
        raise RuntimeError(f"dropout probability has to be between 0 and 1, but got {dropout_p}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        raise TypeError(f"scaled_dot_product_attention: scale must be a float or None, got {scale!r}")
    if query.shape[-1] != key.shape[-1]:
        raise RuntimeError(
            f"scaled_dot_product_attention: query of size {_shape(query)} and key of size "
            f"{_shape(key)} must have the same last (embedding) dimension"
        )
    if key.shape[-2] != value.shape[-2]:
        raise RuntimeError(
            f"scaled_dot_product_attention: key of size {_shape(key)} and value of size "
            f"{_shape(value)} must have the same sequence length (dimension -2)"
        )
    heads = [t.shape[-3] if t.dim() >= 3 else 1 for t in (query, key, value)]
    try:
        batch = tuple(torch.broadcast_shapes(*(tuple(t.shape[:-3]) for t in (query, key, value))))
    except RuntimeError:
        raise RuntimeError(
            f"scaled_dot_product_attention: the batch dimensions of query {_shape(query)}, key "
            f"{_shape(key)} and value {_shape(value)} do not broadcast"
        ) from None
    hq, hk, hv = heads
    if enable_gqa:
        if hk == 0 or hv == 0 or hq % hk != 0 or hq % hv != 0:
            raise RuntimeError(
                "Number of heads in key and value must divide the number of heads in query: "
                f"query {_shape(query)}, key {_shape(key)}, value {_shape(value)}"
            )
    else:
        hs = {h for h in heads if h != 1}
        if len(hs) > 1:
            raise RuntimeError(
                f"scaled_dot_product_attention: the head dimensions (-3) of query {_shape(query)}, "
                f"key {_shape(key)} and value {_shape(value)} do not broadcast (pass enable_gqa=True "
                "for grouped-query attention)"
            )
        hq = hs.pop() if hs else 1
    if attn_mask is not None:
        rank2 = max(query.dim(), key.dim(), value.dim()) == 2
        target = (query.shape[-2], key.shape[-2]) if rank2 else batch + (hq, query.shape[-2], key.shape[-2])
        if not _broadcasts_to(tuple(attn_mask.shape), tuple(target)):
            raise RuntimeError(
                f"scaled_dot_product_attention: attn_mask of size {_shape(attn_mask)} cannot be "
                f"broadcast to the attention weights of size {list(target)}"
            )
    return batch, hq, hk, hv


# --- LSTM / GRU (dlkern.ops.rnn, dlkern.nn.rnn) ------------------------------------------------

_RNN_GATES = {"lstm": 4, "gru": 3}


def _rnn_same_kind(op, named):
    """Every tensor of ``named`` ({name: tensor or None}) shares one dtype and one device."""
    first = None
    for k, v in named.items():
        if v is None:
            continue
        check_tensor(v, k)
        if first is None:
            first = v
            continue
        if v.dtype != first.dtype:
            desc = ", ".join(f"{n} {t.dtype}" for n, t in named.items() if t is not None)
            raise RuntimeError(f"{op}: expected all tensors to have the same dtype, got {desc}")
        if v.device != first.device:
            desc = ", ".join(f"{n} on {t.device}" for n, t in named.items() if t is not None)
            raise RuntimeError(f"{op}: expected all tensors on one device, got {desc}")
    if first is not None and not first.is_floating_point():
        raise RuntimeError(f"{op}: expected floating-point tensors, got {first.dtype}")


def rnn_cell_args(op, mode, input, hx, w_ih, w_hh, b_ih, b_hh):
    """Check a functional lstm_cell / gru_cell call; returns (x, h, c, unbatched) with x (B, I),
    h and c (B, H) (c None for a GRU). hx is (h, c) for an LSTM, h for a GRU."""
    check_tensor(input, "input")
    check_tensor(w_ih, "w_ih")
    check_tensor(w_hh, "w_hh")
    if mode == "lstm":
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise RuntimeError(f"{op} expects two hidden states (h, c), got {type(hx).__name__}")
        h, c = hx
        check_tensor(h, "hx[0]")
        check_tensor(c, "hx[1]")
    else:
        check_tensor(hx, "hx")
        h, c = hx, None
    _rnn_same_kind(op, dict(input=input, hx=h, cx=c, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh))
    if w_ih.dim() != 2 or w_hh.dim() != 2:
        raise RuntimeError(f"{op}: expected 2-D w_ih and w_hh, got w_ih of size {_shape(w_ih)} "
                           f"and w_hh of size {_shape(w_hh)}")
    gates = _RNN_GATES[mode]
    gh = w_hh.shape[0]
    hidden = w_hh.shape[1]
    if gh != gates * hidden or hidden == 0:
        raise RuntimeError(f"{op}: w_hh of size {_shape(w_hh)} should be ({gates} * hidden_size, "
                           "hidden_size) with hidden_size > 0")
    if w_ih.shape[0] != gh:
        raise RuntimeError(f"{op}: weight_ih first dim must be {gates} * hidden_size = {gh}, but "
                           f"got w_ih of size {_shape(w_ih)}")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None and (b.dim() != 1 or b.shape[0] != gh):
            raise RuntimeError(f"{op}: expected {name} of size [{gh}], got {_shape(b)}")
    if input.dim() not in (1, 2):
        raise RuntimeError(f"{op}: expected input to be 1-D or 2-D, got input of size {_shape(input)}")
    unbatched = input.dim() == 1
    states = [("hx[0]" if mode == "lstm" else "hx", h)] + ([("hx[1]", c)] if c is not None else [])
    for name, s in states:
        if s.dim() != input.dim():
            raise RuntimeError(f"{op}: expected {name} to be {input.dim()}-D like input, got "
                               f"{name} of size {_shape(s)} for input of size {_shape(input)}")
    x = input.unsqueeze(0) if unbatched else input
    if x.shape[1] != w_ih.shape[1]:
        raise RuntimeError(f"input has inconsistent input_size: got {x.shape[1]} expected "
                           f"{w_ih.shape[1]} (input of size {_shape(input)}, w_ih of size "
                           f"{_shape(w_ih)})")
    bh = [s.unsqueeze(0) if unbatched else s for _, s in states]
    for k, ((name, _), s) in enumerate(zip(states, bh)):
        if s.shape[0] != x.shape[0]:
            raise RuntimeError(f"Input batch size {x.shape[0]} doesn't match hidden{k} batch size "
                               f"{s.shape[0]} ({name} of size {_shape(s)})")
        if s.shape[1] != hidden:
            raise RuntimeError(f"hidden{k} has inconsistent hidden_size: got {s.shape[1]}, "
                               f"expected {hidden} ({name} of size {_shape(s)})")
    return x, bh[0], (bh[1] if c is not None else None), unbatched


def rnn_cell_module_args(module, mode, input, hx):
    """torch's own checks of LSTMCell/GRUCell.forward (ValueError on ranks, as torch)."""
    name = type(module).__name__
    check_tensor(input, "input")
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    states = () if hx is None else (tuple(hx) if mode == "lstm" else (hx,))
    for s in states:
        check_tensor(s, "hx")
        if s.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected hx[0] to be 1D or 2D, got {s.dim()}D instead"
                             if mode == "lstm" else
                             f"{name}: Expected hidden to be 1D or 2D, got {s.dim()}D instead")


def rnn_module_args(module, mode, input, hx, batch_sizes):
    """torch's check_forward_args for an LSTM/GRU module on the (batched) input and hx."""
    num_dir = 2 if module.bidirectional else 1
    proj = getattr(module, "proj_size", 0)
    real_hidden = proj if proj > 0 else module.hidden_size
    expected_dim = 2 if batch_sizes is not None else 3
    if input.dim() != expected_dim:
        raise RuntimeError(f"input must have {expected_dim} dimensions, got {input.dim()} "
                           f"(input of size {_shape(input)})")
    if module.input_size != input.size(-1):
        raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                           f"{module.input_size}, got {input.size(-1)}")
    if batch_sizes is not None:
        mini_batch = int(batch_sizes[0])
    else:
        mini_batch = input.size(0) if module.batch_first else input.size(1)
        if input.size(1 if module.batch_first else 0) == 0:
            raise RuntimeError(f"Expected sequence length to be larger than 0 in RNN (input of "
                               f"size {_shape(input)}, batch_first={module.batch_first})")
    states = (("hidden[0]", hx[0], real_hidden), ("hidden[1]", hx[1], module.hidden_size)) \
        if mode == "lstm" else (("hidden", hx, module.hidden_size),)
    for name, s, size in states:
        expected = (module.num_layers * num_dir, mini_batch, size)
        if tuple(s.shape) != expected:
            label = "hidden size" if mode == "gru" else f"{name} size"
            raise RuntimeError(f"Expected {label} {expected}, got {_shape(s)}")
    named = {"input": input}
    named.update({n: s for n, s, _ in states})
    named.update({n: p for n, p in module.named_parameters()})
    _rnn_same_kind(type(module).__name__, named)


def mha_args(query, key, value, key_padding_mask, attn_mask, num_heads, embed_dim, is_causal):
    """Check a MultiheadAttention.forward call as torch's module does (same exception types:
    torch raises AssertionError for most of these). Returns whether the input is batched."""
    import torch.nn.functional as F

    for t, name in ((query, "query"), (key, "key"), (value, "value")):
        check_tensor(t, name)
    # torch's own shape check (query/key/value/mask ranks), so the errors are the same
    is_batched = F._mha_shape_check(query, key, value, key_padding_mask, attn_mask, num_heads)
    for mask, name in ((key_padding_mask, "key_padding_mask"), (attn_mask, "attn_mask")):
        if mask is not None and mask.dtype != torch.bool and not mask.is_floating_point():
            raise AssertionError(f"only bool and floating types of {name} are supported")
    if is_causal and attn_mask is None:
        raise RuntimeError(
            "Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
            "method `generate_square_subsequent_mask` to create this mask."
        )
    e = query.shape[-1]
    if e != embed_dim:
        raise AssertionError(f"was expecting embedding dimension of {embed_dim}, but got {e}")
    if key.shape[:-1] != value.shape[:-1]:
        raise AssertionError(
            f"key's sequence and batch dims {tuple(key.shape[:-1])} do not match value's "
            f"{tuple(value.shape[:-1])}"
        )
    tgt = query.shape[0]
    src = key.shape[0]
    bsz = query.shape[1] if is_batched else 1
    if attn_mask is not None:
        if attn_mask.dim() == 2 and tuple(attn_mask.shape) != (tgt, src):
            raise RuntimeError(
                f"The shape of the 2D attn_mask is {attn_mask.shape}, but should be {(tgt, src)}."
            )
        if attn_mask.dim() == 3 and tuple(attn_mask.shape) != (bsz * num_heads, tgt, src):
            raise RuntimeError(
                f"The shape of the 3D attn_mask is {attn_mask.shape}, but should be "
                f"{(bsz * num_heads, tgt, src)}."
            )
    if key_padding_mask is not None:
        want = (bsz, src) if is_batched else (src,)
        if tuple(key_padding_mask.shape) != want:
            raise AssertionError(
                f"expecting key_padding_mask shape of {want}, but got {tuple(key_padding_mask.shape)}"
            )
    return is_batched


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


def _check_same_kind(op, name, t, x):
    check_tensor(t, name)
    if t.dtype != x.dtype:
        raise RuntimeError(f"{op}: input type ({x.dtype}) and {name} type ({t.dtype}) should be the same")
    if t.device != x.device:
        raise RuntimeError(f"{op}: expected input and {name} on one device, got {x.device} and {t.device}")


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
