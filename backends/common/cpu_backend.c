/* The ABI functions of every CPU backend, generic over its policy: contexts
 * (KV cache plus scratch, allocated once), eval in chunks, truncate, threads. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "cpu_engine.h"

#define MAX_CTX (1 << 24)
#define MAX_THREADS 1024

llama2_status l2_error(char *err, size_t err_len, llama2_status status, const char *fmt, ...) {
    if (err && err_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return status;
}

int l2_cpu_probe(char *reason, size_t reason_len) {
    /* the scalar kernels run anywhere; l2_kernels_best() picks faster ones when the CPU has them */
    if (reason && reason_len > 0)
        snprintf(reason, reason_len, "usable (kernels: %s)", l2_kernels_best()->isa);
    return 1;
}

/* calloc of a * b * c elements of size bytes, NULL on overflow. */
static void *alloc_array(size_t a, size_t b, size_t c, size_t size) {
    size_t n;
    if (__builtin_mul_overflow(a, b, &n) || __builtin_mul_overflow(n, c, &n))
        return NULL;
    return calloc(n ? n : 1, size);
}

void l2_cpu_context_free(llama2_context *ctx) {
    if (!ctx)
        return;
    free(ctx->key_cache);
    free(ctx->value_cache);
    free(ctx->x);
    free(ctx->xb);
    free(ctx->xb2);
    free(ctx->q);
    free(ctx->hb);
    free(ctx->hb2);
    free(ctx->rope_cos);
    free(ctx->rope_sin);
    free(ctx->att);
    free(ctx->xq);
    free(ctx);
}

llama2_status l2_cpu_context_new(llama2_model *model, int32_t n_ctx, int32_t n_threads,
                                 llama2_context **out, char *err, size_t err_len) {
    if (!out || !model)
        return l2_error(err, err_len, LLAMA2_ERR_INVALID, "context_new: model or out is NULL");
    *out = NULL;
    if (n_ctx < 1 || n_ctx > MAX_CTX)
        return l2_error(err, err_len, LLAMA2_ERR_INVALID, "n_ctx = %d is out of range (1..%d)", n_ctx, MAX_CTX);
    if (n_threads < 1 || n_threads > MAX_THREADS)
        return l2_error(err, err_len, LLAMA2_ERR_INVALID, "n_threads = %d is out of range (1..%d)", n_threads,
                        MAX_THREADS);
    llama2_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return l2_error(err, err_len, LLAMA2_ERR_NOMEM, "out of memory");
    const llama2_model *m = model;
    size_t batch = (size_t)(n_ctx < L2_MAX_BATCH ? n_ctx : L2_MAX_BATCH);
    size_t widest = (size_t)(m->n_ff > m->n_embd ? m->n_ff : m->n_embd);
    ctx->model = m;
    ctx->n_ctx = n_ctx;
    ctx->n_threads = n_threads;
    ctx->att_threads = n_threads;
    ctx->max_batch = (int32_t)batch;
    ctx->key_cache = alloc_array((size_t)m->n_layer, (size_t)n_ctx, (size_t)m->kv_dim, sizeof(float));
    ctx->value_cache = alloc_array((size_t)m->n_layer, (size_t)n_ctx, (size_t)m->kv_dim, sizeof(float));
    ctx->x = alloc_array(batch, (size_t)m->n_embd, 1, sizeof(float));
    ctx->xb = alloc_array(batch, (size_t)m->n_embd, 1, sizeof(float));
    ctx->xb2 = alloc_array(batch, (size_t)m->n_embd, 1, sizeof(float));
    ctx->q = alloc_array(batch, (size_t)m->n_embd, 1, sizeof(float));
    ctx->hb = alloc_array(batch, (size_t)m->n_ff, 1, sizeof(float));
    ctx->hb2 = alloc_array(batch, (size_t)m->n_ff, 1, sizeof(float));
    ctx->rope_cos = alloc_array(batch, (size_t)m->n_rot / 2, 1, sizeof(float));
    ctx->rope_sin = alloc_array(batch, (size_t)m->n_rot / 2, 1, sizeof(float));
    ctx->att = alloc_array((size_t)n_threads, (size_t)n_ctx, 1, sizeof(float));
    ctx->xq = alloc_array(batch, (widest + L2_QK - 1) / L2_QK, 1, sizeof(l2_block_q8_act));
    if (!ctx->key_cache || !ctx->value_cache || !ctx->x || !ctx->xb || !ctx->xb2 || !ctx->q || !ctx->hb ||
        !ctx->hb2 || !ctx->rope_cos || !ctx->rope_sin || !ctx->att || !ctx->xq) {
        l2_cpu_context_free(ctx);
        return l2_error(err, err_len, LLAMA2_ERR_NOMEM, "out of memory for a context of %d positions", n_ctx);
    }
    *out = ctx;
    return LLAMA2_OK;
}

llama2_status l2_cpu_eval(llama2_context *ctx, const int32_t *tokens, int32_t n_tokens, int32_t pos,
                          int32_t all_logits, float *logits, char *err, size_t err_len) {
    if (!ctx || !tokens || !logits)
        return l2_error(err, err_len, LLAMA2_ERR_INVALID, "eval: ctx, tokens or logits is NULL");
    if (n_tokens < 1)
        return l2_error(err, err_len, LLAMA2_ERR_INVALID, "eval: n_tokens = %d, need at least 1", n_tokens);
    if (pos < 0 || pos > ctx->n_past)
        return l2_error(err, err_len, LLAMA2_ERR_INVALID, "eval: pos = %d is outside 0..%d (the cached length)",
                        pos, ctx->n_past);
    if (n_tokens > ctx->n_ctx - pos)
        return l2_error(err, err_len, LLAMA2_ERR_CONTEXT_FULL,
                        "context full: %d tokens at position %d do not fit in n_ctx = %d", n_tokens, pos,
                        ctx->n_ctx);
    for (int32_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= ctx->model->n_vocab)
            return l2_error(err, err_len, LLAMA2_ERR_INVALID, "eval: token %d at index %d is outside 0..%d",
                            tokens[i], i, ctx->model->n_vocab - 1);
    ctx->n_past = pos;
    for (int32_t done = 0; done < n_tokens;) {
        int32_t chunk = n_tokens - done < ctx->max_batch ? n_tokens - done : ctx->max_batch;
        int last = done + chunk == n_tokens;
        float *out = all_logits ? logits + (int64_t)done * ctx->model->n_vocab : last ? logits : NULL;
        l2_forward(ctx, tokens + done, chunk, pos + done, all_logits, out);
        done += chunk;
        ctx->n_past = pos + done;
    }
    return LLAMA2_OK;
}

llama2_status l2_cpu_truncate(llama2_context *ctx, int32_t n_pos) {
    if (!ctx || n_pos < 0)
        return LLAMA2_ERR_INVALID;
    if (n_pos < ctx->n_past)
        ctx->n_past = n_pos;
    return LLAMA2_OK;
}

llama2_status l2_cpu_set_threads(llama2_context *ctx, int32_t n_threads) {
    if (!ctx || n_threads < 1 || n_threads > MAX_THREADS)
        return LLAMA2_ERR_INVALID;
    if (n_threads > ctx->att_threads) { /* one attention row per thread */
        float *att = alloc_array((size_t)n_threads, (size_t)ctx->n_ctx, 1, sizeof(float));
        if (!att)
            return LLAMA2_ERR_NOMEM;
        free(ctx->att);
        ctx->att = att;
        ctx->att_threads = n_threads;
    }
    ctx->n_threads = n_threads;
    return LLAMA2_OK;
}
