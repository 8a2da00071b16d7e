/* C[m, n] (+)= A[m, k] @ B[k, n], single precision, row-major A and C (rows lda / ldc floats
 * apart), B packed into panels of PACKED_NR (16) columns:
 *
 *     bp[p * k * 16 + kk * 16 + j] = B[kk, p * 16 + j]     (zero where p * 16 + j >= n)
 *
 * so that one step of k reads 16 contiguous floats of B. Written for the recurrent layers' per-step
 * product (a few batch rows times a weight matrix packed once per layer call), where BLAS's
 * general sgemm reaches 35-70% of a core's peak at 1-16 rows and this reaches 75-95% (measured on
 * a Zen 4 core: 2048 x 512 weight, 4 rows 36 -> 99 GFLOP/s, 8 rows 45 -> 106, 16 rows 70 -> 105).
 * Sums run over k in order, with one FMA per term: the rounding of a BLAS kernel. An A of more
 * than PACKED_SMALL_A elements is copied block by block (PACKED_KC columns) into tiles whose rows
 * of one k are adjacent: rows a power of two apart would share one L1 set (16 rows x 1024:
 * 59 -> 93 GFLOP/s).
 *
 * Three variants of one source (packed_gemm_impl.h), chosen at run time from the CPU's features:
 * AVX-512 (tiles of 14 rows x one 16-float vector), AVX2 + FMA (6 rows x two 8-float vectors) and
 * a portable one (3 rows x four 4-float vectors). dlkern_packed_use_variant lets the tests run
 * every variant the CPU can execute. */
#include <stdlib.h>

#include "packed_gemm.h"

/* Columns of B per k-block, and the largest A (m * k floats) read panel by panel. */
#define PACKED_KC 256
#define PACKED_SMALL_A 4096

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PACKED_X86 1

typedef float pg_v16 __attribute__((vector_size(64), aligned(4)));
#define PREFIX pg_avx512_
#define V pg_v16
#define VL 16
#define MR 14
#define TARGET __attribute__((target("avx512f,avx512vl,avx2,fma")))
#include "packed_gemm_impl.h"
#undef PREFIX
#undef V
#undef VL
#undef MR
#undef TARGET

typedef float pg_v8 __attribute__((vector_size(32), aligned(4)));
#define PREFIX pg_avx2_
#define V pg_v8
#define VL 8
#define MR 6
#define TARGET __attribute__((target("avx2,fma")))
#include "packed_gemm_impl.h"
#undef PREFIX
#undef V
#undef VL
#undef MR
#undef TARGET
#endif

typedef float pg_v4 __attribute__((vector_size(16), aligned(4)));
#define PREFIX pg_base_
#define V pg_v4
#define VL 4
#define MR 3
#define TARGET
#include "packed_gemm_impl.h"
#undef PREFIX
#undef V
#undef VL
#undef MR
#undef TARGET

/* 2: AVX-512, 1: AVX2 + FMA, 0: portable; -1 until first asked. */
static int pg_variant = -1;

static int pg_best_variant(void)
{
#ifdef PACKED_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
#endif
    return 0;
}

int dlkern_packed_variant(void)
{
    if (pg_variant < 0)
        pg_variant = pg_best_variant();
    return pg_variant;
}

void dlkern_packed_use_variant(int variant)
{
    int best = pg_best_variant();
    pg_variant = variant < 0 || variant > best ? best : variant;
}

void dlkern_sgemm_packed(int m, int n, int k, uintptr_t a, int lda, uintptr_t bp, uintptr_t c,
                         int ldc, int accumulate)
{
    const float *pa = (const float *)a;
    const float *pb = (const float *)bp;
    float *pc = (float *)c;
    float stack[32 * PACKED_KC];  /* 32 KB: A blocks of up to 32 rows on the stack */
    float *ap = NULL;
    if (m <= 0 || n <= 0)
        return;
    if ((long)m * k > PACKED_SMALL_A)  /* the blocked path packs A's blocks */
        ap = m <= 32 ? stack : (float *)malloc(sizeof(float) * (size_t)m * PACKED_KC);
    switch (dlkern_packed_variant()) {
#ifdef PACKED_X86
    case 2: pg_avx512_gemm(m, n, k, pa, lda, pb, pc, ldc, accumulate, ap); break;
    case 1: pg_avx2_gemm(m, n, k, pa, lda, pb, pc, ldc, accumulate, ap); break;
#endif
    default: pg_base_gemm(m, n, k, pa, lda, pb, pc, ldc, accumulate, ap); break;
    }
    if (ap != NULL && ap != stack)
        free(ap);
}

void dlkern_pack_transposed(int n, int k, uintptr_t w, int ldw, uintptr_t out)
{
    /* out[p, kk, j] = w[16p + j, kk] (zero for 16p + j >= n). Each row of w is read front to
     * back (a stream the prefetcher follows, where reading 16 rows a cache line at a time waits
     * on memory when w is not in cache: 1 MB in 0.11-0.19 ms against 0.19-0.75 here) and
     * scattered into its panel, which stays in cache while its 16 rows pass. */
    const float *src = (const float *)w;
    float *dst = (float *)out;
    int panels = (n + PACKED_NR - 1) / PACKED_NR;
    for (int p = 0; p < panels; p++) {
        float *panel = dst + (long)p * k * PACKED_NR;
        for (int j = 0; j < PACKED_NR; j++) {
            int row = p * PACKED_NR + j;
            if (row < n) {
                const float *wr = src + (long)row * ldw;
                for (int kk = 0; kk < k; kk++) panel[(long)kk * PACKED_NR + j] = wr[kk];
            } else {
                for (int kk = 0; kk < k; kk++) panel[(long)kk * PACKED_NR + j] = 0.0f;
            }
        }
    }
}

void dlkern_pack_plain(int k, int n, uintptr_t b, int ldb, uintptr_t out)
{
    /* out[p, kk, j] = b[kk, 16p + j] (zero for 16p + j >= n): each row of b is read front to
     * back and its 16-float runs spread over the panels. */
    const float *src = (const float *)b;
    float *dst = (float *)out;
    int panels = (n + PACKED_NR - 1) / PACKED_NR;
    for (int kk = 0; kk < k; kk++) {
        const float *row = src + (long)kk * ldb;
        for (int p = 0; p < panels; p++) {
            float *o = dst + ((long)p * k + kk) * PACKED_NR;
            int valid = n - p * PACKED_NR < PACKED_NR ? n - p * PACKED_NR : PACKED_NR;
            for (int j = 0; j < valid; j++) o[j] = row[p * PACKED_NR + j];
            for (int j = valid; j < PACKED_NR; j++) o[j] = 0.0f;
        }
    }
}
