"""Convolution kernels for the CPU: forward, gradient of the input, gradient of weight and bias.

Every convolution is a rank-3 convolution here. Arrays are C-contiguous NumPy arrays:

    x    (N, C_in, D, H, W)          input; 1-d and 2-d convolutions have D = H = 1 (and W for 1-d)
    w    (C_out, C_in / groups, KD, KH, KW)
    out  (N, C_out, OD, OH, OW)      OD = (D + pad_lo + pad_hi - dil*(KD-1) - 1) // stride + 1, ...

``pad`` is the padding before the first element of each spatial axis; the padding after the last
element only changes the output size, which the caller passes through ``out``'s shape (that is how
asymmetric 'same' padding is expressed).

The method is a tiled implicit GEMM. A work item is (image, group, tile of output pixels[, block
of channels]). It packs the input patches of its tile into a per-thread column buffer
``cols[K, tile]`` (K = C_in/groups * KD*KH*KW) sized to half of the core's L2 cache (read at
run time by kernels/machine.py) so that it stays there, and multiplies
it by the group's weight matrix with BLAS on the calling thread (``gemm``), writing straight into
the strided output tile. Packing is copy-bound, so it is done as long vectorised copies
(``_patches``): when output rows are as wide as input rows and the strides in H and W are 1 (the
usual 'same' convolution), a kernel offset reads a whole flattened input plane at a constant
shift, one copy per row of ``cols``; otherwise one copy per output row. Products with a small
weight block (few output channels per group) go to BLAS in column blocks small enough for
OpenBLAS's no-copy small-matrix kernels (``_gemm_blocked``). Size-1 dimensions make the rank-3
loops collapse to rank 1 or 2. A 1x1x1 kernel with stride 1 and no padding needs no packing: the
input is already the column matrix. The gradient of the input multiplies by the transposed weight and scatters the columns
back (col2im); each item owns a block of input channels of one image, so no two threads add into
the same element. The gradient of the weight accumulates per thread into its own buffer, summed
at the end.

Parallelism: one ``prange`` over the work items, each a serial ``@jit`` function; BLAS runs
single-threaded inside each item (blas_set_local_threads) and is handed back after it.
"""
import numba
import numpy as np

from .. import machine
from ._jit import blas_set_local_threads, gemm, jit, jit_parallel



def _column_buffer_bytes():
    """Bytes of one thread's column buffer: half of this core's L2 (read at run time), so the
    columns and the product's other operands stay in it."""
    return machine.cache_bytes()["l2"] // 2

# Columns of a product below which BLAS runs well below its speed: tiles have at least this many
# pixels (the column buffer outgrows half of L2 when K is long), and images smaller than this go
# several to a product (_forward_images_item).
_MIN_PRODUCT_COLUMNS = 128
# m*n*k of the column blocks of a product with a small weight block (see _gemm_blocked).
_SMALL_GEMM_VOLUME = 450_000


@jit
def _ceil_div(a, b):
    return -((-a) // b)


@jit
def _valid_range(offset, stride, size, count):
    """Output positions o in [0, count) whose input index o*stride + offset lies in [0, size)."""
    lo = 0
    if offset < 0:
        lo = _ceil_div(-offset, stride)
    hi = count
    last = size - 1 - offset
    if last < 0:
        hi = 0
    else:
        hi = min(count, last // stride + 1)
    if hi < lo:
        hi = lo
    return lo, hi


@jit
def _zero(a, lo, hi):
    """a[lo:hi] = 0 for a 1-d array; nothing when hi <= lo (never a wrapped-around slice)."""
    if hi <= lo:
        return
    s = a[lo:hi]
    for i in range(s.size):
        s[i] = 0.0


@jit
def _copy(dst, d0, src, s0, n, step):
    """dst[d0 + q] = src[s0 + q*step] for q < n (1-d arrays). Steps 1 and 2 are literal constants
    in their loops so that LLVM vectorises them (the slices also remove the index wraparound)."""
    if n <= 0:
        return
    d = dst[d0:d0 + n]
    if step == 1:
        s = src[s0:s0 + n]
        for q in range(n):
            d[q] = s[q]
    elif step == 2:
        s = src[s0:s0 + 2 * n - 1]
        for q in range(n):
            d[q] = s[2 * q]
    else:
        for q in range(n):
            d[q] = src[s0 + q * step]


@jit
def _add(dst, d0, src, s0, n, step):
    """dst[d0 + q*step] += src[s0 + q] for q < n: the adjoint of _copy."""
    if n <= 0:
        return
    s = src[s0:s0 + n]
    if step == 1:
        d = dst[d0:d0 + n]
        for q in range(n):
            d[q] += s[q]
    else:
        for q in range(n):
            dst[d0 + q * step] += s[q]


@jit
def _edge_zero(cols, row, a, b, width, e_lo, e_hi):
    """cols[row + q] = 0 for q in [a, b) whose column q % width is outside [e_lo, e_hi)."""
    if a >= b or (e_lo == 0 and e_hi == width):
        return
    for oh in range(a // width, (b - 1) // width + 1):
        q = oh * width
        _zero(cols, row + max(q, a), row + min(q + e_lo, b))
        _zero(cols, row + max(q + e_hi, a), row + min(q + width, b))


@jit
def _patches(x, n, c0, cin, kd_n, kh_n, kw_n, od_n, oh_n, ow_n, sd, sh, sw, pd, ph, pw, dd, dh, dw,
             p0, pt, ld, cols, adjoint):
    """im2col of the output pixels [p0, p0 + pt) of image n, channels [c0, c0 + cin); or its adjoint.

    cols is 1-d, holding the (K, pt) column matrix with rows ld apart, K = cin*KD*KH*KW, rows r =
    (c, kd, kh, kw). adjoint False: cols[r, j] = x[n, c0 + c, i_d, i_h, i_w] for output pixel
    p0 + j, 0 where the patch reaches into the padding. adjoint True: x[n, c0 + c, i_d, i_h, i_w]
    += cols[r, j] over the same pairs (x is then dx; cols is clobbered).
    """
    d_in = x.shape[2]
    h_in = x.shape[3]
    w_in = x.shape[4]
    xf = x.reshape(x.size)
    plane_in = h_in * w_in
    plane = oh_n * ow_n
    if sh == 1 and sw == 1 and ow_n == w_in:
        # Output rows as wide as input rows, unit strides: over one output plane, a kernel offset
        # (kh, kw) reads the input plane flattened, shifted by a constant. One contiguous copy per
        # (run, row r), then the few pixels whose read wrapped around a row edge are zeroed.
        j = 0
        while j < pt:
            od = (p0 + j) // plane
            q0 = p0 + j - od * plane
            q1 = min(plane, q0 + pt - j)
            r = 0
            for c in range(cin):
                for kd in range(kd_n):
                    i_d = od * sd - pd + kd * dd
                    base = ((n * x.shape[1] + c0 + c) * d_in + i_d) * plane_in
                    for kh in range(kh_n):
                        # output rows reading inside the input: 0 <= oh + kh*dh - ph < h_in
                        a = max(q0, min(q1, max(0, ph - kh * dh) * ow_n))
                        b = max(a, min(q1, min(oh_n, h_in + ph - kh * dh) * ow_n))
                        if i_d < 0 or i_d >= d_in:
                            b = a
                        for kw in range(kw_n):
                            e = kw * dw - pw
                            shift = (kh * dh - ph) * w_in + e
                            # clamp to the input plane: what is cut off is in the edge columns
                            a2 = min(max(a, -shift), b)
                            b2 = max(min(b, plane_in - shift), a2)
                            row = r * ld + j - q0
                            r += 1
                            # edge columns: ow + e outside [0, w_in)
                            e_lo = min(max(-e, 0), ow_n)
                            e_hi = max(min(ow_n - e, ow_n), e_lo)
                            if adjoint:
                                _edge_zero(cols, row, a2, b2, ow_n, e_lo, e_hi)
                                _add(xf, base + a2 + shift, cols, row + a2, b2 - a2, 1)
                            else:
                                _zero(cols, row + q0, row + a2)
                                _copy(cols, row + a2, xf, base + a2 + shift, b2 - a2, 1)
                                _zero(cols, row + b2, row + q1)
                                _edge_zero(cols, row, a2, b2, ow_n, e_lo, e_hi)
            j += q1 - q0
        return
    # General strides and widths: runs of pixels within one output row.
    j = 0
    od = p0 // plane
    oh = (p0 - od * plane) // ow_n
    ow0 = p0 - od * plane - oh * ow_n
    while j < pt:
        seg = min(ow_n - ow0, pt - j)
        r = 0
        for c in range(cin):
            for kd in range(kd_n):
                i_d = od * sd - pd + kd * dd
                for kh in range(kh_n):
                    i_h = oh * sh - ph + kh * dh
                    inside = 0 <= i_d < d_in and 0 <= i_h < h_in
                    base = (((n * x.shape[1] + c0 + c) * d_in + i_d) * h_in + i_h) * w_in
                    for kw in range(kw_n):
                        row = r * ld + j
                        r += 1
                        e = kw * dw - pw
                        lo, hi = _valid_range(e, sw, w_in, ow_n)
                        q_lo = min(max(lo - ow0, 0), seg)
                        q_hi = max(min(hi - ow0, seg), q_lo)
                        if not inside:
                            q_hi = q_lo
                        start = base + (ow0 + q_lo) * sw + e
                        if adjoint:
                            _add(xf, start, cols, row + q_lo, q_hi - q_lo, sw)
                        else:
                            _zero(cols, row, row + q_lo)
                            _copy(cols, row + q_lo, xf, start, q_hi - q_lo, sw)
                            _zero(cols, row + q_hi, row + seg)
        j += seg
        ow0 = 0
        oh += 1
        if oh == oh_n:
            oh = 0
            od += 1


@jit
def _gemm_blocked(is_double, trans_a, m, n, k, a_addr, lda, b_addr, ldb, c_addr, ldc, item_size):
    """C[m, n] = op(A)[m, k] @ B[k, n] (row-major, strided), in column blocks when A is small.

    OpenBLAS (SkylakeX kernels and later) multiplies small products (m*n*k up to about 1e6) with
    kernels that read B in place instead of copying it into its packed layout first. When A =
    the weight block is small (few output channels), that copy costs about as much as the
    product itself: blocks of ``nb`` columns below the limit run 1.3-2.5x faster (e.g. m=16,
    k=144: 135 -> 340 GFLOP/s on two cores; A^T with m=144, k=16: 200 -> 330). Large A keeps
    one call. (No gain for B^T: OpenBLAS's small path does not cover it.)
    """
    nb = (_SMALL_GEMM_VOLUME // max(1, m * k)) // 16 * 16
    if nb < 32 or nb >= n:
        gemm(is_double, trans_a, 0, m, n, k, 1.0, a_addr, lda, b_addr, ldb, 0.0, c_addr, ldc)
        return
    for j in range(0, n, nb):
        gemm(is_double, trans_a, 0, m, min(nb, n - j), k, 1.0, a_addr, lda, b_addr + j * item_size, ldb,
             0.0, c_addr + j * item_size, ldc)


@jit
def _forward_item(item, x, w, bias, has_bias, out, sd, sh, sw, pd, ph, pw, dd, dh, dw, groups,
                  tile, co_blocks, direct, scratch, is_double):
    """One work item of the forward: output channels block x pixel tile of one image and group."""
    n_img, c_in, _, _, _ = x.shape
    c_out, cin_g, kd_n, kh_n, kw_n = w.shape
    _, _, od_n, oh_n, ow_n = out.shape
    pixels = od_n * oh_n * ow_n
    k_len = cin_g * kd_n * kh_n * kw_n
    cout_g = c_out // groups
    n_tiles = (pixels + tile - 1) // tile
    co_step = (cout_g + co_blocks - 1) // co_blocks
    item_size = out.itemsize
    cb = item % co_blocks
    rest = item // co_blocks
    t = rest % n_tiles
    rest = rest // n_tiles
    g = rest % groups
    n = rest // groups
    co0 = g * cout_g + cb * co_step
    co_n = min(co_step, cout_g - cb * co_step)
    p0 = t * tile
    pt = min(tile, pixels - p0)
    if co_n <= 0:
        return
    if direct:
        b_addr = x.ctypes.data + ((n * c_in + g * cin_g) * pixels + p0) * item_size
        ldb = pixels
    else:
        cols = scratch[numba.get_thread_id()]
        _patches(x, n, g * cin_g, cin_g, kd_n, kh_n, kw_n, od_n, oh_n, ow_n,
                 sd, sh, sw, pd, ph, pw, dd, dh, dw, p0, pt, pt, cols, False)
        b_addr = cols.ctypes.data
        ldb = pt
    out_addr = out.ctypes.data + ((n * c_out + co0) * pixels + p0) * item_size
    _gemm_blocked(is_double, 0, co_n, pt, k_len, w.ctypes.data + co0 * k_len * item_size, k_len,
                  b_addr, ldb, out_addr, pixels, item_size)
    if has_bias:
        flat = out[n].reshape((c_out, pixels))
        for co in range(co0, co0 + co_n):
            b = bias[co]
            for j in range(p0, p0 + pt):
                flat[co, j] += b


@jit_parallel
def _forward_kernel(x, w, bias, has_bias, out, sd, sh, sw, pd, ph, pw, dd, dh, dw, groups,
                    tile, co_blocks, direct, scratch, is_double):
    pixels = out.shape[2] * out.shape[3] * out.shape[4]
    n_tiles = (pixels + tile - 1) // tile
    for item in numba.prange(x.shape[0] * groups * n_tiles * co_blocks):
        blas_set_local_threads(1)
        _forward_item(item, x, w, bias, has_bias, out, sd, sh, sw, pd, ph, pw, dd, dh, dw, groups,
                      tile, co_blocks, direct, scratch, is_double)
        blas_set_local_threads(0)


@jit
def _forward_images_item(item, x, w, bias, has_bias, out, sd, sh, sw, pd, ph, pw, dd, dh, dw,
                         groups, images, co_blocks, direct, scratch, products, is_double):
    """One work item of the forward over whole small images: ``images`` images of one group
    packed side by side into one column matrix (K, images*pixels), so that the product has
    enough columns for BLAS to run at speed; the product goes to a per-thread buffer and is
    copied to each image's output (plus the bias)."""
    n_img, c_in, _, _, _ = x.shape
    c_out, cin_g, kd_n, kh_n, kw_n = w.shape
    _, _, od_n, oh_n, ow_n = out.shape
    pixels = od_n * oh_n * ow_n
    k_len = cin_g * kd_n * kh_n * kw_n
    cout_g = c_out // groups
    co_step = (cout_g + co_blocks - 1) // co_blocks
    item_size = out.itemsize
    cb = item % co_blocks
    rest = item // co_blocks
    g = rest % groups
    n0 = (rest // groups) * images
    nb = min(images, n_img - n0)
    co0 = g * cout_g + cb * co_step
    co_n = min(co_step, cout_g - cb * co_step)
    if co_n <= 0:
        return
    ld = nb * pixels
    tid = numba.get_thread_id()
    cols = scratch[tid]
    for i in range(nb):
        if direct:
            for c in range(cin_g):
                src = x[n0 + i, g * cin_g + c].reshape(pixels)
                dst = cols[c * ld + i * pixels:c * ld + (i + 1) * pixels]
                for j in range(pixels):
                    dst[j] = src[j]
        else:
            _patches(x, n0 + i, g * cin_g, cin_g, kd_n, kh_n, kw_n, od_n, oh_n, ow_n,
                     sd, sh, sw, pd, ph, pw, dd, dh, dw, 0, pixels, ld, cols[i * pixels:], False)
    prod = products[tid]
    gemm(is_double, 0, 0, co_n, ld, k_len, 1.0, w.ctypes.data + co0 * k_len * item_size, k_len,
         cols.ctypes.data, ld, 0.0, prod.ctypes.data, ld)
    for i in range(nb):
        flat = out[n0 + i].reshape((c_out, pixels))
        for co in range(co_n):
            b = bias[co0 + co] if has_bias else 0.0
            src = prod[co * ld + i * pixels:co * ld + (i + 1) * pixels]
            dst = flat[co0 + co]
            for j in range(pixels):
                dst[j] = src[j] + b


@jit_parallel
def _forward_images_kernel(x, w, bias, has_bias, out, sd, sh, sw, pd, ph, pw, dd, dh, dw, groups,
                           images, co_blocks, direct, scratch, products, is_double):
    n_blocks = (x.shape[0] + images - 1) // images
    for item in numba.prange(n_blocks * groups * co_blocks):
        blas_set_local_threads(1)
        _forward_images_item(item, x, w, bias, has_bias, out, sd, sh, sw, pd, ph, pw, dd, dh, dw,
                             groups, images, co_blocks, direct, scratch, products, is_double)
        blas_set_local_threads(0)


@jit
def _backward_input_item(item, dy, w, dx, sd, sh, sw, pd, ph, pw, dd, dh, dw, groups,
                         tile, ci_blocks, direct, scratch, is_double):
    """One work item of the input gradient: a block of input channels of one image and group,
    all pixel tiles (the item owns those channels of dx: its col2im adds race with no one)."""
    n_img, c_out, od_n, oh_n, ow_n = dy.shape
    _, cin_g, kd_n, kh_n, kw_n = w.shape
    c_in = dx.shape[1]
    pixels = od_n * oh_n * ow_n
    in_pixels = dx.shape[2] * dx.shape[3] * dx.shape[4]
    kvol = kd_n * kh_n * kw_n
    k_len = cin_g * kvol
    cout_g = c_out // groups
    ci_step = (cin_g + ci_blocks - 1) // ci_blocks
    item_size = dx.itemsize
    n_tiles = (pixels + tile - 1) // tile
    cb = item % ci_blocks
    rest = item // ci_blocks
    g = rest % groups
    n = rest // groups
    ci_lo = cb * ci_step
    ci_n = min(ci_step, cin_g - ci_lo)
    if ci_n <= 0:
        return
    c0 = g * cin_g + ci_lo
    w_addr = w.ctypes.data + (g * cout_g * k_len + ci_lo * kvol) * item_size
    dy_base = dy.ctypes.data + (n * c_out + g * cout_g) * pixels * item_size
    if direct:
        # 1x1x1, stride 1, no padding: dx[n, c0:c0+ci_n] = w_g[:, block]^T @ dy[n, g]
        _gemm_blocked(is_double, 1, ci_n, pixels, cout_g, w_addr, k_len, dy_base, pixels,
                      dx.ctypes.data + (n * c_in + c0) * in_pixels * item_size, in_pixels,
                      item_size)
        return
    dx[n, c0:c0 + ci_n] = 0.0
    cols = scratch[numba.get_thread_id()]
    for t in range(n_tiles):
        p0 = t * tile
        pt = min(tile, pixels - p0)
        _gemm_blocked(is_double, 1, ci_n * kvol, pt, cout_g, w_addr, k_len,
                      dy_base + p0 * item_size, pixels, cols.ctypes.data, pt, item_size)
        _patches(dx, n, c0, ci_n, kd_n, kh_n, kw_n, od_n, oh_n, ow_n,
                 sd, sh, sw, pd, ph, pw, dd, dh, dw, p0, pt, pt, cols, True)


@jit_parallel
def _backward_input_kernel(dy, w, dx, sd, sh, sw, pd, ph, pw, dd, dh, dw, groups,
                           tile, ci_blocks, direct, scratch, is_double):
    for item in numba.prange(dy.shape[0] * groups * ci_blocks):
        blas_set_local_threads(1)
        _backward_input_item(item, dy, w, dx, sd, sh, sw, pd, ph, pw, dd, dh, dw, groups,
                             tile, ci_blocks, direct, scratch, is_double)
        blas_set_local_threads(0)


@jit
def _backward_weight_item(item, x, dy, dw_parts, db_parts, want_bias, sd, sh, sw, pd, ph, pw,
                          dd, dh, dw, groups, tile, direct, scratch, is_double):
    """One work item of the weight gradient: a pixel tile of one image and group, accumulated
    into the calling thread's own partial sums (dw_parts[tid], db_parts[tid])."""
    n_img, c_in, _, _, _ = x.shape
    _, c_out, od_n, oh_n, ow_n = dy.shape
    _, _, cin_g, kd_n, kh_n, kw_n = dw_parts.shape
    pixels = od_n * oh_n * ow_n
    k_len = cin_g * kd_n * kh_n * kw_n
    cout_g = c_out // groups
    n_tiles = (pixels + tile - 1) // tile
    item_size = x.itemsize
    tid = numba.get_thread_id()
    t = item % n_tiles
    rest = item // n_tiles
    g = rest % groups
    n = rest // groups
    p0 = t * tile
    pt = min(tile, pixels - p0)
    if direct:
        b_addr = x.ctypes.data + ((n * c_in + g * cin_g) * pixels + p0) * item_size
        ldb = pixels
    else:
        cols = scratch[tid]
        _patches(x, n, g * cin_g, cin_g, kd_n, kh_n, kw_n, od_n, oh_n, ow_n,
                 sd, sh, sw, pd, ph, pw, dd, dh, dw, p0, pt, pt, cols, False)
        b_addr = cols.ctypes.data
        ldb = pt
    dy_addr = dy.ctypes.data + ((n * c_out + g * cout_g) * pixels + p0) * item_size
    part = dw_parts[tid]
    gemm(is_double, 0, 1, cout_g, k_len, pt, 1.0, dy_addr, pixels, b_addr, ldb, 1.0,
         part.ctypes.data + g * cout_g * k_len * item_size, k_len)
    if want_bias:
        flat = dy[n].reshape((c_out, pixels))
        for co in range(g * cout_g, (g + 1) * cout_g):
            s = 0.0
            for j in range(p0, p0 + pt):
                s += flat[co, j]
            db_parts[tid, co] += s


@jit_parallel
def _backward_weight_kernel(x, dy, dw_parts, db_parts, want_bias, sd, sh, sw, pd, ph, pw,
                            dd, dh, dw, groups, tile, direct, scratch, is_double):
    pixels = dy.shape[2] * dy.shape[3] * dy.shape[4]
    n_tiles = (pixels + tile - 1) // tile
    for item in numba.prange(x.shape[0] * groups * n_tiles):
        blas_set_local_threads(1)
        _backward_weight_item(item, x, dy, dw_parts, db_parts, want_bias, sd, sh, sw, pd, ph, pw,
                              dd, dh, dw, groups, tile, direct, scratch, is_double)
        blas_set_local_threads(0)


def _is_direct(w_shape, stride, padding, in_spatial, out_spatial):
    return (tuple(w_shape[2:]) == (1, 1, 1) and tuple(stride) == (1, 1, 1)
            and tuple(padding) == (0, 0, 0) and tuple(in_spatial) == tuple(out_spatial))


def _tile_for(k_len, pixels, item_size, threads, images_x_groups):
    """Pixels per tile: as many as the column buffer holds, in a number of tiles that gives every
    thread the same number of work items (or at least 4 items per thread to even out)."""
    tile = min(pixels, max(_MIN_PRODUCT_COLUMNS, _column_buffer_bytes() // max(1, k_len * item_size)))
    n_tiles = -(-pixels // tile)
    while (images_x_groups * n_tiles) % threads and images_x_groups * n_tiles < 4 * threads \
            and n_tiles < pixels:
        n_tiles += 1
    return max(1, -(-pixels // n_tiles))


def conv_forward(x, w, bias, stride, padding, dilation, groups, out):
    """out = conv(x, w) + bias. Shapes as in the module docstring; bias is (C_out,) or None."""
    n_img = x.shape[0]
    if out.size == 0:
        return out
    threads = numba.get_num_threads()
    cin_g = w.shape[1]
    k_len = cin_g * w.shape[2] * w.shape[3] * w.shape[4]
    pixels = out.shape[2] * out.shape[3] * out.shape[4]
    if k_len == 0:
        out[...] = 0.0 if bias is None else bias.reshape(1, -1, 1, 1, 1)
        return out
    direct = _is_direct(w.shape, stride, padding, x.shape[2:], out.shape[2:])
    has_bias = bias is not None
    if bias is None:
        bias = np.zeros(1, dtype=x.dtype)
    if pixels < _MIN_PRODUCT_COLUMNS and n_img > 1:
        # small images: several per product (see _forward_images_item)
        images = min(n_img, -(-_MIN_PRODUCT_COLUMNS // pixels))
        cout_g = w.shape[0] // groups
        blocks = -(-n_img // images) * groups
        co_blocks = 1
        while blocks * co_blocks < 2 * threads and co_blocks < cout_g and cout_g // co_blocks >= 32:
            co_blocks *= 2
        columns = images * pixels
        scratch = np.empty((threads, k_len * columns), dtype=x.dtype)
        products = np.empty((threads, -(-cout_g // co_blocks) * columns), dtype=x.dtype)
        _forward_images_kernel(x, w, bias, has_bias, out, *stride, *padding, *dilation, groups,
                               images, co_blocks, direct, scratch, products, x.dtype == np.float64)
        return out
    tile = _tile_for(k_len, pixels, x.itemsize, threads, n_img * groups)
    n_tiles = -(-pixels // tile)
    co_blocks = 1
    cout_g = w.shape[0] // groups
    while n_img * groups * n_tiles * co_blocks < threads and co_blocks < cout_g:
        co_blocks *= 2
    co_blocks = min(co_blocks, cout_g)
    scratch = np.empty((threads, 0 if direct else k_len * tile), dtype=x.dtype)
    _forward_kernel(x, w, bias, has_bias, out, *stride, *padding, *dilation, groups,
                    tile, co_blocks, direct, scratch, x.dtype == np.float64)
    return out


def conv_backward_input(dy, w, stride, padding, dilation, groups, dx):
    """dx = the gradient of conv(x, w) with respect to x, given dy = the gradient of its output."""
    if dx.size == 0:
        return dx
    if dy.size == 0:
        dx[...] = 0.0
        return dx
    threads = numba.get_num_threads()
    n_img = dy.shape[0]
    cin_g = w.shape[1]
    kvol = w.shape[2] * w.shape[3] * w.shape[4]
    pixels = dy.shape[2] * dy.shape[3] * dy.shape[4]
    direct = _is_direct(w.shape, stride, padding, dx.shape[2:], dy.shape[2:])
    ci_blocks = 1
    while n_img * groups * ci_blocks < 2 * threads and ci_blocks < cin_g:
        ci_blocks *= 2
    ci_blocks = min(ci_blocks, cin_g)
    rows = (-(-cin_g // ci_blocks)) * kvol
    tile = min(pixels, max(16, _column_buffer_bytes() // max(1, rows * dy.itemsize)))
    scratch = np.empty((threads, 0 if direct else rows * tile), dtype=dy.dtype)
    _backward_input_kernel(dy, w, dx, *stride, *padding, *dilation, groups, tile, ci_blocks,
                           direct, scratch, dy.dtype == np.float64)
    return dx


def conv_backward_weight(x, dy, w_shape, stride, padding, dilation, groups, want_bias):
    """(dw, db): the gradients of conv(x, w) + bias with respect to w and bias (db None if not wanted)."""
    threads = numba.get_num_threads()
    dw_parts = np.zeros((threads,) + tuple(w_shape), dtype=x.dtype)
    db_parts = np.zeros((threads, w_shape[0]), dtype=x.dtype)
    n_img = x.shape[0]
    pixels = dy.shape[2] * dy.shape[3] * dy.shape[4]
    k_len = int(np.prod(w_shape[1:]))
    if n_img > 0 and pixels > 0 and k_len > 0:
        direct = _is_direct(w_shape, stride, padding, x.shape[2:], dy.shape[2:])
        tile = _tile_for(k_len, pixels, x.itemsize, threads, n_img * groups)
        scratch = np.empty((threads, 0 if direct else k_len * tile), dtype=x.dtype)
        _backward_weight_kernel(x, dy, dw_parts, db_parts, want_bias, *stride, *padding, *dilation,
                                groups, tile, direct, scratch, x.dtype == np.float64)
    elif n_img > 0 and pixels > 0 and want_bias:
        db_parts[0] = dy.sum(axis=(0, 2, 3, 4))
    dw = dw_parts.sum(axis=0) if threads > 1 else dw_parts[0]
    db = (db_parts.sum(axis=0) if threads > 1 else db_parts[0]) if want_bias else None
    return dw, db


@jit
def _product(a, b, out, is_double):
    gemm(is_double, 0, 0, a.shape[0], b.shape[1], a.shape[1], 1.0, a.ctypes.data, a.shape[1],
         b.ctypes.data, b.shape[1], 0.0, out.ctypes.data, out.strides[0] // out.itemsize)


def product(a, b, out):
    """out = a @ b through the kernels' BLAS (a, b C-contiguous 2-d; out rows contiguous)."""
    if out.size:
        _product(a, b, out, a.dtype == np.float64)
    return out


@jit_parallel
def gather_taps(w3, taps, groups, out):
    """out[g * cout_g + co, ci, t] = w3[g * cin_g + ci, co, taps[t]]: chosen taps of a transposed
    convolution's weight w3 (C_in, C_out/g, K) as a convolution weight (C_out, C_in/g, T), in
    one pass over w3 (each input channel's block read once, in order; numpy's copy of the same
    strided view ran at ~1 GB/s)."""
    c_in, cout_g = w3.shape[0], w3.shape[1]
    cin_g = c_in // groups
    for c in numba.prange(c_in):
        g, ci = c // cin_g, c % cin_g
        for co in range(cout_g):
            src = w3[c, co]
            dst = out[g * cout_g + co, ci]
            for t in range(taps.shape[0]):
                dst[t] = src[taps[t]]
