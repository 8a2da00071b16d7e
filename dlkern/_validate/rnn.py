"""Argument checks of the recurrent family: RNN/LSTM/GRU cells and layers (dlkern.ops.rnn,
dlkern.nn.rnn)."""
from dlkern._validate.common import _shape, check_tensor


# --- LSTM / GRU (dlkern.ops.rnn, dlkern.nn.rnn) ------------------------------------------------

_RNN_GATES = {"lstm": 4, "gru": 3}


def _rnn_same_kind(op, named):
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
            raise RuntimeError(f"{op}: expected all tensors to have the same dtype, got {desc}")
        if v.device != first.device:
            desc = ", ".join(f"{n} on {t.device}" for n, t in named.items() if t is not None)
            raise RuntimeError(f"{op}: expected all tensors on one device, got {desc}")
    if first is not None and not first.is_floating_point():
        raise RuntimeError(f"{op}: expected floating-point tensors, got {first.dtype}")


def rnn_cell_args(op, mode, input, hx, w_ih, w_hh, b_ih, b_hh):
    """Check a functional lstm_cell / gru_cell call; returns (x, h, c, unbatched) with x (B, I),
    h and c (B, H) (c None for a GRU). hx is (h, c) for an LSTM, h for a GRU."""
    check_tensor(input, "input")
    check_tensor(w_ih, "w_ih")
    check_tensor(w_hh, "w_hh")
    if mode == "lstm":
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise RuntimeError(f"{op} expects two hidden states (h, c), got {type(hx).__name__}")
        h, c = hx
        check_tensor(h, "hx[0]")
        check_tensor(c, "hx[1]")
    else:
        check_tensor(hx, "hx")
        h, c = hx, None
    _rnn_same_kind(op, dict(input=input, hx=h, cx=c, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh))
    if w_ih.dim() != 2 or w_hh.dim() != 2:
        raise RuntimeError(f"{op}: expected 2-D w_ih and w_hh, got w_ih of size {_shape(w_ih)} "
                           f"and w_hh of size {_shape(w_hh)}")
    gates = _RNN_GATES[mode]
    gh = w_hh.shape[0]
    hidden = w_hh.shape[1]
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
        raise RuntimeError(f"{op}: expected input to be 1-D or 2-D, got input of size {_shape(input)}")
    unbatched = input.dim() == 1
    states = [("hx[0]" if mode == "lstm" else "hx", h)] + ([("hx[1]", c)] if c is not None else [])
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
    """torch's own checks of LSTMCell/GRUCell.forward (ValueError on ranks, as torch)."""
    name = type(module).__name__
    check_tensor(input, "input")
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    states = () if hx is None else (tuple(hx) if mode == "lstm" else (hx,))
    for s in states:
        check_tensor(s, "hx")
        if s.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected hx[0] to be 1D or 2D, got {s.dim()}D instead"
                             if mode == "lstm" else
                             f"{name}: Expected hidden to be 1D or 2D, got {s.dim()}D instead")


def rnn_module_args(module, mode, input, hx, batch_sizes):
    """torch's check_forward_args for an LSTM/GRU module on the (batched) input and hx."""
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
    if batch_sizes is not None:
        mini_batch = int(batch_sizes[0])
    else:
        mini_batch = input.size(0) if module.batch_first else input.size(1)
        if input.size(1 if module.batch_first else 0) == 0:
            raise RuntimeError(f"Expected sequence length to be larger than 0 in RNN (input of "
                               f"size {_shape(input)}, batch_first={module.batch_first})")
    states = (("hidden[0]", hx[0], real_hidden), ("hidden[1]", hx[1], module.hidden_size)) \
        if mode == "lstm" else (("hidden", hx, module.hidden_size),)
    for name, s, size in states:
        expected = (module.num_layers * num_dir, mini_batch, size)
        if tuple(s.shape) != expected:
            label = "hidden size" if mode == "gru" else f"{name} size"
            raise RuntimeError(f"Expected {label} {expected}, got {_shape(s)}")
    named = {"input": input}
    named.update({n: s for n, s, _ in states})
    named.update({n: p for n, p in module.named_parameters()})
    _rnn_same_kind(type(module).__name__, named)
