"""Masked softmax on the GPU (Triton), forward and backward: one program per row, the mask read
through per-row offsets and a column stride, so a broadcast mask is never expanded."""
import triton
import triton.language as tl

from dlkern.kernels.triton._autotune import autotune
from dlkern.kernels.triton.configs import ATTENTION


@autotune(ATTENTION["softmax"], key=["BLOCK", "HAS_MASK"])
@triton.jit
def masked_softmax_forward_kernel(X, Mask, MaskRowOffset, Out, N, mask_col_stride,
                                  HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    """Out[r] = softmax of X[r] over the entries whose mask byte is nonzero; X, Out (R, N)
    contiguous; Mask flat uint8 read at MaskRowOffset[r] + j * mask_col_stride. A row with no
    entry kept is zeros. Grid (R,). Lanes keep their own running max and sum (one pass), then
    a second pass writes."""
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * N
    moff = 0
    if HAS_MASK:
        moff = tl.load(MaskRowOffset + row)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < N
        x = tl.load(x_row + offs, mask=inside, other=float("-inf")).to(tl.float32)
        if HAS_MASK:
            keep = tl.load(Mask + moff + offs * mask_col_stride, mask=inside, other=0)
            x = tl.where(keep != 0, x, float("-inf"))
        m_new = tl.maximum(m, x)
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_shift) + tl.exp(x - m_shift)
        m = m_new
    row_max = tl.max(m, 0)
    if HAS_MASK:
        # nothing kept: shift by 0, the sum is 0 and the row is zeros (torch would give NaN)
        row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    total = tl.sum(s * tl.exp(m - row_max), 0)
    inv = tl.where(total == 0.0, 0.0, 1.0 / tl.where(total == 0.0, 1.0, total))
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < N
        x = tl.load(x_row + offs, mask=inside, other=float("-inf")).to(tl.float32)
        if HAS_MASK:
            keep = tl.load(Mask + moff + offs * mask_col_stride, mask=inside, other=0)
            x = tl.where(keep != 0, x, float("-inf"))
        y = tl.exp(x - row_max) * inv
        tl.store(Out + row * N + offs, y.to(Out.dtype.element_ty), mask=inside)


@autotune(ATTENTION["softmax"], key=["BLOCK"])
@triton.jit
def masked_softmax_backward_kernel(Y, GradY, GradX, N, BLOCK: tl.constexpr):
    """GradX[r] = Y[r] * (GradY[r] - sum(GradY[r] * Y[r])); all (R, N) contiguous. Grid (R,).
    Masked entries have Y = 0, so they get 0 with no mask."""
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < N
        y = tl.load(Y + row * N + offs, mask=inside, other=0.0).to(tl.float32)
        gy = tl.load(GradY + row * N + offs, mask=inside, other=0.0).to(tl.float32)
        acc += y * gy
    dot = tl.sum(acc, 0)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < N
        y = tl.load(Y + row * N + offs, mask=inside, other=0.0).to(tl.float32)
        gy = tl.load(GradY + row * N + offs, mask=inside, other=0.0).to(tl.float32)
        tl.store(GradX + row * N + offs, (y * (gy - dot)).to(GradX.dtype.element_ty),
                 mask=inside)


def _softmax_block(n):
    return min(max(triton.next_power_of_2(max(n, 1)), 16), 4096)


def masked_softmax_forward(x, mask, mask_row_offset, mask_col_stride, out):
    """out = masked softmax of each row of x (R, N) (both contiguous); mask flat uint8 (1 = keep)
    read at mask_row_offset[r] (int64, x's device) + j * mask_col_stride, or None."""
    rows, n = x.shape
    has_mask = mask is not None
    masked_softmax_forward_kernel[(rows,)](
        X=x, Mask=mask if has_mask else x, MaskRowOffset=mask_row_offset if has_mask else x,
        Out=out, N=n, mask_col_stride=int(mask_col_stride), HAS_MASK=has_mask,
        BLOCK=_softmax_block(n))


def masked_softmax_backward(y, grad_y, grad_x):
    """grad_x = y * (grad_y - rowsum(grad_y * y)); all (R, N) contiguous."""
    rows, n = y.shape
    masked_softmax_backward_kernel[(rows,)](Y=y, GradY=grad_y, GradX=grad_x, N=n,
                                            BLOCK=_softmax_block(n))
