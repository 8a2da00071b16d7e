"""Drop-in MultiheadAttention: a subclass of torch's with the same constructor, parameters and
state_dict; forward is re-implemented on dlkern's attention ops.

The projections are linear layers (torch matmuls); the attention itself is dlkern's:
``scaled_dot_product_attention`` when no weights are asked for, and dlkern's masked softmax on the
materialised scores when ``need_weights`` is True (the weights must then exist anyway). Masks are
merged the way torch merges them (bool True = not allowed, float = added), but a key padding mask
alone stays a (N, 1, 1, S) bias, so the kernel skips padded key blocks instead of reading an
expanded (N*H, L, S) mask.
"""
import math

import torch
import torch.nn.functional as F

from dlkern import _validate
from dlkern import functional as DF


def _as_float_mask(mask, dtype):
    """A bool mask (True = not allowed) as an additive float mask; a float mask unchanged."""
    if mask is None or mask.is_floating_point():
        return mask
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill_(mask, float("-inf"))


class MultiheadAttention(torch.nn.MultiheadAttention):
    """torch.nn.MultiheadAttention computed by dlkern."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        _validate.check_tensor(query, "query")
        batch_first = self.batch_first and query.dim() == 3
        if batch_first:
            # keep the identities that select the packed (self-attention) projection
            if key is value:
                if query is key:
                    query = key = value = query.transpose(1, 0)
                else:
                    query, key = (x.transpose(1, 0) for x in (query, key))
                    value = key
            else:
                query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        is_batched = _validate.mha_args(query, key, value, key_padding_mask, attn_mask,
                                        self.num_heads, self.embed_dim, is_causal)
        out, weights = self._attend(query, key, value, key_padding_mask, need_weights, attn_mask,
                                    average_attn_weights, is_causal, is_batched)
        if batch_first:
            out = out.transpose(1, 0)
        return out, weights

    def _project(self, query, key, value):
        e = self.embed_dim
        if self._qkv_same_embed_dim:
            w, b = self.in_proj_weight, self.in_proj_bias
            bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
            if query is key and key is value:
                qkv = F.linear(query, w, b)
                return qkv[..., :e], qkv[..., e:2 * e], qkv[..., 2 * e:]
            wq, wk, wv = w.chunk(3)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
            b = self.in_proj_bias
            bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    def _attend(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                average_attn_weights, is_causal, is_batched):
        if not is_batched:
            query, key, value = (x.unsqueeze(1) for x in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        tgt_len, bsz, e = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        dtype = query.dtype
        key_padding_mask = _as_float_mask(key_padding_mask, dtype)
        use_causal = is_causal and key_padding_mask is None and not need_weights
        if use_causal:
            attn_mask = None
        else:
            attn_mask = _as_float_mask(attn_mask, dtype)
            is_causal = False
        q, k, v = self._project(query, key, value)
        if attn_mask is not None:
            # (1, 1, L, S) or (N, H, L, S), as torch's check of 2-d and 3-d masks allows
            src = key.shape[0]
            attn_mask = (attn_mask.reshape(1, 1, tgt_len, src) if attn_mask.dim() == 2
                         else attn_mask.reshape(bsz, heads, tgt_len, src))
        if key_padding_mask is not None:
            # explicit sizes: -1 is ambiguous for a batch of 0
            key_padding_mask = key_padding_mask.reshape(bsz, 1, 1, key.shape[0])
        extra = []
        if self.bias_k is not None and self.bias_v is not None:
            extra.append((self.bias_k.expand(1, bsz, e), self.bias_v.expand(1, bsz, e)))
        if self.add_zero_attn:
            zeros = q.new_zeros((1, bsz, e))
            extra.append((zeros, zeros))
        for extra_k, extra_v in extra:
            k = torch.cat([k, extra_k])
            v = torch.cat([v, extra_v])
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        mask = attn_mask
        if key_padding_mask is not None:
            mask = key_padding_mask if mask is None else mask + key_padding_mask
        # (L, N, E) -> (N, H, L, head_dim) views: rows stay contiguous, no copy
        q, k, v = (t.reshape(t.shape[0], bsz, heads, head_dim).permute(1, 2, 0, 3)
                   for t in (q, k, v))
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = torch.matmul(q * math.sqrt(1.0 / head_dim), k.transpose(-2, -1))
            if mask is not None:
                scores = scores + mask
            weights = DF.masked_softmax(scores, None, -1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)  # torch returns the dropped weights too
            out = torch.matmul(weights, v)
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not is_batched:
                weights = weights.squeeze(0)
        else:
            out = DF.scaled_dot_product_attention(q, k, v, mask, dropout_p, is_causal)
        out = out.permute(2, 0, 1, 3).reshape(tgt_len * bsz, e)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias).view(tgt_len, bsz, e)
        if not is_batched:
            out = out.squeeze(1)
        return out, weights
