"""From a layer-table row to a benchmark Case: ``case(row)``.

One builder per op. Each makes seeded random inputs (weights scaled by 1/sqrt(fan-in), so outputs
stay near unit scale and errors compare across rows), torch's call and dlkern's call with the same
signature, and the forward FLOPs and least bytes moved (float32: inputs, weights and outputs once).
torch's side is what a user writes without dlkern: the torch.nn.functional op, the two convs of a
separable pair in sequence, ``softmax(masked_fill(~mask, -inf))``, torch's own modules.
"""
import math

import torch
import torch.nn.functional as F

import dlkern.functional as DF
import dlkern.nn as dnn
from dlkern.suites.table import Case

_FLOAT_BYTES = 4


def case(row):
    """The Case that times ``row`` (a dlkern.suites.table.Row)."""
    try:
        builder = _BUILDERS[row.op]
    except KeyError:
        raise ValueError(f"{row.name}: no case builder for op {row.op!r}") from None
    return builder(row)


def _make(shape, generator, dtype, scale=1.0, device="cpu"):
    if torch.device(device).type == "meta":  # shapes only: for checks of the tables
        return torch.empty(shape, dtype=dtype, device=device)
    return (torch.randn(shape, generator=generator, dtype=dtype) * scale).to(device)


def _leaves(tensors, requires_grad):
    for t in tensors:
        if t is not None:
            t.requires_grad_(requires_grad)


def _numel(*shapes):
    return sum(math.prod(s) for s in shapes)


def _memory_format(rank):
    return {2: torch.channels_last, 3: torch.channels_last_3d}[rank]


# ----------------------------------------------------------------------------- convolutions

def _conv(row):
    a, n = row.args, row.batch
    rank = len(a["size"])
    groups = a["groups"]
    x_shape = (n, a["in_channels"]) + a["size"]
    w_shape = (a["out_channels"], a["in_channels"] // groups) + a["kernel_size"]
    fan_in = math.prod(w_shape[1:])
    out = tuple((s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in
                zip(a["size"], a["kernel_size"], a["stride"], a["padding"], a["dilation"]))
    kwargs = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=groups)
    channels_last = a.get("layout", "contiguous") == "channels_last"

    def build(dtype, requires_grad, device="cpu"):
        g = torch.Generator().manual_seed(0)
        x = _make(x_shape, g, dtype, device=device)
        w = _make(w_shape, g, dtype, fan_in ** -0.5, device=device)
        b = _make((a["out_channels"],), g, dtype, device=device) if a["bias"] else None
        if channels_last:
            x = x.contiguous(memory_format=_memory_format(rank))
            w = w.contiguous(memory_format=_memory_format(rank))
        _leaves((x, w, b), requires_grad)
        return (x, w, b), kwargs

    out_shape = (n, a["out_channels"]) + out
    flops = 2.0 * math.prod(out_shape) * fan_in
    moved = _numel(x_shape, w_shape, out_shape) + a["out_channels"] * a["bias"]
    return Case(row.name, row.family, build, getattr(F, row.op), getattr(DF, row.op), flops,
                _FLOAT_BYTES * moved, row=row)


def _conv_transpose(row):
    a, n = row.args, row.batch
    x_shape = (n, a["in_channels"]) + a["size"]
    w_shape = (a["in_channels"], a["out_channels"]) + a["kernel_size"]
    # each output element sums C_in * taps / stride^rank products on average
    fan_in = a["in_channels"] * math.prod(a["kernel_size"]) / math.prod(a["stride"])
    out = tuple((s - 1) * st - 2 * p + (k - 1) + op + 1 for s, k, st, p, op in
                zip(a["size"], a["kernel_size"], a["stride"], a["padding"], a["output_padding"]))
    kwargs = dict(stride=a["stride"], padding=a["padding"], output_padding=a["output_padding"])

    def build(dtype, requires_grad, device="cpu"):
        g = torch.Generator().manual_seed(0)
        x = _make(x_shape, g, dtype, device=device)
        w = _make(w_shape, g, dtype, max(1.0, fan_in) ** -0.5, device=device)
        b = _make((a["out_channels"],), g, dtype, device=device) if a["bias"] else None
        _leaves((x, w, b), requires_grad)
        return (x, w, b), kwargs

    out_shape = (n, a["out_channels"]) + out
    flops = 2.0 * math.prod(x_shape) * math.prod(w_shape[1:])
    moved = _numel(x_shape, w_shape, out_shape) + a["out_channels"] * a["bias"]
    return Case(row.name, row.family, build, getattr(F, row.op), getattr(DF, row.op), flops,
                _FLOAT_BYTES * moved, row=row)


def _depthwise_separable(row):
    a, n = row.args, row.batch
    rank = len(a["size"])
    c_in, c_out = a["in_channels"], a["out_channels"]
    conv = {1: F.conv1d, 2: F.conv2d}[rank]
    fused = getattr(DF, row.op)
    x_shape = (n, c_in) + a["size"]
    wd_shape = (c_in, 1) + a["kernel_size"]
    wp_shape = (c_out, c_in) + (1,) * rank
    out = tuple((s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in
                zip(a["size"], a["kernel_size"], a["stride"], a["padding"], a["dilation"]))
    kwargs = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"])

    def build(dtype, requires_grad, device="cpu"):
        g = torch.Generator().manual_seed(0)
        x = _make(x_shape, g, dtype, device=device)
        wd = _make(wd_shape, g, dtype, math.prod(a["kernel_size"]) ** -0.5, device=device)
        wp = _make(wp_shape, g, dtype, c_in ** -0.5, device=device)
        bd = _make((c_in,), g, dtype, device=device)
        bp = _make((c_out,), g, dtype, device=device)
        _leaves((x, wd, wp, bd, bp), requires_grad)
        return (x, wd, wp, bd, bp), kwargs

    def torch_fn(x, wd, wp, bd, bp, stride, padding, dilation):
        return conv(conv(x, wd, bd, stride, padding, dilation, groups=c_in), wp, bp)

    def dlkern_fn(x, wd, wp, bd, bp, stride, padding, dilation):
        return fused(x, wd, wp, bd, bp, stride=stride, padding=padding, dilation=dilation)

    pixels = n * math.prod(out)
    flops = 2.0 * pixels * (c_in * math.prod(a["kernel_size"]) + c_out * c_in)
    moved = _numel(x_shape, wd_shape, wp_shape, (n, c_out) + out) + c_in + c_out
    return Case(row.name, row.family, build, torch_fn, dlkern_fn, flops, _FLOAT_BYTES * moved,
                row=row)


def _spatial_separable(row):
    a, n = row.args, row.batch
    c_in, c_mid, c_out, k, p = (a["in_channels"], a["mid_channels"], a["out_channels"],
                                a["kernel_size"], a["padding"])
    x_shape = (n, c_in) + a["size"]
    out = tuple(s + 2 * p - k + 1 for s in a["size"])

    def build(dtype, requires_grad, device="cpu"):
        g = torch.Generator().manual_seed(0)
        x = _make(x_shape, g, dtype, device=device)
        wv = _make((c_mid, c_in, k, 1), g, dtype, (c_in * k) ** -0.5, device=device)
        wh = _make((c_out, c_mid, 1, k), g, dtype, (c_mid * k) ** -0.5, device=device)
        bv = _make((c_mid,), g, dtype, device=device)
        bh = _make((c_out,), g, dtype, device=device)
        _leaves((x, wv, wh, bv, bh), requires_grad)
        return (x, wv, wh, bv, bh), dict(padding=p)

    def torch_fn(x, wv, wh, bv, bh, padding):
        return F.conv2d(F.conv2d(x, wv, bv, padding=(padding, 0)), wh, bh, padding=(0, padding))

    flops = 2.0 * n * math.prod(out) * k * (c_mid * c_in + c_out * c_mid)
    moved = (_numel(x_shape, (n, c_out) + out) + k * c_mid * (c_in + c_out) + c_mid + c_out)
    return Case(row.name, row.family, build, torch_fn, DF.spatial_separable_conv2d, flops,
                _FLOAT_BYTES * moved, row=row)


# ----------------------------------------------------------------------------- recurrent

_GATES = {"LSTM": 4, "GRU": 3, "LSTMCell": 4, "GRUCell": 3}


def _twins(name, *args, **kwargs):
    """torch's module and dlkern's twin with the same seeded parameters (global RNG untouched)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ref = getattr(torch.nn, name)(*args, **kwargs)
    mod = getattr(dnn, name)(*args, **kwargs)
    mod.load_state_dict(ref.state_dict())
    return ref, mod


def _module_case(row, ref, mod, build, run, flops, moved, reduction=None):
    params = sum(p.numel() for p in ref.parameters())
    return Case(row.name, row.family, build, run(ref), run(mod), flops,
                _FLOAT_BYTES * (moved + params), row=row, reduction=reduction,
                torch_params=tuple(ref.parameters()), dlkern_params=tuple(mod.parameters()))


def _rnn_layer(row):
    a, n = row.args, row.batch
    steps, hidden, dirs = a["size"], a["hidden_size"], 2 if a["bidirectional"] else 1
    ref, mod = _twins(row.op, a["input_size"], hidden, num_layers=a["num_layers"],
                      bidirectional=a["bidirectional"], batch_first=a["batch_first"])
    x_shape = (n, steps, a["input_size"]) if a["batch_first"] else (steps, n, a["input_size"])
    flops = 0.0
    for layer in range(a["num_layers"]):
        width = a["input_size"] if layer == 0 else dirs * hidden
        flops += 2.0 * steps * n * _GATES[row.op] * hidden * (width + hidden) * dirs

    def build(dtype, requires_grad, device="cpu"):
        g = torch.Generator().manual_seed(0)
        device = "cpu"  # the modules' parameters live there
        x = _make(x_shape, g, dtype, device=device).requires_grad_(requires_grad)
        return (x,), {}

    moved = math.prod(x_shape) + steps * n * dirs * hidden
    return _module_case(row, ref, mod, build, lambda m: (lambda x: m(x)[0]), flops, moved)


def _rnn_cell(row):
    a, n = row.args, row.batch
    ref, mod = _twins(row.op, a["input_size"], a["hidden_size"])
    lstm = row.op == "LSTMCell"
    states = 2 if lstm else 1

    def build(dtype, requires_grad, device="cpu"):
        g = torch.Generator().manual_seed(0)
        device = "cpu"  # the modules' parameters live there
        x = _make((n, a["input_size"]), g, dtype, device=device)
        hx = [_make((n, a["hidden_size"]), g, dtype, device=device) for _ in range(states)]
        _leaves([x] + hx, requires_grad)
        return (x, *hx), {}

    def run(m):
        if lstm:
            return lambda x, h, c: torch.stack(m(x, (h, c)))  # both new states: (2, B, H)
        return lambda x, h: m(x, h)

    flops = 2.0 * n * _GATES[row.op] * a["hidden_size"] * (a["input_size"] + a["hidden_size"])
    moved = n * (a["input_size"] + 2 * states * a["hidden_size"])
    return _module_case(row, ref, mod, build, run, flops, moved)


# ----------------------------------------------------------------------------- attention

def _lengths(batch, length):
    """Key lengths of a padded batch: at least half of ``length``, the first one full."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(max(1, length // 2), length + 1, (batch,), generator=g)
    lengths[0] = length
    return lengths


def attention_mask(kind, batch, heads, q_len, kv_len):
    """(bool mask, True = attend, or None; is_causal) for a mask kind of the attention table."""
    if kind == "none":
        return None, False
    if kind == "causal":
        return None, True
    causal = torch.ones(q_len, kv_len, dtype=torch.bool).tril()
    if kind == "causal_2d":
        return causal, False
    keep = torch.arange(kv_len) < _lengths(batch, kv_len)[:, None]  # (B, Lk)
    if kind == "key_padding":
        return keep[:, None, None, :], False
    if kind == "causal_padding":
        return causal & keep[:, None, None, :], False
    if kind == "full":
        full = (causal & keep[:, None, None, :]).expand(batch, heads, q_len, kv_len)
        return full.contiguous(), False
    raise ValueError(f"unknown mask kind {kind!r}")


def _attended_pairs(mask, causal, batch, heads, q_len, kv_len):
    """How many (query, key) pairs a mask lets through, over every batch and head."""
    if causal:
        return batch * heads * sum(min(i + 1, kv_len) for i in range(q_len))
    if mask is None:
        return batch * heads * q_len * kv_len
    return float(mask.sum()) * (batch * heads * q_len * kv_len) / mask.numel()


def _sdpa(row):
    a, n = row.args, row.batch
    h, kvh, lq, lk, d = a["heads"], a["kv_heads"], a["q_len"], a["kv_len"], a["head_dim"]
    mask, causal = attention_mask(a["mask"], n, h, lq, lk)
    kwargs = dict(attn_mask=mask, is_causal=causal)
    if kvh != h:
        kwargs["enable_gqa"] = True

    def build(dtype, requires_grad, device="cpu"):
        g = torch.Generator().manual_seed(0)
        q = _make((n, h, lq, d), g, dtype, device=device)
        k = _make((n, kvh, lk, d), g, dtype, device=device)
        v = _make((n, kvh, lk, d), g, dtype, device=device)
        _leaves((q, k, v), requires_grad)
        return (q, k, v), dict(kwargs, attn_mask=None if mask is None else mask.to(device))

    pairs = _attended_pairs(mask, causal, n, h, lq, lk)
    moved = 2 * n * h * lq * d + 2 * n * kvh * lk * d
    return Case(row.name, row.family, build, F.scaled_dot_product_attention,
                DF.scaled_dot_product_attention, 4.0 * pairs * d,
                _FLOAT_BYTES * moved + (0 if mask is None else mask.numel()), row=row)


def _torch_masked_softmax(x, mask):
    if mask is None:
        return torch.softmax(x, -1)
    return torch.softmax(x.masked_fill(~mask, float("-inf")), -1)


def _masked_softmax(row):
    a, n = row.args, row.batch
    shape = (n, a["heads"], a["q_len"], a["kv_len"])
    mask, _ = attention_mask(a["mask"], *shape)

    def build(dtype, requires_grad, device="cpu"):
        g = torch.Generator().manual_seed(0)
        x = _make(shape, g, dtype, device=device).requires_grad_(requires_grad)
        return (x, None if mask is None else mask.to(device)), {}

    numel = math.prod(shape)
    return Case(row.name, row.family, build, _torch_masked_softmax, DF.masked_softmax,
                5.0 * numel, 2.0 * _FLOAT_BYTES * numel + (0 if mask is None else mask.numel()),
                row=row, reduction=a["kv_len"])


def _mha(row):
    a, n = row.args, row.batch
    e, h, lq, lk = a["embed_dim"], a["num_heads"], a["q_len"], a["kv_len"]
    ref, mod = _twins("MultiheadAttention", e, h, batch_first=True)
    ref.eval()
    mod.eval()
    kind = a["mask"]
    keep = None if kind in ("none", "causal") else torch.arange(lk) < _lengths(n, lk)[:, None]
    causal = kind in ("causal", "causal_padding")
    kwargs = dict(key_padding_mask=None if keep is None else ~keep,
                  attn_mask=torch.ones(lq, lk, dtype=torch.bool).triu(1) if causal else None,
                  is_causal=causal)

    def build(dtype, requires_grad, device="cpu"):
        g = torch.Generator().manual_seed(0)
        device = "cpu"  # the modules' parameters live there
        x = _make((n, lq, e), g, dtype, device=device)
        memory = _make((n, lk, e), g, dtype, device=device) if a["cross"] else None
        _leaves((x, memory), requires_grad)
        return ((x, memory) if a["cross"] else (x,)), dict(kwargs)

    def run(m):
        def call(x, memory=None, **kw):
            kv = x if memory is None else memory
            return m(x, kv, kv, need_weights=False, **kw)[0]
        return call

    mask = None if keep is None else keep[:, None, None, :]
    if causal and keep is not None:
        mask = mask & torch.ones(lq, lk, dtype=torch.bool).tril()
    pairs = _attended_pairs(mask, causal and keep is None, n, h, lq, lk)
    flops = 4.0 * n * (lq + lk) * e * e + 4.0 * pairs * (e // h)
    moved = n * (2 * lq + (lk if a["cross"] else 0)) * e
    return _module_case(row, ref, mod, build, run, flops, moved)


_BUILDERS = {
    "conv1d": _conv, "conv2d": _conv, "conv3d": _conv,
    "conv_transpose1d": _conv_transpose, "conv_transpose2d": _conv_transpose,
    "conv_transpose3d": _conv_transpose,
    "depthwise_separable_conv1d": _depthwise_separable,
    "depthwise_separable_conv2d": _depthwise_separable,
    "spatial_separable_conv2d": _spatial_separable,
    "LSTM": _rnn_layer, "GRU": _rnn_layer, "LSTMCell": _rnn_cell, "GRUCell": _rnn_cell,
    "scaled_dot_product_attention": _sdpa,
    "masked_softmax": _masked_softmax,
    "MultiheadAttention": _mha,
}
