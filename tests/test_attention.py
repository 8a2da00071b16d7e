"""masked_softmax, scaled_dot_product_attention and MultiheadAttention against torch (float64
reference): forward and every gradient, masks of every kind and broadcast shape, causal, GQA,
fully masked rows, dropout, memory."""
import copy
import math
import threading
import warnings
import zlib

import pytest
import torch
import torch.nn.functional as F

import dlkern
import dlkern.functional as DF
import dlkern.nn as dnn
from dlkern.kernels.numba import attention as kernels
from helpers import assert_close, check_against_torch, float64_copy, make_tensor, run_isolated

DTYPES = [torch.float32, torch.float64]

# (batch, heads_q, heads_kv, Lq, Lk, D, Dv): head dims 8-128, L from 1 to 1000+, Lq != Lk, GQA
SHAPES = [
    (2, 3, 3, 70, 130, 16, 16),
    (1, 2, 2, 1, 1, 8, 8),
    (2, 4, 2, 65, 64, 32, 24),
    (1, 4, 1, 33, 97, 128, 128),
    (3, 2, 2, 200, 7, 64, 64),
]
LONG_SHAPES = [(1, 2, 2, 1030, 1030, 64, 64), (2, 1, 1, 5, 1100, 32, 32)]

# Mask kinds and the shape they are drawn with (B, H, Lq, Lk are the attention's)
MASKS = {
    "none": None,
    "bool full": lambda b, h, lq, lk: (b, h, lq, lk),
    "bool key padding": lambda b, h, lq, lk: (b, 1, 1, lk),
    "bool 2-d": lambda b, h, lq, lk: (lq, lk),
    "float full": lambda b, h, lq, lk: (b, h, lq, lk),
    "float per head": lambda b, h, lq, lk: (1, h, 1, lk),
    "float 2-d": lambda b, h, lq, lk: (lq, lk),
    "float rows": lambda b, h, lq, lk: (lq, 1),
}


def make_mask(kind, b, h, lq, lk, dtype, gen, fully_masked_rows=True):
    """A bool (True = attend) or additive float mask with some fully masked rows."""
    if MASKS[kind] is None:
        return None
    shape = MASKS[kind](b, h, lq, lk)
    if kind.startswith("bool"):
        if kind == "bool key padding":
            lengths = torch.randint(0, lk + 1, (b,), generator=gen)
            if fully_masked_rows is False:
                lengths.clamp_(min=1)
            return (torch.arange(lk) < lengths[:, None])[:, None, None, :]
        mask = torch.rand(shape, generator=gen) < 0.7
        if fully_masked_rows and shape[-2] > 2:
            mask[..., 1, :] = False
        return mask
    mask = make_tensor(shape, dtype, generator=gen)
    if shape[-1] > 3:
        mask = mask.masked_fill(torch.rand(shape, generator=gen) < 0.2, float("-inf"))
    if fully_masked_rows and shape[-2] > 2 and shape[-1] > 3:
        mask[..., 2, :] = float("-inf")
    return mask


def sdpa_inputs(shape, dtype, gen, layout="contiguous"):
    b, hq, hk, lq, lk, d, dv = shape
    if layout == "transposed":
        # (B, L, H, D) memory viewed as (B, H, L, D), as a batch_first projection gives it
        q = make_tensor((b, lq, hq, d), dtype, generator=gen).transpose(1, 2)
        k = make_tensor((b, lk, hk, d), dtype, generator=gen).transpose(1, 2)
        v = make_tensor((b, lk, hk, dv), dtype, generator=gen).transpose(1, 2)
        return q, k, v
    q = make_tensor((b, hq, lq, d), dtype, layout, generator=gen)
    k = make_tensor((b, hk, lk, d), dtype, layout, generator=gen)
    v = make_tensor((b, hk, lk, dv), dtype, layout, generator=gen)
    return q, k, v


def run_sdpa(q, k, v, mask=None, **kwargs):
    """Output and gradients of q, k, v (and of a float mask) against torch in float64."""
    float_mask = mask is not None and mask.is_floating_point()
    tensors = [q, k, v] + ([mask] if float_mask else [])
    bool_mask = mask if not float_mask else None  # a bool mask is not converted to float64
    lq, lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    red = lq + lk + d

    def dl(q, k, v, m=bool_mask):
        return DF.scaled_dot_product_attention(q, k, v, m, **kwargs)

    def ref(q, k, v, m=bool_mask):
        return F.scaled_dot_product_attention(q, k, v, m, **kwargs)

    return check_against_torch(dl, ref, tensors, {"output": red, 0: red, 1: red, 2: red, 3: red})


def _id(v):
    return str(v).replace("torch.", "").replace(" ", "")


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("mask_kind", list(MASKS), ids=_id)
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_sdpa_masks(shape, mask_kind, dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, mask_kind)).encode()))
    q, k, v = sdpa_inputs(shape, dtype, gen)
    b, hq, _, lq, lk = shape[:5]
    mask = make_mask(mask_kind, b, hq, lq, lk, dtype, gen)
    run_sdpa(q, k, v, mask, enable_gqa=shape[1] != shape[2])


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_sdpa_causal(shape, dtype):
    gen = torch.Generator().manual_seed(1)
    q, k, v = sdpa_inputs(shape, dtype, gen)
    run_sdpa(q, k, v, is_causal=True, enable_gqa=shape[1] != shape[2])


@pytest.mark.parametrize("shape", LONG_SHAPES, ids=_id)
@pytest.mark.parametrize("mode", ["causal", "bool key padding", "float per head", "none"])
def test_sdpa_long(shape, mode):
    gen = torch.Generator().manual_seed(2)
    q, k, v = sdpa_inputs(shape, torch.float32, gen)
    if mode == "causal":
        run_sdpa(q, k, v, is_causal=True)
    else:
        mask = make_mask(mode, shape[0], shape[1], shape[3], shape[4], torch.float32, gen)
        run_sdpa(q, k, v, mask)


@pytest.mark.parametrize("layout", ["noncontiguous", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_sdpa_noncontiguous(layout, dtype):
    gen = torch.Generator().manual_seed(3)
    shape = (2, 4, 2, 70, 90, 32, 16)
    q, k, v = sdpa_inputs(shape, dtype, gen, layout)
    assert not q.is_contiguous()
    mask = make_mask("bool key padding", 2, 4, 70, 90, dtype, gen)
    run_sdpa(q, k, v, mask, enable_gqa=True)
    run_sdpa(q, k, v, is_causal=True, enable_gqa=True, scale=0.3)


def test_sdpa_rank_and_broadcasting():
    gen = torch.Generator().manual_seed(4)
    t = lambda *s: make_tensor(s, torch.float64, generator=gen)  # noqa: E731
    run_sdpa(t(9, 8), t(11, 8), t(11, 5))                                    # 2-d
    run_sdpa(t(3, 9, 8), t(3, 11, 8), t(3, 11, 5), is_causal=True)          # unbatched
    run_sdpa(t(2, 3, 4, 9, 8), t(2, 3, 4, 11, 8), t(2, 3, 4, 11, 5),         # extra batch axis
             torch.rand(3, 1, 9, 11, generator=gen) < 0.8)
    run_sdpa(t(2, 4, 9, 8), t(2, 1, 11, 8), t(2, 1, 11, 5))                  # broadcast heads
    run_sdpa(t(1, 4, 9, 8), t(3, 4, 11, 8), t(3, 4, 11, 5))                  # broadcast batch
    run_sdpa(t(9, 8), t(2, 11, 8), t(2, 11, 5))                              # 2-d query, 3-d key
    run_sdpa(t(2, 6, 9, 8), t(2, 3, 11, 8), t(2, 2, 11, 5), enable_gqa=True)  # key/value groups differ
    run_sdpa(t(2, 4, 9, 8), t(2, 4, 11, 8), t(2, 4, 11, 5), scale=0.0)


def test_sdpa_empty():
    gen = torch.Generator().manual_seed(5)
    t = lambda *s: make_tensor(s, torch.float32, generator=gen)  # noqa: E731
    for q, k, v in [(t(0, 2, 3, 4), t(0, 2, 5, 4), t(0, 2, 5, 6)),
                    (t(2, 2, 0, 4), t(2, 2, 5, 4), t(2, 2, 5, 6)),
                    (t(2, 2, 3, 4), t(2, 2, 0, 4), t(2, 2, 0, 6))]:
        out = DF.scaled_dot_product_attention(q, k, v)
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
        assert_close(out, ref, 1)


def test_sdpa_fully_masked_rows_are_zero_with_zero_gradients():
    gen = torch.Generator().manual_seed(6)
    q, k, v = sdpa_inputs((1, 2, 2, 5, 6, 8, 8), torch.float32, gen)
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[3] = False
    out = run_sdpa(q, k, v, mask)
    assert torch.equal(out[:, :, 3], torch.zeros_like(out[:, :, 3]))
    fmask = torch.zeros(1, 1, 5, 6).masked_fill(~mask, float("-inf"))
    run_sdpa(q, k, v, fmask)


@pytest.mark.parametrize("case", ["mask", "causal", "gqa"])
def test_sdpa_gradcheck(case):
    gen = torch.Generator().manual_seed(7)
    q, k, v = sdpa_inputs((1, 2, 1 if case == "gqa" else 2, 5, 7, 4, 3), torch.float64, gen)
    args = [t.requires_grad_() for t in (q, k, v)]
    kwargs = {}
    if case == "mask":
        args.append(make_tensor((1, 2, 5, 7), torch.float64, generator=gen, requires_grad=True))
    elif case == "causal":
        kwargs["is_causal"] = True
    else:
        kwargs["enable_gqa"] = True
    fn = lambda *a: DF.scaled_dot_product_attention(*a, **kwargs)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


def test_sdpa_skipped_blocks_and_key_padding_mask_cover_every_block():
    # Key padding that ends mid-block, in the last block, and at 0; causal blocks on the diagonal.
    gen = torch.Generator().manual_seed(8)
    lk = 3 * kernels.SKIP_K + 5
    q, k, v = sdpa_inputs((4, 2, 2, 2 * 64 + 3, lk, 16, 16), torch.float32, gen)
    lengths = torch.tensor([1, kernels.SKIP_K + 7, lk, 2 * kernels.SKIP_K])
    mask = (torch.arange(lk) < lengths[:, None])[:, None, None, :]
    run_sdpa(q, k, v, mask)
    q2, k2, v2 = sdpa_inputs((1, 1, 1, lk, lk, 16, 16), torch.float32, gen)
    run_sdpa(q2, k2, v2, is_causal=True)


def _dropout_reference(q, k, v, p, seed):
    """softmax(q k^T / sqrt(d)) with dlkern's dropout factors, then @ v, in float64."""
    b, h, lq, d = q.shape
    keep = torch.from_numpy(kernels.dropout_keep(seed, b * h * lq, k.shape[2], p))
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), -1)
    return (weights * keep.reshape(b, h, lq, -1)) @ v


def test_dropout_matches_its_mask_and_is_repeatable():
    gen = torch.Generator().manual_seed(9)
    q, k, v = sdpa_inputs((2, 2, 2, 40, 70, 16, 8), torch.float64, gen)
    p = 0.3
    torch.manual_seed(123)
    seed = int(torch.randint(0, 2 ** 62, (1,), dtype=torch.int64).item())
    tensors = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    refs = [float64_copy(t) for t in tensors]
    torch.manual_seed(123)
    out = DF.scaled_dot_product_attention(*tensors, dropout_p=p)
    ref = _dropout_reference(*refs, p, seed)
    assert_close(out, ref, 100)
    grad = make_tensor(tuple(out.shape), torch.float64, generator=gen)
    out.backward(grad)
    ref.backward(grad)
    for t, r in zip(tensors, refs):
        assert_close(t.grad, r.grad, 100, "dropout gradient")
    torch.manual_seed(123)
    again = DF.scaled_dot_product_attention(q, k, v, dropout_p=p)
    assert torch.equal(again, out.detach())
    other = DF.scaled_dot_product_attention(q, k, v, dropout_p=p)
    assert not torch.equal(other, out.detach())


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_statistics(p):
    # q = k = 0: every weight is 1/Lk, so out[i] = (kept keys of row i) / (Lk (1 - p)) with v = 1.
    lq, lk = 2000, 400
    q = torch.zeros(2, 2, lq, 8)
    k = torch.zeros(2, 2, lk, 8)
    v = torch.ones(2, 2, lk, 1)
    out = DF.scaled_dot_product_attention(q, k, v, dropout_p=p).flatten()
    n = out.numel()
    row_var = p / (lk * (1 - p))
    assert abs(float(out.mean()) - 1.0) < 5 * math.sqrt(row_var / n)
    assert 0.85 < float(out.var()) / row_var < 1.15
    # Rows of different heads and batches are not copies of one another
    rows = out.reshape(4, lq)
    assert not torch.equal(rows[0], rows[1]) and not torch.equal(rows[0], rows[2])
    assert torch.equal(DF.scaled_dot_product_attention(q, k, v, dropout_p=1.0),
                       torch.zeros(2, 2, lq, 1))


def test_key_and_value_of_different_lengths_raise():
    # torch 2.13's CPU kernel does not check this for batched inputs (and reads past value).
    q, k = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 6, 8)
    with pytest.raises(RuntimeError, match="value"):
        DF.scaled_dot_product_attention(q, k, torch.randn(2, 2, 4, 8))


def test_arguments_torch_leaves_unchecked_raise():
    q = torch.randn(2, 2, 5, 8)
    with pytest.raises(RuntimeError, match="dropout"):
        DF.scaled_dot_product_attention(q, q, q, dropout_p=-0.5)
    with pytest.raises(RuntimeError, match="mask"):
        DF.masked_softmax(torch.randn(3, 4), torch.ones(2, 3, 4, dtype=torch.bool))


def test_inputs_not_modified_and_outputs_fully_written(monkeypatch):
    # conftest poisons outputs with NaN: any element the kernels skip would show here.
    gen = torch.Generator().manual_seed(10)
    q, k, v = sdpa_inputs((2, 2, 2, 130, 200, 16, 16), torch.float32, gen)
    mask = make_mask("bool key padding", 2, 2, 130, 200, torch.float32, gen)
    before = [t.clone() for t in (q, k, v, mask)]
    out = DF.scaled_dot_product_attention(q, k, v, mask)
    assert not torch.isnan(out).any()
    for t, b in zip((q, k, v, mask), before):
        assert torch.equal(t, b)


def test_threads_calling_at_once():
    gen = torch.Generator().manual_seed(11)
    inputs = [sdpa_inputs((2, 2, 2, 70, 90, 16, 16), torch.float32, gen) for _ in range(4)]
    refs = [F.scaled_dot_product_attention(*(t.double() for t in qkv), is_causal=True)
            for qkv in inputs]
    errors = []

    def work(i):
        try:
            for _ in range(3):
                assert_close(DF.scaled_dot_product_attention(*inputs[i], is_causal=True), refs[i], 200)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_fallback_is_counted_or_strict(monkeypatch):
    q = torch.randn(1, 2, 3, 4, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="DLKERN_STRICT"):
        DF.scaled_dot_product_attention(q, q, q)
    monkeypatch.setenv("DLKERN_STRICT", "0")
    dlkern.reset_stats()
    out = DF.scaled_dot_product_attention(q, q, q)
    assert out.dtype == torch.float16
    assert dlkern.stats()["fallbacks"].get("attention") == 1
    DF.masked_softmax(q, None)
    assert dlkern.stats()["fallbacks"].get("masked_softmax") == 1


def test_custom_ops_registered():
    for name in ("attention", "attention_backward", "masked_softmax", "masked_softmax_backward"):
        assert hasattr(torch.ops.dlkern, name)
    q = torch.randn(1, 2, 3, 4, device="meta")
    out, stats = torch.ops.dlkern.attention(q, q, q, None, False, 0.5, 0.0, 0)
    assert out.shape == (1, 2, 3, 4) and stats.shape == (1, 2, 2, 3)


def test_memory_is_linear_in_length():
    # L = 8192, D = 64: the score matrix would be 256 MiB; q, k, v and out are 2 MiB each.
    code = """
import resource, torch, dlkern.functional as DF
small = torch.randn(1, 1, 300, 64)
DF.scaled_dot_product_attention(small, small, small, is_causal=True)  # compile / load first
q, k, v = (torch.randn(1, 1, 8192, 64) for _ in range(3))
mask = torch.ones(1, 1, 1, 8192, dtype=torch.bool)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
DF.scaled_dot_product_attention(q, k, v)
DF.scaled_dot_product_attention(q, k, v, mask)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("GROWTH_KIB", after - before)
"""
    rc, output = run_isolated(code)
    assert rc == 0, output[-2000:]
    growth = int(output.split("GROWTH_KIB")[1].split()[0])
    assert growth < 24 * 1024, f"peak RSS grew by {growth} KiB"


# ---------------------------------------------------------------------------------------------
# masked_softmax

def softmax_reference(x, mask, dim):
    """torch masked_fill + softmax, with fully masked slices set to 0 (differentiable)."""
    if mask is None:
        return torch.softmax(x, dim)
    mask = mask.expand(x.shape)
    keep_any = mask.any(dim, keepdim=True)
    scores = x.masked_fill(~mask, float("-inf")).masked_fill(~keep_any, 0.0)
    return torch.softmax(scores, dim) * mask


SOFTMAX_CASES = [
    ((4, 5, 37), (4, 1, 37), -1),
    ((4, 5, 37), (37,), -1),
    ((3, 8, 6), (3, 8, 1), 1),
    ((6, 9), None, 0),
    ((2, 3, 4, 515), (2, 1, 1, 515), -1),
    ((7,), (7,), 0),
    ((2, 3, 4, 5), (1, 3, 4, 5), 2),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
@pytest.mark.parametrize("case", SOFTMAX_CASES, ids=_id)
def test_masked_softmax(case, layout, dtype):
    shape, mask_shape, dim = case
    gen = torch.Generator().manual_seed(len(shape) * 7 + shape[-1])
    x = make_tensor(shape, dtype, layout, generator=gen)
    mask = None
    if mask_shape is not None:
        mask = torch.rand(mask_shape, generator=gen) < 0.6
        mask.view(-1)[:3] = False  # fully masks a slice in most shapes
    n = shape[dim]
    out = check_against_torch(lambda x: DF.masked_softmax(x, mask, dim),
                              lambda x: softmax_reference(x, mask, dim), [x],
                              {"output": n, 0: n})
    assert not torch.isnan(out).any()


def test_masked_softmax_fully_masked_slice_is_zero_and_empty():
    x = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([True, False, True, True]).expand(3, 4).clone()
    mask[1] = False
    out = DF.masked_softmax(x, mask)
    assert torch.equal(out[1], torch.zeros(4))
    out.sum().backward()
    assert not torch.isnan(x.grad).any()
    assert DF.masked_softmax(torch.randn(0, 5), None).shape == (0, 5)


def test_masked_softmax_gradcheck():
    x = make_tensor((3, 4, 6), torch.float64, requires_grad=True)
    mask = torch.rand(3, 1, 6) < 0.6
    assert torch.autograd.gradcheck(lambda x: DF.masked_softmax(x, mask, -1), [x])
    assert torch.autograd.gradcheck(lambda x: DF.masked_softmax(x, None, 1), [x])


# ---------------------------------------------------------------------------------------------
# MultiheadAttention

MHA_CONFIGS = [
    dict(bias=True),
    dict(bias=False, batch_first=True),
    dict(add_bias_kv=True, add_zero_attn=True),
    dict(kdim=12, vdim=10, batch_first=True),
    dict(add_zero_attn=True, kdim=12, vdim=12),
]
MHA_CALLS = [
    dict(),
    dict(key_padding_mask="bool", need_weights=False),
    dict(key_padding_mask="float", attn_mask="2d", average_attn_weights=False),
    dict(attn_mask="3d", need_weights=False),
    dict(attn_mask="2d bool", key_padding_mask="bool"),
    dict(attn_mask="causal", is_causal=True, need_weights=False),
]


def _mha_call_args(call, n, heads, lq, lk, gen, batched=True):
    kw = dict(call)
    if kw.get("key_padding_mask") == "bool":
        lengths = torch.randint(1, lk + 1, (n,), generator=gen)
        kw["key_padding_mask"] = torch.arange(lk) >= lengths[:, None]
    elif kw.get("key_padding_mask") == "float":
        kw["key_padding_mask"] = make_tensor((n, lk), torch.float64, generator=gen)
    mask = kw.get("attn_mask")
    if mask == "2d":
        kw["attn_mask"] = make_tensor((lq, lk), torch.float64, generator=gen)
    elif mask == "3d":
        kw["attn_mask"] = make_tensor((n * heads, lq, lk), torch.float64, generator=gen)
    elif mask == "2d bool":
        kw["attn_mask"] = torch.rand(lq, lk, generator=gen) < 0.2
        kw["attn_mask"][:, 0] = False  # no fully masked row: torch's need_weights path gives NaN
    elif mask == "causal":
        kw["attn_mask"] = torch.triu(torch.full((lq, lk), float("-inf"), dtype=torch.float64), 1)
    if not batched and "key_padding_mask" in kw:
        kw["key_padding_mask"] = kw["key_padding_mask"][0]
    return kw


@pytest.mark.parametrize("call", MHA_CALLS, ids=_id)
@pytest.mark.parametrize("config", MHA_CONFIGS, ids=_id)
def test_multihead_attention_matches_torch(config, call):
    gen = torch.Generator().manual_seed(12)
    e, heads, n, lq, lk = 16, 4, 3, 6, 6 if call.get("attn_mask") == "causal" else 9
    torch.manual_seed(0)
    ref_module = torch.nn.MultiheadAttention(e, heads, **config).double()
    module = dnn.MultiheadAttention(e, heads, **config).double()
    module.load_state_dict(ref_module.state_dict())
    assert list(module.state_dict()) == list(ref_module.state_dict())
    bf = config.get("batch_first", False)
    kdim, vdim = config.get("kdim", e), config.get("vdim", e)
    shape = lambda length, width: (n, length, width) if bf else (length, n, width)  # noqa: E731
    q = make_tensor(shape(lq, e), torch.float64, generator=gen, requires_grad=True)
    k = make_tensor(shape(lk, kdim), torch.float64, generator=gen, requires_grad=True)
    v = make_tensor(shape(lk, vdim), torch.float64, generator=gen, requires_grad=True)
    kw = _mha_call_args(call, n, heads, lq, lk, gen)
    out, weights = module(q, k, v, **kw)
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref_out, ref_weights = ref_module(qr, kr, vr, **kw)
    assert_close(out, ref_out, 64)
    if ref_weights is None:
        assert weights is None
    else:
        assert_close(weights, ref_weights, 64, "attention weights")
    grad = make_tensor(tuple(out.shape), torch.float64, generator=gen)
    out.backward(grad)
    ref_out.backward(grad)
    for a, b in zip((q, k, v), (qr, kr, vr)):
        assert_close(a.grad, b.grad, 64, "input gradient")
    for (name, p), pr in zip(module.named_parameters(), ref_module.parameters()):
        assert_close(p.grad, pr.grad, 64, f"gradient of {name}")


def test_multihead_attention_self_attention_unbatched_and_float32():
    gen = torch.Generator().manual_seed(13)
    ref_module = torch.nn.MultiheadAttention(32, 8, batch_first=True)
    module = dnn.MultiheadAttention(32, 8, batch_first=True)
    module.load_state_dict(ref_module.state_dict())
    x = make_tensor((2, 40, 32), torch.float32, generator=gen)
    kpm = torch.arange(40) >= torch.tensor([25, 40])[:, None]
    for kwargs in (dict(key_padding_mask=kpm, need_weights=False), dict()):
        out, _ = module(x, x, x, **kwargs)
        with torch.no_grad():
            ref_module.double()
            ref, _ = ref_module(x.double(), x.double(), x.double(), **kwargs)
            ref_module.float()
        assert_close(out, ref, 64)
    xu = x[0]
    out, w = module(xu, xu, xu, key_padding_mask=kpm[0])
    ref, rw = ref_module(xu, xu, xu, key_padding_mask=kpm[0])
    assert out.shape == ref.shape and w.shape == rw.shape
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(w, rw, atol=1e-5)


def test_multihead_attention_dropout_in_training_only():
    module = dnn.MultiheadAttention(16, 4, dropout=0.5, batch_first=True)
    x = torch.randn(2, 30, 16)
    module.train()
    torch.manual_seed(1)
    a, _ = module(x, x, x, need_weights=False)
    torch.manual_seed(1)
    b, _ = module(x, x, x, need_weights=False)
    c, _ = module(x, x, x, need_weights=False)
    assert torch.equal(a, b) and not torch.equal(a, c)
    module.eval()
    ref = torch.nn.MultiheadAttention(16, 4, dropout=0.5, batch_first=True)
    ref.load_state_dict(module.state_dict())
    ref.eval()
    with torch.no_grad():
        assert torch.allclose(module(x, x, x)[0], ref(x, x, x)[0], atol=1e-5)


def test_large_logits_and_nan_propagate_as_torch():
    gen = torch.Generator().manual_seed(14)
    q, k, v = sdpa_inputs((1, 2, 2, 70, 90, 16, 16), torch.float32, gen)
    run_sdpa(q * 40, k, v)  # scores of several hundred: the running max must keep exp finite
    q2, k2 = q.clone(), k.clone()
    q2[0, 0, 3, 1] = float("nan")
    k2[0, 1, 5, 0] = float("nan")
    out = DF.scaled_dot_product_attention(q2, k2, v)
    ref = F.scaled_dot_product_attention(q2.double(), k2.double(), v.double())
    assert torch.equal(out.isnan(), ref.isnan())
    x = make_tensor((4, 9), torch.float32, generator=gen)
    x[1, 2] = float("nan")  # kept: NaN row, as torch
    x[2, 3] = float("nan")  # masked: ignored
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[2, 3] = False
    y = DF.masked_softmax(x, mask)
    assert y[1].isnan().all() and not y[[0, 2, 3]].isnan().any()


# ---------------------------------------------------------------------------------------------
# fidelity: saturated softmax, NaN rows, empty batches, the patched encoder, causal variants

def _opinfo_samples(gen):
    """torch's OpInfo samples of scaled_dot_product_attention without dropout: inputs in
    [-9, 9], Lq = 3 < Lk = 6, 3-d and 4-d, causal or not, a float mask."""
    def make(*shape):
        return torch.rand(shape, generator=gen) * 18 - 9
    q3, kv3, q4, kv4 = (4, 3, 8), (4, 6, 8), (4, 4, 3, 8), (4, 4, 6, 8)
    for qs, kvs in ((q3, kv3), (q4, kv4), ((4, 3, 8), kv4)):
        for causal in (True, False):
            yield (make(*qs), make(*kvs), make(*kvs)), dict(is_causal=causal)
    yield (make(*q4), make(*kv4), make(*kv4)), dict(attn_mask=make(3, 6))


def _errors(fn, args, kwargs, grad, refs):
    tensors = [a.clone().requires_grad_() for a in args]
    out = fn(*tensors, **kwargs)
    out.backward(grad)
    return [float((x.detach().double() - r.detach()).abs().max()) for x, r in
            zip([out] + [t.grad for t in tensors], refs)]


def test_saturated_softmax_float32_error_matches_torch():
    # Scores of several hundred saturate the softmax; the query gradient used to carry ~1000x
    # torch's float32 error (delta = dO . O rounded differently from dP at the winning key).
    gen = torch.Generator().manual_seed(15)
    totals = {}
    for seed in range(3):
        for n, (args, kwargs) in enumerate(_opinfo_samples(gen)):
            ref_args = [a.double().requires_grad_() for a in args]
            ref_kwargs = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
            ref = F.scaled_dot_product_attention(*ref_args, **ref_kwargs)
            grad = torch.rand(ref.shape, generator=gen) * 18 - 9
            ref.backward(grad.double())
            refs = [ref] + [a.grad for a in ref_args]
            mine = _errors(DF.scaled_dot_product_attention, args, kwargs, grad, refs)
            theirs = _errors(F.scaled_dot_product_attention, args, kwargs, grad, refs)
            for what, a, b in zip(("output", "dq", "dk", "dv"), mine, theirs):
                t = totals.setdefault((n, what), [0.0, 0.0])
                t[0] += a
                t[1] += b
            if kwargs.get("is_causal"):
                # query 0 sees key 0 alone: P = 1 there, its gradient is exactly 0 (as torch's)
                q = args[0].clone().requires_grad_()
                DF.scaled_dot_product_attention(q, *args[1:], **kwargs).backward(grad)
                assert torch.equal(q.grad[..., 0, :], torch.zeros_like(q.grad[..., 0, :])), n
    for (n, what), (mine, theirs) in totals.items():
        assert mine <= 2 * theirs + 1e-7, f"sample {n} {what}: error {mine:.3g}, torch {theirs:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_nan_in_query_gives_torchs_nan_rows(dtype):
    # torch's CPU flash kernel (4-d, one head dim, no mask) reduces key blocks shorter than one
    # SIMD vector with a max that skips NaN: an all-NaN row is then "fully masked" (zeros).
    gen = torch.Generator().manual_seed(16)
    for lk in (1, 5, 7, 8, 15, 16, 17, 70):
        for kwargs in (dict(), dict(is_causal=True), dict(attn_mask="keys"), dict(rank=3)):
            kwargs = dict(kwargs)
            rank = kwargs.pop("rank", 4)
            q, k, v = (make_tensor((2, 2, n, 8), dtype, generator=gen) for n in (6, lk, lk))
            q[0, 1, 2, 3] = float("nan")
            k[1, 0, lk - 1, 0] = float("nan")
            if kwargs.get("attn_mask") == "keys":
                kwargs["attn_mask"] = torch.rand(2, 1, 1, lk, generator=gen) < 0.8
            if rank == 3:
                q, k, v = (t[0] for t in (q, k, v))
            out = DF.scaled_dot_product_attention(q, k, v, **kwargs)
            ref = F.scaled_dot_product_attention(q, k, v, **kwargs)
            assert torch.equal(out.isnan(), ref.isnan()), (lk, kwargs, rank)


def test_multihead_attention_empty_batch():
    for batch_first in (False, True):
        ref = torch.nn.MultiheadAttention(16, 4, batch_first=batch_first)
        module = dnn.MultiheadAttention(16, 4, batch_first=batch_first)
        module.load_state_dict(ref.state_dict())
        x = torch.randn((0, 5, 16) if batch_first else (5, 0, 16), requires_grad=True)
        for kwargs in (dict(), dict(need_weights=False),
                       dict(key_padding_mask=torch.zeros(0, 5, dtype=torch.bool))):
            out, weights = module(x, x, x, **kwargs)
            expected, expected_weights = ref(x, x, x, **kwargs)
            assert out.shape == expected.shape
            assert (weights is None) == (expected_weights is None)
            if weights is not None:
                assert weights.shape == expected_weights.shape
            out.sum().backward()
            assert x.grad.shape == x.shape


@pytest.mark.parametrize("norm", [False, True])
def test_patched_encoder_fast_path_key_padding(norm):
    # torch's eval fast path runs a padded batch as a nested tensor: zeros at padded positions
    torch.manual_seed(17)
    layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, 2, norm=torch.nn.LayerNorm(16) if norm else None,
                                          enable_nested_tensor=True).eval()
    patched = dlkern.patch(copy.deepcopy(encoder))
    x = torch.randn(3, 8, 16)
    for padding in (torch.arange(8) >= torch.tensor([8, 5, 2])[:, None],
                    torch.zeros(3, 8).masked_fill(torch.arange(8) >= 6, float("-inf"))):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = encoder(x, src_key_padding_mask=padding)
            out = patched(x, src_key_padding_mask=padding)
        assert_close(out, expected.double(), 64)
    # in training mode (no fast path) the padded positions are computed, as torch does
    encoder.train()
    patched.train()
    torch.manual_seed(0)
    expected = encoder(x, src_key_padding_mask=padding)
    torch.manual_seed(0)
    assert_close(patched(x, src_key_padding_mask=padding), expected.double(), 64)


@pytest.mark.parametrize("lq, lk", [(5, 70), (70, 70), (90, 20)])
def test_causal_bias_variants(lq, lk):
    from torch.nn.attention.bias import causal_lower_right, causal_upper_left
    gen = torch.Generator().manual_seed(18)
    q, k, v = sdpa_inputs((2, 2, 2, lq, lk, 16, 16), torch.float64, gen)
    red = lq + lk + 16
    for bias in (causal_upper_left(lq, lk), causal_lower_right(lq, lk)):
        check_against_torch(lambda q, k, v: DF.scaled_dot_product_attention(q, k, v, bias),
                            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, bias),
                            [q, k, v], {"output": red, 0: red, 1: red, 2: red})


@pytest.mark.parametrize("mask_kind", ["none", "bool key padding", "float per head", "causal"])
def test_decode_step_grouped_query_heads(mask_kind):
    # one query per head with GQA runs the group's heads as queries of their key/value head
    from torch.nn.attention.bias import causal_lower_right
    gen = torch.Generator().manual_seed(19)
    q, k, v = sdpa_inputs((2, 8, 2, 1, 150, 32, 32), torch.float32, gen)
    if mask_kind == "causal":
        mask = causal_lower_right(1, 150)
        check_against_torch(
            lambda q, k, v: DF.scaled_dot_product_attention(q, k, v, mask, enable_gqa=True),
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask, enable_gqa=True),
            [q, k, v], {"output": 200, 0: 200, 1: 200, 2: 200})
        return
    mask = make_mask(mask_kind, 2, 8, 1, 150, torch.float32, gen)
    run_sdpa(q, k, v, mask, enable_gqa=True)


def test_mask_table_on_every_thread(monkeypatch):
    # large masks get their block table in a parallel pass: the same table as the serial one
    from dlkern.ops import attention as ops
    gen = torch.Generator().manual_seed(20)
    lk = 3 * kernels.SKIP_K + 5
    mask = torch.rand(2, 3, 150, lk, generator=gen) < 0.5
    mask[:, :, :70, kernels.SKIP_K:] = False  # hidden blocks
    mask[:, :, 70:, :kernels.SKIP_K] = True   # visible blocks
    serial = ops._mask_table(mask, 150, lk, 64)
    monkeypatch.setattr(ops, "_PARALLEL_MASK_ELEMENTS", 0)
    parallel = ops._mask_table(mask, 150, lk, 64)
    for a, b in zip(serial, parallel):
        assert torch.equal(a, b)
    assert {int(x) for x in serial[0].unique()} == {kernels.HIDDEN, kernels.VISIBLE,
                                                    kernels.PARTIAL}
    q, k, v = sdpa_inputs((2, 3, 3, 150, lk, 16, 16), torch.float32, gen)
    run_sdpa(q, k, v, mask)
