"""Test helpers shared by every op family: references, tolerances, inputs, isolation.

* References are torch on float64 copies of the inputs (``reference``).
* ``assert_close`` checks every element against that reference with a tolerance that scales with
  the reduction length behind each output element (``TOLERANCE`` per dtype).
* ``make_tensor`` builds random non-zero inputs in a given layout: contiguous, non-contiguous (a
  strided view) or channels_last.
* ``check_against_torch`` runs an op and its torch twin, compares the output and the gradient of
  every floating-point input.
* ``run_isolated`` runs Python code in a fresh process, so a crash is reported, not suffered.
"""
import math
import os
import subprocess
import sys

import torch

# Per-element error allowed per unit of sqrt(reduction length), relative to the reference's scale.
TOLERANCE = {torch.float32: 2e-6, torch.float64: 1e-14, torch.float16: 5e-4, torch.bfloat16: 4e-3}

# The dtypes the Triton kernels are tested in: all three on a GPU; float32 under the interpreter.
TRITON_DTYPES = ((torch.float32, torch.float16, torch.bfloat16) if torch.cuda.is_available()
                 else (torch.float32,))


def tolerance(dtype, reduction, scale):
    return TOLERANCE[dtype] * math.sqrt(max(1, reduction)) * max(1.0, scale) * 8


def assert_close(actual, expected, reduction, what="output"):
    """``actual`` (any float dtype) against the float64 reference ``expected``, every element."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    if e.numel() == 0:
        return
    bad_nan = torch.isnan(a) & ~torch.isnan(e)
    if bad_nan.any():
        idx = bad_nan.nonzero()[0].tolist()
        raise AssertionError(f"{what}: NaN at {idx} ({int(bad_nan.sum())} elements) where the reference is finite")
    scale = float(e.abs().max())
    tol = tolerance(actual.dtype, reduction, scale)
    err = (a - e).abs()
    worst = float(err.max())
    if not worst <= tol:
        idx = (err == err.max()).nonzero()[0].tolist()
        raise AssertionError(
            f"{what}: max abs error {worst:.3e} at {idx} exceeds {tol:.3e} "
            f"({actual.dtype}, reduction {reduction}, scale {scale:.3g})"
        )


def make_tensor(shape, dtype, layout="contiguous", generator=None, requires_grad=False):
    """Random values in [-1, -0.1] U [0.1, 1] (never zero) with the requested memory layout."""
    if layout == "noncontiguous":
        # Every other element of a twice-as-long last axis: a strided view.
        full = make_tensor(tuple(shape[:-1]) + (2 * shape[-1],) if shape else (2,), dtype,
                           generator=generator)
        t = full[..., ::2] if shape else full[0]
    else:
        mag = torch.rand(shape, dtype=torch.float64, generator=generator) * 0.9 + 0.1
        sign = torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1
        t = (mag * sign).to(dtype)
        if layout == "channels_last" and t.dim() in (4, 5):
            fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
            t = t.contiguous(memory_format=fmt)
    return t.requires_grad_(requires_grad)


def float64_copy(t):
    if not isinstance(t, torch.Tensor):
        return t
    c = t.detach().to(torch.float64).clone()
    return c.requires_grad_(t.requires_grad)


def check_against_torch(dl_fn, torch_fn, tensors, reductions, grad=True, seed=0):
    """Run ``dl_fn(*tensors)`` and ``torch_fn`` on float64 copies; compare output and gradients.

    ``reductions`` maps "output" and each input index to the reduction length of its elements.
    Inputs are checked to be unchanged by the call. Returns the dlkern output.
    """
    before = [t.detach().clone() if isinstance(t, torch.Tensor) else None for t in tensors]
    inputs = [t.detach().clone().requires_grad_(grad and t.is_floating_point())
              if isinstance(t, torch.Tensor) else t for t in tensors]
    # Keep the caller's layout: clone() preserves strides for dense tensors; views are rebuilt.
    inputs = [_same_layout(i, t) for i, t in zip(inputs, tensors)]
    refs = [float64_copy(i) for i in inputs]
    out = dl_fn(*inputs)
    ref = torch_fn(*refs)
    assert_close(out, ref, reductions["output"], "output")
    if grad and out.numel() > 0:
        g = torch.Generator().manual_seed(seed)
        grad_out = make_tensor(tuple(out.shape), torch.float64, generator=g)
        out.backward(grad_out.to(out.dtype))
        ref.backward(grad_out)
        for k, (i, r) in enumerate(zip(inputs, refs)):
            if isinstance(i, torch.Tensor) and i.requires_grad:
                if i.grad is None:
                    raise AssertionError(f"input {k}: no gradient")
                assert_close(i.grad, r.grad, reductions[k], f"grad of input {k}")
    for k, (t, b) in enumerate(zip(tensors, before)):
        if b is not None and not torch.equal(t.detach(), b):
            raise AssertionError(f"input {k} was modified by the call")
    return out


def _same_layout(clone, original):
    if not isinstance(original, torch.Tensor) or clone.stride() == original.stride():
        return clone
    # A strided view: rebuild one with the same strides over fresh storage.
    fresh = torch.empty_strided(original.shape, original.stride(), dtype=original.dtype,
                                device=original.device)
    with torch.no_grad():
        fresh.copy_(original)
    return fresh.requires_grad_(clone.requires_grad)


def run_isolated(code, timeout=300, env=None):
    """Run ``code`` in a new Python process (this environment, updated with ``env``); returns
    (returncode, stdout + stderr)."""
    env = dict(os.environ, **(env or {}))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env)
    return proc.returncode, proc.stdout + proc.stderr
