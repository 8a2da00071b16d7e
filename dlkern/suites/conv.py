"""Layer table: dense convolutions of real networks (conv1d, conv2d, conv3d).

Shapes written down from the architectures (module paths as torchvision and the reference code
name them); every distinct shape of a network once, named after its first occurrence, with the
number of times it occurs. Batch sizes as a CPU user runs them: 1 for latency-bound inference of
large inputs (ResNet-18, VGG-16, UNet, a video ResNet, WaveNet), 8-16 for batched work.

* resnet18 (B1) and resnet50 (B8, torchvision v1.5: stride on the 3x3), 224x224;
* vgg16 (B1), 224x224;
* unet (B1): the original UNet with padded 3x3 convs (milesial/Pytorch-UNet layout), 3x256x256,
  64 base channels, 2 classes; its transposed convs are in the conv_transpose table;
* r3d_18 (B1): torchvision's 3-d ResNet-18 on a 16-frame 112x112 clip;
* wavenet (B1, one second at 16 kHz): 64 residual channels, 128 gate channels, kernel 2,
  dilations 1..512 in 3 stacks; causal padding as (k-1)*d on both sides, the tail cut off, as
  the common implementations do; 1x1 residual and skip convs;
* tcn (B16, L1024): Bai et al.'s temporal convolutional network, 128 channels, kernel 3,
  dilations 1..32, causal padding as above;
* convnext_tiny (B8): the patchify stem (k4 s4) and the k2 s2 downsampling convs;
* vit_b_16 (B8): the k16 s16 patch embedding.
"""
from dlkern.suites.table import Row, conv_args, distinct

FAMILY = "conv"


def _out(size, kernel, stride=1, padding=0, dilation=1):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _conv(name, batch, c_in, c_out, kernel, size, **kwargs):
    size = tuple(size)
    return Row(name, FAMILY, f"conv{len(size)}d",
               conv_args(c_in, c_out, kernel, size, **kwargs), batch)


def resnet18(batch=1, image=224):
    rows = [_conv("resnet18.conv1", batch, 3, 64, 7, (image, image), stride=2, padding=3,
                  bias=False)]
    size, c_in = image // 4, 64  # conv1 and the max pool halve it twice
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            prefix = f"resnet18.layer{stage}.{block}"
            out = _out(size, 3, stride, 1)
            rows.append(_conv(f"{prefix}.conv1", batch, c_in, width, 3, (size, size), stride=stride,
                              padding=1, bias=False))
            rows.append(_conv(f"{prefix}.conv2", batch, width, width, 3, (out, out), padding=1,
                              bias=False))
            if stride != 1 or c_in != width:
                rows.append(_conv(f"{prefix}.downsample.0", batch, c_in, width, 1, (size, size),
                                  stride=stride, bias=False))
            c_in, size = width, out
    return distinct(rows)


def resnet50(batch=8, image=224):
    rows = [_conv("resnet50.conv1", batch, 3, 64, 7, (image, image), stride=2, padding=3,
                  bias=False)]
    size, c_in = image // 4, 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            prefix = f"resnet50.layer{stage}.{block}"
            out = _out(size, 3, stride, 1)
            rows.append(_conv(f"{prefix}.conv1", batch, c_in, width, 1, (size, size), bias=False))
            rows.append(_conv(f"{prefix}.conv2", batch, width, width, 3, (size, size),
                              stride=stride, padding=1, bias=False))
            rows.append(_conv(f"{prefix}.conv3", batch, width, 4 * width, 1, (out, out),
                              bias=False))
            if block == 0:
                rows.append(_conv(f"{prefix}.downsample.0", batch, c_in, 4 * width, 1,
                                  (size, size), stride=stride, bias=False))
            c_in, size = 4 * width, out
    return distinct(rows)


def vgg16(batch=1, image=224):
    config = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M")
    rows, index, c_in, size = [], 0, 3, image
    for item in config:
        if item == "M":
            size //= 2
            index += 1
        else:
            rows.append(_conv(f"vgg16.features.{index}", batch, c_in, item, 3, (size, size),
                              padding=1))
            c_in = item
            index += 2  # conv, ReLU
    return distinct(rows)


def unet(batch=1, image=256, base=64, classes=2):
    """milesial/Pytorch-UNet (bilinear=False): DoubleConv blocks of two bias-free padded 3x3s."""
    rows = []

    def double_conv(prefix, c_in, c_out, size):
        rows.append(_conv(f"{prefix}.double_conv.0", batch, c_in, c_out, 3, (size, size),
                          padding=1, bias=False))
        rows.append(_conv(f"{prefix}.double_conv.3", batch, c_out, c_out, 3, (size, size),
                          padding=1, bias=False))

    widths = [base * 2 ** i for i in range(5)]
    double_conv("unet.inc", 3, widths[0], image)
    for i in range(1, 5):
        double_conv(f"unet.down{i}.maxpool_conv.1", widths[i - 1], widths[i], image >> i)
    for i in range(1, 5):
        level = 4 - i  # up{i} works at the resolution of down{level}'s output
        double_conv(f"unet.up{i}.conv", widths[level + 1], widths[level], image >> level)
    rows.append(_conv("unet.outc.conv", batch, base, classes, 1, (image, image)))
    return distinct(rows)


def r3d_18(batch=1, frames=16, image=112):
    rows = [_conv("r3d_18.stem.0", batch, 3, 64, (3, 7, 7), (frames, image, image),
                  stride=(1, 2, 2), padding=(1, 3, 3), bias=False)]
    size, c_in = (frames, image // 2, image // 2), 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            prefix = f"r3d_18.layer{stage}.{block}"
            out = tuple(_out(s, 3, stride, 1) for s in size)
            rows.append(_conv(f"{prefix}.conv1.0", batch, c_in, width, 3, size, stride=stride,
                              padding=1, bias=False))
            rows.append(_conv(f"{prefix}.conv2.0", batch, width, width, 3, out, padding=1,
                              bias=False))
            if stride != 1 or c_in != width:
                rows.append(_conv(f"{prefix}.downsample.0", batch, c_in, width, 1, size,
                                  stride=stride, bias=False))
            c_in, size = width, out
    return distinct(rows)


def wavenet(batch=1, samples=16000, residual=64, gate=128, skip=256, stacks=3, layers=10):
    rows = []
    for stack in range(stacks):
        for layer in range(layers):
            dilation = 2 ** layer
            prefix = f"wavenet.layers.{stack * layers + layer}"
            rows.append(_conv(f"{prefix}.conv", batch, residual, gate, 2, (samples,),
                              padding=dilation, dilation=dilation))
            rows.append(_conv(f"{prefix}.conv1x1_out", batch, gate // 2, residual, 1, (samples,)))
            rows.append(_conv(f"{prefix}.conv1x1_skip", batch, gate // 2, skip, 1, (samples,)))
    return distinct(rows)


def tcn(batch=16, length=1024, inputs=64, channels=128, kernel=3, levels=6):
    rows, c_in = [], inputs
    for level in range(levels):
        dilation = 2 ** level
        pad = (kernel - 1) * dilation
        prefix = f"tcn.network.{level}"
        rows.append(_conv(f"{prefix}.conv1", batch, c_in, channels, kernel, (length,),
                          padding=pad, dilation=dilation))
        rows.append(_conv(f"{prefix}.conv2", batch, channels, channels, kernel, (length,),
                          padding=pad, dilation=dilation))
        if c_in != channels:
            rows.append(_conv(f"{prefix}.downsample", batch, c_in, channels, 1, (length,)))
        c_in = channels
    return distinct(rows)


def convnext_tiny_convs(batch=8, image=224):
    dims = (96, 192, 384, 768)
    rows = [_conv("convnext_tiny.features.0.0", batch, 3, dims[0], 4, (image, image), stride=4)]
    size = image // 4
    for i in range(1, 4):
        rows.append(_conv(f"convnext_tiny.features.{2 * i}.1", batch, dims[i - 1], dims[i], 2,
                          (size, size), stride=2))
        size //= 2
    return distinct(rows)


def vit_b_16_patch(batch=8, image=224):
    return [_conv("vit_b_16.conv_proj", batch, 3, 768, 16, (image, image), stride=16)]


ROWS = (resnet18() + resnet50() + vgg16() + unet() + r3d_18() + wavenet() + tcn()
        + convnext_tiny_convs() + vit_b_16_patch())

# A spread of the table for `--suite quick`: a stem, 3x3, strided, 1x1, dilated 1-d, 3-d.
QUICK = ("resnet50.conv1", "resnet50.layer3.1.conv2", "resnet18.layer2.0.conv1",
         "resnet50.layer2.0.conv3", "tcn.network.3.conv1", "r3d_18.layer3.0.conv2.0")
