"""Checks shared by every op family: tensors, int-or-tuple parameters, broadcasting, same dtype
and device."""
import numbers

import torch


def _shape(t):
    return list(t.shape)


def expand_param(value, n, name):
    """An int or a sequence of n ints (a 1-sequence is broadcast, as torch does) -> tuple of n ints."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor)):
        raise TypeError(f"{name} must be an int or a tuple of ints, got {type(value).__name__}")
    if isinstance(value, numbers.Integral):
        return (int(value),) * n
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of ints, got {value!r}") from None
    for v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int or a tuple of ints, got {value!r}")
    if len(items) == 1:
        items = items * n
    if len(items) != n:
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of {n} values to match the "
            f"convolution dimensions, but got {name}={[int(v) for v in items]}"
        )
    return tuple(int(v) for v in items)


def check_tensor(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")


def _broadcasts_to(shape, target):
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target)))


def _check_same_kind(op, name, t, x):
    check_tensor(t, name)
    if t.dtype != x.dtype:
        raise RuntimeError(f"{op}: input type ({x.dtype}) and {name} type ({t.dtype}) should be the same")
    if t.device != x.device:
        raise RuntimeError(f"{op}: expected input and {name} on one device, got {x.device} and {t.device}")
