"""Masked softmax and scaled dot-product attention as torch custom ops: registration, autograd,
canonicalisation of torch's broadcasting rules, and backend dispatch.

Ops in the ``dlkern`` namespace, each with a fake (meta) implementation:

* ``dlkern::masked_softmax(x, mask, mask_row_offset, mask_col_stride)``: softmax over the last
  axis of a contiguous 2-d ``x`` (R, N); ``mask`` a flat uint8 tensor read at
  ``mask_row_offset[r] + j * mask_col_stride`` (so a broadcast mask is never expanded).
* ``dlkern::masked_softmax_backward(y, grad_y)``.
* ``dlkern::attention(q, k, v, mask, is_causal, scale, dropout_p, seed, flags) -> (out, stats)``
  on canonical 4-d tensors: q (B, Hq, Lq, D), k (B, Hk, Lk, D), v (B, Hk, Lk, Dv) with Hq a
  multiple of Hk, mask an additive float bias broadcast (zero strides allowed) to
  (B, Hq, Lq, Lk); flags: CAUSAL_BOTTOM_RIGHT, NAN_MASKED below. stats (B, Hq, 2, Lq) holds each
  row's softmax shift m and 1 / l for the backward (p = exp(s - m) / l, recomputed exactly).
* ``dlkern::attention_backward(...) -> (grad_q, grad_k, grad_v, grad_mask)``.

Inside each op the backend is chosen again from the canonical tensors: Numba kernels for CPU
tensors, Triton kernels (``dlkern.kernels.triton.attention`` and ``attention_backward``, imported
on the first such call) for CUDA tensors or under ``DLKERN_BACKEND=triton`` with
``TRITON_INTERPRET=1``. stats are float32 except for float64 inputs.

The public functions reduce every case torch accepts (unbatched, extra batch axes, broadcast
batch or head axes, GQA, bool masks) to those canonical forms with views; autograd through the
views sums the gradients of broadcast axes.
"""
import functools
import importlib
import math
from typing import Optional, Tuple

import numba
import numpy as np
import torch
from torch import Tensor

from dlkern import _dispatch
from dlkern.kernels import machine
from dlkern.kernels.numba import attention as kernels
from dlkern.kernels.numba import attention_backward as backward_kernels
from dlkern.kernels.numba import masked_softmax as softmax_kernels

_NEG_INF = float("-inf")

_dispatch.register_triton("attention", "masked_softmax")


def _triton_kernels(module="attention"):
    """A module of Triton kernels (attention, attention_backward, masked_softmax), imported on
    first use (importing dlkern never needs Triton)."""
    return importlib.import_module(f"dlkern.kernels.triton.{module}")


def _on_triton(op, *tensors):
    return _dispatch.backend_for(op, *tensors) == "triton"


def _threads():
    return numba.config.NUMBA_NUM_THREADS


def _dynamic(items_per_chunk):
    """Hand prange work out in small chunks as threads free up, not in one static block per
    thread: on a shared machine a thread whose core is busy would otherwise hold everyone up
    (and causal rows differ in cost). Thread-local in Numba, restored on exit."""
    return numba.parallel_chunksize(items_per_chunk)


def _rows_contiguous(t):
    """t, or a contiguous copy when its rows are not contiguous (what the GEMM calls need)."""
    # BLAS wants a leading dimension >= the row length, even for a single row
    if t.stride(-1) == 1 and t.stride(-2) >= max(1, t.shape[-1]):
        return t
    return t.contiguous()


# ---------------------------------------------------------------------------------------------
# masked softmax

@torch.library.custom_op("dlkern::masked_softmax", mutates_args=())
def masked_softmax_op(x: Tensor, mask: Optional[Tensor], mask_row_offset: Optional[Tensor],
                      mask_col_stride: int) -> Tensor:
    out = _dispatch.new_output(x.shape, x)
    if _on_triton("masked_softmax", x):
        if out.numel():
            _triton_kernels("masked_softmax").masked_softmax_forward(
                x.contiguous(), mask, mask_row_offset, mask_col_stride, out)
        return out
    rows, n = x.shape
    nt = _threads()
    xa = x.detach().numpy()
    dtype = xa.dtype
    if mask is None:
        m = np.zeros(1, np.uint8)
        offsets = np.zeros(1, np.int64)
    else:
        m = mask.detach().numpy()
        offsets = mask_row_offset.numpy()
    with _dynamic(64):
        softmax_kernels.masked_softmax_forward(
            xa, m, offsets, int(mask_col_stride), mask is not None, out.numpy(),
            np.empty((nt, softmax_kernels.LANES), dtype), np.empty((nt, max(n, 1)), np.uint8))
    return out


@masked_softmax_op.register_fake
def _(x, mask, mask_row_offset, mask_col_stride):
    return torch.empty_like(x)


@torch.library.custom_op("dlkern::masked_softmax_backward", mutates_args=())
def masked_softmax_backward_op(y: Tensor, grad_y: Tensor) -> Tensor:
    grad_x = _dispatch.new_output(y.shape, y)
    if _on_triton("masked_softmax", y):
        if grad_x.numel():
            _triton_kernels("masked_softmax").masked_softmax_backward(
                y.contiguous(), grad_y.contiguous(), grad_x)
        return grad_x
    nt = _threads()
    ya = y.detach().numpy()
    with _dynamic(64):
        softmax_kernels.masked_softmax_backward(
            ya, grad_y.detach().contiguous().numpy(), grad_x.numpy(),
            np.empty((nt, max(y.shape[1], 1)), ya.dtype))
    return grad_x


@masked_softmax_backward_op.register_fake
def _(y, grad_y):
    return torch.empty_like(y)


def _masked_softmax_setup(ctx, inputs, output):
    ctx.save_for_backward(output)


def _masked_softmax_backward(ctx, grad):
    (y,) = ctx.saved_tensors
    return _dispatch.call(masked_softmax_backward_op, y, grad.contiguous()), None, None, None


masked_softmax_op.register_autograd(_masked_softmax_backward, setup_context=_masked_softmax_setup)


def masked_softmax(input, mask=None, dim=-1):
    """The public masked softmax: check, move ``dim`` last, run (or fall back to torch)."""
    from dlkern import _validate

    dim = _validate.masked_softmax_args(input, mask, dim)
    if _dispatch.backend_for("masked_softmax", input) is None:
        _dispatch.fallback("masked_softmax", input)
        return _torch_masked_softmax(input, mask, dim)
    if input.numel() == 0:
        return torch.empty_like(input, memory_format=torch.contiguous_format)
    if input.dim() == 0:
        flat_mask = None if mask is None else mask.reshape(1)
        return masked_softmax(input.reshape(1), flat_mask, 0).reshape(())
    x = input.movedim(dim, -1)
    shape = x.shape
    x2 = x.contiguous().reshape(-1, shape[-1])
    if mask is None:
        y = _dispatch.call(masked_softmax_op, x2, None, None, 0)
    else:
        base = mask.contiguous()
        view = base.expand(input.shape).movedim(dim, -1)
        offsets = torch.zeros((), dtype=torch.int64, device=base.device)
        for size, stride in zip(view.shape[:-1], view.stride()[:-1]):
            offsets = offsets.unsqueeze(-1) + torch.arange(size, dtype=torch.int64,
                                                           device=base.device) * stride
        y = _dispatch.call(masked_softmax_op, x2, base.view(torch.uint8).reshape(-1),
                           offsets.reshape(-1), int(view.stride(-1)))
    return y.reshape(shape).movedim(-1, dim).contiguous()


def _torch_masked_softmax(input, mask, dim):
    if mask is None:
        return torch.softmax(input, dim)
    mask = mask.expand(input.shape)
    keep_any = mask.any(dim, keepdim=True)
    scores = input.masked_fill(~mask, _NEG_INF).masked_fill(~keep_any, 0.0)
    return torch.softmax(scores, dim) * mask


# ---------------------------------------------------------------------------------------------
# attention

@functools.lru_cache(maxsize=None)
def _largest_query_block(itemsize):
    """Most queries per block: the score block (BLOCK_K x queries) and a chunk of K and V
    (BLOCK_K x 64 each) in half of this machine's L2, at least 64 and at most 192 rows (wider
    blocks stop paying off: MKL's GEMMs are as fast at 192 columns)."""
    budget = machine.cache_bytes()["l2"] // 2 - 2 * kernels.BLOCK_K * 64 * itemsize
    rows = budget // (kernels.BLOCK_K * itemsize)
    return int(max(64, min(192, rows // 16 * 16)))


def _query_block(batch_heads, lq, itemsize):
    """Queries per block of the CPU kernels (the width of their score blocks): as wide as the
    cache allows, the query length split into equal blocks (197 -> 2 x 112, not 192 + 5), and
    split further while there are fewer blocks than twice the threads (every core busy when
    batch x heads is small)."""
    widest = _largest_query_block(itemsize)
    blocks = -(-lq // widest)
    blocks = max(blocks, min(-(-2 * _threads() // max(batch_heads, 1)), -(-lq // 16)))
    return max(16, -(-(-(-lq // blocks)) // 16) * 16)


# Masks with fewer stored elements get their block table on the calling thread
_PARALLEL_MASK_ELEMENTS = 1 << 20


def _stored(mask):
    """The part of a broadcast mask that is stored: index 0 of every zero-stride axis."""
    return mask[tuple(slice(0, 1) if st == 0 else slice(None) for st in mask.stride())].detach()


def _float_mask(mask, dtype):
    """A bool mask (True = attend) as an additive float mask of the same broadcast shape,
    converted on its stored part only."""
    small = _stored(mask)
    bias = torch.zeros(small.shape, dtype=dtype, device=mask.device).masked_fill_(~small,
                                                                                  _NEG_INF)
    return bias.expand(mask.shape)


def _mask_table(mask, lq, lk, block_q):
    """The kernels' block table of a (B, Hq, Lq, Lk) mask, additive float or bool (True =
    attend), uint8 (B', H', nqb', nkb') broadcast to (B, Hq, nqb, nkb): HIDDEN where the mask
    hides every score of the block, VISIBLE where it changes none (it is then never read there),
    PARTIAL otherwise; and the key stop of each query block, (B', H', nqb') int64 broadcast to
    (B, Hq, nqb): one past the last key any of its queries sees (a key-padding mask's length).
    Computed in one pass over the stored part of the mask, so a key-padding mask costs almost
    nothing."""
    small = _stored(mask)
    b, h, mq, mk = small.shape
    bq = block_q if mq > 1 else 1
    bk = kernels.SKIP_K if mk > 1 else 1
    table = torch.empty((b, h, -(-mq // bq), -(-mk // bk)), dtype=torch.uint8)
    key_stop = torch.zeros((b, h, table.shape[2]), dtype=torch.int64)
    if small.dtype == torch.bool:
        keep, strides = _flat(small.view(torch.uint8))
        bias, kind = np.zeros(1, np.float32), kernels.MASK_KEEP
    else:
        bias, strides = _flat(small)
        keep, kind = np.zeros(1, np.uint8), kernels.MASK_BIAS
    if table.numel():
        args = (bias, keep, np.array(strides, np.int64), np.array(small.shape, np.int64), bq, bk,
                kind, table.numpy(), key_stop.numpy())
        if small.numel() < _PARALLEL_MASK_ELEMENTS:
            kernels.mask_table(*args, np.empty((2, table.shape[3]), np.int64))
        else:
            with _dynamic(4):
                kernels.mask_table_parallel(*args, np.empty((_threads(), 2, table.shape[3]),
                                                            np.int64))
    if mk == 1:  # one column broadcast to every key
        key_stop = key_stop * lk
    nqb = -(-lq // block_q)
    return (table.expand(mask.shape[0], mask.shape[1], nqb, -(-lk // kernels.SKIP_K)),
            key_stop.expand(mask.shape[0], mask.shape[1], nqb))


def _flat(t):
    """(1-d NumPy view of the storage span t reads, t's element strides); never copies."""
    if t.numel() == 0:
        return np.zeros(1, torch.empty(0, dtype=t.dtype).numpy().dtype), [0] * t.dim()
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    flat = torch.as_strided(t.detach(), (span,), (1,), t.storage_offset())
    return flat.numpy(), list(t.stride())


def _kernel_args(q, k, v, mask, causal_offset, block_q):
    """The kernels' (q, k, v, mask, keep, table, key_stop, strides, dims, mask_kind): flat arrays
    (a dummy for the unused one of mask and keep), strides, sizes."""
    q, k, v = (_rows_contiguous(t) for t in (q, k, v))
    arrays, strides = [], []
    for t in (q, k, v):
        a, st = _flat(t)
        arrays.append(a)
        strides.append(st)
    bias, keep = np.zeros(1, arrays[0].dtype), np.zeros(1, np.uint8)
    if mask is None:
        table, kind, mask_strides, table_strides = keep, kernels.MASK_NONE, [0] * 4, [0] * 4
        key_stop, stop_strides = np.zeros(1, np.int64), [0] * 4
    else:
        table, key_stop = _mask_table(mask, q.shape[2], k.shape[2], block_q)
        table, table_strides = _flat(table)
        key_stop, stop_strides = _flat(key_stop)
        stop_strides = stop_strides + [0]
        if mask.dtype == torch.bool:
            keep, mask_strides = _flat(mask.view(torch.uint8))
            kind = kernels.MASK_KEEP
        else:
            bias, mask_strides = _flat(mask)
            kind = kernels.MASK_BIAS
    dims = np.array([q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3],
                     v.shape[3], causal_offset], np.int64)
    strides += [mask_strides, table_strides, stop_strides]
    return arrays + [bias, keep, table, key_stop, np.array(strides, np.int64), dims, kind]


def _stats_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32


# Bits of the flags argument of the attention ops
CAUSAL_BOTTOM_RIGHT = 1  # with is_causal: query i sees key j <= i + Lk - Lq (else j <= i)
NAN_MASKED = 2           # a row whose scores are all NaN or -inf gives zeros, not NaN


@torch.library.custom_op("dlkern::attention", mutates_args=())
def attention_op(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], is_causal: bool,
                 scale: float, dropout_p: float, seed: int,
                 flags: int = 0) -> Tuple[Tensor, Tensor]:
    nb, hq, lq, _ = q.shape
    dv = v.shape[3]
    out = _dispatch.new_output((nb, hq, lq, dv), q)
    stats = _dispatch.new_output((nb, hq, 2, lq), q.new_empty(0, dtype=_stats_dtype(q)))
    if out.numel() == 0 or k.shape[2] == 0:
        out.zero_()
        stats[:, :, 0].fill_(float("inf"))
        stats[:, :, 1].zero_()
        return out, stats
    offset = _causal_offset(q, k, flags)
    if _on_triton("attention", q, k, v):
        if mask is not None and mask.dtype == torch.bool:
            mask = _float_mask(mask, q.dtype)
        _triton_kernels().attention_forward(q, k, v, mask, is_causal, offset, scale, dropout_p,
                                            seed, bool(flags & NAN_MASKED), out, stats)
        return out, stats
    block_q = _query_block(nb * hq, lq, q.element_size())
    args = _kernel_args(q, k, v, mask, offset, block_q)
    nt, dtype = _threads(), args[0].dtype
    with _dynamic(2):
        kernels.attention_forward(
            *args, bool(is_causal), float(scale), float(dropout_p), int(seed),
            bool(flags & NAN_MASKED), out.numpy(), stats.numpy(),
            np.empty((nt, kernels.BLOCK_K, block_q), dtype),
            np.empty((nt, block_q, max(dv, 1)), dtype), np.empty((nt, 4, block_q), dtype))
    return out, stats


def _causal_offset(q, k, flags):
    return k.shape[2] - q.shape[2] if flags & CAUSAL_BOTTOM_RIGHT else 0


@attention_op.register_fake
def _(q, k, v, mask, is_causal, scale, dropout_p, seed, flags=0):
    nb, hq, lq, _ = q.shape
    return (q.new_empty((nb, hq, lq, v.shape[3])),
            q.new_empty((nb, hq, 2, lq), dtype=_stats_dtype(q)))


@torch.library.custom_op("dlkern::attention_backward", mutates_args=())
def attention_backward_op(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor,
                          mask: Optional[Tensor], out: Tensor, stats: Tensor, is_causal: bool,
                          scale: float, dropout_p: float, seed: int, want_grad_mask: bool,
                          flags: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    grad_q = _dispatch.new_output(q.shape, q)
    grad_k = _dispatch.new_output(k.shape, q)
    grad_v = _dispatch.new_output(v.shape, q)
    full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    grad_mask = q.new_zeros(full if want_grad_mask else (1, 1, 1, 1))
    if grad_out.numel() == 0 or k.shape[2] == 0:
        return grad_q.zero_(), grad_k.zero_(), grad_v.zero_(), grad_mask
    offset = _causal_offset(q, k, flags)
    if _on_triton("attention", q, k, v):
        if mask is not None and mask.dtype == torch.bool:
            mask = _float_mask(mask, q.dtype)
        _triton_kernels("attention_backward").attention_backward(
            grad_out.contiguous(), q, k, v, mask, out.contiguous(), stats.contiguous(),
            is_causal, offset, scale, dropout_p, seed, grad_q, grad_k, grad_v,
            grad_mask if want_grad_mask else None)
        return grad_q, grad_k, grad_v, grad_mask
    block_q = _query_block(q.shape[0] * q.shape[1], q.shape[2], q.element_size())
    args = _kernel_args(q, k, v, mask, offset, block_q)
    nt, dtype = _threads(), args[0].dtype
    span = -(-k.shape[2] // kernels.SKIP_K) * kernels.SKIP_K
    chunk = kernels.BLOCK_K if dropout_p > 0.0 else 1
    with _dynamic(1):
        backward_kernels.attention_backward(
            *args, bool(is_causal), float(scale), float(dropout_p), int(seed),
            grad_out.detach().contiguous().numpy(), stats.detach().contiguous().numpy(),
            grad_q.numpy(), grad_k.numpy(), grad_v.numpy(), grad_mask.numpy(),
            bool(want_grad_mask), np.empty((nt, span, block_q), dtype),
            np.empty((nt, span, block_q), dtype), np.empty((nt, chunk, block_q), dtype),
            np.empty((nt, 2, block_q), dtype), np.empty((nt, block_q), np.float64))
    return grad_q, grad_k, grad_v, grad_mask


@attention_backward_op.register_fake
def _(grad_out, q, k, v, mask, out, stats, is_causal, scale, dropout_p, seed, want_grad_mask,
      flags=0):
    gm = (q.shape[0], q.shape[1], q.shape[2], k.shape[2]) if want_grad_mask else (1, 1, 1, 1)
    return q.new_empty(q.shape), q.new_empty(k.shape), q.new_empty(v.shape), q.new_empty(gm)


def _attention_setup(ctx, inputs, output):
    q, k, v, mask, is_causal, scale, dropout_p, seed, flags = inputs
    out, stats = output
    ctx.save_for_backward(q, k, v, mask, out, stats)
    ctx.params = (bool(is_causal), float(scale), float(dropout_p), int(seed), int(flags))


def _attention_backward(ctx, grad_out, grad_stats):
    q, k, v, mask, out, stats = ctx.saved_tensors
    is_causal, scale, dropout_p, seed, flags = ctx.params
    want_mask = bool(mask is not None and ctx.needs_input_grad[3])
    gq, gk, gv, gm = _dispatch.call(attention_backward_op, grad_out.contiguous(), q, k, v,
                                    mask, out, stats, is_causal, scale, dropout_p, seed,
                                    want_mask, flags)
    return (gq if ctx.needs_input_grad[0] else None, gk if ctx.needs_input_grad[1] else None,
            gv if ctx.needs_input_grad[2] else None, gm if want_mask else None,
            None, None, None, None, None)


attention_op.register_autograd(_attention_backward, setup_context=_attention_setup)


def _torch_vector_lanes(dtype):
    """Elements per SIMD vector in torch's CPU kernels (its build's capability, not the ISA)."""
    width = 64 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 32
    return width // torch.empty(0, dtype=dtype).element_size()


def _nan_masked(query, key, value, attn_mask, dropout_p, lk):
    """Whether torch's CPU flash kernel would treat a row of all-NaN scores as fully masked
    (zeros) instead of giving NaN: it takes 4-d inputs with one head dim and no dropout, and
    without a mask reduces a block of keys shorter than one SIMD vector by a scalar max that
    skips NaN."""
    return (query.device.type == "cpu" and query.dim() == key.dim() == value.dim() == 4
            and query.shape[-1] == value.shape[-1] and dropout_p == 0.0 and attn_mask is None
            and lk < _torch_vector_lanes(query.dtype))


def _causal_bias(attn_mask):
    """(is_causal, bottom_right) of a torch.nn.attention.bias.CausalBias, else None."""
    try:
        from torch.nn.attention.bias import CausalBias, CausalVariant
    except ImportError:  # older torch
        return None
    if not isinstance(attn_mask, CausalBias):
        return None
    return attn_mask.variant == CausalVariant.LOWER_RIGHT


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False):
    """The public SDPA: check, reduce to the canonical 4-d form, run (or fall back to torch)."""
    from dlkern import _validate

    bottom_right = _causal_bias(attn_mask)
    if bottom_right is not None:
        attn_mask, is_causal = None, True
    batch, hq, hk, hv = _validate.sdpa_args(query, key, value, attn_mask, dropout_p, is_causal,
                                            scale, enable_gqa)
    if _dispatch.backend_for("attention", query, key, value) is None:
        _dispatch.fallback("attention", query, key, value, attn_mask)
        if bottom_right:
            from torch.nn.attention.bias import causal_lower_right
            attn_mask = causal_lower_right(query.shape[-2], key.shape[-2])
            is_causal = False
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
    rank2 = max(query.dim(), key.dim(), value.dim()) == 2
    lq, d = query.shape[-2:]
    lk, dv = key.shape[-2], value.shape[-1]
    nb = math.prod(batch)
    if enable_gqa:
        nhk = hk if hk == hv else hq  # key and value groups differ: give each query head its own
    else:
        nhk = hq
    q3, k3, v3 = (t.unsqueeze(0) if t.dim() == 2 else t for t in (query, key, value))
    q = q3.expand(batch + (hq, lq, d)).reshape(nb, hq, lq, d)
    k = _heads(k3, batch, hk, nhk, lk, d, nb)
    v = _heads(v3, batch, hv, nhk, lk, dv, nb)
    mask = None
    if attn_mask is not None:  # bool masks stay bool: the kernels read them as bytes
        mask = attn_mask.expand(batch + (hq, lq, lk)).reshape(nb, hq, lq, lk)
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d > 0 else 1.0
    seed = 0
    if dropout_p > 0.0:
        seed = int(torch.randint(0, 2 ** 62, (1,), dtype=torch.int64).item())
    flags = CAUSAL_BOTTOM_RIGHT if bottom_right else 0
    if _nan_masked(query, key, value, attn_mask, dropout_p, lk):
        flags |= NAN_MASKED
    if lq == 1 and nhk < hq and (not is_causal or bottom_right):
        q, mask, is_causal = _group_queries(q, mask, nhk)
    out, _ = _dispatch.call(attention_op, q, k, v, mask, bool(is_causal), float(scale),
                            float(dropout_p), seed, flags)
    out = out.reshape(batch + (hq, lq, dv))
    return out.reshape(lq, dv) if rank2 else out


def _group_queries(q, mask, nhk):
    """One query per head (decoding) with grouped key/value heads: the `group` query heads that
    share a key/value head become `group` queries of one head, (B, Hq, 1, D) -> (B, Hk, group,
    D), views with the same element order (so the output, and the dropout row numbers
    (b Hq + h) Lq + i, are unchanged). The kernels then stream each K and V once per group
    instead of once per query head, in blocks of `group` rows instead of single rows. With one
    query, a bottom-right causal mask hides nothing: (q, mask, is_causal=False)."""
    nb, hq, _, d = q.shape
    group = hq // nhk
    sb, sh, _, sd = q.stride()
    q = q.as_strided((nb, nhk, group, d), (sb, sh * group, sh, sd))
    if mask is not None:
        mb, mh, _, mk = mask.stride()
        mask = mask.as_strided((nb, nhk, group, mask.shape[3]), (mb, mh * group, mh, mk))
    return q, mask, False


def _heads(t, batch, heads, nhk, length, width, nb):
    """Key or value (…, heads, L, E) as (nb, nhk, L, E): broadcast, or repeated for mixed GQA."""
    t = t.expand(batch + (t.shape[-3], length, width))
    if t.shape[-3] != nhk:
        if t.shape[-3] == 1:
            t = t.expand(batch + (nhk, length, width))
        elif nhk % t.shape[-3] == 0 and heads != nhk:
            t = t.repeat_interleave(nhk // t.shape[-3], dim=-3)
    return t.reshape(nb, nhk, length, width)
