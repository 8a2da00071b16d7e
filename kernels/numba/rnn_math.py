"""Activations of the recurrent kernels: exp, sigmoid and tanh, vectorisable and accurate.

Numba has no vector libm here (no SVML), and a scalar libm call per gate element costs more than
the recurrent product at the target sizes, so the gates use these instead. Every function works
in float64 on float64 scratch, whatever the data's dtype: a float32 result rounded from it is
within one ulp of the correctly rounded value over the whole float32 range (overflow to inf,
gradual underflow to subnormals and 0 included), where float32 arithmetic would lose several ulps
to the reduction and to cancellation in tanh near 0. float64 data gets a few ulps.

* ``exp_inplace``: Cody-Waite reduction x = k ln2 + r (|r| <= ln2/2, ln2 split so k ln2_hi is
  exact), Taylor polynomial of degree 12 (truncation 2e-16 relative), 2^k applied as
  (2^(k//2))^2 (times 2 for odd k) from exponent bits in a second pass, so that k spans the whole
  double range (both passes vectorise). Arguments are clamped to [-746, 710], where double's exp
  is already 0 or inf: exp(-inf) = 0 and exp(inf) = inf exactly, so sigmoid(-inf) = 0 and
  0 * inf = NaN as in torch. NaN stays NaN (its k is taken as 0).
* ``tanh_from_exp(x, e)`` with e = exp(-2|x|): (1 - e) / (1 + e) with x's sign, and the odd Taylor
  series for |x| < 1/64, where 1 - e would cancel (the series' first omitted term is 1e-18
  relative there). tanh(+-inf) = +-1, tanh(NaN) = NaN.
* sigmoid(x) = 1 / (1 + exp(-x)): no cancellation anywhere; exp(-x) = inf gives 0.
"""
import numpy as np

from ._jit import jit

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693147180369123816490   # 32 significant bits: k * _LN2_HI is exact for |k| < 2^20
_LN2_LO = 1.90821492927058770002e-10
_EXP_LO, _EXP_HI = -746.0, 710.0   # exp is 0 below, inf above (in float64 already)
_TANH_SERIES = 1.0 / 64


@jit
def exp_inplace(z, bits, n):
    """z[:n] = exp(z[:n]) for float64 z; bits: int64 scratch of at least n entries."""
    scale = bits[:n].view(np.float64)
    for j in range(n):
        v = z[j]
        v = _EXP_LO if v < _EXP_LO else v
        v = _EXP_HI if v > _EXP_HI else v
        k = np.floor(v * _LOG2E + 0.5)
        k = 0.0 if k != k else k
        r = v - k * _LN2_HI - k * _LN2_LO
        p = 1.0 + r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (
            1.0 / 120 + r * (1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (
                1.0 / 362880 + r * (1.0 / 3628800 + r * (1.0 / 39916800 + r * (
                    1.0 / 479001600))))))))))))
        half = np.floor(k * 0.5)
        z[j] = p * 2.0 if k - 2.0 * half != 0.0 else p
        bits[j] = (np.int64(half) + 1023) << 52
    for j in range(n):
        z[j] = z[j] * scale[j] * scale[j]


@jit
def tanh_from_exp(x, e):
    """tanh(x) given e = exp(-2|x|) (float64)."""
    ax = abs(x)
    if ax < _TANH_SERIES:
        x2 = x * x
        return x * (1.0 - x2 * (1.0 / 3 - x2 * (2.0 / 15 - x2 * (17.0 / 315 - x2 * (62.0 / 2835)))))
    t = (1.0 - e) / (1.0 + e)
    return -t if x < 0.0 else t


@jit
def tanh_arg(x):
    """The exp argument tanh_from_exp needs: -2|x| (NaN stays NaN)."""
    return -2.0 * abs(x)


@jit
def sigmoid_from_exp(e):
    """sigmoid(x) given e = exp(-x)."""
    return 1.0 / (1.0 + e)


@jit
def relu(x):
    """max(x, 0) with NaN propagating, as torch.relu."""
    return 0.0 if x < 0.0 else x


# --- whole-array forms (tests, and any caller outside the gate loops) ---------------------------

@jit
def exp_array(x, out):
    n = x.shape[0]
    z = np.empty(n, dtype=np.float64)
    bits = np.empty(n, dtype=np.int64)
    for j in range(n):
        z[j] = x[j]
    exp_inplace(z, bits, n)
    for j in range(n):
        out[j] = z[j]


@jit
def sigmoid_array(x, out):
    n = x.shape[0]
    z = np.empty(n, dtype=np.float64)
    bits = np.empty(n, dtype=np.int64)
    for j in range(n):
        z[j] = -np.float64(x[j])
    exp_inplace(z, bits, n)
    for j in range(n):
        out[j] = sigmoid_from_exp(z[j])


@jit
def tanh_array(x, out):
    n = x.shape[0]
    z = np.empty(n, dtype=np.float64)
    bits = np.empty(n, dtype=np.int64)
    for j in range(n):
        z[j] = tanh_arg(np.float64(x[j]))
    exp_inplace(z, bits, n)
    for j in range(n):
        out[j] = tanh_from_exp(np.float64(x[j]), z[j])
