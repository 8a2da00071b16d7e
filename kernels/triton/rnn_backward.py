"""Backward through time of the Triton LSTM, GRU and vanilla RNN layers (the forward, the layer
layout and the workspaces are described in ``rnn.py``; ``layer_backward`` is the launcher).

Per layer, one launch per direction set walks t = last..first: program (d, batch tile) carries the
gradient reaching h_t and c_t in float32 ping-pong buffers, writes the gate pre-activation
gradients of every step (float32), and after the loop the weight gradients are a few GEMMs over all
steps at once; bias gradients are column sums. Deterministic: no atomics. With recurrent dropout
the state saved for dW_hh is the masked one that entered W_hh, and the gradient carried to
h_{t-1} through the recurrent product is multiplied by the same mask (the GRU's direct z * h_{t-1}
term carries its share unmasked).
"""
import torch
import triton
import triton.language as tl

from ..rnn_modes import GATES
from . import rnn_common
from ._autotune import autotune
from .configs import RNN
from .rnn_common import (cdiv, column_sums, launch, load_carry, load_state, masked, matmul,
                         prune_tiles, step, step_tables, tanh)

# --------------------------------------------------------------------------------------------- #
# Backward time loops                                                                            #
# --------------------------------------------------------------------------------------------- #

@autotune(RNN["lstm_backward"], key=["B", "H", "P"], prune=prune_tiles)
@triton.jit
def lstm_backward_kernel(w_hh, w_hr, rmask, h0, c0, batch_sizes, offsets, y, gates, saved, dy,
                         dh_n, dc_n, dgates, hprev, dhtot, dh_carry, dc_carry, dh0, dc0,
                         T, B, H, P, D,
                         HAS_PROJ: tl.constexpr, PACKED: tl.constexpr, PRECISION: tl.constexpr,
                         HAS_RMASK: tl.constexpr,
                         BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """BPTT of BLOCK_B rows of direction d. Writes dgates (N, D, 4H) float32 (gradient of the gate
    pre-activations), hprev (N, D, P) (the state each step started from), with a projection dhtot
    (N, D, P) float32 (gradient reaching each output h), and dh0, dc0. dh_carry (2, D, B, P) and
    dc_carry (2, D, B, H) are float32 scratch, read at step s from half s % 2."""
    d = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    G = 4 * H
    if HAS_PROJ:
        S = 2 * H
    else:
        S = H
    for s in range(T):
        t = (T - 1 - s) + d * (2 * s - T + 1)
        n_t, off_t = step(t, T, batch_sizes, offsets, B, PACKED)
        n_p, off_p = step(t - 1 + 2 * d, T, batch_sizes, offsets, B, PACKED)
        n_n, _off_n = step(t + 1 - 2 * d, T, batch_sizes, offsets, B, PACKED)
        active = rows < n_t
        has_prev = active & (rows < n_p)
        fresh = active & (rows >= n_p)
        has_next = active & (rows < n_n)
        first = active & (rows >= n_n)
        row_t = (off_t + rows).to(tl.int64)
        row_p = (off_p + rows).to(tl.int64)
        rd = (s % 2) * D * B
        wr = D * B - rd
        for p0 in range(0, P, BLOCK_H):
            outs = p0 + tl.arange(0, BLOCK_H)
            omask = outs < P
            m2 = active[:, None] & omask[None, :]
            hp = load_state(y, D * P, d * P, h0, d * B, P, rows, row_p, has_prev, fresh, outs,
                            omask)
            hp = masked(hp, rmask, d * B, P, rows, outs, active, omask, HAS_RMASK)
            tl.store(hprev + row_t[:, None] * (D * P) + d * P + outs[None, :], hp, mask=m2)
            if HAS_PROJ:
                dh = load_carry(dh_carry + rd * P, dh_n,
                                 (d * B + rows)[:, None] * P + outs[None, :], has_next, first,
                                 omask[None, :])
                dh += tl.load(dy + row_t[:, None] * (D * P) + d * P + outs[None, :], mask=m2,
                              other=0.0).to(tl.float32)
                tl.store(dhtot + row_t[:, None] * (D * P) + d * P + outs[None, :], dh, mask=m2)
        if HAS_PROJ:
            tl.debug_barrier()
        for j0 in range(0, H, BLOCK_H):
            units = j0 + tl.arange(0, BLOCK_H)
            umask = units < H
            m2 = active[:, None] & umask[None, :]
            if HAS_PROJ:
                dh = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
                for k0 in range(0, P, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    kmask = ks < P
                    a = tl.load(dhtot + row_t[:, None] * (D * P) + d * P + ks[None, :],
                                mask=active[:, None] & kmask[None, :], other=0.0,
                                cache_modifier=".cg")
                    w = tl.load(w_hr + d * P * H + ks[:, None] * H + units[None, :],
                                mask=kmask[:, None] & umask[None, :], other=0.0)
                    dh = tl.dot(a.to(w.dtype), w, dh, input_precision=PRECISION)
            else:
                dh = load_carry(dh_carry + rd * P, dh_n,
                                 (d * B + rows)[:, None] * P + units[None, :], has_next, first,
                                 umask[None, :])
                dh += tl.load(dy + row_t[:, None] * (D * P) + d * P + units[None, :], mask=m2,
                              other=0.0).to(tl.float32)
            g_idx = row_t[:, None] * (D * G) + d * G + units[None, :]
            i = tl.load(gates + g_idx, mask=m2, other=0.0)
            f = tl.load(gates + g_idx + H, mask=m2, other=0.0)
            g = tl.load(gates + g_idx + 2 * H, mask=m2, other=0.0)
            o = tl.load(gates + g_idx + 3 * H, mask=m2, other=0.0)
            c = tl.load(saved + row_t[:, None] * (D * S) + d * S + units[None, :], mask=m2,
                        other=0.0)
            c_prev = load_state(saved, D * S, d * S, c0, d * B, H, rows, row_p, has_prev, fresh,
                                units, umask)
            c_idx = (d * B + rows)[:, None] * H + units[None, :]
            dc = load_carry(dc_carry + rd * H, dc_n, c_idx, has_next, first, umask[None, :])
            tc = tanh(c)
            dc += dh * o * (1.0 - tc * tc)
            tl.store(dgates + g_idx, dc * g * i * (1.0 - i), mask=m2)
            tl.store(dgates + g_idx + H, dc * c_prev * f * (1.0 - f), mask=m2)
            tl.store(dgates + g_idx + 2 * H, dc * i * (1.0 - g * g), mask=m2)
            tl.store(dgates + g_idx + 3 * H, dh * tc * o * (1.0 - o), mask=m2)
            dc = dc * f
            tl.store(dc_carry + wr * H + c_idx, dc, mask=has_prev[:, None] & umask[None, :])
            tl.store(dc0 + c_idx, dc.to(dc0.dtype.element_ty), mask=fresh[:, None] & umask[None, :])
        tl.debug_barrier()  # every gate gradient of the step is written before the product below
        for p0 in range(0, P, BLOCK_H):
            outs = p0 + tl.arange(0, BLOCK_H)
            omask = outs < P
            acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            for k0 in range(0, G, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                kmask = ks < G
                a = tl.load(dgates + row_t[:, None] * (D * G) + d * G + ks[None, :],
                            mask=active[:, None] & kmask[None, :], other=0.0, cache_modifier=".cg")
                w = tl.load(w_hh + d * G * P + ks[:, None] * P + outs[None, :],
                            mask=kmask[:, None] & omask[None, :], other=0.0)
                acc = tl.dot(a.to(w.dtype), w, acc, input_precision=PRECISION)
            acc = masked(acc, rmask, d * B, P, rows, outs, active, omask, HAS_RMASK)
            idx = (d * B + rows)[:, None] * P + outs[None, :]
            tl.store(dh_carry + wr * P + idx, acc, mask=has_prev[:, None] & omask[None, :])
            tl.store(dh0 + idx, acc.to(dh0.dtype.element_ty), mask=fresh[:, None] & omask[None, :])
        tl.debug_barrier()  # the carries are written before the next step reads them


@autotune(RNN["gru_backward"], key=["B", "H"], prune=prune_tiles)
@triton.jit
def gru_backward_kernel(w_hh, rmask, h0, batch_sizes, offsets, y, gates, saved, dy, dh_n,
                        dgi, dgh, hprev, dhz, dh_carry, dh0,
                        T, B, H, D,
                        PACKED: tl.constexpr, PRECISION: tl.constexpr, HAS_RMASK: tl.constexpr,
                        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """GRU BPTT (see lstm_backward_kernel): dgi / dgh (N, D, 3H) float32 are the gradients of the
    input-side and hidden-side gate pre-activations (they differ in n: dgh_n = dgi_n * r); dhz
    (D, B, H) float32 scratch holds the direct part dh * z of the carried gradient."""
    d = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    G = 3 * H
    for s in range(T):
        t = (T - 1 - s) + d * (2 * s - T + 1)
        n_t, off_t = step(t, T, batch_sizes, offsets, B, PACKED)
        n_p, off_p = step(t - 1 + 2 * d, T, batch_sizes, offsets, B, PACKED)
        n_n, _off_n = step(t + 1 - 2 * d, T, batch_sizes, offsets, B, PACKED)
        active = rows < n_t
        has_prev = active & (rows < n_p)
        fresh = active & (rows >= n_p)
        has_next = active & (rows < n_n)
        first = active & (rows >= n_n)
        row_t = (off_t + rows).to(tl.int64)
        row_p = (off_p + rows).to(tl.int64)
        rd = (s % 2) * D * B * H
        wr = D * B * H - rd
        for j0 in range(0, H, BLOCK_H):
            units = j0 + tl.arange(0, BLOCK_H)
            umask = units < H
            m2 = active[:, None] & umask[None, :]
            c_idx = (d * B + rows)[:, None] * H + units[None, :]
            dh = load_carry(dh_carry + rd, dh_n, c_idx, has_next, first, umask[None, :])
            dh += tl.load(dy + row_t[:, None] * (D * H) + d * H + units[None, :], mask=m2,
                          other=0.0).to(tl.float32)
            g_idx = row_t[:, None] * (D * G) + d * G + units[None, :]
            r = tl.load(gates + g_idx, mask=m2, other=0.0)
            z = tl.load(gates + g_idx + H, mask=m2, other=0.0)
            n = tl.load(gates + g_idx + 2 * H, mask=m2, other=0.0)
            hn = tl.load(saved + row_t[:, None] * (D * H) + d * H + units[None, :], mask=m2,
                         other=0.0)
            hp = load_state(y, D * H, d * H, h0, d * B, H, rows, row_p, has_prev, fresh, units,
                            umask)
            tl.store(hprev + row_t[:, None] * (D * H) + d * H + units[None, :],
                     masked(hp, rmask, d * B, H, rows, units, active, umask, HAS_RMASK), mask=m2)
            dn = dh * (1.0 - z) * (1.0 - n * n)
            dr = dn * hn * r * (1.0 - r)
            dz = dh * (hp.to(tl.float32) - n) * z * (1.0 - z)
            tl.store(dgi + g_idx, dr, mask=m2)
            tl.store(dgi + g_idx + H, dz, mask=m2)
            tl.store(dgi + g_idx + 2 * H, dn, mask=m2)
            tl.store(dgh + g_idx, dr, mask=m2)
            tl.store(dgh + g_idx + H, dz, mask=m2)
            tl.store(dgh + g_idx + 2 * H, dn * r, mask=m2)
            tl.store(dhz + c_idx, dh * z, mask=m2)
        tl.debug_barrier()
        for p0 in range(0, H, BLOCK_H):
            outs = p0 + tl.arange(0, BLOCK_H)
            omask = outs < H
            idx = (d * B + rows)[:, None] * H + outs[None, :]
            acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            for k0 in range(0, G, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                kmask = ks < G
                a = tl.load(dgh + row_t[:, None] * (D * G) + d * G + ks[None, :],
                            mask=active[:, None] & kmask[None, :], other=0.0, cache_modifier=".cg")
                w = tl.load(w_hh + d * G * H + ks[:, None] * H + outs[None, :],
                            mask=kmask[:, None] & omask[None, :], other=0.0)
                acc = tl.dot(a.to(w.dtype), w, acc, input_precision=PRECISION)
            acc = masked(acc, rmask, d * B, H, rows, outs, active, omask, HAS_RMASK)
            acc += tl.load(dhz + idx, mask=active[:, None] & omask[None, :], other=0.0,
                           cache_modifier=".cg")
            tl.store(dh_carry + wr + idx, acc, mask=has_prev[:, None] & omask[None, :])
            tl.store(dh0 + idx, acc.to(dh0.dtype.element_ty), mask=fresh[:, None] & omask[None, :])
        tl.debug_barrier()


# The vanilla RNN's loop tiles like the GRU's (one gate instead of three): the same configurations.
@autotune(RNN["gru_backward"], key=["B", "H"], prune=prune_tiles)
@triton.jit
def vanilla_backward_kernel(w_hh, rmask, h0, batch_sizes, offsets, y, gates, dy, dh_n,
                            dg, hprev, dh_carry, dh0,
                            T, B, H, D,
                            RELU: tl.constexpr, PACKED: tl.constexpr, PRECISION: tl.constexpr,
                            HAS_RMASK: tl.constexpr,
                            BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """Vanilla RNN BPTT (see lstm_backward_kernel): dg (N, D, H) float32, the gradient of the
    pre-activation (gates holds each step's h)."""
    d = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    for s in range(T):
        t = (T - 1 - s) + d * (2 * s - T + 1)
        n_t, off_t = step(t, T, batch_sizes, offsets, B, PACKED)
        n_p, off_p = step(t - 1 + 2 * d, T, batch_sizes, offsets, B, PACKED)
        n_n, _off_n = step(t + 1 - 2 * d, T, batch_sizes, offsets, B, PACKED)
        active = rows < n_t
        has_prev = active & (rows < n_p)
        fresh = active & (rows >= n_p)
        has_next = active & (rows < n_n)
        first = active & (rows >= n_n)
        row_t = (off_t + rows).to(tl.int64)
        row_p = (off_p + rows).to(tl.int64)
        rd = (s % 2) * D * B * H
        wr = D * B * H - rd
        for j0 in range(0, H, BLOCK_H):
            units = j0 + tl.arange(0, BLOCK_H)
            umask = units < H
            m2 = active[:, None] & umask[None, :]
            c_idx = (d * B + rows)[:, None] * H + units[None, :]
            g_idx = row_t[:, None] * (D * H) + d * H + units[None, :]
            dh = load_carry(dh_carry + rd, dh_n, c_idx, has_next, first, umask[None, :])
            dh += tl.load(dy + g_idx, mask=m2, other=0.0).to(tl.float32)
            h = tl.load(gates + g_idx, mask=m2, other=0.0)
            if RELU:
                dpre = tl.where(h > 0.0, dh, 0.0)
            else:
                dpre = dh * (1.0 - h * h)
            tl.store(dg + g_idx, dpre, mask=m2)
            hp = load_state(y, D * H, d * H, h0, d * B, H, rows, row_p, has_prev, fresh, units,
                            umask)
            tl.store(hprev + g_idx,
                     masked(hp, rmask, d * B, H, rows, units, active, umask, HAS_RMASK), mask=m2)
        tl.debug_barrier()  # every pre-activation gradient of the step is written
        for p0 in range(0, H, BLOCK_H):
            outs = p0 + tl.arange(0, BLOCK_H)
            omask = outs < H
            acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            for k0 in range(0, H, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                kmask = ks < H
                a = tl.load(dg + row_t[:, None] * (D * H) + d * H + ks[None, :],
                            mask=active[:, None] & kmask[None, :], other=0.0, cache_modifier=".cg")
                w = tl.load(w_hh + d * H * H + ks[:, None] * H + outs[None, :],
                            mask=kmask[:, None] & omask[None, :], other=0.0)
                acc = tl.dot(a.to(w.dtype), w, acc, input_precision=PRECISION)
            acc = masked(acc, rmask, d * B, H, rows, outs, active, omask, HAS_RMASK)
            idx = (d * B + rows)[:, None] * H + outs[None, :]
            tl.store(dh_carry + wr + idx, acc, mask=has_prev[:, None] & omask[None, :])
            tl.store(dh0 + idx, acc.to(dh0.dtype.element_ty), mask=fresh[:, None] & omask[None, :])
        tl.debug_barrier()


# --------------------------------------------------------------------------------------------- #
# Launcher                                                                                      #
# --------------------------------------------------------------------------------------------- #

def layer_backward(mode, x, batch_sizes, w_ih, w_hh, w_hr, rmask, h0, c0, y, gates, saved, dy,
                   dh_n, dc_n, dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh0, dc0, precision):
    """BPTT of one layer: from the forward's y, gates, saved and the gradients of y, h_n, c_n,
    writes dx (N, I), dw_ih, dw_hh, db_ih, db_hh (D, G*H), dw_hr (with a projection), dh0, dc0."""
    lstm = mode == "lstm"
    n_rows, n_in = x.shape
    n_dir, gh, proj = w_hh.shape
    hid = gh // GATES[mode]
    steps, batch = batch_sizes.shape[0], h0.shape[1]
    has_proj = w_hr is not None
    if n_rows == 0:
        for t in (dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr):
            t.zero_()
        dh0.copy_(dh_n)
        if lstm:
            dc0.copy_(dc_n)
        return
    w_ih, w_hh, h0 = w_ih.contiguous(), w_hh.contiguous(), h0.contiguous()
    dy, dh_n = dy.contiguous(), dh_n.contiguous()
    f32 = dict(dtype=torch.float32, device=x.device)
    dgi = torch.empty((n_rows, n_dir, gh), **f32)
    hprev = torch.empty((n_rows, n_dir, proj), dtype=x.dtype, device=x.device)
    dh_carry = torch.empty((2, n_dir, batch, proj), **f32)
    packed, sizes, offsets = step_tables(batch_sizes, batch, x.device)
    tune = batch * hid * proj >= rnn_common.TUNE_LOOP
    has_rmask = rmask is not None
    rmask = rmask.contiguous() if has_rmask else h0

    def grid(meta):
        return (n_dir, cdiv(batch, meta["BLOCK_B"]))
    if lstm:
        dgh = dgi
        dhtot = torch.empty((n_rows, n_dir, proj), **f32) if has_proj else dgi
        dc_carry = torch.empty((2, n_dir, batch, hid), **f32)
        launch(lstm_backward_kernel, grid, tune, w_hh, w_hr.contiguous() if has_proj else w_hh,
               rmask, h0, c0.contiguous(), sizes, offsets, y, gates, saved, dy, dh_n,
               dc_n.contiguous(), dgi, hprev, dhtot, dh_carry, dc_carry, dh0, dc0, steps, batch,
               hid, proj, n_dir, HAS_PROJ=has_proj, PACKED=packed, PRECISION=precision,
               HAS_RMASK=has_rmask)
    elif mode == "gru":
        dgh = torch.empty((n_rows, n_dir, gh), **f32)
        dhz = torch.empty((n_dir, batch, hid), **f32)
        launch(gru_backward_kernel, grid, tune, w_hh, rmask, h0, sizes, offsets, y, gates, saved,
               dy, dh_n, dgi, dgh, hprev, dhz, dh_carry, dh0, steps, batch, hid, n_dir,
               PACKED=packed, PRECISION=precision, HAS_RMASK=has_rmask)
    else:
        dgh = dgi
        launch(vanilla_backward_kernel, grid, tune, w_hh, rmask, h0, sizes, offsets, y, gates, dy,
               dh_n, dgi, hprev, dh_carry, dh0, steps, batch, hid, n_dir,
               RELU=mode == "rnn_relu", PACKED=packed, PRECISION=precision, HAS_RMASK=has_rmask)
    # Weight gradients over all steps at once: dW = dg^T (input of the product), per direction.
    matmul(dgi.permute(1, 2, 0), x.unsqueeze(0).expand(n_dir, n_rows, n_in), dw_ih,
           precision=precision)
    matmul(dgh.permute(1, 2, 0), hprev.permute(1, 0, 2), dw_hh, precision=precision)
    if has_proj:
        matmul(dhtot.permute(1, 2, 0), saved[:, :, hid:].permute(1, 0, 2), dw_hr,
               precision=precision)
    matmul(dgi.view(1, n_rows, n_dir * gh), w_ih.view(1, n_dir * gh, n_in), dx.unsqueeze(0),
           precision=precision)
    column_sums(dgi, db_ih)
    column_sums(dgh, db_hh)
