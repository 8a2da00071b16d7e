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


class _DlkernConvTransposeMixin:
    _dlkern_conv_transpose = None  # the dlkern.functional conv_transpose of the module's rank
    _spatial_dims = None

    def forward(self, input, output_size=None):
        # As torch's ConvTranspose*d.forward: only zero padding; output_size picks output_padding.
        if self.padding_mode != "zeros":
            raise ValueError(f'Only "zeros" padding mode is supported for {type(self).__name__}')
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, self._spatial_dims, self.dilation)
        return type(self)._dlkern_conv_transpose(input, self.weight, self.bias, self.stride,
                                                 self.padding, output_padding, self.groups,
                                                 self.dilation)


class ConvTranspose1d(_DlkernConvTransposeMixin, torch.nn.ConvTranspose1d):
    """torch.nn.ConvTranspose1d computed by dlkern."""
    _dlkern_conv_transpose = staticmethod(DF.conv_transpose1d)
    _spatial_dims = 1


class ConvTranspose2d(_DlkernConvTransposeMixin, torch.nn.ConvTranspose2d):
    """torch.nn.ConvTranspose2d computed by dlkern."""
    _dlkern_conv_transpose = staticmethod(DF.conv_transpose2d)
    _spatial_dims = 2


class ConvTranspose3d(_DlkernConvTransposeMixin, torch.nn.ConvTranspose3d):
    """torch.nn.ConvTranspose3d computed by dlkern."""
    _dlkern_conv_transpose = staticmethod(DF.conv_transpose3d)
    _spatial_dims = 3
