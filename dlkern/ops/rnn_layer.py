"""One recurrent layer (every direction) as a torch op: kernels, custom op registration, autograd.

``mode`` is one of dlkern.kernels.rnn_modes.MODES ("lstm", "gru", "rnn_tanh", "rnn_relu").

* ``dlkern::rnn_layer(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, rmask, h0, c0)
  -> (y, h_n, c_n, gates, saved)``: every direction of one layer over a packed sequence (shapes in
  dlkern.kernels.numba.rnn); c0 is None and c_n empty unless LSTM; rmask (D, B, P) or None is the
  recurrent dropout mask. ``gates`` and ``saved`` are what the backward needs (not
  differentiable).
* ``dlkern::rnn_layer_backward(...) -> (dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh0, dc0)``: BPTT.

On the triton backend (CUDA tensors, or CPU tensors under the interpreter) the same ops run
dlkern.kernels.triton.rnn, imported on the first such call; ``gates`` and ``saved`` are then that
backend's float32 workspaces (their shapes differ from the CPU's; the fake implementation asks the
same dispatch).

``layer(...)`` is the entry point, on checked arguments, and takes the shortest path that keeps
autograd correct: no gradient wanted, the kernel directly; gradients wanted in eager mode, an
autograd.Function around the same kernels (the custom op's dispatch costs tens of microseconds,
more than a small cell step); under torch.compile, the custom op, whose fake implementation lets
the compiler trace it. The numbers are the same on every path.
"""
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from dlkern import _dispatch
from dlkern.kernels.numba import rnn as numba_rnn
from dlkern.kernels.numba import rnn_backward as numba_rnn_backward
from dlkern.kernels.rnn_modes import GATES

_dispatch.register_triton("rnn")


def triton_kernels():
    from dlkern.kernels.triton import rnn as triton_rnn
    return triton_rnn


def _triton_backward():
    from dlkern.kernels.triton import rnn_backward
    return rnn_backward


def _on_triton(x):
    return _dispatch.backend_for("rnn", x) == "triton"


def _layer_precision(x, batch_sizes, w_hh, w_hr):
    """torch runs layers on cuDNN and cells as matmuls (kernels/triton/precision.py); a one-step,
    one-direction layer without projection is how cells reach the layer op."""
    from dlkern.kernels.triton.precision import CUDNN, MATMUL, dot_precision

    cell = batch_sizes.shape[0] == 1 and w_hh.shape[0] == 1 and w_hr is None
    return dot_precision(x, MATMUL if cell else CUDNN)


def cell_precision(x):
    from dlkern.kernels.triton.precision import MATMUL, dot_precision

    return dot_precision(x, MATMUL)


def _shapes(mode, x, w_hh, h0):
    """(directions, G*H, H, P, packed rows, batch)."""
    n_dir, gh, proj = w_hh.shape
    return n_dir, gh, gh // GATES[mode], proj, x.shape[0], h0.shape[1]


def _workspace_shapes(mode, x, w_hh, n_rows):
    """(shape, dtype) of the ``gates`` and ``saved`` outputs for the backend that runs ``x``."""
    n_dir, gh, proj = w_hh.shape
    hid = gh // GATES[mode]
    if _on_triton(x):
        return triton_kernels().workspace_shapes(mode, n_rows, n_dir, hid, proj)
    width = hid if mode in ("lstm", "gru") else 0
    return ((n_dir, n_rows, gh), x.dtype), ((n_dir, n_rows if width else 0, width), x.dtype)


def _np(t):
    """A C-contiguous NumPy view (or copy) of ``t``; never writes to ``t``."""
    return t.detach().contiguous().numpy()


def _np_or_empty(t, shape, dtype):
    return np.zeros(shape, dtype=dtype) if t is None else _np(t)


def forward_arrays(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, rmask, h0, c0,
                   save=True):
    """Allocate the outputs and run the forward kernel; returns (y, h_n, c_n, gates, saved).
    Without ``save`` (no gradient wanted) the CPU kernel leaves gates and saved unwritten."""
    n_dir, gh, hid, proj, n_rows, batch = _shapes(mode, x, w_hh, h0)
    (g_shape, g_dtype), (s_shape, s_dtype) = _workspace_shapes(mode, x, w_hh, n_rows)
    lstm = mode == "lstm"
    y = _dispatch.new_output((n_rows, n_dir * proj), x)
    if _on_triton(x):
        h_n = _dispatch.new_output(tuple(h0.shape), x)
        c_n = _dispatch.new_output((n_dir, batch, hid), x) if lstm else x.new_empty((0,))
        gates = _dispatch.new_output(g_shape, x.new_empty((), dtype=g_dtype))
        saved = _dispatch.new_output(s_shape, x.new_empty((), dtype=s_dtype))
        triton_kernels().layer_forward(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, rmask,
                                       h0, c0, y, h_n, c_n, gates, saved,
                                       _layer_precision(x, batch_sizes, w_hh, w_hr))
        return y, h_n, c_n, gates, saved
    h_n = h0.detach().clone(memory_format=torch.contiguous_format)
    c_n = c0.detach().clone(memory_format=torch.contiguous_format) if lstm else x.new_empty((0,))
    gates = _dispatch.new_output(g_shape, x)
    saved = _dispatch.new_output(s_shape, x)
    xa = _np(x)
    dtype = xa.dtype
    c_arr = c_n.numpy() if lstm else np.zeros((n_dir, batch, hid), dtype=dtype)
    empty = np.empty((n_dir, 0, 0), dtype=dtype)
    if xa.shape[1] == 0:  # an input of width 0: the input projection is zero
        gates.zero_()
        xa = np.zeros((n_rows, 1), dtype=dtype)
        w_ih_a = np.zeros((n_dir, gh, 1), dtype=dtype)
    else:
        w_ih_a = _np(w_ih)
    numba_rnn.layer_forward(mode, xa, _np(batch_sizes), w_ih_a, _np(w_hh),
                            _np_or_empty(b_ih, (n_dir, gh), dtype),
                            _np_or_empty(b_hh, (n_dir, gh), dtype),
                            empty if w_hr is None else _np(w_hr),
                            empty if rmask is None else _np(rmask), _np(h0), c_arr, y.numpy(),
                            h_n.numpy(), c_arr, gates.numpy(), saved.numpy(), save)
    return y, h_n, c_n, gates, saved


def backward_arrays(mode, dy, dh_n, dc_n, x, batch_sizes, w_ih, w_hh, w_hr, rmask, h0, c0, y,
                    gates, saved):
    """BPTT on the forward's outputs: [dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh0, dc0]."""
    n_dir, gh, hid, proj, n_rows, batch = _shapes(mode, x, w_hh, h0)
    lstm = mode == "lstm"
    dx = _dispatch.new_output(tuple(x.shape), x)
    dw_ih = _dispatch.new_output(tuple(w_ih.shape), x)
    dw_hh = _dispatch.new_output(tuple(w_hh.shape), x)
    db_ih = _dispatch.new_output((n_dir, gh), x)
    db_hh = _dispatch.new_output((n_dir, gh), x)
    dw_hr = _dispatch.new_output((n_dir, proj, hid) if w_hr is not None else (n_dir, 0, 0), x)
    if _on_triton(x):
        dh = _dispatch.new_output(tuple(h0.shape), x)
        dc = _dispatch.new_output((n_dir, batch, hid), x) if lstm else x.new_empty((0,))
        _triton_backward().layer_backward(mode, x, batch_sizes, w_ih, w_hh, w_hr, rmask, h0, c0, y,
                                        gates, saved, dy, dh_n, dc_n, dx, dw_ih, dw_hh, db_ih,
                                        db_hh, dw_hr, dh, dc,
                                        _layer_precision(x, batch_sizes, w_hh, w_hr))
        return [dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh, dc]
    dh = dh_n.detach().clone(memory_format=torch.contiguous_format)
    dtype = dh.numpy().dtype
    if lstm:
        dc = dc_n.detach().clone(memory_format=torch.contiguous_format)
        dc_arr = dc.numpy()
    else:
        dc = x.new_empty((0,))
        dc_arr = np.zeros((n_dir, batch, hid), dtype=dtype)
    empty = np.empty((n_dir, 0, 0), dtype=dtype)
    xa, w_ih_a, dx_a, dw_ih_a = _np(x), _np(w_ih), dx.numpy(), dw_ih.numpy()
    if x.shape[1] == 0:  # width-0 input: nothing to multiply, gradients of size 0
        xa = np.zeros((n_rows, 1), dtype=dtype)
        w_ih_a = np.zeros((n_dir, gh, 1), dtype=dtype)
        dx_a = np.empty((n_rows, 1), dtype=dtype)
        dw_ih_a = np.empty((n_dir, gh, 1), dtype=dtype)
    numba_rnn_backward.layer_backward(
        mode, xa, _np(batch_sizes), w_ih_a, _np(w_hh), empty if w_hr is None else _np(w_hr),
        empty if rmask is None else _np(rmask), _np(h0), _np(c0) if c0 is not None else dc_arr,
        _np(y), _np(gates), _np(saved), _np(dy), dh.numpy(), dc_arr, dx_a, dw_ih_a,
        dw_hh.numpy(), db_ih.numpy(), db_hh.numpy(), dw_hr.numpy())
    return [dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh, dc]


# --- the custom op (torch.compile) ---------------------------------------------------------------

@torch.library.custom_op("dlkern::rnn_layer", mutates_args=())
def rnn_layer_op(mode: str, x: Tensor, batch_sizes: Tensor, w_ih: Tensor, w_hh: Tensor,
                 b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                 rmask: Optional[Tensor], h0: Tensor,
                 c0: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return forward_arrays(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, rmask, h0, c0)


@rnn_layer_op.register_fake
def _(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, rmask, h0, c0):
    n_dir, gh, hid, proj, n_rows, batch = _shapes(mode, x, w_hh, h0)
    c_n = x.new_empty((n_dir, batch, hid)) if mode == "lstm" else x.new_empty((0,))
    (g_shape, g_dtype), (s_shape, s_dtype) = _workspace_shapes(mode, x, w_hh, n_rows)
    return (x.new_empty((n_rows, n_dir * proj)), x.new_empty((n_dir, batch, proj)), c_n,
            x.new_empty(g_shape, dtype=g_dtype), x.new_empty(s_shape, dtype=s_dtype))


@torch.library.custom_op("dlkern::rnn_layer_backward", mutates_args=())
def rnn_layer_backward_op(mode: str, dy: Tensor, dh_n: Tensor, dc_n: Optional[Tensor], x: Tensor,
                          batch_sizes: Tensor, w_ih: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
                          rmask: Optional[Tensor], h0: Tensor, c0: Optional[Tensor], y: Tensor,
                          gates: Tensor, saved: Tensor) -> List[Tensor]:
    return backward_arrays(mode, dy, dh_n, dc_n, x, batch_sizes, w_ih, w_hh, w_hr, rmask, h0, c0,
                           y, gates, saved)


@rnn_layer_backward_op.register_fake
def _(mode, dy, dh_n, dc_n, x, batch_sizes, w_ih, w_hh, w_hr, rmask, h0, c0, y, gates, saved):
    n_dir, gh, hid, proj, n_rows, batch = _shapes(mode, x, w_hh, h0)
    return [x.new_empty(tuple(x.shape)), x.new_empty(tuple(w_ih.shape)),
            x.new_empty(tuple(w_hh.shape)), x.new_empty((n_dir, gh)), x.new_empty((n_dir, gh)),
            x.new_empty((n_dir, proj, hid) if w_hr is not None else (n_dir, 0, 0)),
            x.new_empty(tuple(h0.shape)),
            x.new_empty((n_dir, batch, hid)) if mode == "lstm" else x.new_empty((0,))]


def _gradients(backward, mode, saved_tensors, has_bias, dy, dh_n, dc_n):
    """The input gradients of a layer call (autograd's order) from ``backward`` (the custom op or
    backward_arrays)."""
    x, batch_sizes, w_ih, w_hh, w_hr, rmask, h0, c0, y, gates, saved = saved_tensors
    dy = torch.zeros_like(y) if dy is None else dy
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n
    if mode == "lstm":
        dc_n = torch.zeros_like(c0) if dc_n is None else dc_n
    else:
        dc_n = None
    dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh0, dc0 = backward(
        mode, dy, dh_n, dc_n, x, batch_sizes, w_ih, w_hh, w_hr, rmask, h0, c0, y, gates, saved)
    return (None, dx, None, dw_ih, dw_hh, db_ih if has_bias[0] else None,
            db_hh if has_bias[1] else None, dw_hr if w_hr is not None else None, None, dh0,
            dc0 if mode == "lstm" else None)


def _setup_context(ctx, inputs, output):
    mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, rmask, h0, c0 = inputs
    y, h_n, c_n, gates, saved = output
    ctx.mark_non_differentiable(gates, saved)
    ctx.save_for_backward(x, batch_sizes, w_ih, w_hh, w_hr, rmask, h0, c0, y, gates, saved)
    ctx.mode = mode
    ctx.has_bias = (b_ih is not None, b_hh is not None)


def _backward(ctx, dy, dh_n, dc_n, _dgates, _dsaved):
    return _gradients(rnn_layer_backward_op, ctx.mode, ctx.saved_tensors, ctx.has_bias, dy, dh_n,
                      dc_n)


rnn_layer_op.register_autograd(_backward, setup_context=_setup_context)


# --- the eager path with gradients ---------------------------------------------------------------

class _Layer(torch.autograd.Function):
    """The same forward and backward as the custom op, without its dispatch (eager mode)."""

    @staticmethod
    def forward(ctx, mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, rmask, h0, c0):
        y, h_n, c_n, gates, saved = forward_arrays(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh,
                                                   w_hr, rmask, h0, c0)
        ctx.save_for_backward(x, batch_sizes, w_ih, w_hh, w_hr, rmask, h0, c0, y, gates, saved)
        ctx.mode = mode
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        if mode != "lstm":
            ctx.mark_non_differentiable(c_n)
        return y, h_n, c_n

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):
        return _gradients(backward_arrays, ctx.mode, ctx.saved_tensors, ctx.has_bias, dy, dh_n,
                          dc_n)


def _path(tensors):
    """"op" unless the call is plain eager (_dispatch.plain_eager: torch.compile tracing, a mode,
    a transform or the profiler), "autograd" when a gradient is wanted, else "lean"."""
    if not _dispatch.plain_eager(tensors, grad_ok=True):
        return "op"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return "autograd"
    return "lean"


def layer(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, rmask, h0, c0):
    """One layer (all directions) on checked arguments of a dlkern backend: (y, h_n, c_n)."""
    args = (mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, rmask, h0, c0)
    path = _path((x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0))
    if path == "op":
        return rnn_layer_op(*args)[:3]
    if path == "autograd":
        return _Layer.apply(*args)
    return forward_arrays(*args, save=False)[:3]
