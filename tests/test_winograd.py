"""Winograd convolution: the transforms, the tile tables, and the accuracy contract (the float32
result's max error against float64 is at most 2x torch's own float32 error on the same inputs,
for the forward and the input gradient, on normal and on uniform +-9 inputs)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlkern.functional as DF
from dlkern.kernels.numba import winograd


@pytest.mark.parametrize("m", [2, 4])
def test_hand_written_passes_match_the_exact_matrices(m):
    at, g, bt = (np.array([[float(v) for v in row] for row in mat]) for mat in winograd.toom_cook(m))
    alpha = m + 2
    lanes = 3
    for mat, apply, n_in in ((bt, winograd._bt_pass, alpha), (at, winograd._at_pass, alpha)):
        for k in range(n_in):
            src = np.zeros(n_in * lanes)
            src[k * lanes:(k + 1) * lanes] = [1.0, 2.0, -0.5]
            dst = np.full(mat.shape[0] * lanes, np.nan)
            apply(src, 0, lanes, dst, 0, lanes, m, lanes)
            expected = np.outer(mat[:, k], [1.0, 2.0, -0.5]).reshape(-1)
            np.testing.assert_array_equal(dst, expected)
    # the bilinear identity: F(m, 3) computes a 3-tap correlation exactly
    rng = np.random.default_rng(m)
    d, w = rng.standard_normal(alpha), rng.standard_normal(3)
    y = at @ ((g @ w) * (bt @ d))
    np.testing.assert_allclose(y, np.correlate(d, w, mode="valid"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("out_len,m,dilation", [(1, 2, 1), (7, 2, 1), (8, 4, 1), (11, 4, 3),
                                                (5, 2, 7)])
def test_tiles_cover_every_output_once(out_len, m, dilation):
    firsts, counts = winograd.axis_tiles(out_len, m, dilation)
    seen = [o for f, c in zip(firsts, counts) for o in range(f, f + c * dilation, dilation)]
    assert sorted(seen) == list(range(out_len))
    assert counts.max() <= m


def _errors(op, x, w, padding, need_input_grad):
    """(dlkern error, torch error) of the float32 output (and input gradient) vs float64."""
    torch_op = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[x.dim() - 2]
    x32 = x.float().requires_grad_(need_input_grad)
    w32 = w.float()
    x64 = x32.detach().double().requires_grad_(need_input_grad)
    ref = torch_op(x64, w32.double(), padding=padding)
    ours = op(x32, w32, padding=padding)
    theirs = torch_op(x32.detach().requires_grad_(need_input_grad), w32, padding=padding)
    result = [((ours.double() - ref).abs().max().item(), (theirs.double() - ref).abs().max().item())]
    if need_input_grad:
        grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        (g_ref,) = torch.autograd.grad(ref, x64, grad)
        (g_ours,) = torch.autograd.grad(ours, x32, grad.float())
        x32b = x32.detach().requires_grad_()
        (g_theirs,) = torch.autograd.grad(torch_op(x32b, w32, padding=padding), x32b, grad.float())
        result.append(((g_ours.double() - g_ref).abs().max().item(),
                       (g_theirs.double() - g_ref).abs().max().item()))
    return result


CONTRACT_SHAPES = [
    # (batch, C_in, C_out, spatial, kernel): shapes on which the choice point picks Winograd
    (2, 8, 32, (28, 28), (3, 3)),
    (2, 16, 32, (28, 28), (3, 3)),
    (2, 64, 32, (28, 28), (3, 3)),
    (4, 256, 32, (14, 14), (3, 3)),
    (2, 16, 32, (300,), (3,)),
    (2, 128, 32, (300,), (3,)),
    (1, 32, 16, (6, 10, 10), (3, 3, 3)),
]


@pytest.mark.parametrize("inputs", ["normal", "uniform9"])
@pytest.mark.parametrize("shape", CONTRACT_SHAPES, ids=str)
def test_accuracy_contract(monkeypatch, shape, inputs):
    from dlkern.ops import conv as conv_ops

    monkeypatch.delenv("DLKERN_CONV_ALGO", raising=False)
    calls = []
    original = conv_ops.numba_winograd.conv_forward
    monkeypatch.setattr(conv_ops.numba_winograd, "conv_forward",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    n, c_in, c_out, spatial, kernel = shape
    worst = 0.0
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        if inputs == "uniform9":
            x = torch.rand((n, c_in) + spatial, generator=g, dtype=torch.float64) * 18 - 9
            w = torch.rand((c_out, c_in) + kernel, generator=g, dtype=torch.float64) * 18 - 9
        else:
            x = torch.randn((n, c_in) + spatial, generator=g, dtype=torch.float64)
            w = torch.randn((c_out, c_in) + kernel, generator=g, dtype=torch.float64)
            w /= (c_in * np.prod(kernel)) ** 0.5
        op = {1: DF.conv1d, 2: DF.conv2d, 3: DF.conv3d}[len(spatial)]
        for ours, theirs in _errors(op, x, w, 1, need_input_grad=c_out >= 8):
            worst = max(worst, ours / theirs)
    assert len(calls) == 4  # the choice point picked Winograd: forward and input gradient, 2 seeds
    assert worst <= 2.0, f"Winograd error {worst:.2f}x torch's float32 error"
