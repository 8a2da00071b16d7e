"""Benchmark shapes of the LSTM/GRU family (issue targets as Case.target)."""
import torch

import dlkern.nn as dnn
from dlkern.benchmark import Case

OP = "rnn"
_GATES = {"LSTM": 4, "GRU": 3, "LSTMCell": 4, "GRUCell": 3}


def _twins(name, *args, **kwargs):
    """A torch module and its dlkern twin with the same (seeded) parameters."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(*args, **kwargs)
    mod = getattr(dnn, name)(*args, **kwargs)
    mod.load_state_dict(ref.state_dict())
    return ref, mod


def _layer_case(name, batch, steps, inp, hidden, layers=1, bidirectional=False, target=None,
                target_fwd_bwd=None):
    ref, mod = _twins(name, inp, hidden, num_layers=layers, bidirectional=bidirectional,
                      batch_first=True)
    dirs = 2 if bidirectional else 1
    flops = 0.0
    for layer in range(layers):
        width = inp if layer == 0 else dirs * hidden
        flops += 2.0 * steps * batch * _GATES[name] * hidden * (width + hidden) * dirs

    def build(dtype, requires_grad):
        g = torch.Generator().manual_seed(0)
        ref.to(dtype)
        mod.to(dtype)
        x = torch.randn(batch, steps, inp, generator=g, dtype=dtype).requires_grad_(requires_grad)
        return (x,), {}

    label = f"{name} B{batch} T{steps} I{inp} H{hidden}" + (f" L{layers} bi" if bidirectional else "")
    return Case(label, OP, build, lambda x: ref(x)[0], lambda x: mod(x)[0], flops, target,
                target_fwd_bwd)


def _cell_case(name, batch, hidden, target=None):
    ref, mod = _twins(name, hidden, hidden)
    lstm = name == "LSTMCell"

    def build(dtype, requires_grad):
        g = torch.Generator().manual_seed(0)
        ref.to(dtype)
        mod.to(dtype)
        ts = [torch.randn(batch, hidden, generator=g, dtype=dtype).requires_grad_(requires_grad)
              for _ in range(3 if lstm else 2)]
        return tuple(ts), {}

    if lstm:
        torch_fn = lambda x, h, c: ref(x, (h, c))[0]  # noqa: E731
        dlkern_fn = lambda x, h, c: mod(x, (h, c))[0]  # noqa: E731
    else:
        torch_fn = lambda x, h: ref(x, h)  # noqa: E731
        dlkern_fn = lambda x, h: mod(x, h)  # noqa: E731
    flops = 2.0 * batch * _GATES[name] * hidden * 2 * hidden
    return Case(f"{name} B{batch} H{hidden} one step", OP, build, torch_fn, dlkern_fn, flops,
                target)


CASES = [
    _layer_case("LSTM", 32, 128, 256, 256, target=1.5, target_fwd_bwd=1.0),
    _layer_case("GRU", 32, 128, 256, 256, target=3.0, target_fwd_bwd=2.0),
    _layer_case("LSTM", 1, 512, 64, 64, target=2.0),
    _layer_case("GRU", 1, 512, 64, 64, target=5.0),
    _layer_case("LSTM", 64, 64, 512, 1024, target=1.0),
    _layer_case("GRU", 64, 64, 512, 1024, target=1.8),
    _layer_case("LSTM", 16, 100, 128, 128, layers=2, bidirectional=True, target=1.5),
    _layer_case("GRU", 16, 100, 128, 128, layers=2, bidirectional=True, target=3.0),
    _cell_case("LSTMCell", 8, 128, target=2.0),
    _cell_case("GRUCell", 8, 128, target=2.0),
]
