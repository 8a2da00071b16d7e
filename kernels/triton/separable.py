"""Separable convolutions for the GPU: fused depthwise-separable, spatial separable, and the 2-d
implicit GEMMs their other stages and gradients are made of.

Depthwise-separable (rank-3 canonical torch tensors, any strides):

    x    (N, C, D, H, W)          input (1-d and 2-d convolutions have D = H = 1 or D = 1)
    wd   (C*m, 1, KD, KH, KW)     depthwise weight, bd (C*m,) or None
    wp   (C_out, C*m)             pointwise weight as a matrix (any strides), bp (C_out,) or None
    out  (N, C_out, OD, OH, OW)   its shape gives the output size; padding is the low-side padding

Forward (``_dsconv_forward_kernel``): one implicit GEMM, M = output pixels of an image, N = output
channels, K = the C*m depthwise channels. A program computes the depthwise result of its BLOCK_M
pixels for BLOCK_K channels in registers (taps unrolled, float32 sums, rounded to the input dtype
as torch's unfused pair would round it) and feeds it straight to ``tl.dot`` with the pointwise
weight: the depthwise result never goes to memory.

Spatial separable (2-d, any strides):

    x    (N, C_in, H, W);  wv (C_mid, C_in, KH, 1), bv;  wh (C_out, C_mid, 1, KW), bh
    out  (N, C_out, OH, OW)

the (KH x 1) convolution with stride (sh, 1), padding (ph, 0), dilation (dh, 1) makes mid
(N, C_mid, OH, W), the (1 x KW) convolution with stride (1, sw), padding (0, pw), dilation (1, dw)
makes out. Forward (``_spatial_forward_kernel``): a program owns a segment of one output row and a
block of output channels. Block by block of mid channels it computes the MID_W columns of mid that
the segment reads (GEMM, K = C_in*KH, in registers), then for each horizontal tap shifts that
block along its columns with ``tl.gather`` and multiplies it into the output (GEMM, K = C_mid*KW).
mid never goes to memory; only the halo columns ((KW-1)*dw per segment) are computed twice, and
mid again for each further block of BLOCK_N output channels.

Gradients are composed of these kernels and the depthwise ones (depthwise.py), with no torch
convolution: the intermediate (depthwise or vertical) result is recomputed, not saved by the
forward pass, and the gradient of the intermediate is materialised once (the input gradient
gathers it over a neighbourhood, which a fused kernel would have to recompute):

* depthwise-separable: dmid = wp^T dy (a 1x1 GEMM); dwp = dy mid^T and dbp in one GEMM kernel
  (``_dsconv_pointwise_weight_kernel``) that recomputes mid = depthwise(x) in registers as the
  forward does, so mid never goes to memory; dx, dwd, dbd from dmid with the depthwise kernels.
* spatial: mid = vertical(x); dmid = horizontal's input gradient of dy; dwh, dbh from dy and mid;
  dwv, dbv from dmid and x; dx = vertical's input gradient of dmid.

The plain convolutions of these compositions (the 1x1 GEMM, the vertical and horizontal stages
and their gradients) are conv.py's implicit-GEMM kernels on rank-3 views, which read cuDNN's TF32
switch themselves. The fused kernels here ask precision.dot_precision (cuDNN's switch) for
``tl.dot``; float16/bfloat16 accumulate in float32.
"""
import triton
import triton.language as tl

from ._autotune import autotune
from ._launch import named
from .configs import CONV
from .precision import CUDNN, dot_precision
from .conv import conv_backward_input, conv_backward_weight, conv_forward
from .depthwise import (_WEIGHT_PROGRAMS, SMALL_BATCH, SMALL_IMAGE, _prune,
                        depthwise_backward_input, depthwise_backward_weight)

# Each autotuned kernel's prune, by kernel name (the tests check them against launch arguments).
PRUNES = {
    "_dsconv_forward_kernel": _prune("C_OUT", "P_OUT", small=SMALL_IMAGE),
    "_dsconv_pointwise_weight_kernel": _prune("C_OUT", "Q", small=SMALL_BATCH),
    "_spatial_forward_kernel": _prune("C_OUT", "H_OUT", "W_OUT", small=SMALL_IMAGE),
}

# Size arguments are not specialised (Triton would compile a kernel for every combination of
# sizes divisible by 16 or equal to 1): each kernel's _SIZES_ list names them. Strides keep their
# specialisation, since a unit stride is what makes loads contiguous.
_SIZES_DSCONV_FORWARD = ["CM", "C_OUT", "D_IN", "H_IN", "W_IN", "H_OUT", "W_OUT", "P_OUT"]


@autotune(CONV["dsconv_forward"], key=["CM", "C_OUT", "P_OUT", "KD", "KH", "KW"],
          prune=PRUNES["_dsconv_forward_kernel"])
@triton.jit(do_not_specialize=_SIZES_DSCONV_FORWARD)
def _dsconv_forward_kernel(
        x_ptr, wd_ptr, bd_ptr, wp_ptr, bp_ptr, out_ptr,
        CM, C_OUT, M, D_IN, H_IN, W_IN, H_OUT, W_OUT, P_OUT,
        sxn, sxc, sxd, sxh, sxw, swp_o, swp_k, son, soc, sod, soh, sow,
        SD, SH, SW, PD, PH, PW, DD, DH, DW,
        KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, HAS_BD: tl.constexpr,
        HAS_BP: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    p = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    p_ok = p < P_OUT
    co_ok = co < C_OUT
    rows = p // W_OUT
    ow = p - rows * W_OUT
    od = rows // H_OUT
    oh = rows - od * H_OUT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, CM, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < CM
        x_chan = x_ptr + n * sxn + (k // M).to(tl.int64) * sxc
        mid = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for kd in tl.static_range(KD):
            i_d = od * SD - PD + kd * DD
            ok_d = p_ok & (i_d >= 0) & (i_d < D_IN)
            for kh in tl.static_range(KH):
                ih = oh * SH - PH + kh * DH
                ok_h = ok_d & (ih >= 0) & (ih < H_IN)
                for kw in tl.static_range(KW):
                    iw = ow * SW - PW + kw * DW
                    ok = ok_h & (iw >= 0) & (iw < W_IN)
                    xv = tl.load(x_chan[None, :] + (i_d * sxd + ih * sxh + iw * sxw)[:, None],
                                 mask=ok[:, None] & k_ok[None, :], other=0.0)
                    wv = tl.load(wd_ptr + k * (KD * KH * KW) + ((kd * KH + kh) * KW + kw),
                                 mask=k_ok, other=0.0)
                    mid += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
        if HAS_BD:
            mid += tl.load(bd_ptr + k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
        wp = tl.load(wp_ptr + co[None, :] * swp_o + k[:, None] * swp_k,
                     mask=k_ok[:, None] & co_ok[None, :], other=0.0)
        acc = tl.dot(mid.to(x_ptr.dtype.element_ty), wp, acc, input_precision=PRECISION)
    if HAS_BP:
        acc += tl.load(bp_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    out = (out_ptr + n * son + co.to(tl.int64)[None, :] * soc
           + (od * sod + oh * soh + ow * sow)[:, None])
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & co_ok[None, :])


_SIZES_DSCONV_POINTWISE_WEIGHT = ["CM", "C_OUT", "D_IN", "H_IN", "W_IN", "H_OUT", "W_OUT",
                                  "P_OUT", "Q", "CHUNK", "SPLIT"]


@autotune(CONV["dsconv_backward_pointwise"], key=["CM", "C_OUT", "Q", "KD", "KH", "KW", "SPLIT"],
          prune=PRUNES["_dsconv_pointwise_weight_kernel"])
@triton.jit(do_not_specialize=_SIZES_DSCONV_POINTWISE_WEIGHT)
def _dsconv_pointwise_weight_kernel(
        x_ptr, wd_ptr, bd_ptr, dy_ptr, dw_part_ptr, db_part_ptr,
        CM, C_OUT, M, D_IN, H_IN, W_IN, H_OUT, W_OUT, P_OUT, Q, CHUNK, SPLIT,
        sxn, sxc, sxd, sxh, sxw, syn, syc, syd, syh, syw,
        SD, SH, SW, PD, PH, PW, DD, DH, DW,
        KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, HAS_BD: tl.constexpr,
        HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dw_part[s, o, k] = sum over q in [s*CHUNK, (s+1)*CHUNK) of dy[q, o] * mid[q, k], with
    mid = depthwise(x, wd) + bd recomputed in registers as in the forward (q = (n, od, oh, ow)
    flattened); db_part[s, o] = the sum of dy[q, o] (the programs of the first channel block)."""
    ro = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    s = tl.program_id(2)
    o_ok = ro < C_OUT
    k_ok = rk < CM
    x_chan = (rk // M).to(tl.int64) * sxc
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_M,), dtype=tl.float32)
    q_end = tl.minimum(Q, (s + 1) * CHUNK)
    for q0 in range(s * CHUNK, q_end, BLOCK_K):
        q = q0 + tl.arange(0, BLOCK_K)
        q_ok = q < q_end
        n = q // P_OUT
        p = q - n * P_OUT
        rows = p // W_OUT
        ow = p - rows * W_OUT
        od = rows // H_OUT
        oh = rows - od * H_OUT
        n = n.to(tl.int64)
        a = tl.load(dy_ptr + (n * syn + od * syd + oh * syh + ow * syw)[None, :]
                    + ro.to(tl.int64)[:, None] * syc,
                    mask=o_ok[:, None] & q_ok[None, :], other=0.0)
        mid = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        for kd in tl.static_range(KD):
            i_d = od * SD - PD + kd * DD
            ok_d = q_ok & (i_d >= 0) & (i_d < D_IN)
            for kh in tl.static_range(KH):
                ih = oh * SH - PH + kh * DH
                ok_h = ok_d & (ih >= 0) & (ih < H_IN)
                for kw in tl.static_range(KW):
                    iw = ow * SW - PW + kw * DW
                    ok = ok_h & (iw >= 0) & (iw < W_IN)
                    xv = tl.load(x_ptr + (n * sxn + i_d * sxd + ih * sxh + iw * sxw)[:, None]
                                 + x_chan[None, :], mask=ok[:, None] & k_ok[None, :], other=0.0)
                    wv = tl.load(wd_ptr + rk * (KD * KH * KW) + ((kd * KH + kh) * KW + kw),
                                 mask=k_ok, other=0.0)
                    mid += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
        if HAS_BD:
            mid += tl.load(bd_ptr + rk, mask=k_ok, other=0.0).to(tl.float32)[None, :]
        acc = tl.dot(a, mid.to(x_ptr.dtype.element_ty), acc, input_precision=PRECISION)
        if HAS_BIAS:
            acc_b += tl.sum(a.to(tl.float32), axis=1)
    part = (s.to(tl.int64) * C_OUT + ro[:, None]) * CM + rk[None, :]
    tl.store(dw_part_ptr + part, acc, mask=o_ok[:, None] & k_ok[None, :])
    if HAS_BIAS:
        if tl.program_id(1) == 0:
            tl.store(db_part_ptr + s.to(tl.int64) * C_OUT + ro, acc_b, mask=o_ok)


_SIZES_SPATIAL_FORWARD = ["C_IN", "C_MID", "C_OUT", "H_IN", "W_IN", "H_OUT", "W_OUT", "OW_PER",
                          "SEGMENTS"]


@autotune(CONV["spatial_forward"], key=["C_IN", "C_MID", "C_OUT", "H_OUT", "W_OUT", "KH", "KW",
                                         "MID_W"],
          prune=PRUNES["_spatial_forward_kernel"])
@triton.jit(do_not_specialize=_SIZES_SPATIAL_FORWARD)
def _spatial_forward_kernel(
        x_ptr, wv_ptr, bv_ptr, wh_ptr, bh_ptr, out_ptr,
        C_IN, C_MID, C_OUT, H_IN, W_IN, H_OUT, W_OUT, OW_PER, SEGMENTS,
        sxn, sxc, sxh, sxw, swv_m, swv_i, swv_h, swh_o, swh_m, swh_w, son, soc, soh, sow,
        SH, SW, PH, PW, DH, DW,
        KH: tl.constexpr, KW: tl.constexpr, MID_W: tl.constexpr, HAS_BV: tl.constexpr,
        HAS_BH: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_CM: tl.constexpr, BLOCK_CI: tl.constexpr):
    """A program: output row oh, output columns [ow0, ow0 + OW_PER), BLOCK_N output channels.

    mid's columns [ow0*SW - PW, + MID_W) are what those outputs read; a block of BLOCK_CM mid
    channels of them is computed (vertical GEMM, rows = mid columns), then each horizontal tap kw
    shifts it by kw*DW columns (``tl.gather`` along the rows, in registers) and feeds tl.dot with
    that tap's horizontal weight."""
    segment = tl.program_id(0) % SEGMENTS
    oh = tl.program_id(0) // SEGMENTS
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n = tl.program_id(2).to(tl.int64)
    n_ok = rn < C_OUT
    ow0 = segment * OW_PER
    r = tl.arange(0, MID_W)
    col = ow0 * SW - PW + r
    col_ok = (col >= 0) & (col < W_IN)
    rci = tl.arange(0, BLOCK_CI)
    acc = tl.zeros((MID_W, BLOCK_N), dtype=tl.float32)
    for cm0 in range(0, C_MID, BLOCK_CM):
        cm = cm0 + tl.arange(0, BLOCK_CM)
        cm_ok = cm < C_MID
        mid = tl.zeros((MID_W, BLOCK_CM), dtype=tl.float32)
        for kh in tl.static_range(KH):
            ih = oh * SH - PH + kh * DH
            row_ok = col_ok & (ih >= 0) & (ih < H_IN)
            a_row = x_ptr + n * sxn + ih * sxh + col * sxw
            for ci0 in range(0, C_IN, BLOCK_CI):
                ci = ci0 + rci
                ci_ok = ci < C_IN
                a = tl.load(a_row[:, None] + ci[None, :] * sxc,
                            mask=row_ok[:, None] & ci_ok[None, :], other=0.0)
                b = tl.load(wv_ptr + cm[None, :] * swv_m + ci[:, None] * swv_i + kh * swv_h,
                            mask=ci_ok[:, None] & cm_ok[None, :], other=0.0)
                mid = tl.dot(a, b, mid, input_precision=PRECISION)
        if HAS_BV:
            mid += tl.load(bv_ptr + cm, mask=cm_ok, other=0.0).to(tl.float32)[None, :]
        # the horizontal convolution's zero padding pads mid, bias included
        mid = tl.where(col_ok[:, None], mid, 0.0).to(x_ptr.dtype.element_ty)
        for kw in tl.static_range(KW):
            shift = tl.minimum(r * SW + kw * DW, MID_W - 1)
            taps = tl.gather(mid, tl.broadcast_to(shift[:, None], (MID_W, BLOCK_CM)), axis=0)
            b = tl.load(wh_ptr + rn[None, :] * swh_o + cm[:, None] * swh_m + kw * swh_w,
                        mask=cm_ok[:, None] & n_ok[None, :], other=0.0)
            acc = tl.dot(taps, b, acc, input_precision=PRECISION)
    if HAS_BH:
        acc += tl.load(bh_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    ow = ow0 + r
    ok = (r < OW_PER) & (ow < W_OUT)
    out = out_ptr + n * son + oh * soh + ow[:, None] * sow + rn[None, :].to(tl.int64) * soc
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=ok[:, None] & n_ok[None, :])


# ---------------------------------------------------------------- launchers


def _rank3(t):
    """A 2-d (N, C, H, W) tensor as the rank-3 (N, C, 1, H, W) view conv.py's kernels take."""
    return t if t.dim() == 5 else t.unsqueeze(2)


def _conv2d(x, w, b, stride, padding, dilation, out):
    """out = conv2d(x, w) + b (groups 1) by conv.py's implicit GEMM; 2-d pairs of parameters."""
    conv_forward(_rank3(x), _rank3(w), b, (1,) + tuple(stride), (0,) + tuple(padding),
                 (1,) + tuple(dilation), 1, _rank3(out))


def _conv2d_backward_input(dy, w, stride, padding, dilation, dx):
    """dx = the input gradient of _conv2d for dy."""
    conv_backward_input(_rank3(dy), _rank3(w), (1,) + tuple(stride), (0,) + tuple(padding),
                        (1,) + tuple(dilation), 1, _rank3(dx))


def _conv2d_backward_weight(x, dy, w_shape, stride, padding, dilation, want_bias):
    """(dw (w_shape), db or None): the weight and bias gradients of _conv2d for dy."""
    c_out, c_in, kh, kw = w_shape
    dw, db = conv_backward_weight(_rank3(x), _rank3(dy), (c_out, c_in, 1, kh, kw),
                                  (1,) + tuple(stride), (0,) + tuple(padding),
                                  (1,) + tuple(dilation), 1, want_bias)
    return dw.reshape(tuple(w_shape)), db


def dsconv_forward(x, wd, bd, wp, bp, stride, padding, dilation, out):
    """out = pointwise(depthwise(x, wd) + bd, wp) + bp. Shapes as in the module docstring."""
    if out.numel() == 0:
        return out
    n_img, c_in = x.shape[:2]
    cm, _, kd, kh, kw = wd.shape
    c_out = wp.shape[0]
    wd = wd.contiguous()
    p_out = out.shape[2] * out.shape[3] * out.shape[4]

    def grid(meta):
        return (triton.cdiv(p_out, meta["BLOCK_M"]), triton.cdiv(c_out, meta["BLOCK_N"]), n_img)

    _dsconv_forward_kernel[grid](
        x_ptr=x, wd_ptr=wd, bd_ptr=bd if bd is not None else wd, wp_ptr=wp,
        bp_ptr=bp if bp is not None else wd, out_ptr=out,
        CM=cm, C_OUT=c_out, M=cm // c_in, **named("D_IN H_IN W_IN", x.shape[2:]),
        **named("H_OUT W_OUT", out.shape[3:]), P_OUT=p_out,
        **named("sxn sxc sxd sxh sxw", x.stride()), **named("swp_o swp_k", wp.stride()),
        **named("son soc sod soh sow", out.stride()),
        **named("SD SH SW", stride), **named("PD PH PW", padding), **named("DD DH DW", dilation),
        KD=kd, KH=kh, KW=kw, HAS_BD=bd is not None, HAS_BP=bp is not None,
        PRECISION=dot_precision(x, CUDNN))
    return out


def dsconv_backward(x, wd, bd, wp, dy, stride, padding, dilation, dx, want_bias):
    """Gradients of dsconv_forward: fills dx (unless None) and returns (dwd, dwp, dbd, dbp), the
    biases' gradients None unless ``want_bias`` (a pair: depthwise, pointwise)."""
    import torch

    cm, _, kd, kh, kw = wd.shape
    c_out = wp.shape[0]
    wd = wd.contiguous()
    # dmid = wp^T dy: a 1x1 convolution of dy with the (C*m, C_out) transposed weight
    dmid = torch.empty((dy.shape[0], cm) + tuple(dy.shape[2:]), dtype=dy.dtype, device=dy.device)
    _conv2d(dy, wp.t()[:, :, None, None, None], None, (1, 1), (0, 0), (1, 1), dmid)
    # dwp = dy mid^T with mid recomputed from x in registers, dbp = the sums of dy
    p_out = dy.shape[2] * dy.shape[3] * dy.shape[4]
    q = dy.shape[0] * p_out
    if q == 0:
        dwp = torch.zeros((c_out, cm), dtype=x.dtype, device=x.device)
        dbp = torch.zeros(c_out, dtype=x.dtype, device=x.device) if want_bias[1] else None
    else:
        tiles = triton.cdiv(c_out, 64) * triton.cdiv(cm, 64)
        split = max(1, min(triton.cdiv(_WEIGHT_PROGRAMS, tiles), triton.cdiv(q, 4096)))
        chunk = triton.cdiv(triton.cdiv(q, split), 1024) * 1024
        split = triton.cdiv(q, chunk)
        dw_part = torch.empty((split, c_out, cm), dtype=torch.float32, device=x.device)
        db_part = torch.empty((split, c_out), dtype=torch.float32, device=x.device)

        def grid(meta):
            return (triton.cdiv(c_out, meta["BLOCK_M"]), triton.cdiv(cm, meta["BLOCK_N"]), split)

        _dsconv_pointwise_weight_kernel[grid](
            x_ptr=x, wd_ptr=wd, bd_ptr=bd if bd is not None else wd, dy_ptr=dy,
            dw_part_ptr=dw_part, db_part_ptr=db_part,
            CM=cm, C_OUT=c_out, M=cm // x.shape[1], **named("D_IN H_IN W_IN", x.shape[2:]),
            **named("H_OUT W_OUT", dy.shape[3:]), P_OUT=p_out, Q=q, CHUNK=chunk, SPLIT=split,
            **named("sxn sxc sxd sxh sxw", x.stride()), **named("syn syc syd syh syw", dy.stride()),
            **named("SD SH SW", stride), **named("PD PH PW", padding),
            **named("DD DH DW", dilation),
            KD=kd, KH=kh, KW=kw, HAS_BD=bd is not None, HAS_BIAS=bool(want_bias[1]),
            PRECISION=dot_precision(x, CUDNN))
        dwp = dw_part.sum(0).to(x.dtype)
        dbp = db_part.sum(0).to(x.dtype) if want_bias[1] else None
    if dx is not None:
        depthwise_backward_input(dmid, wd, stride, padding, dilation, dx)
    dwd, dbd = depthwise_backward_weight(x, dmid, wd.shape, stride, padding, dilation,
                                         want_bias[0])
    return dwd, dwp, dbd, dbp


def spatial_forward(x, wv, bv, wh, bh, stride, padding, dilation, out):
    """out = horizontal(vertical(x, wv) + bv, wh) + bh; 2-d tensors as in the module docstring,
    stride, padding (low side) and dilation the (vertical, horizontal) pairs."""
    if out.numel() == 0:
        return out
    n_img, c_in, h_in, w_in = x.shape
    c_mid, c_out, kh, kw = wv.shape[0], wh.shape[0], wv.shape[2], wh.shape[3]
    h_out, w_out = out.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    # mid columns per program: the whole output row when it fits 64, else a 64-wide segment
    # (wider when the horizontal kernel's reach needs it, so that a segment makes 8 outputs)
    halo = (kw - 1) * dw
    need = (w_out - 1) * sw + halo + 1
    mid_w = max(16, min(triton.next_power_of_2(need),
                        max(64, triton.next_power_of_2(halo + 8 * sw))))
    ow_per = (mid_w - 1 - halo) // sw + 1
    segments = triton.cdiv(w_out, ow_per)

    def grid(meta):
        return (segments * h_out, triton.cdiv(c_out, meta["BLOCK_N"]), n_img)

    _spatial_forward_kernel[grid](
        x_ptr=x, wv_ptr=wv, bv_ptr=bv if bv is not None else wv, wh_ptr=wh,
        bh_ptr=bh if bh is not None else wh, out_ptr=out,
        C_IN=c_in, C_MID=c_mid, C_OUT=c_out, H_IN=h_in, W_IN=w_in, H_OUT=h_out, W_OUT=w_out,
        OW_PER=ow_per, SEGMENTS=segments,
        **named("sxn sxc sxh sxw", x.stride()), **named("swv_m swv_i swv_h", wv.stride()[:3]),
        swh_o=wh.stride(0), swh_m=wh.stride(1), swh_w=wh.stride(3),
        **named("son soc soh sow", out.stride()),
        SH=sh, SW=sw, PH=ph, PW=pw, DH=dh, DW=dw, KH=kh, KW=kw, MID_W=mid_w, HAS_BV=bv is not None,
        HAS_BH=bh is not None, PRECISION=dot_precision(x, CUDNN))
    return out


def spatial_backward(x, wv, bv, wh, dy, stride, padding, dilation, dx, want_bias):
    """Gradients of spatial_forward: fills dx (unless None) and returns (dwv, dwh, dbv, dbh)."""
    import torch

    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    mid = torch.empty((x.shape[0], wv.shape[0], dy.shape[2], x.shape[3]), dtype=x.dtype,
                      device=x.device)
    _conv2d(x, wv, bv, (sh, 1), (ph, 0), (dh, 1), mid)
    dmid = torch.empty_like(mid)
    _conv2d_backward_input(dy, wh, (1, sw), (0, pw), (1, dw), dmid)
    dwh, dbh = _conv2d_backward_weight(mid, dy, wh.shape, (1, sw), (0, pw), (1, dw), want_bias[1])
    dwv, dbv = _conv2d_backward_weight(x, dmid, wv.shape, (sh, 1), (ph, 0), (dh, 1), want_bias[0])
    if dx is not None:
        _conv2d_backward_input(dmid, wv, (sh, 1), (ph, 0), (dh, 1), dx)
    return dwv, dwh, dbv, dbh
