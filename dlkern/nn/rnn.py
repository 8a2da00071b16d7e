"""Drop-in RNN, LSTM, GRU, RNNCell, LSTMCell and GRUCell: subclasses of torch's, same constructor,
same state_dict.

Only ``forward`` changes: the arguments are checked as torch checks them (dlkern._validate), then
the layers run dlkern.ops.rnn's driver (the same one dlkern.enable uses) on torch's own flat weight
list, and cells dlkern.ops.rnn.cell. Cases with no kernel (dtype, device) run torch's forward,
counted as fallbacks.

The layers take three keyword arguments torch's lack (defaults keep torch's behaviour exactly;
semantics in dlkern.ops.rnn): ``recurrent_dropout=p`` (one mask per sequence on h_{t-1} where it
enters W_hh, every step), ``dropout_mode="elementwise" | "variational"`` (the inter-layer
``dropout``: torch's per-element masks, or one mask per sequence) and ``weight_dropout=p``
(DropConnect on W_hh, one mask per forward call). They are plain attributes, not state: a module
that ``dlkern.patch`` swapped in has the defaults, and ``state_dict`` is torch's.
"""
import torch

from dlkern import _dispatch, _validate
from dlkern.ops import rnn as ops_rnn


class _DlkernRNNMixin:
    recurrent_dropout = 0.0
    dropout_mode = "elementwise"
    weight_dropout = 0.0

    def __init__(self, *args, recurrent_dropout=0.0, dropout_mode="elementwise",
                 weight_dropout=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.recurrent_dropout = _validate.dropout_probability(recurrent_dropout,
                                                               "recurrent_dropout")
        self.dropout_mode = _validate.dropout_mode(dropout_mode)
        self.weight_dropout = _validate.dropout_probability(weight_dropout, "weight_dropout")

    def extra_repr(self):
        s = super().extra_repr()
        for name, default in (("recurrent_dropout", 0.0), ("dropout_mode", "elementwise"),
                              ("weight_dropout", 0.0)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s

    def _regularised(self):
        return self.training and (self.recurrent_dropout > 0 or self.weight_dropout > 0 or (
            self.dropout > 0 and self.dropout_mode != "elementwise" and self.num_layers > 1))

    def forward(self, input, hx=None):
        mode = self.mode.lower()  # lstm, gru, rnn_tanh, rnn_relu: torch's own mode names
        lstm = mode == "lstm"
        call = _validate.rnn_module_inputs(self, mode, input, hx)
        states = call.states
        if states is None:
            num_dir = 2 if self.bidirectional else 1
            proj = getattr(self, "proj_size", 0)
            data = call.data

            def zeros(size):
                return torch.zeros(self.num_layers * num_dir, call.batch, size, dtype=data.dtype,
                                   device=data.device)
            states = [zeros(proj or self.hidden_size)] + ([zeros(self.hidden_size)] if lstm else [])
        elif call.sorted_indices is not None:
            states = [s.index_select(1, call.sorted_indices) for s in states]
        params = self._flat_weights
        if _dispatch.backend_for("rnn", call.data, *states, *params) is None:
            if self._regularised():
                raise RuntimeError(
                    f"dlkern.nn.{type(self).__name__}: recurrent_dropout, weight_dropout and "
                    f"variational dropout need dlkern's kernels, which do not cover "
                    f"{call.data.dtype} on {call.data.device}")
            _dispatch.fallback("rnn", call.data, *states, *params)
            return super().forward(input, hx)
        output, h_n, c_n = ops_rnn.rnn(
            mode, call.data, call.batch_sizes, states, params, self.bias, self.num_layers,
            float(self.dropout), self.training, self.bidirectional, self.batch_first,
            self.recurrent_dropout, self.dropout_mode, self.weight_dropout)
        if call.batch_sizes is not None:
            if call.unsorted_indices is not None:
                h_n = h_n.index_select(1, call.unsorted_indices)
                c_n = c_n.index_select(1, call.unsorted_indices) if lstm else None
            output = torch.nn.utils.rnn.PackedSequence(output, call.batch_sizes,
                                                       call.sorted_indices, call.unsorted_indices)
        elif call.unbatched:
            output = output.squeeze(0 if self.batch_first else 1)
            h_n = h_n.squeeze(1)
            c_n = c_n.squeeze(1) if lstm else None
        return output, ((h_n, c_n) if lstm else h_n)


class RNN(_DlkernRNNMixin, torch.nn.RNN):
    """torch.nn.RNN (tanh or relu) computed by dlkern."""


class LSTM(_DlkernRNNMixin, torch.nn.LSTM):
    """torch.nn.LSTM computed by dlkern."""


class GRU(_DlkernRNNMixin, torch.nn.GRU):
    """torch.nn.GRU computed by dlkern."""


class _DlkernCellMixin:
    def _cell_mode(self):
        if isinstance(self, torch.nn.LSTMCell):
            return "lstm"
        if isinstance(self, torch.nn.GRUCell):
            return "gru"
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return "rnn_" + self.nonlinearity

    def _numpy_weights(self):
        """NumPy views of the parameters for the lean path, kept while the parameters are the
        same tensors over the same storage (in-place updates show through the views)."""
        params = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        key = tuple((id(p), p.data_ptr(), p.dtype) if p is not None else None for p in params)
        cached = self.__dict__.get("_dlkern_numpy")
        if cached is None or cached[0] != key:
            if any(p is not None and not p.is_contiguous() for p in params):
                return None
            cached = (key, ops_rnn.numpy_weights(*params))
            self.__dict__["_dlkern_numpy"] = cached
        return cached[1]

    def forward(self, input, hx=None):
        mode = self._cell_mode()
        _validate.rnn_cell_module_args(self, mode, input, hx)
        if hx is None:
            shape = (input.shape[0], self.hidden_size) if input.dim() == 2 else (self.hidden_size,)
            zeros = torch.zeros(shape, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros) if mode == "lstm" else zeros
        np_weights = backend = None
        if not torch.compiler.is_compiling():
            backend = _dispatch.backend_for("rnn", input)
            if backend == "numba":
                np_weights = self._numpy_weights()
        return ops_rnn.cell(mode, input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                            self.bias_hh, np_weights=np_weights, backend=backend)


class RNNCell(_DlkernCellMixin, torch.nn.RNNCell):
    """torch.nn.RNNCell (tanh or relu) computed by dlkern."""


class LSTMCell(_DlkernCellMixin, torch.nn.LSTMCell):
    """torch.nn.LSTMCell computed by dlkern."""


class GRUCell(_DlkernCellMixin, torch.nn.GRUCell):
    """torch.nn.GRUCell computed by dlkern."""
