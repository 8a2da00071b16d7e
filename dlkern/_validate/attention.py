"""Argument checks of attention: masked_softmax, scaled_dot_product_attention, MultiheadAttention."""
import numbers

import torch

from dlkern._validate.common import _broadcasts_to, _shape, check_tensor


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
