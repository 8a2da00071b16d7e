"""gpu_check section: scaled dot-product attention, masked softmax and MultiheadAttention.

check(ctx): forward and every gradient (q, k, v, an additive mask, the softmax input, the module's
input and projection weight) against torch on float64 copies, in float32, float16 and bfloat16, on
small shapes that cover every kernel path: causal with Lq != Lk, bool key padding, a float mask
(2-d, broadcast over batch and heads), GQA, head dims 64, 128 and 200, masked softmax over short
and long rows, MultiheadAttention with a key padding mask. The checks run each kernel with its
first autotune configuration only (tuning every small case would cost minutes of compiles); the
configurations the tuning picks are checked on the timed shapes themselves, against torch in
float32.
time(ctx): the issue's targets against torch's scaled_dot_product_attention, as torch picks its
backend (flash where it can, memory-efficient with a mask):

* float16 B4 H32 L4096 D64, no mask and causal, forward: >= 1.0x;
* float16 B4 H32 L4096 D128 causal, forward+backward: >= 0.9x;
* float16 B8 H16 L2048 D64 with a bool key-padding mask, forward: >= 1.5x;
* bfloat16 cross-attention B8 H16 Lq512 Lk4096 D64, forward: >= 1.0x.
Everything runs under DLKERN_STRICT=1, so a case that fell back to torch fails instead of timing
torch against itself.
"""
import contextlib

import torch
import torch.nn.functional as F

import dlkern.functional as DF
import dlkern.nn as dnn
from gpu_common import CHECK_DTYPES, device, strict


def _randn(shape, dtype, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device(), dtype)


def _key_padding(b, lk, seed, shortest):
    """bool (b, 1, 1, lk), True = attend: each batch keeps a random prefix of >= shortest keys."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    lengths = torch.randint(shortest, lk + 1, (b,), generator=g)
    return (torch.arange(lk) < lengths[:, None])[:, None, None, :].to(device())


# ---------------------------------------------------------------- checks

# (name, (B, Hq, Hk, Lq, Lk, D, Dv), keyword arguments, mask kind)
SDPA_CHECKS = [
    ("sdpa key padding GQA B3 Hq8 Hk2 L150 D64", (3, 8, 2, 150, 150, 64, 64),
     {"enable_gqa": True}, "key padding"),
    ("sdpa float mask B2 H4 Lq130 Lk97 D128", (2, 4, 4, 130, 97, 128, 128), {}, "float"),
    ("sdpa causal B1 H2 Lq90 Lk130 D200 scale 0.3", (1, 2, 2, 90, 130, 200, 200),
     {"is_causal": True, "scale": 0.3}, None),
]


def _sdpa_case(ctx, name, shape, kwargs, mask_kind, dtype):
    b, hq, hk, lq, lk, d, dv = shape
    base = [_randn((b, hq, lq, d), torch.float64, 1), _randn((b, hk, lk, d), torch.float64, 2),
            _randn((b, hk, lk, dv), torch.float64, 3)]
    mask = None
    if mask_kind == "key padding":
        mask = _key_padding(b, lk, 4, 1)
    elif mask_kind == "float":
        base.append(_randn((lq, lk), torch.float64, 5))
    ins64 = [t.clone().requires_grad_() for t in base]
    ins_torch = [t.detach().to(dtype).requires_grad_() for t in base]
    ins = [t.detach().to(dtype).requires_grad_() for t in base]

    def run(fn, tensors):
        m = tensors[3] if len(tensors) > 3 else mask
        return fn(tensors[0], tensors[1], tensors[2], m, **kwargs)

    ref64 = run(F.scaled_dot_product_attention, ins64)
    ref = run(F.scaled_dot_product_attention, ins_torch)
    out = run(DF.scaled_dot_product_attention, ins)
    ctx.check(f"{name} fwd", dtype, out, ref64, ref)
    grad = _randn(tuple(ref64.shape), torch.float64, 6)
    g64 = torch.autograd.grad(ref64, ins64, grad)
    g_torch = torch.autograd.grad(ref, ins_torch, grad.to(dtype))
    g = torch.autograd.grad(out, ins, grad.to(dtype))
    for arg, a, e, t in zip(("q", "k", "v", "mask"), g, g64, g_torch):
        ctx.check(f"{name} grad {arg}", dtype, a, e, t)


# (name, input shape, bool mask shape); softmax over the last axis
SOFTMAX_CHECKS = [
    ("masked_softmax (4, 8, 300)", (4, 8, 300), (4, 1, 300)),
    ("masked_softmax (64, 6000)", (64, 6000), (6000,)),
]


def _softmax_reference(x, mask, dim):
    mask = mask.expand(x.shape)
    keep_any = mask.any(dim, keepdim=True)
    scores = x.masked_fill(~mask, float("-inf")).masked_fill(~keep_any, 0.0)
    return torch.softmax(scores, dim) * mask


def _softmax_case(ctx, name, shape, mask_shape, dtype):
    g = torch.Generator(device="cpu").manual_seed(7)
    mask = (torch.rand(mask_shape, generator=g) < 0.7).to(device())
    x64 = _randn(shape, torch.float64, 8).requires_grad_()
    x_torch = x64.detach().to(dtype).requires_grad_()
    x = x64.detach().to(dtype).requires_grad_()
    ref64 = _softmax_reference(x64, mask, -1)
    ref = _softmax_reference(x_torch, mask, -1)
    out = DF.masked_softmax(x, mask, -1)
    ctx.check(f"{name} fwd", dtype, out, ref64, ref)
    grad = _randn(shape, torch.float64, 9)
    ctx.check(f"{name} grad", dtype, torch.autograd.grad(out, x, grad.to(dtype))[0],
              torch.autograd.grad(ref64, x64, grad)[0],
              torch.autograd.grad(ref, x_torch, grad.to(dtype))[0])


def _mha_case(ctx, dtype):
    name = "MultiheadAttention E256 H4 L77 key padding"
    torch.manual_seed(0)
    ref64 = torch.nn.MultiheadAttention(256, 4, batch_first=True).to(device(), torch.float64)
    ref = torch.nn.MultiheadAttention(256, 4, batch_first=True).to(device(), dtype)
    module = dnn.MultiheadAttention(256, 4, batch_first=True).to(device(), dtype)
    ref.load_state_dict(ref64.state_dict())
    module.load_state_dict(ref64.state_dict())
    padding = ~_key_padding(3, 77, 10, 1).reshape(3, 77)  # True = padded, as torch's module wants
    x64 = _randn((3, 77, 256), torch.float64, 11).requires_grad_()
    x_torch = x64.detach().to(dtype).requires_grad_()
    x = x64.detach().to(dtype).requires_grad_()
    outs = [m(t, t, t, key_padding_mask=padding, need_weights=False)[0]
            for m, t in ((ref64, x64), (ref, x_torch), (module, x))]
    ctx.check(f"{name} fwd", dtype, outs[2], outs[0], outs[1])
    grad = _randn(tuple(outs[0].shape), torch.float64, 12)
    grads = [torch.autograd.grad(o, (t, m.in_proj_weight), grad.to(o.dtype))
             for o, t, m in zip(outs, (x64, x_torch, x), (ref64, ref, module))]
    for i, arg in enumerate(("input", "in_proj_weight")):
        ctx.check(f"{name} grad {arg}", dtype, grads[2][i], grads[0][i], grads[1][i])


@contextlib.contextmanager
def _first_configs():
    """Every attention kernel runs its first autotune configuration, untuned."""
    from dlkern.kernels.triton import attention, attention_backward, masked_softmax
    tuned = [attention.attention_forward_kernel, attention_backward.attention_backward_dkdv_kernel,
             attention_backward.attention_backward_dq_kernel,
             masked_softmax.masked_softmax_forward_kernel,
             masked_softmax.masked_softmax_backward_kernel]
    saved = [k.configs for k in tuned]
    for k in tuned:
        k.configs = k.configs[:1]
    try:
        yield
    finally:
        for k, configs in zip(tuned, saved):
            k.configs = configs


def check(ctx, dtypes=CHECK_DTYPES):
    with strict(), _first_configs():
        for dtype in dtypes:
            for name, shape, kwargs, mask_kind in SDPA_CHECKS:
                try:
                    _sdpa_case(ctx, name, shape, kwargs, mask_kind, dtype)
                except Exception as exc:  # a failing case is reported, the others still run
                    ctx.check_failed(name, dtype, exc)
            for name, shape, mask_shape in SOFTMAX_CHECKS:
                try:
                    _softmax_case(ctx, name, shape, mask_shape, dtype)
                except Exception as exc:
                    ctx.check_failed(name, dtype, exc)
            try:
                _mha_case(ctx, dtype)
            except Exception as exc:
                ctx.check_failed("MultiheadAttention", dtype, exc)


# ---------------------------------------------------------------- timings

def _attention_flops(b, h, lq, lk, d, dv, causal):
    """Multiply-adds of QK^T and PV, counted twice; half of them under a causal mask (Lq = Lk)."""
    flops = 2 * b * h * lq * lk * (d + dv)
    return flops // 2 if causal else flops


def _check_timed(ctx, name, dtype, q, k, v, mask, causal, grad):
    """dlkern on the timed shape, with the tuned configurations, against torch in float32 (torch's
    own result in ``dtype`` sets the allowed error), output and, given ``grad``, gradients.
    Skipped when the timing was (the time budget is spent)."""
    timings = getattr(ctx, "timings", None)
    if timings and "torch_ms" not in timings[-1]:
        return
    ins32 = [t.detach().float().requires_grad_(grad is not None) for t in (q, k, v)]
    ins = [t.detach().requires_grad_(grad is not None) for t in (q, k, v)]
    ins_torch = [t.detach().requires_grad_(grad is not None) for t in (q, k, v)]
    outs = [fn(*t, mask, is_causal=causal) for fn, t in (
        (F.scaled_dot_product_attention, ins32), (F.scaled_dot_product_attention, ins_torch),
        (DF.scaled_dot_product_attention, ins))]
    ctx.check(f"{name} tuned fwd (vs float32)", dtype, outs[2], outs[0], outs[1])
    if grad is None:
        return
    grads = [torch.autograd.grad(o, t, grad.to(o.dtype))
             for o, t in zip(outs, (ins32, ins_torch, ins))]
    for i, arg in enumerate("qkv"):
        ctx.check(f"{name} tuned grad {arg} (vs float32)", dtype, grads[2][i], grads[0][i],
                  grads[1][i])


def _time_sdpa(ctx, name, dtype, shape, mode, target, causal=False, mask=None):
    b, h, lq, lk, d = shape
    q = _randn((b, h, lq, d), dtype, 1)
    k = _randn((b, h, lk, d), dtype, 2)
    v = _randn((b, h, lk, d), dtype, 3)
    flops = _attention_flops(b, h, lq, lk, d, d, causal)
    if mask is not None:  # the keys a key-padding mask hides cost nothing to either side
        flops = int(flops * float(mask.float().mean()))

    def torch_fn():
        return F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal)

    def dlkern_fn():
        return DF.scaled_dot_product_attention(q, k, v, mask, is_causal=causal)

    if mode == "fwd":
        with torch.no_grad():
            ctx.time(name, dtype, "fwd", torch_fn, dlkern_fn, flops=flops, target=target)
        _check_timed(ctx, name, dtype, q, k, v, mask, causal, None)
        return
    for t in (q, k, v):
        t.requires_grad_()
    grad = _randn((b, h, lq, d), dtype, 4)

    def both(fn):
        def run():
            return torch.autograd.grad(fn(), (q, k, v), grad)
        return run

    # the backward does 2.5x the forward's matrix products
    ctx.time(name, dtype, "fwd+bwd", both(torch_fn), both(dlkern_fn), flops=int(3.5 * flops),
             target=target)
    _check_timed(ctx, name, dtype, q, k, v, mask, causal, grad)


def time(ctx):
    f16, bf16 = torch.float16, torch.bfloat16
    with strict():
        _time_sdpa(ctx, "sdpa B4 H32 L4096 D64", f16, (4, 32, 4096, 4096, 64), "fwd", "≥1.0x")
        _time_sdpa(ctx, "sdpa causal B4 H32 L4096 D64", f16, (4, 32, 4096, 4096, 64), "fwd",
                   "≥1.0x", causal=True)
        _time_sdpa(ctx, "sdpa causal B4 H32 L4096 D128", f16, (4, 32, 4096, 4096, 128),
                   "fwd+bwd", "≥0.9x", causal=True)
        _time_sdpa(ctx, "sdpa key padding B8 H16 L2048 D64", f16, (8, 16, 2048, 2048, 64), "fwd",
                   "≥1.5x", mask=_key_padding(8, 2048, 13, 1024))
        _time_sdpa(ctx, "sdpa cross B8 H16 Lq512 Lk4096 D64", bf16, (8, 16, 512, 4096, 64), "fwd",
                   "≥1.0x")
