/* The CPU inference engine shared by cpu_f32, cpu_q8 and cpu_q4.
 *
 * A CPU backend is a policy (which tensor types it computes natively, and what
 * it converts the others to at load) plus the ABI table over the generic
 * functions below; see backends/cpu_f32/backend.c for a complete one:
 *
 *     static const l2_cpu_policy policy = {...};
 *     static llama2_status load(const llama2_model_desc *d, llama2_model **m, char *e, size_t n) {
 *         return l2_cpu_model_load(&policy, d, m, e, n);
 *     }
 *     static const llama2_backend_api api = L2_CPU_BACKEND_API("cpu_x", "one line", native, load);
 *     L2_EXPORT const llama2_backend_api *llama2_backend_get(void) { return &api; }
 */
#ifndef LLAMA2_CPU_ENGINE_H
#define LLAMA2_CPU_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "llama2_backend.h"

#define L2_EXPORT __attribute__((visibility("default")))
#define L2_TYPE_BIT(t) (1u << (t))
/* A batch bigger than this is evaluated in chunks; scratch is sized for one chunk. */
#define L2_MAX_BATCH 512
/* Multiply-adds below which a loop runs on one thread: waking the others and
 * the barrier after cost more than the work (and far more on a busy machine). */
#define L2_PARALLEL_MIN_WORK (1 << 16)

/* ---- policy ---- */

typedef enum {
    L2_ROLE_EMBEDDING, /* token_embd.weight as a lookup table (any type: one row is dequantized per token) */
    L2_ROLE_OUTPUT,    /* output.weight, or token_embd.weight when the output is tied */
    L2_ROLE_MATRIX,    /* every other weight matrix (attention and FFN) */
    L2_ROLE_COUNT
} l2_role;

typedef struct {
    uint32_t native;    /* L2_TYPE_BIT of each type used in place, zero-copy from the mapped file */
    int32_t convert_to; /* what any other type becomes at load (must be a matmul type for matrices) */
} l2_role_policy;

typedef struct {
    l2_role_policy role[L2_ROLE_COUNT];
} l2_cpu_policy;

/* ---- model: read-only after load, shared by contexts ---- */

typedef struct {
    int32_t type; /* F32, Q8_0, Q4_0 or Q4_1 for a matmul; any type for the embedding */
    int64_t rows, cols;
    int64_t row_bytes;
    const void *data; /* into the mapped file, or into a buffer the model owns */
    int32_t x8;       /* 1: rows are stored as groups of eight interleaved rows (repack.h) */
} l2_matrix;

typedef struct {
    const float *attn_norm, *ffn_norm;
    l2_matrix wq, wk, wv, wo;
    l2_matrix w_gate, w_up, w_down;
} l2_layer;

struct llama2_model {
    int32_t n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff, n_rot;
    int32_t head_dim, kv_dim;
    float rms_eps, rope_freq_base;
    l2_matrix token_embd, output;
    const float *output_norm;
    l2_layer *layers;
    const l2_kernels *kernels;
    void **owned; /* buffers of converted tensors */
    int32_t n_owned;
    uint64_t owned_bytes;
};

/* ---- context: one KV cache and the activations of one chunk ---- */

struct llama2_context {
    const llama2_model *model;
    int32_t n_ctx, n_threads, n_past, max_batch;
    float *key_cache, *value_cache; /* [n_layer][n_ctx][kv_dim] */
    float *x;                       /* residual stream [batch][n_embd] */
    float *xb, *xb2;                /* normed input, attention output [batch][n_embd] */
    float *q;                       /* queries [batch][n_embd] */
    float *hb, *hb2;                /* FFN gate and up [batch][n_ff] */
    float *rope_cos, *rope_sin;     /* [batch][n_rot / 2] */
    float *att;                     /* attention scores, one row of n_ctx per thread */
    l2_block_q8_act *xq;            /* quantized activations [batch][max(n_embd, n_ff) / 32] */
    int32_t att_threads;            /* threads att was sized for */
};

/* ---- the ABI functions, generic over the policy ---- */

llama2_status l2_cpu_model_load(const l2_cpu_policy *policy, const llama2_model_desc *desc,
                                llama2_model **out, char *err, size_t err_len);
uint64_t l2_cpu_model_memory(const llama2_model *model);
void l2_cpu_model_free(llama2_model *model);
llama2_status l2_cpu_context_new(llama2_model *model, int32_t n_ctx, int32_t n_threads,
                                 llama2_context **out, char *err, size_t err_len);
void l2_cpu_context_free(llama2_context *ctx);
llama2_status l2_cpu_eval(llama2_context *ctx, const int32_t *tokens, int32_t n_tokens, int32_t pos,
                          int32_t all_logits, float *logits, char *err, size_t err_len);
llama2_status l2_cpu_truncate(llama2_context *ctx, int32_t n_pos);
llama2_status l2_cpu_set_threads(llama2_context *ctx, int32_t n_threads);
int l2_cpu_probe(char *reason, size_t reason_len);

/* The table of a CPU backend; load is its policy-bound wrapper of l2_cpu_model_load. */
#define L2_CPU_BACKEND_API(NAME, DESCRIPTION, NATIVE_TYPES, LOAD)                                      \
    {                                                                                                  \
        .abi_major = LLAMA2_ABI_MAJOR, .abi_minor = LLAMA2_ABI_MINOR,                                  \
        .struct_size = sizeof(llama2_backend_api), .name = (NAME), .description = (DESCRIPTION),       \
        .native_types = (NATIVE_TYPES), .probe = l2_cpu_probe, .model_load = (LOAD),                   \
        .model_memory = l2_cpu_model_memory, .model_free = l2_cpu_model_free,                          \
        .context_new = l2_cpu_context_new, .context_free = l2_cpu_context_free, .eval = l2_cpu_eval,   \
        .truncate = l2_cpu_truncate, .set_threads = l2_cpu_set_threads,                                \
    }

/* ---- the engine's pieces ---- */

/* Formats a message into err (when there is room) and returns status. */
llama2_status l2_error(char *err, size_t err_len, llama2_status status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* y[t][r] = W[r] . x[t] for t < n_tokens; x rows are W->cols long, y rows W->rows
 * long, with the given row strides (in floats) so y can point into the KV cache.
 * xq is scratch for n_tokens quantized rows when W is quantized. */
void l2_matmul(const l2_kernels *k, const l2_matrix *w, const float *x, int64_t x_stride, float *y,
               int64_t y_stride, int32_t n_tokens, l2_block_q8_act *xq, int32_t n_threads);

/* Run n_tokens (<= ctx->max_batch) at positions pos.. through the model, filling
 * the KV cache; writes logits for every token (all_logits) or for the last one,
 * or none when logits is NULL. The caller has validated every argument. */
void l2_forward(llama2_context *ctx, const int32_t *tokens, int32_t n_tokens, int32_t pos,
                int32_t all_logits, float *logits);

#endif
