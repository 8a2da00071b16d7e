"""The recurrent kernels' activations (kernels/numba/rnn_math.py) against float64 on a dense sweep
of the float32 range: exp, sigmoid and tanh within 2 ulp of the correctly rounded value, with
overflow, gradual underflow, +-0, +-inf and NaN as torch computes them."""
import numpy as np
import pytest

from dlkern.kernels.numba import rnn_math

SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-38, 1e-30, -1e-30, 1e-8, -1e-8,
           0.015625, -0.015625, 0.0156249, 88.72283, 88.72284, 89.0, -87.33654, -87.34,
           -103.97, -103.98, -104.0, -9.0, 9.0, 20.0, -20.0, 3.4e38, -3.4e38]


def _sweep():
    """Every 1021st float32 bit pattern (4.2 million values across the whole range, both signs,
    subnormals, infinities and NaNs) plus the edge values above."""
    bits = np.arange(0, 2 ** 32, 1021, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([bits.view(np.float32), np.array(SPECIAL, dtype=np.float32)])


def _reference(name, x64):
    with np.errstate(all="ignore"):
        if name == "exp":
            return np.exp(x64)
        if name == "sigmoid":
            # 1 / (1 + e^-x) in float64: correct to ~1e-16 relative, far below float32's ulp
            return np.where(x64 >= 0, 1 / (1 + np.exp(-x64)), np.exp(x64) / (1 + np.exp(x64)))
        return np.tanh(x64)


def _ulps(got, exact):
    """|got - exact| in units of the last place of the correctly rounded float32 result."""
    with np.errstate(all="ignore"):
        rounded = exact.astype(np.float32)
        ulp = np.spacing(np.abs(rounded)).astype(np.float64)
        err = np.abs(got.astype(np.float64) - exact) / ulp
    both_nan = np.isnan(got) & np.isnan(rounded)
    err = np.where(got == rounded, 0.0, err)
    err = np.where(both_nan, 0.0, err)
    return np.where(np.isnan(err), np.inf, err)


@pytest.mark.parametrize("name", ["exp", "sigmoid", "tanh"])
def test_within_two_ulp_over_float32(name):
    x = _sweep()
    out = np.empty_like(x)
    getattr(rnn_math, f"{name}_array")(x, out)
    err = _ulps(out, _reference(name, x.astype(np.float64)))
    worst = int(np.argmax(err))
    assert err[worst] <= 2.0, (name, float(x[worst]), float(out[worst]), float(err[worst]))
    # NaN in, NaN out; infinities and saturation as torch
    tail = out[-len(SPECIAL):]
    assert np.isnan(tail[SPECIAL.index(np.nan)])
    expected = {"exp": (np.inf, 0.0), "sigmoid": (1.0, 0.0), "tanh": (1.0, -1.0)}[name]
    assert (tail[SPECIAL.index(np.inf)], tail[SPECIAL.index(-np.inf)]) == expected


def test_float64_arguments():
    """float64 data gets a few ulps of float64 (the layers' float64 path uses the same code)."""
    x = np.concatenate([np.linspace(-700, 700, 200001), np.linspace(-1e-3, 1e-3, 20001)])
    for name, ref in (("exp", np.exp(x)), ("tanh", np.tanh(x)),
                      ("sigmoid", _reference("sigmoid", x))):
        out = np.empty_like(x)
        getattr(rnn_math, f"{name}_array")(x, out)
        rel = np.abs(out - ref) / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)
        assert rel.max() < 1e-14, (name, rel.max())
