/* Eight-row interleaved weight layouts, made once at load from the file's blocks.
 *
 * Why: in the file each row's blocks are contiguous, so a SIMD dot product
 * must sum its 32 products horizontally and convert one fp16 scale per block.
 * Here block b of eight consecutive rows is stored together, arranged so that
 * one 32-byte load holds 4 consecutive weights of each of the 8 rows: a
 * maddubs against the 4 matching activation bytes (broadcast) followed by a
 * madd leaves row r's partial sum in int32 lane r, with no horizontal sums,
 * and one vcvtph2ps converts the 8 rows' scales at once. The same bytes serve
 * several tokens of a batch while they sit in registers (the prefill GEMM).
 *
 * Byte k = 32 c + 4 r + j of a block holds, for row r:
 *  - Q4_0 / Q4_1 (c < 4): the file's byte qs[4 c + j] unchanged, i.e. weight
 *    4 c + j in the low nibble and weight 16 + 4 c + j in the high nibble;
 *  - Q8_0 (c < 8): weight 4 c + j.
 * The repacked matrix is exactly as large as the original.
 */
#ifndef LLAMA2_REPACK_H
#define LLAMA2_REPACK_H

#include <stdint.h>

#include "quant_blocks.h"

#define L2_RX 8 /* rows per interleaved group */

typedef struct {
    uint16_t d[L2_RX];
    uint8_t qs[L2_RX * L2_QK / 2];
} l2_block_q4_0x8; /* 144 bytes = 8 x 18 */

typedef struct {
    uint16_t d[L2_RX];
    uint16_t m[L2_RX];
    uint8_t qs[L2_RX * L2_QK / 2];
} l2_block_q4_1x8; /* 160 bytes = 8 x 20 */

typedef struct {
    uint16_t d[L2_RX];
    int8_t qs[L2_RX * L2_QK];
} l2_block_q8_0x8; /* 272 bytes = 8 x 34 */

_Static_assert(sizeof(l2_block_q4_0x8) == 8 * sizeof(l2_block_q4_0), "q4_0x8 is eight q4_0 blocks");
_Static_assert(sizeof(l2_block_q4_1x8) == 8 * sizeof(l2_block_q4_1), "q4_1x8 is eight q4_1 blocks");
_Static_assert(sizeof(l2_block_q8_0x8) == 8 * sizeof(l2_block_q8_0), "q8_0x8 is eight q8_0 blocks");

/* Repack rows 8g..8g+7 of a [rows, n] matrix of type (Q8_0, Q4_0, Q4_1), for
 * every group g, from src (row-major file layout) into dst (same size).
 * rows must be a multiple of 8. Returns 0, or -1 for a type with no x8 layout. */
int l2_repack_x8(int32_t type, const void *src, void *dst, int64_t rows, int64_t n);

/* The portable GEMMs over one interleaved group (the oracle of the SIMD ones):
 * y[t * y_stride + r] = row r . x[t] for r < 8 and t < n_tokens, where the
 * activation rows of x are x_stride blocks apart. */
void l2_gemm_q8_0_x8_scalar(int64_t n, const void *w, const l2_block_q8_act *x, int64_t x_stride,
                            int32_t n_tokens, float *y, int64_t y_stride);
void l2_gemm_q4_0_x8_scalar(int64_t n, const void *w, const l2_block_q8_act *x, int64_t x_stride,
                            int32_t n_tokens, float *y, int64_t y_stride);
void l2_gemm_q4_1_x8_scalar(int64_t n, const void *w, const l2_block_q8_act *x, int64_t x_stride,
                            int32_t n_tokens, float *y, int64_t y_stride);

#endif
