"""Per-channel helpers shared by op families: adding a bias, summing a gradient per channel.

Arrays are C-contiguous (N, C, *spatial) viewed as (N, C, P). Parallel over channels, so each
work item owns its outputs (no two threads write one element).
"""
import numba
import numpy as np

from ._jit import jit_parallel


@jit_parallel
def _add_bias(out, bias):
    n_img, channels, pixels = out.shape
    for c in numba.prange(channels):
        b = bias[c]
        for n in range(n_img):
            row = out[n, c]
            for j in range(pixels):
                row[j] += b


@jit_parallel
def _channel_sum(a, sums):
    n_img, channels, pixels = a.shape
    for c in numba.prange(channels):
        s = 0.0
        for n in range(n_img):
            row = a[n, c]
            for j in range(pixels):
                s += row[j]
        sums[c] = s


def add_channel_bias(out, bias):
    """out[n, c, ...] += bias[c], in place; out is C-contiguous (N, C, ...)."""
    if out.size:
        _add_bias(out.reshape(out.shape[0], out.shape[1], -1), bias)
    return out


def channel_sum(a):
    """sum of a over every axis but 1: the gradient of a per-channel bias. a is C-contiguous."""
    sums = np.zeros(a.shape[1], dtype=a.dtype)
    if a.size:
        _channel_sum(a.reshape(a.shape[0], a.shape[1], -1), sums)
    return sums
