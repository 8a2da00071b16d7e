"""A plainly correct recurrent layer, written with torch ops one step at a time: the reference of
dlkern's regularisers (recurrent dropout, variational inter-layer dropout, weight drop), which
torch's own layers do not have. Slow on purpose; tiny shapes only.

``record_masks(monkeypatch)`` captures the masks dlkern draws (dlkern.ops.rnn.bernoulli_mask, in
its documented order per layer: weight mask, recurrent mask, inter-layer mask) so the reference
applies the very same ones.
"""
import torch

from dlkern.kernels.rnn_modes import GATES


def record_masks(monkeypatch):
    """A list that fills with every mask dlkern.ops.rnn draws while the test runs."""
    from dlkern.ops import rnn as ops_rnn

    drawn = []
    original = ops_rnn.bernoulli_mask

    def recording(shape, p, like):
        mask = original(shape, p, like)
        drawn.append(mask.detach().clone())
        return mask

    monkeypatch.setattr(ops_rnn, "bernoulli_mask", recording)
    return drawn


def split_masks(drawn, num_layers, weight, recurrent, variational):
    """Per layer: (weight mask or None, recurrent mask or None, inter-layer mask or None)."""
    it = iter(drawn)
    out = []
    for layer in range(num_layers):
        w = next(it) if weight else None
        r = next(it) if recurrent else None
        v = next(it) if variational and layer < num_layers - 1 else None
        out.append((w, r, v))
    assert next(it, None) is None, "more masks drawn than the options ask for"
    return out


def _weights(module, layer, direction):
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    get = lambda n: getattr(module, n + suffix, None)  # noqa: E731
    return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr")


def _step(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr, rmask):
    """One step of one direction: (h', c'); rmask multiplies h where it enters W_hh only."""
    hm = h if rmask is None else h * rmask
    gi = x @ w_ih.T + (0 if b_ih is None else b_ih)
    gh = hm @ w_hh.T + (0 if b_hh is None else b_hh)
    if mode == "lstm":
        i, f, g, o = (gi + gh).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h if w_hr is None else h @ w_hr.T), c
    if mode == "gru":
        ir, iz, in_ = gi.chunk(3, -1)
        hr, hz, hn = gh.chunk(3, -1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (1 - z) * n + z * h, None
    pre = gi + gh
    return (torch.relu(pre) if mode == "rnn_relu" else torch.tanh(pre)), None


def run(mode, module, x, h0, c0, masks, lengths=None):
    """The layer stack of ``module`` (its parameters, any dtype) on time-major x (T, B, I) with
    sequence lengths (all T when None): (output (T, B, D*P) zero-padded, h_n, c_n or None).
    masks: split_masks's list; a recurrent mask is (D, B, P), an inter-layer one (B, D*P)."""
    steps, batch = x.shape[0], x.shape[1]
    lengths = [steps] * batch if lengths is None else list(lengths)
    num_dir = 2 if module.bidirectional else 1
    layer_in = x
    h_n, c_n = [], []
    for layer in range(module.num_layers):
        wmask, rmask, vmask = masks[layer]
        outs = []
        for d in range(num_dir):
            w_ih, w_hh, b_ih, b_hh, w_hr = _weights(module, layer, d)
            if wmask is not None:
                w_hh = w_hh * wmask[d]
            k = layer * num_dir + d
            ys = torch.zeros(steps, batch, h0.shape[2], dtype=x.dtype)
            hs, cs = [], []
            for b in range(batch):  # each sequence on its own: variable lengths need nothing else
                h = h0[k, b:b + 1]
                c = None if c0 is None else c0[k, b:b + 1]
                m = None if rmask is None else rmask[d, b:b + 1]
                order = range(lengths[b]) if d == 0 else reversed(range(lengths[b]))
                rows = {}
                for t in order:
                    h, c = _step(mode, layer_in[t, b:b + 1], h, c, w_ih, w_hh, b_ih, b_hh, w_hr, m)
                    rows[t] = h
                ys = ys.index_put((torch.tensor(sorted(rows)), torch.tensor([b] * len(rows))),
                                  torch.cat([rows[t] for t in sorted(rows)]))
                hs.append(h)
                cs.append(c)
            outs.append(ys)
            h_n.append(torch.cat(hs))
            c_n.append(None if c0 is None else torch.cat(cs))
        layer_in = torch.cat(outs, -1)
        if vmask is not None:
            layer_in = layer_in * vmask
    return layer_in, torch.stack(h_n), (None if c0 is None else torch.stack(c_n))
