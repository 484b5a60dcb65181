/* The forward pass of a LLaMA-2 model over a batch of tokens, read top to bottom:
 * embedding, then per layer RMSNorm, QKV, RoPE, attention over the cache,
 * output projection, residual, RMSNorm, SwiGLU FFN, residual; final norm, logits.
 * Activations are [token][dim] rows; every matmul takes the whole batch at once. */
#include <math.h>
#include <omp.h>

#include "convert.h"
#include "cpu_engine.h"

/* ---- small blocks ---- */

static void rmsnorm(float *out, const float *x, const float *weight, int32_t n, float eps) {
    double ss = 0.0;
    for (int32_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / n + eps));
    for (int32_t i = 0; i < n; i++)
        out[i] = weight[i] * (scale * x[i]);
}

static void softmax(float *x, int32_t n) {
    float max = x[0];
    for (int32_t i = 1; i < n; i++)
        max = x[i] > max ? x[i] : max;
    float sum = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max); /* minus the max: exp never overflows */
        sum += x[i];
    }
    for (int32_t i = 0; i < n; i++)
        x[i] /= sum;
}

/* Angles pos * base^(-2i/n_rot) for each token of the batch, in double: at
 * thousands of positions a float angle would lose the digits that matter. */
static void rope_tables(llama2_context *ctx, int32_t n_tokens, int32_t pos) {
    const llama2_model *m = ctx->model;
    int32_t half = m->n_rot / 2;
    for (int32_t i = 0; i < half; i++) {
        double freq = pow((double)m->rope_freq_base, -2.0 * i / m->n_rot);
        for (int32_t t = 0; t < n_tokens; t++) {
            double angle = (double)(pos + t) * freq;
            ctx->rope_cos[t * half + i] = (float)cos(angle);
            ctx->rope_sin[t * half + i] = (float)sin(angle);
        }
    }
}

/* Meta's convention: rotate the pairs (v[2i], v[2i+1]) of the first n_rot dims of each head. */
static void rope(float *vec, int32_t n_heads, int32_t head_dim, int32_t n_rot, const float *cos_t,
                 const float *sin_t) {
    for (int32_t h = 0; h < n_heads; h++) {
        float *v = vec + h * head_dim;
        for (int32_t i = 0; i < n_rot / 2; i++) {
            float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * cos_t[i] - x1 * sin_t[i];
            v[2 * i + 1] = x0 * sin_t[i] + x1 * cos_t[i];
        }
    }
}

/* Causal attention of the batch's queries over the cached keys and values of
 * layer l: token t (at position pos + t) sees positions 0..pos + t. */
static void attention(llama2_context *ctx, int32_t l, int32_t n_tokens, int32_t pos) {
    const llama2_model *m = ctx->model;
    const l2_kernels *k = m->kernels;
    int32_t hd = m->head_dim, kv_dim = m->kv_dim, n_embd = m->n_embd;
    int32_t group = m->n_head / m->n_head_kv; /* query heads sharing one kv head */
    const float *kc = ctx->key_cache + (int64_t)l * ctx->n_ctx * kv_dim;
    const float *vc = ctx->value_cache + (int64_t)l * ctx->n_ctx * kv_dim;
    float scale = 1.0f / sqrtf((float)hd);
    int64_t work = (int64_t)n_tokens * m->n_head * (pos + n_tokens) * hd * 2;
    int parallel = ctx->n_threads > 1 && work >= L2_PARALLEL_MIN_WORK;
#pragma omp parallel for collapse(2) num_threads(ctx->n_threads) if (parallel) schedule(dynamic)
    for (int32_t t = 0; t < n_tokens; t++) {
        for (int32_t h = 0; h < m->n_head; h++) {
            float *att = ctx->att + (int64_t)omp_get_thread_num() * ctx->n_ctx;
            const float *q = ctx->q + (int64_t)t * n_embd + h * hd;
            int32_t kv_off = (h / group) * hd;
            int32_t n_keys = pos + t + 1;
            k->dot_f32_rows(hd, q, kc + kv_off, kv_dim, n_keys, scale, att);
            softmax(att, n_keys);
            k->weighted_sum_f32(hd, att, vc + kv_off, kv_dim, n_keys, ctx->xb2 + (int64_t)t * n_embd + h * hd);
        }
    }
}

static void add(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        x[i] += y[i];
}

/* SwiGLU's gate: silu(gate) * up, into gate. */
static void swiglu(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

/* ---- the forward pass ---- */

void l2_forward(llama2_context *ctx, const int32_t *tokens, int32_t n_tokens, int32_t pos,
                int32_t all_logits, float *logits) {
    const llama2_model *m = ctx->model;
    const l2_kernels *k = m->kernels;
    int32_t nth = ctx->n_threads;
    int32_t dim = m->n_embd, kv_dim = m->kv_dim, ff = m->n_ff, half = m->n_rot / 2;
    int64_t n_dim = (int64_t)n_tokens * dim;

    for (int32_t t = 0; t < n_tokens; t++) {
        const char *row = (const char *)m->token_embd.data + (int64_t)tokens[t] * m->token_embd.row_bytes;
        l2_dequantize_row(m->token_embd.type, row, ctx->x + (int64_t)t * dim, dim);
    }
    rope_tables(ctx, n_tokens, pos);

    for (int32_t l = 0; l < m->n_layer; l++) {
        const l2_layer *w = &m->layers[l];

        /* attention */
        for (int32_t t = 0; t < n_tokens; t++)
            rmsnorm(ctx->xb + (int64_t)t * dim, ctx->x + (int64_t)t * dim, w->attn_norm, dim, m->rms_eps);
        /* keys and values go straight into their rows of the cache */
        float *kc = ctx->key_cache + ((int64_t)l * ctx->n_ctx + pos) * kv_dim;
        float *vc = ctx->value_cache + ((int64_t)l * ctx->n_ctx + pos) * kv_dim;
        const l2_matmul_out qkv[] = {{&w->wq, ctx->q, dim}, {&w->wk, kc, kv_dim}, {&w->wv, vc, kv_dim}};
        l2_matmul_many(k, qkv, 3, ctx->xb, dim, n_tokens, ctx->xq, nth);
        for (int32_t t = 0; t < n_tokens; t++) {
            const float *c = ctx->rope_cos + (int64_t)t * half, *s = ctx->rope_sin + (int64_t)t * half;
            rope(ctx->q + (int64_t)t * dim, m->n_head, m->head_dim, m->n_rot, c, s);
            rope(kc + (int64_t)t * kv_dim, m->n_head_kv, m->head_dim, m->n_rot, c, s);
        }
        attention(ctx, l, n_tokens, pos);
        l2_matmul(k, &w->wo, ctx->xb2, dim, ctx->xb, dim, n_tokens, ctx->xq, nth);
        add(ctx->x, ctx->xb, n_dim);

        /* feed-forward */
        for (int32_t t = 0; t < n_tokens; t++)
            rmsnorm(ctx->xb + (int64_t)t * dim, ctx->x + (int64_t)t * dim, w->ffn_norm, dim, m->rms_eps);
        const l2_matmul_out gate_up[] = {{&w->w_gate, ctx->hb, ff}, {&w->w_up, ctx->hb2, ff}};
        l2_matmul_many(k, gate_up, 2, ctx->xb, dim, n_tokens, ctx->xq, nth);
        swiglu(ctx->hb, ctx->hb2, (int64_t)n_tokens * ff);
        l2_matmul(k, &w->w_down, ctx->hb, ff, ctx->xb, dim, n_tokens, ctx->xq, nth);
        add(ctx->x, ctx->xb, n_dim);
    }

    if (!logits)
        return;
    /* the final norm and the output matrix only for the tokens whose logits are wanted */
    int32_t first = all_logits ? 0 : n_tokens - 1;
    for (int32_t t = first; t < n_tokens; t++)
        rmsnorm(ctx->xb + (int64_t)t * dim, ctx->x + (int64_t)t * dim, m->output_norm, dim, m->rms_eps);
    l2_matmul(k, &m->output, ctx->xb + (int64_t)first * dim, dim, logits, m->n_vocab, n_tokens - first, ctx->xq,
              nth);
}
