"""Shared checks of whole models: which dlkern ops ran, and patched vs unpatched comparisons.

* ``dlkern_ops_called(fn)`` runs ``fn`` under a TorchDispatchMode and returns the set of
  ``torch.ops.dlkern.*`` operators that reached the dispatcher (plus "rnn_layer"/"rnn_cell" for
  the recurrent ops' eager paths, which skip the dispatcher), so a test proves dlkern's
  kernels ran instead of trusting that a swap or an override took effect.
* ``compare_models(reference, candidate, inputs, loss_fn)``: outputs and the gradient of every
  parameter of ``candidate`` against ``reference`` run in float64 (a deep copy), with the
  tolerance scaled by torch's own float32 error on the same model.
"""
import copy

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "dlkern":
            self.ops.add(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def dlkern_ops_called(fn):
    from dlkern.ops import rnn, rnn_layer

    recorder = _Recorder()
    # the recurrent ops' paths that skip the dispatcher: no gradient, or eager autograd
    lean = {(rnn_layer, "forward_arrays"): "rnn_layer", (rnn, "_cell_lean"): "rnn_cell"}
    originals = {key: getattr(*key) for key in lean}

    def spy(key):
        def call(*args, **kwargs):
            recorder.ops.add(lean[key])
            return originals[key](*args, **kwargs)
        return call

    try:
        for key in lean:
            setattr(*key, spy(key))
        with recorder:
            fn()
    finally:
        for key, original in originals.items():
            setattr(*key, original)
    return recorder.ops


def _to64(x):
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.detach().double()
    return x


def _error(a, b):
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def run_and_grads(model, inputs, loss_fn):
    """Output and {parameter name: gradient} of one forward/backward."""
    model.zero_grad(set_to_none=True)
    out = model(*inputs)
    loss_fn(out, inputs).backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()
                          if p.grad is not None}


def compare_models(reference, candidate, inputs, loss_fn, slack=4.0, around=None):
    """``candidate`` (float32) against ``reference`` in float64: output and every gradient within
    ``slack`` x torch's own float32 error (``reference`` itself, in float32) plus a tiny floor.
    ``around(fn)`` runs the candidate's forward/backward (say, inside ``dlkern.enabled()``);
    returns what it returns. The references run outside it."""
    ref64 = copy.deepcopy(reference).double()
    inputs64 = [_to64(x) for x in inputs]
    out64, grads64 = run_and_grads(ref64, inputs64, lambda out, _: loss_fn(out, inputs64))
    out32, grads32 = run_and_grads(reference, inputs, loss_fn)
    result = {}

    def candidate_run():
        result["run"] = run_and_grads(candidate, inputs, loss_fn)
    seen = (around or (lambda fn: fn()))(candidate_run)
    out, grads = result["run"]
    names = sorted(grads64)
    if sorted(grads) != names:
        raise AssertionError(f"gradients of {sorted(set(names) ^ set(grads))} differ in presence")
    pairs = [("output", out, out32, out64)] + [(f"grad of {n}", grads[n], grads32[n], grads64[n])
                                                for n in names]
    for what, got, torch32, want in pairs:
        scale = max(float(want.abs().max()), 1e-30) if want.numel() else 1.0
        allowed = slack * _error(torch32, want) + 1e-6 * scale
        err = _error(got, want)
        if not err <= allowed:
            raise AssertionError(f"{what}: error {err:.3e} vs float64 exceeds {allowed:.3e} "
                                 f"(torch float32: {_error(torch32, want):.3e}, scale {scale:.3g})")
    return seen


def loss_curve(model, inputs, loss_fn, steps=20, lr=0.05):
    """Losses of ``steps`` SGD steps (momentum 0.9) on a fixed batch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(*inputs), inputs)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
