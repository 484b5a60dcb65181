/* AVX2 + FMA + F16C kernels (Haswell, Zen and later).
 *
 * Compiled with function-level target attributes rather than -mavx2, so one
 * build (also with LLAMA2_NATIVE=OFF) runs on older CPUs: nothing here is
 * called unless kernels_select.c found AVX2, FMA and F16C with CPUID.
 *
 * The integer dot products follow the developers' guide: per block of 32,
 * _mm256_maddubs_epi16 multiplies unsigned by signed bytes and adds pairs
 * into int16, _mm256_madd_epi16 against ones widens to eight int32 sums,
 * and one FMA applies the product of the two block scales.
 *  - Q4_0 and Q4_1 nibbles are unsigned (0..15), so they go into maddubs as
 *    they are; Q4_0's -8 offset and Q4_1's min are folded in afterwards with
 *    the activation block's s = d * sum(q): sum(d(q-8) * dx qx) = d dx sum(q qx) - 8 d s.
 *  - Q8_0 weights are signed: the sign of each weight is moved onto the
 *    activation (_mm256_sign_epi8), which makes the weight operand |w| <= 128.
 *    No int16 pair overflows: 2 * 128 * 127 < 32768.
 */
#include <stddef.h>

#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#include "kernels_x86.h"

L2_TARGET_AVX2 void l2_quantize_act_avx2(const float *x, l2_block_q8_act *y, int64_t n)
{
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    const __m256 half = _mm256_set1_ps(0.5f);
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int64_t b = 0; b < n / L2_QK; b++) {
        const float *xb = x + b * L2_QK;
        __m256 v[4];
        __m256 amax = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(xb + 8 * i);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_bit, v[i]));
        }
        const float max_abs = l2_hmax_ps(amax);
        const float d = max_abs / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q32[4];
        for (int i = 0; i < 4; i++) {
            /* roundf() semantics (ties away from zero), so the scalar set and
             * this one quantize to identical bytes: truncate, then step away
             * from zero where the dropped fraction is at least one half. */
            const __m256 s = _mm256_mul_ps(v[i], vid);
            const __m256 t = _mm256_round_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            const __m256 frac = _mm256_andnot_ps(sign_bit, _mm256_sub_ps(s, t));
            const __m256 up = _mm256_and_ps(_mm256_cmp_ps(frac, half, _CMP_GE_OQ),
                                            _mm256_or_ps(one, _mm256_and_ps(sign_bit, s)));
            q32[i] = _mm256_cvttps_epi32(_mm256_add_ps(t, up));
        }
        /* packs interleave 128-bit lanes; the permute puts the bytes back in order */
        const __m256i q16a = _mm256_packs_epi32(q32[0], q32[1]);
        const __m256i q16b = _mm256_packs_epi32(q32[2], q32[3]);
        __m256i q8 = _mm256_packs_epi16(q16a, q16b);
        q8 = _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[b].qs, q8);
        y[b].d = d;
        y[b].s = d * (float)l2_sum_i8(q8);
    }
}

L2_TARGET_AVX2 static float dot_q8_0_avx2(int64_t n, const l2_block_q8_0 *w, const l2_block_q8_act *x)
{
    const int64_t nb = n / L2_QK;
    const __m256i ones = _mm256_set1_epi16(1);
    /* two accumulators so consecutive blocks' FMAs do not wait on each other */
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)w[b].qs);
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)w[b + 1].qs);
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)x[b].qs);
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)x[b + 1].qs);
        const __m256i p0 = _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0)), ones);
        const __m256i p1 = _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_sign_epi8(w1, w1), _mm256_sign_epi8(x1, w1)), ones);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(l2_fp16_to_fp32(w[b].d) * x[b].d), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(l2_fp16_to_fp32(w[b + 1].d) * x[b + 1].d),
                               _mm256_cvtepi32_ps(p1), acc1);
    }
    for (; b < nb; b++) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)w[b].qs);
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)x[b].qs);
        const __m256i p0 = _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0)), ones);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(l2_fp16_to_fp32(w[b].d) * x[b].d), _mm256_cvtepi32_ps(p0), acc0);
    }
    return l2_hsum_ps(_mm256_add_ps(acc0, acc1));
}

/* The 4-bit dot product, shared by Q4_0 and Q4_1: sum over blocks of
 * dw * dx * sum(q * qx) with q in 0..15, plus OFFSET_EXPR(block, dw), the
 * type's offset term (Q4_0's -8, Q4_1's min) applied through x[b].s. */
#define L2_DOT_Q4_BODY(BLOCK_T, OFFSET_EXPR)                                                          \
    const int64_t nb = n / L2_QK;                                                                     \
    const __m256i ones = _mm256_set1_epi16(1);                                                        \
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                                    \
    float offset = 0.0f;                                                                              \
    int64_t b = 0;                                                                                    \
    for (; b + 1 < nb; b += 2) {                                                                      \
        const __m256i p0 = _mm256_madd_epi16(                                                         \
            _mm256_maddubs_epi16(l2_unpack_nibbles(w[b].qs),                                          \
                                 _mm256_loadu_si256((const __m256i *)x[b].qs)), ones);                \
        const __m256i p1 = _mm256_madd_epi16(                                                         \
            _mm256_maddubs_epi16(l2_unpack_nibbles(w[b + 1].qs),                                      \
                                 _mm256_loadu_si256((const __m256i *)x[b + 1].qs)), ones);            \
        const float d0 = l2_fp16_to_fp32(w[b].d), d1 = l2_fp16_to_fp32(w[b + 1].d);                   \
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * x[b].d), _mm256_cvtepi32_ps(p0), acc0);            \
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1 * x[b + 1].d), _mm256_cvtepi32_ps(p1), acc1);        \
        offset += OFFSET_EXPR(b, d0) + OFFSET_EXPR(b + 1, d1);                                        \
    }                                                                                                 \
    for (; b < nb; b++) {                                                                             \
        const __m256i p0 = _mm256_madd_epi16(                                                         \
            _mm256_maddubs_epi16(l2_unpack_nibbles(w[b].qs),                                          \
                                 _mm256_loadu_si256((const __m256i *)x[b].qs)), ones);                \
        const float d0 = l2_fp16_to_fp32(w[b].d);                                                     \
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * x[b].d), _mm256_cvtepi32_ps(p0), acc0);            \
        offset += OFFSET_EXPR(b, d0);                                                                 \
    }                                                                                                 \
    return l2_hsum_ps(_mm256_add_ps(acc0, acc1)) + offset;

#define L2_Q4_0_OFFSET(b, d) (-8.0f * (d) * x[b].s)
#define L2_Q4_1_OFFSET(b, d) (l2_fp16_to_fp32(w[b].m) * x[b].s)

L2_TARGET_AVX2 static float dot_q4_0_avx2(int64_t n, const l2_block_q4_0 *w, const l2_block_q8_act *x)
{
    L2_DOT_Q4_BODY(l2_block_q4_0, L2_Q4_0_OFFSET)
}

L2_TARGET_AVX2 static float dot_q4_1_avx2(int64_t n, const l2_block_q4_1 *w, const l2_block_q8_act *x)
{
    L2_DOT_Q4_BODY(l2_block_q4_1, L2_Q4_1_OFFSET)
}

L2_TARGET_AVX2 float l2_dot_f32_avx2(int64_t n, const float *w, const float *x)
{
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8 * k), _mm256_loadu_ps(x + i + 8 * k), acc[k]);
    for (; i + 8 <= n; i += 8)
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), acc[0]);
    float sum = l2_hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++)
        sum += w[i] * x[i];
    return sum;
}

/* Four rows at a time: x is loaded once for the four, and one transposing
 * horizontal sum (three hadds and a 128-bit add) gives all four dot products. */
L2_TARGET_AVX2 void l2_dot_f32_rows_avx2(int64_t n, const float *x, const float *rows, int64_t row_stride,
                                         int64_t n_rows, float scale, float *out)
{
    const __m128 vscale = _mm_set1_ps(scale);
    int64_t r = 0;
    for (; r + 4 <= n_rows; r += 4) {
        const float *r0 = rows + r * row_stride, *r1 = r0 + row_stride, *r2 = r1 + row_stride,
                    *r3 = r2 + row_stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
               a3 = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
            const __m256 xv = _mm256_loadu_ps(x + i);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0 + i), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r1 + i), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r2 + i), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r3 + i), xv, a3);
        }
        /* lanes: [r0 r1 r2 r3 | r0 r1 r2 r3] partial sums */
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
        __m128 sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        if (i < n) {
            float tail[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (; i < n; i++) {
                tail[0] += r0[i] * x[i];
                tail[1] += r1[i] * x[i];
                tail[2] += r2[i] * x[i];
                tail[3] += r3[i] * x[i];
            }
            sums = _mm_add_ps(sums, _mm_loadu_ps(tail));
        }
        _mm_storeu_ps(out + r, _mm_mul_ps(sums, vscale));
    }
    for (; r < n_rows; r++)
        out[r] = scale * l2_dot_f32_avx2(n, rows + r * row_stride, x);
}

/* Up to 64 outputs stay in eight accumulators across all the rows, so each row
 * costs its loads and FMAs only, not a load and a store of y per element. */
L2_TARGET_AVX2 void l2_weighted_sum_f32_avx2(int64_t n, const float *a, const float *rows, int64_t row_stride,
                                             int64_t n_rows, float *y)
{
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m256 acc[8];
        for (int j = 0; j < 8; j++)
            acc[j] = _mm256_setzero_ps();
        for (int64_t r = 0; r < n_rows; r++) {
            const __m256 ar = _mm256_set1_ps(a[r]);
            const float *row = rows + r * row_stride + i;
            for (int j = 0; j < 8; j++)
                acc[j] = _mm256_fmadd_ps(ar, _mm256_loadu_ps(row + 8 * j), acc[j]);
        }
        for (int j = 0; j < 8; j++)
            _mm256_storeu_ps(y + i + 8 * j, acc[j]);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t r = 0; r < n_rows; r++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(a[r]), _mm256_loadu_ps(rows + r * row_stride + i), acc);
        _mm256_storeu_ps(y + i, acc);
    }
    for (; i < n; i++) {
        float sum = 0.0f;
        for (int64_t r = 0; r < n_rows; r++)
            sum += a[r] * rows[r * row_stride + i];
        y[i] = sum;
    }
}

/* ---- GEMMs over eight interleaved rows (repack.h) ----
 *
 * Token tiles of up to L2_TT: each 32-byte load of weights is unpacked once
 * and multiplied against every token of the tile while in registers, which is
 * what makes prefill a matrix-matrix product rather than repeated GEMVs. The
 * loops over tokens have a constant trip count once inlined, so the
 * accumulators stay in registers (16 ymm: 4 int + 4 float accumulators,
 * weights, masks). */
#define L2_TT 4

/* 4-bit: lane r of the int16 pair sums collects row r; eight maddubs of
 * 0..15 x -127..127 sum to at most 8 * 2 * 15 * 127 = 30480, so int16 holds. */
L2_TARGET_AVX2 static inline __attribute__((always_inline)) void
gemm_q4_x8_tile(int nt, int has_min, int64_t nb, const unsigned char *w, size_t block_bytes,
                const l2_block_q8_act *x, int64_t x_stride, float *y, int64_t y_stride)
{
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[L2_TT];
    for (int t = 0; t < nt; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const unsigned char *block = w + b * block_bytes;
        const unsigned char *qs = block + (has_min ? 32 : 16);
        __m256i sum16[L2_TT];
        for (int t = 0; t < nt; t++)
            sum16[t] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
            const __m256i lo = _mm256_and_si256(v, low4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
            for (int t = 0; t < nt; t++) {
                const int8_t *xq = x[t * x_stride + b].qs;
                int32_t xlo, xhi;
                memcpy(&xlo, xq + 4 * c, 4);
                memcpy(&xhi, xq + 16 + 4 * c, 4);
                sum16[t] = _mm256_add_epi16(sum16[t], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(xlo)));
                sum16[t] = _mm256_add_epi16(sum16[t], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xhi)));
            }
        }
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)block));
        const __m256 m = has_min ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 16))) : d;
        for (int t = 0; t < nt; t++) {
            const l2_block_q8_act *xb = &x[t * x_stride + b];
            const __m256 sumf = _mm256_cvtepi32_ps(_mm256_madd_epi16(sum16[t], ones));
            if (has_min) {
                acc[t] = _mm256_fmadd_ps(d, _mm256_mul_ps(_mm256_set1_ps(xb->d), sumf), acc[t]);
                acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(xb->s), acc[t]);
            } else {
                const __m256 inner = _mm256_fmadd_ps(_mm256_set1_ps(xb->d), sumf, _mm256_set1_ps(-8.0f * xb->s));
                acc[t] = _mm256_fmadd_ps(d, inner, acc[t]);
            }
        }
    }
    for (int t = 0; t < nt; t++)
        _mm256_storeu_ps(y + t * y_stride, acc[t]);
}

/* 8-bit: weights are signed, so each weight's sign moves onto the activation
 * (sign_epi8) and |w| goes in as the unsigned operand; a maddubs pair can
 * reach 2 * 127 * 127, so every one is widened to int32 at once. */
L2_TARGET_AVX2 static inline __attribute__((always_inline)) void
gemm_q8_0_x8_tile(int nt, int64_t nb, const l2_block_q8_0x8 *w, const l2_block_q8_act *x, int64_t x_stride,
                  float *y, int64_t y_stride)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[L2_TT];
    for (int t = 0; t < nt; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i sum32[L2_TT];
        for (int t = 0; t < nt; t++)
            sum32[t] = _mm256_setzero_si256();
        for (int c = 0; c < 8; c++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(w[b].qs + 32 * c));
            const __m256i a = _mm256_sign_epi8(v, v);
            for (int t = 0; t < nt; t++) {
                int32_t xc;
                memcpy(&xc, x[t * x_stride + b].qs + 4 * c, 4);
                const __m256i p = _mm256_maddubs_epi16(a, _mm256_sign_epi8(_mm256_set1_epi32(xc), v));
                sum32[t] = _mm256_add_epi32(sum32[t], _mm256_madd_epi16(p, ones));
            }
        }
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w[b].d));
        for (int t = 0; t < nt; t++) {
            const __m256 dd = _mm256_mul_ps(d, _mm256_set1_ps(x[t * x_stride + b].d));
            acc[t] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(sum32[t]), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++)
        _mm256_storeu_ps(y + t * y_stride, acc[t]);
}

/* One entry point per type; the switch gives each tile size its own fully unrolled copy. */
#define L2_TILES(CALL)                                                                                       \
    int32_t t0 = 0;                                                                                          \
    for (; t0 + L2_TT <= n_tokens; t0 += L2_TT)                                                              \
        CALL(L2_TT);                                                                                         \
    switch (n_tokens - t0) {                                                                                 \
    case 3: CALL(3); break;                                                                                  \
    case 2: CALL(2); break;                                                                                  \
    case 1: CALL(1); break;                                                                                  \
    default: break;                                                                                          \
    }

L2_TARGET_AVX2 void l2_gemm_q4_0_x8_avx2(int64_t n, const void *w, const l2_block_q8_act *x,
                                             int64_t x_stride, int32_t n_tokens, float *y, int64_t y_stride)
{
#define CALL(NT) gemm_q4_x8_tile(NT, 0, n / L2_QK, w, sizeof(l2_block_q4_0x8), x + t0 * x_stride, x_stride, \
                                 y + t0 * y_stride, y_stride)
    L2_TILES(CALL)
#undef CALL
}

L2_TARGET_AVX2 void l2_gemm_q4_1_x8_avx2(int64_t n, const void *w, const l2_block_q8_act *x,
                                             int64_t x_stride, int32_t n_tokens, float *y, int64_t y_stride)
{
#define CALL(NT) gemm_q4_x8_tile(NT, 1, n / L2_QK, w, sizeof(l2_block_q4_1x8), x + t0 * x_stride, x_stride, \
                                 y + t0 * y_stride, y_stride)
    L2_TILES(CALL)
#undef CALL
}

L2_TARGET_AVX2 void l2_gemm_q8_0_x8_avx2(int64_t n, const void *w, const l2_block_q8_act *x,
                                             int64_t x_stride, int32_t n_tokens, float *y, int64_t y_stride)
{
#define CALL(NT) gemm_q8_0_x8_tile(NT, n / L2_QK, w, x + t0 * x_stride, x_stride, y + t0 * y_stride, y_stride)
    L2_TILES(CALL)
#undef CALL
}

static const l2_kernels kernels_avx2 = {
    .isa = "avx2",
    .quantize_act = l2_quantize_act_avx2,
    .dot_q8_0 = dot_q8_0_avx2,
    .dot_q4_0 = dot_q4_0_avx2,
    .dot_q4_1 = dot_q4_1_avx2,
    .dot_f32 = l2_dot_f32_avx2,
    .dot_f32_rows = l2_dot_f32_rows_avx2,
    .weighted_sum_f32 = l2_weighted_sum_f32_avx2,
    .gemm_q8_0_x8 = l2_gemm_q8_0_x8_avx2,
    .gemm_q4_0_x8 = l2_gemm_q4_0_x8_avx2,
    .gemm_q4_1_x8 = l2_gemm_q4_1_x8_avx2,
};

const l2_kernels *l2_kernels_avx2(void)
{
    return &kernels_avx2;
}

#else

const l2_kernels *l2_kernels_avx2(void)
{
    return NULL;
}

#endif
