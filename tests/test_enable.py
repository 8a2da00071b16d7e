"""dlkern.enable()/disable()/enabled(): torch's operators routed to dlkern through torch.library.

Every routed case is checked three ways: the output and every gradient against torch on float64
copies (computed with routing off), ``counts()`` showing the call was routed, and a spy on the
dlkern kernel showing that it ran. Restoring is checked on torch's dispatch table itself.
"""
import importlib
import threading

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import dlkern
from helpers import assert_close, float64_copy, make_tensor

E = importlib.import_module("dlkern.enable")  # dlkern.enable the attribute is the function
OPERATORS = list(E._OPERATORS)


def _tables():
    return {op: torch._C._dispatch_dump_table(f"aten::{op}") for op in OPERATORS}


@pytest.fixture(autouse=True)
def routing_off_after():
    """Each test starts with routing off and clean counters, and must leave it off."""
    assert not dlkern.is_enabled()
    E.reset_counts()
    dlkern.reset_stats()
    yield
    while dlkern.is_enabled():  # a failed test must not leak routing into the next one
        dlkern.disable()
        pytest.fail("routing was left enabled")


class Spy:
    """Counts the calls of ``module.name`` (a kernel function) while delegating to it."""

    def __init__(self, monkeypatch, module, name):
        self.calls = 0
        real = getattr(module, name)

        def spy(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)


def _spy_conv(monkeypatch):
    """Spies on the Numba convolution's forward and backward-input kernels."""
    from dlkern.kernels.numba import conv
    return Spy(monkeypatch, conv, "conv_forward"), Spy(monkeypatch, conv, "conv_backward_input")


def _check_routed(fn, tensors, reductions, operator, grad_reduction=None):
    """fn(*tensors) with routing on (float32) against fn on float64 copies with routing off:
    output(s) and the gradient of every tensor that requires one."""
    refs = [float64_copy(t) if t.is_floating_point() else t for t in tensors]
    ref = fn(*refs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    inputs = [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]
    before = E.counts()["routed"].get(operator, 0)
    with dlkern.enabled():
        out = fn(*inputs)
        out = out if isinstance(out, tuple) else (out,)
        assert E.counts()["routed"].get(operator, 0) > before, f"{operator} was not routed"
        g = torch.Generator().manual_seed(3)
        weights = [make_tensor(tuple(o.shape), torch.float64, generator=g) for o in ref]
        loss = sum((o * w.to(o.dtype)).sum() for o, w in zip(out, weights))
        loss.backward()
    for k, (o, r) in enumerate(zip(out, ref)):
        assert_close(o, r, reductions, f"output {k}")
    sum((r * w).sum() for r, w in zip(ref, weights)).backward()
    for k, (i, r) in enumerate(zip(inputs, refs)):
        if i.requires_grad:
            assert i.grad is not None, f"input {k}: no gradient"
            assert_close(i.grad, r.grad, grad_reduction or reductions, f"grad of input {k}")
    return out


# --- convolution --------------------------------------------------------------------------------

CONV_CASES = [  # (torch function, input shape, weight shape, keyword arguments)
    (F.conv1d, (2, 3, 11), (4, 3, 3), dict(stride=2, padding=1)),
    (F.conv2d, (2, 4, 9, 8), (6, 2, 3, 2), dict(padding=(1, 2), dilation=(2, 1), groups=2)),
    (F.conv2d, (1, 3, 7, 6), (5, 3, 4, 4), dict(padding="same")),  # asymmetric: torch pads first
    (F.conv3d, (1, 2, 5, 6, 4), (3, 2, 3, 3, 2), dict(stride=(1, 2, 1), padding=1)),
    (F.conv_transpose1d, (2, 4, 6), (4, 3, 3), dict(stride=3, output_padding=1)),
    (F.conv_transpose2d, (2, 4, 5, 6), (4, 3, 3, 3), dict(stride=2, padding=1, output_padding=1,
                                                          groups=2)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("fn, x_shape, w_shape, kwargs", CONV_CASES)
def test_convolution(monkeypatch, fn, x_shape, w_shape, kwargs):
    forward, backward_input = _spy_conv(monkeypatch)
    g = torch.Generator().manual_seed(0)
    x = make_tensor(x_shape, torch.float32, generator=g, requires_grad=True)
    w = make_tensor(w_shape, torch.float32, generator=g, requires_grad=True)
    transposed = fn in (F.conv_transpose1d, F.conv_transpose2d)
    b = make_tensor((w_shape[1] * kwargs.get("groups", 1) if transposed else w_shape[0],),
                    torch.float32, generator=g, requires_grad=True)
    red = w[0].numel() * max(x_shape[2:])
    _check_routed(lambda x, w, b: fn(x, w, b, **kwargs), [x, w, b], red, "convolution",
                  grad_reduction=red * x_shape[0] * 64)
    # a transposed convolution's forward is the backward-input kernel, its input gradient the
    # forward kernel; the other way round for a convolution
    assert forward.calls == 1 and backward_input.calls == 1


@pytest.mark.parametrize("padding_mode", ["reflect", "circular"])
def test_conv2d_module_padding_mode(monkeypatch, padding_mode):
    forward, _ = _spy_conv(monkeypatch)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=2, padding_mode=padding_mode)
    x = make_tensor((2, 3, 6, 7), torch.float32, requires_grad=True)
    params = [conv.weight, conv.bias]

    def run(x, w, b):
        return conv._conv_forward(x, w, b)  # the module's own forward, with these parameters

    _check_routed(run, [x, *params], 27 * 7, "convolution", grad_reduction=27 * 7 * 200)
    assert forward.calls >= 1


def test_channels_last_and_inference_mode(monkeypatch):
    forward, _ = _spy_conv(monkeypatch)
    x = make_tensor((2, 4, 6, 6), torch.float32, layout="channels_last")
    w = make_tensor((3, 4, 3, 3), torch.float32)
    ref = F.conv2d(x.double(), w.double(), padding=1)
    for context in (torch.no_grad, torch.inference_mode):
        with dlkern.enabled(), context():
            out = F.conv2d(x, w, padding=1)
        assert_close(out, ref, 36, f"output under {context.__name__}")
    assert E.counts()["routed"]["convolution"] == 2 and forward.calls == 2


# --- scaled dot-product attention ---------------------------------------------------------------

def _sdpa_mask(kind, g):
    if kind == "bool":
        mask = torch.rand((1, 3, 5, 7), generator=g) > 0.3
        mask[..., 0] = True  # no fully masked row: torch's reference on those differs by kernel
        return mask
    if kind == "float":
        return make_tensor((2, 1, 5, 7), torch.float32, generator=g, requires_grad=True)
    return None


@pytest.mark.parametrize("mask_kind, is_causal", [(None, False), ("bool", False), ("float", False),
                                                  (None, True)])
def test_sdpa(monkeypatch, mask_kind, is_causal):
    from dlkern.kernels.numba import attention as kernels
    spy = Spy(monkeypatch, kernels, "attention_forward")
    g = torch.Generator().manual_seed(1)
    q = make_tensor((2, 3, 5, 8), torch.float32, generator=g, requires_grad=True)
    k = make_tensor((2, 3, 7, 8), torch.float32, generator=g, requires_grad=True)
    v = make_tensor((2, 3, 7, 6), torch.float32, generator=g, requires_grad=True)
    mask = _sdpa_mask(mask_kind, g)
    tensors = [q, k, v] + ([mask] if mask is not None else [])

    def run(q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                              scale=0.4)

    _check_routed(run, tensors, 16, "scaled_dot_product_attention", grad_reduction=64)
    assert spy.calls >= 1


def test_sdpa_grouped_query_attention():
    g = torch.Generator().manual_seed(4)
    q = make_tensor((2, 4, 5, 8), torch.float32, generator=g, requires_grad=True)
    k = make_tensor((2, 2, 6, 8), torch.float32, generator=g, requires_grad=True)
    v = make_tensor((2, 2, 6, 8), torch.float32, generator=g, requires_grad=True)
    _check_routed(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                  [q, k, v], 16, "scaled_dot_product_attention", grad_reduction=64)


def test_transformer_encoder_layer_training():
    """Training mode takes F.multi_head_attention_forward, which calls SDPA (need_weights=False)."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 4, dim_feedforward=24, dropout=0.0,
                                             batch_first=True).train()
    ref_layer = torch.nn.TransformerEncoderLayer(16, 4, dim_feedforward=24, dropout=0.0,
                                                 batch_first=True).double().train()
    ref_layer.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    x = make_tensor((2, 6, 16), torch.float32, requires_grad=True)
    mask = torch.rand(6, 6, generator=torch.Generator().manual_seed(2)) > 0.7  # True = blocked
    mask.fill_diagonal_(False)
    x_ref = float64_copy(x)
    ref = ref_layer(x_ref, src_mask=mask)
    with dlkern.enabled():
        out = layer(x, src_mask=mask)
        out.sum().backward()
    assert E.counts()["routed"]["scaled_dot_product_attention"] == 1
    ref.sum().backward()
    assert_close(out, ref, 64, "output")
    assert_close(x.grad, x_ref.grad, 256, "grad of input")
    ref_params = dict(ref_layer.named_parameters())
    for name, p in layer.named_parameters():
        assert_close(p.grad, ref_params[name].grad, 256, f"grad of {name}")


# --- LSTM / GRU ---------------------------------------------------------------------------------

RNN_CASES = [  # (module class, constructor keywords, packed)
    (torch.nn.LSTM, dict(num_layers=2, bidirectional=True, batch_first=True), False),
    (torch.nn.GRU, dict(num_layers=2, bidirectional=True), False),
    (torch.nn.LSTM, dict(proj_size=3, bias=False), False),
    (torch.nn.LSTM, dict(num_layers=2, bidirectional=True, batch_first=True), True),
    (torch.nn.GRU, dict(bidirectional=True), True),
]


@pytest.mark.parametrize("cls, kwargs, packed", RNN_CASES)
def test_rnn(monkeypatch, cls, kwargs, packed):
    from dlkern.kernels.numba import rnn as kernels
    spy = Spy(monkeypatch, kernels, "layer_forward")
    torch.manual_seed(0)
    module = cls(5, 6, **kwargs)
    ref_module = cls(5, 6, **kwargs).double()
    ref_module.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    batch_first = kwargs.get("batch_first", False)
    shape = (4, 7, 5) if batch_first else (7, 4, 5)
    x = make_tensor(shape, torch.float32, requires_grad=True)
    x_ref = float64_copy(x)
    lengths = [7, 5, 5, 2]

    def run(m, x):
        inp = pack_padded_sequence(x, lengths, batch_first=batch_first) if packed else x
        out, state = m(inp)
        out = out.data if packed else out
        return (out,) + (state if isinstance(state, tuple) else (state,))

    refs = run(ref_module, x_ref)
    with dlkern.enabled():
        outs = run(module, x)
        assert E.counts()["routed"] == {("lstm" if cls is torch.nn.LSTM else "gru")
                                        + (".data" if packed else ".input"): 1}
        sum(o.sum() * (k + 1) for k, o in enumerate(outs)).backward()
    assert spy.calls == kwargs.get("num_layers", 1)
    sum(r.sum() * (k + 1) for k, r in enumerate(refs)).backward()
    for k, (o, r) in enumerate(zip(outs, refs)):
        assert_close(o, r, 60, f"output {k}")
    assert_close(x.grad, x_ref.grad, 600, "grad of input")
    ref_params = dict(ref_module.named_parameters())
    for name, p in module.named_parameters():
        assert_close(p.grad, ref_params[name].grad, 600, f"grad of {name}")


def test_lstm_dropout_draws_torch_masks():
    """Dropout between layers comes from torch's RNG as in at::lstm: same seed, same masks."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 6, num_layers=3, dropout=0.5)
    x = make_tensor((6, 3, 5), torch.float32)
    torch.manual_seed(7)
    ref = lstm(x)[0]
    with dlkern.enabled():
        torch.manual_seed(7)
        out = lstm(x)[0]
    assert E.counts()["routed"] == {"lstm.input": 1}
    assert_close(out, ref.double(), 60)
    assert not torch.equal(ref, lstm.eval()(x)[0])  # dropout did drop something


# --- enable / disable -----------------------------------------------------------------------------

def test_nesting_and_disable_restore_torch_exactly(monkeypatch):
    forward, _ = _spy_conv(monkeypatch)
    tables = _tables()
    x = make_tensor((2, 3, 8, 8), torch.float32)
    w = make_tensor((4, 3, 3, 3), torch.float32)
    before = F.conv2d(x, w)
    dlkern.enable()
    with dlkern.enabled():
        assert _tables() != tables
        F.conv2d(x, w)
    assert dlkern.is_enabled()  # the inner exit leaves the outer enable in force
    F.conv2d(x, w)
    assert forward.calls == 2
    dlkern.disable()
    assert not dlkern.is_enabled() and _tables() == tables
    after = F.conv2d(x, w)
    assert forward.calls == 2 and E.counts()["routed"] == {"convolution": 2}
    assert torch.equal(after, before)
    with pytest.raises(RuntimeError, match="without a matching"):
        dlkern.disable()


def test_exception_inside_block_restores():
    tables = _tables()
    with pytest.raises(KeyError):
        with dlkern.enabled():
            with dlkern.enabled():
                raise KeyError("boom")
    assert not dlkern.is_enabled() and _tables() == tables


def _raised(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return type(exc)
    return None


@pytest.mark.parametrize("case", ["conv_channels", "conv_kernel_too_big", "sdpa_dims",
                                  "sdpa_dtypes", "lstm_params"])
def test_bad_input_raises_torch_exception_type(case):
    x = make_tensor((1, 3, 5, 5), torch.float32)
    q = make_tensor((2, 4, 8), torch.float32)
    calls = {
        "conv_channels": lambda: F.conv2d(x, make_tensor((2, 4, 3, 3), torch.float32)),
        "conv_kernel_too_big": lambda: F.conv2d(x, make_tensor((2, 3, 7, 7), torch.float32)),
        "sdpa_dims": lambda: F.scaled_dot_product_attention(q, q, q[..., :5, :].transpose(-1, -2)),
        "sdpa_dtypes": lambda: F.scaled_dot_product_attention(q, q.double(), q),
        "lstm_params": lambda: torch.lstm(make_tensor((3, 2, 4), torch.float32),
                                          (torch.zeros(1, 2, 5), torch.zeros(1, 2, 5)),
                                          [make_tensor((20, 4), torch.float32)] * 3,
                                          False, 1, 0.0, False, False, False),
    }
    expected = _raised(calls[case])
    assert expected in (RuntimeError, ValueError)
    with dlkern.enabled():
        assert _raised(calls[case]) is expected


def test_uncovered_cases_pass_through_to_torch_silently():
    """float16 on the CPU (no dlkern kernel) runs torch's kernel even under DLKERN_STRICT=1, and
    the result is torch's to the bit; the pass-through is counted."""
    x = make_tensor((1, 3, 6, 6), torch.float16)
    w = make_tensor((2, 3, 3, 3), torch.float16)
    q = make_tensor((1, 2, 4, 8), torch.float16)
    lstm = torch.nn.LSTM(3, 4).half()
    seq = make_tensor((5, 2, 3), torch.float16)
    expected = [F.conv2d(x, w), F.scaled_dot_product_attention(q, q, q), lstm(seq)[0]]
    with dlkern.enabled():
        got = [F.conv2d(x, w), F.scaled_dot_product_attention(q, q, q), lstm(seq)[0]]
    for e, g_ in zip(expected, got):
        assert torch.equal(e, g_)
    assert E.counts() == {"routed": {}, "passed": {"convolution": 1, "lstm.input": 1,
                                                   "scaled_dot_product_attention": 1}}
    assert dlkern.stats()["fallbacks"] == {"enable:convolution": 1,
                                           "enable:scaled_dot_product_attention": 1,
                                           "enable:lstm.input": 1}


def test_torch_calls_made_inside_a_routed_call_reach_torch(monkeypatch):
    """When dlkern itself calls torch's operator from inside a routed call (its fallbacks do:
    F.conv2d in dlkern.ops.conv), that nested call must reach torch's kernel, not come back."""
    from dlkern.ops import conv
    nested = []

    def falling_back(op, input, weight, bias, stride, padding, dilation, groups, nsp):
        nested.append(op)
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)

    monkeypatch.setattr(conv, "convolution", falling_back)
    x = make_tensor((1, 3, 6, 6), torch.float32)
    w = make_tensor((2, 3, 3, 3), torch.float32)
    expected = F.conv2d(x, w, None, 1, 1)
    with dlkern.enabled():
        got = F.conv2d(x, w, None, 1, 1)
    assert nested == ["conv2d"] and torch.equal(got, expected)
    assert E.counts() == {"routed": {"convolution": 1}, "passed": {}}


def test_cuda_keys_registered_for_triton_families(monkeypatch):
    """An op family with Triton kernels gets the CUDA keys too; disable removes them."""
    from dlkern import _dispatch

    def cuda_lines(op):
        table = torch._C._dispatch_dump_table(f"aten::{op}")
        return [line for line in table.splitlines() if line.startswith(("CUDA:", "AutogradCUDA:"))]

    before = cuda_lines("convolution"), cuda_lines("lstm.input")
    monkeypatch.setattr(_dispatch, "TRITON_OPS", {"conv"})
    with dlkern.enabled():
        assert cuda_lines("convolution") != before[0]
        assert cuda_lines("lstm.input") == before[1]
    assert (cuda_lines("convolution"), cuda_lines("lstm.input")) == before


def test_torch_func_transforms_keep_working():
    """vmap's batching rule calls aten::convolution on plain tensors (routed); torch.func.grad's
    wrapped tensors stay with torch (dlkern's custom ops cannot run under it)."""
    x = make_tensor((3, 2, 3, 6, 6), torch.float32)
    w = make_tensor((4, 3, 3, 3), torch.float32)
    loop = torch.stack([F.conv2d(a, w) for a in x])
    grad = torch.func.grad(lambda a: F.conv2d(a, w).pow(2).sum())(x[0])
    with dlkern.enabled():
        vmapped = torch.vmap(lambda a: F.conv2d(a, w))(x)
        assert E.counts()["routed"] == {"convolution": 1}
        routed_grad = torch.func.grad(lambda a: F.conv2d(a, w).pow(2).sum())(x[0])
    assert_close(vmapped, loop.double(), 27, "vmap output")
    assert torch.equal(routed_grad, grad)


def test_threads_enable_and_disable():
    tables = _tables()
    x = make_tensor((1, 2, 5, 5), torch.float32)
    w = make_tensor((2, 2, 3, 3), torch.float32)
    ref = F.conv2d(x.double(), w.double())
    errors = []

    def worker():
        try:
            for _ in range(10):
                with dlkern.enabled():
                    assert dlkern.is_enabled()
                    assert_close(F.conv2d(x, w), ref, 18)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not dlkern.is_enabled() and _tables() == tables
    assert E.counts()["routed"] == {"convolution": 40}


# --- selection, policy, counts --------------------------------------------------------------------

def _conv_calls():
    """A 2-d convolution, a depthwise one, a 1-d one and a transposed one (each routable)."""
    g = torch.Generator().manual_seed(5)
    x = make_tensor((1, 4, 6, 6), torch.float32, generator=g)
    x1 = make_tensor((1, 4, 7), torch.float32, generator=g)
    w = make_tensor((3, 4, 3, 3), torch.float32, generator=g)
    wd = make_tensor((4, 1, 3, 3), torch.float32, generator=g)
    w1 = make_tensor((2, 4, 3), torch.float32, generator=g)
    wt = make_tensor((4, 2, 2, 2), torch.float32, generator=g)
    return {"conv": lambda: F.conv2d(x, w), "depthwise": lambda: F.conv2d(x, wd, groups=4),
            "conv1d": lambda: F.conv1d(x1, w1), "conv_transpose": lambda: F.conv_transpose2d(x, wt)}


@pytest.mark.parametrize("ops, exclude, routed", [
    (None, None, {"conv", "depthwise", "conv1d", "conv_transpose"}),
    ("conv_transpose", None, {"conv_transpose"}),
    (["conv"], None, {"conv", "conv1d"}),
    ([torch.nn.Conv2d], None, {"conv", "depthwise"}),
    (None, ["depthwise", torch.nn.Conv1d], {"conv", "conv_transpose"}),
    (["rnn", "cell", "mha"], None, set()),
])
def test_ops_and_exclude_select_calls(ops, exclude, routed):
    calls = _conv_calls()
    got = set()
    with dlkern.enabled(ops=ops, exclude=exclude):
        for name, call in calls.items():
            before = E.counts()["routed"].get("convolution", 0)
            call()
            if E.counts()["routed"].get("convolution", 0) > before:
                got.add(name)
    assert got == routed
    assert E.counts()["passed"] == {} and dlkern.stats()["fallbacks"] == {}  # not pass-throughs


def test_unknown_names_raise_and_leave_routing_off():
    with pytest.raises(ValueError, match=r"unknown ops name\(s\) \['convolution'\].*'depthwise'"):
        dlkern.enable(ops=["convolution"])
    with pytest.raises(ValueError, match="torch.nn.LSTM"):
        dlkern.enable(exclude=torch.nn.Linear)
    with pytest.raises(ValueError, match="always, fastest"):
        dlkern.enable(policy="sometimes")
    assert not dlkern.is_enabled()


def test_innermost_enable_selects():
    calls = _conv_calls()
    with dlkern.enabled(ops="depthwise"):
        with dlkern.enabled(ops="conv"):
            calls["conv"]()
            calls["depthwise"]()
        assert E.counts()["routed"] == {"convolution": 1}
        calls["depthwise"]()
        calls["conv"]()
    assert E.counts()["routed"] == {"convolution": 2}


def test_a_pass_through_is_counted_once():
    """The one record of a pass-through is dlkern.stats()'s; counts() reads it, and either reset
    clears it for both."""
    x = make_tensor((1, 3, 6, 6), torch.float16)
    w = make_tensor((2, 3, 3, 3), torch.float16)
    with dlkern.enabled():
        F.conv2d(x, w)
    assert E.counts()["passed"] == {"convolution": 1}
    assert dlkern.stats()["fallbacks"] == {"enable:convolution": 1}
    dlkern.reset_stats()
    assert E.counts()["passed"] == {}
    with dlkern.enabled():
        F.conv2d(x, w)
    E.reset_counts()
    assert dlkern.stats()["fallbacks"] == {} and E.counts() == {"routed": {}, "passed": {}}


@pytest.mark.parametrize("faster", ["dlkern", "torch"])
def test_policy_fastest_runs_the_faster_kernel(monkeypatch, tmp_path, faster):
    """With the timing fixed, the faster path runs; outputs and gradients agree with torch."""
    from dlkern import policy
    monkeypatch.setenv("DLKERN_CACHE_DIR", str(tmp_path))
    policy.forget()
    times = (1.0, 0.5) if faster == "dlkern" else (0.5, 1.0)
    timed = []

    def fixed(run_torch, run_dlkern, *args, **kwargs):
        run_torch()
        run_dlkern()
        timed.append(1)
        return times

    monkeypatch.setattr(policy, "measure", fixed)
    forward, _ = _spy_conv(monkeypatch)
    g = torch.Generator().manual_seed(6)
    x = make_tensor((2, 3, 7, 6), torch.float32, generator=g, requires_grad=True)
    w = make_tensor((4, 3, 3, 3), torch.float32, generator=g, requires_grad=True)
    try:
        with dlkern.enabled(policy="fastest"):
            F.conv2d(x, w, padding=1)  # decides
            spied = forward.calls
            out = F.conv2d(x, w, padding=1)
            out.sum().backward()
    finally:
        policy.forget()
    assert timed == [1] and forward.calls == spied + (faster == "dlkern")
    assert E.counts()["routed"].get("convolution", 0) == 2 * (faster == "dlkern")
    assert dlkern.stats()["policy"] == {"conv": {"timed": 1, faster: 2}}
    x_ref, w_ref = float64_copy(x), float64_copy(w)
    ref = F.conv2d(x_ref, w_ref, padding=1)
    ref.sum().backward()
    assert_close(out, ref, 27)
    assert_close(x.grad, x_ref.grad, 27 * 8)
    assert_close(w.grad, w_ref.grad, 2 * 42 * 8)
