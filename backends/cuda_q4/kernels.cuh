/* cuda_q4's kernels, one launcher per step of the forward pass.
 *
 * Every launcher enqueues on the given stream, checks the launch
 * (cudaGetLastError) and returns its error; none synchronises, so a whole
 * token step is queued (or captured into a CUDA graph) without the host
 * waiting. Positions come from device memory (d_pos) so that a captured
 * decode graph replays at any position.
 */
#ifndef LLAMA2_CUDA_Q4_KERNELS_CUH
#define LLAMA2_CUDA_Q4_KERNELS_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

/* A weight matrix [rows, nb * 32] in the split-block device layout (q4_math.h). */
typedef struct {
    int type; /* device type: L2_T_Q4_0, L2_T_Q4_1, L2_T_Q8_0 or L2_T_F16 */
    int rows;
    int nb;   /* 32-blocks per row */
    const uint32_t *words;
    const void *scales; /* uint16_t (Q4_0, Q8_0) or uint32_t (Q4_1) per block; NULL for F16 */
} l2_dmat;

/* Activations of n tokens, row length n: float, and int8 per 32-block with (d, d * sum q). */
typedef struct {
    float *f;       /* [tokens][n] */
    uint32_t *q;    /* [tokens][n / 4] */
    float2 *ds;     /* [tokens][n / 32] */
} l2_acts;

enum {
    L2_EPI_STORE = 0,  /* y = W x */
    L2_EPI_ADD = 1,    /* y += W x (the residual stream) */
    L2_EPI_SWIGLU = 2  /* rows interleave gate and up: y[i] = silu(g_i) u_i */
};

/* x[t] = row tokens[t] of the embedding table, dequantized. */
cudaError_t l2_embed(cudaStream_t s, l2_dmat embd, const int32_t *d_tokens, int n_tokens, float *x);

/* out[t] = x[t] / rms(x[t]) * w, as float and quantized. n % 32 == 0. */
cudaError_t l2_rmsnorm(cudaStream_t s, const float *x, const float *w, int n_tokens, int n, float eps, l2_acts out);

/* Quantize a.f of n_tokens rows of length n into a.q, a.ds. */
cudaError_t l2_quantize(cudaStream_t s, l2_acts a, int n_tokens, int n);

/* One token: y (+)= W x, from in.q/in.ds (int8 activations, dp4a) or, with float_act
 * (and always for F16 weights), from in.f. SWIGLU writes rows / 2 values to y. */
cudaError_t l2_matvec(cudaStream_t s, l2_dmat w, l2_acts in, int epi, int float_act, float *y, l2_acts out,
                      int n_sm);

/* n_tokens tokens: Y[t] (+)= W X[t] with fp16 tensor cores on dequantized tiles.
 * X is [n_tokens][w.nb * 32] float; Y rows have ldy floats. SWIGLU writes rows / 2 per token. */
cudaError_t l2_gemm(cudaStream_t s, l2_dmat w, const float *x, int n_tokens, int epi, float *y, int ldy);

typedef struct {
    int n_head, n_head_kv, head_dim, n_rot, n_ctx;
    const float *inv_freq; /* [n_rot / 2]: base^(-2i / n_rot), computed on the host in double */
    __half *k_cache;       /* this layer's [n_head_kv][n_ctx][head_dim] */
    __half *v_cache;
} l2_attn_shape;

/* Rotate q and k of qkv ([t][q | k | v]) in place and store k, v at positions d_pos[0] + t. */
cudaError_t l2_rope_store(cudaStream_t s, float *qkv, int n_tokens, const int32_t *d_pos, l2_attn_shape a);

/* How attention divides the cache: n_split ranges of keys_per_split positions, each
 * a block of its own, merged by a second kernel (flash-decoding: a single token
 * otherwise has only n_head blocks). n_split <= 1: one block per (head, token) over
 * every key. part_o: [tokens][n_head][n_split][head_dim], part_ml: [tokens][n_head][n_split]. */
typedef struct {
    int n_split, keys_per_split;
    float *part_o;
    float2 *part_ml;
} l2_attn_split;

/* Causal attention of each token's q over cached positions 0 .. d_pos[0] + t; out is [t][n_head * head_dim]. */
cudaError_t l2_attention(cudaStream_t s, const float *qkv, int n_tokens, const int32_t *d_pos, l2_attn_shape a,
                         l2_attn_split split, float *out);

#endif
