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
import torch
import torch.nn as tnn
from torch.nn.utils.rnn import pack_padded_sequence

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
