"""Running one Case in one mode: agreement with torch first, then the timing.

Modes: ``fwd`` (forward under no_grad; a whole model in eval mode), ``fwdbwd`` (forward and the
gradient of every input and parameter), ``train`` (a whole model's training step).

Every row is checked against torch before it is timed: dlkern's output (fwd) or every gradient
(fwdbwd, train) against torch's float32 result, with the tolerance of the test suite
(tests/helpers.py: 2e-6 * sqrt(reduction length) * max(1, |reference|) * 8, against a float64
reference) doubled, since torch's float32 result carries an error of its own. The reduction length
behind an element of a tensor is the row's multiply-adds over the tensor's size (a conv output
sums C_in/groups * taps products, a weight gradient N * output pixels), unless the row gives it.

dlkern runs strict (DLKERN_STRICT=1) for the whole benchmark, so a case that would silently fall
back to torch fails instead of timing torch against torch. A row that raises is reported with its
error, never dropped.
"""
import contextlib
import math
import os

import torch

from dlkern.benchmark.timing import measure_pair

# Per-element error per unit of sqrt(reduction length), float32 (tests/helpers.py TOLERANCE).
FLOAT32_TOLERANCE = 2e-6


def tolerance(reduction, scale):
    """Allowed max abs difference between dlkern's and torch's float32 results."""
    return 2 * FLOAT32_TOLERANCE * math.sqrt(max(1, reduction)) * max(1.0, scale) * 8


@contextlib.contextmanager
def strict():
    """DLKERN_STRICT=1 inside the block: a fallback to torch raises."""
    old = os.environ.get("DLKERN_STRICT")
    os.environ["DLKERN_STRICT"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["DLKERN_STRICT"]
        else:
            os.environ["DLKERN_STRICT"] = old


def _leaves(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def forward_call(fn, args, kwargs):
    def call():
        with torch.no_grad():
            return fn(*args, **kwargs)
    return call


def forward_backward_call(fn, args, kwargs, grad_out, params=()):
    """Forward, then the gradients of every input that requires one and of ``params``."""
    leaves = _leaves(args) + list(params)

    def call():
        return torch.autograd.grad(fn(*args, **kwargs), leaves, grad_out)
    return call


def _reduction(case, tensor, is_output):
    if is_output and case.reduction is not None:
        return case.reduction
    return max(1, case.flops / 2 / max(1, tensor.numel()))


def _compare(case, pairs):
    """(max abs error, its tolerance, whether every pair is within its tolerance)."""
    worst_err, worst_tol, worst_ratio = 0.0, 0.0, -1.0
    for actual, expected, is_output in pairs:
        if expected.numel() == 0:
            continue
        a, e = actual.detach().double(), expected.detach().double()
        err = float((a - e).abs().max()) if a.shape == e.shape else math.inf
        err = math.inf if math.isnan(err) else err
        tol = tolerance(_reduction(case, expected, is_output), float(e.abs().max()))
        if err / tol > worst_ratio:
            worst_err, worst_tol, worst_ratio = err, tol, err / tol
    return worst_err, worst_tol, worst_ratio <= 1.0


def check(case, mode):
    """Compare dlkern with torch on one Case; returns (max abs error, tolerance, ok)."""
    return _check(case, mode)[:3]


def _check(case, mode):
    """(max abs error, tolerance, ok, torch's output shape or None)."""
    if mode == "fwd":
        args, kwargs = case.inputs(False)
        with torch.no_grad():
            expected = case.torch_fn(*args, **kwargs)
            actual = case.dlkern_fn(*args, **kwargs)
        return _compare(case, [(actual, expected, True)]) + (expected.shape,)
    if mode == "fwdbwd":
        args, kwargs = case.inputs(True)
        expected = case.torch_fn(*args, **kwargs)
        actual = case.dlkern_fn(*args, **kwargs)
        g = torch.Generator().manual_seed(2)
        grad_out = torch.randn(expected.shape, generator=g, dtype=expected.dtype)
        leaves = _leaves(args)
        grads_t = torch.autograd.grad(expected, leaves + list(case.torch_params), grad_out)
        grads_d = torch.autograd.grad(actual, leaves + list(case.dlkern_params), grad_out)
        pairs = [(actual, expected, True)] + [(d, t, False) for d, t in zip(grads_d, grads_t)]
        return _compare(case, pairs) + (expected.shape,)
    if mode == "train":
        pairs = [(d, t, False) for d, t in zip(case.train_grads(case.dlkern_model),
                                               case.train_grads(case.torch_model))]
        return _compare(case, pairs) + (None,)
    raise ValueError(f"unknown mode {mode!r}")


def calls(case, mode, out_shape=None):
    """(torch's call, dlkern's call): zero-argument callables that run the case once.
    ``out_shape``: the output's shape if known (saves a forward for forward+backward)."""
    if mode == "train":
        return case.train_torch, case.train_dlkern
    if mode == "fwd":
        args, kwargs = case.inputs(False)
        return (forward_call(case.torch_fn, args, kwargs),
                forward_call(case.dlkern_fn, args, kwargs))
    args, kwargs = case.inputs(True)
    if out_shape is None:
        with torch.no_grad():
            out_shape = case.torch_fn(*args, **kwargs).shape
    grad_out = torch.randn(out_shape, generator=torch.Generator().manual_seed(2))
    return (forward_backward_call(case.torch_fn, args, kwargs, grad_out, case.torch_params),
            forward_backward_call(case.dlkern_fn, args, kwargs, grad_out, case.dlkern_params))


_WORK = {"fwd": 1, "fwdbwd": 3, "train": 3}  # backward costs about twice the forward


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    return value


def run_case(case, mode, suite, peak_gflops, bandwidth_gbs, budget, check_only=False):
    """Check and time one case in one mode; returns the result row (a dict). ``check_only``:
    the agreement check alone, no timing."""
    row = case.row
    result = dict(suite=suite, name=case.name, family=case.family,
                  op=row.op if row is not None else "model", mode=mode,
                  batch=row.batch if row is not None else None, count=case.count,
                  args={k: _jsonable(v) for k, v in row.args.items()} if row is not None else {})
    try:
        with strict():
            err, tol, ok, out_shape = _check(case, mode)
            if check_only:
                result.update(max_abs_err=err, tolerance=tol, accurate=ok)
                return result
            torch_call, dlkern_call = calls(case, mode, out_shape)
            t_torch, t_dlkern, samples = measure_pair(torch_call, dlkern_call, budget=budget)
    except Exception as exc:  # a row that fails is reported, not dropped
        result.update(error=f"{type(exc).__name__}: {exc}", torch_ms=math.nan,
                      dlkern_ms=math.nan, speedup=math.nan, max_abs_err=math.nan,
                      tolerance=math.nan, accurate=False)
        return result
    flops = _WORK[mode] * case.flops
    moved = _WORK[mode] * case.bytes
    gflops, gbs = flops / t_dlkern / 1e9, moved / t_dlkern / 1e9
    # roofline: the least time the machine needs for these FLOPs and bytes, over the time taken
    bound = "memory" if moved / bandwidth_gbs > flops / peak_gflops else "compute"
    roofline = max(flops / peak_gflops, moved / bandwidth_gbs) / 1e9 / t_dlkern
    result.update(torch_ms=t_torch * 1e3, dlkern_ms=t_dlkern * 1e3, speedup=t_torch / t_dlkern,
                  samples=samples, gflop=flops / 1e9, mbytes=moved / 1e6, dlkern_gflops=gflops,
                  torch_gflops=flops / t_torch / 1e9, dlkern_gbs=gbs, bound=bound,
                  roofline_pct=100.0 * roofline, max_abs_err=err, tolerance=tol, accurate=ok)
    return result
