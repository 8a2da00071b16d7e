"""Drop-in LSTM, GRU, LSTMCell and GRUCell: subclasses of torch's, same constructor, same state_dict.

Only ``forward`` changes. A layer's input is brought to the packed layout (rows of each time step,
step after step; a padded batch is a packed one whose steps all have B rows), each layer runs as
one ``dlkern::rnn_layer`` call covering every direction, dropout between layers draws its mask
from torch's RNG (``F.dropout``, as torch's own layers do), and the result is put back in the
caller's layout. Cases with no kernel (dtype, device) run torch's forward, counted as fallbacks.
"""
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from dlkern import _dispatch, _validate
from dlkern import functional as DF
from dlkern.ops.rnn import numpy_weights, rnn_cell, rnn_layer


def _stack(tensors):
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


class _DlkernRNNMixin:
    _mode = None

    def _layer_weights(self, layer):
        suffixes = ["", "_reverse"] if self.bidirectional else [""]
        names = ["weight_ih", "weight_hh"]
        names += ["bias_ih", "bias_hh"] if self.bias else []
        proj = getattr(self, "proj_size", 0) > 0
        names += ["weight_hr"] if proj else []
        got = {n: _stack([getattr(self, f"{n}_l{layer}{s}") for s in suffixes]) for n in names}
        return (got["weight_ih"], got["weight_hh"], got.get("bias_ih"), got.get("bias_hh"),
                got.get("weight_hr"))

    def forward(self, input, hx=None):
        lstm = self._mode == "lstm"
        name = type(self).__name__
        num_dir = 2 if self.bidirectional else 1
        proj = getattr(self, "proj_size", 0)
        real_hidden = proj if proj > 0 else self.hidden_size
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            batch = int(batch_sizes[0]) if batch_sizes.numel() else 0
            unbatched = False
        else:
            _validate.check_tensor(input, "input")
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            unbatched = input.dim() == 2
            batch_dim = 0 if self.batch_first else 1
            data = input.unsqueeze(batch_dim) if unbatched else input
            batch = data.size(batch_dim)
            batch_sizes = sorted_indices = unsorted_indices = None
        states = (hx if hx is None else (tuple(hx) if lstm else (hx,)))
        if states is None:
            zeros = lambda size: torch.zeros(self.num_layers * num_dir, batch, size,  # noqa: E731
                                             dtype=data.dtype, device=data.device)
            states = (zeros(real_hidden), zeros(self.hidden_size)) if lstm else (zeros(real_hidden),)
        else:
            for s in states:
                _validate.check_tensor(s, "hx")
            if not packed:
                want = 2 if unbatched else 3
                if any(s.dim() != want for s in states):
                    kind = "unbatched 2-D" if unbatched else "batched 3-D"
                    dims = ", ".join(f"{s.dim()}-D" for s in states)
                    what = "hx and cx" if lstm else "hx"
                    raise RuntimeError(f"For {kind} input, {what} should also be {want}-D but got "
                                       f"({dims}) tensor(s)")
                if unbatched:
                    states = tuple(s.unsqueeze(1) for s in states)
        _validate.rnn_module_args(self, self._mode, data, states if lstm else states[0],
                                  batch_sizes)
        if packed and hx is not None:
            states = tuple(s if sorted_indices is None else s.index_select(1, sorted_indices)
                           for s in states)
        params = list(self.parameters())
        if _dispatch.backend_for("rnn", data, *states, *params) is None:
            _dispatch.fallback("rnn", data, *states, *params)
            return super().forward(input, hx)

        if packed:
            rows, steps_bs = data, batch_sizes.to(torch.int64).contiguous()
        else:
            seq = data.transpose(0, 1) if self.batch_first else data
            steps = seq.shape[0]
            rows = seq.contiguous().reshape(steps * batch, seq.shape[2])
            steps_bs = torch.full((steps,), batch, dtype=torch.int64)
        h_all, c_all = [], []
        layer_input = rows
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh, w_hr = self._layer_weights(layer)
            sl = slice(layer * num_dir, (layer + 1) * num_dir)
            h0 = states[0][sl]
            c0 = states[1][sl] if lstm else None
            y, h_n, c_n = rnn_layer(self._mode, layer_input, steps_bs, w_ih, w_hh, b_ih, b_hh,
                                    w_hr, h0, c0)
            h_all.append(h_n)
            c_all.append(c_n)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                y = F.dropout(y, self.dropout, training=True)
            layer_input = y
        h_n = torch.cat(h_all) if len(h_all) > 1 else h_all[0]
        c_n = (torch.cat(c_all) if len(c_all) > 1 else c_all[0]) if lstm else None
        if packed:
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
                c_n = c_n.index_select(1, unsorted_indices) if lstm else None
            output = PackedSequence(layer_input, batch_sizes, sorted_indices, unsorted_indices)
        else:
            output = layer_input.reshape(steps, batch, layer_input.shape[1])
            if self.batch_first:
                output = output.transpose(0, 1)
            if unbatched:
                output = output.squeeze(0 if self.batch_first else 1)
                h_n = h_n.squeeze(1)
                c_n = c_n.squeeze(1) if lstm else None
        return output, ((h_n, c_n) if lstm else h_n)


class LSTM(_DlkernRNNMixin, torch.nn.LSTM):
    """torch.nn.LSTM computed by dlkern."""
    _mode = "lstm"


class GRU(_DlkernRNNMixin, torch.nn.GRU):
    """torch.nn.GRU computed by dlkern."""
    _mode = "gru"


class _DlkernCellMixin:
    _mode = None

    def _numpy_weights(self):
        """NumPy views of the parameters for the lean path, kept while the parameters are the
        same tensors over the same storage (in-place updates show through the views)."""
        params = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        key = tuple((id(p), p.data_ptr(), p.dtype) if p is not None else None for p in params)
        cached = self.__dict__.get("_dlkern_numpy")
        if cached is None or cached[0] != key:
            if any(p is not None and not p.is_contiguous() for p in params):
                return None
            cached = (key, numpy_weights(*params))
            self.__dict__["_dlkern_numpy"] = cached
        return cached[1]

    def forward(self, input, hx=None):
        lstm = self._mode == "lstm"
        op = "lstm_cell" if lstm else "gru_cell"
        _validate.rnn_cell_module_args(self, self._mode, input, hx)
        if hx is None:
            shape = (input.shape[0], self.hidden_size) if input.dim() == 2 else (self.hidden_size,)
            zeros = torch.zeros(shape, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros) if lstm else zeros
        weights = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        x, h, c, unbatched = _validate.rnn_cell_args(op, self._mode, input, hx, *weights)
        # The checks above make every tensor share x's dtype and device: x decides the backend.
        backend = _dispatch.backend_for("rnn", x)
        if backend is None:
            return (DF.lstm_cell if lstm else DF.gru_cell)(input, hx, *weights)
        np_weights = None
        if backend == "numba" and not torch.compiler.is_compiling():
            np_weights = self._numpy_weights()
        h_new, c_new = rnn_cell(self._mode, x, h, c, *weights, np_weights=np_weights,
                                backend=backend)
        if unbatched:
            h_new = h_new.squeeze(0)
            c_new = None if c_new is None else c_new.squeeze(0)
        return (h_new, c_new) if lstm else h_new


class LSTMCell(_DlkernCellMixin, torch.nn.LSTMCell):
    """torch.nn.LSTMCell computed by dlkern."""
    _mode = "lstm"


class GRUCell(_DlkernCellMixin, torch.nn.GRUCell):
    """torch.nn.GRUCell computed by dlkern."""
    _mode = "gru"
