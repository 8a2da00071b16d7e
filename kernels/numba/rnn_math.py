"""Activations of the recurrent kernels: exp, sigmoid and tanh, vectorisable and accurate.

Numba has no vector libm here (no SVML), and a scalar libm call per gate element costs more than
the recurrent product at the target sizes, so the gates use these instead. Every function works
in float64, whatever the data's dtype: a float32 result rounded from it is
within one ulp of the correctly rounded value over the whole float32 range (overflow to inf,
gradual underflow to subnormals and 0 included), where float32 arithmetic would lose several ulps
to the reduction and to cancellation in tanh near 0. float64 data gets a few ulps.

* ``exp`` and ``expm1``: Cody-Waite reduction x = k ln2 + r (|r| <= ln2/2, ln2 split so k ln2_hi
  is exact), Taylor polynomial of e^r - 1 to degree 12 (truncation 2e-16 relative; degree 8,
  2e-10, when the result is rounded to float32: the ``short`` flag, which the callers derive
  from their arrays' dtype at compile time), 2^k applied
  as (2^(k//2))^2 (times 2 for odd k) built from exponent bits, so that k spans the whole double
  range. Arguments are clamped to [-746, 710], where double's exp is already 0 or inf:
  exp(-inf) = 0 and exp(inf) = inf exactly, so sigmoid(-inf) = 0 and 0 * inf = NaN as in
  torch. NaN stays NaN (r is NaN). expm1 near 0 has k = 0: e^r - 1 is the polynomial itself,
  no cancellation.
* ``tanh`` = -m / (2 + m) with m = expm1(-2|x|) and x's sign: accurate near 0 (no 1 - e
  cancellation) and for large |x| (m -> -1); tanh(+-inf) = +-1, tanh(NaN) = NaN.
* sigmoid(x) = 1 / (1 + exp(-x)): no cancellation anywhere; exp(-x) = inf gives 0.

They are scalar functions, inlined into the gate loops, which LLVM vectorises (8 float64 lanes
with AVX-512, both sides of every select computed): each gate row is one pass, no scratch.
"""
import numpy as np

from ._jit import jit

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693147180369123816490   # 32 significant bits: k * _LN2_HI is exact for |k| < 2^20
_LN2_LO = 1.90821492927058770002e-10
_EXP_LO, _EXP_HI = -746.0, 710.0   # exp is 0 below, inf above (in float64 already)
_ROUND = 6755399441055744.0              # 1.5 * 2^52: adding it leaves an integer in the mantissa
_ROUND_BITS = 0x4338000000000000          # the bits of _ROUND


@jit
def _reduce(v):
    """(r, scale) with v = r + k ln2, |r| <= ln2/2, scale = 2^k (v clamped to [-746, 710])."""
    v = _EXP_LO if v < _EXP_LO else v
    v = _EXP_HI if v > _EXP_HI else v
    k = np.floor(v * _LOG2E + 0.5)
    r = v - k * _LN2_HI - k * _LN2_LO
    half = np.floor(k * 0.5)
    # int64(half) through the mantissa of half + 1.5 * 2^52: no float-to-int conversion, whose
    # result LLVM leaves undefined for NaN (and whose NaN guard would stop the vectoriser).
    half_int = np.float64(half + _ROUND).view(np.int64) - _ROUND_BITS
    s = np.int64((half_int + 1023) << 52).view(np.float64)
    scale = s * s
    return r, (scale * 2.0 if k - 2.0 * half != 0.0 else scale)


@jit
def _expm1_poly(r, short):
    """e^r - 1 for |r| <= ln2/2: Taylor to degree 12 (truncation 2e-16 relative), or with
    ``short`` (results rounded to float32) to degree 8 (2e-10 relative, 0.004 ulp of float32)."""
    if short:
        return r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
            1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320))))))))
    return r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
        1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (
            1.0 / 3628800 + r * (1.0 / 39916800 + r * (1.0 / 479001600))))))))))))


@jit
def exp(v, short):
    """exp(v) for a float64 v (inlined into the callers' loops, which it lets vectorise).
    short: the result is rounded to float32 (a compile-time constant in the callers)."""
    r, scale = _reduce(v)
    return (1.0 + _expm1_poly(r, short)) * scale


@jit
def expm1(v, short):
    """exp(v) - 1 for a float64 v, without cancellation near 0 (there k = 0 and scale = 1)."""
    r, scale = _reduce(v)
    return scale * _expm1_poly(r, short) + (scale - 1.0)


@jit
def sigmoid(v, short):
    """1 / (1 + exp(-v)) for a float64 v."""
    return 1.0 / (1.0 + exp(-v, short))


@jit
def tanh(x, short):
    """tanh(x) for a float64 x: -m / (2 + m) with m = expm1(-2|x|), and x's sign."""
    m = expm1(-2.0 * (-x if x < 0.0 else x), short)
    t = -m / (2.0 + m)
    return -t if x < 0.0 else t


@jit
def relu(x):
    """max(x, 0) with NaN propagating, as torch.relu."""
    return 0.0 if x < 0.0 else x


# --- whole-array forms (the tests' entry points) ---------------------------------------------

@jit
def exp_array(x, out):
    short = x.itemsize == 4
    for j in range(x.shape[0]):
        out[j] = exp(np.float64(x[j]), short)


@jit
def sigmoid_array(x, out):
    short = x.itemsize == 4
    for j in range(x.shape[0]):
        out[j] = sigmoid(np.float64(x[j]), short)


@jit
def tanh_array(x, out):
    short = x.itemsize == 4
    for j in range(x.shape[0]):
        out[j] = tanh(np.float64(x[j]), short)
