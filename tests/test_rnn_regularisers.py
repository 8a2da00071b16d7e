"""dlkern's recurrent regularisers (recurrent_dropout, dropout_mode="variational", weight_dropout)
against a plain step-by-step torch loop with the same masks (tests/rnn_reference.py): forward and
every gradient, float64 and float32, layers, directions, batch_first, packed; p = 0 and eval mode
are the plain layer, the mask is the same at every step, the seed decides the masks."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import dlkern.nn as dnn
import rnn_reference
from helpers import assert_close, make_tensor

INPUT, HIDDEN, PROJ, SEQ, BATCH = 3, 4, 2, 5, 3
LENGTHS = [5, 3, 2]
MODES = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def make_module(mode, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    if mode.startswith("rnn_"):
        return dnn.RNN(INPUT, HIDDEN, nonlinearity=mode[4:], **kw).to(dtype)
    return (dnn.LSTM if mode == "lstm" else dnn.GRU)(INPUT, HIDDEN, **kw).to(dtype)


# (mode, num_layers, bidirectional, batch_first, packed, proj, dtype): every option at least once
CASES = [
    ("lstm", 2, True, False, False, False, torch.float64),
    ("lstm", 2, False, True, True, True, torch.float64),
    ("lstm", 1, True, False, True, False, torch.float32),
    ("gru", 2, True, True, False, False, torch.float64),
    ("gru", 1, False, False, True, False, torch.float32),
    ("rnn_tanh", 2, True, False, True, False, torch.float64),
    ("rnn_relu", 2, False, True, False, False, torch.float32),
]


def _id(case):
    mode, layers, bidir, bf, packed, proj, dtype = case
    return (f"{mode}-L{layers}" + ("-bi" if bidir else "") + ("-bf" if bf else "")
            + ("-packed" if packed else "") + ("-proj" if proj else "") + f"-{str(dtype)[6:]}")


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_against_step_loop(case, monkeypatch):
    mode, layers, bidir, batch_first, packed, proj, dtype = case
    kw = dict(num_layers=layers, bidirectional=bidir, batch_first=batch_first, dropout=0.4,
              dropout_mode="variational", recurrent_dropout=0.3, weight_dropout=0.25)
    if proj:
        kw["proj_size"] = PROJ
    mod = make_module(mode, dtype, **kw)
    num_dir = 2 if bidir else 1
    real = PROJ if proj else HIDDEN
    g = torch.Generator().manual_seed(1)
    x = make_tensor((SEQ, BATCH, INPUT), dtype, generator=g).requires_grad_()
    h0 = make_tensor((layers * num_dir, BATCH, real), dtype, generator=g).requires_grad_()
    c0 = make_tensor((layers * num_dir, BATCH, HIDDEN), dtype, generator=g).requires_grad_()
    lstm = mode == "lstm"
    params = list(mod.parameters())
    before = [p.detach().clone() for p in params]

    drawn = rnn_reference.record_masks(monkeypatch)
    inp = x.transpose(0, 1) if batch_first else x
    if packed:
        inp = pack_padded_sequence(inp, torch.tensor(LENGTHS), batch_first=batch_first)
    y, state = mod(inp, (h0, c0) if lstm else h0)
    if packed:
        y = pad_packed_sequence(y, batch_first=batch_first)[0]
    y = y.transpose(0, 1) if batch_first else y
    outs = [y] + (list(state) if lstm else [state])
    masks = rnn_reference.split_masks(drawn, layers, True, True, layers > 1)

    ref64 = make_module(mode, torch.float64, **kw)
    ref64.load_state_dict({k: v.double() for k, v in mod.state_dict().items()})
    leaves64 = [t.detach().double().requires_grad_() for t in (x, h0, c0)]
    masks64 = [tuple(None if m is None else m.double() for m in ms) for ms in masks]
    refs = rnn_reference.run(mode, ref64, leaves64[0], leaves64[1], leaves64[2] if lstm else None,
                             masks64, LENGTHS if packed else None)
    refs = [r for r in refs if r is not None]
    red = SEQ * (INPUT + HIDDEN) * layers
    for k, (a, e) in enumerate(zip(outs, refs)):
        assert_close(a, e, red, f"output {k}")
    g = torch.Generator().manual_seed(2)
    grads = [make_tensor(tuple(o.shape), torch.float64, generator=g) for o in outs]
    leaves = [x, h0] + ([c0] if lstm else [])
    got = torch.autograd.grad(outs, leaves + params, [gr.to(dtype) for gr in grads])
    want = torch.autograd.grad(refs, leaves64[:len(leaves)] + list(ref64.parameters()), grads)
    names = ["input", "h0", "c0"][:len(leaves)] + [n for n, _ in mod.named_parameters()]
    for name, a, e in zip(names, got, want):
        assert_close(a, e, red * BATCH, f"grad of {name}")
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b), "weight drop modified a parameter"


@pytest.mark.parametrize("mode", MODES)
def test_p0_and_eval_are_the_plain_layer(mode):
    kw = dict(num_layers=2, bidirectional=True, dropout=0.5)
    plain = make_module(mode, **kw)
    x = make_tensor((SEQ, BATCH, INPUT), torch.float64)
    zero = make_module(mode, recurrent_dropout=0.0, weight_dropout=0.0, **kw)
    torch.manual_seed(3)
    expected = plain(x)[0]
    torch.manual_seed(3)
    assert torch.equal(zero(x)[0], expected), "p = 0 must be bit-identical to the plain layer"
    on = make_module(mode, recurrent_dropout=0.5, weight_dropout=0.5,
                     dropout_mode="variational", **kw)
    plain.eval()
    on.eval()
    assert torch.equal(on(x)[0], plain(x)[0]), "eval mode never drops"


def test_mask_is_the_same_at_every_step():
    """relu RNN with W_ih = 0, no bias, W_hh = I, h0 = 1: h_t = h_{t-1} * m, so y_t = m^(t+1)
    holds for one mask m per sequence and fails for a fresh mask per step."""
    mod = dnn.RNN(2, 6, nonlinearity="relu", bias=False, recurrent_dropout=0.5).double()
    with torch.no_grad():
        mod.weight_ih_l0.zero_()
        mod.weight_hh_l0.copy_(torch.eye(6))
    torch.manual_seed(4)
    y, _ = mod(torch.randn(8, 5, 2, dtype=torch.float64), torch.ones(1, 5, 6, dtype=torch.float64))
    m = y[0]
    assert set(m.unique().tolist()) <= {0.0, 2.0} and 0 < int((m == 0).sum()) < m.numel()
    for t in range(8):
        assert torch.equal(y[t], m ** (t + 1)), f"step {t} used another mask"


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_same_seed_same_result(mode):
    mod = make_module(mode, num_layers=2, dropout=0.3, recurrent_dropout=0.3, weight_dropout=0.3)
    x = make_tensor((SEQ, BATCH, INPUT), torch.float64)
    torch.manual_seed(5)
    a = mod(x)[0]
    torch.manual_seed(5)
    b = mod(x)[0]
    torch.manual_seed(6)
    c = mod(x)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_gradcheck(mode):
    mod = make_module(mode, bidirectional=True, recurrent_dropout=0.4, weight_dropout=0.3)
    names = [n for n, _ in mod.named_parameters()]
    x = torch.randn(3, 2, INPUT, dtype=torch.float64, requires_grad=True)

    def fn(x, *weights):
        torch.manual_seed(7)  # the same masks at every evaluation
        out, _ = torch.func.functional_call(mod, dict(zip(names, weights)), (x,))
        return out

    assert torch.autograd.gradcheck(fn, (x, *mod.parameters()), atol=1e-8)


def test_bad_options():
    with pytest.raises(ValueError):
        dnn.LSTM(3, 4, recurrent_dropout=1.5)
    with pytest.raises(ValueError):
        dnn.GRU(3, 4, weight_dropout=-0.1)
    with pytest.raises(ValueError):
        dnn.RNN(3, 4, dropout_mode="per-step")
    assert "recurrent_dropout=0.2" in repr(dnn.LSTM(3, 4, recurrent_dropout=0.2))
