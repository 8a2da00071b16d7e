"""Depthwise convolution kernels for the GPU (groups == C_in, any channel multiplier m).

Rank-3 canonical torch tensors, any strides (NCDHW or channels_last alike):

    x    (N, C, D, H, W)              input; 1-d and 2-d convolutions have D = H = 1 (and W for 1-d)
    w    (C*m, 1, KD, KH, KW)         output channel c*m + j reads input channel c
    out  (N, C*m, OD, OH, OW)         its shape gives the output size (asymmetric 'same' padding)

``stride``, ``padding`` (before the first element of each axis) and ``dilation`` are 3-tuples.

A depthwise convolution does KD*KH*KW multiply-adds per output element and reads each input once:
it is memory-bound, so these are direct kernels: the kernel taps are unrolled (the kernel size is
a constexpr) and the neighbouring taps' loads hit L1/L2. Products accumulate in float32 whatever
the input dtype. Two tilings of the forward and of the input gradient:

* NCDHW (``*_planes_kernel``): a program owns a [BLOCK_H, BLOCK_W] tile of one plane of one
  channel; rows and columns are separate index vectors, so bounds (and, for the input gradient,
  stride divisibility) are checked per row and per column and no pixel index is divided.
* any layout, used for channels_last (``_depthwise_forward_kernel``,
  ``_depthwise_backward_input_kernel``): a program owns [BLOCK_P pixels (flattened), BLOCK_C
  channels], channels being the contiguous axis; the configurations are pruned by layout.

* forward: out[n, co, p] = b[co] + sum_t w[co, t] * x[n, co // m, in(p, t)].
* gradient of the input (a gather, race-free): dx[n, c, q] = sum_j sum_t w[c*m + j, t] *
  dy[n, c*m + j, p] over the output pixels p whose tap t reads q (strides: where the division of
  q + padding - tap offset by the stride is exact).
* gradient of the weight (and bias): per output channel a reduction over N*OD*OH*OW, split over
  SPLIT programs; a program holds up to 16 taps as one axis of its tile, [BLOCK_T, BLOCK_P], so
  one loop iteration serves all of them (larger kernels take several programs per channel).
  The float32 partial sums (SPLIT, C*m, taps) are added up by the launcher.
"""
import triton
import triton.language as tl

from ._autotune import autotune
from ._launch import named
from .configs import CONV


# Problems with fewer elements than these, per image (per-image grids) or in all (batch-wide
# GEMMs and weight gradients), get the first configuration only: tuning them would cost more
# compile time than it can win.
SMALL_IMAGE = 1 << 16
SMALL_BATCH = 1 << 20


def _prune(*sizes, small, layout=None):
    """The prune of an autotuned kernel: channels_last tensors want wide channel tiles, NCDHW ones
    narrow ones (coalesced loads); a problem whose ``sizes`` multiply to less than ``small`` keeps
    one configuration. Triton hands the prune the positional arguments only, so the launchers pass
    these positionally."""
    def prune(configs, named_args):
        keep = configs
        if layout is not None:
            wide = bool(named_args[layout])
            keep = [c for c in configs if (c.kwargs["BLOCK_C"] >= 16) == wide] or configs
        size = 1
        for name in sizes:
            size *= named_args[name]
        return keep[:1] if size < small else keep

    return prune


# Each autotuned kernel's prune, by kernel name (the tests check them against launch arguments).
PRUNES = {
    "_depthwise_forward_kernel": _prune("C_OUT", "P_OUT", small=SMALL_IMAGE,
                                        layout="CHANNELS_LAST"),
    "_depthwise_backward_input_kernel": _prune("C_IN", "P_IN", small=SMALL_IMAGE,
                                               layout="CHANNELS_LAST"),
    "_depthwise_backward_weight_kernel": _prune("C_OUT", "Q", small=SMALL_BATCH),
    "_depthwise_forward_planes_kernel": _prune("N_CHANNELS", "H_OUT", "W_OUT",
                                               small=SMALL_IMAGE),
    "_depthwise_backward_input_planes_kernel": _prune("N_CHANNELS", "H_IN", "W_IN",
                                                      small=SMALL_IMAGE),
}

# Size arguments are not specialised (Triton would compile a kernel for every combination of
# sizes divisible by 16 or equal to 1): each kernel's _SIZES_ list names them. Strides keep their
# specialisation, since a unit stride is what makes loads contiguous.
_SIZES_DEPTHWISE_FORWARD = ["C_OUT", "D_IN", "H_IN", "W_IN", "H_OUT", "W_OUT", "P_OUT"]


@autotune(CONV["depthwise_forward"], key=["C_OUT", "P_OUT", "KD", "KH", "KW", "CHANNELS_LAST"],
          prune=PRUNES["_depthwise_forward_kernel"])
@triton.jit(do_not_specialize=_SIZES_DEPTHWISE_FORWARD)
def _depthwise_forward_kernel(
        x_ptr, w_ptr, b_ptr, out_ptr,
        C_OUT, M, D_IN, H_IN, W_IN, H_OUT, W_OUT, P_OUT,
        sxn, sxc, sxd, sxh, sxw, son, soc, sod, soh, sow,
        SD, SH, SW, PD, PH, PW, DD, DH, DW,
        KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr,
        CHANNELS_LAST: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    co = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < P_OUT
    c_ok = co < C_OUT
    rows = p // W_OUT
    ow = p - rows * W_OUT
    od = rows // H_OUT
    oh = rows - od * H_OUT
    x_chan = x_ptr + n * sxn + (co // M).to(tl.int64) * sxc
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for kd in tl.static_range(KD):
        i_d = od * SD - PD + kd * DD
        ok_d = p_ok & (i_d >= 0) & (i_d < D_IN)
        for kh in tl.static_range(KH):
            ih = oh * SH - PH + kh * DH
            ok_h = ok_d & (ih >= 0) & (ih < H_IN)
            for kw in tl.static_range(KW):
                iw = ow * SW - PW + kw * DW
                ok = ok_h & (iw >= 0) & (iw < W_IN)
                offs = i_d * sxd + ih * sxh + iw * sxw
                xv = tl.load(x_chan[None, :] + offs[:, None], mask=ok[:, None] & c_ok[None, :],
                             other=0.0)
                wv = tl.load(w_ptr + co * (KD * KH * KW) + ((kd * KH + kh) * KW + kw),
                             mask=c_ok, other=0.0)
                acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    out = (out_ptr + n * son + co.to(tl.int64)[None, :] * soc
           + (od * sod + oh * soh + ow * sow)[:, None])
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


_SIZES_DEPTHWISE_FORWARD_PLANES = ["D_IN", "H_IN", "W_IN", "H_OUT", "W_OUT", "N_CHANNELS"]


@autotune(CONV["depthwise_forward_planes"], key=["H_OUT", "W_OUT", "M", "KD", "KH", "KW"],
          prune=PRUNES["_depthwise_forward_planes_kernel"])
@triton.jit(do_not_specialize=_SIZES_DEPTHWISE_FORWARD_PLANES)
def _depthwise_forward_planes_kernel(
        x_ptr, w_ptr, b_ptr, out_ptr,
        M, D_IN, H_IN, W_IN, H_OUT, W_OUT, N_CHANNELS,
        sxn, sxc, sxd, sxh, sxw, son, soc, sod, soh, sow,
        SD, SH, SW, PD, PH, PW, DD, DH, DW,
        KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """The forward for NCDHW tensors: a program computes a [BLOCK_H, BLOCK_W] tile of one output
    plane (one image, channel and output depth). Rows and columns are separate index vectors, so
    the bounds checks are per row and per column and no per-pixel division is needed."""
    tiles_w = tl.cdiv(W_OUT, BLOCK_W)
    tiles_h = tl.cdiv(H_OUT, BLOCK_H)
    tile = tl.program_id(0)
    tw = tile % tiles_w
    th = (tile // tiles_w) % tiles_h
    od = tile // (tiles_w * tiles_h)
    co = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    oh = th * BLOCK_H + tl.arange(0, BLOCK_H)
    ow = tw * BLOCK_W + tl.arange(0, BLOCK_W)
    x_chan = x_ptr + n * sxn + (co // M).to(tl.int64) * sxc
    acc = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for kd in tl.static_range(KD):
        i_d = od * SD - PD + kd * DD
        ok_d = (i_d >= 0) & (i_d < D_IN)
        for kh in tl.static_range(KH):
            ih = oh * SH - PH + kh * DH
            ok_h = ok_d & (ih >= 0) & (ih < H_IN)
            rows = x_chan + i_d * sxd + ih * sxh
            for kw in tl.static_range(KW):
                iw = ow * SW - PW + kw * DW
                ok_w = (iw >= 0) & (iw < W_IN)
                xv = tl.load(rows[:, None] + (iw * sxw)[None, :],
                             mask=ok_h[:, None] & ok_w[None, :], other=0.0)
                wv = tl.load(w_ptr + co * (KD * KH * KW) + ((kd * KH + kh) * KW + kw))
                acc += xv.to(tl.float32) * wv.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + co).to(tl.float32)
    out = (out_ptr + n * son + co.to(tl.int64) * soc + od * sod + (oh * soh)[:, None]
           + (ow * sow)[None, :])
    tl.store(out, acc.to(out_ptr.dtype.element_ty),
             mask=(oh < H_OUT)[:, None] & (ow < W_OUT)[None, :])



_SIZES_DEPTHWISE_BACKWARD_INPUT = ["C_IN", "D_OUT", "H_OUT", "W_OUT", "H_IN", "W_IN", "P_IN"]


@autotune(CONV["depthwise_backward_input"],
          key=["C_IN", "P_IN", "M", "KD", "KH", "KW", "CHANNELS_LAST"],
          prune=PRUNES["_depthwise_backward_input_kernel"])
@triton.jit(do_not_specialize=_SIZES_DEPTHWISE_BACKWARD_INPUT)
def _depthwise_backward_input_kernel(
        dy_ptr, w_ptr, dx_ptr,
        C_IN, M, D_OUT, H_OUT, W_OUT, H_IN, W_IN, P_IN,
        syn, syc, syd, syh, syw, sxn, sxc, sxd, sxh, sxw,
        SD, SH, SW, PD, PH, PW, DD, DH, DW,
        KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        CHANNELS_LAST: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    q = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    q_ok = q < P_IN
    c_ok = c < C_IN
    rows = q // W_IN
    iw = q - rows * W_IN
    i_d = rows // H_IN
    ih = rows - i_d * H_IN
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for j in range(M):
        co = c * M + j
        dy_chan = dy_ptr + n * syn + co.to(tl.int64) * syc
        for kd in tl.static_range(KD):
            # output depth od reads i_d through tap kd when od*SD = i_d + PD - kd*DD exactly
            num_d = i_d + PD - kd * DD
            od = num_d // SD
            ok_d = q_ok & (num_d >= 0) & (od * SD == num_d) & (od < D_OUT)
            for kh in tl.static_range(KH):
                num_h = ih + PH - kh * DH
                oh = num_h // SH
                ok_h = ok_d & (num_h >= 0) & (oh * SH == num_h) & (oh < H_OUT)
                for kw in tl.static_range(KW):
                    num_w = iw + PW - kw * DW
                    ow = num_w // SW
                    ok = ok_h & (num_w >= 0) & (ow * SW == num_w) & (ow < W_OUT)
                    offs = od * syd + oh * syh + ow * syw
                    g = tl.load(dy_chan[None, :] + offs[:, None],
                                mask=ok[:, None] & c_ok[None, :], other=0.0)
                    wv = tl.load(w_ptr + co * (KD * KH * KW) + ((kd * KH + kh) * KW + kw),
                                 mask=c_ok, other=0.0)
                    acc += g.to(tl.float32) * wv.to(tl.float32)[None, :]
    dx = (dx_ptr + n * sxn + c.to(tl.int64)[None, :] * sxc
          + (i_d * sxd + ih * sxh + iw * sxw)[:, None])
    tl.store(dx, acc.to(dx_ptr.dtype.element_ty), mask=q_ok[:, None] & c_ok[None, :])


_SIZES_DEPTHWISE_BACKWARD_INPUT_PLANES = ["D_OUT", "H_OUT", "W_OUT", "H_IN", "W_IN",
                                          "N_CHANNELS"]


@autotune(CONV["depthwise_backward_input_planes"], key=["H_IN", "W_IN", "M", "KD", "KH", "KW"],
          prune=PRUNES["_depthwise_backward_input_planes_kernel"])
@triton.jit(do_not_specialize=_SIZES_DEPTHWISE_BACKWARD_INPUT_PLANES)
def _depthwise_backward_input_planes_kernel(
        dy_ptr, w_ptr, dx_ptr,
        M, D_OUT, H_OUT, W_OUT, H_IN, W_IN, N_CHANNELS,
        syn, syc, syd, syh, syw, sxn, sxc, sxd, sxh, sxw,
        SD, SH, SW, PD, PH, PW, DD, DH, DW,
        KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """The input gradient for NCDHW tensors, a [BLOCK_H, BLOCK_W] tile of one input plane per
    program; the gather's divisibility and bounds checks are per row and per column."""
    tiles_w = tl.cdiv(W_IN, BLOCK_W)
    tiles_h = tl.cdiv(H_IN, BLOCK_H)
    tile = tl.program_id(0)
    tw = tile % tiles_w
    th = (tile // tiles_w) % tiles_h
    i_d = tile // (tiles_w * tiles_h)
    c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    ih = th * BLOCK_H + tl.arange(0, BLOCK_H)
    iw = tw * BLOCK_W + tl.arange(0, BLOCK_W)
    acc = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for j in range(M):
        co = c * M + j
        dy_chan = dy_ptr + n * syn + co.to(tl.int64) * syc
        for kd in tl.static_range(KD):
            num_d = i_d + PD - kd * DD
            od = num_d // SD
            ok_d = (num_d >= 0) & (od * SD == num_d) & (od < D_OUT)
            for kh in tl.static_range(KH):
                num_h = ih + PH - kh * DH
                oh = num_h // SH
                ok_h = ok_d & (num_h >= 0) & (oh * SH == num_h) & (oh < H_OUT)
                rows = dy_chan + od * syd + oh * syh
                for kw in tl.static_range(KW):
                    num_w = iw + PW - kw * DW
                    ow = num_w // SW
                    ok_w = (num_w >= 0) & (ow * SW == num_w) & (ow < W_OUT)
                    g = tl.load(rows[:, None] + (ow * syw)[None, :],
                                mask=ok_h[:, None] & ok_w[None, :], other=0.0)
                    wv = tl.load(w_ptr + co * (KD * KH * KW) + ((kd * KH + kh) * KW + kw))
                    acc += g.to(tl.float32) * wv.to(tl.float32)
    dx = (dx_ptr + n * sxn + c.to(tl.int64) * sxc + i_d * sxd + (ih * sxh)[:, None]
          + (iw * sxw)[None, :])
    tl.store(dx, acc.to(dx_ptr.dtype.element_ty),
             mask=(ih < H_IN)[:, None] & (iw < W_IN)[None, :])



_SIZES_DEPTHWISE_BACKWARD_WEIGHT = ["C_OUT", "D_IN", "H_IN", "W_IN", "H_OUT", "W_OUT", "P_OUT",
                                    "Q", "CHUNK", "SPLIT"]


@autotune(CONV["depthwise_backward_weight"], key=["C_OUT", "Q", "KD", "KH", "KW", "SPLIT"],
          prune=PRUNES["_depthwise_backward_weight_kernel"])
@triton.jit(do_not_specialize=_SIZES_DEPTHWISE_BACKWARD_WEIGHT)
def _depthwise_backward_weight_kernel(
        x_ptr, dy_ptr, dw_part_ptr, db_part_ptr,
        C_OUT, M, D_IN, H_IN, W_IN, H_OUT, W_OUT, P_OUT, Q, CHUNK, SPLIT,
        sxn, sxc, sxd, sxh, sxw, syn, syc, syd, syh, syw,
        SD, SH, SW, PD, PH, PW, DD, DH, DW,
        KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, BLOCK_T: tl.constexpr,
        HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr):
    """dw_part[s, co, t] = sum over q in [s*CHUNK, (s+1)*CHUNK) of dy[q, co] * x[q through tap t];
    q runs over (n, od, oh, ow) flattened (Q = N*P_OUT); db_part[s, co] = the sum of dy[q, co]."""
    co = tl.program_id(0)
    s = tl.program_id(1)
    c = co // M
    t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < KD * KH * KW
    kd = t // (KH * KW)
    kh = (t // KW) % KH
    kw = t % KW
    acc = tl.zeros((BLOCK_T, BLOCK_P), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_P,), dtype=tl.float32)
    q_end = tl.minimum(Q, (s + 1) * CHUNK)
    for q0 in range(s * CHUNK, q_end, BLOCK_P):
        q = q0 + tl.arange(0, BLOCK_P)
        q_ok = q < q_end
        n = q // P_OUT
        p = q - n * P_OUT
        rows = p // W_OUT
        ow = p - rows * W_OUT
        od = rows // H_OUT
        oh = rows - od * H_OUT
        n = n.to(tl.int64)
        g = tl.load(dy_ptr + n * syn + co.to(tl.int64) * syc + od * syd + oh * syh + ow * syw,
                    mask=q_ok, other=0.0).to(tl.float32)
        i_d = od[None, :] * SD - PD + kd[:, None] * DD
        ih = oh[None, :] * SH - PH + kh[:, None] * DH
        iw = ow[None, :] * SW - PW + kw[:, None] * DW
        ok = (q_ok[None, :] & t_ok[:, None] & (i_d >= 0) & (i_d < D_IN) & (ih >= 0)
              & (ih < H_IN) & (iw >= 0) & (iw < W_IN))
        xv = tl.load(x_ptr + n[None, :] * sxn + c.to(tl.int64) * sxc + i_d * sxd + ih * sxh
                     + iw * sxw, mask=ok, other=0.0)
        acc += xv.to(tl.float32) * g[None, :]
        acc_b += g
    part = s.to(tl.int64) * C_OUT + co
    tl.store(dw_part_ptr + part * (KD * KH * KW) + t, tl.sum(acc, axis=1), mask=t_ok)
    if HAS_BIAS:
        if tl.program_id(2) == 0:
            tl.store(db_part_ptr + part, tl.sum(acc_b, axis=0))


def _is_channels_last(t):
    """The channel axis is the innermost (stride 1) with more than one channel."""
    return t.shape[1] > 1 and t.stride(1) == 1 and t.stride(4) != 1


def depthwise_forward(x, w, b, stride, padding, dilation, out):
    """out = depthwise conv(x, w) + b (b (C*m,) or None). Shapes: module docstring."""
    if out.numel() == 0:
        return out
    n_img, c_in = x.shape[:2]
    c_out, _, kd, kh, kw = w.shape
    w = w.contiguous()
    b = b.contiguous() if b is not None else None
    if not _is_channels_last(out):
        h_out, w_out = out.shape[3:]

        def planes(meta):
            tiles_h = triton.cdiv(h_out, meta["BLOCK_H"])
            tiles_w = triton.cdiv(w_out, meta["BLOCK_W"])
            return (out.shape[2] * tiles_h * tiles_w, c_out, n_img)

        _depthwise_forward_planes_kernel[planes](
            x_ptr=x, w_ptr=w, b_ptr=b if b is not None else w, out_ptr=out,
            M=c_out // c_in, **named("D_IN H_IN W_IN", x.shape[2:]), H_OUT=h_out, W_OUT=w_out,
            N_CHANNELS=c_out,
            **named("sxn sxc sxd sxh sxw", x.stride()), **named("son soc sod soh sow", out.stride()),
            **named("SD SH SW", stride), **named("PD PH PW", padding),
            **named("DD DH DW", dilation),
            KD=kd, KH=kh, KW=kw, HAS_BIAS=b is not None)
        return out
    p_out = out.shape[2] * out.shape[3] * out.shape[4]

    def grid(meta):
        return (triton.cdiv(p_out, meta["BLOCK_P"]), triton.cdiv(c_out, meta["BLOCK_C"]), n_img)

    _depthwise_forward_kernel[grid](
        x_ptr=x, w_ptr=w, b_ptr=b if b is not None else w, out_ptr=out,
        C_OUT=c_out, M=c_out // c_in, **named("D_IN H_IN W_IN", x.shape[2:]),
        **named("H_OUT W_OUT", out.shape[3:]), P_OUT=p_out,
        **named("sxn sxc sxd sxh sxw", x.stride()), **named("son soc sod soh sow", out.stride()),
        **named("SD SH SW", stride), **named("PD PH PW", padding), **named("DD DH DW", dilation),
        KD=kd, KH=kh, KW=kw, HAS_BIAS=b is not None, CHANNELS_LAST=_is_channels_last(out))
    return out


def depthwise_backward_input(dy, w, stride, padding, dilation, dx):
    """dx = the gradient of depthwise conv(x, w) w.r.t. x, given dy, its output's gradient."""
    if dx.numel() == 0:
        return dx
    n_img, c_in = dx.shape[:2]
    c_out, _, kd, kh, kw = w.shape
    w = w.contiguous()
    if not _is_channels_last(dx):
        h_in, w_in = dx.shape[3:]

        def planes(meta):
            tiles_h = triton.cdiv(h_in, meta["BLOCK_H"])
            tiles_w = triton.cdiv(w_in, meta["BLOCK_W"])
            return (dx.shape[2] * tiles_h * tiles_w, c_in, n_img)

        _depthwise_backward_input_planes_kernel[planes](
            dy_ptr=dy, w_ptr=w, dx_ptr=dx,
            M=c_out // c_in, **named("D_OUT H_OUT W_OUT", dy.shape[2:]), H_IN=h_in, W_IN=w_in,
            N_CHANNELS=c_in,
            **named("syn syc syd syh syw", dy.stride()), **named("sxn sxc sxd sxh sxw", dx.stride()),
            **named("SD SH SW", stride), **named("PD PH PW", padding),
            **named("DD DH DW", dilation),
            KD=kd, KH=kh, KW=kw)
        return dx
    p_in = dx.shape[2] * dx.shape[3] * dx.shape[4]

    def grid(meta):
        return (triton.cdiv(p_in, meta["BLOCK_P"]), triton.cdiv(c_in, meta["BLOCK_C"]), n_img)

    _depthwise_backward_input_kernel[grid](
        dy_ptr=dy, w_ptr=w, dx_ptr=dx,
        C_IN=c_in, M=c_out // c_in, **named("D_OUT H_OUT W_OUT", dy.shape[2:]),
        **named("H_IN W_IN", dx.shape[3:]), P_IN=p_in,
        **named("syn syc syd syh syw", dy.stride()), **named("sxn sxc sxd sxh sxw", dx.stride()),
        **named("SD SH SW", stride), **named("PD PH PW", padding), **named("DD DH DW", dilation),
        KD=kd, KH=kh, KW=kw, CHANNELS_LAST=_is_channels_last(dx))
    return dx


# Programs the weight gradient aims for: enough to fill a large GPU several times over.
_WEIGHT_PROGRAMS = 1024


def depthwise_backward_weight(x, dy, w_shape, stride, padding, dilation, want_bias):
    """(dw, db): gradients of depthwise conv(x, w) + bias with respect to w (shape w_shape) and
    bias ((C*m,), or None when not wanted)."""
    import torch

    c_out = w_shape[0]
    kd, kh, kw = w_shape[2:]
    kvol = kd * kh * kw
    p_out = dy.shape[2] * dy.shape[3] * dy.shape[4]
    q = dy.shape[0] * p_out
    if q == 0 or x.numel() == 0:
        dw = torch.zeros(tuple(w_shape), dtype=x.dtype, device=x.device)
        return dw, (torch.zeros(c_out, dtype=x.dtype, device=x.device) if want_bias else None)
    # Each program reduces CHUNK consecutive (image, pixel) positions; CHUNK is a multiple of
    # every configuration's BLOCK_P so that the programs' ranges tile Q exactly.
    split = max(1, min(triton.cdiv(_WEIGHT_PROGRAMS, c_out), triton.cdiv(q, 4096)))
    chunk = triton.cdiv(triton.cdiv(q, split), 1024) * 1024
    split = triton.cdiv(q, chunk)
    dw_part = torch.empty((split, c_out, kvol), dtype=torch.float32, device=x.device)
    db_part = torch.empty((split, c_out), dtype=torch.float32, device=x.device)
    block_t = min(triton.next_power_of_2(kvol), 16)
    _depthwise_backward_weight_kernel[(c_out, split, triton.cdiv(kvol, block_t))](
        x_ptr=x, dy_ptr=dy, dw_part_ptr=dw_part, db_part_ptr=db_part,
        C_OUT=c_out, M=c_out // x.shape[1], **named("D_IN H_IN W_IN", x.shape[2:]),
        **named("H_OUT W_OUT", dy.shape[3:]), P_OUT=p_out, Q=q, CHUNK=chunk, SPLIT=split,
        **named("sxn sxc sxd sxh sxw", x.stride()), **named("syn syc syd syh syw", dy.stride()),
        **named("SD SH SW", stride), **named("PD PH PW", padding), **named("DD DH DW", dilation),
        KD=kd, KH=kh, KW=kw, BLOCK_T=block_t, HAS_BIAS=bool(want_bias))
    dw = dw_part.sum(0).to(x.dtype).reshape(tuple(w_shape))
    return dw, (db_part.sum(0).to(x.dtype) if want_bias else None)
