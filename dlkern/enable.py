"""``dlkern.enable()``: torch's own operators run on dlkern's kernels, for code nobody can edit.

    dlkern.enable()             # F.conv2d, nn.LSTM, nn.TransformerEncoderLayer ... now run dlkern
    dlkern.disable()            # torch exactly as before (calls nest: the last disable restores)
    with dlkern.enabled():      # the same, for a block
        model(x).sum().backward()

How: one ``torch.library.Library("aten", "IMPL")`` holds Python kernels for these aten operators,
registered while at least one enable is active and destroyed (``_destroy()``) by the last disable,
which puts torch's dispatch table back as it was:

* ``aten::convolution`` (conv1d/2d/3d, conv_transpose1d/2d/3d and every module built on them; the
  backward is dlkern's, through the custom op's autograd);
* ``aten::scaled_dot_product_attention`` (also what F.multi_head_attention_forward calls when no
  attention weights are asked for: nn.TransformerEncoderLayer/DecoderLayer outside their
  inference fast path, nn.MultiheadAttention with need_weights=False);
* ``aten::lstm``, ``aten::gru``, ``aten::rnn_tanh``, ``aten::rnn_relu``, overloads ``.input`` and
  ``.data`` (what nn.LSTM, nn.GRU and nn.RNN call, padded and packed), run by dlkern.ops.rnn's
  driver, the one dlkern.nn's layers use.

Dispatch keys: ``AutogradCPU`` first. All these operators but aten::convolution are
CompositeImplicitAutograd, whose kernel sits in the autograd slot, so a backend-key kernel alone
would never be reached; for aten::convolution it would keep torch's derivative formula. At the
autograd key the kernel calls dlkern's custom ops, which carry their own autograd, so the backward
runs on dlkern's kernels too. The ``CPU`` key is registered as well: inside
``torch.inference_mode()`` the autograd keys are skipped and the backend key is what runs. CUDA
gets the same pair of keys for the operators whose op family has Triton kernels
(``dlkern._dispatch.TRITON_OPS`` when enable() registers).

What runs where: a call dlkern covers (tensors for which ``dlkern._dispatch.backend_for`` picks a
backend: on the CPU, plain strided tensors of one float32/float64 dtype; shapes it accepts) runs
dlkern's public entry point, whose validation raises torch's exception types for bad arguments.
Everything else (float16 on the CPU, mixed dtypes, other devices or layouts, tensor subclasses
such as FakeTensor, torch.func wrappers, DLKERN_BACKEND=torch, shapes torch must judge) runs
torch's own kernel for that key, fetched with ``torch.library.get_kernel`` before registering:
never an error of dlkern's, even under DLKERN_STRICT=1, since enable() promises that code which
ran on torch still runs. Those pass-throughs are counted in ``dlkern.stats()`` under
``"enable:<aten operator>"``.

No recursion: while one of these kernels runs dlkern's code or torch's original kernel, a
thread-local flag sends every nested call of the same operators straight to torch's kernel. So
dlkern's own fallbacks to torch (F.conv2d in ``dlkern.ops.conv``) and torch's autograd kernel
redispatching to the backend key reach torch, never this module again.

Not covered: double backward through a routed call (``create_graph=True`` then backward again)
raises, since dlkern's backward ops have no derivative of their own; under ``torch.compile`` the
traced (fake) calls keep torch's path.

Selection and policy (dlkern.policy): ``enable(ops=None, exclude=None, policy=None)``. ``ops`` /
``exclude`` name op families or torch module classes: conv, depthwise (groups equal to the input
channels), conv_transpose, attention (SDPA; also named by mha and nn.MultiheadAttention, whose
training path calls it), rnn (nn.LSTM, nn.GRU); Conv1d..ConvTranspose3d select by rank. cell,
separable and softmax are valid names with no aten operator routed. A call not selected runs
torch's kernel, uncounted. Under ``policy="fastest"`` (the default) each selected call signature
is timed once against torch's own kernel, the faster kept (and cached on disk). Calls nest: the
innermost active enable's selection and policy apply.

``counts()`` says how many calls each operator routed to dlkern and passed to torch since the
last ``reset_counts()``: the proof that routing happened. A pass-through is recorded once, in
``dlkern.stats()["fallbacks"]`` as ``"enable:<operator>"``; ``counts()["passed"]`` reads it there.
"""
import contextlib
import threading
from collections import Counter

import torch

from dlkern import _dispatch, _validate
from dlkern import policy as _policy
from dlkern.ops import attention, conv, conv_transpose, rnn
from dlkern.patch import _TWINS

_OPERATORS = {  # aten operator -> dlkern op families (the names dlkern._dispatch knows them by)
    "convolution": ("conv", "conv_transpose"),
    "scaled_dot_product_attention": ("attention",),
    "lstm.input": ("rnn",),
    "lstm.data": ("rnn",),
    "gru.input": ("rnn",),
    "gru.data": ("rnn",),
    "rnn_tanh.input": ("rnn",),
    "rnn_tanh.data": ("rnn",),
    "rnn_relu.input": ("rnn",),
    "rnn_relu.data": ("rnn",),
}
_KEYS = {"cpu": ("AutogradCPU", "CPU"), "cuda": ("AutogradCUDA", "CUDA")}

_lock = threading.Lock()  # guards _depth, _library, _states and the counter
_depth = 0
_library = None
_states = []  # (Selection, measured) of each active enable, innermost last
_routed = Counter()
_local = threading.local()


# ---------------------------------------------------------------------------------------------
# which calls dlkern takes

def _plain(t):
    """A tensor dlkern's kernels can read: strided, dense, not a subclass (FakeTensor and other
    ``__torch_dispatch__`` wrappers keep torch's path), not a torch.func wrapper (torch.func.grad
    cannot run dlkern's custom ops, whose autograd is not a functorch-ready autograd.Function)."""
    if t is None:
        return True
    return (type(t) in (torch.Tensor, torch.nn.Parameter) and t.layout == torch.strided
            and not t.is_quantized and not t.is_mkldnn
            and not torch._C._functorch.is_functorch_wrapped_tensor(t))


def _backend(family, tensors):
    """dlkern's backend for these tensors, or None when the call stays with torch."""
    if not all(_plain(t) for t in tensors):
        return None
    return _dispatch.backend_for(family, *tensors)


def _route_convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding,
                       groups):
    """A thunk running dlkern's (transposed) convolution for this aten::convolution call, or
    None to leave the call to torch."""
    nsp = weight.dim() - 2
    if nsp not in (1, 2, 3) or input.dim() != weight.dim():
        return None  # torch's own checks and messages for these (unbatched input never gets here)
    if _backend("conv_transpose" if transposed else "conv", (input, weight, bias)) is None:
        return None
    if transposed:
        return lambda: conv_transpose.convolution_transpose(
            f"conv_transpose{nsp}d", input, weight, bias, stride, padding, output_padding, groups,
            dilation, nsp)
    return lambda: conv.convolution(f"conv{nsp}d", input, weight, bias, stride, padding, dilation,
                                    groups, nsp)


def _route_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                enable_gqa=False):
    if not _plain(attn_mask) or _backend("attention", (query, key, value)) is None:
        return None
    return lambda: attention.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p,
                                                          is_causal, scale, enable_gqa)


def _route_rnn(mode, data, batch_sizes, hx, params, has_biases, num_layers, dropout, train,
               bidirectional, batch_first):
    """dlkern.ops.rnn's driver for an aten::lstm/gru/rnn_tanh/rnn_relu call whose arguments it
    covers; anything else (mismatched shapes included: torch raises its own error) stays with
    torch."""
    states = list(hx) if mode == "lstm" else [hx]
    if _backend("rnn", (data, *states, *params)) is None:
        return None
    try:
        _validate.rnn_flat_args(mode, data, batch_sizes, states, params, has_biases, num_layers,
                                bidirectional, batch_first)
    except RuntimeError:
        return None

    def run():
        output, h_n, c_n = rnn.rnn(mode, data, batch_sizes, states, params, has_biases,
                                   num_layers, dropout, train, bidirectional, batch_first)
        return (output, h_n, c_n) if mode == "lstm" else (output, h_n)
    return run


# One routing function per operator, taking the operator's schema arguments (the dispatcher
# passes trailing defaulted arguments only when given, so defaults are spelled out here).
def _route_lstm_input(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
                      batch_first):
    return _route_rnn("lstm", input, None, hx, params, has_biases, num_layers, dropout, train,
                      bidirectional, batch_first)


def _route_lstm_data(data, batch_sizes, hx, params, has_biases, num_layers, dropout, train,
                     bidirectional):
    return _route_rnn("lstm", data, batch_sizes, hx, params, has_biases, num_layers, dropout,
                      train, bidirectional, False)


def _route_gru_input(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
                     batch_first):
    return _route_rnn("gru", input, None, hx, params, has_biases, num_layers, dropout, train,
                      bidirectional, batch_first)


def _route_gru_data(data, batch_sizes, hx, params, has_biases, num_layers, dropout, train,
                    bidirectional):
    return _route_rnn("gru", data, batch_sizes, hx, params, has_biases, num_layers, dropout,
                      train, bidirectional, False)


def _route_rnn_tanh_input(input, hx, params, has_biases, num_layers, dropout, train,
                          bidirectional, batch_first):
    return _route_rnn("rnn_tanh", input, None, hx, params, has_biases, num_layers, dropout, train,
                      bidirectional, batch_first)


def _route_rnn_tanh_data(data, batch_sizes, hx, params, has_biases, num_layers, dropout, train,
                         bidirectional):
    return _route_rnn("rnn_tanh", data, batch_sizes, hx, params, has_biases, num_layers, dropout,
                      train, bidirectional, False)


def _route_rnn_relu_input(input, hx, params, has_biases, num_layers, dropout, train,
                          bidirectional, batch_first):
    return _route_rnn("rnn_relu", input, None, hx, params, has_biases, num_layers, dropout, train,
                      bidirectional, batch_first)


def _route_rnn_relu_data(data, batch_sizes, hx, params, has_biases, num_layers, dropout, train,
                         bidirectional):
    return _route_rnn("rnn_relu", data, batch_sizes, hx, params, has_biases, num_layers, dropout,
                      train, bidirectional, False)


_ROUTES = {
    "convolution": _route_convolution,
    "scaled_dot_product_attention": _route_sdpa,
    "lstm.input": _route_lstm_input,
    "lstm.data": _route_lstm_data,
    "gru.input": _route_gru_input,
    "gru.data": _route_gru_data,
    "rnn_tanh.input": _route_rnn_tanh_input,
    "rnn_tanh.data": _route_rnn_tanh_data,
    "rnn_relu.input": _route_rnn_relu_input,
    "rnn_relu.data": _route_rnn_relu_data,
}


# ---------------------------------------------------------------------------------------------
# which calls are selected, and their signatures for the policy

_CONV_CLASSES = {(False, 1): torch.nn.Conv1d, (False, 2): torch.nn.Conv2d,
                 (False, 3): torch.nn.Conv3d, (True, 1): torch.nn.ConvTranspose1d,
                 (True, 2): torch.nn.ConvTranspose2d, (True, 3): torch.nn.ConvTranspose3d}


def _tags(operator, args):
    """The family and the torch module classes a call of ``operator`` stands for."""
    if operator == "convolution":
        input, weight, transposed, groups = args[0], args[1], args[6], args[8]
        nsp = weight.dim() - 2
        if transposed:
            family = "conv_transpose"
        elif input.dim() == weight.dim() and input.dim() > 2 and 1 < groups == input.shape[1]:
            family = "depthwise"
        else:
            family = "conv"
        cls = _CONV_CLASSES.get((bool(transposed), nsp))
        return family, {family} | ({cls} if cls else set())
    if operator == "scaled_dot_product_attention":
        return "attention", {"attention", "mha", torch.nn.MultiheadAttention}
    layer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}.get(operator.split(".")[0], torch.nn.RNN)
    return "rnn", {"rnn", layer}


def _signature(operator, args, kwargs):
    """The policy's key for this call. A packed sequence's rows and step sizes change with every
    batch of lengths; its batch, step count and feature width stand for it."""
    if operator.endswith(".data"):
        data, sizes = args[0], args[1]
        head = ("P", tuple(data.shape[1:]), str(data.dtype), data.device.type,
                data.requires_grad, int(sizes[0]) if sizes.numel() else 0, sizes.numel())
        args = (head,) + tuple(_policy.signature(a) for a in args[2:])
    else:
        args = _policy.signature(args)
    return ("aten", operator, args, _policy.signature(kwargs))


def _choose(operator, family, keyset, original, route, args, kwargs):
    """The "fastest" policy's path for this routed call: "dlkern" or "torch"."""
    tensors = _policy.tensors_in((args, kwargs))
    backward = _policy.wants_backward(tensors)
    key = _signature(operator, args, kwargs) + (backward,)

    def make_torch():
        return _policy.timed_call(lambda *a, **k: original.call_boxed(keyset, *a, **k), args,
                                  kwargs, backward=backward)

    def make_dlkern():
        return _policy.timed_call(lambda *a, **k: route(*a, **k)(), args, kwargs,
                                  backward=backward)

    with _to_torch():
        return _policy.choose(family, key, make_torch, make_dlkern, tensors)


# ---------------------------------------------------------------------------------------------
# the kernels registered with torch

@contextlib.contextmanager
def _to_torch():
    """Nested calls of the routed operators on this thread go straight to torch's kernels."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def _make_kernel(operator, key, original):
    route = _ROUTES[operator]

    def kernel(keyset, *args, **kwargs):
        if not getattr(_local, "depth", 0):
            top = _states[-1:]  # one atomic read: another thread may disable meanwhile
            selection, measured = top[0] if top else (None, False)
            family, tags = _tags(operator, args)
            if selection is not None and selection.takes(tags):
                run = route(*args, **kwargs)
                if run is None:
                    _dispatch.count_fallback(f"enable:{operator}")
                elif not measured or _choose(operator, family, keyset, original, route, args,
                                             kwargs) == "dlkern":
                    with _to_torch():
                        result = run()
                    with _lock:
                        _routed[operator] += 1
                    return result
        with _to_torch():
            return original.call_boxed(keyset, *args, **kwargs)

    kernel.__name__ = kernel.__qualname__ = f"dlkern_{operator.replace('.', '_')}_{key}"
    return kernel


def _register():
    if not hasattr(torch.library, "get_kernel"):
        raise RuntimeError(f"dlkern.enable() needs torch >= 2.9 (torch.library.get_kernel, to keep "
                           f"torch's own kernels for the cases it passes on); this is torch "
                           f"{torch.__version__}. dlkern.patch() and dlkern.nn work without it.")
    library = torch.library.Library("aten", "IMPL")
    try:
        for operator, families in _OPERATORS.items():
            devices = ["cpu"] + (["cuda"] if _dispatch.TRITON_OPS.intersection(families) else [])
            for key in (k for device in devices for k in _KEYS[device]):
                # Fetched before registering: afterwards the computed kernel would be ours.
                original = torch.library.get_kernel(f"aten::{operator}", key)
                library.impl(operator, _make_kernel(operator, key, original), key,
                             with_keyset=True)
    except BaseException:
        library._destroy()
        raise
    return library


# ---------------------------------------------------------------------------------------------
# public API

def enable(ops=None, exclude=None, policy=None):
    """Route torch's convolution, SDPA and LSTM/GRU operators to dlkern until the matching
    ``disable()``. ``ops`` / ``exclude``: op families (dlkern.policy.FAMILIES) or torch module
    classes to route / keep on torch; ``policy``: "fastest" (default, or ``DLKERN_POLICY``) or
    "always". Calls nest: each enable needs its own disable; the innermost one's choices apply."""
    global _depth, _library
    selection = _policy.Selection(ops, exclude, tuple(_TWINS), "dlkern.enable", "ops")
    measured = _policy.resolve(policy) == "fastest"
    if measured:
        _policy.load()
    with _lock:
        if _depth == 0:
            _library = _register()
        _depth += 1
        _states.append((selection, measured))


def disable():
    """Undo one ``enable()``; the last one restores torch's kernels exactly. Calling it with
    nothing enabled raises RuntimeError."""
    global _depth, _library
    with _lock:
        if _depth == 0:
            raise RuntimeError("dlkern.disable() called without a matching dlkern.enable()")
        _depth -= 1
        _states.pop()
        if _depth == 0:
            library, _library = _library, None
            library._destroy()


def is_enabled():
    """Whether torch's operators are routed to dlkern now."""
    with _lock:
        return _depth > 0


@contextlib.contextmanager
def enabled(ops=None, exclude=None, policy=None):
    """``with dlkern.enabled():`` routes torch's operators to dlkern inside the block (arguments
    as ``enable``'s), and restores the state before it on the way out, exception or not."""
    enable(ops, exclude, policy)
    try:
        yield
    finally:
        disable()


def counts():
    """``{"routed": {operator: n}, "passed": {operator: n}}``: calls that ran on dlkern and calls
    dlkern does not cover, left to torch, since the last ``reset_counts()`` (calls nested in
    either are not counted; nor are calls not selected or sent to torch by the policy, which
    dlkern.stats()["policy"] counts). The pass-throughs are read from dlkern.stats()."""
    with _lock:
        return {"routed": dict(_routed), "passed": _dispatch.fallbacks_of("enable:")}


def reset_counts():
    """Clear the routed counts and enable's pass-throughs (also in dlkern.stats())."""
    with _lock:
        _routed.clear()
        _dispatch.clear_fallbacks("enable:")
