"""conv1d/2d/3d and Conv1d/2d/3d against torch (float64 reference): forward and every gradient."""
import itertools
import math
import random
import threading

import pytest
import torch
import torch.nn.functional as F

import dlkern
import dlkern.functional as DF
import dlkern.nn as dnn
from helpers import assert_close, check_against_torch, float64_copy, make_tensor

DL = {1: DF.conv1d, 2: DF.conv2d, 3: DF.conv3d}
TORCH = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
SPATIAL = {1: (11,), 2: (7, 6), 3: (5, 6, 4)}
KERNEL = {1: (3,), 2: (3, 2), 3: (2, 3, 1)}
DTYPES = [torch.float32, torch.float64]


def conv_case(rank, stride, padding, dilation, groups_kind, bias, batch, layout, dtype, seed=0):
    """Inputs for one configuration: (x, w, b) and the keyword arguments of the conv."""
    g = torch.Generator().manual_seed(seed)
    c_in = {"1": 3, "2": 4, "dw": 4, "dw2": 4}[groups_kind]
    groups = {"1": 1, "2": 2, "dw": 4, "dw2": 4}[groups_kind]
    c_out = {"1": 5, "2": 6, "dw": 4, "dw2": 8}[groups_kind]
    x = make_tensor((batch, c_in) + SPATIAL[rank], dtype, layout, generator=g)
    w = make_tensor((c_out, c_in // groups) + KERNEL[rank], dtype, generator=g)
    b = make_tensor((c_out,), dtype, generator=g) if bias else None
    if padding == "asym":
        padding = tuple(range(1, rank + 1))
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (x, w, b), kwargs


def reductions(w, out_numel_per_channel):
    k = w.shape[1] * math.prod(w.shape[2:])
    return {"output": k, 0: w.shape[0] * math.prod(w.shape[2:]), 1: out_numel_per_channel,
            2: out_numel_per_channel}


def run_case(rank, tensors, kwargs, grad=True):
    x, w, b = tensors
    dl = lambda x, w, b: DL[rank](x, w, b, **kwargs)  # noqa: E731
    ref = lambda x, w, b: TORCH[rank](x, w, b, **kwargs)  # noqa: E731
    with torch.no_grad():
        out_shape = TORCH[rank](float64_copy(x), float64_copy(w), None, **kwargs).shape
    per_channel = out_shape[0] * math.prod(out_shape[2:])
    return check_against_torch(dl, ref, list(tensors), reductions(w, per_channel), grad=grad)


# A sweep over the full product would be ~35k cases; a fixed random sample of it covers every
# value of every axis many times, together with the exhaustive axes below.
AXES = dict(
    rank=[1, 2, 3], stride=[1, 2], padding=[0, 1, "same", "valid", "asym"], dilation=[1, 2],
    groups_kind=["1", "2", "dw", "dw2"], bias=[True, False], batch=[0, 1, 3],
    layout=["contiguous", "noncontiguous", "channels_last"], dtype=DTYPES,
)
_ALL = [dict(zip(AXES, values)) for values in itertools.product(*AXES.values())]
_ALL = [c for c in _ALL if not (c["padding"] == "same" and c["stride"] != 1)]
SWEEP = random.Random(1234).sample(_ALL, 240)


def _case_id(c):
    return "-".join(f"{k}={getattr(v, 'name', None) or str(v).replace('torch.', '')}" for k, v in c.items())


@pytest.mark.parametrize("case", SWEEP, ids=_case_id)
def test_sweep_forward_and_gradients(case):
    c = dict(case)
    rank, dtype = c.pop("rank"), c.pop("dtype")
    tensors, kwargs = conv_case(rank, c["stride"], c["padding"], c["dilation"], c["groups_kind"],
                                c["bias"], c["batch"], c["layout"], dtype)
    run_case(rank, tensors, kwargs)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding", [0, 2, "same", "valid"])
@pytest.mark.parametrize("kernel", [1, 2, 4])
def test_padding_kernel_parity(rank, dtype, padding, kernel):
    # Even kernels with 'same' are padded asymmetrically (the extra element after), as torch does.
    g = torch.Generator().manual_seed(kernel)
    x = make_tensor((2, 3) + SPATIAL[rank], dtype, generator=g)
    w = make_tensor((4, 3) + (kernel,) * rank, dtype, generator=g)
    for dilation in (1, 3):
        if padding != "same" and any(s + 2 * (padding if isinstance(padding, int) else 0) < dilation * (kernel - 1) + 1 for s in SPATIAL[rank]):
            continue
        run_case(rank, (x, w, None), dict(padding=padding, dilation=dilation))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_unbatched_input(rank):
    g = torch.Generator().manual_seed(0)
    x = make_tensor((3,) + SPATIAL[rank], torch.float32, generator=g)
    w = make_tensor((5, 3) + KERNEL[rank], torch.float32, generator=g)
    b = make_tensor((5,), torch.float32, generator=g)
    out = run_case(rank, (x, w, b), dict(padding=1))
    assert out.dim() == rank + 1


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_large_channels_and_multiple_tiles(rank):
    # Enough output pixels and channels that the kernels split the work into several tiles and
    # channel blocks (the sweep's shapes fit in one tile).
    g = torch.Generator().manual_seed(rank)
    spatial = {1: (3000,), 2: (45, 61), 3: (9, 17, 19)}[rank]
    x = make_tensor((2, 16) + spatial, torch.float32, generator=g)
    w = make_tensor((24, 16) + (3,) * rank, torch.float32, generator=g)
    b = make_tensor((24,), torch.float32, generator=g)
    run_case(rank, (x, w, b), dict(padding=1, stride=1))
    run_case(rank, (x, w[:, :8].contiguous(), b), dict(padding=2, stride=2, dilation=2, groups=2))


@pytest.mark.parametrize("shape", [(1, 64, 14, 14), (1, 8, 1, 1), (3, 5, 1, 9)])
def test_pointwise_and_single_image(shape):
    g = torch.Generator().manual_seed(7)
    x = make_tensor(shape, torch.float32, generator=g)
    w = make_tensor((48, shape[1], 1, 1), torch.float32, generator=g)
    run_case(2, (x, w, None), dict())
    run_case(2, (x, make_tensor((48, shape[1], 1, 1), torch.float32, generator=g), None), dict(stride=2))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_gradcheck_float64(rank):
    g = torch.Generator().manual_seed(3)
    spatial = {1: (7,), 2: (5, 4), 3: (3, 4, 3)}[rank]
    x = make_tensor((2, 4) + spatial, torch.float64, generator=g, requires_grad=True)
    w = make_tensor((6, 2) + (2,) * rank, torch.float64, generator=g, requires_grad=True)
    b = make_tensor((6,), torch.float64, generator=g, requires_grad=True)
    fn = lambda x, w, b: DL[rank](x, w, b, stride=2, padding=1, dilation=1, groups=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-8)


def test_only_some_inputs_require_grad():
    g = torch.Generator().manual_seed(4)
    x = make_tensor((2, 3, 6, 6), torch.float32, generator=g)
    w = make_tensor((4, 3, 3, 3), torch.float32, generator=g, requires_grad=True)
    b = make_tensor((4,), torch.float32, generator=g, requires_grad=True)
    DF.conv2d(x, w, b).sum().backward()
    assert x.grad is None and w.grad is not None and b.grad is not None
    wr, br = float64_copy(w), float64_copy(b)
    F.conv2d(float64_copy(x), wr, br).sum().backward()
    assert_close(w.grad, wr.grad, 2 * 16 * 8)
    assert_close(b.grad, br.grad, 2 * 16)


def test_outputs_are_poisoned_then_fully_written(monkeypatch):
    # The autouse fixture poisons outputs with NaN; a kernel that skips an element leaves NaN,
    # which assert_close reports. Check the poisoning itself is on.
    from dlkern import _dispatch

    t = _dispatch.new_output((3,), torch.zeros(1))
    assert torch.isnan(t).all()


def test_threads_calling_at_once():
    g = torch.Generator().manual_seed(5)
    cases = []
    for i in range(8):
        x = make_tensor((3, 8, 20 + i, 17), torch.float32, generator=g)
        w = make_tensor((12, 8, 3, 3), torch.float32, generator=g)
        cases.append((x, w))
    results, errors = [None] * 8, []

    def work(i):
        try:
            x, w = cases[i]
            for _ in range(5):
                results[i] = DF.conv2d(x, w, padding=1)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (x, w), out in zip(cases, results):
        assert_close(out, F.conv2d(x.double(), w.double(), padding=1), 72)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_modules_match_torch(rank, mode):
    torch_cls = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[rank]
    dl_cls = {1: dnn.Conv1d, 2: dnn.Conv2d, 3: dnn.Conv3d}[rank]
    torch.manual_seed(rank)
    ref = torch_cls(4, 6, 3, stride=1, padding=1, dilation=1, groups=2, bias=True, padding_mode=mode).double()
    mod = dl_cls(4, 6, 3, stride=1, padding=1, dilation=1, groups=2, bias=True, padding_mode=mode)
    assert isinstance(mod, torch_cls)
    mod.load_state_dict(ref.state_dict())          # torch -> dlkern
    assert set(mod.state_dict()) == set(ref.state_dict())
    x = make_tensor((2, 4) + SPATIAL[rank], torch.float32)
    x64 = float64_copy(x)
    out = mod(x)
    expected = ref(x64)
    assert_close(out, expected, 18)
    out.sum().backward()
    expected.sum().backward()
    assert_close(mod.weight.grad, ref.weight.grad, 2 * math.prod(out.shape[2:]))
    assert_close(mod.bias.grad, ref.bias.grad, 2 * math.prod(out.shape[2:]))
    back = torch_cls(4, 6, 3, padding=1, groups=2, padding_mode=mode)
    back.load_state_dict(mod.state_dict())         # dlkern -> torch
    assert torch.equal(back.weight, mod.weight)
    # Unbatched input through the module.
    assert_close(mod(x[0]), ref(x64[0]), 18)


def test_same_padding_module_even_kernel():
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(3, 5, (4, 2), padding="same", dilation=(1, 3)).double()
    mod = dnn.Conv2d(3, 5, (4, 2), padding="same", dilation=(1, 3))
    mod.load_state_dict(ref.state_dict())
    x = make_tensor((2, 3, 9, 10), torch.float32)
    assert_close(mod(x), ref(float64_copy(x)), 24)


def test_fallback_is_counted_or_strict(monkeypatch):
    x = torch.randn(1, 2, 5, 5).half()
    w = torch.randn(3, 2, 3, 3).half()
    with pytest.raises(RuntimeError, match="DLKERN_STRICT"):
        DF.conv2d(x, w)
    monkeypatch.setenv("DLKERN_STRICT", "0")
    dlkern.reset_stats()
    out = DF.conv2d(x, w)
    assert out.dtype == torch.float16
    assert dlkern.stats()["fallbacks"] == {"conv": 1}
    monkeypatch.setenv("DLKERN_BACKEND", "torch")
    DF.conv2d(x.float(), w.float())
    assert dlkern.stats()["fallbacks"] == {"conv": 2}
    dlkern.reset_stats()


def test_custom_op_registration():
    # The fake (meta) implementation, schema and autograd registration agree with the real one.
    g = torch.Generator().manual_seed(9)
    x = make_tensor((2, 4, 7, 6), torch.float32, generator=g, requires_grad=True)
    w = make_tensor((6, 2, 3, 3), torch.float32, generator=g, requires_grad=True)
    b = make_tensor((6,), torch.float32, generator=g, requires_grad=True)
    args = (x, w, b, [2, 1], [1, 0], [1, 2], 2, [4, 2])
    torch.library.opcheck(torch.ops.dlkern.conv.default, args)
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.dlkern.conv.default, (xc,) + args[1:])


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def conv_configs(draw):
    rank = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    cin_g = draw(st.integers(1, 3))
    cout_g = draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    same = draw(st.booleans()) and all(s == 1 for s in stride)
    padding = "same" if same else tuple(draw(st.integers(0, 2)) for _ in range(rank))
    spatial = []
    for k, d, p in zip(kernel, dilation, padding if not same else (0,) * rank):
        need = max(1, d * (k - 1) + 1 - 2 * p)
        spatial.append(draw(st.integers(need, need + 6)))
    batch = draw(st.integers(0, 3))
    dtype = draw(st.sampled_from(DTYPES))
    bias = draw(st.booleans())
    layout = draw(st.sampled_from(["contiguous", "noncontiguous", "channels_last"]))
    return rank, groups, cin_g, cout_g, kernel, dilation, stride, padding, tuple(spatial), batch, dtype, bias, layout


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs(), st.integers(0, 2**31 - 1))
def test_property_random_configurations(config, seed):
    rank, groups, cin_g, cout_g, kernel, dilation, stride, padding, spatial, batch, dtype, bias, layout = config
    g = torch.Generator().manual_seed(seed)
    x = make_tensor((batch, cin_g * groups) + spatial, dtype, layout, generator=g)
    w = make_tensor((cout_g * groups, cin_g) + kernel, dtype, generator=g)
    b = make_tensor((cout_g * groups,), dtype, generator=g) if bias else None
    run_case(rank, (x, w, b), dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


@pytest.mark.parametrize("x_last,w_last", [(False, True), (True, False), (True, True)])
@pytest.mark.parametrize("groups", [1, 4])
def test_output_layout_follows_input_or_weight(x_last, w_last, groups):
    """torch returns a channels_last output when the input or the weight is channels_last."""
    g = torch.Generator().manual_seed(5)
    x = make_tensor((2, 4, 7, 6), torch.float32, "channels_last" if x_last else "contiguous", g)
    w = make_tensor((8, 4 // groups, 3, 3), torch.float32, "channels_last" if w_last else "contiguous", g)
    wt = make_tensor((4, 8 // groups, 3, 3), torch.float32, "channels_last" if w_last else "contiguous", g)
    for ours, theirs in ((DF.conv2d(x, w, groups=groups), F.conv2d(x, w, groups=groups)),
                         (DF.conv_transpose2d(x, wt, groups=groups),
                          F.conv_transpose2d(x, wt, groups=groups))):
        assert ours.stride() == theirs.stride()
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
