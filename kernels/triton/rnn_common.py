"""Pieces shared by the Triton recurrent kernels (``rnn.py`` forward, ``rnn_backward.py`` BPTT):
the packed-step bookkeeping, state and gradient loads, the batched GEMM and column sums of the
input projection and the weight gradients, and the launch helpers. Layout in ``rnn.py``.
"""
import torch
import triton
import triton.language as tl

from ._autotune import autotune
from .configs import RNN


def prune_tiles(configs, named_args):
    """Drop configurations whose batch tile is larger than the batch needs (the first, smallest,
    always stays)."""
    batch = max(16, triton.next_power_of_2(int(named_args["B"])))
    kept = [c for c in configs if c.kwargs["BLOCK_B"] <= batch]
    return kept or configs[:1]


# Problems below these sizes run the first configuration untuned: tuning compiles every
# configuration (about a second each) and times even a lone one, which small problems never repay.
TUNE_LOOP = 1 << 20    # B * H * P of a time loop
TUNE_GEMM = 1 << 26    # M * N * K of a product


def launch(kernel, grid, tune, *args, **kwargs):
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
def tanh(x):
    # exp overflows to inf for very negative 2x: sigmoid gives 0 and tanh -1, never NaN.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def step(t, T, batch_sizes, offsets, B, PACKED: tl.constexpr):
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
def load_state(prev, prev_stride, prev_col, init, init_row, init_stride, rows, row_p, has_prev,
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
def load_carry(carry, dfinal, idx, has_next, first, mask):
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



@triton.jit
def masked(h, rmask, base, width, rows, cols, active, cmask, HAS_RMASK: tl.constexpr):
    """h (rows x cols of a state) times the recurrent dropout mask rmask[base + rows, cols] (a
    (D*B, width) array) when HAS_RMASK: the state as it enters W_hh."""
    if HAS_RMASK:
        m = tl.load(rmask + (base + rows)[:, None] * width + cols[None, :],
                    mask=active[:, None] & cmask[None, :], other=0.0)
        h = h * m.to(h.dtype)
    return h


# --------------------------------------------------------------------------------------------- #
# Launch helpers                                                                                 #
# --------------------------------------------------------------------------------------------- #

def cdiv(a, b):
    return -(-a // b)  # triton.cdiv is a jit function: calling it from Python costs microseconds


def matmul(a, b, c, bias=None, precision="ieee"):
    """c[z] = a[z] @ b[z] (+ bias[z]) for 3-d views with any strides: a (Z, M, K), b (Z, K, N),
    c (Z, M, N), bias (Z, N) or None. a is cast to b's dtype tile by tile."""
    zs, m, k = a.shape
    n = b.shape[2]
    if zs == 0 or m == 0 or n == 0:
        return

    def grid(meta):
        return (cdiv(m, meta["BLOCK_M"]) * cdiv(n, meta["BLOCK_N"]), zs)
    launch(matmul_kernel, grid, m * n * max(k, 1) >= TUNE_GEMM, a, b, c,
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
    grid = (cdiv(cols, cfg.kwargs["BLOCK_C"]), zs)
    column_sums_kernel[grid](g, out, rows, cols, g.stride(1), g.stride(0), out.stride(0),
                             num_warps=cfg.num_warps, **cfg.kwargs)


def step_tables(batch_sizes, batch, device):
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


def input_bias(mode, b_ih, b_hh, n_dir, gh):
    """The biases added to the input projection, float32 (D*G*H,): all of an LSTM's or a vanilla
    RNN's; a GRU's b_ih and the r, z part of b_hh (b_hn multiplies with r inside the loop)."""
    if b_ih is None and b_hh is None:
        return None
    device = (b_ih if b_ih is not None else b_hh).device
    bias = torch.zeros((n_dir, gh), dtype=torch.float32, device=device)
    if b_ih is not None:
        bias += b_ih
    if b_hh is not None:
        if mode == "gru":
            bias[:, :2 * gh // 3] += b_hh[:, :2 * gh // 3]
        else:
            bias += b_hh
    return bias.reshape(-1)


def rows_view(t):
    """t itself when its last axis is contiguous, else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()

