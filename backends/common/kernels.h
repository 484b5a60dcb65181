/* Dot-product kernels of the CPU backends, one set per instruction-set level.
 * The scalar set is portable and is the oracle the SIMD sets are tested against.
 * n is the row length in weights and is always a multiple of L2_QK. */
#ifndef LLAMA2_KERNELS_H
#define LLAMA2_KERNELS_H

#include <stdint.h>
#include "quant_blocks.h"
#include "repack.h"

/* y[t * y_stride + r] = row r . x[t], r < 8, t < n_tokens, over one group of eight
 * interleaved rows (repack.h); activation rows are x_stride blocks apart. */
typedef void (*l2_gemm_x8_fn)(int64_t n, const void *w, const l2_block_q8_act *x, int64_t x_stride,
                              int32_t n_tokens, float *y, int64_t y_stride);

typedef struct {
    const char *isa; /* "scalar", "avx2", "avx512vnni", "neon" */
    void (*quantize_act)(const float *x, l2_block_q8_act *y, int64_t n);
    float (*dot_q8_0)(int64_t n, const l2_block_q8_0 *w, const l2_block_q8_act *x);
    float (*dot_q4_0)(int64_t n, const l2_block_q4_0 *w, const l2_block_q8_act *x);
    float (*dot_q4_1)(int64_t n, const l2_block_q4_1 *w, const l2_block_q8_act *x);
    float (*dot_f32)(int64_t n, const float *w, const float *x); /* n any length */
    /* Attention over a cache of float rows (n any length, rows row_stride floats apart):
     * out[r] = scale * (x . row r) for r < n_rows (the scores), and
     * y[i] = sum over r of a[r] * row r [i] for i < n (the weighted sum of values). */
    void (*dot_f32_rows)(int64_t n, const float *x, const float *rows, int64_t row_stride, int64_t n_rows,
                         float scale, float *out);
    void (*weighted_sum_f32)(int64_t n, const float *a, const float *rows, int64_t row_stride, int64_t n_rows,
                             float *y);
    l2_gemm_x8_fn gemm_q8_0_x8, gemm_q4_0_x8, gemm_q4_1_x8;
} l2_kernels;

const l2_kernels *l2_kernels_scalar(void);
/* The fastest set this CPU supports (CPUID at run time); LLAMA2_ISA=scalar|avx2|... forces one. */
const l2_kernels *l2_kernels_best(void);
/* The x86 tables themselves, without a CPUID check (NULL in non-x86 builds). */
const l2_kernels *l2_kernels_avx2(void);
const l2_kernels *l2_kernels_avx512vnni(void);

#endif
