"""Layer table: transposed convolutions of real networks (1-d, 2-d and 3-d decoders).

* dcgan (B32): the DCGAN generator, 100-d noise to 3x64x64, k4 s2 p1 (the first layer k4 s1 p0);
* unet (B1, 3x256x256, 64 base channels): the decoder's k2 s2 upsampling (conv table: its convs);
* hifigan_v1 (B1, 256 mel frames, about 3 s of audio): HiFi-GAN V1's ConvTranspose1d upsampling,
  rates 8, 8, 2, 2 with kernels 16, 16, 4, 4;
* unet3d (B1, a 64^3 volume): the 3-d UNet's 2x2x2 stride-2 up-convolutions (channels kept);
* vgan (B8): the video GAN's ConvTranspose3d generator, k4 s2 p1, to 32 frames of 64x64.
"""
from dlkern.suites.table import Row, distinct, tuple_of

FAMILY = "conv_transpose"


def _transpose(name, batch, c_in, c_out, kernel, size, stride=1, padding=0, output_padding=0,
               bias=True):
    size = tuple(size)
    rank = len(size)
    args = dict(in_channels=c_in, out_channels=c_out, kernel_size=tuple_of(kernel, rank),
                stride=tuple_of(stride, rank), padding=tuple_of(padding, rank),
                output_padding=tuple_of(output_padding, rank), bias=bias, size=size)
    return Row(name, FAMILY, f"conv_transpose{rank}d", args, batch)


def dcgan(batch=32, noise=100, width=64):
    rows = [_transpose("dcgan.main.0", batch, noise, 8 * width, 4, (1, 1), bias=False)]
    channels = (8 * width, 4 * width, 2 * width, width, 3)
    size = 4
    for i in range(4):
        rows.append(_transpose(f"dcgan.main.{3 * i + 3}", batch, channels[i], channels[i + 1], 4,
                               (size, size), stride=2, padding=1, bias=False))
        size *= 2
    return distinct(rows)


def unet_decoder(batch=1, image=256, base=64):
    rows = []
    for i in range(1, 5):
        c_in = base * 2 ** (5 - i)
        size = image >> (5 - i)
        rows.append(_transpose(f"unet.up{i}.up", batch, c_in, c_in // 2, 2, (size, size),
                               stride=2))
    return distinct(rows)


def hifigan_v1(batch=1, frames=256, channels=512):
    rows, length = [], frames
    for i, (rate, kernel) in enumerate(((8, 16), (8, 16), (2, 4), (2, 4))):
        c_in = channels >> i
        rows.append(_transpose(f"hifigan_v1.ups.{i}", batch, c_in, c_in // 2, kernel, (length,),
                               stride=rate, padding=(kernel - rate) // 2))
        length *= rate
    return distinct(rows)


def unet3d(batch=1, volume=64):
    rows = []
    for i, channels in enumerate((512, 256, 128)):
        size = volume >> (3 - i)
        rows.append(_transpose(f"unet3d.decoders.{i}.upconv", batch, channels, channels, 2,
                               (size,) * 3, stride=2))
    return distinct(rows)


def vgan(batch=8, noise=100):
    rows = [_transpose("vgan.net_video.0", batch, noise, 512, (2, 4, 4), (1, 1, 1), bias=False)]
    channels = (512, 256, 128, 64, 3)
    size = (2, 4, 4)
    for i in range(4):
        rows.append(_transpose(f"vgan.net_video.{3 * i + 3}", batch, channels[i], channels[i + 1],
                               4, size, stride=2, padding=1, bias=i == 3))
        size = tuple(2 * s for s in size)
    return distinct(rows)


ROWS = dcgan() + unet_decoder() + hifigan_v1() + unet3d() + vgan()

QUICK = ("dcgan.main.6", "unet.up3.up", "hifigan_v1.ups.1", "vgan.net_video.6")
