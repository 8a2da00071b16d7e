"""dlkern's Triton LSTM/GRU kernels against torch (float64 reference): layers (every direction,
layer, packed or padded), cells, forward outputs and states and every gradient.

On a GPU these run on CUDA in float32, float16 and bfloat16; elsewhere through Triton's
interpreter in float32 on tiny shapes (it is slow). ``test_compiles_for_h100`` compiles every
kernel for sm_90 in a fresh process without the interpreter.
"""
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import dlkern.functional as DF
import dlkern.nn as dnn
import rnn_reference
from helpers import TRITON_DTYPES, assert_close, check_against_torch, make_tensor, run_isolated

_P = functools.partial
TORCH_LAYER = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU,
               "rnn_tanh": _P(torch.nn.RNN, nonlinearity="tanh"),
               "rnn_relu": _P(torch.nn.RNN, nonlinearity="relu")}
DL_LAYER = {"lstm": dnn.LSTM, "gru": dnn.GRU, "rnn_tanh": _P(dnn.RNN, nonlinearity="tanh"),
            "rnn_relu": _P(dnn.RNN, nonlinearity="relu")}
TORCH_CELL = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell,
              "rnn_tanh": _P(torch.nn.RNNCell, nonlinearity="tanh")}
DL_CELL = {"lstm": dnn.LSTMCell, "gru": dnn.GRUCell,
           "rnn_tanh": _P(dnn.RNNCell, nonlinearity="tanh")}
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


@pytest.fixture(autouse=True)
def exact_float32(monkeypatch):
    """float32 follows torch's TF32 switches (cuDNN's for layers, matmul's for cells): off here,
    so float32 is checked at full precision (the TF32 variant is compiled by the AOT test)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    matmul = torch.backends.cuda.matmul  # a settings object: set and restore, not monkeypatch
    saved = matmul.allow_tf32
    matmul.allow_tf32 = False
    yield
    matmul.allow_tf32 = saved


# One layer configuration per case: every parameter kind at least once. lengths: None = a padded
# batch (every step B rows); a list = a PackedSequence of those lengths (unsorted: torch permutes
# the batch, hx and the final states).
LAYERS = [
    dict(mode="lstm", inp=5, hid=6, layers=2, bidir=True, batch_first=True, proj=3, hx=True,
         bias=True, seq=5, batch=3, lengths=[4, 5, 2]),
    dict(mode="gru", inp=5, hid=6, layers=2, bidir=True, batch_first=False, proj=0, hx=True,
         bias=True, seq=6, batch=3, lengths=[3, 6, 6]),
    dict(mode="lstm", inp=4, hid=7, layers=1, bidir=False, batch_first=True, proj=0, hx=False,
         bias=False, seq=4, batch=2, lengths=None),
    dict(mode="gru", inp=3, hid=5, layers=1, bidir=True, batch_first=True, proj=0, hx=False,
         bias=False, seq=4, batch=3, lengths=None),
    dict(mode="lstm", inp=5, hid=8, layers=2, bidir=False, batch_first=False, proj=5, hx=True,
         bias=True, seq=3, batch=3, lengths=None),
    dict(mode="lstm", inp=2, hid=4, layers=1, bidir=True, batch_first=False, proj=0, hx=True,
         bias=True, seq=6, batch=1, lengths=None),
    # Larger than one tile of every loop (batch tiles of 16, unit blocks and K tiles of 32): W_hh
    # streamed tile by tile (stream=True), and the same LSTM with W_hh resident (one 64 tile).
    dict(mode="lstm", inp=35, hid=40, layers=1, bidir=True, batch_first=False, proj=33, hx=True,
         bias=True, seq=3, batch=17, lengths=None, stream=True),
    dict(mode="lstm", inp=35, hid=40, layers=1, bidir=True, batch_first=False, proj=33, hx=True,
         bias=True, seq=3, batch=17, lengths=None),
    dict(mode="gru", inp=33, hid=36, layers=1, bidir=True, batch_first=True, proj=0, hx=True,
         bias=True, seq=3, batch=17, lengths=[3] * 9 + [2] * 5 + [1] * 3, stream=True),
    dict(mode="rnn_tanh", inp=5, hid=6, layers=2, bidir=True, batch_first=False, proj=0, hx=True,
         bias=True, seq=4, batch=3, lengths=[2, 4, 3]),
    dict(mode="rnn_relu", inp=3, hid=5, layers=1, bidir=False, batch_first=True, proj=0, hx=False,
         bias=False, seq=4, batch=2, lengths=None),
]


def _layer_id(cfg):
    keys = ("layers", "bidir", "batch_first", "proj", "hx", "bias", "lengths", "stream")
    flags = "-".join(f"{k}={cfg[k]}" for k in keys if cfg.get(k))
    return f"{cfg['mode']}-{flags}-H{cfg['hid']}"


def _flatten(mode, out, packed):
    y, state = out
    if packed:
        y = pad_packed_sequence(y, batch_first=False)[0]
    return [y] + (list(state) if mode == "lstm" else [state])


@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("cfg", LAYERS, ids=_layer_id)
def test_layer(cfg, dtype, triton_device, monkeypatch):
    mode = cfg["mode"]
    if cfg.get("stream"):  # no layer is small enough to keep W_hh resident, and every launch
        # goes through its autotuner (small problems otherwise take the first configuration)
        from dlkern.kernels.triton import rnn as triton_rnn
        from dlkern.kernels.triton import rnn_common
        monkeypatch.setattr(triton_rnn, "RESIDENT_UNITS", 0)
        monkeypatch.setattr(rnn_common, "TUNE_LOOP", 0)
        monkeypatch.setattr(rnn_common, "TUNE_GEMM", 0)
    torch.manual_seed(0)
    kw = dict(num_layers=cfg["layers"], bidirectional=cfg["bidir"], batch_first=cfg["batch_first"],
              bias=cfg["bias"])
    if cfg["proj"]:
        kw["proj_size"] = cfg["proj"]
    ref = TORCH_LAYER[mode](cfg["inp"], cfg["hid"], **kw).double()
    mod = DL_LAYER[mode](cfg["inp"], cfg["hid"], **kw)
    mod.load_state_dict(ref.state_dict())
    mod.to(device=triton_device, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    seq, batch = cfg["seq"], cfg["batch"]
    shape = (batch, seq, cfg["inp"]) if cfg["batch_first"] else (seq, batch, cfg["inp"])
    leaves = [make_tensor(shape, dtype, generator=g)]
    if cfg["hx"]:
        n = cfg["layers"] * (2 if cfg["bidir"] else 1)
        leaves.append(make_tensor((n, batch, cfg["proj"] or cfg["hid"]), dtype, generator=g))
        if mode == "lstm":
            leaves.append(make_tensor((n, batch, cfg["hid"]), dtype, generator=g))
    before = [t.clone() for t in leaves]
    leaves = [t.to(triton_device).requires_grad_() for t in leaves]
    leaves64 = [t.detach().cpu().double().requires_grad_() for t in leaves]

    def call(module, tensors):
        x, state = tensors[0], None
        if len(tensors) > 1:
            state = tuple(tensors[1:]) if mode == "lstm" else tensors[1]
        packed = cfg["lengths"] is not None
        if packed:
            x = pack_padded_sequence(x, torch.tensor(cfg["lengths"]),
                                     batch_first=cfg["batch_first"], enforce_sorted=False)
        return _flatten(mode, module(x, state), packed)

    outs = call(mod, leaves)
    refs = call(ref, leaves64)
    red = seq * (cfg["inp"] + cfg["hid"]) * cfg["layers"]
    names = ["y", "h_n", "c_n"]
    for name, a, e in zip(names, outs, refs):
        assert a.dtype == dtype and a.device.type == triton_device
        assert_close(a.cpu(), e, red, name)
    g = torch.Generator().manual_seed(5)
    grads = [make_tensor(tuple(o.shape), torch.float64, generator=g) for o in outs]
    if cfg["lengths"] is not None:  # padding positions carry no gradient in either
        grads[0] = grads[0] * (refs[0] != 0)
    got = torch.autograd.grad(outs, leaves + list(mod.parameters()),
                              [gr.to(device=triton_device, dtype=dtype) for gr in grads])
    want = torch.autograd.grad(refs, leaves64 + list(ref.parameters()), grads)
    grad_names = ["input", "h0", "c0"][:len(leaves)] + [n for n, _ in mod.named_parameters()]
    for name, a, e in zip(grad_names, got, want):
        assert_close(a.cpu(), e, red * batch, f"grad of {name}")
    for t, b in zip(leaves, before):
        assert torch.equal(t.detach().cpu(), b), "an input was modified"


@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_cell_functional(mode, batched, bias, dtype, triton_device):
    """Forward and every gradient through the custom op (a one-step layer: the fused cell kernel
    forward, the layer backward), then the lean no-grad path."""
    g = torch.Generator().manual_seed(2)
    inp, hid = 5, 7
    gh = GATES[mode] * hid
    lead = (3,) if batched else ()
    tensors = [make_tensor(lead + (inp,), dtype, generator=g),
               make_tensor(lead + (hid,), dtype, generator=g)]
    if mode == "lstm":
        tensors.append(make_tensor(lead + (hid,), dtype, generator=g))
    tensors += [make_tensor((gh, inp), dtype, generator=g) * 0.5,
                make_tensor((gh, hid), dtype, layout="noncontiguous", generator=g) * 0.5]
    if bias:
        tensors += [make_tensor((gh,), dtype, generator=g), make_tensor((gh,), dtype, generator=g)]
    tensors = [t.to(triton_device) for t in tensors]

    def run(functional, lstm_cell, gru_cell):
        def fn(*a):
            state = (a[1], a[2]) if mode == "lstm" else a[1]
            rest = a[3:] if mode == "lstm" else a[2:]
            if mode == "lstm":
                return torch.cat(lstm_cell(a[0], state, *rest), -1)
            return gru_cell(a[0], state, *rest)
        return fn

    other = f"{mode}_cell" if mode != "lstm" else "gru_cell"
    dl = run(DF, DF.lstm_cell, getattr(DF, other))

    def ref_fn(*a):  # torch's cell ops want a batch axis; test on CPU float64
        a = [t.cpu() for t in a]
        if not batched:
            a = [t[None] if k < (3 if mode == "lstm" else 2) else t for k, t in enumerate(a)]
        out = run(torch, torch.lstm_cell, getattr(torch, other))(*a)
        return out[0] if not batched else out

    def dl_cpu(*a):
        return dl(*a).cpu()

    red = inp + hid
    reductions = {"output": red, **{k: 3 * gh for k in range(len(tensors))}}
    check_against_torch(dl_cpu, ref_fn, tensors, reductions)
    with torch.no_grad():
        assert_close(dl(*tensors).cpu(), ref_fn(*[t.double() for t in tensors]), red,
                     "no_grad output")


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_cell_module(mode, triton_device):
    torch.manual_seed(3)
    ref = TORCH_CELL[mode](4, 6).double()
    mod = DL_CELL[mode](4, 6)
    mod.load_state_dict(ref.state_dict())
    mod.to(triton_device)
    x = torch.randn(2, 4)
    out = mod(x.to(triton_device))  # hx None: zeros
    want = ref(x.double())
    for a, e in zip(out if mode == "lstm" else [out], want if mode == "lstm" else [want]):
        assert_close(a.cpu(), e, 10)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_layer_empty_batch(mode, triton_device):
    mod = DL_LAYER[mode](3, 4, num_layers=2).to(triton_device)
    ref = TORCH_LAYER[mode](3, 4, num_layers=2)
    out, state = mod(torch.randn(5, 0, 3, device=triton_device))
    ref_out, ref_state = ref(torch.randn(5, 0, 3))
    assert out.shape == ref_out.shape
    pairs = zip(state, ref_state) if mode == "lstm" else [(state, ref_state)]
    assert all(a.shape == b.shape for a, b in pairs)


# Recurrent dropout, variational inter-layer dropout and weight drop in the Triton kernels, against
# the step-by-step reference with the same masks (tests/rnn_reference.py; tiny: the interpreter).
REGULARISED = [("lstm", dict(num_layers=2, bidirectional=True, proj_size=2), [3, 2]),
               ("gru", dict(num_layers=2, batch_first=True), None),
               ("rnn_tanh", dict(bidirectional=True), [3, 1])]


@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("mode, kw, lengths", REGULARISED, ids=[r[0] for r in REGULARISED])
def test_regularisers(mode, kw, lengths, dtype, triton_device, monkeypatch):
    inp, hid, seq, batch = 3, 4, 3, 2
    options = dict(recurrent_dropout=0.3, weight_dropout=0.25, dropout=0.4,
                   dropout_mode="variational")
    torch.manual_seed(0)
    mod = DL_LAYER[mode](inp, hid, **kw, **options).to(device=triton_device, dtype=dtype)
    ref = DL_LAYER[mode](inp, hid, **kw, **options).double()
    ref.load_state_dict({k: v.cpu().double() for k, v in mod.state_dict().items()})
    lstm = mode == "lstm"
    num = mod.num_layers * (2 if mod.bidirectional else 1)
    g = torch.Generator().manual_seed(1)
    x = make_tensor((seq, batch, inp), torch.float64, generator=g)
    h0 = make_tensor((num, batch, kw.get("proj_size") or hid), torch.float64, generator=g)
    c0 = make_tensor((num, batch, hid), torch.float64, generator=g)
    leaves = [t.to(device=triton_device, dtype=dtype).requires_grad_() for t in (x, h0, c0)]
    leaves64 = [t.clone().requires_grad_() for t in (x, h0, c0)]
    drawn = rnn_reference.record_masks(monkeypatch)
    inp_x = leaves[0].transpose(0, 1) if mod.batch_first else leaves[0]
    if lengths:
        inp_x = pack_padded_sequence(inp_x, torch.tensor(lengths), batch_first=mod.batch_first)
    y, state = mod(inp_x, (leaves[1], leaves[2]) if lstm else leaves[1])
    if lengths:
        y = pad_packed_sequence(y, batch_first=mod.batch_first)[0]
    y = y.transpose(0, 1) if mod.batch_first else y
    outs = [y] + (list(state) if lstm else [state])
    masks = rnn_reference.split_masks([m.cpu().double() for m in drawn], mod.num_layers, True,
                                      True, mod.num_layers > 1)
    refs = rnn_reference.run(mode, ref, leaves64[0], leaves64[1], leaves64[2] if lstm else None,
                             masks, lengths)
    refs = [r for r in refs if r is not None]
    red = seq * (inp + hid) * mod.num_layers
    for k, (a, e) in enumerate(zip(outs, refs)):
        assert_close(a.cpu(), e, red, f"output {k}")
    grads = [make_tensor(tuple(o.shape), torch.float64, generator=g) for o in refs]
    used = leaves[:3 if lstm else 2]
    got = torch.autograd.grad(outs, used + list(mod.parameters()),
                              [gr.to(device=triton_device, dtype=dtype) for gr in grads])
    want = torch.autograd.grad(refs, leaves64[:len(used)] + list(ref.parameters()), grads)
    for name, a, e in zip(["x", "h0", "c0"][:len(used)] + [n for n, _ in mod.named_parameters()],
                          got, want):
        assert_close(a.cpu(), e, red * batch, f"grad of {name}")


_AOT = r'''
import os, sys
os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, TESTS)
import torch
from triton_aot import compile_for_h100, H100_SHARED_BYTES
from dlkern.kernels.triton import rnn as R, rnn_backward as RB, rnn_common as C

f32 = lambda: torch.empty(8, dtype=torch.float32)
i32 = torch.empty(8, dtype=torch.int32)
worst = 0
count = 0
calls = 0

def build(kernel, args, every_config, **constexprs):
    """Compile (the share of this process: every PARTS-th call, from PART)."""
    global worst, count, calls
    calls += 1
    if calls % PARTS != PART:
        return
    if not every_config and hasattr(kernel, "configs"):  # the first configuration only
        cfg = kernel.configs[0]
        constexprs = dict(constexprs, **cfg.kwargs)
        kernel = kernel.fn
    for k in compile_for_h100(kernel, args, **constexprs):
        count += 1
        worst = max(worst, k.metadata.shared)
        assert k.metadata.shared <= H100_SHARED_BYTES, (kernel, k.metadata.shared)

# float32 tiles use the most shared memory: every configuration there; float16 every variant with
# the first configuration; bfloat16 and TF32 the main variants (compiling costs ~0.7 s a kernel).
for dtype, prec in ((torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float16, "ieee"),
                    (torch.bfloat16, "ieee")):
    t = lambda: torch.empty(8, dtype=dtype)
    all_cfg = dtype == torch.float32 and prec == "ieee"
    variants = dtype == torch.float16 or all_cfg
    mm = [64, 64, 64] + [1, 64, 1] * 3 + [64]
    # forward projection (data x data -> float32), weight gradients (float32 x data -> data)
    build(C.matmul_kernel, [t(), t(), f32(), f32()] + mm, all_cfg, HAS_BIAS=True, PRECISION=prec)
    if variants:
        build(C.matmul_kernel, [f32(), t(), t(), f32()] + mm, False, HAS_BIAS=False, PRECISION=prec)
        build(C.matmul_kernel, [f32(), f32(), t(), f32()] + mm, False, HAS_BIAS=False,
              PRECISION=prec)
    if prec == "tf32":
        build(R.lstm_forward_kernel, [f32(), t(), t(), t(), t(), t(), i32, i32, t(), t(), t(),
              f32(), f32(), 16, 32, 64, 48, 2], False, HAS_PROJ=True, PACKED=True,
              PRECISION=prec, RESIDENT=False, HAS_RMASK=True)
        build(R.cell_forward_kernel, [t(), t(), t(), t(), t(), t(), t(), t(), t(), t(), f32(),
              f32(), 8, 128, 128, 128, 128, 128], False, IS_LSTM=True, HAS_BIAS=True,
              SAVE=False, PRECISION=prec, **R.RNN["cell"][0].kwargs)
        continue
    for kernel, args in ((R.lstm_forward_resident, [f32(), t(), t(), t(), t(), t(), i32, i32, t(),
                          t(), t(), f32(), f32(), 16, 32, 64, 48, 2]),
                         (R.gru_forward_resident, [f32(), t(), f32(), t(), t(), i32, i32, t(),
                          t(), f32(), f32(), 16, 32, 64, 2])):
        extra = dict(HAS_PROJ=True) if kernel is R.lstm_forward_resident else dict(HAS_BIAS=True)
        build(kernel, args, all_cfg, PACKED=True, PRECISION=prec, RESIDENT=True, HAS_RMASK=False,
              **extra)
    for proj in ((True, False) if variants else (True,)):
        build(R.lstm_forward_kernel, [f32(), t(), t(), t(), t(), t(), i32, i32, t(), t(), t(),
              f32(), f32(), 16, 32, 64, 48 if proj else 64, 2], all_cfg and proj, HAS_PROJ=proj,
              PACKED=proj, PRECISION=prec, RESIDENT=False, HAS_RMASK=not proj)
        build(RB.lstm_backward_kernel, [t(), t(), t(), t(), t(), i32, i32, t(), f32(), f32(), t(),
              t(), t(), f32(), t(), f32(), f32(), f32(), t(), t(), 16, 32, 64,
              48 if proj else 64, 2], all_cfg and proj, HAS_PROJ=proj, PACKED=proj,
              PRECISION=prec, HAS_RMASK=not proj)
    build(R.gru_forward_kernel, [f32(), t(), f32(), t(), t(), i32, i32, t(), t(), f32(), f32(),
          16, 32, 64, 2], all_cfg, HAS_BIAS=True, PACKED=True, PRECISION=prec, RESIDENT=False,
          HAS_RMASK=True)
    build(RB.gru_backward_kernel, [t(), t(), t(), i32, i32, t(), f32(), f32(), t(), t(), f32(),
          f32(), t(), f32(), f32(), t(), 16, 32, 64, 2], all_cfg, PACKED=False, PRECISION=prec,
          HAS_RMASK=True)
    for relu in (False, True):
        build(R.vanilla_forward_kernel, [f32(), t(), t(), t(), i32, i32, t(), t(), f32(),
              16, 32, 64, 2], False, RELU=relu, PACKED=True, PRECISION=prec,
              HAS_RMASK=relu)
        build(RB.vanilla_backward_kernel, [t(), t(), t(), i32, i32, t(), f32(), t(), t(), f32(),
              t(), f32(), t(), 16, 32, 64, 2], False, RELU=relu, PACKED=relu,
              PRECISION=prec, HAS_RMASK=not relu)
    cell = R.RNN["cell"][0]
    for lstm in (True, False):
        build(R.cell_forward_kernel, [t(), t(), t(), t(), t(), t(), t(), t(), t(), t(), f32(),
              f32(), 8, 128, 128, 128, 128, 128], False, IS_LSTM=lstm, HAS_BIAS=True,
              SAVE=lstm, PRECISION=prec, **cell.kwargs)
    build(C.column_sums_kernel, [f32(), t(), 64, 64, 64, 128, 64], False,
          **R.RNN["column_sums"][0].kwargs)
print("compiled", count, "kernels; most shared memory", worst, "bytes")
'''


@pytest.mark.slow
def test_compiles_for_h100():
    """Every kernel compiles for sm_90 (the interpreter accepts code the compiler rejects), every
    autotune configuration once, each within an H100's shared memory. Two processes share the
    work (CI has two cores)."""
    pytest.importorskip("triton")
    tests = repr(os.path.dirname(os.path.abspath(__file__)))
    parts = 2
    codes = [f"PART, PARTS = {k}, {parts}\n" + _AOT.replace("TESTS", tests) for k in range(parts)]
    with ThreadPoolExecutor(parts) as pool:
        results = list(pool.map(lambda code: run_isolated(code, timeout=600), codes))
    for rc, out in results:
        assert rc == 0, out[-4000:]
        assert "compiled" in out


def test_cell_under_torch_compile(triton_device):
    """The custom op path under torch.compile(fullgraph=True): its fake implementation knows the
    Triton workspaces' shapes and dtypes. (aot_eager: the graph, fake tensors and autograd are
    what is tested; inductor's code generation would only cost time here.)"""
    torch.manual_seed(4)
    x = torch.randn(3, 5, requires_grad=True)
    h, c = torch.randn(3, 6), torch.randn(3, 6)
    w_ih, w_hh, b = torch.randn(24, 5), torch.randn(24, 6), torch.randn(24)
    dev = [t.to(triton_device) for t in (h, c, w_ih, w_hh, b)]
    xd = x.detach().to(triton_device).requires_grad_()
    def step(x):
        return torch.cat(DF.lstm_cell(x, (dev[0], dev[1]), dev[2], dev[3], dev[4], dev[4]), -1)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out = compiled(xd)
    x64 = x.detach().double().requires_grad_()
    want = torch.cat(torch.lstm_cell(x64, (h.double(), c.double()), w_ih.double(), w_hh.double(),
                                     b.double(), b.double()), -1)
    assert_close(out.cpu(), want, 11)
    out.sum().backward()
    want.sum().backward()
    assert_close(xd.grad.cpu(), x64.grad, 3 * 24)
