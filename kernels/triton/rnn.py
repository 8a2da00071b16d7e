"""LSTM and GRU kernels for the GPU (Triton): whole layers (every direction, every time step), their
BPTT, and fused cells. The same layer layout as ``kernels/numba/rnn.py`` (a packed sequence):

    x            (N, I)          rows of every step, step after step; N = sum(batch_sizes)
    batch_sizes  (T,)            rows of step t, non-increasing (a padded batch: all equal to B)
    w_ih         (D, G*H, I)     D directions, G gates (LSTM i, f, g, o; GRU r, z, n), torch's order
    w_hh         (D, G*H, P)     P = proj_size (LSTM) or H;   w_hr (D, P, H)
    h0 (D, B, P), c0 (D, B, H);  y (N, D*P): direction d writes columns [d*P, (d+1)*P)
    h_n, c_n     like h0, c0     the state of each row after its own last step

Workspaces differ from the CPU's (they are the backend's business): float32, row-major by packed
row then direction, so both directions' input projections are one GEMM:

    gx     (N, D, G*H)   x @ w_ih^T plus the biases that add to it (all of LSTM's; GRU's b_hn stays
                          inside r * (W_hn h + b_hn))
    gates  (N, D, G*H)   activated gates (saved for the backward)
    saved  (N, D, S)     LSTM: cell state c (S = H), then o * tanh(c) (S = 2H with a projection);
                          GRU: W_hn h + b_hn (S = H)

**Forward**: one GEMM ``matmul_kernel`` for gx, then one launch runs the whole time loop of every
direction: program (d, batch tile) owns BLOCK_B rows of the batch and *all* hidden units. Rows of a
batch are independent, so programs never wait for each other (no grid barrier, which could not run
under the interpreter either). Per step, for each block of hidden units, the recurrent product of
all G gates accumulates in float32 (W_hh streamed from L2, read once per step per program), then
the gate arithmetic is fused in registers. h_{t-1} is read back from y (the previous step's rows)
or h0, c_{t-1} from ``saved`` or c0: each value has a single writer, so the kernel is idempotent
(the autotuner may run it repeatedly) and needs only a CTA barrier between steps. With a
projection the block loop writes o * tanh(c) first, then a second loop multiplies it by W_hr.

**Backward** (``rnn_backward.py``) mirrors it, t = last..first in each direction's order: the gradient reaching h_t and
c_t is carried between steps in float32 ping-pong buffers (D, B, .), the gate pre-activation
gradients (float32, (N, D, G*H)) are written for every step, and after the loop the weight
gradients are a few GEMMs over all steps at once (dW_ih = dg^T x, dW_hh = dg^T h_prev, dx = dg W_ih,
dW_hr = dh^T (o tanh c)), bias gradients column sums: deterministic, no atomics.

**Weights on chip**: when H and P are at most ``RESIDENT_UNITS`` (64), W_hh fits one tile per gate;
the forward then loads it once, before the time loop, and keeps it in registers
(``*_forward_resident``: the same kernels with one-tile configurations). Larger W_hh (e.g. 512 KiB
for a float16 LSTM of H = 256) cannot stay in one SM and is streamed from L2 at every step.

**Cells**: ``cell_forward_kernel`` fuses both products and the gates of one step: program (batch
tile, unit block), no time loop. Its backward is the layer backward with T = 1.

Small problems (``_TUNE_LOOP``, ``_TUNE_GEMM``) launch the first configuration untuned.

float16 / bfloat16 multiply on tensor cores and keep the cell state, gates, accumulators and
gradients in float32; h is an output (y) in the data type and the recurrent product reads it back
from there, in the type the tensor cores take anyway. float32 uses TF32 when the launcher is told
to (``precision``, from precision.dot_precision in dlkern.ops.rnn).
"""
import torch
import triton
import triton.language as tl

from ._autotune import autotune
from .configs import RNN


def _prune_tiles(configs, named_args):
    """Drop configurations whose batch tile is larger than the batch needs (the first, smallest,
    always stays)."""
    batch = max(16, triton.next_power_of_2(int(named_args["B"])))
    kept = [c for c in configs if c.kwargs["BLOCK_B"] <= batch]
    return kept or configs[:1]


# Problems below these sizes run the first configuration untuned: tuning compiles every
# configuration (about a second each) and times even a lone one, which small problems never repay.
_TUNE_LOOP = 1 << 20    # B * H * P of a time loop
_TUNE_GEMM = 1 << 26    # M * N * K of a product


def _launch(kernel, grid, tune, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)`` through its autotuner, or with its first configuration
    when ``tune`` is false."""
    if tune:
        return kernel[grid](*args, **kwargs)
    cfg = kernel.configs[0]
    grid = grid(cfg.kwargs) if callable(grid) else grid
    return kernel.fn[grid](*args, **kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                           **cfg.kwargs)


# --------------------------------------------------------------------------------------------- #
# Building blocks                                                                                #
# --------------------------------------------------------------------------------------------- #

@triton.jit
def _tanh(x):
    # exp overflows to inf for very negative 2x: sigmoid gives 0 and tanh -1, never NaN.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _step(t, T, batch_sizes, offsets, B, PACKED: tl.constexpr):
    """(rows, first packed row) of step t; 0 rows when t is outside [0, T)."""
    inside = (t >= 0) & (t < T)
    tc = tl.minimum(tl.maximum(t, 0), T - 1)
    if PACKED:
        n = tl.load(batch_sizes + tc)
        off = tl.load(offsets + tc)
    else:
        n = B
        off = tc * B
    return tl.where(inside, n, 0), off


@triton.jit
def _load_state(prev, prev_stride, prev_col, init, init_row, init_stride, rows, row_p, has_prev,
                fresh, cols, cmask):
    """The state before this step at (rows, cols): the previous step's row ``row_p`` of ``prev``
    (written by this program: read through L2, ``.cg``) where the row has one, else its initial
    state ``init[init_row + rows]``; in ``prev``'s dtype."""
    a = tl.load(prev + row_p[:, None] * prev_stride + prev_col + cols[None, :],
                mask=has_prev[:, None] & cmask[None, :], other=0.0, cache_modifier=".cg")
    b = tl.load(init + (init_row + rows)[:, None] * init_stride + cols[None, :],
                mask=fresh[:, None] & cmask[None, :], other=0.0)
    return tl.where(has_prev[:, None], a, b.to(a.dtype))


@triton.jit
def _load_carry(carry, dfinal, idx, has_next, first, mask):
    """A gradient carried from the step after this one, or the final state's gradient (float32)."""
    a = tl.load(carry + idx, mask=has_next[:, None] & mask, other=0.0, cache_modifier=".cg")
    b = tl.load(dfinal + idx, mask=first[:, None] & mask, other=0.0)
    return tl.where(has_next[:, None], a, b.to(tl.float32))


# --------------------------------------------------------------------------------------------- #
# GEMM and column sums                                                                           #
# --------------------------------------------------------------------------------------------- #

@autotune(RNN["matmul"], key=["M", "N", "K"])
@triton.jit
def matmul_kernel(a, b, c, bias, M, N, K,
                  stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn,
                  stride_cb, stride_cm, stride_cn, stride_biasb,
                  HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr):
    """c[z] = a[z] @ b[z] (+ bias[z] per column) for z = program_id(1); any strides. A tiles are
    cast to B's dtype before the product (float32 workspaces times data-typed operands), the
    accumulator is float32."""
    pid = tl.program_id(0)
    z = tl.program_id(1)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    # Groups of GROUP_M row tiles walk the columns together: their B tiles stay in L2.
    width = GROUP_M * grid_n
    first_m = (pid // width) * GROUP_M
    group_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_m
    pid_n = (pid % width) // group_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = (a + z * stride_ab + offs_m[:, None].to(tl.int64) * stride_am
              + offs_k[None, :] * stride_ak)
    b_ptrs = (b + z * stride_bb + offs_k[:, None].to(tl.int64) * stride_bk
              + offs_n[None, :] * stride_bn)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kmask = (k0 + offs_k) < K
        a_t = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & kmask[None, :], other=0.0)
        b_t = tl.load(b_ptrs, mask=kmask[:, None] & (offs_n[None, :] < N), other=0.0)
        acc = tl.dot(a_t.to(b_t.dtype), b_t, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if HAS_BIAS:
        acc += tl.load(bias + z * stride_biasb + offs_n, mask=offs_n < N, other=0.0)[None, :]
    c_ptrs = (c + z * stride_cb + offs_m[:, None].to(tl.int64) * stride_cm
              + offs_n[None, :] * stride_cn)
    tl.store(c_ptrs, acc.to(c.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def column_sums_kernel(g, out, R, C, stride_gz, stride_gr, stride_oz,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[z, j] = sum over r of g[z*stride_gz + r*stride_gr + j] (float32 sums, fixed order)."""
    z = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        acc += tl.load(g + z * stride_gz + r[:, None].to(tl.int64) * stride_gr + cols[None, :],
                       mask=(r[:, None] < R) & (cols[None, :] < C), other=0.0).to(tl.float32)
    tl.store(out + z * stride_oz + cols, tl.sum(acc, axis=0).to(out.dtype.element_ty),
             mask=cols < C)


# --------------------------------------------------------------------------------------------- #
# Forward time loops                                                                             #
# --------------------------------------------------------------------------------------------- #

@autotune(RNN["lstm_forward"], key=["B", "H", "P"], prune=_prune_tiles)
@triton.jit
def lstm_forward_kernel(gx, w_hh, w_hr, h0, c0, batch_sizes, offsets, y, h_n, c_n, gates, saved,
                        T, B, H, P, D,
                        HAS_PROJ: tl.constexpr, PACKED: tl.constexpr, PRECISION: tl.constexpr,
                        RESIDENT: tl.constexpr,
                        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """Every step of BLOCK_B batch rows of direction d = program_id(0); shapes in the docstring.
    RESIDENT (H <= BLOCK_H, P <= BLOCK_K): W_hh is loaded once, before the time loop, and stays
    on chip; otherwise it is streamed from L2 tile by tile at every step."""
    d = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    G = 4 * H
    if HAS_PROJ:
        S = 2 * H
    else:
        S = H
    w_d = w_hh + d * G * P
    if RESIDENT:
        r_ks = tl.arange(0, BLOCK_K)
        r_ptr = w_d + tl.arange(0, BLOCK_H)[None, :] * P + r_ks[:, None]
        r_mask = (r_ks < P)[:, None] & (tl.arange(0, BLOCK_H) < H)[None, :]
        w_i = tl.load(r_ptr, mask=r_mask, other=0.0)
        w_f = tl.load(r_ptr + H * P, mask=r_mask, other=0.0)
        w_g = tl.load(r_ptr + 2 * H * P, mask=r_mask, other=0.0)
        w_o = tl.load(r_ptr + 3 * H * P, mask=r_mask, other=0.0)
    for s in range(T):
        t = s + d * (T - 1 - 2 * s)
        n_t, off_t = _step(t, T, batch_sizes, offsets, B, PACKED)
        n_p, off_p = _step(t - 1 + 2 * d, T, batch_sizes, offsets, B, PACKED)
        active = rows < n_t
        has_prev = active & (rows < n_p)
        fresh = active & (rows >= n_p)
        row_t = (off_t + rows).to(tl.int64)
        row_p = (off_p + rows).to(tl.int64)
        for j0 in range(0, H, BLOCK_H):
            units = j0 + tl.arange(0, BLOCK_H)
            umask = units < H
            acc_i = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            acc_f = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            acc_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            acc_o = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            if RESIDENT:  # one unit block, one K tile
                hk = _load_state(y, D * P, d * P, h0, d * B, P, rows, row_p, has_prev, fresh,
                                 r_ks, r_ks < P)
                acc_i = tl.dot(hk, w_i, acc_i, input_precision=PRECISION)
                acc_f = tl.dot(hk, w_f, acc_f, input_precision=PRECISION)
                acc_g = tl.dot(hk, w_g, acc_g, input_precision=PRECISION)
                acc_o = tl.dot(hk, w_o, acc_o, input_precision=PRECISION)
            else:
                for k0 in range(0, P, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    kmask = ks < P
                    hk = _load_state(y, D * P, d * P, h0, d * B, P, rows, row_p, has_prev,
                                     fresh, ks, kmask)
                    w_ptr = w_d + units[None, :] * P + ks[:, None]
                    wmask = kmask[:, None] & umask[None, :]
                    acc_i = tl.dot(hk, tl.load(w_ptr, mask=wmask, other=0.0), acc_i,
                                   input_precision=PRECISION)
                    acc_f = tl.dot(hk, tl.load(w_ptr + H * P, mask=wmask, other=0.0), acc_f,
                                   input_precision=PRECISION)
                    acc_g = tl.dot(hk, tl.load(w_ptr + 2 * H * P, mask=wmask, other=0.0), acc_g,
                                   input_precision=PRECISION)
                    acc_o = tl.dot(hk, tl.load(w_ptr + 3 * H * P, mask=wmask, other=0.0), acc_o,
                                   input_precision=PRECISION)
            m2 = active[:, None] & umask[None, :]
            g_idx = row_t[:, None] * (D * G) + d * G + units[None, :]
            i = tl.sigmoid(acc_i + tl.load(gx + g_idx, mask=m2, other=0.0))
            f = tl.sigmoid(acc_f + tl.load(gx + g_idx + H, mask=m2, other=0.0))
            g = _tanh(acc_g + tl.load(gx + g_idx + 2 * H, mask=m2, other=0.0))
            o = tl.sigmoid(acc_o + tl.load(gx + g_idx + 3 * H, mask=m2, other=0.0))
            tl.store(gates + g_idx, i, mask=m2)
            tl.store(gates + g_idx + H, f, mask=m2)
            tl.store(gates + g_idx + 2 * H, g, mask=m2)
            tl.store(gates + g_idx + 3 * H, o, mask=m2)
            c_prev = _load_state(saved, D * S, d * S, c0, d * B, H, rows, row_p, has_prev, fresh,
                                 units, umask)
            c = f * c_prev + i * g
            s_idx = row_t[:, None] * (D * S) + d * S + units[None, :]
            tl.store(saved + s_idx, c, mask=m2)
            tl.store(c_n + (d * B + rows)[:, None] * H + units[None, :],
                     c.to(c_n.dtype.element_ty), mask=m2)
            h = o * _tanh(c)
            if HAS_PROJ:
                tl.store(saved + s_idx + H, h, mask=m2)
            else:
                tl.store(y + row_t[:, None] * (D * P) + d * P + units[None, :],
                         h.to(y.dtype.element_ty), mask=m2)
                tl.store(h_n + (d * B + rows)[:, None] * P + units[None, :],
                         h.to(h_n.dtype.element_ty), mask=m2)
        if HAS_PROJ:
            tl.debug_barrier()  # every unit's o * tanh(c) is written before the projection reads
            for p0 in range(0, P, BLOCK_H):
                outs = p0 + tl.arange(0, BLOCK_H)
                omask = outs < P
                acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
                for k0 in range(0, H, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    kmask = ks < H
                    hp = tl.load(saved + row_t[:, None] * (D * S) + d * S + H + ks[None, :],
                                 mask=active[:, None] & kmask[None, :], other=0.0,
                                 cache_modifier=".cg")
                    w = tl.load(w_hr + d * P * H + outs[None, :] * H + ks[:, None],
                                mask=kmask[:, None] & omask[None, :], other=0.0)
                    acc = tl.dot(hp.to(w.dtype), w, acc, input_precision=PRECISION)
                m2 = active[:, None] & omask[None, :]
                tl.store(y + row_t[:, None] * (D * P) + d * P + outs[None, :],
                         acc.to(y.dtype.element_ty), mask=m2)
                tl.store(h_n + (d * B + rows)[:, None] * P + outs[None, :],
                         acc.to(h_n.dtype.element_ty), mask=m2)
        tl.debug_barrier()  # this step's rows are written before the next step reads them


@autotune(RNN["gru_forward"], key=["B", "H"], prune=_prune_tiles)
@triton.jit
def gru_forward_kernel(gx, w_hh, b_hn, h0, batch_sizes, offsets, y, h_n, gates, saved,
                       T, B, H, D,
                       HAS_BIAS: tl.constexpr, PACKED: tl.constexpr, PRECISION: tl.constexpr,
                       RESIDENT: tl.constexpr,
                       BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """The GRU time loop (see lstm_forward_kernel); b_hn (D, H) float32."""
    d = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    G = 3 * H
    w_d = w_hh + d * G * H
    if RESIDENT:
        r_ks = tl.arange(0, BLOCK_K)
        r_ptr = w_d + tl.arange(0, BLOCK_H)[None, :] * H + r_ks[:, None]
        r_mask = (r_ks < H)[:, None] & (tl.arange(0, BLOCK_H) < H)[None, :]
        w_r = tl.load(r_ptr, mask=r_mask, other=0.0)
        w_z = tl.load(r_ptr + H * H, mask=r_mask, other=0.0)
        w_n = tl.load(r_ptr + 2 * H * H, mask=r_mask, other=0.0)
    for s in range(T):
        t = s + d * (T - 1 - 2 * s)
        n_t, off_t = _step(t, T, batch_sizes, offsets, B, PACKED)
        n_p, off_p = _step(t - 1 + 2 * d, T, batch_sizes, offsets, B, PACKED)
        active = rows < n_t
        has_prev = active & (rows < n_p)
        fresh = active & (rows >= n_p)
        row_t = (off_t + rows).to(tl.int64)
        row_p = (off_p + rows).to(tl.int64)
        for j0 in range(0, H, BLOCK_H):
            units = j0 + tl.arange(0, BLOCK_H)
            umask = units < H
            acc_r = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            acc_z = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            acc_n = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            if RESIDENT:  # one unit block, one K tile
                hk = _load_state(y, D * H, d * H, h0, d * B, H, rows, row_p, has_prev, fresh,
                                 r_ks, r_ks < H)
                acc_r = tl.dot(hk, w_r, acc_r, input_precision=PRECISION)
                acc_z = tl.dot(hk, w_z, acc_z, input_precision=PRECISION)
                acc_n = tl.dot(hk, w_n, acc_n, input_precision=PRECISION)
            else:
                for k0 in range(0, H, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    kmask = ks < H
                    hk = _load_state(y, D * H, d * H, h0, d * B, H, rows, row_p, has_prev,
                                     fresh, ks, kmask)
                    w_ptr = w_d + units[None, :] * H + ks[:, None]
                    wmask = kmask[:, None] & umask[None, :]
                    acc_r = tl.dot(hk, tl.load(w_ptr, mask=wmask, other=0.0), acc_r,
                                   input_precision=PRECISION)
                    acc_z = tl.dot(hk, tl.load(w_ptr + H * H, mask=wmask, other=0.0), acc_z,
                                   input_precision=PRECISION)
                    acc_n = tl.dot(hk, tl.load(w_ptr + 2 * H * H, mask=wmask, other=0.0), acc_n,
                                   input_precision=PRECISION)
            if HAS_BIAS:
                acc_n += tl.load(b_hn + d * H + units, mask=umask, other=0.0)[None, :]
            m2 = active[:, None] & umask[None, :]
            g_idx = row_t[:, None] * (D * G) + d * G + units[None, :]
            r = tl.sigmoid(acc_r + tl.load(gx + g_idx, mask=m2, other=0.0))
            z = tl.sigmoid(acc_z + tl.load(gx + g_idx + H, mask=m2, other=0.0))
            n = _tanh(tl.load(gx + g_idx + 2 * H, mask=m2, other=0.0) + r * acc_n)
            h_prev = _load_state(y, D * H, d * H, h0, d * B, H, rows, row_p, has_prev, fresh,
                                 units, umask).to(tl.float32)
            h = (1.0 - z) * n + z * h_prev
            tl.store(gates + g_idx, r, mask=m2)
            tl.store(gates + g_idx + H, z, mask=m2)
            tl.store(gates + g_idx + 2 * H, n, mask=m2)
            tl.store(saved + row_t[:, None] * (D * H) + d * H + units[None, :], acc_n, mask=m2)
            tl.store(y + row_t[:, None] * (D * H) + d * H + units[None, :],
                     h.to(y.dtype.element_ty), mask=m2)
            tl.store(h_n + (d * B + rows)[:, None] * H + units[None, :],
                     h.to(h_n.dtype.element_ty), mask=m2)
        tl.debug_barrier()  # this step's rows are written before the next step reads them


def _prune_resident(configs, named_args):
    """Resident launches need the whole W_hh in one tile: BLOCK_H >= H, BLOCK_K >= P."""
    width = max(int(named_args["H"]), int(named_args.get("P", named_args["H"])))
    kept = [c for c in _prune_tiles(configs, named_args)
            if c.kwargs["BLOCK_H"] >= width and c.kwargs["BLOCK_K"] >= width]
    return kept or configs[:1]  # the first covers every resident width


# The same kernels tuned over one-tile configurations, for layers small enough to keep W_hh on chip
# (see RESIDENT_UNITS). The first configuration's tile covers RESIDENT_UNITS.
RESIDENT_UNITS = 64
lstm_forward_resident = autotune(RNN["forward_resident"], key=["B", "H", "P"],
                                 prune=_prune_resident)(lstm_forward_kernel.fn)
gru_forward_resident = autotune(RNN["forward_resident"], key=["B", "H"],
                                prune=_prune_resident)(gru_forward_kernel.fn)


# --------------------------------------------------------------------------------------------- #
# Fused cell step                                                                                #
# --------------------------------------------------------------------------------------------- #

@triton.jit
def cell_forward_kernel(x, h, c, w_ih, w_hh, b_ih, b_hh, h_out, h_out2, c_out, gates, saved,
                        B, I, H, stride_x, stride_h, stride_c,
                        IS_LSTM: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE: tl.constexpr,
                        PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    """One step of BLOCK_B rows and BLOCK_H hidden units: x (B, I), h, c (B, H) with row strides,
    w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh (G*H,) contiguous. Writes h_out and h_out2 (B, H)
    (the same values: a layer's y and h_n), c_out (LSTM); with SAVE, gates (B, G*H) and saved
    (B, H) float32 as the layer forward does (c for LSTM, W_hn h + b_hn for GRU)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    units = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    rmask = rows < B
    umask = units < H
    if IS_LSTM:
        G = 4 * H
    else:
        G = 3 * H
    # acc0..2: gates 0..2 from both products; acc3: LSTM's o gate, or GRU's W_hn h (kept apart).
    acc0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, I, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < I
        xk = tl.load(x + rows[:, None] * stride_x + ks[None, :],
                     mask=rmask[:, None] & kmask[None, :], other=0.0)
        w_ptr = w_ih + units[None, :] * I + ks[:, None]
        wmask = kmask[:, None] & umask[None, :]
        acc0 = tl.dot(xk, tl.load(w_ptr, mask=wmask, other=0.0), acc0, input_precision=PRECISION)
        acc1 = tl.dot(xk, tl.load(w_ptr + H * I, mask=wmask, other=0.0), acc1,
                      input_precision=PRECISION)
        acc2 = tl.dot(xk, tl.load(w_ptr + 2 * H * I, mask=wmask, other=0.0), acc2,
                      input_precision=PRECISION)
        if IS_LSTM:
            acc3 = tl.dot(xk, tl.load(w_ptr + 3 * H * I, mask=wmask, other=0.0), acc3,
                          input_precision=PRECISION)
    if not IS_LSTM:
        acc_in = acc2
        acc2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < H
        hk = tl.load(h + rows[:, None] * stride_h + ks[None, :],
                     mask=rmask[:, None] & kmask[None, :], other=0.0)
        w_ptr = w_hh + units[None, :] * H + ks[:, None]
        wmask = kmask[:, None] & umask[None, :]
        acc0 = tl.dot(hk, tl.load(w_ptr, mask=wmask, other=0.0), acc0, input_precision=PRECISION)
        acc1 = tl.dot(hk, tl.load(w_ptr + H * H, mask=wmask, other=0.0), acc1,
                      input_precision=PRECISION)
        if IS_LSTM:
            acc2 = tl.dot(hk, tl.load(w_ptr + 2 * H * H, mask=wmask, other=0.0), acc2,
                          input_precision=PRECISION)
            acc3 = tl.dot(hk, tl.load(w_ptr + 3 * H * H, mask=wmask, other=0.0), acc3,
                          input_precision=PRECISION)
        else:
            acc3 = tl.dot(hk, tl.load(w_ptr + 2 * H * H, mask=wmask, other=0.0), acc3,
                          input_precision=PRECISION)
    if HAS_BIAS:
        acc0 += (tl.load(b_ih + units, mask=umask, other=0.0).to(tl.float32)
                 + tl.load(b_hh + units, mask=umask, other=0.0).to(tl.float32))[None, :]
        acc1 += (tl.load(b_ih + H + units, mask=umask, other=0.0).to(tl.float32)
                 + tl.load(b_hh + H + units, mask=umask, other=0.0).to(tl.float32))[None, :]
        if IS_LSTM:
            acc2 += (tl.load(b_ih + 2 * H + units, mask=umask, other=0.0).to(tl.float32)
                     + tl.load(b_hh + 2 * H + units, mask=umask, other=0.0).to(tl.float32))[None, :]
            acc3 += (tl.load(b_ih + 3 * H + units, mask=umask, other=0.0).to(tl.float32)
                     + tl.load(b_hh + 3 * H + units, mask=umask, other=0.0).to(tl.float32))[None, :]
        else:
            acc_in += tl.load(b_ih + 2 * H + units, mask=umask, other=0.0).to(tl.float32)[None, :]
            acc3 += tl.load(b_hh + 2 * H + units, mask=umask, other=0.0).to(tl.float32)[None, :]
    m2 = rmask[:, None] & umask[None, :]
    out_idx = rows[:, None] * H + units[None, :]
    g_idx = rows[:, None] * G + units[None, :]
    if IS_LSTM:
        i = tl.sigmoid(acc0)
        f = tl.sigmoid(acc1)
        g = _tanh(acc2)
        o = tl.sigmoid(acc3)
        c_prev = tl.load(c + rows[:, None] * stride_c + units[None, :], mask=m2,
                         other=0.0).to(tl.float32)
        c_new = f * c_prev + i * g
        h_new = o * _tanh(c_new)
        tl.store(c_out + out_idx, c_new.to(c_out.dtype.element_ty), mask=m2)
        if SAVE:
            tl.store(gates + g_idx, i, mask=m2)
            tl.store(gates + g_idx + H, f, mask=m2)
            tl.store(gates + g_idx + 2 * H, g, mask=m2)
            tl.store(gates + g_idx + 3 * H, o, mask=m2)
            tl.store(saved + out_idx, c_new, mask=m2)
    else:
        r = tl.sigmoid(acc0)
        z = tl.sigmoid(acc1)
        n = _tanh(acc_in + r * acc3)
        h_prev = tl.load(h + rows[:, None] * stride_h + units[None, :], mask=m2,
                         other=0.0).to(tl.float32)
        h_new = (1.0 - z) * n + z * h_prev
        if SAVE:
            tl.store(gates + g_idx, r, mask=m2)
            tl.store(gates + g_idx + H, z, mask=m2)
            tl.store(gates + g_idx + 2 * H, n, mask=m2)
            tl.store(saved + out_idx, acc3, mask=m2)
    tl.store(h_out + out_idx, h_new.to(h_out.dtype.element_ty), mask=m2)
    tl.store(h_out2 + out_idx, h_new.to(h_out2.dtype.element_ty), mask=m2)


# --------------------------------------------------------------------------------------------- #
# Launchers (torch tensors in, outputs preallocated by the caller)                               #
# --------------------------------------------------------------------------------------------- #

_GATES = {"lstm": 4, "gru": 3}


def _cdiv(a, b):
    return -(-a // b)  # triton.cdiv is a jit function: calling it from Python costs microseconds


def matmul(a, b, c, bias=None, precision="ieee"):
    """c[z] = a[z] @ b[z] (+ bias[z]) for 3-d views with any strides: a (Z, M, K), b (Z, K, N),
    c (Z, M, N), bias (Z, N) or None. a is cast to b's dtype tile by tile."""
    zs, m, k = a.shape
    n = b.shape[2]
    if zs == 0 or m == 0 or n == 0:
        return

    def grid(meta):
        return (_cdiv(m, meta["BLOCK_M"]) * _cdiv(n, meta["BLOCK_N"]), zs)
    _launch(matmul_kernel, grid, m * n * max(k, 1) >= _TUNE_GEMM, a, b, c,
            c if bias is None else bias, m, n, k, *a.stride(), *b.stride(), *c.stride(),
            0 if bias is None else bias.stride(0), HAS_BIAS=bias is not None, PRECISION=precision)


def column_sums(g, out):
    """out (Z, C) = g (R, Z, C) summed over R; g's last axis contiguous."""
    rows, zs, cols = g.shape
    if zs == 0 or cols == 0:
        return
    if rows == 0:
        out.zero_()
        return
    cfg = RNN["column_sums"][0]
    grid = (_cdiv(cols, cfg.kwargs["BLOCK_C"]), zs)
    column_sums_kernel[grid](g, out, rows, cols, g.stride(1), g.stride(0), out.stride(0),
                             num_warps=cfg.num_warps, **cfg.kwargs)


def _steps(batch_sizes, batch, device):
    """(packed, batch_sizes, offsets) for the kernels: a padded batch (every step B rows) needs no
    tables; a packed one gets int32 tables on the device."""
    steps = batch_sizes.shape[0]
    sizes = batch_sizes.to("cpu", torch.int64)
    if steps == 0 or int(sizes[0]) == int(sizes[-1]):
        dummy = torch.empty(1, dtype=torch.int32, device=device)
        return False, dummy, dummy
    offsets = torch.zeros_like(sizes)
    torch.cumsum(sizes[:-1], 0, out=offsets[1:])
    table = torch.stack([sizes, offsets]).to(torch.int32).to(device)
    return True, table[0], table[1]


def _input_bias(mode, b_ih, b_hh, n_dir, gh):
    """The biases added to the input projection, float32 (D*G*H,): all of an LSTM's; a GRU's
    b_ih and the r, z part of b_hh (b_hn multiplies with r inside the loop)."""
    if b_ih is None and b_hh is None:
        return None
    device = (b_ih if b_ih is not None else b_hh).device
    bias = torch.zeros((n_dir, gh), dtype=torch.float32, device=device)
    if b_ih is not None:
        bias += b_ih
    if b_hh is not None:
        if mode == "lstm":
            bias += b_hh
        else:
            bias[:, :2 * gh // 3] += b_hh[:, :2 * gh // 3]
    return bias.reshape(-1)


def _rows_view(t):
    """t itself when its last axis is contiguous, else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def cell_forward(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, h_out, c_out, precision,
                 h_out2=None, gates=None, saved=None):
    """One fused step: x (B, I), h, c (B, H) (c None for a GRU), weights (G*H, .), biases (G*H,)
    or None. Writes h_out (and h_out2 when given), c_out (LSTM); gates (B, G*H) and saved (B, H)
    float32 when given (what the layer backward reads)."""
    batch, n_in = x.shape
    hid = h.shape[1]
    if batch == 0 or hid == 0:
        return
    lstm = mode == "lstm"
    x, h = _rows_view(x), _rows_view(h)
    c = _rows_view(c) if lstm else h
    w_ih, w_hh = w_ih.contiguous(), w_hh.contiguous()
    has_bias = b_ih is not None
    if has_bias and b_hh is None:
        b_hh = torch.zeros_like(b_ih)
    elif b_hh is not None and not has_bias:
        b_ih, has_bias = torch.zeros_like(b_hh), True
    save = gates is not None
    cfg = RNN["cell"][0]
    grid = (_cdiv(batch, cfg.kwargs["BLOCK_B"]), _cdiv(hid, cfg.kwargs["BLOCK_H"]))
    cell_forward_kernel[grid](
        x, h, c, w_ih, w_hh, b_ih if has_bias else w_ih, b_hh if has_bias else w_ih, h_out,
        h_out if h_out2 is None else h_out2, c_out if lstm else h_out, gates if save else h_out,
        saved if save else h_out, batch, n_in, hid, x.stride(0), h.stride(0), c.stride(0),
        IS_LSTM=lstm, HAS_BIAS=has_bias, SAVE=save, PRECISION=precision,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **cfg.kwargs)


def layer_forward(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, y, h_n, c_n, gates,
                  saved, precision):
    """Every direction of one layer (shapes in the module docstring). batch_sizes: int64 (T,) on
    any device. Writes y, h_n, c_n (LSTM), gates (N, D, G*H) and saved (N, D, S) float32."""
    lstm = mode == "lstm"
    n_rows, n_in = x.shape
    n_dir, gh, proj = w_hh.shape
    hid = gh // _GATES[mode]
    steps, batch = batch_sizes.shape[0], h0.shape[1]
    if n_rows == 0:
        h_n.copy_(h0)
        if lstm:
            c_n.copy_(c0)
        return
    w_ih, w_hh, h0 = w_ih.contiguous(), w_hh.contiguous(), h0.contiguous()
    has_proj = w_hr is not None
    if steps == 1 and n_dir == 1 and not has_proj:  # a cell step: one fused kernel
        cell_forward(mode, x, h0[0], c0[0] if lstm else None, w_ih[0], w_hh[0],
                     None if b_ih is None else b_ih[0], None if b_hh is None else b_hh[0],
                     y, c_n[0] if lstm else None, precision, h_out2=h_n[0],
                     gates=gates.view(n_rows, gh), saved=saved.view(n_rows, hid))
        return
    gx = torch.empty((n_rows, n_dir, gh), dtype=torch.float32, device=x.device)
    matmul(x.unsqueeze(0), w_ih.view(n_dir * gh, n_in).t().unsqueeze(0),
           gx.view(1, n_rows, n_dir * gh), _input_bias(mode, b_ih, b_hh, n_dir, gh), precision)
    packed, sizes, offsets = _steps(batch_sizes, batch, x.device)

    def grid(meta):
        return (n_dir, _cdiv(batch, meta["BLOCK_B"]))
    resident = max(hid, proj) <= RESIDENT_UNITS
    tune = batch * hid * proj >= _TUNE_LOOP
    if lstm:
        kernel = lstm_forward_resident if resident else lstm_forward_kernel
        _launch(kernel, grid, tune, gx, w_hh, w_hr.contiguous() if has_proj else w_hh, h0,
                c0.contiguous(), sizes, offsets, y, h_n, c_n, gates, saved, steps, batch, hid,
                proj, n_dir, HAS_PROJ=has_proj, PACKED=packed, PRECISION=precision,
                RESIDENT=resident)
    else:
        b_hn = None if b_hh is None else b_hh[:, 2 * hid:].to(torch.float32).contiguous()
        kernel = gru_forward_resident if resident else gru_forward_kernel
        _launch(kernel, grid, tune, gx, w_hh, gx if b_hn is None else b_hn, h0, sizes, offsets,
                y, h_n, gates, saved, steps, batch, hid, n_dir, HAS_BIAS=b_hn is not None,
                PACKED=packed, PRECISION=precision, RESIDENT=resident)


# The backward through time lives in rnn_backward.py (it imports this module's helpers).
from .rnn_backward import layer_backward  # noqa: E402,F401
