"""Winograd convolution for 3-tap kernels with unit stride in H and W (the CPU's biggest lever:
oneDNN runs these as direct convolutions, Winograd does 2.25x to 4x fewer multiplications).

Arrays as in conv.py: x (N, C_in, D, H, W), w (C_out, C_in / groups, KD, KH, KW), out (N, C_out,
OD, OH, OW), all C-contiguous. Applies when KH and KW are 1 or 3 (not both 1) and the H and W
strides are 1; any padding (also negative), any dilation, any depth kernel, depth stride and depth
dilation, any groups.

The algorithm, F(m x m, 3 x 3) (F(m, 3) along an axis whose kernel is 3, the identity along an axis
whose kernel is 1):

* Tiles. Along an axis with dilation d the outputs o = p + d*j of one phase p (0 <= p < d) read
  only inputs p + d*i - pad: a dense convolution of that phase, cut into tiles of m outputs. The
  tile tables (``axis_tiles``) hold each tile's first output and how many of its m outputs exist.
* Work item: one group, one output depth plane, one block of tiles, the block running across
  images (small planes still make long products). Per item:
  1. input transform (``_bt_pass``): for each depth tap kd whose input plane exists and each
     input channel c, gather the tiles' alpha x alpha patches from the input padded once (no
     bounds tests) and apply B^T along W, then H, vectorised over the tiles of the block, into
     V[t][kd, c][tile];
  2. per block of output channels, one BLAS product per transformed position t: M[t] = U[t] @
     V[t], (C_out/g x K) (K x tiles) with K = (depth taps) x C_in/g: the depth taps are part of
     the reduction, so conv3d is the same code with no per-rank copy;
  3. output transform (``_at_pass``): A^T along W, then H, vectorised over the tiles, plus the
     bias, scattered into out (or into a padded output when tiles overhang it).
* Tiles per block: from the L2 size read at run time (kernels/machine.py), 64-256.
* U (``transform_weight``) = G w G^T computed in float64 and rounded once, laid out
  [group][t][C_out/g][KD, C_in/g].

Points and accuracy (notes/winograd-accuracy.md; tests/test_winograd.py checks it): F(2, 3)
uses points {0, 1, -1, inf}, F(4, 3) {0, 1, -1, 1/2, -2, inf}. The contract for float32: the
result's max error against the float64 reference is at most twice torch's own float32 error on
the same inputs (normal, and uniform in +-9 as torch's OpInfo samples). The products sum the
reduction (channels x depth taps) in chunks (CHUNK_2D, CHUNK_1D rows), each chunk's sum added to
M by BLAS: accumulating whole 128-512-channel reductions in one float32 sum is what breaks the
contract (F(2x2) went to 2.1x torch's error at C_in 128, F(2, 3) to 2.9x). Measured worst ratio
over 2 seeds x 2 input kinds, N 2, C_out 32 (28x28, 784, 6x12x12), chunked as here:

| tile        | C_in 1 | 3    | 16   | 64   | 128  | 256  | 512  |
| ----------- | ------ | ---- | ---- | ---- | ---- | ---- | ---- |
| F(2x2, 3x3) | 1.70   | 0.81 | 0.43 | 1.22 | 1.15 | 1.14 | 1.19 |
| F(2, 3) 1-d | 2.15*  | 1.10 | 0.69 | 1.34 | 1.16 | 1.22 | 1.04 |
| F(2x2x, 3x3x3) (3-d) | 0.81 | 0.65 | 0.52 | 0.63 | 0.78 | 0.81 | 0.67 |
| F(4x4, 3x3), chunks of 8 | 13.8 | 5.9 | 1.8-2.3 | 2.8 | 2.9 | 2.6-2.8 | |
| F(4, 3) 1-d, chunks of 8 | 7.3 | 2.8 | 1.5 | 1.5 | 1.5 | 1.3 | |

(* one input channel, 3 products per output: the choice point sends fewer than
WINOGRAD_MIN_CHANNELS channels to the GEMM anyway.) F(4x4) does not meet the contract in float32
at any size here, even with float64 weight and input transforms and 8-channel chunks, so float32
always runs F(2x2) / F(2, 3) (``tile_size``); float64 runs F(4x4) (its error is far inside the
float64 tolerance). ``m=4`` can be forced for measurements.
"""
import functools
from fractions import Fraction

import numba
import numpy as np

from .. import machine
from ._jit import blas_set_local_threads, gemm, jit, jit_fma, jit_parallel

f32 = np.float32  # constants of the transforms: float32, so float32 data stays float32

# Output channels per block of an item (M of one block stays in cache), and the rows of the
# reduction (channels x depth taps) summed apart before their sums are added (the accuracy
# contract: see the module docstring).
CO_BLOCK = 64
CHUNK_2D = 64
CHUNK_1D = 32

_POINTS = {2: (Fraction(0), Fraction(1), Fraction(-1)),
           4: (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-2))}


def _solve_columns(system, rhs):
    """Exact solution x of system @ x = rhs (consistent, full column rank), by elimination."""
    rows, cols = len(system), len(system[0])
    a = [list(system[i]) + [rhs[i]] for i in range(rows)]
    pivot_row = 0
    pivots = []
    for col in range(cols):
        pr = next((r for r in range(pivot_row, rows) if a[r][col] != 0), None)
        if pr is None:
            continue
        a[pivot_row], a[pr] = a[pr], a[pivot_row]
        inv = 1 / a[pivot_row][col]
        a[pivot_row] = [v * inv for v in a[pivot_row]]
        for r in range(rows):
            if r != pivot_row and a[r][col] != 0:
                f = a[r][col]
                a[r] = [v - f * p for v, p in zip(a[r], a[pivot_row])]
        pivots.append(col)
        pivot_row += 1
    x = [Fraction(0)] * cols
    for r, col in enumerate(pivots):
        x[col] = a[r][cols]
    return x


def toom_cook(m, r=3):
    """(A^T (m x alpha), G (alpha x r), B^T (alpha x alpha)) of F(m, r), alpha = m + r - 1, exact.

    A and G come from evaluating at the points (and infinity); G carries the interpolation
    denominators (the weight transform runs in float64). B^T is solved exactly from the bilinear
    identity sum_j A^T[i, j] G[j, k] B^T[j, l] = [l == i + k].
    """
    points = _POINTS[m]
    alpha = m + r - 1
    at = [[p ** i for p in points] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = []
    for j, p in enumerate(points):
        denom = Fraction(1)
        for k, q in enumerate(points):
            if k != j:
                denom *= p - q
        g.append([p ** k / denom for k in range(r)])
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    bt_cols = []
    for col in range(alpha):
        system = [[at[i][j] * g[j][k] for j in range(alpha)] for i in range(m) for k in range(r)]
        rhs = [Fraction(int(col == i + k)) for i in range(m) for k in range(r)]
        bt_cols.append(_solve_columns(system, rhs))
    bt = [[bt_cols[col][j] for col in range(alpha)] for j in range(alpha)]
    return at, g, bt


@functools.lru_cache(maxsize=None)
def _matrices(m, kernel):
    """float64 (A^T, G, B^T) of one axis: F(m, 3) for a 3-tap axis, identities for a 1-tap one."""
    if kernel == 1:
        one = np.ones((1, 1))
        return one, one, one
    at, g, bt = toom_cook(m, kernel)
    return tuple(np.array([[float(v) for v in row] for row in mat]) for mat in (at, g, bt))


def applies(w_shape, stride):
    """Whether this module runs a convolution with weight shape w_shape and these strides."""
    kh, kw = w_shape[3], w_shape[4]
    return (kh in (1, 3) and kw in (1, 3) and (kh, kw) != (1, 1)
            and stride[1] == 1 and stride[2] == 1)


def tile_size(dtype):
    """m of F(m, 3): 2 for float32 (the accuracy contract, see the module docstring), 4 for
    float64."""
    return 4 if np.dtype(dtype) == np.float64 else 2


def axis_tiles(out_len, m, dilation):
    """(first output of each tile, outputs in it) along one axis: phases of the dilation, each cut
    into tiles of m consecutive phase outputs (stride ``dilation`` in the output)."""
    firsts, counts = [], []
    for p in range(min(dilation, out_len)):
        n_phase = -(-(out_len - p) // dilation)
        for j in range(0, n_phase, m):
            firsts.append(p + dilation * j)
            counts.append(min(m, n_phase - j))
    return np.array(firsts, dtype=np.int64), np.array(counts, dtype=np.int64)


@jit_fma
def _bt_pass(src, s0, s_step, dst, d0, d_step, m, tb):
    """B^T of F(m, 3) along one axis, vectorised over tb lanes: the alpha = m + 2 input runs
    src[s0 + k*s_step:][:tb] give the alpha output runs dst[d0 + a*d_step:][:tb] (m = 1: a copy).
    The coefficients are B^T of ``toom_cook(m)`` (checked by tests/test_winograd.py)."""
    if m == 1:
        d = dst[d0:d0 + tb]
        s = src[s0:s0 + tb]
        for q in range(tb):
            d[q] = s[q]
        return
    x0 = src[s0:s0 + tb]
    x1 = src[s0 + s_step:s0 + s_step + tb]
    x2 = src[s0 + 2 * s_step:s0 + 2 * s_step + tb]
    x3 = src[s0 + 3 * s_step:s0 + 3 * s_step + tb]
    y0 = dst[d0:d0 + tb]
    y1 = dst[d0 + d_step:d0 + d_step + tb]
    y2 = dst[d0 + 2 * d_step:d0 + 2 * d_step + tb]
    y3 = dst[d0 + 3 * d_step:d0 + 3 * d_step + tb]
    if m == 2:
        for q in range(tb):
            y0[q] = x2[q] - x0[q]
            y1[q] = x1[q] + x2[q]
            y2[q] = x2[q] - x1[q]
            y3[q] = x3[q] - x1[q]
        return
    x4 = src[s0 + 4 * s_step:s0 + 4 * s_step + tb]
    x5 = src[s0 + 5 * s_step:s0 + 5 * s_step + tb]
    y4 = dst[d0 + 4 * d_step:d0 + 4 * d_step + tb]
    y5 = dst[d0 + 5 * d_step:d0 + 5 * d_step + tb]
    for q in range(tb):
        a1 = x1[q]
        a2 = x2[q]
        a3 = x3[q]
        a4 = x4[q]
        y0[q] = x0[q] - f32(1.5) * a1 - f32(2.0) * a2 + f32(1.5) * a3 + a4
        y1[q] = -a1 + f32(0.5) * a2 + f32(2.5) * a3 + a4
        y2[q] = a1 - f32(2.5) * a2 + f32(0.5) * a3 + a4
        y3[q] = -f32(2.0) * a1 - a2 + f32(2.0) * a3 + a4
        y4[q] = f32(0.5) * a1 - a2 - f32(0.5) * a3 + a4
        y5[q] = a1 - f32(1.5) * a2 - f32(2.0) * a3 + f32(1.5) * a4 + x5[q]


@jit_fma
def _at_pass(src, s0, s_step, dst, d0, d_step, m, tb):
    """A^T of F(m, 3) along one axis, vectorised over tb lanes: alpha input runs, m output runs."""
    if m == 1:
        d = dst[d0:d0 + tb]
        s = src[s0:s0 + tb]
        for q in range(tb):
            d[q] = s[q]
        return
    x0 = src[s0:s0 + tb]
    x1 = src[s0 + s_step:s0 + s_step + tb]
    x2 = src[s0 + 2 * s_step:s0 + 2 * s_step + tb]
    x3 = src[s0 + 3 * s_step:s0 + 3 * s_step + tb]
    y0 = dst[d0:d0 + tb]
    y1 = dst[d0 + d_step:d0 + d_step + tb]
    if m == 2:
        for q in range(tb):
            y0[q] = x0[q] + x1[q] + x2[q]
            y1[q] = x1[q] - x2[q] + x3[q]
        return
    x4 = src[s0 + 4 * s_step:s0 + 4 * s_step + tb]
    x5 = src[s0 + 5 * s_step:s0 + 5 * s_step + tb]
    y2 = dst[d0 + 2 * d_step:d0 + 2 * d_step + tb]
    y3 = dst[d0 + 3 * d_step:d0 + 3 * d_step + tb]
    for q in range(tb):
        p12 = x1[q] + x2[q]
        m12 = x1[q] - x2[q]
        a3 = x3[q]
        a4 = x4[q]
        y0[q] = x0[q] + p12 + a3 + a4
        y1[q] = m12 + f32(0.5) * a3 - f32(2.0) * a4
        y2[q] = p12 + f32(0.25) * a3 + f32(4.0) * a4
        y3[q] = m12 + f32(0.125) * a3 - f32(8.0) * a4 + x5[q]


@jit
def _item(item, xp, u, bias, has_bias, out, sd, pd, dd, dh, dw, groups, n_img,
          th_first, tw_first, mh, mw, tile_block, n_blocks, co_block, chunk, scratch, offsets,
          is_double):
    """One work item: group g, output depth plane od, block b of tiles (see the module docstring).

    xp is the input padded so that every tile's patch lies inside it (tile origin = the tile's
    first output index, in xp's coordinates); out is the output, or a padded one that every
    tile's outputs fit in. Output channels go in blocks of co_block (M stays in cache); the
    products sum ``chunk`` rows of the reduction at a time, each chunk's sum then added to M."""
    c_in, d_in, hp, wp = xp.shape[1], xp.shape[2], xp.shape[3], xp.shape[4]
    c_out, od_n, oh_p, ow_p = out.shape[1], out.shape[2], out.shape[3], out.shape[4]
    cout_g = c_out // groups
    cin_g = c_in // groups
    k_full = u.shape[3]
    kd_n = k_full // cin_g
    ah_n = mh + 2 if mh > 1 else 1
    aw_n = mw + 2 if mw > 1 else 1
    positions = ah_n * aw_n
    th_n = th_first.size
    tw_n = tw_first.size
    tiles_hw = th_n * tw_n
    b = item % n_blocks
    rest = item // n_blocks
    od = rest % od_n
    g = rest // od_n
    j0 = b * tile_block
    tb = min(tile_block, n_img * tiles_hw - j0)
    lanes = tile_block
    tid = numba.get_thread_id()
    buf = scratch[tid]
    src_off = offsets[tid, 0]
    dst_off = offsets[tid, 1]
    for q in range(tb):
        tile = j0 + q
        n = tile // tiles_hw
        rest = tile - n * tiles_hw
        th = rest // tw_n
        tw = rest - th * tw_n
        src_off[q] = n * c_in * d_in * hp * wp + th_first[th] * wp + tw_first[tw]
        dst_off[q] = n * c_out * od_n * oh_p * ow_p + th_first[th] * ow_p + tw_first[tw]
    # depth taps whose input plane exists: kd in [kd_lo, kd_hi)
    base = od * sd - pd
    kd_lo = 0
    while kd_lo < kd_n and base + kd_lo * dd < 0:
        kd_lo += 1
    kd_hi = kd_n
    while kd_hi > kd_lo and base + (kd_hi - 1) * dd >= d_in:
        kd_hi -= 1
    k_used = (kd_hi - kd_lo) * cin_g
    # buf: patch (positions runs) | temp (positions runs) | V (positions x k_full runs)
    #      | M (positions x co_block runs); a run is ``lanes`` long
    patch = buf[0:positions * lanes]
    temp = buf[positions * lanes:2 * positions * lanes]
    v_off = 2 * positions * lanes
    m_off = v_off + positions * k_full * lanes
    item_size = out.itemsize
    xf = xp.reshape(xp.size)
    of = out.reshape(out.size)
    if k_used > 0:
        for kd in range(kd_lo, kd_hi):
            d = base + kd * dd
            for c in range(cin_g):
                row = (kd - kd_lo) * cin_g + c
                start = ((g * cin_g + c) * d_in + d) * hp * wp
                for i in range(ah_n):
                    for j in range(aw_n):
                        s = start + i * dh * wp + j * dw
                        dst = patch[(i * aw_n + j) * lanes:(i * aw_n + j) * lanes + tb]
                        for q in range(tb):
                            dst[q] = xf[s + src_off[q]]
                for i in range(ah_n):
                    _bt_pass(patch, i * aw_n * lanes, lanes, temp, i * aw_n * lanes, lanes, mw, tb)
                for j in range(aw_n):
                    _bt_pass(temp, j * lanes, aw_n * lanes, buf, v_off + (j * k_full + row) * lanes,
                             aw_n * k_full * lanes, mh, tb)
    for co0 in range(0, cout_g, co_block):
        co_n = min(co_block, cout_g - co0)
        if k_used > 0:
            for t in range(positions):
                a_addr = u.ctypes.data + (((g * positions + t) * cout_g + co0) * k_full
                                          + kd_lo * cin_g) * item_size
                v_addr = buf.ctypes.data + (v_off + t * k_full * lanes) * item_size
                m_addr = buf.ctypes.data + (m_off + t * co_block * lanes) * item_size
                # the reduction in chunks, each summed apart and then added to M (accuracy)
                for k0 in range(0, k_used, chunk):
                    gemm(is_double, 0, 0, co_n, tb, min(chunk, k_used - k0), 1.0,
                         a_addr + k0 * item_size, k_full, v_addr + k0 * lanes * item_size, lanes,
                         1.0 if k0 > 0 else 0.0, m_addr, lanes)
        for co in range(co0, co0 + co_n):
            co_abs = g * cout_g + co
            bias_value = bias[co_abs] if has_bias else 0.0
            if k_used > 0:
                # A^T along W (M runs of this channel -> temp), then along H (temp -> patch)
                for i in range(ah_n):
                    _at_pass(buf, m_off + (i * aw_n * co_block + co - co0) * lanes,
                             co_block * lanes, temp, i * mw * lanes, lanes, mw, tb)
                for j in range(mw):
                    _at_pass(temp, j * lanes, mw * lanes, patch, j * lanes, mw * lanes, mh, tb)
            else:
                for q in range(mh * mw * lanes):
                    patch[q] = 0.0
            start = (co_abs * od_n + od) * oh_p * ow_p
            for i in range(mh):
                for j in range(mw):
                    s = start + i * dh * ow_p + j * dw
                    src = patch[(i * mw + j) * lanes:(i * mw + j) * lanes + tb]
                    for q in range(tb):
                        of[s + dst_off[q]] = src[q] + bias_value


@jit_parallel
def _forward_kernel(xp, u, bias, has_bias, out, sd, pd, dd, dh, dw, groups, n_img,
                    th_first, tw_first, mh, mw, tile_block, n_blocks, co_block, chunk, scratch,
                    offsets, is_double):
    for item in numba.prange(groups * out.shape[2] * n_blocks):
        blas_set_local_threads(1)
        _item(item, xp, u, bias, has_bias, out, sd, pd, dd, dh, dw, groups, n_img,
              th_first, tw_first, mh, mw, tile_block, n_blocks, co_block, chunk, scratch,
              offsets, is_double)
        blas_set_local_threads(0)


@jit_parallel
def _weight_kernel(w, g_h, g_w, groups, u):
    """u[g, t=(a, b), co, kd*cin_g + c] = sum_{i, j} g_h[a, i] g_w[b, j] w[g*cout_g + co, c, kd, i, j]
    in float64, rounded once; per output channel, vectorised over input channels."""
    c_out, cin_g, kd_n, kh_n, kw_n = w.shape
    ah_n = g_h.shape[0]
    aw_n = g_w.shape[0]
    cout_g = c_out // groups
    for co_abs in numba.prange(c_out):
        g = co_abs // cout_g
        co = co_abs - g * cout_g
        taps = np.empty((kh_n * kw_n, cin_g))
        rows = np.zeros((kh_n * aw_n, cin_g))
        acc = np.empty(cin_g)
        for kd in range(kd_n):
            for c in range(cin_g):
                for i in range(kh_n):
                    for j in range(kw_n):
                        taps[i * kw_n + j, c] = w[co_abs, c, kd, i, j]
            for i in range(kh_n):
                for b in range(aw_n):
                    r = rows[i * aw_n + b]
                    r[:] = 0.0
                    for j in range(kw_n):
                        coef = g_w[b, j]
                        if coef != 0.0:
                            s = taps[i * kw_n + j]
                            for c in range(cin_g):
                                r[c] += coef * s[c]
            for a in range(ah_n):
                for b in range(aw_n):
                    acc[:] = 0.0
                    for i in range(kh_n):
                        coef = g_h[a, i]
                        if coef != 0.0:
                            r = rows[i * aw_n + b]
                            for c in range(cin_g):
                                acc[c] += coef * r[c]
                    dst = u[g, a * aw_n + b, co, kd * cin_g:(kd + 1) * cin_g]
                    for c in range(cin_g):
                        dst[c] = acc[c]


class Plan:
    """The transforms and tile tables of one convolution shape (cheap: built per call)."""

    def __init__(self, w_shape, out_spatial, dilation, m):
        self.m = m
        kh, kw = w_shape[3], w_shape[4]
        self.mh = self.m if kh == 3 else 1
        self.mw = self.m if kw == 3 else 1
        self.g_h = _matrices(self.mh, kh)[1]
        self.g_w = _matrices(self.mw, kw)[1]
        self.th = axis_tiles(out_spatial[1], self.mh, dilation[1])
        self.tw = axis_tiles(out_spatial[2], self.mw, dilation[2])
        self.positions = self.g_h.shape[0] * self.g_w.shape[0]
        # extent of the tiles' outputs and of their input patches, per axis (H, W)
        self.out_extent = tuple(int(first.max()) + (m_ax - 1) * d + 1 for (first, _), m_ax, d in
                                ((self.th, self.mh, dilation[1]), (self.tw, self.mw, dilation[2])))
        self.in_extent = tuple(e + (k - 1) * d for e, k, d in
                               zip(self.out_extent, (kh, kw), dilation[1:]))
        self.full = all(int(c.min()) == m_ax for (_, c), m_ax in
                        ((self.th, self.mh), (self.tw, self.mw)))


def transform_weight(w, groups, plan):
    """U of the module docstring: (groups, positions, C_out/g, KD*C_in/g), w's dtype."""
    c_out, cin_g, kd_n = w.shape[:3]
    u = np.empty((groups, plan.positions, c_out // groups, kd_n * cin_g), dtype=w.dtype)
    _weight_kernel(w, plan.g_h, plan.g_w, groups, u)
    return u


def _tile_block(tiles, positions, k_full, cout_g, item_size, other_items, threads):
    """Tiles per block: V and M of one block within the L2 cache of a core (read at run time),
    64 to 256 lanes (BLAS runs short products slowly), in a number of blocks that shares evenly
    among the threads."""
    l2 = machine.cache_bytes()["l2"]
    per_tile = positions * (k_full + 2 + min(cout_g, CO_BLOCK)) * item_size
    block = max(64, min(256, l2 // max(1, per_tile)))
    n_blocks = -(-tiles // block)
    while (n_blocks * other_items) % threads and n_blocks * other_items < 8 * threads \
            and n_blocks < tiles:
        n_blocks += 1
    block = -(-tiles // n_blocks)
    if block > 8:
        block = -(-block // 8) * 8
    return block, -(-tiles // block)


def _padded_input(x, padding, extent):
    """x with H and W padded (zeros) or cropped so that index o + k of the result is input index
    o + k - padding, for o + k < extent."""
    n_img, c_in, d_in, h_in, w_in = x.shape
    ph, pw = padding[1], padding[2]
    if ph == 0 and pw == 0 and extent == (h_in, w_in):
        return x
    xp = np.zeros((n_img, c_in, d_in) + tuple(extent), dtype=x.dtype)
    h_lo, h_hi = max(0, -ph), min(h_in, extent[0] - ph)
    w_lo, w_hi = max(0, -pw), min(w_in, extent[1] - pw)
    if h_hi > h_lo and w_hi > w_lo:
        xp[:, :, :, h_lo + ph:h_hi + ph, w_lo + pw:w_hi + pw] = x[:, :, :, h_lo:h_hi, w_lo:w_hi]
    return xp


def conv_forward(x, w, bias, stride, padding, dilation, groups, out, m=None, chunk=None):
    """out = conv(x, w) + bias by Winograd (``applies`` must hold); m forces F(m) (2 or 4)."""
    if out.size == 0:
        return out
    if x.shape[1] == 0:
        out[...] = 0.0 if bias is None else bias.reshape(1, -1, 1, 1, 1)
        return out
    plan = Plan(w.shape, out.shape[2:], dilation, tile_size(x.dtype) if m is None else m)
    if chunk is None:
        chunk = CHUNK_2D if plan.mh > 1 and plan.mw > 1 else CHUNK_1D
    u = transform_weight(w, groups, plan)
    xp = _padded_input(x, padding, plan.in_extent)
    target = out
    if not plan.full:
        target = np.empty(out.shape[:3] + plan.out_extent, dtype=out.dtype)
    threads = numba.get_num_threads()
    c_out, cin_g, kd_n = w.shape[:3]
    tiles = x.shape[0] * plan.th[0].size * plan.tw[0].size
    block, n_blocks = _tile_block(tiles, plan.positions, kd_n * cin_g, c_out // groups,
                                  x.itemsize, groups * out.shape[2], threads)
    co_block = min(c_out // groups, CO_BLOCK)
    per_thread = block * plan.positions * (2 + kd_n * cin_g + co_block)
    scratch = np.empty((threads, per_thread), dtype=x.dtype)
    offsets = np.empty((threads, 2, block), dtype=np.int64)
    has_bias = bias is not None
    if bias is None:
        bias = np.zeros(1, dtype=x.dtype)
    _forward_kernel(xp, u, bias, has_bias, target, stride[0], padding[0], dilation[0],
                    dilation[1], dilation[2], groups, x.shape[0], plan.th[0], plan.tw[0],
                    plan.mh, plan.mw, block, n_blocks, co_block, chunk, scratch, offsets,
                    x.dtype == np.float64)
    if target is not out:
        out[...] = target[:, :, :, :out.shape[3], :out.shape[4]]
    return out


def flipped_weight(w, groups):
    """The weight of the input gradient as a convolution: spatially flipped, C_in and C_out
    swapped within each group; (C_in, C_out/g, KD, KH, KW), contiguous."""
    c_out, cin_g = w.shape[:2]
    cout_g = c_out // groups
    wg = w.reshape((groups, cout_g, cin_g) + w.shape[2:])[:, :, :, ::-1, ::-1, ::-1]
    return np.ascontiguousarray(wg.transpose(0, 2, 1, 3, 4, 5)).reshape(
        (groups * cin_g, cout_g) + w.shape[2:])


def conv_backward_input(dy, w, stride, padding, dilation, groups, dx, m=None):
    """dx = the input gradient of a unit-stride convolution: the convolution of dy with the flipped
    kernel, padded by dilation*(k-1) - padding (negative where the forward padded more)."""
    if dx.size == 0:
        return dx
    wf = flipped_weight(w, groups)
    pad = tuple(d * (k - 1) - p for d, k, p in zip(dilation, w.shape[2:], padding))
    return conv_forward(dy, wf, None, stride, pad, dilation, groups, dx, m)
