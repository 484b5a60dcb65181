/* Helpers shared by the x86 kernel files; each carries the target attribute
 * of the least capable set that uses it, so it inlines into all of them. */
#ifndef LLAMA2_KERNELS_X86_H
#define LLAMA2_KERNELS_X86_H

#include <immintrin.h>
#include <stdint.h>

#include "quant_blocks.h"

#define L2_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define L2_TARGET_AVX512VNNI \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

/* AVX2 kernels the AVX-512 set reuses (VNNI gains nothing there) */
L2_TARGET_AVX2 void l2_quantize_act_avx2(const float *x, l2_block_q8_act *y, int64_t n);
L2_TARGET_AVX2 float l2_dot_f32_avx2(int64_t n, const float *w, const float *x);
L2_TARGET_AVX2 void l2_dot_f32_rows_avx2(int64_t n, const float *x, const float *rows, int64_t row_stride,
                                         int64_t n_rows, float scale, float *out);
L2_TARGET_AVX2 void l2_weighted_sum_f32_avx2(int64_t n, const float *a, const float *rows, int64_t row_stride,
                                             int64_t n_rows, float *y);
L2_TARGET_AVX2 void l2_gemm_q8_0_x8_avx2(int64_t n, const void *w, const l2_block_q8_act *x, int64_t x_stride,
                                         int32_t n_tokens, float *y, int64_t y_stride);
L2_TARGET_AVX2 void l2_gemm_q4_0_x8_avx2(int64_t n, const void *w, const l2_block_q8_act *x, int64_t x_stride,
                                         int32_t n_tokens, float *y, int64_t y_stride);
L2_TARGET_AVX2 void l2_gemm_q4_1_x8_avx2(int64_t n, const void *w, const l2_block_q8_act *x, int64_t x_stride,
                                         int32_t n_tokens, float *y, int64_t y_stride);

L2_TARGET_AVX2 static inline float l2_fp16_to_fp32(uint16_t h)
{
    return _cvtsh_ss(h);
}

L2_TARGET_AVX2 static inline float l2_hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

L2_TARGET_AVX2 static inline float l2_hmax_ps(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

L2_TARGET_AVX2 static inline int32_t l2_hsum_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* sum of 32 signed bytes */
L2_TARGET_AVX2 static inline int32_t l2_sum_i8(__m256i q)
{
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_set1_epi8(1), q);
    return l2_hsum_epi32(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

/* 16 bytes of a Q4 block -> 32 bytes 0..15 in weight order (low nibbles are
 * weights 0..15, high nibbles 16..31) */
L2_TARGET_AVX2 static inline __m256i l2_unpack_nibbles(const uint8_t *qs)
{
    const __m128i b = _mm_loadu_si128((const __m128i *)qs);
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(b), _mm_srli_epi16(b, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

#endif
