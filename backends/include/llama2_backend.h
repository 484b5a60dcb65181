/* llama2 backend ABI: the one interface every backend library implements.
 *
 * A backend is a shared library exporting exactly one symbol,
 * llama2_backend_get(), which returns a pointer to a constant table.
 * The host checks abi_major (exact match) and struct_size (at least its own)
 * before calling anything else. Everything is explicit state behind opaque
 * handles: no globals, no exit() or abort(), every failure is a status code
 * plus a message written into the caller's buffer.
 *
 * This file is also parsed by cffi (ABI mode): keep the declarations between
 * the CFFI markers free of preprocessor logic.
 */
#ifndef LLAMA2_BACKEND_H
#define LLAMA2_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LLAMA2_ABI_MAJOR 1
#define LLAMA2_ABI_MINOR 0

/* CFFI-BEGIN */
typedef enum {
    LLAMA2_OK = 0,
    LLAMA2_ERR_INVALID = 1,      /* bad argument or malformed model description */
    LLAMA2_ERR_UNSUPPORTED = 2,  /* tensor type, shape or feature this backend cannot run */
    LLAMA2_ERR_NOMEM = 3,        /* host or device allocation failed */
    LLAMA2_ERR_CONTEXT_FULL = 4, /* tokens would not fit in the context's KV cache */
    LLAMA2_ERR_DEVICE = 5,       /* accelerator or driver failure */
    LLAMA2_ERR_INTERNAL = 6      /* a bug: please report */
} llama2_status;

/* Tensor element types, numbered as in GGUF/ggml so that ids pass through. */
enum {
    LLAMA2_TYPE_F32 = 0,
    LLAMA2_TYPE_F16 = 1,
    LLAMA2_TYPE_Q4_0 = 2,
    LLAMA2_TYPE_Q4_1 = 3,
    LLAMA2_TYPE_Q8_0 = 8
};

/* One tensor of the mapped model file. ne[] is in ggml order: ne[0] is the
 * contiguous row length, so a weight matrix of shape [out, in] has
 * ne[0] = in, ne[1] = out. data stays owned by the host and valid until
 * model_free returns. */
typedef struct {
    const char *name;     /* GGUF name, e.g. "blk.0.attn_q.weight" */
    int32_t type;         /* LLAMA2_TYPE_* */
    int32_t n_dims;       /* 1..4 */
    int64_t ne[4];        /* unused dims are 1 */
    const void *data;
    uint64_t n_bytes;
} llama2_tensor;

/* Hyper-parameters (GGUF llama.* keys) plus the tensor table. */
typedef struct {
    int32_t n_vocab;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;   /* < n_head for grouped-query attention */
    int32_t n_ff;
    int32_t n_rot;       /* rotary dimensions per head (normally n_embd / n_head) */
    int32_t n_ctx_train;
    float rms_eps;
    float rope_freq_base;
    int32_t n_tensors;
    const llama2_tensor *tensors;
} llama2_model_desc;

typedef struct llama2_model llama2_model;     /* read-only weights, shared by contexts */
typedef struct llama2_context llama2_context; /* one KV cache and its scratch */

typedef struct {
    uint32_t abi_major;   /* must equal LLAMA2_ABI_MAJOR */
    uint32_t abi_minor;   /* members added at the end bump this */
    uint32_t struct_size; /* sizeof(llama2_backend_api) as the backend was built */
    const char *name;        /* registry name, e.g. "cpu_f32" */
    const char *description; /* one line for `llama2 backends` */
    const int32_t *native_types; /* types used zero-copy; others are converted at load; ends with -1 */
    /* 1 if usable on this machine, else 0 with the reason (no GPU, no AVX2...) in reason. */
    int (*probe)(char *reason, size_t reason_len);
    /* Validate desc and build a model; weights of non-native types are converted here. */
    llama2_status (*model_load)(const llama2_model_desc *desc, llama2_model **out, char *err, size_t err_len);
    /* Bytes the backend allocated for the model (converted weights, device copies). */
    uint64_t (*model_memory)(const llama2_model *model);
    void (*model_free)(llama2_model *model); /* NULL is a no-op; all contexts must be freed first */
    /* A KV cache for n_ctx positions bound to model. Contexts are independent:
     * two threads may drive two contexts of one model at the same time. */
    llama2_status (*context_new)(llama2_model *model, int32_t n_ctx, int32_t n_threads,
                                 llama2_context **out, char *err, size_t err_len);
    void (*context_free)(llama2_context *ctx); /* NULL is a no-op */
    /* Evaluate n_tokens starting at position pos (0 <= pos <= cached length);
     * the cache is truncated to pos first. Writes n_vocab logits for the last
     * token, or for every token when all_logits is nonzero. */
    llama2_status (*eval)(llama2_context *ctx, const int32_t *tokens, int32_t n_tokens, int32_t pos,
                          int32_t all_logits, float *logits, char *err, size_t err_len);
    /* Forget cached positions >= n_pos (keeps a shared prefix for reuse). */
    llama2_status (*truncate)(llama2_context *ctx, int32_t n_pos);
    llama2_status (*set_threads)(llama2_context *ctx, int32_t n_threads);
} llama2_backend_api;

const llama2_backend_api *llama2_backend_get(void);
/* CFFI-END */

#ifdef __cplusplus
}
#endif

#endif
