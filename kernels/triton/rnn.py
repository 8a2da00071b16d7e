"""Recurrent kernels for the GPU (Triton), forward: whole LSTM, GRU and vanilla RNN layers (every
direction, every time step) and fused cells; BPTT in ``rnn_backward.py``, the pieces both share
in ``rnn_common.py``. The same layer layout as ``kernels/numba/rnn.py`` (a packed sequence):

    x            (N, I)          rows of every step, step after step; N = sum(batch_sizes)
    batch_sizes  (T,)            rows of step t, non-increasing (a padded batch: all equal to B)
    w_ih         (D, G*H, I)     D directions, G gates (LSTM i, f, g, o; GRU r, z, n), torch's order
    w_hh         (D, G*H, P)     P = proj_size (LSTM) or H;   w_hr (D, P, H)
    h0 (D, B, P), c0 (D, B, H);  y (N, D*P): direction d writes columns [d*P, (d+1)*P)
    h_n, c_n     like h0, c0     the state of each row after its own last step
    rmask        (D, B, P)       recurrent dropout mask or None: h_{t-1} * rmask enters W_hh

Workspaces differ from the CPU's (they are the backend's business): float32, row-major by packed
row then direction, so both directions' input projections are one GEMM:

    gx     (N, D, G*H)   x @ w_ih^T plus the biases that add to it (all of LSTM's; GRU's b_hn stays
                          inside r * (W_hn h + b_hn))
    gates  (N, D, G*H)   activated gates (saved for the backward)
    saved  (N, D, S)     LSTM: cell state c (S = H), then o * tanh(c) (S = 2H with a projection);
                          GRU: W_hn h + b_hn (S = H); vanilla: nothing (S = 0), its gate is h

**Forward**: one GEMM ``matmul_kernel`` for gx, then one launch runs the whole time loop of every
direction: program (d, batch tile) owns BLOCK_B rows of the batch and *all* hidden units. Rows of a
batch are independent, so programs never wait for each other (no grid barrier, which could not run
under the interpreter either). Per step, for each block of hidden units, the recurrent product of
all G gates accumulates in float32 (W_hh streamed from L2, read once per step per program), then
the gate arithmetic is fused in registers. h_{t-1} is read back from y (the previous step's rows)
or h0, c_{t-1} from ``saved`` or c0: each value has a single writer, so the kernel is idempotent
(the autotuner may run it repeatedly) and needs only a CTA barrier between steps. With a
projection the block loop writes o * tanh(c) first, then a second loop multiplies it by W_hr.

**Backward** (``rnn_backward.py``) mirrors it, t = last..first in each direction's order: the
gradient reaching h_t and c_t is carried between steps in float32 ping-pong buffers (D, B, .), the gate pre-activation
gradients (float32, (N, D, G*H)) are written for every step, and after the loop the weight
gradients are a few GEMMs over all steps at once (dW_ih = dg^T x, dW_hh = dg^T h_prev, dx = dg W_ih,
dW_hr = dh^T (o tanh c)), bias gradients column sums: deterministic, no atomics.

**Weights on chip**: when H and P are at most ``RESIDENT_UNITS`` (64), W_hh fits one tile per gate;
the forward then loads it once, before the time loop, and keeps it in registers
(``*_forward_resident``: the same kernels with one-tile configurations). Larger W_hh (e.g. 512 KiB
for a float16 LSTM of H = 256) cannot stay in one SM and is streamed from L2 at every step.

**Cells**: ``cell_forward_kernel`` fuses both products and the gates of one step: program (batch
tile, unit block), no time loop. Its backward is the layer backward with T = 1.

Small problems (``TUNE_LOOP``, ``TUNE_GEMM``) launch the first configuration untuned.

float16 / bfloat16 multiply on tensor cores and keep the cell state, gates, accumulators and
gradients in float32; h is an output (y) in the data type and the recurrent product reads it back
from there, in the type the tensor cores take anyway. float32 uses TF32 when the launcher is told
to (``precision``, from precision.dot_precision in dlkern.ops.rnn).
"""
import torch
import triton
import triton.language as tl

from ..rnn_modes import GATES
from ._autotune import autotune
from .configs import RNN
from . import rnn_common
from .rnn_common import (cdiv, input_bias, launch, load_state, masked, matmul, prune_tiles,
                         rows_view, step, step_tables, tanh)


# --------------------------------------------------------------------------------------------- #
# Forward time loops                                                                             #
# --------------------------------------------------------------------------------------------- #

@autotune(RNN["lstm_forward"], key=["B", "H", "P"], prune=prune_tiles)
@triton.jit
def lstm_forward_kernel(gx, w_hh, w_hr, rmask, h0, c0, batch_sizes, offsets, y, h_n, c_n, gates,
                        saved, T, B, H, P, D,
                        HAS_PROJ: tl.constexpr, PACKED: tl.constexpr, PRECISION: tl.constexpr,
                        RESIDENT: tl.constexpr, HAS_RMASK: tl.constexpr,
                        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """Every step of BLOCK_B batch rows of direction d = program_id(0); shapes in the docstring.
    RESIDENT (H <= BLOCK_H, P <= BLOCK_K): W_hh is loaded once, before the time loop, and stays
    on chip; otherwise it is streamed from L2 tile by tile at every step. HAS_RMASK: the state
    enters W_hh times rmask (D, B, P)."""
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
        n_t, off_t = step(t, T, batch_sizes, offsets, B, PACKED)
        n_p, off_p = step(t - 1 + 2 * d, T, batch_sizes, offsets, B, PACKED)
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
                hk = load_state(y, D * P, d * P, h0, d * B, P, rows, row_p, has_prev, fresh,
                                r_ks, r_ks < P)
                hk = masked(hk, rmask, d * B, P, rows, r_ks, active, r_ks < P, HAS_RMASK)
                acc_i = tl.dot(hk, w_i, acc_i, input_precision=PRECISION)
                acc_f = tl.dot(hk, w_f, acc_f, input_precision=PRECISION)
                acc_g = tl.dot(hk, w_g, acc_g, input_precision=PRECISION)
                acc_o = tl.dot(hk, w_o, acc_o, input_precision=PRECISION)
            else:
                for k0 in range(0, P, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    kmask = ks < P
                    hk = load_state(y, D * P, d * P, h0, d * B, P, rows, row_p, has_prev,
                                    fresh, ks, kmask)
                    hk = masked(hk, rmask, d * B, P, rows, ks, active, kmask, HAS_RMASK)
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
            g = tanh(acc_g + tl.load(gx + g_idx + 2 * H, mask=m2, other=0.0))
            o = tl.sigmoid(acc_o + tl.load(gx + g_idx + 3 * H, mask=m2, other=0.0))
            tl.store(gates + g_idx, i, mask=m2)
            tl.store(gates + g_idx + H, f, mask=m2)
            tl.store(gates + g_idx + 2 * H, g, mask=m2)
            tl.store(gates + g_idx + 3 * H, o, mask=m2)
            c_prev = load_state(saved, D * S, d * S, c0, d * B, H, rows, row_p, has_prev, fresh,
                                units, umask)
            c = f * c_prev + i * g
            s_idx = row_t[:, None] * (D * S) + d * S + units[None, :]
            tl.store(saved + s_idx, c, mask=m2)
            tl.store(c_n + (d * B + rows)[:, None] * H + units[None, :],
                     c.to(c_n.dtype.element_ty), mask=m2)
            h = o * tanh(c)
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


@autotune(RNN["gru_forward"], key=["B", "H"], prune=prune_tiles)
@triton.jit
def gru_forward_kernel(gx, w_hh, b_hn, rmask, h0, batch_sizes, offsets, y, h_n, gates, saved,
                       T, B, H, D,
                       HAS_BIAS: tl.constexpr, PACKED: tl.constexpr, PRECISION: tl.constexpr,
                       RESIDENT: tl.constexpr, HAS_RMASK: tl.constexpr,
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
        n_t, off_t = step(t, T, batch_sizes, offsets, B, PACKED)
        n_p, off_p = step(t - 1 + 2 * d, T, batch_sizes, offsets, B, PACKED)
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
                hk = load_state(y, D * H, d * H, h0, d * B, H, rows, row_p, has_prev, fresh,
                                r_ks, r_ks < H)
                hk = masked(hk, rmask, d * B, H, rows, r_ks, active, r_ks < H, HAS_RMASK)
                acc_r = tl.dot(hk, w_r, acc_r, input_precision=PRECISION)
                acc_z = tl.dot(hk, w_z, acc_z, input_precision=PRECISION)
                acc_n = tl.dot(hk, w_n, acc_n, input_precision=PRECISION)
            else:
                for k0 in range(0, H, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    kmask = ks < H
                    hk = load_state(y, D * H, d * H, h0, d * B, H, rows, row_p, has_prev,
                                    fresh, ks, kmask)
                    hk = masked(hk, rmask, d * B, H, rows, ks, active, kmask, HAS_RMASK)
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
            n = tanh(tl.load(gx + g_idx + 2 * H, mask=m2, other=0.0) + r * acc_n)
            h_prev = load_state(y, D * H, d * H, h0, d * B, H, rows, row_p, has_prev, fresh,
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


# The vanilla RNN's loop tiles like the GRU's (one gate instead of three): the same configurations.
@autotune(RNN["gru_forward"], key=["B", "H"], prune=prune_tiles)
@triton.jit
def vanilla_forward_kernel(gx, w_hh, rmask, h0, batch_sizes, offsets, y, h_n, gates,
                           T, B, H, D,
                           RELU: tl.constexpr, PACKED: tl.constexpr, PRECISION: tl.constexpr,
                           HAS_RMASK: tl.constexpr,
                           BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """The vanilla RNN time loop (see lstm_forward_kernel): h' = tanh or relu of gx + W_hh h;
    gates (N, D, H) float32 receives h'."""
    d = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    w_d = w_hh + d * H * H
    for s in range(T):
        t = s + d * (T - 1 - 2 * s)
        n_t, off_t = step(t, T, batch_sizes, offsets, B, PACKED)
        n_p, off_p = step(t - 1 + 2 * d, T, batch_sizes, offsets, B, PACKED)
        active = rows < n_t
        has_prev = active & (rows < n_p)
        fresh = active & (rows >= n_p)
        row_t = (off_t + rows).to(tl.int64)
        row_p = (off_p + rows).to(tl.int64)
        for j0 in range(0, H, BLOCK_H):
            units = j0 + tl.arange(0, BLOCK_H)
            umask = units < H
            acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            for k0 in range(0, H, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                kmask = ks < H
                hk = load_state(y, D * H, d * H, h0, d * B, H, rows, row_p, has_prev, fresh, ks,
                                kmask)
                hk = masked(hk, rmask, d * B, H, rows, ks, active, kmask, HAS_RMASK)
                w = tl.load(w_d + units[None, :] * H + ks[:, None],
                            mask=kmask[:, None] & umask[None, :], other=0.0)
                acc = tl.dot(hk, w, acc, input_precision=PRECISION)
            m2 = active[:, None] & umask[None, :]
            g_idx = row_t[:, None] * (D * H) + d * H + units[None, :]
            pre = acc + tl.load(gx + g_idx, mask=m2, other=0.0)
            if RELU:
                h = tl.where(pre < 0.0, 0.0, pre)  # NaN stays NaN, as torch.relu
            else:
                h = tanh(pre)
            tl.store(gates + g_idx, h, mask=m2)
            tl.store(y + g_idx, h.to(y.dtype.element_ty), mask=m2)
            tl.store(h_n + (d * B + rows)[:, None] * H + units[None, :],
                     h.to(h_n.dtype.element_ty), mask=m2)
        tl.debug_barrier()  # this step's rows are written before the next step reads them


def _prune_resident(configs, named_args):
    """Resident launches need the whole W_hh in one tile: BLOCK_H >= H, BLOCK_K >= P."""
    width = max(int(named_args["H"]), int(named_args.get("P", named_args["H"])))
    kept = [c for c in prune_tiles(configs, named_args)
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
        g = tanh(acc2)
        o = tl.sigmoid(acc3)
        c_prev = tl.load(c + rows[:, None] * stride_c + units[None, :], mask=m2,
                         other=0.0).to(tl.float32)
        c_new = f * c_prev + i * g
        h_new = o * tanh(c_new)
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
        n = tanh(acc_in + r * acc3)
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


def workspace_shapes(mode, n_rows, n_dir, hid, proj):
    """(shape, dtype) of the layer's ``gates`` and ``saved`` workspaces (module docstring)."""
    f32 = torch.float32
    if mode == "lstm":
        width = hid if proj == hid else 2 * hid
        return ((n_rows, n_dir, 4 * hid), f32), ((n_rows, n_dir, width), f32)
    if mode == "gru":
        return ((n_rows, n_dir, 3 * hid), f32), ((n_rows, n_dir, hid), f32)
    return ((n_rows, n_dir, hid), f32), ((n_rows, n_dir, 0), f32)


def _vanilla_cell(mode, x, h, w_ih, w_hh, b_ih, b_hh, h_out, precision):
    """One vanilla RNN step: the layer kernel over one step."""
    batch, hid = h.shape
    f32 = dict(dtype=torch.float32, device=x.device)
    h_n = torch.empty((1, batch, hid), dtype=x.dtype, device=x.device)
    gates, saved = torch.empty((batch, 1, hid), **f32), torch.empty((batch, 1, 0), **f32)
    layer_forward(mode, x, torch.full((1,), batch, dtype=torch.int64), w_ih[None], w_hh[None],
                  None if b_ih is None else b_ih[None], None if b_hh is None else b_hh[None], None,
                  None, h[None], None, h_out, h_n, None, gates, saved, precision)


def cell_forward(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, h_out, c_out, precision,
                 h_out2=None, gates=None, saved=None):
    """One fused step: x (B, I), h, c (B, H) (c None for a GRU), weights (G*H, .), biases (G*H,)
    or None. Writes h_out (and h_out2 when given), c_out (LSTM); gates (B, G*H) and saved (B, H)
    float32 when given (what the layer backward reads)."""
    batch, n_in = x.shape
    hid = h.shape[1]
    if batch == 0 or hid == 0:
        return
    if mode not in ("lstm", "gru"):
        _vanilla_cell(mode, x, h, w_ih, w_hh, b_ih, b_hh, h_out, precision)
        return
    lstm = mode == "lstm"
    x, h = rows_view(x), rows_view(h)
    c = rows_view(c) if lstm else h
    w_ih, w_hh = w_ih.contiguous(), w_hh.contiguous()
    has_bias = b_ih is not None
    if has_bias and b_hh is None:
        b_hh = torch.zeros_like(b_ih)
    elif b_hh is not None and not has_bias:
        b_ih, has_bias = torch.zeros_like(b_hh), True
    save = gates is not None
    cfg = RNN["cell"][0]
    grid = (cdiv(batch, cfg.kwargs["BLOCK_B"]), cdiv(hid, cfg.kwargs["BLOCK_H"]))
    cell_forward_kernel[grid](
        x, h, c, w_ih, w_hh, b_ih if has_bias else w_ih, b_hh if has_bias else w_ih, h_out,
        h_out if h_out2 is None else h_out2, c_out if lstm else h_out, gates if save else h_out,
        saved if save else h_out, batch, n_in, hid, x.stride(0), h.stride(0), c.stride(0),
        IS_LSTM=lstm, HAS_BIAS=has_bias, SAVE=save, PRECISION=precision,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **cfg.kwargs)


def layer_forward(mode, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, rmask, h0, c0, y, h_n, c_n,
                  gates, saved, precision):
    """Every direction of one layer (shapes in the module docstring). batch_sizes: int64 (T,) on
    any device; rmask (D, B, P) or None. Writes y, h_n, c_n (LSTM), gates and saved (float32,
    workspace_shapes)."""
    lstm = mode == "lstm"
    n_rows, n_in = x.shape
    n_dir, gh, proj = w_hh.shape
    hid = gh // GATES[mode]
    steps, batch = batch_sizes.shape[0], h0.shape[1]
    if n_rows == 0:
        h_n.copy_(h0)
        if lstm:
            c_n.copy_(c0)
        return
    w_ih, w_hh, h0 = w_ih.contiguous(), w_hh.contiguous(), h0.contiguous()
    has_proj = w_hr is not None
    has_rmask = rmask is not None
    rmask = rmask.contiguous() if has_rmask else h0
    if steps == 1 and n_dir == 1 and not (has_proj or has_rmask) and mode in ("lstm", "gru"):
        # a cell step: one fused kernel
        cell_forward(mode, x, h0[0], c0[0] if lstm else None, w_ih[0], w_hh[0],
                     None if b_ih is None else b_ih[0], None if b_hh is None else b_hh[0],
                     y, c_n[0] if lstm else None, precision, h_out2=h_n[0],
                     gates=gates.view(n_rows, gh), saved=saved.view(n_rows, hid))
        return
    gx = torch.empty((n_rows, n_dir, gh), dtype=torch.float32, device=x.device)
    matmul(x.unsqueeze(0), w_ih.view(n_dir * gh, n_in).t().unsqueeze(0),
           gx.view(1, n_rows, n_dir * gh), input_bias(mode, b_ih, b_hh, n_dir, gh), precision)
    packed, sizes, offsets = step_tables(batch_sizes, batch, x.device)

    def grid(meta):
        return (n_dir, cdiv(batch, meta["BLOCK_B"]))
    resident = max(hid, proj) <= RESIDENT_UNITS
    tune = batch * hid * proj >= rnn_common.TUNE_LOOP
    if lstm:
        kernel = lstm_forward_resident if resident else lstm_forward_kernel
        launch(kernel, grid, tune, gx, w_hh, w_hr.contiguous() if has_proj else w_hh, rmask, h0,
               c0.contiguous(), sizes, offsets, y, h_n, c_n, gates, saved, steps, batch, hid,
               proj, n_dir, HAS_PROJ=has_proj, PACKED=packed, PRECISION=precision,
               RESIDENT=resident, HAS_RMASK=has_rmask)
    elif mode == "gru":
        b_hn = None if b_hh is None else b_hh[:, 2 * hid:].to(torch.float32).contiguous()
        kernel = gru_forward_resident if resident else gru_forward_kernel
        launch(kernel, grid, tune, gx, w_hh, gx if b_hn is None else b_hn, rmask, h0, sizes,
               offsets, y, h_n, gates, saved, steps, batch, hid, n_dir, HAS_BIAS=b_hn is not None,
               PACKED=packed, PRECISION=precision, RESIDENT=resident, HAS_RMASK=has_rmask)
    else:
        launch(vanilla_forward_kernel, grid, tune, gx, w_hh, rmask, h0, sizes, offsets, y, h_n,
               gates, steps, batch, hid, n_dir, RELU=mode == "rnn_relu", PACKED=packed,
               PRECISION=precision, HAS_RMASK=has_rmask)
