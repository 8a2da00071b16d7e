"""The one dispatch point: which backend runs an op, and the fallback switch of DESIGN.md.

* ``backend_for(op, *tensors)`` returns ``"numba"`` (CPU float32/float64), ``"triton"`` (CUDA, or
  CPU tensors under ``DLKERN_BACKEND=triton`` with ``TRITON_INTERPRET=1``) or ``None`` when dlkern
  has no kernel for the case; the caller then calls ``fallback``, which counts the fallback in
  ``dlkern.stats()`` or, under ``DLKERN_STRICT=1``, raises instead.
* ``DLKERN_BACKEND`` (``numba``, ``triton`` or ``torch``) overrides the choice; ``torch`` sends every
  call to torch (counted as fallbacks), for A/B comparisons.
* ``new_output`` allocates every kernel output; under ``DLKERN_POISON_OUTPUTS=1`` (the tests) it is
  filled with NaN first, so an element a kernel forgets to write shows up.

Environment variables are read at each call, so tests can set them with monkeypatch.
"""
import os
import threading
from collections import Counter

import numpy as np
import torch

_CPU_DTYPES = (torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_lock = threading.Lock()
_fallbacks = Counter()
_policy = {}  # op family -> Counter of the "fastest" policy's decisions and the calls it routed

# Op families that have Triton kernels; filled in by dlkern.ops modules through register_triton.
TRITON_OPS = set()


def register_triton(*ops):
    """Declare that ``ops`` have Triton kernels, if Triton is installed (it is optional on the CPU).
    Does not import Triton: the kernels are imported on the first call that uses them."""
    import importlib.util
    if importlib.util.find_spec("triton") is not None:
        TRITON_OPS.update(ops)


def _flag(name):
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no", "off")


def strict():
    return _flag("DLKERN_STRICT")


def backend_for(op, *tensors):
    """The backend for ``op`` on these tensors (None entries are ignored), or None for a fallback."""
    tensors = [t for t in tensors if t is not None]
    forced = os.environ.get("DLKERN_BACKEND", "").strip().lower()
    if forced == "torch":
        return None
    devices = {t.device.type for t in tensors}
    dtypes = {t.dtype for t in tensors}
    if len(devices) != 1 or len(dtypes) != 1:
        return None
    device, dtype = devices.pop(), dtypes.pop()
    want_triton = device == "cuda" or (forced == "triton" and _flag("TRITON_INTERPRET"))
    if want_triton:
        return "triton" if op in TRITON_OPS and dtype in _TRITON_DTYPES else None
    if device == "cpu" and dtype in _CPU_DTYPES:
        return "numba"
    return None


def fallback(op, *tensors):
    """Record that ``op`` runs on torch for these tensors, or raise under DLKERN_STRICT=1."""
    desc = ", ".join(f"{t.dtype} on {t.device}" for t in tensors if t is not None)
    if strict():
        raise RuntimeError(
            f"dlkern: no kernel for {op} with {desc or 'these arguments'} "
            f"(DLKERN_BACKEND={os.environ.get('DLKERN_BACKEND', '') or 'auto'}); "
            "DLKERN_STRICT=1 forbids the fallback to torch"
        )
    count_fallback(op)


def count_fallback(op):
    """Count one call of ``op`` that ran on torch (never raises; see ``fallback`` for the strict
    switch). dlkern.enable counts its silent pass-throughs to torch's kernels here."""
    with _lock:
        _fallbacks[op] += 1


def count_policy(family, event):
    """Count one event of the "fastest" policy (dlkern.policy) for an op family: "timed" (a
    signature timed in this process), "dlkern" or "torch" (a call it sent there)."""
    with _lock:
        _policy.setdefault(family, Counter())[event] += 1


def stats():
    """``{"fallbacks": {op: count}, "policy": {family: {event: count}}}``: calls that fell back
    to torch (dlkern.enable's pass-throughs appear here once, as ``"enable:<operator>"``), and
    the "fastest" policy's signatures timed and calls sent to dlkern or to torch."""
    with _lock:
        return {"fallbacks": dict(_fallbacks),
                "policy": {family: dict(counts) for family, counts in _policy.items()}}


def reset_stats():
    with _lock:
        _fallbacks.clear()
        _policy.clear()


def fallbacks_of(prefix):
    """{op without ``prefix``: count} of the fallbacks whose op starts with ``prefix``."""
    with _lock:
        return {op[len(prefix):]: n for op, n in _fallbacks.items() if op.startswith(prefix)}


def clear_fallbacks(prefix):
    """Clear the fallback counts whose op starts with ``prefix``."""
    with _lock:
        for op in [op for op in _fallbacks if op.startswith(prefix)]:
            del _fallbacks[op]


def plain_eager(tensors, grad_ok=False):
    """True when nothing would record or transform a call on ``tensors``: eager execution (no
    torch.compile tracing), no torch function or dispatch mode (FakeTensorMode, meta devices,
    FLOP counters), no functorch transform (vmap, grad), no profiler, plain tensors only, and,
    unless ``grad_ok``, none that needs a gradient. Such a call can skip a custom op's dispatch.
    """
    if (torch.compiler.is_compiling() or torch._C._is_torch_function_mode_enabled()
            or torch._C._len_torch_dispatch_stack() > 0
            or torch._C._functorch.peek_interpreter_stack() is not None
            or torch.autograd._profiler_enabled()):
        return False
    want_grad = not grad_ok and torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if type(t) not in _PLAIN_TENSORS or (want_grad and t.requires_grad):
            return False
    return True


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def call(op, *args):
    """Run the custom op ``op`` (torch.library.custom_op) on ``args``; where ``plain_eager`` holds
    for its tensor arguments, run its body directly. The op's dispatcher round trip (schema
    check, autograd and fake-tensor layers) costs ~40 us a call, measured: as much as the kernel
    of a small layer (a decoder step, a 7x7 depthwise plane). The body computes the same numbers;
    the op stays the path for autograd, torch.compile and every transform."""
    body = getattr(op, "_init_fn", None)
    if body is not None and plain_eager([a for a in args if isinstance(a, torch.Tensor)]):
        return body(*args)
    return op(*args)


_CHANNELS_LAST = {torch.channels_last: 4, torch.channels_last_3d: 5}


def _cpu_empty(shape, dtype, memory_format):
    """An empty CPU tensor whose memory comes from NumPy. NumPy asks the kernel for huge pages on
    large arrays (madvise), so writing a fresh 50 MB output costs a few page faults instead of
    ~12k: measured 19.1 -> 7.8 ms for filling one such output (torch.empty takes 4 KiB pages)."""
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    if _CHANNELS_LAST.get(memory_format) == len(shape):
        # Channels-last memory is (N, *spatial, C); a permuted view gives the logical order.
        physical = (shape[0],) + tuple(shape[2:]) + (shape[1],)
        t = torch.from_numpy(np.empty(physical, dtype=np_dtype))
        return t.permute(0, len(shape) - 1, *range(1, len(shape) - 1))
    return torch.from_numpy(np.empty(tuple(shape), dtype=np_dtype))


def new_output(shape, like, memory_format=torch.contiguous_format):
    """An output tensor for a kernel: empty, or NaN-filled under DLKERN_POISON_OUTPUTS=1."""
    if like.device.type == "cpu" and like.dtype in _CPU_DTYPES:
        out = _cpu_empty(shape, like.dtype, memory_format)
    else:
        out = torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format)
    if _flag("DLKERN_POISON_OUTPUTS"):
        out.fill_(float("nan"))
    return out
