"""Bad-input cases of the attention family, run by bad_input_battery.py.

Cases where torch 2.13 raises nothing and dlkern raises are tested in test_attention.py instead:
key and value of different lengths (torch's CPU kernel reads past the end of value), a negative
dropout_p, a masked_softmax mask of higher rank than the input.
"""
import torch
import torch.nn.functional as F

import dlkern.functional as DF
import dlkern.nn as dnn

q = torch.randn(2, 4, 5, 8)
k = torch.randn(2, 4, 7, 8)
v = torch.randn(2, 4, 7, 6)


def cases():
    """{name: (torch call, dlkern call)} for masked softmax, SDPA and MultiheadAttention."""
    def sdpa(*args, **kwargs):
        return (lambda: F.scaled_dot_product_attention(*args, **kwargs),
                lambda: DF.scaled_dot_product_attention(*args, **kwargs))

    def softmax(x, mask, dim=-1):
        # torch's masked softmax: masked_fill + softmax
        return (lambda: torch.softmax(x.masked_fill(~mask, float("-inf")) if mask is not None else x, dim),
                lambda: DF.masked_softmax(x, mask, dim))

    cases = {
        "mask of wrong shape": sdpa(q, k, v, attn_mask=torch.ones(5, 6, dtype=torch.bool)),
        "mask of wrong rank": sdpa(q, k, v, attn_mask=torch.ones(1, 1, 1, 5, 7, dtype=torch.bool)),
        "mask int dtype": sdpa(q, k, v, attn_mask=torch.ones(5, 7, dtype=torch.int64)),
        "mask float64 for float32": sdpa(q, k, v, attn_mask=torch.zeros(5, 7, dtype=torch.float64)),
        "mask with is_causal": sdpa(q, k, v, attn_mask=torch.ones(5, 7, dtype=torch.bool), is_causal=True),
        "head dims mismatched": sdpa(q, k[..., :4], v),
        "query rank 1": sdpa(q[0, 0, 0], k[0, 0, 0], v[0, 0, 0]),
        "dtypes differ": sdpa(q, k.double(), v),
        "integer inputs": sdpa(q.long(), k.long(), v.long()),
        "heads differ without gqa": sdpa(q, k[:, :2], v[:, :2]),
        "gqa heads do not divide": sdpa(q, k[:, :3], v[:, :3], enable_gqa=True),
        "batch does not broadcast": sdpa(q, k[:1].expand(3, 4, 7, 8), v[:1].expand(3, 4, 7, 6)),
        "unbatched key/value lengths differ": sdpa(q[0], k[0], v[0, :, :4]),
        "dropout above 1": sdpa(q, k, v, dropout_p=1.5),
        "softmax mask of wrong shape": softmax(torch.randn(3, 4), torch.ones(3, 5, dtype=torch.bool)),
        "softmax mask of int dtype": softmax(torch.randn(3, 4), torch.ones(3, 4, dtype=torch.int32)),
        "softmax dim out of range": softmax(torch.randn(3, 4), None, 2),
        "softmax integer input": softmax(torch.ones(3, 4, dtype=torch.int64), None),
    }
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(16, 4)
    mod = dnn.MultiheadAttention(16, 4)
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 16)

    def mha(*args, **kwargs):
        return (lambda: ref(*args, **kwargs), lambda: mod(*args, **kwargs))

    cases.update({
        "mha wrong embed dim": mha(torch.randn(5, 2, 12), x, x),
        "mha 2-d attn_mask of wrong size": mha(x, x, x, attn_mask=torch.zeros(5, 4)),
        "mha 3-d attn_mask of wrong size": mha(x, x, x, attn_mask=torch.zeros(2, 5, 5)),
        "mha key_padding_mask of wrong size": mha(x, x, x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)),
        "mha int key_padding_mask": mha(x, x, x, key_padding_mask=torch.zeros(2, 5, dtype=torch.int64)),
        "mha is_causal without mask": mha(x, x, x, is_causal=True),
        "mha key rank differs": mha(x, x[0], x),
        "mha 4-d query": mha(x[None], x[None], x[None]),
        "mha heads do not divide embed_dim": (lambda: torch.nn.MultiheadAttention(16, 3),
                                              lambda: dnn.MultiheadAttention(16, 3)),
    })
    return cases
