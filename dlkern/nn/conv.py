"""Drop-in convolution modules: subclasses of torch's, same constructor, same state_dict.

Only the computation changes: ``_conv_forward`` calls dlkern.functional. Non-zero padding modes
pad with torch's ``F.pad`` first (data movement, as torch's own modules do) and convolve with
zero padding.
"""
import torch
import torch.nn.functional as F

from dlkern import functional as DF


class _DlkernConvMixin:
    _dlkern_conv = None  # the dlkern.functional conv of the module's rank

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return type(self)._dlkern_conv(padded, weight, bias, self.stride, 0, self.dilation,
                                           self.groups)
        return type(self)._dlkern_conv(input, weight, bias, self.stride, self.padding,
                                       self.dilation, self.groups)


class Conv1d(_DlkernConvMixin, torch.nn.Conv1d):
    """torch.nn.Conv1d computed by dlkern."""
    _dlkern_conv = staticmethod(DF.conv1d)


class Conv2d(_DlkernConvMixin, torch.nn.Conv2d):
    """torch.nn.Conv2d computed by dlkern."""
    _dlkern_conv = staticmethod(DF.conv2d)


class Conv3d(_DlkernConvMixin, torch.nn.Conv3d):
    """torch.nn.Conv3d computed by dlkern."""
    _dlkern_conv = staticmethod(DF.conv3d)
