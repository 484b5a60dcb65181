/* Block formats, byte-identical to ggml's (32 weights per block). */
#ifndef LLAMA2_QUANT_BLOCKS_H
#define LLAMA2_QUANT_BLOCKS_H

#include <stdint.h>

#define L2_QK 32 /* weights per block, for every quantized type */

typedef struct {
    uint16_t d;          /* fp16 scale */
    int8_t qs[L2_QK];    /* w = d * q */
} l2_block_q8_0;         /* 34 bytes */

typedef struct {
    uint16_t d;                /* fp16 scale */
    uint8_t qs[L2_QK / 2];     /* low nibbles hold weights 0..15, high nibbles 16..31; w = d * (q - 8) */
} l2_block_q4_0;               /* 18 bytes */

typedef struct {
    uint16_t d;                /* fp16 scale */
    uint16_t m;                /* fp16 min */
    uint8_t qs[L2_QK / 2];     /* same nibble order as q4_0; w = d * q + m */
} l2_block_q4_1;               /* 20 bytes */

/* Activations, quantized once per matmul (never stored in files): int8 with a
 * float scale, plus s = d * sum(qs), which Q4_1's min term needs. */
typedef struct {
    float d;
    float s;
    int8_t qs[L2_QK];
} l2_block_q8_act;

_Static_assert(sizeof(l2_block_q8_0) == 34, "block_q8_0 must match ggml");
_Static_assert(sizeof(l2_block_q4_0) == 18, "block_q4_0 must match ggml");
_Static_assert(sizeof(l2_block_q4_1) == 20, "block_q4_1 must match ggml");

#endif
