/* Single-precision GEMM against a B packed once into panels, for the small-row products of the
 * recurrent layers (see packed_gemm.c). */
#ifndef DLKERN_PACKED_GEMM_H
#define DLKERN_PACKED_GEMM_H
#include <stddef.h>
#include <stdint.h>

#define PACKED_NR 16

void dlkern_sgemm_packed(int m, int n, int k, uintptr_t a, int lda, uintptr_t bp, uintptr_t c,
                         int ldc, int accumulate);
int dlkern_packed_variant(void);
void dlkern_pack_transposed(int n, int k, uintptr_t w, int ldw, uintptr_t out);
void dlkern_pack_plain(int k, int n, uintptr_t b, int ldb, uintptr_t out);
void dlkern_packed_use_variant(int variant);

#endif
