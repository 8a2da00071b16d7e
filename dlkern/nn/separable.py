"""Separable convolution modules (no torch twin): depthwise-separable and spatial separable.

Their parameters live in torch conv submodules used as parameter holders (their own forward is
never called), so the state_dict reads ``depthwise.weight``, ``pointwise.weight``,
``pointwise.bias`` (Keras SeparableConv: the depthwise stage has no bias) and ``vertical.weight``,
``vertical.bias``, ``horizontal.weight``, ``horizontal.bias``; torch's constructors check the
arguments. The computation is dlkern.functional's fused ops. Non-zero padding modes pad with
torch's ``F.pad`` first (data movement, as torch's conv modules do) and convolve unpadded.
"""
import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from dlkern import functional as DF


class _SeparableConvNd(torch.nn.Module):
    _torch_conv = None
    _dlkern_fn = None

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 depth_multiplier=1, bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        if isinstance(depth_multiplier, bool) or not isinstance(depth_multiplier, int) \
                or depth_multiplier <= 0:
            raise ValueError(f"depth_multiplier must be a positive int, got {depth_multiplier!r}")
        self.depth_multiplier = depth_multiplier
        self.depthwise = self._torch_conv(in_channels, in_channels * depth_multiplier, kernel_size,
                                          stride=stride, padding=padding, dilation=dilation,
                                          groups=in_channels, bias=False,
                                          padding_mode=padding_mode, **kw)
        self.pointwise = self._torch_conv(in_channels * depth_multiplier, out_channels, 1,
                                          bias=bias, **kw)

    def extra_repr(self):
        d = self.depthwise
        return (f"{d.in_channels}, {self.pointwise.out_channels}, kernel_size={d.kernel_size}, "
                f"stride={d.stride}, padding={d.padding}, dilation={d.dilation}, "
                f"depth_multiplier={self.depth_multiplier}, "
                f"bias={self.pointwise.bias is not None}, "
                f"padding_mode={d.padding_mode!r}")

    def forward(self, input):
        d = self.depthwise
        padding = d.padding
        if d.padding_mode != "zeros":
            input = F.pad(input, d._reversed_padding_repeated_twice, mode=d.padding_mode)
            padding = 0
        return type(self)._dlkern_fn(input, d.weight, self.pointwise.weight, None,
                                     self.pointwise.bias, d.stride, padding, d.dilation)


class SeparableConv1d(_SeparableConvNd):
    """Depthwise conv1d (depth_multiplier channels per input channel) then a 1x1 conv, fused."""
    _torch_conv = torch.nn.Conv1d
    _dlkern_fn = staticmethod(DF.depthwise_separable_conv1d)


class SeparableConv2d(_SeparableConvNd):
    """Depthwise conv2d (depth_multiplier channels per input channel) then a 1x1 conv, fused."""
    _torch_conv = torch.nn.Conv2d
    _dlkern_fn = staticmethod(DF.depthwise_separable_conv2d)


class SpatialSeparableConv2d(torch.nn.Module):
    """A (kh x 1) conv to mid_channels then a (1 x kw) conv to out_channels, fused: the
    factorisation of a kh x kw conv (see dlkern.functional.spatial_separable_conv2d for the
    multiply count). mid_channels defaults to out_channels."""

    def __init__(self, in_channels, out_channels, kernel_size, mid_channels=None, stride=1,
                 padding=0, dilation=1, bias=True, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        mid_channels = out_channels if mid_channels is None else mid_channels
        kh_, kw_ = _pair(kernel_size)
        sh, sw = _pair(stride)
        dh, dw = _pair(dilation)
        if isinstance(padding, str):
            pad_v = pad_h = padding
        else:
            ph, pw = _pair(padding)
            pad_v, pad_h = (ph, 0), (0, pw)
        self.stride, self.padding, self.dilation = (sh, sw), padding if isinstance(padding, str) \
            else _pair(padding), (dh, dw)
        self.vertical = torch.nn.Conv2d(in_channels, mid_channels, (kh_, 1), stride=(sh, 1),
                                        padding=pad_v, dilation=(dh, 1), bias=bias, **kw)
        self.horizontal = torch.nn.Conv2d(mid_channels, out_channels, (1, kw_), stride=(1, sw),
                                          padding=pad_h, dilation=(1, dw), bias=bias, **kw)

    def extra_repr(self):
        return (f"{self.vertical.in_channels}, {self.horizontal.out_channels}, "
                f"kernel_size={(self.vertical.kernel_size[0], self.horizontal.kernel_size[1])}, "
                f"mid_channels={self.vertical.out_channels}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.vertical.bias is not None}")

    def forward(self, input):
        return DF.spatial_separable_conv2d(input, self.vertical.weight, self.horizontal.weight,
                                           self.vertical.bias, self.horizontal.bias, self.stride,
                                           self.padding, self.dilation)
