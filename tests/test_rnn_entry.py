"""The vanilla RNN through dlkern's other entry points: patch swaps nn.RNN / nn.RNNCell, enable()
routes aten::rnn_tanh / aten::rnn_relu (padded and packed) to the same driver, and the layer and
its cells work under torch.compile(fullgraph=True)."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import dlkern
import dlkern.nn as dnn
import importlib

E = importlib.import_module("dlkern.enable")
from dlkern.kernels.numba import rnn as kernels
from helpers import assert_close, float64_copy, make_tensor


@pytest.fixture(autouse=True)
def fresh_counts():
    E.reset_counts()
    yield


def _spy(monkeypatch):
    calls = []
    real = kernels.layer_forward

    def spy(mode, *args):
        calls.append(mode)
        return real(mode, *args)

    monkeypatch.setattr(kernels, "layer_forward", spy)
    return calls


def test_patch_swaps_rnn_and_rnn_cell(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.ModuleDict(dict(rnn=torch.nn.RNN(3, 4, nonlinearity="relu"),
                                     cell=torch.nn.RNNCell(3, 4)))
    params = list(model.parameters())
    x = make_tensor((5, 2, 3), torch.float64)
    model.double()
    want = (model["rnn"](x)[0], model["cell"](x[0]))
    dlkern.patch(model)
    assert type(model["rnn"]) is dnn.RNN and type(model["cell"]) is dnn.RNNCell
    assert list(model.parameters()) == params
    calls = _spy(monkeypatch)
    got = (model["rnn"](x)[0], model["cell"](x[0]))
    assert calls == ["rnn_relu", "rnn_tanh"]  # parameters want gradients: the cell is a layer step
    for a, e in zip(got, want):
        assert_close(a, e, 20)
    dlkern.unpatch(model)
    assert type(model["rnn"]) is torch.nn.RNN


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("packed", [False, True])
def test_enable_routes_rnn(monkeypatch, nonlinearity, packed):
    torch.manual_seed(1)
    module = torch.nn.RNN(5, 6, num_layers=2, bidirectional=True, nonlinearity=nonlinearity)
    ref = torch.nn.RNN(5, 6, num_layers=2, bidirectional=True, nonlinearity=nonlinearity).double()
    ref.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    x = make_tensor((7, 4, 5), torch.float32, requires_grad=True)
    x64 = float64_copy(x)

    def run(m, x):
        inp = pack_padded_sequence(x, [7, 5, 5, 2]) if packed else x
        out, h = m(inp)
        return (out.data if packed else out), h

    refs = run(ref, x64)
    calls = _spy(monkeypatch)
    with dlkern.enabled():
        outs = run(module, x)
        sum(o.sum() * (k + 1) for k, o in enumerate(outs)).backward()
    op = f"rnn_{nonlinearity}." + ("data" if packed else "input")
    assert E.counts()["routed"] == {op: 1} and calls == [f"rnn_{nonlinearity}"] * 2
    sum(r.sum() * (k + 1) for k, r in enumerate(refs)).backward()
    for k, (o, r) in enumerate(zip(outs, refs)):
        assert_close(o, r, 60, f"output {k}")
    assert_close(x.grad, x64.grad, 600, "grad of input")
    for (name, p), q in zip(module.named_parameters(), ref.parameters()):
        assert_close(p.grad, q.grad, 600, f"grad of {name}")


def test_enable_passes_bad_rnn_arguments_to_torch():
    x = make_tensor((3, 2, 4), torch.float32)
    params = [make_tensor((5, 4), torch.float32)] * 3  # wrong shapes: torch's error, not dlkern's

    def call():
        return torch.rnn_tanh(x, torch.zeros(1, 2, 5), params, False, 1, 0.0, False, False, False)
    with pytest.raises(RuntimeError) as expected:
        call()
    with dlkern.enabled():
        with pytest.raises(type(expected.value)):
            call()
    assert E.counts()["passed"] == {"rnn_tanh.input": 1}


def test_rnn_and_cell_under_torch_compile():
    torch.manual_seed(2)
    rnn = dnn.RNN(3, 4, bidirectional=True, nonlinearity="relu")
    cell = dnn.RNNCell(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)

    def step(x):
        y, h = rnn(x)
        return y.sum() + h.sum() + cell(x[0]).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    with torch._dynamo.config.patch(allow_rnn=True):
        out = compiled(x)
    out.backward()
    x64 = float64_copy(x)
    ref_rnn = torch.nn.RNN(3, 4, bidirectional=True, nonlinearity="relu").double()
    ref_rnn.load_state_dict({k: v.double() for k, v in rnn.state_dict().items()})
    ref_cell = torch.nn.RNNCell(3, 4).double()
    ref_cell.load_state_dict({k: v.double() for k, v in cell.state_dict().items()})
    y, h = ref_rnn(x64)
    want = y.sum() + h.sum() + ref_cell(x64[0]).sum()
    want.backward()
    assert_close(out, want, 40)
    assert_close(x.grad, x64.grad, 400)
