/* One instruction-set variant of the packed single-precision GEMM (packed_gemm.c includes this
 * file once per variant). Before the include the includer defines:
 *   PREFIX  the variant's name prefix      V   its vector type (VL floats)
 *   VL      floats per vector              MR  rows of C per register tile
 *   TARGET  the variant's function attribute (a target() attribute, or nothing)
 * A register tile is MR rows x PACKED_NR (16) columns of C: MR * (16 / VL) vector accumulators,
 * one vector load of B per k shared by the tile's rows, one broadcast of A per row and k (folded
 * into the FMA on AVX-512). */
#define PG_CAT2(a, b) a##b
#define PG_CAT(a, b) PG_CAT2(a, b)
#define PG_FN(name) PG_CAT(PREFIX, name)
#define PG_NV (PACKED_NR / VL)

/* C[0:mr, 0:16 * np_] (+)= A[0:mr, 0:kc] @ (np_ panels side by side)[0:kc, :]; the last
 * panel may be partial (nvalid columns). A[r, k] is a[r * lda + k * ks]: rows of A as given
 * (ks = 1), or a block of A packed k-major (lda = 1, ks = mr). mr and np_ are constants at every call site (the
 * switches below), so the accumulators live in registers. Several panels for one to three rows
 * give the FMAs independent accumulators to hide their latency (one row on one panel would wait
 * on a single dependency chain). */
static inline __attribute__((always_inline)) TARGET void PG_FN(tile)(
    const int mr, const int np_, int kc, const float *a, int lda, const int ks, const float *panel,
    long panel_stride, float *c, int ldc, int nvalid, int accumulate)
{
    V acc[MR][4][PG_NV];
    for (int r = 0; r < mr; r++)
        for (int q = 0; q < np_; q++)
            for (int v = 0; v < PG_NV; v++) acc[r][q][v] = (V){0};
    for (int k = 0; k < kc; k++) {
        V b[4][PG_NV];
        for (int q = 0; q < np_; q++)
            for (int v = 0; v < PG_NV; v++)
                b[q][v] = *(const V *)(panel + q * panel_stride + (long)k * PACKED_NR + v * VL);
        for (int r = 0; r < mr; r++) {
            float s = a[(long)r * lda + (long)k * ks];
            for (int q = 0; q < np_; q++)
                for (int v = 0; v < PG_NV; v++) acc[r][q][v] += b[q][v] * s;
        }
    }
    for (int r = 0; r < mr; r++) {
        for (int q = 0; q < np_; q++) {
            float *cr = c + (long)r * ldc + q * PACKED_NR;
            int valid = q == np_ - 1 ? nvalid : PACKED_NR;
            if (valid == PACKED_NR) {
                for (int v = 0; v < PG_NV; v++) {
                    if (accumulate) *(V *)(cr + v * VL) += acc[r][q][v];
                    else *(V *)(cr + v * VL) = acc[r][q][v];
                }
            } else {
                for (int j = 0; j < valid; j++) {
                    float x = acc[r][q][j / VL][j % VL];
                    cr[j] = accumulate ? cr[j] + x : x;
                }
            }
        }
    }
}

/* Rows [0, m) of C in tiles of MR rows, over the k range [k0, k0 + kc) of panels
 * [p, p + np_) (np_ > 1 only for m <= 3). ap: that k range of A packed by PG_FN(pack_a), or
 * NULL to read A's rows in place. */
static inline __attribute__((always_inline)) TARGET void PG_FN(rows)(
    int m, int n, int k, int k0, int kc, int p, int np_, const float *a, int lda,
    const float *ap, const float *bp, float *c, int ldc, int accumulate)
{
    const float *panel = bp + (long)p * k * PACKED_NR + (long)k0 * PACKED_NR;
    long stride = (long)k * PACKED_NR;
    int last = p + np_ - 1;
    int nvalid = n - last * PACKED_NR < PACKED_NR ? n - last * PACKED_NR : PACKED_NR;
    float *cp = c + (long)p * PACKED_NR;
    if (np_ == 4 && m == 1) {
        PG_FN(tile)(1, 4, kc, a + k0, lda, 1, panel, stride, cp, ldc, nvalid, accumulate);
        return;
    }
    if (np_ == 2 && m <= 3) {
        switch (m) {
        case 1: PG_FN(tile)(1, 2, kc, a + k0, lda, 1, panel, stride, cp, ldc, nvalid, accumulate);
            break;
        case 2: PG_FN(tile)(2, 2, kc, a + k0, lda, 1, panel, stride, cp, ldc, nvalid, accumulate);
            break;
        case 3: PG_FN(tile)(3, 2, kc, a + k0, lda, 1, panel, stride, cp, ldc, nvalid, accumulate);
            break;
        }
        return;
    }
    for (int m0 = 0; m0 < m; m0 += MR) {
        int mr = m - m0 < MR ? m - m0 : MR;
        float *ct = cp + (long)m0 * ldc;
        /* A packed: tiles of mr rows, k-major (row stride 1, k stride mr); else A's rows */
        const float *at = ap != NULL ? ap + (long)m0 * kc : a + (long)m0 * lda + k0;
        int packed = ap != NULL;
        switch (mr) {
#define PG_CASE(i) case i: \
            if (packed) \
                PG_FN(tile)(i, 1, kc, at, 1, i, panel, stride, ct, ldc, nvalid, accumulate); \
            else \
                PG_FN(tile)(i, 1, kc, at, lda, 1, panel, stride, ct, ldc, nvalid, accumulate); \
            break;
        PG_CASE(1) PG_CASE(2) PG_CASE(3)
#if MR > 3
        PG_CASE(4) PG_CASE(5) PG_CASE(6)
#endif
#if MR > 6
        PG_CASE(7) PG_CASE(8) PG_CASE(9) PG_CASE(10) PG_CASE(11) PG_CASE(12) PG_CASE(13)
        PG_CASE(14)
#endif
#undef PG_CASE
        }
    }
}

/* Columns [k0, k0 + kc) of A's m rows into ap, tile after tile of MR rows, each k-major
 * (ap[m0 * kc + kk * mr + r] = A[m0 + r, k0 + kk]): a tile's rows of one k are adjacent, where
 * rows of A a power of two apart (lda = 1024 floats) would all fall in one set of the L1 cache. */
static TARGET void PG_FN(pack_a)(int m, int k0, int kc, const float *a, int lda, float *ap)
{
    for (int m0 = 0; m0 < m; m0 += MR) {
        int mr = m - m0 < MR ? m - m0 : MR;
        float *at = ap + (long)m0 * kc;
        for (int r = 0; r < mr; r++) {
            const float *row = a + (long)(m0 + r) * lda + k0;
            for (int kk = 0; kk < kc; kk++) at[(long)kk * mr + r] = row[kk];
        }
    }
}

static TARGET void PG_FN(gemm)(int m, int n, int k, const float *a, int lda, const float *bp,
                               float *c, int ldc, int accumulate, float *ap)
{
    int panels = (n + PACKED_NR - 1) / PACKED_NR;
    int group = m == 1 ? 4 : m <= 3 ? 2 : 1;  /* panels per tile */
    if (k == 0) {
        if (!accumulate)
            for (int r = 0; r < m; r++)
                for (int j = 0; j < n; j++) c[(long)r * ldc + j] = 0.0f;
        return;
    }
    if ((long)m * k <= PACKED_SMALL_A) {
        /* A fits in L1 beside the panels: each panel is read once, front to back (the order the
         * hardware prefetcher follows best when B streams from L3 or memory). */
        for (int p = 0; p < panels;) {
            int np_ = panels - p >= group ? group : 1;
            for (int k0 = 0; k0 < k; k0 += PACKED_KC) {
                int kc = k - k0 < PACKED_KC ? k - k0 : PACKED_KC;
                PG_FN(rows)(m, n, k, k0, kc, p, np_, a, lda, NULL, bp, c, ldc,
                            accumulate || k0 > 0);
            }
            p += np_;
        }
        return;
    }
    /* Larger A: blocks of PACKED_KC columns of A, packed (ap: m * PACKED_KC floats from the
     * caller), stay in L1 while every panel passes. */
    for (int k0 = 0; k0 < k; k0 += PACKED_KC) {
        int kc = k - k0 < PACKED_KC ? k - k0 : PACKED_KC;
        if (ap != NULL)
            PG_FN(pack_a)(m, k0, kc, a, lda, ap);
        for (int p = 0; p < panels;) {
            int np_ = panels - p >= group ? group : 1;
            PG_FN(rows)(m, n, k, k0, kc, p, np_, a, lda, ap, bp, c, ldc, accumulate || k0 > 0);
            p += np_;
        }
    }
}

#undef PG_FN
#undef PG_CAT
#undef PG_CAT2
#undef PG_NV
