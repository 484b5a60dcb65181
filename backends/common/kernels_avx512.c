/* AVX-512 VNNI kernels (Ice Lake, Sapphire Rapids, Zen 4 and later).
 *
 * _mm256_dpbusd_epi32 multiplies unsigned by signed bytes and adds each group
 * of four products straight into an int32 lane, replacing AVX2's
 * maddubs + madd pair (and its int16 intermediate). The 256-bit form (AVX512VL)
 * keeps one 32-weight block per register, like the AVX2 set, so the block
 * scale stays one broadcast; activation quantization and the f32 dot product
 * gain nothing from VNNI and are the AVX2 ones.
 *
 * Unverified on the development machine (AMD Zen 3 has no AVX-512): its
 * tests skip there and run wherever CPUID reports avx512vnni.
 */
#include <stddef.h>

#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include "kernels_x86.h"

L2_TARGET_AVX512VNNI static float dot_q8_0_vnni(int64_t n, const l2_block_q8_0 *w, const l2_block_q8_act *x)
{
    const int64_t nb = n / L2_QK;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)w[b].qs);
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)w[b + 1].qs);
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)x[b].qs);
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)x[b + 1].qs);
        /* dpbusd wants an unsigned operand: move each weight's sign onto the activation */
        const __m256i p0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(w0), _mm256_sign_epi8(x0, w0));
        const __m256i p1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(w1), _mm256_sign_epi8(x1, w1));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(l2_fp16_to_fp32(w[b].d) * x[b].d), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(l2_fp16_to_fp32(w[b + 1].d) * x[b + 1].d),
                               _mm256_cvtepi32_ps(p1), acc1);
    }
    for (; b < nb; b++) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)w[b].qs);
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)x[b].qs);
        const __m256i p0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(w0), _mm256_sign_epi8(x0, w0));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(l2_fp16_to_fp32(w[b].d) * x[b].d), _mm256_cvtepi32_ps(p0), acc0);
    }
    return l2_hsum_ps(_mm256_add_ps(acc0, acc1));
}

/* Q4_0 and Q4_1 share the integer part; OFFSET_EXPR(block, dw) adds the type's
 * offset term through x[b].s = dx * sum(qx) (see kernels_avx2.c). */
#define L2_VNNI_Q4_BODY(OFFSET_EXPR)                                                                 \
    const int64_t nb = n / L2_QK;                                                                    \
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                                   \
    float offset = 0.0f;                                                                             \
    int64_t b = 0;                                                                                   \
    for (; b + 1 < nb; b += 2) {                                                                     \
        const __m256i p0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), l2_unpack_nibbles(w[b].qs),   \
                                               _mm256_loadu_si256((const __m256i *)x[b].qs));        \
        const __m256i p1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), l2_unpack_nibbles(w[b + 1].qs), \
                                               _mm256_loadu_si256((const __m256i *)x[b + 1].qs));    \
        const float d0 = l2_fp16_to_fp32(w[b].d), d1 = l2_fp16_to_fp32(w[b + 1].d);                  \
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * x[b].d), _mm256_cvtepi32_ps(p0), acc0);           \
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1 * x[b + 1].d), _mm256_cvtepi32_ps(p1), acc1);       \
        offset += OFFSET_EXPR(b, d0) + OFFSET_EXPR(b + 1, d1);                                       \
    }                                                                                                \
    for (; b < nb; b++) {                                                                            \
        const __m256i p0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), l2_unpack_nibbles(w[b].qs),   \
                                               _mm256_loadu_si256((const __m256i *)x[b].qs));        \
        const float d0 = l2_fp16_to_fp32(w[b].d);                                                    \
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * x[b].d), _mm256_cvtepi32_ps(p0), acc0);           \
        offset += OFFSET_EXPR(b, d0);                                                                \
    }                                                                                                \
    return l2_hsum_ps(_mm256_add_ps(acc0, acc1)) + offset;

#define L2_Q4_0_OFFSET(b, d) (-8.0f * (d) * x[b].s)
#define L2_Q4_1_OFFSET(b, d) (l2_fp16_to_fp32(w[b].m) * x[b].s)

L2_TARGET_AVX512VNNI static float dot_q4_0_vnni(int64_t n, const l2_block_q4_0 *w, const l2_block_q8_act *x)
{
    L2_VNNI_Q4_BODY(L2_Q4_0_OFFSET)
}

L2_TARGET_AVX512VNNI static float dot_q4_1_vnni(int64_t n, const l2_block_q4_1 *w, const l2_block_q8_act *x)
{
    L2_VNNI_Q4_BODY(L2_Q4_1_OFFSET)
}

static const l2_kernels kernels_avx512vnni = {
    .isa = "avx512vnni",
    .quantize_act = l2_quantize_act_avx2,
    .dot_q8_0 = dot_q8_0_vnni,
    .dot_q4_0 = dot_q4_0_vnni,
    .dot_q4_1 = dot_q4_1_vnni,
    .dot_f32 = l2_dot_f32_avx2,
    .dot_f32_rows = l2_dot_f32_rows_avx2,
    .weighted_sum_f32 = l2_weighted_sum_f32_avx2,
    /* the AVX2 GEMMs until VNNI ones are written and measured on a CPU that has it */
    .gemm_q8_0_x8 = l2_gemm_q8_0_x8_avx2,
    .gemm_q4_0_x8 = l2_gemm_q4_0_x8_avx2,
    .gemm_q4_1_x8 = l2_gemm_q4_1_x8_avx2,
};

const l2_kernels *l2_kernels_avx512vnni(void)
{
    return &kernels_avx512vnni;
}

#else

const l2_kernels *l2_kernels_avx512vnni(void)
{
    return NULL;
}

#endif
