"""LSTM and GRU layers and cells as torch custom ops: registration, autograd, dispatch.

Two ops in the ``dlkern`` namespace, each with a fake (meta) implementation:

* ``dlkern::rnn_layer(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)
  -> (y, h_n, c_n, gates, saved)``: every direction of one layer over a packed sequence
  (shapes in dlkern.kernels.numba.rnn); ``mode`` is "lstm" or "gru" (then c0 is None and c_n is
  empty). ``gates`` and ``saved`` are what the backward needs (not differentiable).
* ``dlkern::rnn_layer_backward(...) -> (dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh0, dc0)``: BPTT.

On the triton backend (CUDA tensors, or CPU tensors under the interpreter) the same ops run
dlkern.kernels.triton.rnn, imported on the first such call; ``gates`` and ``saved`` are then that
backend's float32 workspaces (their shapes differ from the CPU's; the fake implementation asks the
same dispatch). A cell step is a layer of one step and one direction. Arguments are checked by
dlkern._validate before these functions run. Calls that need no gradient and are not being traced
skip the custom op machinery (tens of microseconds, more than a small cell step costs) and call
the kernel directly: the lean path. The numbers are the same either way.
"""
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from dlkern import _dispatch
from dlkern.kernels.numba import rnn as numba_rnn

_GATES = {"lstm": 4, "gru": 3}

_dispatch.register_triton("rnn")


def _triton():
    from dlkern.kernels.triton import rnn as triton_rnn
    return triton_rnn


def _on_triton(x):
    return _dispatch.backend_for("rnn", x) == "triton"


def _layer_precision(x, batch_sizes, w_hh, w_hr):
    """torch runs layers on cuDNN and cells as matmuls (kernels/triton/precision.py); a one-step,
    one-direction layer without projection is how cells reach the layer op."""
    from dlkern.kernels.triton.precision import CUDNN, MATMUL, dot_precision

    cell = batch_sizes.shape[0] == 1 and w_hh.shape[0] == 1 and w_hr is None
    return dot_precision(x, MATMUL if cell else CUDNN)


def _cell_precision(x):
    from dlkern.kernels.triton.precision import MATMUL, dot_precision

    return dot_precision(x, MATMUL)


def _workspace_shapes(mode, x, w_hh, n_rows):
    """(shape, dtype) of the ``gates`` and ``saved`` outputs for the backend that runs ``x``."""
    n_dir, gh, proj = w_hh.shape
    hid = gh // _GATES[mode]
    if _on_triton(x):
        width = 2 * hid if mode == "lstm" and proj != hid else hid
        return ((n_rows, n_dir, gh), torch.float32), ((n_rows, n_dir, width), torch.float32)
    return ((n_dir, n_rows, gh), x.dtype), ((n_dir, n_rows, hid), x.dtype)


def _new_f32(shape, x):
    return _dispatch.new_output(shape, x.new_empty((), dtype=torch.float32))


def _np(t):
    """A C-contiguous NumPy view (or copy) of ``t``; never writes to ``t``."""
    return t.detach().contiguous().numpy()


def _np_or_empty(t, shape, like):
    if t is None:
        return np.zeros(shape, dtype=like.dtype)
    return _np(t)


def _shapes(mode, x, batch_sizes, w_hh, h0):
    n_dir, gh, proj = w_hh.shape
    hid = gh // _GATES[mode]
    n_rows = x.shape[0]
    return n_dir, gh, hid, proj, n_rows, h0.shape[1]


def _forward_arrays(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0):
    """Allocate the outputs and run the forward kernel; returns the five output tensors."""
    if _on_triton(x):
        return _triton_forward(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)
    n_dir, gh, hid, proj, n_rows, batch = _shapes(mode, x, batch_sizes, w_hh, h0)
    y = _dispatch.new_output((n_rows, n_dir * proj), x)
    h_n = h0.detach().clone(memory_format=torch.contiguous_format)
    c_n = (c0.detach().clone(memory_format=torch.contiguous_format) if mode == "lstm"
           else x.new_empty((0,)))
    gates = _dispatch.new_output((n_dir, n_rows, gh), x)
    saved = _dispatch.new_output((n_dir, n_rows, hid), x)
    xa = _np(x)
    c_arr = c_n.numpy() if mode == "lstm" else np.zeros((n_dir, batch, hid), dtype=xa.dtype)
    w_hr_a = np.empty((n_dir, 0, 0), dtype=xa.dtype) if w_hr is None else _np(w_hr)
    if xa.shape[1] == 0:  # an input of width 0: the input projection is zero
        gates.zero_()
        xa = np.zeros((n_rows, 1), dtype=xa.dtype)
        w_ih_a = np.zeros((n_dir, gh, 1), dtype=xa.dtype)
    else:
        w_ih_a = _np(w_ih)
    numba_rnn.layer_forward(mode, xa, _np(batch_sizes), w_ih_a, _np(w_hh),
                            _np_or_empty(b_ih, (n_dir, gh), xa), _np_or_empty(b_hh, (n_dir, gh), xa),
                            w_hr_a, _np(h0), c_arr, y.numpy(), h_n.numpy(), c_arr, gates.numpy(),
                            saved.numpy())
    return y, h_n, c_n, gates, saved


def _triton_forward(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0):
    n_dir, gh, hid, proj, n_rows, batch = _shapes(mode, x, batch_sizes, w_hh, h0)
    (g_shape, _), (s_shape, _) = _workspace_shapes(mode, x, w_hh, n_rows)
    y = _dispatch.new_output((n_rows, n_dir * proj), x)
    h_n = _dispatch.new_output(tuple(h0.shape), x)
    c_n = _dispatch.new_output((n_dir, batch, hid), x) if mode == "lstm" else x.new_empty((0,))
    gates, saved = _new_f32(g_shape, x), _new_f32(s_shape, x)
    _triton().layer_forward(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, y, h_n,
                            c_n, gates, saved, _layer_precision(x, batch_sizes, w_hh, w_hr))
    return y, h_n, c_n, gates, saved


@torch.library.custom_op("dlkern::rnn_layer", mutates_args=())
def rnn_layer_op(mode: str, x: Tensor, batch_sizes: Tensor, w_ih: Tensor, w_hh: Tensor,
                 b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                 h0: Tensor, c0: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _forward_arrays(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)


@rnn_layer_op.register_fake
def _(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0):
    n_dir, gh, hid, proj, n_rows, batch = _shapes(mode, x, batch_sizes, w_hh, h0)
    c_n = x.new_empty((n_dir, batch, hid)) if mode == "lstm" else x.new_empty((0,))
    (g_shape, g_dtype), (s_shape, s_dtype) = _workspace_shapes(mode, x, w_hh, n_rows)
    return (x.new_empty((n_rows, n_dir * proj)), x.new_empty((n_dir, batch, proj)), c_n,
            x.new_empty(g_shape, dtype=g_dtype), x.new_empty(s_shape, dtype=s_dtype))


@torch.library.custom_op("dlkern::rnn_layer_backward", mutates_args=())
def rnn_layer_backward_op(mode: str, dy: Tensor, dh_n: Tensor, dc_n: Optional[Tensor], x: Tensor,
                          batch_sizes: Tensor, w_ih: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
                          h0: Tensor, c0: Optional[Tensor], y: Tensor, gates: Tensor,
                          saved: Tensor) -> List[Tensor]:
    n_dir, gh, hid, proj, n_rows, batch = _shapes(mode, x, batch_sizes, w_hh, h0)
    dx = _dispatch.new_output(tuple(x.shape), x)
    dw_ih = _dispatch.new_output(tuple(w_ih.shape), x)
    dw_hh = _dispatch.new_output(tuple(w_hh.shape), x)
    db_ih = _dispatch.new_output((n_dir, gh), x)
    db_hh = _dispatch.new_output((n_dir, gh), x)
    dw_hr = _dispatch.new_output((n_dir, proj, hid) if w_hr is not None else (n_dir, 0, 0), x)
    if _on_triton(x):
        dh = _dispatch.new_output(tuple(h0.shape), x)
        dc = _dispatch.new_output((n_dir, batch, hid), x) if mode == "lstm" else x.new_empty((0,))
        _triton().layer_backward(mode, x, batch_sizes, w_ih, w_hh, w_hr, h0, c0, y, gates, saved,
                                 dy, dh_n, dc_n, dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh, dc,
                                 _layer_precision(x, batch_sizes, w_hh, w_hr))
        return [dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh, dc]
    dh = dh_n.detach().clone(memory_format=torch.contiguous_format)
    if mode == "lstm":
        dc = dc_n.detach().clone(memory_format=torch.contiguous_format)
        dc_arr = dc.numpy()
    else:
        dc = x.new_empty((0,))
        dc_arr = np.zeros((n_dir, batch, hid), dtype=dh.numpy().dtype)
    c0_arr = _np(c0) if c0 is not None else dc_arr
    w_hr_a = np.empty((n_dir, 0, 0), dtype=dc_arr.dtype) if w_hr is None else _np(w_hr)
    xa, w_ih_a, dx_a, dw_ih_a = _np(x), _np(w_ih), dx.numpy(), dw_ih.numpy()
    if x.shape[1] == 0:  # width-0 input: nothing to multiply, gradients of size 0
        xa = np.zeros((n_rows, 1), dtype=xa.dtype)
        w_ih_a = np.zeros((n_dir, gh, 1), dtype=xa.dtype)
        dx_a = np.empty((n_rows, 1), dtype=xa.dtype)
        dw_ih_a = np.empty((n_dir, gh, 1), dtype=xa.dtype)
    numba_rnn.layer_backward(mode, xa, _np(batch_sizes), w_ih_a, _np(w_hh), w_hr_a, _np(h0),
                             c0_arr, _np(y), _np(gates), _np(saved), _np(dy), dh.numpy(), dc_arr,
                             dx_a, dw_ih_a, dw_hh.numpy(), db_ih.numpy(), db_hh.numpy(),
                             dw_hr.numpy())
    return [dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh, dc]


@rnn_layer_backward_op.register_fake
def _(mode, dy, dh_n, dc_n, x, batch_sizes, w_ih, w_hh, w_hr, h0, c0, y, gates, saved):
    n_dir, gh, hid, proj, n_rows, batch = _shapes(mode, x, batch_sizes, w_hh, h0)
    return [x.new_empty(tuple(x.shape)), x.new_empty(tuple(w_ih.shape)),
            x.new_empty(tuple(w_hh.shape)), x.new_empty((n_dir, gh)), x.new_empty((n_dir, gh)),
            x.new_empty((n_dir, proj, hid) if w_hr is not None else (n_dir, 0, 0)),
            x.new_empty(tuple(h0.shape)),
            x.new_empty((n_dir, batch, hid)) if mode == "lstm" else x.new_empty((0,))]


def _setup_context(ctx, inputs, output):
    mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 = inputs
    y, h_n, c_n, gates, saved = output
    ctx.mark_non_differentiable(gates, saved)
    ctx.save_for_backward(x, batch_sizes, w_ih, w_hh, w_hr, h0, c0, y, gates, saved)
    ctx.mode = mode
    ctx.has_bias = (b_ih is not None, b_hh is not None)


def _backward(ctx, dy, dh_n, dc_n, _dgates, _dsaved):
    x, batch_sizes, w_ih, w_hh, w_hr, h0, c0, y, gates, saved = ctx.saved_tensors
    mode = ctx.mode
    dy = torch.zeros_like(y) if dy is None else dy
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n
    if mode == "lstm":
        dc_n = torch.zeros_like(c0) if dc_n is None else dc_n
    else:
        dc_n = None
    dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh0, dc0 = rnn_layer_backward_op(
        mode, dy, dh_n, dc_n, x, batch_sizes, w_ih, w_hh, w_hr, h0, c0, y, gates, saved)
    return (None, dx, None, dw_ih, dw_hh, db_ih if ctx.has_bias[0] else None,
            db_hh if ctx.has_bias[1] else None, dw_hr if w_hr is not None else None, dh0,
            dc0 if mode == "lstm" else None)


rnn_layer_op.register_autograd(_backward, setup_context=_setup_context)


def _needs_graph(tensors):
    """True when the call must go through the custom op: autograd or a compiler is watching."""
    if torch.compiler.is_compiling():
        return True
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in tensors)


def rnn_layer(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0):
    """One layer (all directions) on checked arguments of a dlkern backend: (y, h_n, c_n)."""
    tensors = (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)
    if _needs_graph(tensors):
        y, h_n, c_n, _, _ = rnn_layer_op(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr,
                                         h0, c0)
    else:
        y, h_n, c_n, _, _ = _forward_arrays(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr,
                                            h0, c0)
    return y, h_n, c_n


def _cell_lean(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, np_weights=None, backend=None):
    """The lean path of one cell step: the kernel on the calling thread, no custom op.
    ``np_weights``: NumPy views (w_ih, w_hh, b_ih, b_hh) a module keeps, else made here."""
    batch, hid = h.shape
    y = _dispatch.new_output((batch, hid), x)
    lstm = mode == "lstm"
    c_n = torch.empty_like(y) if lstm else None  # every element is written (c' = f c + i g)
    if (backend or _dispatch.backend_for("rnn", x)) == "triton":
        _triton().cell_forward(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, y, c_n,
                               _cell_precision(x))
        return y, c_n
    if np_weights is None:
        np_weights = numpy_weights(w_ih, w_hh, b_ih, b_hh)
    y_a = y.numpy()
    numba_rnn.cell_forward(mode, _np(x), _np(h), _np(c) if lstm else y_a, *np_weights, y_a,
                           c_n.numpy() if lstm else y_a)
    return y, c_n


def numpy_weights(w_ih, w_hh, b_ih, b_hh):
    """NumPy views of a cell's weights for the lean path (zeros for a missing bias)."""
    w_ih_a, w_hh_a = _np(w_ih), _np(w_hh)
    zeros = np.zeros(w_hh_a.shape[0], dtype=w_hh_a.dtype)
    return (w_ih_a, w_hh_a, zeros if b_ih is None else _np(b_ih),
            zeros if b_hh is None else _np(b_hh))


def rnn_cell(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, np_weights=None, backend=None):
    """One cell step on checked, batched (B, I) arguments: (h', c') (c' None for a GRU).
    ``backend``: the caller's backend_for result, when it has one (saves a lookup per step)."""
    if x.shape[1] > 0 and x.shape[0] > 0 and not _needs_graph((x, h, c, w_ih, w_hh, b_ih, b_hh)):
        return _cell_lean(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, np_weights, backend)
    batch_sizes = torch.full((1,), x.shape[0], dtype=torch.int64)
    y, h_n, c_n, _, _ = rnn_layer_op(
        mode, x, batch_sizes, w_ih.unsqueeze(0), w_hh.unsqueeze(0),
        None if b_ih is None else b_ih.unsqueeze(0), None if b_hh is None else b_hh.unsqueeze(0),
        None, h.unsqueeze(0), None if c is None else c.unsqueeze(0))
    return y, (c_n[0] if mode == "lstm" else None)
