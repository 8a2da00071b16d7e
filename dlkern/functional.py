"""dlkern.functional: the same names, signatures, defaults and errors as torch.nn.functional."""
from dlkern.ops.conv import convolution


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """As torch.nn.functional.conv1d, computed by dlkern's kernels."""
    return convolution("conv1d", input, weight, bias, stride, padding, dilation, groups, 1)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """As torch.nn.functional.conv2d, computed by dlkern's kernels."""
    return convolution("conv2d", input, weight, bias, stride, padding, dilation, groups, 2)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """As torch.nn.functional.conv3d, computed by dlkern's kernels."""
    return convolution("conv3d", input, weight, bias, stride, padding, dilation, groups, 3)


__all__ = ["conv1d", "conv2d", "conv3d"]

from dlkern.ops.conv_transpose import convolution_transpose  # noqa: E402


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    """As torch.nn.functional.conv_transpose1d, computed by dlkern's kernels."""
    return convolution_transpose("conv_transpose1d", input, weight, bias, stride, padding,
                                 output_padding, groups, dilation, 1)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    """As torch.nn.functional.conv_transpose2d, computed by dlkern's kernels."""
    return convolution_transpose("conv_transpose2d", input, weight, bias, stride, padding,
                                 output_padding, groups, dilation, 2)


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    """As torch.nn.functional.conv_transpose3d, computed by dlkern's kernels."""
    return convolution_transpose("conv_transpose3d", input, weight, bias, stride, padding,
                                 output_padding, groups, dilation, 3)


__all__ += ["conv_transpose1d", "conv_transpose2d", "conv_transpose3d"]
