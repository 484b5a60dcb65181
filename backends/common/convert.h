/* Tensor types of the CPU backends: sizes, fp16, and conversion between types.
 *
 * Everything here works row by row: a row is ne[0] contiguous weights, and a
 * quantized row is a whole number of 32-weight blocks (quant_blocks.h).
 */
#ifndef LLAMA2_CONVERT_H
#define LLAMA2_CONVERT_H

#include <stdint.h>
#include <string.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "llama2_backend.h"
#include "quant_blocks.h"

/* "F32", "Q4_0", ... or NULL for a type the CPU backends do not know. */
const char *l2_type_name(int32_t type);
/* Weights per block (1 for float types) and bytes per block; 0 for an unknown type. */
int64_t l2_type_block_size(int32_t type);
int64_t l2_type_block_bytes(int32_t type);
/* Bytes of a row of n weights, or -1 if n is not a whole number of blocks,
 * is negative, or the size would overflow. */
int64_t l2_row_bytes(int32_t type, int64_t n);

static inline float l2_fp16_to_f32(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf, nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal half: a normal float once the leading 1 is found */
        uint32_t e = 113;
        while (!(man & 0x400u)) {
            man <<= 1;
            e--;
        }
        bits = sign | (e << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

/* Round to nearest, ties to even, like the F16C instruction and numpy. */
uint16_t l2_f32_to_fp16(float f);

/* Row conversions. n is the row length in weights (a multiple of L2_QK for
 * quantized types). Rounding follows ggml's reference quantizers so that our
 * files and llama.cpp's agree byte for byte. */
void l2_dequantize_row(int32_t type, const void *src, float *dst, int64_t n);
void l2_quantize_row_q8_0(const float *src, l2_block_q8_0 *dst, int64_t n);
void l2_quantize_row_q4_0(const float *src, l2_block_q4_0 *dst, int64_t n);
void l2_quantize_row_q4_1(const float *src, l2_block_q4_1 *dst, int64_t n);

/* Convert a [rows, cols] tensor of type src_type into a new buffer of dst_type
 * (F32, F16, Q8_0, Q4_0 or Q4_1). Quantized targets go through f32, one row at
 * a time, so the extra memory is the new tensor, rows * l2_row_bytes(dst_type,
 * cols), plus one f32 row. On success *out is a malloc'ed buffer the caller
 * frees and *out_bytes its size. */
llama2_status l2_convert_tensor(int32_t src_type, const void *src, int64_t rows, int64_t cols,
                                int32_t dst_type, void **out, uint64_t *out_bytes);

#endif
