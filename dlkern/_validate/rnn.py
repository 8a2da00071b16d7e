"""Argument checks of the recurrent family (dlkern.ops.rnn, dlkern.nn.rnn, dlkern.enable): cells,
layer modules and torch's flat-weight calls (aten::lstm/gru/rnn_tanh/rnn_relu), raising the
exception types torch raises."""
import collections

import torch

from dlkern._validate.common import _shape, check_tensor
from dlkern.kernels.rnn_modes import GATES

_TUPLE_STATE = {"lstm"}  # modes whose state is a pair (h, c)


def _same_kind(op, named, error=RuntimeError):
    """Every tensor of ``named`` ({name: tensor or None}) shares one dtype and one device."""
    first = None
    for k, v in named.items():
        if v is None:
            continue
        check_tensor(v, k)
        if first is None:
            first = v
            continue
        if v.dtype != first.dtype:
            desc = ", ".join(f"{n} {t.dtype}" for n, t in named.items() if t is not None)
            raise error(f"{op}: expected all tensors to have the same dtype, got {desc}")
        if v.device != first.device:
            desc = ", ".join(f"{n} on {t.device}" for n, t in named.items() if t is not None)
            raise RuntimeError(f"{op}: expected all tensors on one device, got {desc}")
    if first is not None and not first.is_floating_point():
        raise RuntimeError(f"{op}: expected floating-point tensors, got {first.dtype}")


def dropout_probability(p, name):
    """A dropout probability in [0, 1] (ValueError otherwise, as torch's dropout modules)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"{name} should be a number in range [0, 1] representing the probability "
                         f"of an element being zeroed, got {p!r}")
    return float(p)


def dropout_mode(mode):
    if mode not in ("elementwise", "variational"):
        raise ValueError(f"dropout_mode should be 'elementwise' or 'variational', got {mode!r}")
    return mode


# --- cells: lstm_cell, gru_cell, rnn_tanh_cell, rnn_relu_cell -----------------------------------

def _cell_states(op, mode, hx):
    """(h, c) of a cell call, with torch's TypeError for an hx of the wrong kind."""
    if mode in _TUPLE_STATE:
        if not isinstance(hx, (tuple, list)):
            raise TypeError(f"{op}(): argument 'hx' (position 2) must be tuple of Tensors, not "
                            f"{type(hx).__name__}")
        if len(hx) != 2:
            raise RuntimeError(f"{op} expects two hidden states (h, c), got {len(hx)}")
        check_tensor(hx[0], "hx[0]")
        check_tensor(hx[1], "hx[1]")
        return hx[0], hx[1]
    if not isinstance(hx, torch.Tensor):
        raise TypeError(f"{op}(): argument 'hx' (position 2) must be Tensor, not "
                        f"{type(hx).__name__}")
    return hx, None


def rnn_cell_args(op, mode, input, hx, w_ih, w_hh, b_ih, b_hh):
    """Check a functional cell call; returns (x, h, c, unbatched) with x (B, I), h and c (B, H)
    (c None unless LSTM). hx is (h, c) for an LSTM, h otherwise."""
    check_tensor(input, "input")
    check_tensor(w_ih, "w_ih")
    check_tensor(w_hh, "w_hh")
    h, c = _cell_states(op, mode, hx)
    _same_kind(op, dict(input=input, hx=h, cx=c, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh))
    if w_ih.dim() != 2 or w_hh.dim() != 2:
        raise RuntimeError(f"{op}: expected 2-D w_ih and w_hh, got w_ih of size {_shape(w_ih)} "
                           f"and w_hh of size {_shape(w_hh)}")
    gates = GATES[mode]
    gh, hidden = w_hh.shape
    if gh != gates * hidden or hidden == 0:
        raise RuntimeError(f"{op}: w_hh of size {_shape(w_hh)} should be ({gates} * hidden_size, "
                           "hidden_size) with hidden_size > 0")
    if w_ih.shape[0] != gh:
        raise RuntimeError(f"{op}: weight_ih first dim must be {gates} * hidden_size = {gh}, but "
                           f"got w_ih of size {_shape(w_ih)}")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None and (b.dim() != 1 or b.shape[0] != gh):
            raise RuntimeError(f"{op}: expected {name} of size [{gh}], got {_shape(b)}")
    if input.dim() not in (1, 2):
        raise RuntimeError(f"{op}: expected input to be 1-D or 2-D, got input of size "
                           f"{_shape(input)}")
    unbatched = input.dim() == 1
    states = [("hx[0]" if c is not None else "hx", h)] + ([("hx[1]", c)] if c is not None else [])
    for name, s in states:
        if s.dim() != input.dim():
            raise RuntimeError(f"{op}: expected {name} to be {input.dim()}-D like input, got "
                               f"{name} of size {_shape(s)} for input of size {_shape(input)}")
    x = input.unsqueeze(0) if unbatched else input
    if x.shape[1] != w_ih.shape[1]:
        raise RuntimeError(f"input has inconsistent input_size: got {x.shape[1]} expected "
                           f"{w_ih.shape[1]} (input of size {_shape(input)}, w_ih of size "
                           f"{_shape(w_ih)})")
    bh = [s.unsqueeze(0) if unbatched else s for _, s in states]
    for k, ((name, _), s) in enumerate(zip(states, bh)):
        if s.shape[0] != x.shape[0]:
            raise RuntimeError(f"Input batch size {x.shape[0]} doesn't match hidden{k} batch size "
                               f"{s.shape[0]} ({name} of size {_shape(s)})")
        if s.shape[1] != hidden:
            raise RuntimeError(f"hidden{k} has inconsistent hidden_size: got {s.shape[1]}, "
                               f"expected {hidden} ({name} of size {_shape(s)})")
    return x, bh[0], (bh[1] if c is not None else None), unbatched


def rnn_cell_module_args(module, mode, input, hx):
    """torch's own checks of RNNCell/LSTMCell/GRUCell.forward (ValueError on ranks, as torch)."""
    name = type(module).__name__
    check_tensor(input, "input")
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    if hx is None:
        return
    if mode in _TUPLE_STATE:
        if not isinstance(hx, (tuple, list)):
            raise TypeError(f"lstm_cell(): argument 'hx' (position 2) must be tuple of Tensors, "
                            f"not {type(hx).__name__}")
        states = tuple(hx)
    else:
        states = (hx,)
    for s in states:
        check_tensor(s, "hx")
        if s.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected hx[0] to be 1D or 2D, got {s.dim()}D instead"
                             if mode in _TUPLE_STATE else
                             f"{name}: Expected hidden to be 1D or 2D, got {s.dim()}D instead")


# --- layer modules: RNN, LSTM, GRU --------------------------------------------------------------

ModuleCall = collections.namedtuple(
    "ModuleCall", "data batch_sizes sorted_indices unsorted_indices states unbatched batch")


def rnn_module_inputs(module, mode, input, hx):
    """The checks of torch's RNN/LSTM/GRU.forward before any computation, returning the call in
    canonical form: data (T, B, I) / (B, T, I) or packed rows, batch_sizes or None, the sort
    permutations, the states as a list (batched, not yet permuted; None when hx is None),
    whether the input was unbatched, and the batch size."""
    name = type(module).__name__
    if isinstance(input, torch.nn.utils.rnn.PackedSequence):
        data, batch_sizes, sorted_indices, unsorted_indices = input
        batch = int(batch_sizes[0]) if batch_sizes.numel() else 0
        unbatched = False
    else:
        check_tensor(input, "input")
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        unbatched = input.dim() == 2
        batch_dim = 0 if module.batch_first else 1
        data = input.unsqueeze(batch_dim) if unbatched else input
        batch = data.size(batch_dim)
        batch_sizes = sorted_indices = unsorted_indices = None
    states = None
    if hx is not None:
        if mode in _TUPLE_STATE:
            # torch indexes hx[0], hx[1] (IndexError for a tensor of one), and its kernel wants
            # exactly two states.
            states = [hx[0], hx[1]] if isinstance(hx, torch.Tensor) else list(hx)
            if len(states) != 2:
                raise RuntimeError(f"{mode} expects two hidden states (h_0, c_0)")
        else:
            if not isinstance(hx, torch.Tensor):  # torch calls hx.dim()
                raise AttributeError(f"'{type(hx).__name__}' object has no attribute 'dim'")
            states = [hx]
        for s in states:
            check_tensor(s, "hx")
        if batch_sizes is None:
            want = 2 if unbatched else 3
            if any(s.dim() != want for s in states):
                kind = "unbatched 2-D" if unbatched else "batched 3-D"
                dims = ", ".join(f"{s.dim()}-D" for s in states)
                what = "hx and cx" if mode in _TUPLE_STATE else "hx"
                raise RuntimeError(f"For {kind} input, {what} should also be {want}-D but got "
                                   f"({dims}) tensor(s)")
            if unbatched:
                states = [s.unsqueeze(1) for s in states]
    rnn_module_args(module, mode, data, states, batch_sizes)
    return ModuleCall(data, batch_sizes, sorted_indices, unsorted_indices, states, unbatched,
                      batch)


def rnn_module_args(module, mode, input, states, batch_sizes):
    """torch's check_forward_args for an RNN/LSTM/GRU module on the (batched) input and its states
    (a list, or None before the zeros are made)."""
    num_dir = 2 if module.bidirectional else 1
    proj = getattr(module, "proj_size", 0)
    real_hidden = proj if proj > 0 else module.hidden_size
    expected_dim = 2 if batch_sizes is not None else 3
    if input.dim() != expected_dim:
        raise RuntimeError(f"input must have {expected_dim} dimensions, got {input.dim()} "
                           f"(input of size {_shape(input)})")
    if module.input_size != input.size(-1):
        raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                           f"{module.input_size}, got {input.size(-1)}")
    weight = next(iter(module.parameters()), None)
    if weight is not None and input.dtype != weight.dtype:
        raise ValueError(f"RNN input dtype ({input.dtype}) does not match weight dtype "
                         f"({weight.dtype}). Convert input: input.to({weight.dtype}), or convert "
                         f"model: model.to({input.dtype})")
    if batch_sizes is not None:
        mini_batch = int(batch_sizes[0])
    else:
        mini_batch = input.size(0) if module.batch_first else input.size(1)
        if input.size(1 if module.batch_first else 0) == 0:
            raise RuntimeError(f"Expected sequence length to be larger than 0 in RNN (input of "
                               f"size {_shape(input)}, batch_first={module.batch_first})")
    named = {"input": input}
    if states is not None:
        sizes = [("hidden[0]", real_hidden), ("hidden[1]", module.hidden_size)] \
            if mode in _TUPLE_STATE else [("hidden", module.hidden_size)]
        for (name, size), s in zip(sizes, states):
            expected = (module.num_layers * num_dir, mini_batch, size)
            if tuple(s.shape) != expected:
                label = f"{name} size" if mode in _TUPLE_STATE else "hidden size"
                raise RuntimeError(f"Expected {label} {expected}, got {_shape(s)}")
            named[name] = s
    named.update({n: p for n, p in module.named_parameters()})
    _same_kind(type(module).__name__, named)


# --- torch's flat-weight operators (aten::lstm and friends, what dlkern.enable routes) ----------

def rnn_flat_args(mode, data, batch_sizes, states, params, has_biases, num_layers, bidirectional,
                  batch_first):
    """The shapes dlkern's layer kernels assume for an aten::lstm/gru/rnn_* call (RuntimeError
    otherwise). Returns (proj, batch): whether the LSTM has a projection, the batch size."""
    num_dir = 2 if bidirectional else 1
    gates = GATES[mode]
    want_states = 2 if mode in _TUPLE_STATE else 1
    if len(states) != want_states:
        raise RuntimeError(f"{mode} expects {want_states} hidden state(s), got {len(states)}")
    if num_layers < 1 or any(s.dim() != 3 for s in states):
        raise RuntimeError(f"{mode}: expected num_layers >= 1 and 3-D states, got num_layers "
                           f"{num_layers} and states of size {[_shape(s) for s in states]}")
    if batch_sizes is not None:
        if (data.dim() != 2 or batch_sizes.dim() != 1 or batch_sizes.numel() == 0
                or batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu"):
            raise RuntimeError(f"{mode}: a packed call needs 2-D data and non-empty int64 CPU "
                               f"batch_sizes, got data of size {_shape(data)}")
        if (int(batch_sizes[-1]) < 1 or bool((batch_sizes[1:] > batch_sizes[:-1]).any())
                or int(batch_sizes.sum()) != data.shape[0]):
            raise RuntimeError(f"{mode}: batch_sizes must be positive, non-increasing and sum to "
                               f"the {data.shape[0]} rows of data")
        batch = int(batch_sizes[0])
    else:
        if data.dim() != 3 or data.shape[0] == 0 or data.shape[1] == 0:
            raise RuntimeError(f"{mode}: expected 3-D input with a non-empty sequence and batch, "
                               f"got {_shape(data)}")
        batch = data.shape[0] if batch_first else data.shape[1]
    real_hidden = states[0].shape[2]
    hidden = states[1].shape[2] if mode in _TUPLE_STATE else real_hidden
    proj = mode in _TUPLE_STATE and real_hidden != hidden
    if any(tuple(s.shape[:2]) != (num_layers * num_dir, batch) for s in states):
        raise RuntimeError(f"{mode}: states of size {[_shape(s) for s in states]} for "
                           f"{num_layers * num_dir} layer-directions and batch {batch}")
    per_direction = 2 + 2 * bool(has_biases) + int(proj)
    if len(params) != num_layers * num_dir * per_direction:
        raise RuntimeError(f"{mode}: expected {num_layers * num_dir * per_direction} parameter "
                           f"tensors, got {len(params)}")
    for layer in range(num_layers):
        width = data.shape[-1] if layer == 0 else num_dir * real_hidden
        for direction in range(num_dir):
            start = (layer * num_dir + direction) * per_direction
            group = params[start:start + per_direction]
            want = [(gates * hidden, width), (gates * hidden, real_hidden)]
            want += [(gates * hidden,), (gates * hidden,)] if has_biases else []
            want += [(real_hidden, hidden)] if proj else []
            if [tuple(p.shape) for p in group] != want:
                raise RuntimeError(f"{mode}: layer {layer} direction {direction} has parameters "
                                   f"of sizes {[_shape(p) for p in group]}, expected {want}")
    return proj, batch
