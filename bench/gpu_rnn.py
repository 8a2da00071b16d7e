"""gpu_check section: LSTM, GRU and vanilla RNN layers and cells (kernels/triton/rnn.py).

check(ctx): outputs, final states and every gradient (input, h0, c0, every weight and bias) against
torch on float64 copies (CPU), in float32, float16 and bfloat16, on small shapes that run every
kernel: packed unsorted and padded batches, two layers, both directions, proj_size, several batch
tiles and unit blocks, and the fused cells.
time(ctx): against torch's cuDNN layers and its cell ops, same process, do_bench medians:

* LSTM float16 B64 T256 I256 H256, forward (target >= 1.0x) and forward+backward;
* GRU float16 B64 T256 I256 H256, forward (target >= 1.0x) and forward+backward;
* RNN (tanh) float16 B64 T256 I256 H256, forward (target >= 1.5x) and forward+backward;
* LSTMCell float32 B8 I128 H128, one step forward (target >= 1.5x).
"""
import functools

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import dlkern.nn as dnn
from gpu_common import CHECK_DTYPES, device

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


# (name, mode, input, hidden, constructor keywords, seq, batch, lengths or None for padded)
LAYER_CHECKS = [
    ("LSTM 2 layers bidir proj16 packed unsorted I24 H40 T9 B5", "lstm", 24, 40,
     dict(num_layers=2, bidirectional=True, proj_size=16, batch_first=True), 9, 5,
     [7, 9, 3, 9, 1]),
    ("GRU 2 layers bidir packed unsorted I24 H40 T9 B5", "gru", 24, 40,
     dict(num_layers=2, bidirectional=True), 9, 5, [2, 9, 9, 5, 6]),
    ("LSTM padded I72 H96 T12 B20", "lstm", 72, 96, dict(), 12, 20, None),
    ("GRU padded bidir no bias I72 H96 T12 B20", "gru", 72, 96,
     dict(bidirectional=True, bias=False), 12, 20, None),
    ("RNN relu 2 layers bidir packed unsorted I24 H40 T9 B5", "rnn_relu", 24, 40,
     dict(num_layers=2, bidirectional=True), 9, 5, [4, 9, 1, 9, 6]),
    ("RNN tanh padded I72 H96 T12 B20", "rnn_tanh", 72, 96, dict(), 12, 20, None),
]
CELL_CHECKS = [("LSTMCell I20 H33 B5", "lstm", 20, 33, 5), ("GRUCell I20 H33 B5", "gru", 20, 33, 5),
               ("RNNCell tanh I20 H33 B5", "rnn_tanh", 20, 33, 5),
               ("LSTMCell I128 H128 B8", "lstm", 128, 128, 8)]


def _randn(shape, g):
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _layer_case(ctx, name, mode, inp, hid, kw, seq, batch, lengths, dtype):
    torch.manual_seed(0)
    ref = TORCH_LAYER[mode](inp, hid, **kw).double()
    mods = {"dlkern": DL_LAYER[mode](inp, hid, **kw), "torch": TORCH_LAYER[mode](inp, hid, **kw)}
    for m in mods.values():
        m.load_state_dict(ref.state_dict())
        m.to(device(), dtype)
    g = torch.Generator().manual_seed(1)
    n = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    first = kw.get("batch_first", False)
    base = [_randn((batch, seq, inp) if first else (seq, batch, inp), g),
            _randn((n, batch, kw.get("proj_size", 0) or hid), g)]
    if mode == "lstm":
        base.append(_randn((n, batch, hid), g))

    def run(module, tensors):
        x = tensors[0]
        if lengths is not None:
            x = pack_padded_sequence(x, torch.tensor(lengths), batch_first=first,
                                     enforce_sorted=False)
        y, state = module(x, tuple(tensors[1:]) if mode == "lstm" else tensors[1])
        if lengths is not None:
            y = pad_packed_sequence(y, batch_first=first)[0]
        return [y] + (list(state) if mode == "lstm" else [state])

    ins64 = [t.clone().requires_grad_() for t in base]
    outs64 = run(ref, ins64)
    results = {}
    for who, m in mods.items():
        ins = [t.to(device(), dtype).requires_grad_() for t in base]
        try:
            results[who] = (ins, run(m, ins), m)
        except Exception:
            if who == "dlkern":
                raise
            results[who] = None  # torch has no such kernel (e.g. bfloat16 cuDNN RNN): floor only
    for k, what in enumerate(["y", "h_n", "c_n"][:len(outs64)]):
        same = results["torch"][1][k].cpu() if results["torch"] else None
        ctx.check(f"{name} {what}", dtype, results["dlkern"][1][k].cpu(), outs64[k], same)
    g = torch.Generator().manual_seed(2)
    grads = [_randn(tuple(o.shape), g) for o in outs64]
    if lengths is not None:
        grads[0] = grads[0] * (outs64[0] != 0)
    want = torch.autograd.grad(outs64, ins64 + list(ref.parameters()), grads)
    got = {}
    for who, r in results.items():
        if r is None:
            got[who] = None
            continue
        ins, outs, m = r
        got[who] = torch.autograd.grad(outs, ins + list(m.parameters()),
                                       [gr.to(device(), dtype) for gr in grads])
    names = ["input", "h0", "c0"][:len(base)] + [p for p, _ in ref.named_parameters()]
    for k, what in enumerate(names):
        same = got["torch"][k].cpu() if got["torch"] else None
        ctx.check(f"{name} grad {what}", dtype, got["dlkern"][k].cpu(), want[k], same)


def _cell_case(ctx, name, mode, inp, hid, batch, dtype):
    torch.manual_seed(3)
    ref = TORCH_CELL[mode](inp, hid).double()
    mods = {"dlkern": DL_CELL[mode](inp, hid), "torch": TORCH_CELL[mode](inp, hid)}
    for m in mods.values():
        m.load_state_dict(ref.state_dict())
        m.to(device(), dtype)
    g = torch.Generator().manual_seed(4)
    base = [_randn((batch, inp), g), _randn((batch, hid), g)]
    if mode == "lstm":
        base.append(_randn((batch, hid), g))

    def run(module, t):
        out = module(t[0], (t[1], t[2]) if mode == "lstm" else t[1])
        return list(out) if mode == "lstm" else [out]

    ins64 = [t.clone().requires_grad_() for t in base]
    outs64 = run(ref, ins64)
    res = {}
    for who, m in mods.items():
        ins = [t.to(device(), dtype).requires_grad_() for t in base]
        res[who] = (ins, run(m, ins), m)
    for k, what in enumerate(["h", "c"][:len(outs64)]):
        ctx.check(f"{name} {what}", dtype, res["dlkern"][1][k].cpu(), outs64[k],
                  res["torch"][1][k].cpu())
    with torch.no_grad():  # the lean path (no autograd) gives the same numbers
        lean = run(mods["dlkern"], [t.to(device(), dtype) for t in base])
    ctx.check(f"{name} no_grad h", dtype, lean[0].cpu(), outs64[0], res["torch"][1][0].cpu())
    g = torch.Generator().manual_seed(5)
    grads = [_randn(tuple(o.shape), g) for o in outs64]
    want = torch.autograd.grad(outs64, ins64 + list(ref.parameters()), grads)
    got = {who: torch.autograd.grad(outs, ins + list(m.parameters()),
                                    [gr.to(device(), dtype) for gr in grads])
           for who, (ins, outs, m) in res.items()}
    names = ["input", "h", "c"][:len(base)] + [p for p, _ in ref.named_parameters()]
    for k, what in enumerate(names):
        ctx.check(f"{name} grad {what}", dtype, got["dlkern"][k].cpu(), want[k],
                  got["torch"][k].cpu())


def check(ctx, dtypes=CHECK_DTYPES):
    for dtype in dtypes:
        for name, *case in LAYER_CHECKS:
            try:
                _layer_case(ctx, name, *case, dtype)
            except Exception as exc:  # a failing case is reported, the others still run
                ctx.check_failed(name, dtype, exc)
        for name, *case in CELL_CHECKS:
            try:
                _cell_case(ctx, name, *case, dtype)
            except Exception as exc:
                ctx.check_failed(name, dtype, exc)


# ---------------------------------------------------------------- timings


def _time_layer(ctx, mode, dtype, batch=64, seq=256, inp=256, hid=256, target="≥1.0x"):
    torch.manual_seed(0)
    ref = TORCH_LAYER[mode](inp, hid).to(device(), dtype)
    mod = DL_LAYER[mode](inp, hid).to(device(), dtype)
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(seq, batch, inp, device=device(), dtype=dtype)
    flops = 2 * seq * batch * GATES[mode] * hid * (inp + hid)
    name = f"{mode.upper()} B{batch} T{seq} I{inp} H{hid}"
    with torch.no_grad():
        ctx.time(name, dtype, "fwd", lambda: ref(x), lambda: mod(x), flops=flops, target=target)
    xg = x.clone().requires_grad_()
    dy = torch.randn(seq, batch, hid, device=device(), dtype=dtype)

    def fwd_bwd(module):
        def run():
            y, _ = module(xg)
            return torch.autograd.grad(y, [xg] + list(module.parameters()), dy)
        return run

    ctx.time(name, dtype, "fwd+bwd", fwd_bwd(ref), fwd_bwd(mod), flops=3 * flops)


def _time_cell(ctx, dtype=torch.float32, batch=8, inp=128, hid=128):
    torch.manual_seed(0)
    ref = torch.nn.LSTMCell(inp, hid).to(device(), dtype)
    mod = dnn.LSTMCell(inp, hid).to(device(), dtype)
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(batch, inp, device=device(), dtype=dtype)
    hx = (torch.randn(batch, hid, device=device(), dtype=dtype),
          torch.randn(batch, hid, device=device(), dtype=dtype))
    with torch.no_grad():
        ctx.time(f"LSTMCell B{batch} I{inp} H{hid} one step", dtype, "fwd", lambda: ref(x, hx),
                 lambda: mod(x, hx), flops=2 * batch * 4 * hid * (inp + hid), target="≥1.5x")


def time(ctx):
    _time_layer(ctx, "lstm", torch.float16)
    _time_layer(ctx, "gru", torch.float16)
    _time_layer(ctx, "rnn_tanh", torch.float16, target="≥1.5x")
    _time_cell(ctx)
