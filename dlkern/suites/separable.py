"""Layer table: separable convolutions of real networks, as the fused ops compute them.

* depthwise_separable_conv2d: xception (B1, 299x299: its SeparableConv2d is a 3x3 depthwise conv
  and a 1x1 pointwise conv with nothing between) and mobilenet_v1 (B8, 224x224: depthwise 3x3 and
  pointwise 1x1 with batch norm folded in, as deployed);
* depthwise_separable_conv1d: quartznet15x5 (B8, 10 s of audio: 1000 frames of 64 mel features,
  stride 2 in the first block): NeMo's time-channel separable convs, kernels 33 to 87;
* spatial_separable_conv2d: inception_v3 (B8): the 1x7 / 7x1 pairs of Mixed_6b-e on the 17x17
  grid (the fused op runs k x 1 then 1 x k; the pair's cost and shapes are the same).
"""
from dlkern.suites.table import Row, distinct, tuple_of

FAMILY = "separable"


def _separable(name, batch, c_in, c_out, kernel, size, stride=1, padding=None, dilation=1):
    size = tuple(size)
    rank = len(size)
    padding = dilation * (kernel // 2) if padding is None else padding
    args = dict(in_channels=c_in, out_channels=c_out, kernel_size=tuple_of(kernel, rank),
                stride=tuple_of(stride, rank), padding=tuple_of(padding, rank),
                dilation=tuple_of(dilation, rank), size=size)
    return Row(name, FAMILY, f"depthwise_separable_conv{rank}d", args, batch)


def xception(batch=1, image=299):
    rows = []
    size = (image - 3) // 2 + 1 - 2  # conv1 3x3 s2 valid, conv2 3x3 valid: 147
    entry = ((1, 64, 128), (2, 128, 256), (3, 256, 728))
    for block, c_in, c_out in entry:
        first = 0 if block == 1 else 1  # blocks after the first start with a ReLU
        rows.append(_separable(f"xception.block{block}.rep.{first}", batch, c_in, c_out, 3,
                               (size, size)))
        rows.append(_separable(f"xception.block{block}.rep.{first + 3}", batch, c_out, c_out, 3,
                               (size, size)))
        size = (size + 2 - 3) // 2 + 1  # 3x3 max pool, stride 2, padding 1
    for block in range(4, 12):  # middle flow: three 728 -> 728 separable convs per block
        for i in range(3):
            rows.append(_separable(f"xception.block{block}.rep.{3 * i + 1}", batch, 728, 728, 3,
                                   (size, size)))
    rows.append(_separable("xception.block12.rep.1", batch, 728, 728, 3, (size, size)))
    rows.append(_separable("xception.block12.rep.4", batch, 728, 1024, 3, (size, size)))
    size = (size + 2 - 3) // 2 + 1
    rows.append(_separable("xception.conv3", batch, 1024, 1536, 3, (size, size)))
    rows.append(_separable("xception.conv4", batch, 1536, 2048, 3, (size, size)))
    return distinct(rows)


def mobilenet_v1(batch=8, image=224):
    layers = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
              (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
    rows, c_in, size = [], 32, image // 2
    for index, (c_out, stride) in enumerate(layers, start=1):
        rows.append(_separable(f"mobilenet_v1.model.{index}", batch, c_in, c_out, 3, (size, size),
                               stride=stride))
        size = (size - 1) // stride + 1
        c_in = c_out
    return distinct(rows)


def quartznet15x5(batch=8, frames=1000, features=64):
    rows = [_separable("quartznet15x5.encoder.0.mconv.0", batch, features, 256, 33, (frames,),
                       stride=2)]
    length = (frames - 1) // 2 + 1
    c_in = 256
    blocks = ((256, 33), (256, 39), (512, 51), (512, 63), (512, 75))
    for b, (channels, kernel) in enumerate(blocks):
        for repeat in range(3):
            block = 1 + 3 * b + repeat
            for module in range(5):  # R = 5 separable convs per block
                rows.append(_separable(f"quartznet15x5.encoder.{block}.mconv.{3 * module}", batch,
                                       c_in, channels, kernel, (length,)))
                c_in = channels
    rows.append(_separable("quartznet15x5.encoder.16.mconv.0", batch, 512, 512, 87, (length,),
                           dilation=2))
    return distinct(rows)


def inception_v3(batch=8, grid=17):
    rows = []
    for mixed, c7 in (("6b", 128), ("6c", 160), ("6d", 160), ("6e", 192)):
        pairs = ((f"inception_v3.Mixed_{mixed}.branch7x7_2", c7, 192),
                 (f"inception_v3.Mixed_{mixed}.branch7x7dbl_2", c7, c7),
                 (f"inception_v3.Mixed_{mixed}.branch7x7dbl_4", c7, 192))
        for name, mid, c_out in pairs:
            args = dict(in_channels=c7, mid_channels=mid, out_channels=c_out, kernel_size=7,
                        padding=3, size=(grid, grid))
            rows.append(Row(name, FAMILY, "spatial_separable_conv2d", args, batch))
    return distinct(rows)


ROWS = xception() + mobilenet_v1() + quartznet15x5() + inception_v3()

QUICK = ("xception.block2.rep.1", "mobilenet_v1.model.4", "quartznet15x5.encoder.7.mconv.0",
         "inception_v3.Mixed_6b.branch7x7_2")
