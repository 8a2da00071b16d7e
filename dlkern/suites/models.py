"""Whole models built from torch's own building blocks, as users write them, and their benchmark:
torch as written vs the same model after ``dlkern.patch``, inference and one training step
(forward, backward, SGD update), float32.

The model classes are also the ones the tests use (tests/test_models.py), at smaller sizes:

* ``UNetCNN``: a small UNet-style CNN with depthwise-separable blocks (3x3 depthwise conv, 1x1
  conv), strided downsampling, a transposed-conv upsampling and a skip connection.
* ``GRUEncoder``: embedding, a 2-layer GRU over a PackedSequence of unsorted lengths, a linear head
  on the last hidden state.
* ``LSTMTagger``: embedding, a 2-layer bidirectional LSTM, a per-token linear head.
* ``TransformerLM``: embedding, a TransformerEncoder (batch_first) with causal and key padding
  masks, a linear head.
"""
import copy

import torch
import torch.nn as tnn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from dlkern.benchmark import Case

OP = "models"


def _separable(cin, cout):
    return tnn.Sequential(tnn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                          tnn.Conv2d(cin, cout, 1), tnn.ReLU())


class UNetCNN(tnn.Module):
    def __init__(self, in_channels=3, base=16, classes=4):
        super().__init__()
        self.stem = tnn.Sequential(tnn.Conv2d(in_channels, base, 3, padding=1), tnn.ReLU())
        self.enc = _separable(base, base)
        self.down = tnn.Sequential(tnn.Conv2d(base, 2 * base, 3, stride=2, padding=1), tnn.ReLU())
        self.mid = tnn.Sequential(_separable(2 * base, 2 * base), _separable(2 * base, 2 * base))
        self.up = tnn.ConvTranspose2d(2 * base, base, 4, stride=2, padding=1)
        self.dec = _separable(2 * base, base)
        self.head = tnn.Conv2d(base, classes, 1)

    def forward(self, x):
        skip = self.enc(self.stem(x))
        y = self.up(self.mid(self.down(skip)))
        return self.head(self.dec(torch.cat([y, skip], dim=1)))


class GRUEncoder(tnn.Module):
    def __init__(self, vocab=50, embed=16, hidden=24, classes=5, layers=2, pack=True):
        super().__init__()
        self.pack = pack  # False: a padded batch (torch.compile cannot trace pack_padded_sequence)
        self.embed = tnn.Embedding(vocab, embed)
        self.gru = tnn.GRU(embed, hidden, num_layers=layers, batch_first=True)
        self.head = tnn.Linear(hidden, classes)

    def forward(self, tokens, lengths=None):
        x = self.embed(tokens)
        if self.pack:
            x = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(x)
        return self.head(h[-1])


class LSTMTagger(tnn.Module):
    def __init__(self, vocab=50, embed=16, hidden=12, tags=6, layers=2):
        super().__init__()
        self.embed = tnn.Embedding(vocab, embed)
        self.lstm = tnn.LSTM(embed, hidden, num_layers=layers, bidirectional=True,
                             batch_first=True)
        self.head = tnn.Linear(2 * hidden, tags)

    def forward(self, tokens):
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)


class TransformerLM(tnn.Module):
    def __init__(self, vocab=50, d_model=32, heads=4, ff=64, layers=2, dropout=0.0):
        super().__init__()
        self.embed = tnn.Embedding(vocab, d_model)
        layer = tnn.TransformerEncoderLayer(d_model, heads, ff, dropout=dropout, batch_first=True)
        self.encoder = tnn.TransformerEncoder(layer, layers, enable_nested_tensor=True)
        self.head = tnn.Linear(d_model, vocab)

    def forward(self, tokens, key_padding_mask=None, causal=True):
        length = tokens.shape[1]
        # bool, like the key padding mask (True = not allowed): torch warns about mixed mask types
        mask = (torch.ones(length, length, dtype=torch.bool, device=tokens.device).triu(1)
                if causal else None)
        h = self.encoder(self.embed(tokens), mask=mask, src_key_padding_mask=key_padding_mask,
                         is_causal=causal)
        return self.head(h)


def padding_mask(lengths, length):
    """(B, L) bool, True at padded positions (torch's key_padding_mask convention)."""
    return torch.arange(length)[None, :] >= torch.as_tensor(lengths)[:, None]


def model_pair(model):
    """``model`` and a deep copy of it patched by dlkern (same parameter values)."""
    import dlkern

    return model, dlkern.patch(copy.deepcopy(model))


# ----------------------------------------------------------------------------- benchmark cases

def _count_flops(fn, *args):
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return float(counter.get_total_flops())


def _model_case(name, build_model, build_inputs, loss_fn, target):
    """A Case whose forward mode is inference and whose "train step" mode is one SGD step."""
    torch.manual_seed(0)
    reference, patched = model_pair(build_model())
    inputs = build_inputs()

    def build(dtype, requires_grad):
        return inputs, {}

    def train_step(model):
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(*inputs), inputs).backward()
            opt.step()
        return step

    reference.eval()
    patched.eval()
    # torch's CPU RNN operators are built of matmuls, which FlopCounterMode counts too
    flops = _count_flops(reference, *inputs)
    reference.train()
    patched.train()
    case = Case(name, OP, build, lambda *a: _eval(reference, a), lambda *a: _eval(patched, a),
                flops, target=target, fwd_bwd=False)
    case.train_torch = train_step(reference)
    case.train_dlkern = train_step(patched)
    case.target_train = target
    return case


def _eval(model, args):
    model.eval()
    try:
        return model(*args)
    finally:
        model.train()


def _unet_case():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 96, 96, generator=g)
    labels = torch.randint(0, 4, (8, 96, 96), generator=g)
    return _model_case("UNet-style CNN (sep. blocks) N8 3x96x96 base32",
                       lambda: UNetCNN(3, 32, 4), lambda: (x,),
                       lambda out, inp: F.cross_entropy(out, labels), 2.0)


def _gru_case():
    g = torch.Generator().manual_seed(2)
    batch, length = 32, 64
    tokens = torch.randint(0, 1000, (batch, length), generator=g)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    lengths[0] = length
    labels = torch.randint(0, 10, (batch,), generator=g)
    return _model_case("GRU encoder B32 T<=64 E128 H256 L2 packed",
                       lambda: GRUEncoder(1000, 128, 256, 10, 2), lambda: (tokens, lengths),
                       lambda out, inp: F.cross_entropy(out, labels), 2.0)


def _transformer_case():
    g = torch.Generator().manual_seed(3)
    batch, length = 8, 128
    tokens = torch.randint(0, 1000, (batch, length), generator=g)
    return _model_case("TransformerEncoder causal B8 L128 d256 h8 ff1024 L2",
                       lambda: TransformerLM(1000, 256, 8, 1024, 2, dropout=0.0),
                       lambda: (tokens,),
                       lambda out, inp: F.cross_entropy(out.flatten(0, 1), inp[0].flatten()), 1.3)


def _cases():
    return [_unet_case(), _gru_case(), _transformer_case()]


class _LazyCases(list):
    """Builds the (large) model cases on first use, not when the suites are listed."""
    _built = False

    def _build(self):
        if not self._built:
            self._built = True
            self.extend(_cases())

    def __iter__(self):
        self._build()
        return super().__iter__()

    def __len__(self):
        self._build()
        return super().__len__()

    def __getitem__(self, i):
        self._build()
        return super().__getitem__(i)


CASES = _LazyCases()
