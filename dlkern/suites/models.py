"""Whole models built from torch's own building blocks, as users write them (random
initialisation). The models suite (model_cases.py) times them as written against the same model
after ``dlkern.patch``; the layer tables hold their layers' shapes (tests/test_benchmark.py checks
that the two agree).

The models of the suite, written from the architectures (torchvision's layouts where it has them):

* ``MobileNetV2``: inverted residuals (1x1 expansion, 3x3 depthwise, 1x1 projection), ReLU6;
* ``ResNet18``: basic blocks, batch norm, the 7x7 stem and max pool;
* ``ConvNeXt``: ConvNeXt-T's stage stack by default (stem, 7x7 depthwise blocks with LayerNorm and
  an inverted MLP, k2 s2 downsampling; layer scale);
* ``UNet``: milesial/Pytorch-UNet (double 3x3 convs with batch norm, max pool down, k2 s2
  transposed conv up, skip concatenation);
* ``ConformerBlock``: half-step feed-forward, self-attention with a key padding mask, the
  convolution module (pointwise, GLU, depthwise conv1d, batch norm, SiLU, pointwise), half-step
  feed-forward, LayerNorm (torchaudio's ConformerLayer);
* ``GRUSeq2Seq``: a GRU encoder and a GRU decoder started from the encoder's state, teacher forcing;
* ``TransformerLM``: a small GPT-style causal decoder (below).

Smaller models that the tests use (tests/test_models.py, tests/ddp_train.py):

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
import torch.nn.functional as F
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


# ----------------------------------------------------------------------------- the models suite

def _conv_bn(c_in, c_out, kernel, stride=1, groups=1, activation=tnn.ReLU6):
    layers = [tnn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
              tnn.BatchNorm2d(c_out)]
    return tnn.Sequential(*layers, activation(inplace=True)) if activation else tnn.Sequential(*layers)


class InvertedResidual(tnn.Module):
    def __init__(self, c_in, c_out, stride, expansion):
        super().__init__()
        hidden = c_in * expansion
        layers = [] if expansion == 1 else [_conv_bn(c_in, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   _conv_bn(hidden, c_out, 1, activation=None)]
        self.conv = tnn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(tnn.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))  # expansion, channels, repeats, stride

    def __init__(self, classes=1000):
        super().__init__()
        layers, c_in = [_conv_bn(3, 32, 3, 2)], 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        layers.append(_conv_bn(c_in, 1280, 1))
        self.features = tnn.Sequential(*layers)
        self.classifier = tnn.Sequential(tnn.Dropout(0.2), tnn.Linear(1280, classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class BasicBlock(tnn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(c_out)
        self.conv2 = tnn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = tnn.Sequential(tnn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                             tnn.BatchNorm2d(c_out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(tnn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        blocks, c_in = [], 64
        for stage, width in enumerate((64, 128, 256, 512)):
            stride = 1 if stage == 0 else 2
            blocks.append(tnn.Sequential(BasicBlock(c_in, width, stride),
                                         BasicBlock(width, width, 1)))
            c_in = width
        self.layer1, self.layer2, self.layer3, self.layer4 = blocks
        self.fc = tnn.Linear(512, classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


class LayerNorm2d(tnn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(tnn.Module):
    def __init__(self, dim, layer_scale=1e-6):
        super().__init__()
        self.dwconv = tnn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = tnn.LayerNorm(dim, eps=1e-6)
        self.mlp = tnn.Sequential(tnn.Linear(dim, 4 * dim), tnn.GELU(), tnn.Linear(4 * dim, dim))
        self.gamma = tnn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x):
        y = self.mlp(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(tnn.Module):
    def __init__(self, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), classes=1000):
        super().__init__()
        layers = [tnn.Sequential(tnn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i > 0:
                layers.append(tnn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6),
                                             tnn.Conv2d(dims[i - 1], dim, 2, 2)))
            layers.append(tnn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth))))
        self.features = tnn.Sequential(*layers)
        self.norm = tnn.LayerNorm(dims[-1], eps=1e-6)
        self.head = tnn.Linear(dims[-1], classes)

    def forward(self, x):
        return self.head(self.norm(self.features(x).mean((2, 3))))


def _double_conv(c_in, c_out):
    return tnn.Sequential(tnn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                          tnn.BatchNorm2d(c_out), tnn.ReLU(inplace=True),
                          tnn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                          tnn.BatchNorm2d(c_out), tnn.ReLU(inplace=True))


class UNet(tnn.Module):
    def __init__(self, in_channels=3, classes=2, base=64):
        super().__init__()
        widths = [base * 2 ** i for i in range(5)]
        self.inc = _double_conv(in_channels, base)
        self.down = tnn.ModuleList(tnn.Sequential(tnn.MaxPool2d(2), _double_conv(a, b))
                                   for a, b in zip(widths, widths[1:]))
        self.up = tnn.ModuleList(tnn.ConvTranspose2d(b, b // 2, 2, 2)
                                 for b in reversed(widths[1:]))
        self.up_conv = tnn.ModuleList(_double_conv(b, a)
                                      for a, b in zip(reversed(widths[:-1]), reversed(widths[1:])))
        self.outc = tnn.Conv2d(base, classes, 1)

    def forward(self, x):
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up, conv in zip(self.up, self.up_conv):
            x = conv(torch.cat([skips.pop(), up(x)], dim=1))
        return self.outc(x)


class ConformerBlock(tnn.Module):
    def __init__(self, d_model=256, heads=4, ff=1024, kernel=31, dropout=0.0):
        super().__init__()

        def feed_forward():
            return tnn.Sequential(tnn.LayerNorm(d_model), tnn.Linear(d_model, ff), tnn.SiLU(),
                                  tnn.Dropout(dropout), tnn.Linear(ff, d_model),
                                  tnn.Dropout(dropout))
        self.ff1, self.ff2 = feed_forward(), feed_forward()
        self.attn_norm = tnn.LayerNorm(d_model)
        self.attn = tnn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.conv_norm = tnn.LayerNorm(d_model)
        self.pointwise1 = tnn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise = tnn.Conv1d(d_model, d_model, kernel, padding=kernel // 2,
                                    groups=d_model, bias=False)
        self.conv_bn = tnn.BatchNorm1d(d_model)
        self.pointwise2 = tnn.Conv1d(d_model, d_model, 1)
        self.final_norm = tnn.LayerNorm(d_model)

    def forward(self, x, key_padding_mask=None):
        """x (B, T, d_model); key_padding_mask (B, T) bool, True at padded frames."""
        x = x + 0.5 * self.ff1(x)
        y = self.attn_norm(x)
        x = x + self.attn(y, y, y, key_padding_mask=key_padding_mask, need_weights=False)[0]
        y = self.pointwise1(self.conv_norm(x).transpose(1, 2))
        y = F.glu(y, dim=1)
        y = self.pointwise2(F.silu(self.conv_bn(self.depthwise(y))))
        x = x + y.transpose(1, 2)
        return self.final_norm(x + 0.5 * self.ff2(x))


class GRUSeq2Seq(tnn.Module):
    def __init__(self, vocab=1000, embed=256, hidden=512, layers=2):
        super().__init__()
        self.src_embed = tnn.Embedding(vocab, embed)
        self.tgt_embed = tnn.Embedding(vocab, embed)
        self.encoder = tnn.GRU(embed, hidden, num_layers=layers, batch_first=True)
        self.decoder = tnn.GRU(embed, hidden, num_layers=layers, batch_first=True)
        self.head = tnn.Linear(hidden, vocab)

    def forward(self, source, target_in):
        """source (B, S) and target_in (B, T) token ids; logits (B, T, vocab)."""
        _, state = self.encoder(self.src_embed(source))
        out, _ = self.decoder(self.tgt_embed(target_in), state)
        return self.head(out)
