"""The recurrent family's one code path: the multi-layer, bidirectional, packed or padded driver
and the cells, for dlkern.functional, dlkern.nn and dlkern.enable alike.

``rnn(...)`` takes torch's own calling convention of aten::lstm / gru / rnn_tanh / rnn_relu (the
flat weight list, per layer and direction: w_ih, w_hh, [b_ih, b_hh], [w_hr]) plus dlkern's
regularisers, and runs each layer as one ``rnn_layer.layer`` call covering every direction.
``cell(...)`` runs one step of a cell (dlkern.functional's lstm_cell, gru_cell, rnn_tanh_cell,
rnn_relu_cell and the cell modules). Arguments are checked by dlkern._validate before either runs.

Regularisers, in training only (eval never drops), every mask drawn from torch's default generator
(reproducible under torch.manual_seed) as Bernoulli(1 - p) / (1 - p), in this order per layer:

1. ``weight_dropout`` (DropConnect on W_hh, AWD-LSTM): one mask of W_hh's shape per layer and
   direction for the whole call; the layer runs on W_hh * mask (autograd carries the gradient to
   the unmasked parameter, which is never modified or copied into the module).
2. ``recurrent_dropout`` (Gal and Ghahramani): one mask of (batch, P) per direction, multiplying
   h_{t-1} where it enters W_hh h_{t-1} (every gate) at every step of the sequence. The state
   passed on, the output and the GRU's z * h_{t-1} term are not masked. Inside the fused loop.
3. after each layer but the last, ``dropout`` between layers: torch's per-element F.dropout (the
   same draws as torch's own layers), or with ``dropout_mode="variational"`` one mask of
   (batch, D*P) applied at every step.
"""
import numpy as np
import torch
import torch.nn.functional as F

from dlkern import _dispatch, _validate
from dlkern.kernels.rnn_modes import GATES
from dlkern.ops.rnn_layer import _np, _path, cell_precision, layer, numba_rnn, triton_kernels


def bernoulli_mask(shape, p, like):
    """A dropout mask: Bernoulli(1 - p) / (1 - p) of ``shape`` from torch's generator (zeros for
    p = 1), in ``like``'s dtype and device."""
    mask = torch.empty(shape, dtype=like.dtype, device=like.device)
    if p >= 1:
        return mask.zero_()
    return mask.bernoulli_(1 - p).div_(1 - p)


def _stacked(tensors):
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def layer_weights(params, has_biases, proj, num_dir, layer_index):
    """(w_ih, w_hh, b_ih, b_hh, w_hr) of one layer, stacked over directions, from torch's flat
    weight list."""
    per_direction = 2 + 2 * bool(has_biases) + int(proj)
    start = layer_index * num_dir * per_direction
    groups = [params[start + d * per_direction:start + (d + 1) * per_direction]
              for d in range(num_dir)]

    def stacked(i):
        return _stacked([g[i] for g in groups])

    w_ih, w_hh = stacked(0), stacked(1)
    b_ih, b_hh = (stacked(2), stacked(3)) if has_biases else (None, None)
    return w_ih, w_hh, b_ih, b_hh, (stacked(per_direction - 1) if proj else None)


def _row_batch_index(batch_sizes, n_rows, device):
    """The batch entry of every packed row (for a per-sequence mask on packed rows)."""
    return torch.cat([torch.arange(int(n)) for n in batch_sizes]).to(device)


def rnn(mode, data, batch_sizes, states, params, has_biases, num_layers, dropout, train,
        bidirectional, batch_first, recurrent_dropout=0.0, dropout_mode="elementwise",
        weight_dropout=0.0):
    """torch's multi-layer RNN/LSTM/GRU (at::lstm and friends) on dlkern's layer op.

    data: (T, B, I) / (B, T, I) (batch_first), or packed rows (N, I) with batch_sizes (T,) int64;
    states: [h0] or [h0, c0], each (L*D, B, .); params: torch's flat weight list. Returns
    (output in data's layout, h_n, c_n or None)."""
    lstm = mode == "lstm"
    num_dir = 2 if bidirectional else 1
    proj = lstm and states[0].shape[2] != states[1].shape[2]  # h has the projected size
    if batch_sizes is not None:
        rows, steps_bs = data, batch_sizes.to(torch.int64).contiguous()
        batch = int(steps_bs[0]) if steps_bs.numel() else 0
    else:
        seq = data.transpose(0, 1) if batch_first else data
        steps, batch = seq.shape[0], seq.shape[1]
        rows = seq.contiguous().reshape(steps * batch, seq.shape[2])
        steps_bs = torch.full((steps,), batch, dtype=torch.int64)
    h_all, c_all = [], []
    row_batch = None
    for index in range(num_layers):
        w_ih, w_hh, b_ih, b_hh, w_hr = layer_weights(params, has_biases, proj, num_dir, index)
        if train and weight_dropout > 0:
            w_hh = w_hh * bernoulli_mask(w_hh.shape, weight_dropout, w_hh)
        rmask = None
        if train and recurrent_dropout > 0:
            rmask = bernoulli_mask((num_dir, batch, w_hh.shape[2]), recurrent_dropout, rows)
        sl = slice(index * num_dir, (index + 1) * num_dir)
        y, h_n, c_n = layer(mode, rows, steps_bs, w_ih, w_hh, b_ih, b_hh, w_hr, rmask,
                            states[0][sl], states[1][sl] if lstm else None)
        h_all.append(h_n)
        c_all.append(c_n)
        if dropout > 0 and train and index < num_layers - 1:
            if dropout_mode == "variational":
                mask = bernoulli_mask((batch, y.shape[1]), dropout, y)
                if batch_sizes is None:
                    y = (y.view(-1, batch, y.shape[1]) * mask).view(y.shape)
                else:
                    if row_batch is None:
                        row_batch = _row_batch_index(steps_bs, y.shape[0], y.device)
                    y = y * mask[row_batch]
            else:
                y = F.dropout(y, dropout, training=True)  # at::dropout, as at::lstm calls it
        rows = y
    h_n = torch.cat(h_all) if len(h_all) > 1 else h_all[0]
    c_n = (torch.cat(c_all) if len(c_all) > 1 else c_all[0]) if lstm else None
    if batch_sizes is None:
        output = rows.reshape(steps, batch, rows.shape[1])
        output = output.transpose(0, 1) if batch_first else output
    else:
        output = rows
    return output, h_n, c_n


# --- cells ---------------------------------------------------------------------------------------

_TORCH_CELL = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn_tanh": torch.rnn_tanh_cell,
               "rnn_relu": torch.rnn_relu_cell}


def numpy_weights(w_ih, w_hh, b_ih, b_hh):
    """NumPy views of a cell's weights for the lean path, shaped as the layer loop takes them
    (numba_rnn.cell_weights; zeros for a missing bias)."""
    w_ih_a, w_hh_a = _np(w_ih), _np(w_hh)
    zeros = np.zeros(w_hh_a.shape[0], dtype=w_hh_a.dtype)
    return numba_rnn.cell_weights(w_ih_a, w_hh_a, zeros if b_ih is None else _np(b_ih),
                                  zeros if b_hh is None else _np(b_hh))


def _np_input(t):
    """NumPy view of a checked input of the lean path (a copy only when not C-contiguous)."""
    t = t.detach()
    return t.numpy() if t.is_contiguous() else t.contiguous().numpy()


def _cell_lean(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, np_weights, backend):
    """One step with no graph: the kernel on the calling thread, no custom op."""
    batch, hid = h.shape
    y = _dispatch.new_output((batch, hid), x)
    lstm = mode == "lstm"
    c_n = torch.empty_like(y) if lstm else None  # every element is written (c' = f c + i g)
    if backend == "triton":
        triton_kernels().cell_forward(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, y, c_n,
                                      cell_precision(x))
        return y, c_n
    if np_weights is None:
        np_weights = numpy_weights(w_ih, w_hh, b_ih, b_hh)
    y_a = y.numpy()
    numba_rnn.cell_forward(mode, _np_input(x), _np_input(h), _np_input(c) if lstm else y_a,
                           np_weights, y_a, c_n.numpy() if lstm else y_a)
    return y, c_n


def cell_step(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, backend, np_weights=None):
    """One step on checked, batched (B, I) arguments of a dlkern backend: (h', c') (c' None
    unless LSTM). ``np_weights``: NumPy views (w_ih, w_hh, b_ih, b_hh) a module keeps."""
    if x.shape[1] > 0 and x.shape[0] > 0 and \
            _path((x, h, c, w_ih, w_hh, b_ih, b_hh)) == "lean":
        return _cell_lean(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, np_weights, backend)
    batch_sizes = torch.full((1,), x.shape[0], dtype=torch.int64)
    y, h_n, c_n = layer(
        mode, x, batch_sizes, w_ih.unsqueeze(0), w_hh.unsqueeze(0),
        None if b_ih is None else b_ih.unsqueeze(0), None if b_hh is None else b_hh.unsqueeze(0),
        None, None, h.unsqueeze(0), None if c is None else c.unsqueeze(0))
    return y, (c_n[0] if mode == "lstm" else None)


def cell(mode, input, hx, w_ih, w_hh, b_ih=None, b_hh=None, np_weights=None, backend=None):
    """dlkern.functional's cells: hx is (h, c) for an LSTM, h otherwise; returns (h, c) for an
    LSTM, h otherwise. Cases with no kernel run torch's cell (counted as fallbacks). A module
    passes the NumPy views of its weights it keeps and the backend it looked up for input."""
    op = f"{mode}_cell"
    x, h, c, unbatched = _validate.rnn_cell_args(op, mode, input, hx, w_ih, w_hh, b_ih, b_hh)
    # The checks make every tensor share x's dtype and device: x decides the backend.
    if backend is None:
        backend = _dispatch.backend_for("rnn", x)
    if backend is None:
        _dispatch.fallback("rnn", x, h, c, w_ih, w_hh, b_ih, b_hh)
        if mode == "lstm":
            h_new, c_new = torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
        else:
            h_new, c_new = _TORCH_CELL[mode](x, h, w_ih, w_hh, b_ih, b_hh), None
    else:
        h_new, c_new = cell_step(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, backend, np_weights)
    if unbatched:
        h_new = h_new.squeeze(0)
        c_new = None if c_new is None else c_new.squeeze(0)
    return (h_new, c_new) if mode == "lstm" else h_new


__all__ = ["GATES", "bernoulli_mask", "cell", "cell_step", "layer_weights", "numpy_weights", "rnn"]
