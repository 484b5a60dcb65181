/* Tensor types: sizes, fp16 rounding, dequantization, ggml's reference quantizers. */
#include "convert.h"

#include <math.h>
#include <stdlib.h>

const char *l2_type_name(int32_t type) {
    switch (type) {
    case LLAMA2_TYPE_F32: return "F32";
    case LLAMA2_TYPE_F16: return "F16";
    case LLAMA2_TYPE_Q4_0: return "Q4_0";
    case LLAMA2_TYPE_Q4_1: return "Q4_1";
    case LLAMA2_TYPE_Q8_0: return "Q8_0";
    default: return NULL;
    }
}

int64_t l2_type_block_size(int32_t type) {
    switch (type) {
    case LLAMA2_TYPE_F32:
    case LLAMA2_TYPE_F16: return 1;
    case LLAMA2_TYPE_Q4_0:
    case LLAMA2_TYPE_Q4_1:
    case LLAMA2_TYPE_Q8_0: return L2_QK;
    default: return 0;
    }
}

int64_t l2_type_block_bytes(int32_t type) {
    switch (type) {
    case LLAMA2_TYPE_F32: return 4;
    case LLAMA2_TYPE_F16: return 2;
    case LLAMA2_TYPE_Q4_0: return sizeof(l2_block_q4_0);
    case LLAMA2_TYPE_Q4_1: return sizeof(l2_block_q4_1);
    case LLAMA2_TYPE_Q8_0: return sizeof(l2_block_q8_0);
    default: return 0;
    }
}

int64_t l2_row_bytes(int32_t type, int64_t n) {
    int64_t bs = l2_type_block_size(type);
    if (bs == 0 || n < 0 || n % bs != 0)
        return -1;
    int64_t blocks = n / bs;
    int64_t bytes = l2_type_block_bytes(type);
    if (blocks > INT64_MAX / bytes)
        return -1;
    return blocks * bytes;
}

uint16_t l2_f32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)
        return sign | 0x7e00u; /* nan stays nan */
    if (ax >= 0x477ff000u)
        return sign | 0x7c00u; /* at or past the midpoint above 65504: inf */
    if (ax >= 0x38800000u) {   /* a normal half; the carry of rounding may bump the exponent */
        uint32_t rounded = ax + 0xfffu + ((ax >> 13) & 1u);
        return sign | (uint16_t)((rounded - 0x38000000u) >> 13);
    }
    if (ax < 0x33000000u)
        return sign; /* below half the smallest subnormal */
    /* a subnormal half counts units of 2^-24: shift the full mantissa down */
    uint32_t shift = 126u - (ax >> 23);
    uint32_t man = (ax & 0x7fffffu) | 0x800000u;
    uint32_t q = man >> shift, rem = man & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return sign | (uint16_t)q;
}

void l2_dequantize_row(int32_t type, const void *src, float *dst, int64_t n) {
    switch (type) {
    case LLAMA2_TYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case LLAMA2_TYPE_F16: {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = l2_fp16_to_f32(h[i]);
        break;
    }
    case LLAMA2_TYPE_Q8_0: {
        const l2_block_q8_0 *b = src;
        for (int64_t i = 0; i < n / L2_QK; i++) {
            float d = l2_fp16_to_f32(b[i].d);
            for (int j = 0; j < L2_QK; j++)
                dst[i * L2_QK + j] = d * (float)b[i].qs[j];
        }
        break;
    }
    case LLAMA2_TYPE_Q4_0: {
        const l2_block_q4_0 *b = src;
        for (int64_t i = 0; i < n / L2_QK; i++) {
            float d = l2_fp16_to_f32(b[i].d);
            float *y = dst + i * L2_QK;
            for (int j = 0; j < L2_QK / 2; j++) {
                y[j] = d * (float)((b[i].qs[j] & 0x0f) - 8);
                y[j + L2_QK / 2] = d * (float)((b[i].qs[j] >> 4) - 8);
            }
        }
        break;
    }
    case LLAMA2_TYPE_Q4_1: {
        const l2_block_q4_1 *b = src;
        for (int64_t i = 0; i < n / L2_QK; i++) {
            float d = l2_fp16_to_f32(b[i].d), m = l2_fp16_to_f32(b[i].m);
            float *y = dst + i * L2_QK;
            for (int j = 0; j < L2_QK / 2; j++) {
                y[j] = d * (float)(b[i].qs[j] & 0x0f) + m;
                y[j + L2_QK / 2] = d * (float)(b[i].qs[j] >> 4) + m;
            }
        }
        break;
    }
    default:
        break; /* callers validate the type first */
    }
}

void l2_quantize_row_q8_0(const float *src, l2_block_q8_0 *dst, int64_t n) {
    for (int64_t i = 0; i < n / L2_QK; i++) {
        const float *x = src + i * L2_QK;
        float amax = 0.0f;
        for (int j = 0; j < L2_QK; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        dst[i].d = l2_f32_to_fp16(d);
        for (int j = 0; j < L2_QK; j++)
            dst[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

void l2_quantize_row_q4_0(const float *src, l2_block_q4_0 *dst, int64_t n) {
    for (int64_t i = 0; i < n / L2_QK; i++) {
        const float *x = src + i * L2_QK;
        /* the signed extreme maps to -8, so the other side keeps all of 0..15 */
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < L2_QK; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        float d = max / -8.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        dst[i].d = l2_f32_to_fp16(d);
        for (int j = 0; j < L2_QK / 2; j++) {
            int q0 = (int)(int8_t)(x[j] * id + 8.5f);
            int q1 = (int)(int8_t)(x[j + L2_QK / 2] * id + 8.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            dst[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void l2_quantize_row_q4_1(const float *src, l2_block_q4_1 *dst, int64_t n) {
    for (int64_t i = 0; i < n / L2_QK; i++) {
        const float *x = src + i * L2_QK;
        float min = x[0], max = x[0];
        for (int j = 1; j < L2_QK; j++) {
            min = fminf(min, x[j]);
            max = fmaxf(max, x[j]);
        }
        float d = (max - min) / 15.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        dst[i].d = l2_f32_to_fp16(d);
        dst[i].m = l2_f32_to_fp16(min);
        for (int j = 0; j < L2_QK / 2; j++) {
            int q0 = (int)(int8_t)((x[j] - min) * id + 0.5f);
            int q1 = (int)(int8_t)((x[j + L2_QK / 2] - min) * id + 0.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            dst[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* f32 row -> one row of dst_type; dst_type is known to be supported. */
static void store_row(int32_t dst_type, const float *x, void *dst, int64_t n) {
    switch (dst_type) {
    case LLAMA2_TYPE_F32: memcpy(dst, x, (size_t)n * sizeof(float)); break;
    case LLAMA2_TYPE_F16: {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++)
            h[i] = l2_f32_to_fp16(x[i]);
        break;
    }
    case LLAMA2_TYPE_Q8_0: l2_quantize_row_q8_0(x, dst, n); break;
    case LLAMA2_TYPE_Q4_0: l2_quantize_row_q4_0(x, dst, n); break;
    case LLAMA2_TYPE_Q4_1: l2_quantize_row_q4_1(x, dst, n); break;
    default: break;
    }
}

llama2_status l2_convert_tensor(int32_t src_type, const void *src, int64_t rows, int64_t cols,
                                int32_t dst_type, void **out, uint64_t *out_bytes) {
    *out = NULL;
    *out_bytes = 0;
    int64_t src_row = l2_row_bytes(src_type, cols), dst_row = l2_row_bytes(dst_type, cols);
    if (src_row < 0 || dst_row < 0 || rows < 0)
        return LLAMA2_ERR_UNSUPPORTED;
    if (rows != 0 && dst_row > INT64_MAX / rows)
        return LLAMA2_ERR_NOMEM;
    if ((uint64_t)(rows * dst_row) > SIZE_MAX || (uint64_t)cols > SIZE_MAX / sizeof(float))
        return LLAMA2_ERR_NOMEM;
    size_t total = (size_t)(rows * dst_row);
    char *buf = malloc(total ? total : 1);
    float *row = malloc((size_t)(cols ? cols : 1) * sizeof(float));
    if (!buf || !row) {
        free(buf);
        free(row);
        return LLAMA2_ERR_NOMEM;
    }
    for (int64_t r = 0; r < rows; r++) {
        l2_dequantize_row(src_type, (const char *)src + r * src_row, row, cols);
        store_row(dst_type, row, buf + r * dst_row, cols);
    }
    free(row);
    *out = buf;
    *out_bytes = total;
    return LLAMA2_OK;
}
