"""Layer table: depthwise convolutions (groups == in_channels) of real networks.

* mobilenet_v2 (B8, 224x224, torchvision): the 3x3 depthwise conv of every inverted residual;
* mobilenet_v2_cl (B1): the same network on a channels_last input and channels_last weights, as
  after ``model.to(memory_format=torch.channels_last)``;
* efficientnet_b0 (B8, 224x224, torchvision): 3x3 and 5x5, stride 1 and 2;
* convnext_tiny (B8, 224x224, torchvision): the 7x7 depthwise conv of each stage;
* conformer (B8, 250 frames: 10 s of audio after 4x subsampling): Conformer-M's convolution
  module, a depthwise conv1d with kernel 31 over 256 channels, no bias (torchaudio's default).
"""
from dlkern.suites.table import Row, conv_args, distinct

FAMILY = "depthwise"

# torchvision's inverted-residual settings: expansion t, output channels c, repeats n, stride s
_MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1))
# EfficientNet-B0's MBConv settings: expansion, kernel, stride, output channels, repeats
_EFFICIENTNET_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                    (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


def _depthwise(name, batch, channels, kernel, size, stride=1, padding=None, bias=False,
               layout="contiguous"):
    size = tuple(size)
    padding = kernel // 2 if padding is None else padding
    return Row(name, FAMILY, f"conv{len(size)}d",
               conv_args(channels, channels, kernel, size, stride=stride, padding=padding,
                         groups=channels, bias=bias, layout=layout), batch)


def mobilenet_v2(batch=8, image=224, network="mobilenet_v2", layout="contiguous"):
    rows, c_in, size, index = [], 32, image // 2, 1
    for t, c, n, s in _MOBILENET_V2:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = c_in * t
            # conv.0 is the 1x1 expansion when t != 1; the depthwise ConvBNReLU comes next
            path = f"{network}.features.{index}.conv.{0 if t == 1 else 1}.0"
            rows.append(_depthwise(path, batch, hidden, 3, (size, size), stride, layout=layout))
            size = (size - 1) // stride + 1
            c_in, index = c, index + 1
    return distinct(rows)


def efficientnet_b0(batch=8, image=224):
    rows, c_in, size = [], 32, image // 2
    for stage, (t, k, s, c, n) in enumerate(_EFFICIENTNET_B0, start=1):
        for i in range(n):
            stride = s if i == 0 else 1
            # block.0 is the 1x1 expansion when t != 1
            path = f"efficientnet_b0.features.{stage}.{i}.block.{0 if t == 1 else 1}.0"
            rows.append(_depthwise(path, batch, c_in * t, k, (size, size), stride))
            size = (size + 2 * (k // 2) - k) // stride + 1
            c_in = c
    return distinct(rows)


def convnext_tiny(batch=8, image=224):
    rows, size = [], image // 4
    for stage, (dim, depth) in enumerate(((96, 3), (192, 3), (384, 9), (768, 3))):
        for block in range(depth):
            rows.append(_depthwise(f"convnext_tiny.features.{2 * stage + 1}.{block}.block.0",
                                   batch, dim, 7, (size, size), bias=True))
        size //= 2
    return distinct(rows)


def conformer(batch=8, frames=250, d_model=256, layers=16, kernel=31):
    return distinct([_depthwise(f"conformer.layers.{i}.conv.depthwise_conv", batch, d_model,
                                kernel, (frames,)) for i in range(layers)])


ROWS = (mobilenet_v2() + mobilenet_v2(batch=1, network="mobilenet_v2_cl", layout="channels_last")
        + efficientnet_b0() + convnext_tiny() + conformer())

QUICK = ("mobilenet_v2.features.2.conv.1.0", "efficientnet_b0.features.3.0.block.1.0",
         "convnext_tiny.features.3.0.block.0", "conformer.layers.0.conv.depthwise_conv",
         "mobilenet_v2_cl.features.4.conv.1.0")
