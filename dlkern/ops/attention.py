"""Masked softmax and scaled dot-product attention as torch custom ops: registration, autograd,
canonicalisation of torch's broadcasting rules, and backend dispatch.

Ops in the ``dlkern`` namespace, each with a fake (meta) implementation:

* ``dlkern::masked_softmax(x, mask, mask_row_offset, mask_col_stride)``: softmax over the last
  axis of a contiguous 2-d ``x`` (R, N); ``mask`` a flat uint8 tensor read at
  ``mask_row_offset[r] + j * mask_col_stride`` (so a broadcast mask is never expanded).
* ``dlkern::masked_softmax_backward(y, grad_y)``.
* ``dlkern::attention(q, k, v, mask, is_causal, scale, dropout_p, seed) -> (out, lse)`` on
  canonical 4-d tensors: q (B, Hq, Lq, D), k (B, Hk, Lk, D), v (B, Hk, Lk, Dv) with Hq a multiple
  of Hk, mask an additive float bias broadcast (zero strides allowed) to (B, Hq, Lq, Lk).
* ``dlkern::attention_backward(...) -> (grad_q, grad_k, grad_v, grad_mask)``.

Inside each op the backend is chosen again from the canonical tensors: Numba kernels for CPU
tensors, Triton kernels (``dlkern.kernels.triton.attention``, imported on the first such call) for
CUDA tensors or under ``DLKERN_BACKEND=triton`` with ``TRITON_INTERPRET=1``. The log-sum-exp is
float32 except for float64 inputs (the Triton kernels keep it in float32 for float16/bfloat16).

The public functions reduce every case torch accepts (unbatched, extra batch axes, broadcast
batch or head axes, GQA, bool masks) to those canonical forms with views; autograd through the
views sums the gradients of broadcast axes.
"""
import math
from typing import Optional, Tuple

import numba
import numpy as np
import torch
from torch import Tensor

from dlkern import _dispatch
from dlkern.kernels.numba import attention as kernels

_NEG_INF = float("-inf")

_dispatch.register_triton("attention", "masked_softmax")


def _triton_kernels():
    """The Triton kernels, imported on first use (importing dlkern never needs Triton)."""
    from dlkern.kernels.triton import attention as triton_kernels
    return triton_kernels


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
            _triton_kernels().masked_softmax_forward(x.contiguous(), mask, mask_row_offset,
                                                     mask_col_stride, out)
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
        kernels.masked_softmax_forward(
            xa, m, offsets, int(mask_col_stride), mask is not None, out.numpy(),
            np.empty((nt, kernels.LANES), dtype), np.empty((nt, max(n, 1)), np.uint8))
    return out


@masked_softmax_op.register_fake
def _(x, mask, mask_row_offset, mask_col_stride):
    return torch.empty_like(x)


@torch.library.custom_op("dlkern::masked_softmax_backward", mutates_args=())
def masked_softmax_backward_op(y: Tensor, grad_y: Tensor) -> Tensor:
    grad_x = _dispatch.new_output(y.shape, y)
    if _on_triton("masked_softmax", y):
        if grad_x.numel():
            _triton_kernels().masked_softmax_backward(y.contiguous(), grad_y.contiguous(), grad_x)
        return grad_x
    nt = _threads()
    ya = y.detach().numpy()
    with _dynamic(64):
        kernels.masked_softmax_backward(ya, grad_y.detach().contiguous().numpy(), grad_x.numpy(),
                                        np.empty((nt, kernels.LANES), ya.dtype),
                                        np.empty((nt, max(y.shape[1], 1)), ya.dtype))
    return grad_x


@masked_softmax_backward_op.register_fake
def _(y, grad_y):
    return torch.empty_like(y)


def _masked_softmax_setup(ctx, inputs, output):
    ctx.save_for_backward(output)


def _masked_softmax_backward(ctx, grad):
    (y,) = ctx.saved_tensors
    return masked_softmax_backward_op(y, grad.contiguous()), None, None, None


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
        y = masked_softmax_op(x2, None, None, 0)
    else:
        base = mask.contiguous()
        view = base.expand(input.shape).movedim(dim, -1)
        offsets = torch.zeros((), dtype=torch.int64, device=base.device)
        for size, stride in zip(view.shape[:-1], view.stride()[:-1]):
            offsets = offsets.unsqueeze(-1) + torch.arange(size, dtype=torch.int64,
                                                           device=base.device) * stride
        y = masked_softmax_op(x2, base.view(torch.uint8).reshape(-1), offsets.reshape(-1),
                              int(view.stride(-1)))
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

def _skip_table(mask, lq, lk):
    """uint8 (B', H', nqb', nkb') view broadcast to the mask's 4-d shape: 0 = block all masked."""
    if mask is None:
        return None
    # The un-broadcast mask: index 0 of every zero-stride axis (a key-padding mask is tiny).
    small = mask[tuple(slice(0, 1) if st == 0 else slice(None) for st in mask.stride())]
    live = small.detach() != _NEG_INF
    b, h, mq, mk = live.shape
    nqb = -(-mq // kernels.BLOCK_Q) if mq > 1 else 1
    nkb = -(-mk // kernels.SKIP_K) if mk > 1 else 1
    bq = kernels.BLOCK_Q if mq > 1 else 1
    bk = kernels.SKIP_K if mk > 1 else 1
    live = torch.nn.functional.pad(live, (0, nkb * bk - mk, 0, nqb * bq - mq))
    table = live.reshape(b, h, nqb, bq, nkb, bk).any(dim=5).any(dim=3).to(torch.uint8)
    full = (mask.shape[0], mask.shape[1], -(-lq // kernels.BLOCK_Q), -(-lk // kernels.SKIP_K))
    return table.expand(full)


def _flat(t):
    """(1-d NumPy view of the storage span t reads, t's element strides); never copies."""
    if t.numel() == 0:
        return np.zeros(1, torch.empty(0, dtype=t.dtype).numpy().dtype), [0] * t.dim()
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    flat = torch.as_strided(t.detach(), (span,), (1,), t.storage_offset())
    return flat.numpy(), list(t.stride())


def _kernel_args(q, k, v, mask):
    """The kernels' (q, k, v, mask, skip, strides, dims): flat arrays and their strides."""
    q, k, v = (_rows_contiguous(t) for t in (q, k, v))
    arrays, strides = [], []
    for t in (q, k, v):
        a, st = _flat(t)
        arrays.append(a)
        strides.append(st)
    if mask is None:
        arrays += [np.zeros(1, arrays[0].dtype), np.zeros(1, np.uint8)]
        strides += [[0] * 4, [0] * 4]
    else:
        for t in (mask, _skip_table(mask, q.shape[2], k.shape[2])):
            a, st = _flat(t)
            arrays.append(a)
            strides.append(st)
    dims = np.array([q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3],
                     v.shape[3]], np.int64)
    return arrays + [np.array(strides, np.int64), dims]


@torch.library.custom_op("dlkern::attention", mutates_args=())
def attention_op(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], is_causal: bool,
                 scale: float, dropout_p: float, seed: int) -> Tuple[Tensor, Tensor]:
    nb, hq, lq, _ = q.shape
    dv = v.shape[3]
    out = _dispatch.new_output((nb, hq, lq, dv), q)
    lse = _dispatch.new_output((nb, hq, lq), q.new_empty(0, dtype=_lse_dtype(q)))
    if out.numel() == 0 or k.shape[2] == 0:
        out.zero_()
        lse.fill_(_NEG_INF)
        return out, lse
    if _on_triton("attention", q, k, v):
        _triton_kernels().attention_forward(q, k, v, mask, is_causal, scale, dropout_p, seed, out,
                                            lse)
        return out, lse
    args = _kernel_args(q, k, v, mask)
    nt, dtype = _threads(), args[0].dtype
    with _dynamic(2):
        kernels.attention_forward(
            *args, mask is not None, mask is not None, bool(is_causal), float(scale),
            float(dropout_p), int(seed), out.numpy(), lse.numpy(),
            np.empty((nt, kernels.BLOCK_K, kernels.BLOCK_Q), dtype),
            np.empty((nt, kernels.BLOCK_Q, max(dv, 1)), dtype),
            np.empty((nt, 4, kernels.BLOCK_Q), dtype))
    return out, lse


def _lse_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32


@attention_op.register_fake
def _(q, k, v, mask, is_causal, scale, dropout_p, seed):
    nb, hq, lq, _ = q.shape
    return (q.new_empty((nb, hq, lq, v.shape[3])),
            q.new_empty((nb, hq, lq), dtype=_lse_dtype(q)))


@torch.library.custom_op("dlkern::attention_backward", mutates_args=())
def attention_backward_op(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor,
                          mask: Optional[Tensor], out: Tensor, lse: Tensor, is_causal: bool,
                          scale: float, dropout_p: float, seed: int,
                          want_grad_mask: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    grad_q = _dispatch.new_output(q.shape, q)
    grad_k = _dispatch.new_output(k.shape, q)
    grad_v = _dispatch.new_output(v.shape, q)
    if grad_out.numel() == 0 or k.shape[2] == 0:
        grad_mask = q.new_zeros((q.shape[0], q.shape[1], q.shape[2], k.shape[2]) if want_grad_mask
                                else (1, 1, 1, 1))
        return grad_q.zero_(), grad_k.zero_(), grad_v.zero_(), grad_mask
    if _on_triton("attention", q, k, v):
        full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        grad_mask = q.new_zeros(full if want_grad_mask else (1, 1, 1, 1))
        _triton_kernels().attention_backward(
            grad_out.contiguous(), q, k, v, mask, out.contiguous(), lse.contiguous(), is_causal,
            scale, dropout_p, seed, grad_q, grad_k, grad_v,
            grad_mask if want_grad_mask else None)
        return grad_q, grad_k, grad_v, grad_mask
    args = _kernel_args(q, k, v, mask)
    if want_grad_mask:
        grad_mask = torch.zeros((q.shape[0], q.shape[1], q.shape[2], k.shape[2]), dtype=q.dtype)
    else:
        grad_mask = q.new_zeros((1, 1, 1, 1))
    nt, dtype = _threads(), args[0].dtype
    block = (nt, kernels.BLOCK_K, kernels.BLOCK_Q)
    with _dynamic(1):
        kernels.attention_backward(
            *args, mask is not None, mask is not None, bool(is_causal), float(scale),
            float(dropout_p), int(seed), out.detach().contiguous().numpy(),
            grad_out.detach().contiguous().numpy(), lse.detach().contiguous().numpy(),
            grad_q.numpy(), grad_k.numpy(), grad_v.numpy(), grad_mask.numpy(),
            bool(want_grad_mask), np.empty(block, dtype), np.empty(block, dtype),
            np.empty(block, dtype), np.empty((nt, 3, kernels.BLOCK_Q), dtype))
    return grad_q, grad_k, grad_v, grad_mask


@attention_backward_op.register_fake
def _(grad_out, q, k, v, mask, out, lse, is_causal, scale, dropout_p, seed, want_grad_mask):
    gm = (q.shape[0], q.shape[1], q.shape[2], k.shape[2]) if want_grad_mask else (1, 1, 1, 1)
    return q.new_empty(q.shape), q.new_empty(k.shape), q.new_empty(v.shape), q.new_empty(gm)


def _attention_setup(ctx, inputs, output):
    q, k, v, mask, is_causal, scale, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, mask, out, lse)
    ctx.params = (bool(is_causal), float(scale), float(dropout_p), int(seed))


def _attention_backward(ctx, grad_out, grad_lse):
    q, k, v, mask, out, lse = ctx.saved_tensors
    is_causal, scale, dropout_p, seed = ctx.params
    want_mask = bool(mask is not None and ctx.needs_input_grad[3])
    gq, gk, gv, gm = attention_backward_op(grad_out.contiguous(), q, k, v, mask, out, lse,
                                           is_causal, scale, dropout_p, seed, want_mask)
    return (gq if ctx.needs_input_grad[0] else None, gk if ctx.needs_input_grad[1] else None,
            gv if ctx.needs_input_grad[2] else None, gm if want_mask else None,
            None, None, None, None)


attention_op.register_autograd(_attention_backward, setup_context=_attention_setup)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False):
    """The public SDPA: check, reduce to the canonical 4-d form, run (or fall back to torch)."""
    from dlkern import _validate

    batch, hq, hk, hv = _validate.sdpa_args(query, key, value, attn_mask, dropout_p, is_causal,
                                            scale, enable_gqa)
    if _dispatch.backend_for("attention", query, key, value) is None:
        _dispatch.fallback("attention", query, key, value, attn_mask)
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
    if attn_mask is not None:
        mask = attn_mask
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=query.dtype,
                               device=mask.device).masked_fill_(~mask, _NEG_INF)
        mask = mask.expand(batch + (hq, lq, lk)).reshape(nb, hq, lq, lk)
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d > 0 else 1.0
    seed = 0
    if dropout_p > 0.0:
        seed = int(torch.randint(0, 2 ** 62, (1,), dtype=torch.int64).item())
    out, _ = attention_op(q, k, v, mask, bool(is_causal), float(scale), float(dropout_p), seed)
    out = out.reshape(batch + (hq, lq, dv))
    return out.reshape(lq, dv) if rank2 else out


def _heads(t, batch, heads, nhk, length, width, nb):
    """Key or value (…, heads, L, E) as (nb, nhk, L, E): broadcast, or repeated for mixed GQA."""
    t = t.expand(batch + (t.shape[-3], length, width))
    if t.shape[-3] != nhk:
        if t.shape[-3] == 1:
            t = t.expand(batch + (nhk, length, width))
        elif nhk % t.shape[-3] == 0 and heads != nhk:
            t = t.repeat_interleave(nhk // t.shape[-3], dim=-3)
    return t.reshape(nb, nhk, length, width)
