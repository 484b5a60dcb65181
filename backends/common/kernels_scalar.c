/* The portable kernel set: plain C, the oracle the SIMD sets are tested against. */
#include <math.h>

#include "convert.h"
#include "kernels.h"

static void quantize_act(const float *x, l2_block_q8_act *y, int64_t n) {
    for (int64_t i = 0; i < n / L2_QK; i++) {
        const float *xb = x + i * L2_QK;
        float amax = 0.0f;
        for (int j = 0; j < L2_QK; j++)
            amax = fmaxf(amax, fabsf(xb[j]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < L2_QK; j++) {
            y[i].qs[j] = (int8_t)roundf(xb[j] * id);
            sum += y[i].qs[j];
        }
        y[i].d = d;
        y[i].s = d * (float)sum;
    }
}

static float dot_q8_0(int64_t n, const l2_block_q8_0 *w, const l2_block_q8_act *x) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n / L2_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < L2_QK; j++)
            sumi += w[i].qs[j] * x[i].qs[j];
        sum += l2_fp16_to_f32(w[i].d) * x[i].d * (float)sumi;
    }
    return sum;
}

static float dot_q4_0(int64_t n, const l2_block_q4_0 *w, const l2_block_q8_act *x) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n / L2_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < L2_QK / 2; j++) {
            sumi += ((w[i].qs[j] & 0x0f) - 8) * x[i].qs[j];
            sumi += ((w[i].qs[j] >> 4) - 8) * x[i].qs[j + L2_QK / 2];
        }
        sum += l2_fp16_to_f32(w[i].d) * x[i].d * (float)sumi;
    }
    return sum;
}

/* w = d*q + m, so w.x = d*dx*sum(q*qx) + m*dx*sum(qx), and dx*sum(qx) is x's s. */
static float dot_q4_1(int64_t n, const l2_block_q4_1 *w, const l2_block_q8_act *x) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n / L2_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < L2_QK / 2; j++) {
            sumi += (w[i].qs[j] & 0x0f) * x[i].qs[j];
            sumi += (w[i].qs[j] >> 4) * x[i].qs[j + L2_QK / 2];
        }
        sum += l2_fp16_to_f32(w[i].d) * x[i].d * (float)sumi + l2_fp16_to_f32(w[i].m) * x[i].s;
    }
    return sum;
}

/* 32 independent sums: short dependency chains, in a shape the compiler turns
 * into four vector accumulators. */
static float dot_f32(int64_t n, const float *w, const float *x) {
    float acc[32] = {0};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 32; k++)
            acc[k] += w[i + k] * x[i + k];
    for (int k = 0; k < 16; k++)
        acc[k] += acc[k + 16];
    float sum = 0.0f;
    for (int k = 0; k < 16; k++)
        sum += acc[k];
    for (; i < n; i++)
        sum += w[i] * x[i];
    return sum;
}

static void dot_f32_rows(int64_t n, const float *x, const float *rows, int64_t row_stride, int64_t n_rows,
                         float scale, float *out) {
    for (int64_t r = 0; r < n_rows; r++)
        out[r] = scale * dot_f32(n, rows + r * row_stride, x);
}

static void weighted_sum_f32(int64_t n, const float *a, const float *rows, int64_t row_stride, int64_t n_rows,
                             float *y) {
    for (int64_t i = 0; i < n; i++)
        y[i] = 0.0f;
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t i = 0; i < n; i++)
            y[i] += a[r] * rows[r * row_stride + i];
}

static const l2_kernels scalar_kernels = {
    .isa = "scalar",
    .quantize_act = quantize_act,
    .dot_q8_0 = dot_q8_0,
    .dot_q4_0 = dot_q4_0,
    .dot_q4_1 = dot_q4_1,
    .dot_f32 = dot_f32,
    .dot_f32_rows = dot_f32_rows,
    .weighted_sum_f32 = weighted_sum_f32,
    .gemm_q8_0_x8 = l2_gemm_q8_0_x8_scalar,
    .gemm_q4_0_x8 = l2_gemm_q4_0_x8_scalar,
    .gemm_q4_1_x8 = l2_gemm_q4_1_x8_scalar,
};

const l2_kernels *l2_kernels_scalar(void) {
    return &scalar_kernels;
}
