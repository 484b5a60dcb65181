/* cuda_q4's block arithmetic, written once for the GPU kernels and the host.
 *
 * Everything here is an inline function over plain integers, compiled as
 * __host__ __device__ by nvcc and as ordinary C++ otherwise, so that the host
 * test (tests/test_cuda_q4.py) runs exactly the index and dot-product math
 * the kernels run.
 *
 * Device weight layout ("split blocks"). ggml blocks are 18 (Q4_0), 20 (Q4_1)
 * or 34 (Q8_0) bytes, so a warp reading consecutive blocks makes unaligned
 * loads. At upload each matrix is split into two arrays:
 *   words[]  the quantized payload of every block, L2_WORDS(type) 32-bit words,
 *            block (row, b) at ((row * nb) + b) * L2_WORDS(type), 16-byte aligned;
 *   scales[] one scale per block at row * nb + b, l2_scale_bytes(type) wide:
 *            Q4_0, Q8_0: the fp16 d (16 bits: a 32-bit slot would add 11% to
 *            every Q4_0 weight byte read);
 *            Q4_1: fp16 d in the low half of a 32-bit word, fp16 m in the high half;
 *            F16: none.
 * The functions below take a scale as a 32-bit value in either case.
 * A warp whose lane l reads block b = l, l + 32, ... of a row then makes
 * 16-byte loads that are contiguous across the warp (512 bytes per Q4 load).
 * The payload words are ggml's bytes unchanged (for Q4: low nibbles hold
 * weights 0..15, high nibbles 16..31), so repacking is a copy, and the dot
 * product pairs word j's low nibbles with activation word j and its high
 * nibbles with activation word j + 4.
 *
 * Activations for the integer dot products are quantized per 32-block to
 * int8: xq (8 words per block, 4 int8 each, natural order) and a float pair
 * (d, s) with s = d * sum(q), which folds Q4_0's -8 offset and Q4_1's min.
 */
#ifndef LLAMA2_CUDA_Q4_MATH_H
#define LLAMA2_CUDA_Q4_MATH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

#ifdef __cplusplus
/* quant_blocks.h is C11; its _Static_assert spells static_assert in C++. */
#define _Static_assert static_assert
#endif
#include "quant_blocks.h"
#ifdef __cplusplus
#undef _Static_assert
#endif

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define L2_HD __host__ __device__ __forceinline__
#else
#define L2_HD inline
#endif

enum { L2_T_F32 = 0, L2_T_F16 = 1, L2_T_Q4_0 = 2, L2_T_Q4_1 = 3, L2_T_Q8_0 = 8 };

/* 32-bit payload words per 32-weight block in the device layout. */
L2_HD int l2_block_words(int type) {
    return type == L2_T_Q4_0 || type == L2_T_Q4_1 ? 4 : type == L2_T_Q8_0 ? 8 : type == L2_T_F16 ? 16 : 0;
}

/* Bytes of one 32-weight block in the file (ggml layout). */
L2_HD int l2_file_block_bytes(int type) {
    return type == L2_T_Q4_0 ? 18 : type == L2_T_Q4_1 ? 20 : type == L2_T_Q8_0 ? 34
         : type == L2_T_F16 ? 64 : type == L2_T_F32 ? 128 : 0;
}

/* Bytes of one block's scale in the device layout. */
L2_HD int l2_scale_bytes(int type) { return type == L2_T_Q4_1 ? 4 : type == L2_T_Q4_0 || type == L2_T_Q8_0 ? 2 : 0; }

L2_HD size_t l2_word_index(int64_t row, int64_t b, int64_t nb, int words) {
    return ((size_t)row * (size_t)nb + (size_t)b) * (size_t)words;
}

L2_HD size_t l2_scale_index(int64_t row, int64_t b, int64_t nb) {
    return (size_t)row * (size_t)nb + (size_t)b;
}

/* ---- fp16 ---------------------------------------------------------------- */

L2_HD float l2_f16_to_f32(uint16_t h) {
#ifdef __CUDA_ARCH__
    return __half2float(__ushort_as_half(h));
#else
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        exp = 113;
        while (!(man & 0x400u)) {
            man <<= 1;
            exp--;
        }
        bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* Round to nearest even, as the hardware conversion does. */
L2_HD uint16_t l2_f32_to_f16(float f) {
#ifdef __CUDA_ARCH__
    return __half_as_ushort(__float2half_rn(f));
#else
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) /* rounds past 65504 */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* subnormal or zero in fp16 */
        if (ax < 0x33000000u)
            return (uint16_t)sign;
        const uint32_t e = ax >> 23, man = (ax & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - e; /* 14..24 */
        uint32_t h = man >> shift;
        const uint32_t rem = man & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (h & 1u)))
            h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((ax - 0x38000000u) >> 13);
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
#endif
}

/* ---- repacking (host, at upload) ----------------------------------------- */

/* 32 floats into one F16 block (pairs per word, element 2j in the low half):
 * how F32 embeddings and output layers are stored on the device. */
L2_HD void l2_f32_block_to_f16(const float *src, uint32_t words[16]) {
    for (int j = 0; j < 16; j++)
        words[j] = (uint32_t)l2_f32_to_f16(src[2 * j]) | ((uint32_t)l2_f32_to_f16(src[2 * j + 1]) << 16);
}

/* Device type of a file type: F32 matrices are stored as F16. */
L2_HD int l2_device_type(int file_type) { return file_type == L2_T_F32 ? L2_T_F16 : file_type; }

/* One file block of `type` into its payload words (l2_block_words(l2_device_type(type)))
 * and scale word. */
L2_HD void l2_repack_block(int type, const uint8_t *src, uint32_t *words, uint32_t *scale) {
    uint16_t d = 0, m = 0;
    switch (type) {
    case L2_T_Q4_0:
        memcpy(&d, src, 2);
        memcpy(words, src + 2, 16);
        *scale = d;
        break;
    case L2_T_Q4_1:
        memcpy(&d, src, 2);
        memcpy(&m, src + 2, 2);
        memcpy(words, src + 4, 16);
        *scale = (uint32_t)d | ((uint32_t)m << 16);
        break;
    case L2_T_Q8_0:
        memcpy(&d, src, 2);
        memcpy(words, src + 2, 32);
        *scale = d;
        break;
    case L2_T_F16:
        memcpy(words, src, 64);
        *scale = 0;
        break;
    case L2_T_F32: {
        float x[L2_QK];
        memcpy(x, src, sizeof x);
        l2_f32_block_to_f16(x, words);
        *scale = 0;
        break;
    }
    default:
        *scale = 0;
        break;
    }
}

/* ---- dequantization (embedding rows, prefill tiles) ---------------------- */

/* Weight i (0..31) of a block in the device layout. */
L2_HD float l2_dequant(int type, const uint32_t *words, uint32_t scale, int i) {
    const float d = l2_f16_to_f32((uint16_t)(scale & 0xffffu));
    if (type == L2_T_Q4_0 || type == L2_T_Q4_1) {
        const int j = i & 15;
        const uint32_t byte = (words[j >> 2] >> (8 * (j & 3))) & 0xffu;
        const int q = (int)(i < 16 ? byte & 0xfu : byte >> 4);
        if (type == L2_T_Q4_0)
            return d * (float)(q - 8);
        return d * (float)q + l2_f16_to_f32((uint16_t)(scale >> 16));
    }
    if (type == L2_T_Q8_0)
        return d * (float)(int8_t)((words[i >> 2] >> (8 * (i & 3))) & 0xffu);
    if (type == L2_T_F16)
        return l2_f16_to_f32((uint16_t)(words[i >> 1] >> (16 * (i & 1))));
    return 0.0f;
}

/* ---- activation quantization --------------------------------------------- */

/* Scale of a block whose largest magnitude is amax (0 for an all-zero block). */
L2_HD float l2_act_scale(float amax) { return amax / 127.0f; }

L2_HD int8_t l2_act_quant(float x, float d) {
    /* rintf rounds half to even on host and device alike */
    return d == 0.0f ? (int8_t)0 : (int8_t)rintf(x / d);
}

/* ---- integer dot products of one block ----------------------------------- */

L2_HD int l2_dp4a(uint32_t a, uint32_t b, int c) {
#ifdef __CUDA_ARCH__
    return __dp4a((int)a, (int)b, c);
#else
    for (int k = 0; k < 4; k++)
        c += (int)(int8_t)(a >> (8 * k)) * (int)(int8_t)(b >> (8 * k));
    return c;
#endif
}

/* sum_i q_w[i] * q_x[i] over a Q4 block, nibbles taken as 0..15. */
L2_HD int l2_dot_q4_int(const uint32_t w[4], const uint32_t xq[8]) {
    int s = 0;
    for (int j = 0; j < 4; j++) {
        s = l2_dp4a(w[j] & 0x0f0f0f0fu, xq[j], s);
        s = l2_dp4a((w[j] >> 4) & 0x0f0f0f0fu, xq[j + 4], s);
    }
    return s;
}

/* w = d (q - 8):  d dx sum(q qx) - 8 d (dx sum(qx)) = d (dx sumi - 8 sx). */
L2_HD float l2_dot_q4_0(const uint32_t w[4], uint32_t scale, const uint32_t xq[8], float dx, float sx) {
    const float d = l2_f16_to_f32((uint16_t)(scale & 0xffffu));
    return d * (dx * (float)l2_dot_q4_int(w, xq) - 8.0f * sx);
}

/* w = d q + m:  d dx sumi + m sx. */
L2_HD float l2_dot_q4_1(const uint32_t w[4], uint32_t scale, const uint32_t xq[8], float dx, float sx) {
    const float d = l2_f16_to_f32((uint16_t)(scale & 0xffffu));
    const float m = l2_f16_to_f32((uint16_t)(scale >> 16));
    return d * dx * (float)l2_dot_q4_int(w, xq) + m * sx;
}

L2_HD float l2_dot_q8_0(const uint32_t w[8], uint32_t scale, const uint32_t xq[8], float dx) {
    int s = 0;
    for (int j = 0; j < 8; j++)
        s = l2_dp4a(w[j], xq[j], s);
    return l2_f16_to_f32((uint16_t)(scale & 0xffffu)) * dx * (float)s;
}

/* F16 weights against float activations (no activation quantization). */
L2_HD float l2_dot_f16(const uint32_t w[16], const float x[32]) {
    float s = 0.0f;
    for (int j = 0; j < 16; j++) {
        s += l2_f16_to_f32((uint16_t)(w[j] & 0xffffu)) * x[2 * j];
        s += l2_f16_to_f32((uint16_t)(w[j] >> 16)) * x[2 * j + 1];
    }
    return s;
}

/* ---- float-activation dot products of one block --------------------------- */

/* PRMT: byte i of the result is byte (s >> 4i) & 7 of the 8 bytes {x, y}. */
L2_HD uint32_t l2_prmt(uint32_t x, uint32_t y, uint32_t s) {
#ifdef __CUDA_ARCH__
    return __byte_perm(x, y, s);
#else
    const uint64_t xy = (uint64_t)x | ((uint64_t)y << 32);
    uint32_t r = 0;
    for (int i = 0; i < 4; i++)
        r |= (uint32_t)((xy >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
    return r;
#endif
}

L2_HD float l2_bits_to_f32(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}

/* Byte k of w minus offset, exactly, as a float: the byte goes into the
 * mantissa of 2^23 (one PRMT) and one FADD removes 2^23 + offset, avoiding the
 * slow integer-to-float conversion. Host and device run the same steps. */
L2_HD float l2_byte_f(uint32_t w, int k, float offset) {
    return l2_bits_to_f32(l2_prmt(w, 0x4b000000u, 0x7540u | (uint32_t)k)) - (8388608.0f + offset);
}

/* Q4 weights against float activations: no activation rounding at all. The
 * SwiGLU output (the down projection's input) is heavy-tailed, and int8 blocks
 * scaled by its largest value cost about 1% there, against 0.5% for the
 * normalised inputs of the other matrices. */
L2_HD float l2_dot_q4_0_f32(const uint32_t w[4], uint32_t scale, const float x[32]) {
    float s = 0.0f;
    for (int j = 0; j < 4; j++) {
        const uint32_t lo = w[j] & 0x0f0f0f0fu, hi = (w[j] >> 4) & 0x0f0f0f0fu;
        for (int k = 0; k < 4; k++) {
            s += l2_byte_f(lo, k, 8.0f) * x[4 * j + k];
            s += l2_byte_f(hi, k, 8.0f) * x[16 + 4 * j + k];
        }
    }
    return l2_f16_to_f32((uint16_t)(scale & 0xffffu)) * s;
}

L2_HD float l2_dot_q4_1_f32(const uint32_t w[4], uint32_t scale, const float x[32]) {
    float s = 0.0f, sx = 0.0f;
    for (int j = 0; j < 4; j++) {
        const uint32_t lo = w[j] & 0x0f0f0f0fu, hi = (w[j] >> 4) & 0x0f0f0f0fu;
        for (int k = 0; k < 4; k++) {
            s += l2_byte_f(lo, k, 0.0f) * x[4 * j + k];
            s += l2_byte_f(hi, k, 0.0f) * x[16 + 4 * j + k];
            sx += x[4 * j + k] + x[16 + 4 * j + k];
        }
    }
    return l2_f16_to_f32((uint16_t)(scale & 0xffffu)) * s + l2_f16_to_f32((uint16_t)(scale >> 16)) * sx;
}

/* int8 weights: flipping the sign bit makes q + 128 an unsigned byte. */
L2_HD float l2_dot_q8_0_f32(const uint32_t w[8], uint32_t scale, const float x[32]) {
    float s = 0.0f;
    for (int j = 0; j < 8; j++)
        for (int k = 0; k < 4; k++)
            s += l2_byte_f(w[j] ^ 0x80808080u, k, 128.0f) * x[4 * j + k];
    return l2_f16_to_f32((uint16_t)(scale & 0xffffu)) * s;
}

L2_HD float l2_dot_block_f32(int type, const uint32_t *w, uint32_t scale, const float *x) {
    switch (type) {
    case L2_T_Q4_0: return l2_dot_q4_0_f32(w, scale, x);
    case L2_T_Q4_1: return l2_dot_q4_1_f32(w, scale, x);
    case L2_T_Q8_0: return l2_dot_q8_0_f32(w, scale, x);
    case L2_T_F16: return l2_dot_f16(w, x);
    default: return 0.0f;
    }
}

/* One block of any device type against a quantized (or, for F16, float) block. */
L2_HD float l2_dot_block(int type, const uint32_t *w, uint32_t scale, const uint32_t *xq, float dx, float sx,
                         const float *xf) {
    switch (type) {
    case L2_T_Q4_0: return l2_dot_q4_0(w, scale, xq, dx, sx);
    case L2_T_Q4_1: return l2_dot_q4_1(w, scale, xq, dx, sx);
    case L2_T_Q8_0: return l2_dot_q8_0(w, scale, xq, dx);
    case L2_T_F16: return l2_dot_f16(w, xf);
    default: return 0.0f;
    }
}

/* ---- rotary embedding ---------------------------------------------------- */

/* Meta's interleaved convention: pair (x[2i], x[2i+1]) turns by pos * inv_freq[i],
 * inv_freq[i] = base^(-2i / n_rot), for 2i < n_rot. */
L2_HD void l2_rope_pair(float *a, float *b, float angle) {
    const float c = cosf(angle), s = sinf(angle);
    const float x0 = *a, x1 = *b;
    *a = x0 * c - x1 * s;
    *b = x0 * s + x1 * c;
}

#endif
