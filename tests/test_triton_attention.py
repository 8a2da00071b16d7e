"""dlkern's Triton attention kernels (scaled_dot_product_attention, masked_softmax,
MultiheadAttention) against torch in float64: forward and every gradient. On a machine without a
GPU they run through Triton's interpreter on CPU tensors (tiny shapes: the interpreter is slow),
and every kernel is also compiled for an H100 (sm_90) with every autotune configuration."""
import math
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlkern.functional as DF
import dlkern.nn as dnn
from helpers import TRITON_DTYPES, assert_close, check_against_torch, make_tensor, run_isolated


def _id(v):
    return str(v).replace("torch.", "").replace(" ", "")


# (batch, heads_q, heads_kv, Lq, Lk, D, Dv): several blocks of the interpreter's tiles (32 x 16
# forward), odd lengths, Lq < Lk and Lq > Lk, GQA, head dims 8-64 that are not all powers of two
SHAPES = [
    (2, 2, 2, 20, 33, 16, 16),
    (1, 4, 2, 37, 19, 24, 24),
    (1, 2, 1, 9, 40, 64, 32),
]

MASKS = {
    "none": None,
    "bool full": lambda b, h, lq, lk: (b, h, lq, lk),
    "bool key padding": lambda b, h, lq, lk: (b, 1, 1, lk),
    "float 2-d": lambda b, h, lq, lk: (lq, lk),
    "float per head": lambda b, h, lq, lk: (1, h, 1, lk),
    "float rows": lambda b, h, lq, lk: (lq, 1),
}


def make_mask(kind, b, h, lq, lk, dtype, gen):
    """A bool (True = attend) or additive float mask with fully masked rows or whole blocks."""
    if MASKS[kind] is None:
        return None
    shape = MASKS[kind](b, h, lq, lk)
    if kind == "bool key padding":
        lengths = torch.randint(0, lk + 1, (b,), generator=gen)
        lengths[0] = 0  # one batch fully masked: zeros, zero gradients
        return (torch.arange(lk) < lengths[:, None])[:, None, None, :]
    if kind.startswith("bool"):
        mask = torch.rand(shape, generator=gen) < 0.7
        if shape[-2] > 2:
            mask[..., 1, :] = False
        mask[..., 16:32] = False  # a whole key block hidden: skipped
        return mask
    mask = make_tensor(shape, dtype, generator=gen)
    if shape[-1] > 3:
        mask = mask.masked_fill(torch.rand(shape, generator=gen) < 0.2, float("-inf"))
    if shape[-2] > 2 and shape[-1] > 3:
        mask[..., 2, :] = float("-inf")
    return mask


def sdpa_inputs(shape, dtype, device, gen, layout="contiguous"):
    b, hq, hk, lq, lk, d, dv = shape
    if layout == "transposed":  # (B, L, H, D) memory viewed as (B, H, L, D)
        def make(h, n, e):
            return make_tensor((b, n, h, e), torch.float64, generator=gen).transpose(1, 2)
    else:
        def make(h, n, e):
            return make_tensor((b, h, n, e), torch.float64, generator=gen)
    return tuple(t.to(device=device, dtype=dtype) for t in (make(hq, lq, d), make(hk, lk, d),
                                                            make(hk, lk, dv)))


def run_sdpa(q, k, v, mask=None, **kwargs):
    """Output and gradients of q, k, v (and of a float mask) against torch in float64."""
    float_mask = mask is not None and mask.is_floating_point()
    tensors = [q, k, v] + ([mask] if float_mask else [])
    bool_mask = mask if not float_mask else None
    red = q.shape[-2] + k.shape[-2] + q.shape[-1]

    def dl(q, k, v, m=bool_mask):
        return DF.scaled_dot_product_attention(q, k, v, m, **kwargs)

    def ref(q, k, v, m=bool_mask):
        return F.scaled_dot_product_attention(q, k, v, m, **kwargs)

    return check_against_torch(dl, ref, tensors, {"output": red, 0: red, 1: red, 2: red, 3: red})


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=_id)
@pytest.mark.parametrize("mask_kind", list(MASKS), ids=_id)
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_sdpa_masks(shape, mask_kind, dtype, triton_device):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, mask_kind)).encode()))
    q, k, v = sdpa_inputs(shape, dtype, triton_device, gen)
    b, hq, _, lq, lk = shape[:5]
    mask = make_mask(mask_kind, b, hq, lq, lk, dtype, gen)
    mask = None if mask is None else mask.to(triton_device)
    run_sdpa(q, k, v, mask, enable_gqa=shape[1] != shape[2])


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=_id)
@pytest.mark.parametrize("shape", SHAPES + [(2, 3, 1, 40, 11, 16, 24)], ids=_id)
def test_sdpa_causal(shape, dtype, triton_device):
    gen = torch.Generator().manual_seed(1)
    q, k, v = sdpa_inputs(shape, dtype, triton_device, gen)
    run_sdpa(q, k, v, is_causal=True, enable_gqa=shape[1] != shape[2])


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=_id)
def test_sdpa_strided_inputs_scale_and_masked_causal(dtype, triton_device):
    gen = torch.Generator().manual_seed(3)
    q, k, v = sdpa_inputs((2, 4, 2, 21, 30, 8, 16), dtype, triton_device, gen, "transposed")
    assert not q.is_contiguous()
    run_sdpa(q, k, v, is_causal=True, enable_gqa=True, scale=0.3)
    mask = make_mask("float per head", 2, 4, 21, 30, dtype, gen).to(triton_device)
    run_sdpa(q, k, v, mask, enable_gqa=True, scale=1.7)
    # one query row (Lq = 1) with a full mask: the mask is read as a row of keys
    q1 = q[:, :, :1]
    run_sdpa(q1, k, v, make_mask("bool full", 2, 4, 1, 30, dtype, gen).to(triton_device),
             enable_gqa=True)


def test_sdpa_fully_masked_rows_are_zero_with_zero_gradients(triton_device):
    gen = torch.Generator().manual_seed(6)
    q, k, v = sdpa_inputs((1, 2, 2, 5, 36, 16, 16), torch.float32, triton_device, gen)
    mask = torch.ones(5, 36, dtype=torch.bool)
    mask[3] = False
    out = run_sdpa(q, k, v, mask.to(triton_device))
    assert torch.equal(out[:, :, 3], torch.zeros_like(out[:, :, 3]))
    q.requires_grad_()
    DF.scaled_dot_product_attention(q, k, v, mask.to(triton_device)).sum().backward()
    assert torch.equal(q.grad[:, :, 3], torch.zeros_like(q.grad[:, :, 3]))


def _dropout_reference(q, k, v, keep, p):
    """softmax(q k^T / sqrt(d)) times dlkern's keep mask / (1 - p), then @ v, in float64."""
    b, h, lq, d = q.shape
    factor = (keep != 0).to(torch.float64).reshape(b, h, lq, -1) / (1 - p)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), -1)
    return (weights * factor) @ v


def _keep_mask(seed, rows, lk, p, device):
    from dlkern.kernels.triton import attention as kernels
    out = torch.empty((rows, lk), dtype=torch.float32, device=device)
    kernels.dropout_keep(seed, rows, lk, p, out)
    return out.cpu()


def test_dropout_forward_and_backward_share_one_mask(triton_device):
    gen = torch.Generator().manual_seed(9)
    shape = (2, 2, 2, 20, 35, 16, 8)
    q, k, v = sdpa_inputs(shape, torch.float32, triton_device, gen)
    p = 0.3
    torch.manual_seed(123)
    seed = int(torch.randint(0, 2 ** 62, (1,), dtype=torch.int64).item())
    keep = _keep_mask(seed, 2 * 2 * 20, 35, p, triton_device)
    assert 0.5 < float((keep == 0).double().mean()) / p < 1.5
    tensors = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    refs = [t.detach().cpu().double().requires_grad_() for t in tensors]
    torch.manual_seed(123)
    out = DF.scaled_dot_product_attention(*tensors, dropout_p=p)
    ref = _dropout_reference(*refs, keep, p)
    assert_close(out.cpu(), ref, 60)
    grad = make_tensor(tuple(out.shape), torch.float64, generator=gen)
    out.backward(grad.to(out))
    ref.backward(grad)
    for t, r in zip(tensors, refs):
        assert_close(t.grad.cpu(), r.grad, 60, "dropout gradient")
    torch.manual_seed(123)
    again = DF.scaled_dot_product_attention(q, k, v, dropout_p=p)
    assert torch.equal(again, out.detach())
    other = DF.scaled_dot_product_attention(q, k, v, dropout_p=p)
    assert not torch.equal(other, out.detach())
    # p = 0 is no dropout at all, bit for bit
    assert torch.equal(DF.scaled_dot_product_attention(q, k, v, dropout_p=0.0),
                       DF.scaled_dot_product_attention(q, k, v))


def test_dropout_statistics(triton_device):
    # q = k = 0: every weight is 1/Lk, so out[i] = (kept keys of row i) / (Lk (1 - p)) with v = 1.
    p, lq, lk = 0.25, 160, 64
    q = torch.zeros(2, 2, lq, 16, device=triton_device)
    k = torch.zeros(2, 2, lk, 16, device=triton_device)
    v = torch.ones(2, 2, lk, 16, device=triton_device)
    out = DF.scaled_dot_product_attention(q, k, v, dropout_p=p)[..., 0].flatten().double().cpu()
    n = out.numel()
    row_var = p / (lk * (1 - p))
    assert abs(float(out.mean()) - 1.0) < 5 * math.sqrt(row_var / n)
    assert 0.8 < float(out.var()) / row_var < 1.2
    rows = out.reshape(4, lq)
    assert not torch.equal(rows[0], rows[1]) and not torch.equal(rows[0], rows[2])
    none = DF.scaled_dot_product_attention(q, k, v, dropout_p=1.0)
    assert torch.equal(none, torch.zeros_like(none))


def _max_errors(fn, args, kwargs, grad, refs):
    """Max errors of the output and the gradients of args, and the query gradient."""
    tensors = [a.clone().requires_grad_() for a in args]
    out = fn(*tensors, **kwargs)
    out.backward(grad)
    return [float((x.detach().cpu().double() - r).abs().max())
            for x, r in zip([out] + [t.grad for t in tensors], refs)], tensors[0].grad


def _plain_float32_error(args, causal, ref):
    q, k, v = (a.numpy() for a in args)
    s = np.matmul(q, k.transpose(0, 1, 3, 2)) * np.float32(1 / math.sqrt(q.shape[-1]))
    if causal:
        s = np.where(np.triu(np.ones(s.shape[-2:], bool), 1), np.float32(-np.inf), s)
    p = np.exp(s - s.max(-1, keepdims=True))
    out = np.matmul(p, v) * (np.float32(1) / p.sum(-1, keepdims=True))
    return float(np.abs(out - ref.numpy()).max())


def test_saturated_softmax_float32_error_matches_torch(triton_device):
    # torch's OpInfo samples: inputs in [-9, 9] saturate the softmax, Lq = 3 < Lk = 6. The query
    # gradient used to carry ~1000x torch's float32 error (delta = dO . O, rounded differently
    # from dP at the winning key; lse rounded to float32 at |m| ~ 200).
    gen = torch.Generator().manual_seed(15)
    totals = {}
    causal = True  # the case (non-causal samples: test_attention.py, on the CPU)
    for draw in range(2):
        args = [torch.rand(shape, generator=gen) * 18 - 9
                for shape in ((4, 4, 3, 8), (4, 4, 6, 8), (4, 4, 6, 8))]
        grad = torch.rand(4, 4, 3, 8, generator=gen) * 18 - 9
        refs_in = [a.double().requires_grad_() for a in args]
        ref = F.scaled_dot_product_attention(*refs_in, is_causal=causal)
        ref.backward(grad.double())
        refs = [ref.detach()] + [a.grad for a in refs_in]
        device_args = [a.to(triton_device) for a in args]
        mine, grad_q = _max_errors(DF.scaled_dot_product_attention, device_args,
                                   dict(is_causal=causal), grad.to(triton_device), refs)
        theirs, _ = _max_errors(F.scaled_dot_product_attention, args, dict(is_causal=causal),
                                grad, refs)
        if triton_device == "cpu":
            # the interpreter's tl.dot is NumPy's matmul, which rounds every product (no
            # FMA): the output's floor is that of plain float32 attention computed so
            theirs[0] = max(theirs[0], _plain_float32_error(args, causal, refs[0]))
        for what, a, b in zip(("output", "dq", "dk", "dv"), mine, theirs):
            t = totals.setdefault(what, [0.0, 0.0])
            t[0] += a
            t[1] += b
        # query 0 sees key 0 alone: P = 1, its gradient is exactly 0
        assert torch.equal(grad_q[..., 0, :].cpu(), torch.zeros(4, 4, 8))
    for key, (mine, theirs) in totals.items():
        assert mine <= 2 * theirs + 1e-7, f"{key}: error {mine:.3g}, torch {theirs:.3g}"


def test_nan_in_query_and_causal_variants(triton_device):
    from torch.nn.attention.bias import causal_lower_right
    gen = torch.Generator().manual_seed(16)
    for lk in (5, 20):
        q, k, v = (make_tensor((1, 2, n, 16), torch.float32, generator=gen) for n in (6, lk, lk))
        q[0, 1, 2, 3] = float("nan")
        for kwargs in (dict(), dict(is_causal=True)):
            out = DF.scaled_dot_product_attention(*(t.to(triton_device) for t in (q, k, v)),
                                                  **kwargs)
            ref = F.scaled_dot_product_attention(q, k, v, **kwargs)
            if triton_device == "cpu":  # torch's CPU rule (CUDA's kernels have their own)
                assert torch.equal(out.isnan().cpu(), ref.isnan()), (lk, kwargs)
    q, k, v = sdpa_inputs((1, 2, 2, 9, 40, 16, 16), torch.float32, triton_device, gen)
    bias = causal_lower_right(9, 40)
    red = 9 + 40 + 16
    check_against_torch(lambda q, k, v: DF.scaled_dot_product_attention(q, k, v, bias),
                        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, bias),
                        [q, k, v], {"output": red, 0: red, 1: red, 2: red})


def test_backward_delta_from_output(triton_device):
    # 16-bit inputs take delta = rowsum(dO * O) from the preprocess kernel; forced here on
    # float32, both ways give the same gradients
    from dlkern.kernels.triton import attention, attention_backward
    gen = torch.Generator().manual_seed(21)
    q, k, v = sdpa_inputs((1, 2, 2, 20, 33, 16, 16), torch.float32, triton_device, gen)
    mask = make_mask("float per head", 1, 2, 20, 33, torch.float32, gen).to(triton_device)
    mask = mask.expand(1, 2, 20, 33)
    out = torch.empty_like(q)
    stats = torch.empty(1, 2, 2, 20, device=triton_device)
    attention.attention_forward(q, k, v, mask, True, 0, 0.25, 0.0, 0, False, out, stats)
    grad = make_tensor((1, 2, 20, 16), torch.float32, generator=gen).to(triton_device)
    results = []
    for exact in (True, False):
        grads = [torch.empty_like(t) for t in (q, k, v)]
        attention_backward.attention_backward(grad, q, k, v, mask, out, stats, True, 0, 0.25, 0.0,
                                              0, *grads, exact_delta=exact)
        results.append(grads)
    for a, b in zip(*results):
        assert_close(a.cpu(), b.cpu().double(), 70)


# ---------------------------------------------------------------------------------------------
# masked softmax

def softmax_reference(x, mask, dim):
    if mask is None:
        return torch.softmax(x, dim)
    mask = mask.expand(x.shape)
    keep_any = mask.any(dim, keepdim=True)
    scores = x.masked_fill(~mask, float("-inf")).masked_fill(~keep_any, 0.0)
    return torch.softmax(scores, dim) * mask


SOFTMAX_CASES = [
    ((4, 5, 37), (4, 1, 37), -1),
    ((3, 8, 6), (3, 8, 1), 1),
    ((6, 9), None, 0),
    ((2, 3, 4, 5), (1, 3, 4, 5), 2),
    ((2, 5000), (5000,), -1),  # more than one 4096-wide chunk per row
]


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=_id)
@pytest.mark.parametrize("case", SOFTMAX_CASES, ids=_id)
def test_masked_softmax(case, dtype, triton_device):
    shape, mask_shape, dim = case
    gen = torch.Generator().manual_seed(len(shape) * 7 + shape[-1])
    x = make_tensor(shape, torch.float64, "noncontiguous", generator=gen).to(triton_device, dtype)
    mask = None
    if mask_shape is not None:
        mask = torch.rand(mask_shape, generator=gen) < 0.6
        mask.view(-1)[:3] = False
        mask = mask.to(triton_device)
    n = shape[dim]
    out = check_against_torch(lambda x: DF.masked_softmax(x, mask, dim),
                              lambda x: softmax_reference(x, mask, dim), [x],
                              {"output": n, 0: n})
    assert not torch.isnan(out).any()


# ---------------------------------------------------------------------------------------------
# MultiheadAttention

@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_key_padding_mask(need_weights, triton_device):
    gen = torch.Generator().manual_seed(12)
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(32, 2, batch_first=True).double()
    module = dnn.MultiheadAttention(32, 2, batch_first=True)
    module.load_state_dict(ref.state_dict())
    module.to(triton_device)
    x = make_tensor((2, 19, 32), torch.float64, generator=gen)
    padding = torch.arange(19) >= torch.tensor([19, 7])[:, None]  # True = padded
    xd = x.to(triton_device, torch.float32).requires_grad_()
    xr = x.clone().requires_grad_()
    out, weights = module(xd, xd, xd, key_padding_mask=padding.to(triton_device),
                          need_weights=need_weights)
    expected, expected_weights = ref(xr, xr, xr, key_padding_mask=padding,
                                     need_weights=need_weights)
    assert_close(out.cpu(), expected, 64)
    if need_weights:
        assert_close(weights.cpu(), expected_weights, 64, "weights")
    grad = make_tensor(tuple(out.shape), torch.float64, generator=gen)
    out.backward(grad.to(out))
    expected.backward(grad)
    assert_close(xd.grad.cpu(), xr.grad, 64, "input gradient")
    assert_close(module.in_proj_weight.grad.cpu(), ref.in_proj_weight.grad, 64,
                 "in_proj_weight gradient")


# ---------------------------------------------------------------------------------------------
# compiled for the GPU

_AOT_CODE = r"""
import os
os.environ.pop("TRITON_INTERPRET", None)
import sys
sys.path.insert(0, {tests!r})
import torch
import triton_aot
from dlkern.kernels.triton import attention as A
from dlkern.kernels.triton import attention_backward as B
from dlkern.kernels.triton import masked_softmax as S

def ptr(dtype):
    return torch.empty(1, dtype=dtype)

f32, bf16 = ptr(torch.float32), ptr(torch.bfloat16)
strides = [1 << 20, 1 << 14, 64, 1] * 3 + [4096, 0, 0, 1]
seed = (1 << 62) + 5
worst = {{}}

def compile_one(name, kernel, args, config, **constexprs):
    kernel.configs = [config]
    for k in triton_aot.compile_for_h100(kernel, args, **constexprs):
        assert k.metadata.shared <= triton_aot.H100_SHARED_BYTES, (name, config, k.metadata.shared)
        worst[name] = max(worst.get(name, 0), k.metadata.shared)

def widest(config):
    # the widest head a configuration is offered for (see _prune_attention): the most registers
    # and shared memory it will ever need
    return min(config.kwargs.get("MAX_HEAD", 256), 256)

for kernel, name in ((A.attention_forward_kernel, "forward"),
                     (B.attention_backward_dkdv_kernel, "dkdv"),
                     (B.attention_backward_dq_kernel, "dq")):
    all_configs = list(kernel.configs)
    # float32 sums delta from P dP in the dq kernel; 16-bit reads the preprocess kernel's
    extra = {{"GRAD_MASK": True, "EXACT_DELTA": True}} if name == "dq" else {{}}
    if name == "forward":
        extra = {{"NAN_MASKED": False}}
    # every configuration once, in float32 (the most shared memory), at the widest head it
    # serves, with a head dim that is not a power of two; the first one also in bfloat16
    for x, configs in ((f32, all_configs), (bf16, all_configs[:1])):
        if name == "forward":
            args = [x, x, x, x, x, f32] + strides + [32, 4, 4096, 4096, 0, 0.18, 0.1, 1.1, seed,
                                                     4096, 4096]
        else:
            args = [x, x, x, x, x, f32, f32, x, x] + strides + [8, 4, 4096, 4096, 0, 0.125,
                                                               0.1, 1.1, seed, 4096, 4096]
        for config in configs:
            width = widest(config)
            offered = A._prune_attention(all_configs, {{"BLOCK_D": width, "BLOCK_DV": width}})
            assert config in offered or config is all_configs[0]
            compile_one(name, kernel, args, config, CAUSAL=True, MASK_KIND=A.MASK_FULL.value,
                        DROPOUT=True, HEAD_D=width - 8, HEAD_DV=width, BLOCK_D=width,
                        BLOCK_DV=width, PRECISION="tf32" if x is f32 else "ieee", **extra)
    # float32 without tf32 (what gpu_check's float32 checks run), in the first configuration
    args32 = [f32 if a is bf16 else a for a in args]
    compile_one(name, kernel, args32, all_configs[0], CAUSAL=True, MASK_KIND=A.MASK_KEYS.value,
                DROPOUT=False, HEAD_D=56, HEAD_DV=64, BLOCK_D=64, BLOCK_DV=64, PRECISION="ieee",
                **extra)
    # the benchmarks' paths: float16, head 64 = its block (unmasked loads), not causal, no
    # dropout, a key-padding mask or (forward) none, in the first configuration a GPU tunes over
    x = ptr(torch.float16)
    args = [x if a is bf16 else a for a in args]  # the last loop's tensors were bfloat16
    config = A._prune_attention(all_configs, {{"BLOCK_D": 64, "BLOCK_DV": 64}})[0]
    if name == "dq":
        extra["EXACT_DELTA"] = False
    for mask_kind in ((A.MASK_NONE.value, A.MASK_KEYS.value) if name == "forward"
                      else (A.MASK_KEYS.value,)):
        compile_one(name, kernel, args, config, CAUSAL=False, MASK_KIND=mask_kind, DROPOUT=False,
                    HEAD_D=64, HEAD_DV=64, BLOCK_D=64, BLOCK_DV=64, PRECISION="ieee", **extra)
    kernel.configs = all_configs

u8, i64 = ptr(torch.uint8), ptr(torch.int64)
for x, configs in ((f32, S.masked_softmax_forward_kernel.configs),
                   (bf16, S.masked_softmax_forward_kernel.configs[:1])):
    all_configs = list(S.masked_softmax_forward_kernel.configs)
    for config in configs:
        compile_one("softmax", S.masked_softmax_forward_kernel, [x, u8, i64, x, 5000, 3], config,
                    HAS_MASK=True, BLOCK=4096)
        compile_one("softmax_backward", S.masked_softmax_backward_kernel, [x, x, x, 5000], config,
                    BLOCK=4096)
    S.masked_softmax_forward_kernel.configs = all_configs
    S.masked_softmax_backward_kernel.configs = all_configs
triton_aot.compile_for_h100(B.attention_backward_preprocess_kernel, [bf16, bf16, f32, 4096],
                            HEAD_DV=128, BLOCK_DV=128, BLOCK_R=64)
triton_aot.compile_for_h100(A.dropout_keep_kernel, [f32, seed, 0.1, 1.1, 4096, 1 << 20],
                            BLOCK=1024)
print("SHARED", worst)
"""


@pytest.mark.slow
def test_kernels_compile_for_h100():
    pytest.importorskip("triton", reason="Triton is not installed")
    import os
    code = _AOT_CODE.format(tests=os.path.dirname(os.path.abspath(__file__)))
    rc, output = run_isolated(code, timeout=600)
    assert rc == 0, output[-3000:]
    assert "SHARED" in output, output[-3000:]
