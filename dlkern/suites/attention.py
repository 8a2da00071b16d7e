"""Benchmark shapes of the attention family (issue targets as Case.target / target_fwd_bwd).

FLOPs count the work a kernel that skips masked blocks must do: 4 * Lq * Lk * D per head for full
attention, about half of it for causal, and the unpadded keys only under a key padding mask.
"""
import torch
import torch.nn.functional as F

import dlkern.functional as DF
import dlkern.nn as dnn
from dlkern.benchmark import Case

OP = "attention"


def _lengths(b, lk, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lk // 2, lk + 1, (b,), generator=g)


def _sdpa_case(name, b, h, lq, lk, d, kind, target=None, target_fwd_bwd=None, fwd_bwd=True):
    lengths = _lengths(b, lk)

    def build(dtype, requires_grad):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=dtype).requires_grad_(requires_grad)
                   for n in (lq, lk, lk))
        kwargs = {}
        if kind == "causal":
            kwargs["is_causal"] = True
        elif kind == "padding":
            kwargs["attn_mask"] = (torch.arange(lk) < lengths[:, None])[:, None, None, :]
        return (q, k, v), kwargs

    if kind == "causal":
        pairs = sum(min(i + 1, lk) for i in range(lq)) * b * h
    elif kind == "padding":
        pairs = float(lengths.sum()) * lq * h
    else:
        pairs = b * h * lq * lk
    return Case(name, OP, build, F.scaled_dot_product_attention, DF.scaled_dot_product_attention,
                4.0 * pairs * d, target, target_fwd_bwd, fwd_bwd)


def _torch_masked_softmax(x, mask):
    return torch.softmax(x.masked_fill(~mask, float("-inf")), -1)


def _softmax_case(name, shape, target):
    lengths = _lengths(shape[0], shape[-1])

    def build(dtype, requires_grad):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g, dtype=dtype).requires_grad_(requires_grad)
        mask = (torch.arange(shape[-1]) < lengths[:, None])[:, None, None, :]
        return (x, mask), {}

    numel = 1
    for s in shape:
        numel *= s
    return Case(name, OP, build, _torch_masked_softmax, DF.masked_softmax, 5.0 * numel, target,
                bytes=2.0 * 4 * numel, memory_bound=True)


def _mha_case(name, b, length, e, heads, target):
    torch.manual_seed(0)
    torch_module = torch.nn.MultiheadAttention(e, heads, batch_first=True).eval()
    module = dnn.MultiheadAttention(e, heads, batch_first=True).eval()
    module.load_state_dict(torch_module.state_dict())
    lengths = _lengths(b, length)

    def build(dtype, requires_grad):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(b, length, e, generator=g, dtype=dtype).requires_grad_(requires_grad)
        kpm = torch.arange(length) >= lengths[:, None]
        return (x, kpm), {}

    def run(m):
        return lambda x, kpm: m(x, x, x, key_padding_mask=kpm, need_weights=False)[0]

    flops = 2.0 * b * length * e * e * 4 + 4.0 * float(lengths.sum()) * length * e
    return Case(name, OP, build, run(torch_module), run(module), flops, target)


CASES = [
    _sdpa_case("SDPA B8 H8 L512 D64", 8, 8, 512, 512, 64, "none", target=1.0),
    _sdpa_case("SDPA B8 H8 L512 D64 causal", 8, 8, 512, 512, 64, "causal", target=1.8,
               target_fwd_bwd=1.5),
    _sdpa_case("SDPA B8 H8 L512 D64 key padding", 8, 8, 512, 512, 64, "padding", target=1.3),
    _sdpa_case("SDPA B2 H16 L2048 D64 causal", 2, 16, 2048, 2048, 64, "causal", target=1.8),
    _sdpa_case("cross B8 H8 Lq128 Lk1024 D64 padding", 8, 8, 128, 1024, 64, "padding", target=1.2),
    _softmax_case("masked_softmax (8,8,512,512) padding", (8, 8, 512, 512), target=2.0),
    _mha_case("MHA B16 L256 E512 H8 key padding", 16, 256, 512, 8, target=1.2),
]
