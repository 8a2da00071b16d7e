"""The plain-eager path of _dispatch.call: a call that nothing records or transforms runs the custom
op's body directly (the op's dispatch costs ~40 us); every other call goes through the op."""
import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import dlkern.functional as DF
from dlkern import _dispatch
from dlkern.ops import attention as attention_ops
from dlkern.ops import conv as conv_ops
from dlkern.ops import conv_transpose as conv_transpose_ops
from dlkern.ops import separable as separable_ops
from helpers import assert_close, float64_copy


class _Recorded(torch.Tensor):
    """A tensor subclass (as a user's wrapper would be): never the plain path."""


def test_plain_eager_conditions():
    x = torch.randn(3)
    w = torch.nn.Parameter(torch.randn(3))
    assert _dispatch.plain_eager([x, None])
    assert not _dispatch.plain_eager([x, w])  # w needs a gradient under grad mode
    assert _dispatch.plain_eager([x, w], grad_ok=True)
    with torch.no_grad():
        assert _dispatch.plain_eager([x, w])
    with torch.inference_mode():
        assert _dispatch.plain_eager([x])
    assert not _dispatch.plain_eager([x.as_subclass(_Recorded)])
    with torch.device("cpu"):  # a torch function mode
        assert not _dispatch.plain_eager([x])
    with torch.autograd.profiler.profile():
        assert not _dispatch.plain_eager([x])
    seen = []
    torch.func.vmap(lambda t: seen.append(_dispatch.plain_eager([t])) or t)(torch.randn(2, 3))
    assert seen == [False]
    with FakeTensorMode():
        assert not _dispatch.plain_eager([torch.empty(3)])


def _count_direct(monkeypatch, op):
    """Count the calls that run ``op``'s body directly (the op's own registration keeps the
    original body, so the op path is not counted)."""
    calls = []
    body = op._init_fn

    def counted(*args):
        calls.append(1)
        return body(*args)

    monkeypatch.setattr(op, "_init_fn", counted)
    return calls


_PW = torch.randn(3, 4, 1, 1, generator=torch.Generator().manual_seed(1))
CASES = {
    "conv": (conv_ops.conv, lambda x, w: DF.conv2d(x, w, None, 1, 1),
             lambda x, w: F.conv2d(x, w, None, 1, 1), ((2, 4, 7, 6), (5, 4, 3, 3))),
    "depthwise": (conv_ops.conv, lambda x, w: DF.conv2d(x, w, None, 2, 1, 1, 4),
                  lambda x, w: F.conv2d(x, w, None, 2, 1, 1, 4), ((2, 4, 7, 6), (4, 1, 3, 3))),
    "conv_transpose": (conv_transpose_ops.conv_transpose,
                       lambda x, w: DF.conv_transpose2d(x, w, None, 2, 1),
                       lambda x, w: F.conv_transpose2d(x, w, None, 2, 1),
                       ((2, 4, 5, 6), (4, 3, 3, 3))),
    "separable": (separable_ops.depthwise_separable_conv,
                  lambda x, w: DF.depthwise_separable_conv2d(x, w, _PW.to(w.dtype), padding=1),
                  lambda x, w: F.conv2d(F.conv2d(x, w, None, 1, 1, 1, 4), _PW.to(w.dtype)),
                  ((2, 4, 7, 6), (4, 1, 3, 3))),
    "attention": (attention_ops.attention_op,
                  lambda q, k: DF.scaled_dot_product_attention(q, k, k, is_causal=True),
                  lambda q, k: F.scaled_dot_product_attention(q, k, k, is_causal=True),
                  ((2, 3, 9, 8), (2, 3, 9, 8))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_direct_path_same_numbers_and_gradients(monkeypatch, name):
    op, dl, ref, shapes = CASES[name]
    g = torch.Generator().manual_seed(3)
    a, b = (torch.randn(s, generator=g) for s in shapes)
    calls = _count_direct(monkeypatch, op)
    with torch.no_grad():
        direct = dl(a, b)
    assert len(calls) == 1, "a no-grad eager call takes the direct path"
    with torch.autograd.profiler.profile():
        through_op = dl(a, b)
    assert len(calls) == 1, "a profiled call goes through the op"
    assert torch.equal(direct, through_op)
    assert_close(direct, ref(float64_copy(a), float64_copy(b)), shapes[1][1] * 9 + 9)
    # with gradients (the forward through the op and its autograd): torch's gradients
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    a2, b2 = float64_copy(a).requires_grad_(), float64_copy(b).requires_grad_()
    out = dl(a1, b1)
    grad = torch.randn(out.shape, generator=g)
    out.backward(grad)
    ref(a2, b2).backward(grad.double())
    assert_close(a1.grad, a2.grad, 200)
    assert_close(b1.grad, b2.grad, 200)


def test_fake_tensors_take_the_op():
    with FakeTensorMode():
        x = torch.empty(2, 4, 7, 6)
        w = torch.empty(5, 4, 3, 3)
        out = DF.conv2d(x, w, None, 1, 1)
    assert out.shape == (2, 5, 7, 6)
