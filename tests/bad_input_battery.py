"""Bad-input battery: each case is called on torch and on dlkern; both must raise the same exception
type or, where both return, the same result.

Run as a script in a separate process (tests/test_bad_inputs.py does), so a crash of the process
is caught and reported instead of taking the test run down. Prints one JSON line per case.
Each op family keeps its cases in tests/bad_inputs_<family>.py, a function ``cases()`` returning
{name: (reference call, dlkern call)} or {name: (reference call, dlkern call, why)}: the reference
is torch's own call, or, with ``why`` (a documented difference from torch), the behaviour dlkern
keeps instead. Results are compared when both calls return: tensors (or tuples and lists of them)
must agree in shape, dtype and device, and in value (NaN and infinities in the same places);
other return values (modules) are not compared. A module may list cases that still fail in
``KNOWN = {name: reason}``: test_bad_inputs.py expects them to fail (and says so, as an xfail)
until they are fixed, then asks for their removal.
"""
import glob
import importlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def families():
    return sorted(os.path.basename(p)[len("bad_inputs_"):-3]
                  for p in glob.glob(os.path.join(HERE, "bad_inputs_*.py")))


def outcome(fn):
    """(exception type name or None, message, returned value)."""
    try:
        value = fn()
    except Exception as e:  # the type is what is compared
        return type(e).__name__, str(e), None
    return None, "", value


def _tensors(value):
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) or v is None
                                                          for v in value):
        return list(value)
    return None


def result_difference(expected, actual):
    """None when ``actual`` is the same result as ``expected``, else what differs."""
    import torch

    want, got = _tensors(expected), _tensors(actual)
    if want is None:
        return None  # not a tensor result: nothing to compare
    if got is None or len(got) != len(want):
        return f"expected {len(want)} tensor(s), got {type(actual).__name__}"
    for i, (w, g) in enumerate(zip(want, got)):
        if (w is None) != (g is None):
            return f"result {i}: expected {'a tensor' if w is not None else None}, got {g}"
        if w is None:
            continue
        if (w.shape, w.dtype, w.device) != (g.shape, g.dtype, g.device):
            return (f"result {i}: expected {list(w.shape)} {w.dtype} on {w.device}, got "
                    f"{list(g.shape)} {g.dtype} on {g.device}")
        if w.device.type == "meta" or w.numel() == 0:
            continue
        w, g = w.detach(), g.detach()
        if w.is_floating_point():
            scale = float(w[w.isfinite()].abs().max()) if w.isfinite().any() else 1.0
            tol = 1e-4 * max(1.0, scale)
            try:
                torch.testing.assert_close(g, w, rtol=1e-4, atol=tol, equal_nan=True,
                                           check_stride=False)
            except AssertionError as e:
                return f"result {i}: {str(e).splitlines()[0]} ({e})"[:600]
        elif not torch.equal(w, g):
            return f"result {i}: values differ"
    return None


# ---- helpers for the case modules

def poisoned(t, values):
    """A copy of ``t`` with ``values`` ({flat index: value}, e.g. NaN, inf) written in."""
    t = t.clone()
    flat = t.view(-1)
    for index, value in values.items():
        flat[index] = value
    return t


def forward_backward(fn, tensors, kwargs=None, compute_dtype=None):
    """A call that runs ``fn(*tensors, **kwargs)`` and its backward for a grad_output of ones, and
    returns (output, gradient of each tensor argument), all in the dtype of the first tensor.
    ``compute_dtype`` (float64 for a reference) runs on copies in that dtype."""
    import torch

    def call():
        leaves = [t.detach().to(compute_dtype or t.dtype).requires_grad_()
                  if isinstance(t, torch.Tensor) else t for t in tensors]
        out = fn(*leaves, **(kwargs or {}))
        out.backward(torch.ones_like(out))
        dtype = tensors[0].dtype
        grads = [leaf.grad for leaf in leaves if isinstance(leaf, torch.Tensor)]
        return tuple(None if t is None else t.detach().to(dtype) for t in [out] + grads)

    return call


def not_strict(fn):
    """``fn`` run with DLKERN_STRICT off: a case dlkern has no kernel for (an integer dtype, say)
    must fall back to torch and give torch's result or exception."""
    def call():
        saved = os.environ.pop("DLKERN_STRICT", None)
        try:
            return fn()
        finally:
            if saved is not None:
                os.environ["DLKERN_STRICT"] = saved

    return call


def main(names):
    sys.path.insert(0, HERE)
    for family in names:
        module = importlib.import_module(f"bad_inputs_{family}")
        known = getattr(module, "KNOWN", {})
        for name, case in module.cases().items():
            reference_call, dl_call = case[:2]
            why = case[2] if len(case) > 2 else None
            t_type, _, t_value = outcome(reference_call)
            d_type, d_msg, d_value = outcome(dl_call)
            differs = result_difference(t_value, d_value) if t_type is d_type is None else None
            print(json.dumps(dict(family=family, case=name, torch=t_type, dlkern=d_type,
                                  message=d_msg, result=differs, documented=why,
                                  known=known.get(name))))
            sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:] or families())
