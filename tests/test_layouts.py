"""The memory layout (strides) of every dlkern op's output matches torch's, for inputs that are
contiguous, channels_last (4-d) / channels_last_3d (5-d), non-contiguous views, and (convolutions)
contiguous inputs with a channels_last weight. Shapes have no size-1 dimension, so equal layouts
mean equal strides."""
import pytest
import torch
import torch.nn.functional as F

import dlkern.functional as DF
import dlkern.nn as dnn

LAYOUTS = ["contiguous", "channels_last", "noncontiguous", "weight_channels_last"]


def _in_layout(t, layout):
    """t (contiguous) re-laid: channels_last(_3d) for 4-d/5-d tensors, or a strided view."""
    if layout == "channels_last":
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}[t.dim()]
        return t.contiguous(memory_format=fmt)
    if layout == "noncontiguous":
        wide = torch.empty(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype)
        view = wide[..., ::2]
        view.copy_(t)
        return view
    return t


def _randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _check(ours, theirs):
    assert ours.shape == theirs.shape
    assert ours.stride() == theirs.stride(), (
        f"dlkern strides {ours.stride()} != torch's {theirs.stride()} for shape {tuple(ours.shape)}")
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def _layouts_for(x_dims, layout):
    """Whether a layout is meaningful for an op whose input has x_dims dimensions."""
    return not (layout == "channels_last" and x_dims not in (4, 5))


# ---- the convolution family (x layout, weight layout) ----------------------------------------

CONV = {1: (F.conv1d, DF.conv1d), 2: (F.conv2d, DF.conv2d), 3: (F.conv3d, DF.conv3d)}
CONV_T = {1: (F.conv_transpose1d, DF.conv_transpose1d), 2: (F.conv_transpose2d, DF.conv_transpose2d),
          3: (F.conv_transpose3d, DF.conv_transpose3d)}
SPATIAL = {1: (9,), 2: (7, 6), 3: (4, 5, 6)}


def _conv_inputs(rank, layout, c_in, w_shape):
    x = _randn(2, c_in, *SPATIAL[rank])
    w = _randn(*w_shape, seed=1)
    if layout == "weight_channels_last":
        if w.dim() in (4, 5):
            w = _in_layout(w, "channels_last")
        else:
            w = _in_layout(w, "noncontiguous")
    else:
        x = _in_layout(x, layout)
    return x, w


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("kind", ["conv", "conv_transpose", "depthwise", "conv_transpose_grouped"])
def test_convolution_layouts(kind, rank, layout):
    if not _layouts_for(rank + 2, layout):
        pytest.skip("channels_last applies to 4-d and 5-d tensors only")
    k = (3,) * rank
    if kind == "conv":
        x, w = _conv_inputs(rank, layout, 4, (6, 4) + k)
        ref, ours = CONV[rank]
        kwargs = dict(padding=1)
    elif kind == "depthwise":
        x, w = _conv_inputs(rank, layout, 4, (8, 1) + k)
        ref, ours = CONV[rank]
        kwargs = dict(padding=1, groups=4)
    else:
        groups = 2 if kind == "conv_transpose_grouped" else 1
        x, w = _conv_inputs(rank, layout, 4, (4, 3) + k)
        ref, ours = CONV_T[rank]
        kwargs = dict(stride=2, padding=1, groups=groups)
    _check(ours(x, w, **kwargs), ref(x, w, **kwargs))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rank", [1, 2])
def test_depthwise_separable_layouts(rank, layout):
    if not _layouts_for(rank + 2, layout):
        pytest.skip("channels_last applies to 4-d and 5-d tensors only")
    k = (3,) * rank
    x, wd = _conv_inputs(rank, layout, 4, (4, 1) + k)
    wp = _randn(6, 4, *(1,) * rank, seed=2)
    if layout == "weight_channels_last" and rank == 2:
        wp = wp.contiguous(memory_format=torch.channels_last)
    conv = CONV[rank][0]
    ours = {1: DF.depthwise_separable_conv1d, 2: DF.depthwise_separable_conv2d}[rank](
        x, wd, wp, padding=1)
    _check(ours, conv(conv(x, wd, padding=1, groups=4), wp))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_spatial_separable_layouts(layout):
    x, wv = _conv_inputs(2, layout, 4, (5, 4, 3, 1))
    wh = _randn(6, 5, 1, 3, seed=2)
    if layout == "weight_channels_last":
        wh = wh.contiguous(memory_format=torch.channels_last)
    ours = DF.spatial_separable_conv2d(x, wv, wh, padding=1)
    _check(ours, F.conv2d(F.conv2d(x, wv, padding=(1, 0)), wh, padding=(0, 1)))


def test_spatial_separable_only_weight_h_channels_last():
    x, wv = _conv_inputs(2, "contiguous", 4, (5, 4, 3, 1))
    wh = _randn(6, 5, 1, 3, seed=2).contiguous(memory_format=torch.channels_last)
    ours = DF.spatial_separable_conv2d(x, wv, wh, padding=1)
    _check(ours, F.conv2d(F.conv2d(x, wv, padding=(1, 0)), wh, padding=(0, 1)))


# ---- attention, softmax, recurrent cells and layers ------------------------------------------

NON_CONV = ["contiguous", "channels_last", "noncontiguous"]


@pytest.mark.parametrize("layout", NON_CONV)
def test_sdpa_layouts(layout):
    q, k, v = (_in_layout(_randn(2, 3, 5, 4, seed=s), layout) for s in range(3))
    _check(DF.scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("layout", NON_CONV)
def test_masked_softmax_layouts(layout):
    x = _in_layout(_randn(2, 3, 5, 6), layout)
    mask = _randn(2, 3, 5, 6, seed=4) > -0.5
    mask[..., 0] = True  # no fully masked row (torch gives NaN there, dlkern zeros)
    expected = torch.softmax(x.masked_fill(~mask, float("-inf")), dim=-1)
    _check(DF.masked_softmax(x, mask, dim=-1), expected)


@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell"])
def test_cell_layouts(cell, layout):
    torch.manual_seed(0)
    ref = getattr(torch.nn, cell)(6, 5)
    mod = getattr(dnn, cell)(6, 5)
    mod.load_state_dict(ref.state_dict())
    x = _in_layout(_randn(3, 6), layout)
    h = _in_layout(_randn(3, 5, seed=1), layout)
    if cell == "LSTMCell":
        c = _in_layout(_randn(3, 5, seed=2), layout)
        for ours, theirs in zip(mod(x, (h, c)), ref(x, (h, c))):
            _check(ours, theirs)
    else:
        _check(mod(x, h), ref(x, h))


@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("layer", ["LSTM", "GRU"])
def test_recurrent_layer_layouts(layer, batch_first, layout):
    torch.manual_seed(0)
    ref = getattr(torch.nn, layer)(6, 5, num_layers=2, batch_first=batch_first)
    mod = getattr(dnn, layer)(6, 5, num_layers=2, batch_first=batch_first)
    mod.load_state_dict(ref.state_dict())
    x = _in_layout(_randn(3, 4, 6), layout)
    ours, theirs = mod(x), ref(x)
    _check(ours[0], theirs[0])
    states = zip(ours[1], theirs[1]) if layer == "LSTM" else [(ours[1], theirs[1])]
    for a, b in states:
        _check(a, b)


@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_attention_layouts(batch_first, layout):
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first)
    mod = dnn.MultiheadAttention(8, 2, batch_first=batch_first)
    mod.load_state_dict(ref.state_dict())
    q = _in_layout(_randn(3, 4, 8), layout)
    kv = _in_layout(_randn(5, 4, 8, seed=1) if not batch_first else _randn(3, 5, 8, seed=1), layout)
    ours, theirs = mod(q, kv, kv), ref(q, kv, kv)
    _check(ours[0], theirs[0])
    _check(ours[1], theirs[1])
