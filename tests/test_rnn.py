"""LSTM, GRU and vanilla RNN (tanh, relu) cells and layers against torch (float64 reference):
forward, final states, every gradient."""
import functools
import itertools
import random

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import dlkern
import dlkern.functional as DF
import dlkern.nn as dnn
from helpers import assert_close, check_against_torch, float64_copy, make_tensor

DTYPES = [torch.float32, torch.float64]
MODES = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
_P = functools.partial
TORCH_LAYER = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU,
               "rnn_tanh": _P(torch.nn.RNN, nonlinearity="tanh"),
               "rnn_relu": _P(torch.nn.RNN, nonlinearity="relu")}
DL_LAYER = {"lstm": dnn.LSTM, "gru": dnn.GRU, "rnn_tanh": _P(dnn.RNN, nonlinearity="tanh"),
            "rnn_relu": _P(dnn.RNN, nonlinearity="relu")}
TORCH_CELL = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell,
              "rnn_tanh": _P(torch.nn.RNNCell, nonlinearity="tanh"),
              "rnn_relu": _P(torch.nn.RNNCell, nonlinearity="relu")}
DL_CELL = {"lstm": dnn.LSTMCell, "gru": dnn.GRUCell,
           "rnn_tanh": _P(dnn.RNNCell, nonlinearity="tanh"),
           "rnn_relu": _P(dnn.RNNCell, nonlinearity="relu")}
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
INPUT, HIDDEN, PROJ = 5, 6, 3  # odd sizes on purpose
SEQ, BATCH = 7, 4
LENGTHS = [7, 5, 5, 1]  # variable lengths, sorted, one of length 1


def _cell_fn(mode, functional):
    """(input, h, c, w_ih, w_hh, b_ih, b_hh) -> one tensor (h and c concatenated for an LSTM)."""
    def run(x, h, c, w_ih, w_hh, b_ih, b_hh):
        unbatched = functional is torch and x.dim() == 1  # torch's cell ops want a batch axis
        if unbatched:
            x, h, c = x[None], h[None], (None if c is None else c[None])
        if mode == "lstm":
            out = torch.cat(functional.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh), -1)
        else:
            out = getattr(functional, f"{mode}_cell")(x, h, w_ih, w_hh, b_ih, b_hh)
        return out[0] if unbatched else out

    def run_gru(x, h, w_ih, w_hh, b_ih, b_hh):
        return run(x, h, None, w_ih, w_hh, b_ih, b_hh)
    return run if mode == "lstm" else run_gru


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cell_functional(mode, batched, bias, dtype):
    g = torch.Generator().manual_seed(1)
    lead = (3,) if batched else ()
    x = make_tensor(lead + (INPUT,), dtype, generator=g)
    h = make_tensor(lead + (HIDDEN,), dtype, generator=g)
    c = make_tensor(lead + (HIDDEN,), dtype, generator=g)
    gh = GATES[mode] * HIDDEN
    w_ih = make_tensor((gh, INPUT), dtype, generator=g) * 0.5
    w_hh = make_tensor((gh, HIDDEN), dtype, layout="noncontiguous", generator=g) * 0.5
    b_ih = make_tensor((gh,), dtype, generator=g) if bias else None
    b_hh = make_tensor((gh,), dtype, generator=g) if bias else None
    tensors = [x, h, c, w_ih, w_hh, b_ih, b_hh] if mode == "lstm" else [x, h, w_ih, w_hh, b_ih, b_hh]
    red = INPUT + HIDDEN
    reductions = {"output": red, **{k: 3 * gh for k in range(len(tensors))}}
    dl, ref = _cell_fn(mode, DF), _cell_fn(mode, torch)
    if not bias:  # check_against_torch differentiates every tensor argument: bind the Nones
        n = len(tensors) - 2
        dl0, ref0 = dl, ref
        dl = lambda *a: dl0(*a[:n], None, None)  # noqa: E731
        ref = lambda *a: ref0(*a[:n], None, None)  # noqa: E731
        tensors = tensors[:n]
    check_against_torch(dl, ref, tensors, reductions)
    with torch.no_grad():  # the lean path (no graph) gives the same numbers
        assert_close(dl(*tensors), ref(*[float64_copy(t) for t in tensors]), red, "no_grad output")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("split", ["1", "0"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cell_lean_step_split_and_serial(mode, split, dtype, monkeypatch):
    """The lean cell step (no graph) split over hidden units on every thread (forced here, taken
    by large cells) and on the calling thread: torch's numbers; the inputs unchanged."""
    monkeypatch.setenv("DLKERN_RNN_SPLIT", split)
    g = torch.Generator().manual_seed(4)
    gh = GATES[mode] * HIDDEN
    tensors = [make_tensor(s, dtype, generator=g)
               for s in ((3, INPUT), (3, HIDDEN), (3, HIDDEN), (gh, INPUT), (gh, HIDDEN), (gh,),
                         (gh,))]
    if mode != "lstm":
        del tensors[2]
    before = [t.clone() for t in tensors]
    with torch.no_grad():
        got = _cell_fn(mode, DF)(*tensors)
    assert_close(got, _cell_fn(mode, torch)(*[float64_copy(t) for t in tensors]),
                 INPUT + HIDDEN, "lean step")
    assert all(torch.equal(a, b) for a, b in zip(tensors, before))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cell_step_with_gradient_large(mode, dtype):
    """A cell step large enough for the parallel paths: the forward split over hidden units, the
    input gradient split over its columns (few rows); every gradient against torch."""
    torch.manual_seed(6)
    ref = TORCH_CELL[mode](1024, 64).double()
    mod = DL_CELL[mode](1024, 64)
    mod.load_state_dict(ref.state_dict())
    mod.to(dtype)
    x = make_tensor((32, 1024), dtype).requires_grad_()
    h = make_tensor((32, 64), dtype).requires_grad_()
    c = make_tensor((32, 64), dtype).requires_grad_()
    state = (h, c) if mode == "lstm" else h
    state64 = tuple(float64_copy(t) for t in state) if mode == "lstm" else float64_copy(h)
    x64 = float64_copy(x)
    out, want = mod(x, state), ref(x64, state64)
    out, want = (out, want) if mode == "lstm" else ((out,), (want,))
    for a, e in zip(out, want):
        assert_close(a, e, 1024 + 64, "output")
    leaves = [x, h] + ([c] if mode == "lstm" else [])
    leaves64 = [x64] + list(state64 if mode == "lstm" else (state64,))
    g = torch.Generator().manual_seed(7)
    grads = [make_tensor(tuple(o.shape), torch.float64, generator=g) for o in out]
    got = torch.autograd.grad(out, leaves + list(mod.parameters()), [v.to(dtype) for v in grads])
    exp = torch.autograd.grad(want, leaves64 + list(ref.parameters()), grads)
    for k, (a, e) in enumerate(zip(got, exp)):
        assert_close(a, e, 32 * 4 * 64, f"grad {k}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hx_given", [True, False])
def test_cell_module_and_state_dict(mode, hx_given):
    torch.manual_seed(2)
    ref = TORCH_CELL[mode](INPUT, HIDDEN).double()
    mod = DL_CELL[mode](INPUT, HIDDEN)
    mod.load_state_dict(ref.state_dict())  # torch -> dlkern
    assert list(mod.state_dict()) == list(ref.state_dict())
    mod.double()
    for x in (torch.randn(3, INPUT, dtype=torch.float64), torch.randn(INPUT, dtype=torch.float64)):
        lead = x.shape[:-1]
        hx = None
        if hx_given:
            h = torch.randn(lead + (HIDDEN,), dtype=torch.float64)
            hx = (h, torch.randn_like(h)) if mode == "lstm" else h
        out, expected = mod(x, hx), ref(x, hx)
        if mode == "gru":
            out, expected = (out,), (expected,)
        for a, e in zip(out, expected):
            assert_close(a, e, INPUT + HIDDEN)
    ref2 = TORCH_CELL[mode](INPUT, HIDDEN).double()
    ref2.load_state_dict(mod.state_dict())  # dlkern -> torch
    for (k, a), (_, b) in zip(mod.state_dict().items(), ref2.state_dict().items()):
        assert torch.equal(a, b), k


def _layer_inputs(mode, cfg, dtype, seed=0):
    """Modules (dlkern, torch float64 twin), input, hx for one configuration."""
    torch.manual_seed(seed)
    kw = dict(num_layers=cfg["layers"], bidirectional=cfg["bidirectional"],
              batch_first=cfg["batch_first"], bias=cfg["bias"])
    if cfg.get("proj"):
        kw["proj_size"] = PROJ
    ref = TORCH_LAYER[mode](INPUT, HIDDEN, **kw).double()
    mod = DL_LAYER[mode](INPUT, HIDDEN, **kw)
    mod.load_state_dict(ref.state_dict())
    mod.to(dtype)
    g = torch.Generator().manual_seed(seed)
    shape = (BATCH, SEQ, INPUT) if cfg["batch_first"] else (SEQ, BATCH, INPUT)
    x = make_tensor(shape, dtype, generator=g)
    num_dir = 2 if cfg["bidirectional"] else 1
    real = PROJ if cfg.get("proj") else HIDDEN
    hx = None
    if cfg["hx"]:
        h0 = make_tensor((cfg["layers"] * num_dir, BATCH, real), dtype, generator=g)
        c0 = make_tensor((cfg["layers"] * num_dir, BATCH, HIDDEN), dtype, generator=g)
        hx = (h0, c0) if mode == "lstm" else h0
    return mod, ref, x, hx


def _flatten_out(mode, out, packed):
    y, state = out
    if packed:
        y = pad_packed_sequence(y, batch_first=False)[0]
    states = list(state) if mode == "lstm" else [state]
    return [y] + states


def _run_layer(mode, cfg, dtype):
    mod, ref, x, hx = _layer_inputs(mode, cfg, dtype)
    leaves = [x] + ([t for t in (hx if mode == "lstm" else (hx,))] if hx is not None else [])
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    leaves64 = [float64_copy(t) for t in leaves]

    def call(module, tensors):
        x = tensors[0]
        state = None
        if len(tensors) > 1:
            state = tuple(tensors[1:]) if mode == "lstm" else tensors[1]
        if cfg["packed"]:
            x = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=cfg["batch_first"],
                                     enforce_sorted=cfg["sorted"])
        return _flatten_out(mode, module(x, state), cfg["packed"])

    outs = call(mod, leaves)
    refs = call(ref, leaves64)
    layers = cfg["layers"]
    red = SEQ * (INPUT + HIDDEN) * layers
    for k, (a, e) in enumerate(zip(outs, refs)):
        assert_close(a, e, red, f"output {k}")
    g = torch.Generator().manual_seed(5)
    grads = [make_tensor(tuple(o.shape), torch.float64, generator=g) for o in outs]
    if cfg["packed"]:  # padding positions carry no gradient in either
        grads[0] = grads[0] * (refs[0] != 0)
    params = list(mod.parameters())
    ref_params = list(ref.parameters())
    got = torch.autograd.grad(outs, leaves + params, [gr.to(dtype) for gr in grads])
    want = torch.autograd.grad(refs, leaves64 + ref_params, grads)
    names = ["input", "h0", "c0"][:len(leaves)] + [n for n, _ in mod.named_parameters()]
    for name, a, e in zip(names, got, want):
        assert_close(a, e, red * BATCH, f"grad of {name}")


AXES = dict(layers=[1, 2, 3], bidirectional=[False, True], batch_first=[False, True],
            bias=[True, False], hx=[True, False], proj=[False, True], packed=[False, True],
            dtype=DTYPES)
_ALL = [dict(zip(AXES, v)) for v in itertools.product(*AXES.values())]
SWEEP = [("lstm", c) for c in random.Random(7).sample(_ALL, 26)]
SWEEP += [("gru", c) for c in random.Random(8).sample([c for c in _ALL if not c["proj"]], 18)]
SWEEP += [(m, c) for m, seed in (("rnn_tanh", 9), ("rnn_relu", 10))
          for c in random.Random(seed).sample([c for c in _ALL if not c["proj"]], 8)]


def _id(item):
    mode, c = item
    return mode + "-" + "-".join(f"{k}={str(v).replace('torch.', '')}" for k, v in c.items())


@pytest.mark.parametrize("item", SWEEP, ids=_id)
def test_layer_sweep(item):
    mode, cfg = item
    cfg = dict(cfg, sorted=True)
    _run_layer(mode, cfg, cfg["dtype"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("loop", ["serial", "rows", "split"])
@pytest.mark.parametrize("packed,dtype", [("1", torch.float32), ("0", torch.float32),
                                          ("0", torch.float64)])  # float64 is never packed
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_time_loops(mode, loop, packed, dtype, bidirectional, monkeypatch):
    """Every time loop of the CPU layer, forced on a small layer: the serial one, items of batch
    rows, items of hidden units (a parallel region per step); W_hh packed for the float32 packed
    product or BLAS's. Hidden 37: the split's unit blocks (18 and 19 units) end in partial
    panels; variable lengths."""
    from dlkern.kernels.numba import rnn as numba_rnn

    monkeypatch.setenv("DLKERN_RNN_SPLIT", "1" if loop == "split" else "0")
    monkeypatch.setenv("DLKERN_RNN_PACKED", packed)
    if loop != "serial":
        monkeypatch.setattr(numba_rnn, "SERIAL_WORK", 0)
    monkeypatch.setitem(globals(), "HIDDEN", 37)
    cfg = dict(layers=2, bidirectional=bidirectional, batch_first=False, bias=True, hx=True,
               packed=True, sorted=True, proj=False)
    _run_layer(mode, cfg, dtype)


def test_layer_split_loop_four_threads():
    """The split loop with both directions of a bidirectional layer split (4 threads, so each
    direction gets two items of hidden units), packed and not: same numbers as torch."""
    code = """
import os, torch
import dlkern.nn as dnn
torch.manual_seed(0)
for packed in ("1", "0"):
    os.environ["DLKERN_RNN_PACKED"] = packed
    for cls, ref_cls in ((dnn.LSTM, torch.nn.LSTM), (dnn.GRU, torch.nn.GRU)):
        ref = ref_cls(5, 45, num_layers=2, bidirectional=True).double()
        mod = cls(5, 45, num_layers=2, bidirectional=True)
        mod.load_state_dict(ref.state_dict())
        x = torch.randn(9, 3, 5, requires_grad=True)
        x64 = x.detach().double().requires_grad_()
        a = mod(x)[0]; ga, = torch.autograd.grad(a.sum(), x)
        b = ref(x64)[0]; gb, = torch.autograd.grad(b.sum(), x64)
        assert (a.double() - b).abs().max() < 1e-5, (a.double() - b).abs().max()
        assert (ga.double() - gb).abs().max() < 1e-4, (ga.double() - gb).abs().max()
from dlkern.kernels.numba import rnn
assert rnn.split_bounds(2, 3, 45, 180, 45, 4, False, True) is not None
print("ok")
"""
    from helpers import run_isolated

    env = dict(NUMBA_NUM_THREADS="4", DLKERN_NUM_THREADS="4", DLKERN_RNN_SPLIT="1")
    rc, out = run_isolated(code, env=env)
    assert rc == 0 and "ok" in out, out[-3000:]


@pytest.mark.parametrize("mode", MODES)
def test_layer_unsorted_padded_batch(mode, monkeypatch):
    """pack_padded_sequence(enforce_sorted=False): hx and final states are permuted as torch."""
    cfg = dict(layers=2, bidirectional=True, batch_first=True, bias=True, hx=True, packed=True,
               sorted=False, proj=(mode == "lstm"))
    monkeypatch.setitem(globals(), "LENGTHS", [5, 7, 1, 5])
    _run_layer(mode, cfg, torch.float64)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bidirectional", [False, True])  # False: one work item, the serial path
def test_layer_unbatched_and_noncontiguous(mode, dtype, bidirectional):
    torch.manual_seed(3)
    ref = TORCH_LAYER[mode](INPUT, HIDDEN, num_layers=2, bidirectional=bidirectional).double()
    mod = DL_LAYER[mode](INPUT, HIDDEN, num_layers=2, bidirectional=bidirectional)
    mod.load_state_dict(ref.state_dict())
    mod.to(dtype)
    x = make_tensor((SEQ, INPUT), dtype, layout="noncontiguous")
    before = x.clone()
    y, state = mod(x)
    y_ref, state_ref = ref(float64_copy(x))
    assert_close(y, y_ref, SEQ * (INPUT + HIDDEN) * 2)
    for a, e in zip(*((state, state_ref) if mode == "lstm" else ((state,), (state_ref,)))):
        assert_close(a, e, SEQ * (INPUT + HIDDEN) * 2)
    assert torch.equal(x, before)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_gradcheck_float64(mode):
    torch.manual_seed(4)
    kw = dict(proj_size=2) if mode == "lstm" else {}
    mod = DL_LAYER[mode](3, 4, bidirectional=True, **kw).double()
    data = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    batch_sizes = torch.tensor([3, 2, 1])
    real = 2 if mode == "lstm" else 4
    h0 = torch.randn(2, 3, real, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    params = list(mod.parameters())

    def fn(data, h0, c0, *weights):
        hx = (h0, c0) if mode == "lstm" else h0
        out, state = torch.func.functional_call(
            mod, {n: w for (n, _), w in zip(mod.named_parameters(), weights)},
            (PackedSequence(data, batch_sizes), hx))
        states = state if mode == "lstm" else (state,)
        return (out.data,) + tuple(states)

    assert torch.autograd.gradcheck(fn, (data, h0, c0, *params), atol=1e-8)
    cell_fn = getattr(DF, f"{mode}_cell")
    gh = GATES[mode] * 4
    args = [torch.randn(s, dtype=torch.float64, requires_grad=True)
            for s in ((2, 3), (2, 4), (2, 4), (gh, 3), (gh, 4), (gh,), (gh,))]
    if mode == "lstm":
        cell = lambda x, h, c, *w: torch.cat(cell_fn(x, (h, c), *w), -1)  # noqa: E731
    else:
        cell = lambda x, h, c, *w: cell_fn(x, h, *w)  # noqa: E731
    assert torch.autograd.gradcheck(cell, tuple(args), atol=1e-8)


@pytest.mark.parametrize("mode", MODES)
def test_long_sequence_accuracy(mode):
    """T = 1000 in float32: the error against float64 stays within 2x torch's own float32 error."""
    torch.manual_seed(6)
    ref = TORCH_LAYER[mode](8, 16).double()
    mod = DL_LAYER[mode](8, 16)
    mod.load_state_dict(ref.state_dict())
    mod.float()
    ref32 = TORCH_LAYER[mode](8, 16)
    ref32.load_state_dict(ref.state_dict())
    x = torch.randn(1000, 2, 8)
    with torch.no_grad():
        y = mod(x)[0].double()
        y64 = ref(x.double())[0]
        y32 = ref32(x)[0].double()
    err, err_torch = float((y - y64).abs().max()), float((y32 - y64).abs().max())
    assert err <= 2 * err_torch + 1e-6, (err, err_torch)


@pytest.mark.parametrize("mode", MODES)
def test_dropout_between_layers_uses_torch_rng(mode):
    torch.manual_seed(9)
    ref = TORCH_LAYER[mode](INPUT, HIDDEN, num_layers=3, dropout=0.5).double()
    mod = DL_LAYER[mode](INPUT, HIDDEN, num_layers=3, dropout=0.5).double()
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(SEQ, BATCH, INPUT, dtype=torch.float64)
    torch.manual_seed(10)
    a = mod(x)[0]
    torch.manual_seed(10)
    b = mod(x)[0]
    assert torch.equal(a, b), "the same seed gives the same dropout masks"
    torch.manual_seed(10)
    e = ref(x)[0]
    assert_close(a, e, SEQ * (INPUT + HIDDEN) * 3, "same masks as torch's layer")
    mod.eval()
    ref.eval()
    assert_close(mod(x)[0], ref(x)[0], SEQ * (INPUT + HIDDEN) * 3, "eval: no dropout")


@pytest.mark.parametrize("mode", MODES)
def test_layer_state_dict_both_ways(mode):
    kw = dict(num_layers=2, bidirectional=True)
    if mode == "lstm":
        kw["proj_size"] = 2
    ref = TORCH_LAYER[mode](INPUT, HIDDEN, **kw)
    mod = DL_LAYER[mode](INPUT, HIDDEN, **kw)
    assert list(mod.state_dict()) == list(ref.state_dict())
    mod.load_state_dict(ref.state_dict())
    ref2 = TORCH_LAYER[mode](INPUT, HIDDEN, **kw)
    ref2.load_state_dict(mod.state_dict())
    for (k, a), (_, b) in zip(ref.state_dict().items(), ref2.state_dict().items()):
        assert torch.equal(a, b), k


def test_fallback_for_float16_is_counted(monkeypatch):
    monkeypatch.delenv("DLKERN_STRICT")
    dlkern.reset_stats()
    mod = dnn.GRU(4, 5).half()
    out, _ = mod(torch.randn(3, 2, 4).half())
    assert out.dtype == torch.float16
    assert dlkern.stats()["fallbacks"].get("rnn", 0) == 1
    monkeypatch.setenv("DLKERN_STRICT", "1")
    with pytest.raises(RuntimeError, match="STRICT"):
        mod(torch.randn(3, 2, 4).half())


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch(mode):
    mod = DL_LAYER[mode](INPUT, HIDDEN, num_layers=2)
    ref = TORCH_LAYER[mode](INPUT, HIDDEN, num_layers=2)
    mod.load_state_dict(ref.state_dict())
    out, state = mod(torch.randn(SEQ, 0, INPUT))
    ref_out, ref_state = ref(torch.randn(SEQ, 0, INPUT))
    assert out.shape == ref_out.shape
    states = zip(state, ref_state) if mode == "lstm" else [(state, ref_state)]
    assert all(a.shape == b.shape for a, b in states)


def test_cell_under_torch_compile():
    """The custom op path (fake implementation, autograd) under torch.compile(fullgraph=True)."""
    torch.manual_seed(11)
    x, h = torch.randn(3, INPUT, requires_grad=True), torch.randn(3, HIDDEN)
    w_ih, w_hh = torch.randn(3 * HIDDEN, INPUT), torch.randn(3 * HIDDEN, HIDDEN)
    compiled = torch.compile(lambda x, h: DF.gru_cell(x, h, w_ih, w_hh), fullgraph=True)
    out = compiled(x, h)
    ref = torch.gru_cell(float64_copy(x), h.double(), w_ih.double(), w_hh.double())
    assert_close(out, ref, INPUT + HIDDEN)
    out.sum().backward()
    assert_close(x.grad, _grad64(x, h, w_ih, w_hh), 3 * HIDDEN)


def _grad64(x, h, w_ih, w_hh):
    x64 = float64_copy(x.detach()).requires_grad_()
    torch.gru_cell(x64, h.double(), w_ih.double(), w_hh.double()).sum().backward()
    return x64.grad


def test_openblas_binding(monkeypatch):
    """DLKERN_BLAS=openblas binds scipy's OpenBLAS instead of torch's MKL: same numbers."""
    code = """
import os, torch
os.environ["DLKERN_STRICT"] = "1"
import dlkern.nn as dnn
from dlkern.kernels.numba import _jit
assert _jit.BLAS == "openblas", _jit.BLAS
torch.manual_seed(0)
ref = torch.nn.LSTM(5, 6, bidirectional=True, proj_size=2).double()
mod = dnn.LSTM(5, 6, bidirectional=True, proj_size=2).double()
mod.load_state_dict(ref.state_dict())
x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
a = mod(x)[0]; ga, = torch.autograd.grad(a.sum(), x)
b = ref(x)[0]; gb, = torch.autograd.grad(b.sum(), x)
assert (a - b).abs().max() < 1e-12 and (ga - gb).abs().max() < 1e-12
print("ok")
"""
    from helpers import run_isolated

    monkeypatch.setenv("DLKERN_BLAS", "openblas")
    rc, out = run_isolated(code)
    assert rc == 0 and "ok" in out, out[-3000:]


def test_concurrent_python_threads():
    """Two Python threads running layers at once get the numbers each gets alone."""
    import threading

    torch.manual_seed(12)
    mods = [dnn.GRU(INPUT, HIDDEN, bidirectional=True), dnn.LSTM(INPUT, HIDDEN, num_layers=2)]
    xs = [torch.randn(SEQ, BATCH, INPUT) for _ in mods]
    with torch.no_grad():
        alone = [m(x)[0] for m, x in zip(mods, xs)]
    results = [[None] * 5 for _ in mods]

    def work(k):
        with torch.no_grad():
            for r in range(5):
                results[k][r] = mods[k](xs[k])[0]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(mods))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, got in enumerate(results):
        assert all(torch.equal(g, alone[k]) for g in got)


@pytest.mark.parametrize("mode", MODES)
def test_nan_and_inf_propagate_as_torch(mode):
    """NaN and +-inf in the input and the initial state reach the same outputs as in torch's."""
    torch.manual_seed(13)
    ref = TORCH_LAYER[mode](INPUT, HIDDEN, bidirectional=True).double()
    mod = DL_LAYER[mode](INPUT, HIDDEN, bidirectional=True).double()
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(SEQ, BATCH, INPUT, dtype=torch.float64)
    x[2, 0, 1] = float("nan")
    x[4, 1, 0] = float("inf")
    x[1, 2, 2] = -float("inf")
    h0 = torch.randn(2, BATCH, HIDDEN, dtype=torch.float64)
    h0[0, 3, 0] = float("inf")
    hx = (h0, torch.randn_like(h0)) if mode == "lstm" else h0
    with torch.no_grad():
        got, want = _flatten_out(mode, mod(x, hx), False), _flatten_out(mode, ref(x, hx), False)
    for a, e in zip(got, want):
        assert torch.equal(a.isnan(), e.isnan()) and torch.equal(a.isinf(), e.isinf())
        finite = e.isfinite()
        assert_close(a[finite], e[finite], SEQ * (INPUT + HIDDEN))
