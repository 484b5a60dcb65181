/* Repacking into the eight-row interleaved layouts (see repack.h), and the
 * portable GEMMs over them. */
#include <string.h>

#include "convert.h"
#include "llama2_backend.h"
#include "repack.h"

int l2_repack_x8(int32_t type, const void *src, void *dst, int64_t rows, int64_t n) {
    const int64_t nb = n / L2_QK;
    for (int64_t g = 0; g < rows / L2_RX; g++) {
        for (int64_t b = 0; b < nb; b++) {
            switch (type) {
            case LLAMA2_TYPE_Q4_0: {
                const l2_block_q4_0 *s = (const l2_block_q4_0 *)src + g * L2_RX * nb + b;
                l2_block_q4_0x8 *o = (l2_block_q4_0x8 *)dst + g * nb + b;
                for (int r = 0; r < L2_RX; r++) {
                    o->d[r] = s[r * nb].d;
                    for (int c = 0; c < 4; c++)
                        memcpy(o->qs + 32 * c + 4 * r, s[r * nb].qs + 4 * c, 4);
                }
                break;
            }
            case LLAMA2_TYPE_Q4_1: {
                const l2_block_q4_1 *s = (const l2_block_q4_1 *)src + g * L2_RX * nb + b;
                l2_block_q4_1x8 *o = (l2_block_q4_1x8 *)dst + g * nb + b;
                for (int r = 0; r < L2_RX; r++) {
                    o->d[r] = s[r * nb].d;
                    o->m[r] = s[r * nb].m;
                    for (int c = 0; c < 4; c++)
                        memcpy(o->qs + 32 * c + 4 * r, s[r * nb].qs + 4 * c, 4);
                }
                break;
            }
            case LLAMA2_TYPE_Q8_0: {
                const l2_block_q8_0 *s = (const l2_block_q8_0 *)src + g * L2_RX * nb + b;
                l2_block_q8_0x8 *o = (l2_block_q8_0x8 *)dst + g * nb + b;
                for (int r = 0; r < L2_RX; r++) {
                    o->d[r] = s[r * nb].d;
                    for (int c = 0; c < 8; c++)
                        memcpy(o->qs + 32 * c + 4 * r, s[r * nb].qs + 4 * c, 4);
                }
                break;
            }
            default:
                return -1;
            }
        }
    }
    return 0;
}

void l2_gemm_q8_0_x8_scalar(int64_t n, const void *w, const l2_block_q8_act *x, int64_t x_stride,
                            int32_t n_tokens, float *y, int64_t y_stride) {
    const l2_block_q8_0x8 *wb = w;
    for (int32_t t = 0; t < n_tokens; t++) {
        float acc[L2_RX] = {0};
        for (int64_t b = 0; b < n / L2_QK; b++) {
            const l2_block_q8_act *xb = x + t * x_stride + b;
            for (int r = 0; r < L2_RX; r++) {
                int sumi = 0;
                for (int c = 0; c < 8; c++)
                    for (int j = 0; j < 4; j++)
                        sumi += wb[b].qs[32 * c + 4 * r + j] * xb->qs[4 * c + j];
                acc[r] += l2_fp16_to_f32(wb[b].d[r]) * xb->d * (float)sumi;
            }
        }
        memcpy(y + t * y_stride, acc, sizeof acc);
    }
}

/* Q4_0 and Q4_1 differ only in the constant term: Q4_0's -8 d, or Q4_1's min,
 * times the activation block's s = dx * sum(qx). */
static void gemm_q4_x8(int64_t n, int has_min, const void *w, const l2_block_q8_act *x, int64_t x_stride,
                       int32_t n_tokens, float *y, int64_t y_stride) {
    const size_t block_bytes = has_min ? sizeof(l2_block_q4_1x8) : sizeof(l2_block_q4_0x8);
    for (int32_t t = 0; t < n_tokens; t++) {
        float acc[L2_RX] = {0};
        for (int64_t b = 0; b < n / L2_QK; b++) {
            const l2_block_q8_act *xb = x + t * x_stride + b;
            const unsigned char *block = (const unsigned char *)w + b * block_bytes;
            uint16_t d[L2_RX], m[L2_RX];
            memcpy(d, block, sizeof d);
            if (has_min)
                memcpy(m, block + sizeof d, sizeof m);
            const uint8_t *qs = block + (has_min ? 2 : 1) * sizeof d;
            for (int r = 0; r < L2_RX; r++) {
                int sumi = 0;
                for (int c = 0; c < 4; c++)
                    for (int j = 0; j < 4; j++) {
                        uint8_t byte = qs[32 * c + 4 * r + j];
                        sumi += (byte & 15) * xb->qs[4 * c + j] + (byte >> 4) * xb->qs[16 + 4 * c + j];
                    }
                float dw = l2_fp16_to_f32(d[r]);
                float constant = has_min ? l2_fp16_to_f32(m[r]) * xb->s : -8.0f * dw * xb->s;
                acc[r] += dw * xb->d * (float)sumi + constant;
            }
        }
        memcpy(y + t * y_stride, acc, sizeof acc);
    }
}

void l2_gemm_q4_0_x8_scalar(int64_t n, const void *w, const l2_block_q8_act *x, int64_t x_stride,
                            int32_t n_tokens, float *y, int64_t y_stride) {
    gemm_q4_x8(n, 0, w, x, x_stride, n_tokens, y, y_stride);
}

void l2_gemm_q4_1_x8_scalar(int64_t n, const void *w, const l2_block_q8_act *x, int64_t x_stride,
                            int32_t n_tokens, float *y, int64_t y_stride) {
    gemm_q4_x8(n, 1, w, x, x_stride, n_tokens, y, y_stride);
}
