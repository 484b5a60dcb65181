/* C-level tests of the CPU engine: fp16 rounding, quantizers, kernels against
 * float64, model validation on malformed descriptions, and context behaviour.
 * Built with -DLLAMA2_C_TESTS=ON; meant to run under LLAMA2_SANITIZE=ON too. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "cpu_engine.h"

static int failures;

#define CHECK(cond, ...)                                                                                   \
    do {                                                                                                   \
        if (!(cond)) {                                                                                     \
            failures++;                                                                                    \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);                       \
            fprintf(stderr, __VA_ARGS__);                                                                  \
            fputc('\n', stderr);                                                                           \
        }                                                                                                  \
    } while (0)

/* xorshift: reproducible inputs without global state */
static uint64_t next_u64(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static float uniform(uint64_t *s) { /* in [-1, 1) */
    return (float)((double)(next_u64(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* ---- fp16 ---- */

static void test_fp16(void) {
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = l2_fp16_to_f32((uint16_t)h);
        if (isnan(f))
            continue;
        CHECK(l2_f32_to_fp16(f) == h, "half %04x -> %g -> %04x", h, (double)f, l2_f32_to_fp16(f));
    }
    /* nearest, ties to even: no neighbour of the result is closer */
    uint64_t s = 42;
    for (int i = 0; i < 200000; i++) {
        uint32_t bits = (uint32_t)next_u64(&s);
        float f;
        memcpy(&f, &bits, sizeof f);
        if (!isfinite(f) || fabsf(f) >= 65504.0f)
            continue;
        uint16_t h = l2_f32_to_fp16(f);
        double err = fabs((double)l2_fp16_to_f32(h) - f);
        for (int d = -1; d <= 1; d += 2) {
            uint16_t n = (uint16_t)(h + d);
            if ((n & 0x7fff) >= 0x7c00 || ((h & 0x7fff) == 0 && d < 0))
                continue;
            double nerr = fabs((double)l2_fp16_to_f32(n) - f);
            CHECK(err < nerr || (err == nerr && (h & 1) == 0), "%.9g -> %04x, but %04x is closer", (double)f, h, n);
        }
    }
    CHECK(l2_f32_to_fp16(65520.0f) == 0x7c00, "65520 rounds to inf");
    CHECK(l2_f32_to_fp16(-1e-9f) == 0x8000, "tiny negatives keep their sign");
}

/* ---- quantizers and kernels ---- */

static double dot64(const float *a, const float *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

static void test_quantizers_and_kernels(const l2_kernels *k) {
    enum { N = 32 * 37 };
    static const int32_t types[] = {LLAMA2_TYPE_Q8_0, LLAMA2_TYPE_Q4_0, LLAMA2_TYPE_Q4_1};
    float x[N], w[N], wd[N], xd[N];
    l2_block_q8_act xq[N / L2_QK];
    unsigned char wq[N * 2];
    uint64_t s = 7;
    for (int trial = 0; trial < 20; trial++) {
        float scale = trial % 2 ? 100.0f : 0.01f;
        for (int i = 0; i < N; i++) {
            x[i] = uniform(&s) * scale;
            w[i] = uniform(&s) + (trial % 3 == 0 ? 0.5f : 0.0f); /* some rows all of one sign */
        }
        if (trial == 5)
            memset(x + 64, 0, 32 * sizeof *x); /* an all-zero block */
        k->quantize_act(x, xq, N);
        for (int b = 0; b < N / L2_QK; b++) {
            float amax = 0;
            int sum = 0;
            for (int j = 0; j < L2_QK; j++) {
                amax = fmaxf(amax, fabsf(x[b * L2_QK + j]));
                sum += xq[b].qs[j];
                xd[b * L2_QK + j] = xq[b].d * xq[b].qs[j];
            }
            CHECK(xq[b].d == amax / 127.0f, "activation scale is amax/127");
            CHECK(fabsf(xq[b].s - xq[b].d * (float)sum) <= 1e-6f * fabsf(xq[b].s), "s = d * sum(qs)");
        }
        for (int i = 0; i < N; i++)
            CHECK(fabsf(xd[i] - x[i]) <= xq[i / L2_QK].d * 0.5001f, "activation rounding");

        for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
            int32_t type = types[t];
            if (type == LLAMA2_TYPE_Q8_0)
                l2_quantize_row_q8_0(w, (l2_block_q8_0 *)wq, N);
            else if (type == LLAMA2_TYPE_Q4_0)
                l2_quantize_row_q4_0(w, (l2_block_q4_0 *)wq, N);
            else
                l2_quantize_row_q4_1(w, (l2_block_q4_1 *)wq, N);
            l2_dequantize_row(type, wq, wd, N);
            /* the rounding error of each weight is at most half a step (a step is the block's d),
             * except Q4_0's far end: 16 levels on one side of zero, the +8th step clamps to +7 */
            for (int b = 0; b < N / L2_QK; b++) {
                float lo = w[b * L2_QK], hi = w[b * L2_QK], amax = 0;
                for (int j = 0; j < L2_QK; j++) {
                    lo = fminf(lo, w[b * L2_QK + j]);
                    hi = fmaxf(hi, w[b * L2_QK + j]);
                    amax = fmaxf(amax, fabsf(w[b * L2_QK + j]));
                }
                float step = type == LLAMA2_TYPE_Q8_0 ? amax / 127 : type == LLAMA2_TYPE_Q4_0 ? amax / 8 : (hi - lo) / 15;
                for (int j = 0; j < L2_QK; j++) {
                    float e = fabsf(wd[b * L2_QK + j] - w[b * L2_QK + j]);
                    float bound = type == LLAMA2_TYPE_Q4_0 ? step : step * 0.5f;
                    CHECK(e <= bound * 1.01f + 1e-3f * amax, "%s weight error %g, step %g", l2_type_name(type),
                          (double)e, (double)step);
                }
            }
            /* the integer kernel computes exactly dequant(w) . dequant(x), up to float rounding */
            float got = type == LLAMA2_TYPE_Q8_0   ? k->dot_q8_0(N, (const l2_block_q8_0 *)wq, xq)
                        : type == LLAMA2_TYPE_Q4_0 ? k->dot_q4_0(N, (const l2_block_q4_0 *)wq, xq)
                                                   : k->dot_q4_1(N, (const l2_block_q4_1 *)wq, xq);
            double want = dot64(wd, xd, N);
            double mag = 0;
            for (int i = 0; i < N; i++)
                mag += fabs((double)wd[i] * xd[i]);
            CHECK(fabs(got - want) <= 1e-5 * mag, "%s dot %g vs %g (magnitude %g)", l2_type_name(type),
                  (double)got, want, mag);
        }
        for (int64_t n = 1; n <= 70; n += 3) { /* f32 dot: any length */
            double want = dot64(w, x, n), mag = 0;
            for (int64_t i = 0; i < n; i++)
                mag += fabs((double)w[i] * x[i]);
            CHECK(fabs(k->dot_f32(n, w, x) - want) <= 1e-5 * mag + 1e-30, "f32 dot n=%lld", (long long)n);
        }
    }
}

/* ---- a tiny model in memory ---- */

enum { MAX_T = 64 };

typedef struct {
    llama2_model_desc desc;
    llama2_tensor t[MAX_T];
    char names[MAX_T][48];
    void *data[MAX_T];
    int n_data; /* apart from desc.n_tensors, which tests corrupt */
} tiny_model;

static void add_tensor(tiny_model *m, uint64_t *s, const char *name, int32_t type, int64_t rows, int64_t cols,
                       int norm) {
    int i = m->desc.n_tensors++;
    float *f = malloc((size_t)(rows * cols) * sizeof *f);
    for (int64_t j = 0; j < rows * cols; j++)
        f[j] = norm ? 1.0f + 0.1f * uniform(s) : uniform(s) * 1.7f / sqrtf((float)cols);
    void *buf;
    uint64_t bytes;
    if (l2_convert_tensor(LLAMA2_TYPE_F32, f, rows, cols, type, &buf, &bytes) != LLAMA2_OK)
        abort(); /* a broken test setup, not a case under test */
    free(f);
    snprintf(m->names[i], sizeof m->names[i], "%s", name);
    m->data[i] = buf;
    m->n_data = i + 1;
    m->t[i] = (llama2_tensor){.name = m->names[i], .type = type, .n_dims = rows == 1 ? 1 : 2,
                              .ne = {cols, rows, 1, 1}, .data = buf, .n_bytes = bytes};
}

static void tiny_init(tiny_model *m, int32_t type, int tied) {
    memset(m, 0, sizeof *m);
    m->desc = (llama2_model_desc){.n_vocab = 70, .n_embd = 64, .n_layer = 2, .n_head = 4, .n_head_kv = 2,
                                  .n_ff = 96, .n_rot = 8, .n_ctx_train = 128, .rms_eps = 1e-5f,
                                  .rope_freq_base = 10000.0f, .tensors = m->t};
    const llama2_model_desc *d = &m->desc;
    int64_t kv = d->n_embd / d->n_head * d->n_head_kv;
    uint64_t s = 99;
    char name[48];
    add_tensor(m, &s, "token_embd.weight", type, d->n_vocab, d->n_embd, 0);
    for (int l = 0; l < d->n_layer; l++) {
        const struct {
            const char *suffix;
            int64_t rows, cols;
        } ts[] = {{"attn_norm", 1, d->n_embd}, {"attn_q", d->n_embd, d->n_embd}, {"attn_k", kv, d->n_embd},
                  {"attn_v", kv, d->n_embd}, {"attn_output", d->n_embd, d->n_embd}, {"ffn_norm", 1, d->n_embd},
                  {"ffn_gate", d->n_ff, d->n_embd}, {"ffn_up", d->n_ff, d->n_embd}, {"ffn_down", d->n_embd, d->n_ff}};
        for (size_t j = 0; j < sizeof ts / sizeof ts[0]; j++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, ts[j].suffix);
            add_tensor(m, &s, name, ts[j].rows == 1 ? LLAMA2_TYPE_F32 : type, ts[j].rows, ts[j].cols, ts[j].rows == 1);
        }
    }
    add_tensor(m, &s, "output_norm.weight", LLAMA2_TYPE_F32, 1, d->n_embd, 1);
    if (!tied)
        add_tensor(m, &s, "output.weight", type, d->n_vocab, d->n_embd, 0);
}

static void tiny_free(tiny_model *m) {
    for (int i = 0; i < m->n_data; i++)
        free(m->data[i]);
}

static llama2_tensor *tensor(tiny_model *m, const char *name) {
    for (int i = 0; i < m->desc.n_tensors; i++)
        if (strcmp(m->t[i].name, name) == 0)
            return &m->t[i];
    abort();
}

#define ALL_TYPES                                                                                          \
    (L2_TYPE_BIT(LLAMA2_TYPE_F32) | L2_TYPE_BIT(LLAMA2_TYPE_F16) | L2_TYPE_BIT(LLAMA2_TYPE_Q4_0) |        \
     L2_TYPE_BIT(LLAMA2_TYPE_Q4_1) | L2_TYPE_BIT(LLAMA2_TYPE_Q8_0))
#define QUANT_TYPES (L2_TYPE_BIT(LLAMA2_TYPE_Q8_0) | L2_TYPE_BIT(LLAMA2_TYPE_Q4_0) | L2_TYPE_BIT(LLAMA2_TYPE_Q4_1))

static const l2_cpu_policy f32_policy = {.role = {[L2_ROLE_EMBEDDING] = {ALL_TYPES, LLAMA2_TYPE_F32},
                                                  [L2_ROLE_OUTPUT] = {L2_TYPE_BIT(LLAMA2_TYPE_F32), LLAMA2_TYPE_F32},
                                                  [L2_ROLE_MATRIX] = {L2_TYPE_BIT(LLAMA2_TYPE_F32), LLAMA2_TYPE_F32}}};
static const l2_cpu_policy q8_policy = {.role = {[L2_ROLE_EMBEDDING] = {ALL_TYPES, LLAMA2_TYPE_F32},
                                                 [L2_ROLE_OUTPUT] = {QUANT_TYPES, LLAMA2_TYPE_Q8_0},
                                                 [L2_ROLE_MATRIX] = {QUANT_TYPES, LLAMA2_TYPE_Q8_0}}};

/* Loading m must fail with status, and the message must mention what. */
static void expect_load_error(tiny_model *m, llama2_status status, const char *what) {
    char err[256] = "";
    llama2_model *model = (llama2_model *)1;
    llama2_status st = l2_cpu_model_load(&f32_policy, &m->desc, &model, err, sizeof err);
    CHECK(st == status, "expected status %d for '%s', got %d (%s)", status, what, st, err);
    CHECK(model == NULL, "no model on failure");
    CHECK(strstr(err, what) != NULL, "message '%s' should mention '%s'", err, what);
    l2_cpu_model_free(model);
}

static void test_validation(void) {
    tiny_model m;
#define CASE(type, change, status, what)                                                                   \
    do {                                                                                                   \
        tiny_init(&m, type, 0);                                                                            \
        change;                                                                                            \
        expect_load_error(&m, status, what);                                                               \
        tiny_free(&m);                                                                                     \
    } while (0)
    CASE(LLAMA2_TYPE_F32, tensor(&m, "blk.1.attn_k.weight")->n_bytes -= 4, LLAMA2_ERR_INVALID, "blk.1.attn_k.weight");
    CASE(LLAMA2_TYPE_Q8_0, tensor(&m, "blk.0.ffn_up.weight")->n_bytes += 34, LLAMA2_ERR_INVALID, "blk.0.ffn_up.weight");
    CASE(LLAMA2_TYPE_F32, tensor(&m, "blk.0.attn_q.weight")->ne[1] = 65, LLAMA2_ERR_INVALID, "blk.0.attn_q.weight");
    CASE(LLAMA2_TYPE_F32, tensor(&m, "blk.0.ffn_down.weight")->ne[2] = 2, LLAMA2_ERR_INVALID, "ffn_down");
    CASE(LLAMA2_TYPE_F32, tensor(&m, "output_norm.weight")->name = "blk.0.attn_norm.weight", LLAMA2_ERR_INVALID,
         "appears twice");
    CASE(LLAMA2_TYPE_F32, tensor(&m, "blk.1.ffn_norm.weight")->name = "blk.1.ffn_norm", LLAMA2_ERR_INVALID,
         "blk.1.ffn_norm.weight is missing");
    CASE(LLAMA2_TYPE_F32, tensor(&m, "blk.1.ffn_norm.weight")->name = NULL, LLAMA2_ERR_INVALID, "no name");
    CASE(LLAMA2_TYPE_F32, tensor(&m, "blk.0.attn_v.weight")->data = NULL, LLAMA2_ERR_INVALID, "attn_v");
    CASE(LLAMA2_TYPE_F32, tensor(&m, "blk.0.attn_v.weight")->type = 7, LLAMA2_ERR_UNSUPPORTED, "attn_v");
    CASE(LLAMA2_TYPE_F32, tensor(&m, "token_embd.weight")->data = (const char *)m.data[0] + 1, LLAMA2_ERR_INVALID,
         "aligned");
    CASE(LLAMA2_TYPE_F32, m.desc.n_head = 5, LLAMA2_ERR_INVALID, "n_head");
    CASE(LLAMA2_TYPE_F32, m.desc.n_head_kv = 3, LLAMA2_ERR_INVALID, "n_head_kv");
    CASE(LLAMA2_TYPE_F32, m.desc.n_head_kv = 0, LLAMA2_ERR_INVALID, "n_head_kv");
    CASE(LLAMA2_TYPE_F32, m.desc.n_rot = 7, LLAMA2_ERR_INVALID, "n_rot");
    CASE(LLAMA2_TYPE_F32, m.desc.n_rot = 18, LLAMA2_ERR_INVALID, "n_rot");
    CASE(LLAMA2_TYPE_F32, m.desc.n_vocab = -1, LLAMA2_ERR_INVALID, "n_vocab");
    CASE(LLAMA2_TYPE_F32, m.desc.n_layer = 1 << 30, LLAMA2_ERR_INVALID, "n_layer");
    CASE(LLAMA2_TYPE_F32, m.desc.n_ff = INT32_MAX, LLAMA2_ERR_INVALID, "n_ff");
    CASE(LLAMA2_TYPE_F32, m.desc.rms_eps = NAN, LLAMA2_ERR_INVALID, "rms_eps");
    CASE(LLAMA2_TYPE_F32, m.desc.rope_freq_base = 0, LLAMA2_ERR_INVALID, "rope_freq_base");
    CASE(LLAMA2_TYPE_F32, m.desc.n_tensors = -3, LLAMA2_ERR_INVALID, "n_tensors");
    CASE(LLAMA2_TYPE_F32, m.desc.n_layer = 3, LLAMA2_ERR_INVALID, "blk.2.attn_norm.weight is missing");
    /* a quantized row must be whole blocks: n_embd = 48 with Q4_0 attention weights */
    CASE(LLAMA2_TYPE_Q4_0, (m.desc.n_embd = 48, m.desc.n_head = 3, m.desc.n_head_kv = 1, tensor(&m, "token_embd.weight")->ne[0] = 48),
         LLAMA2_ERR_INVALID, "token_embd.weight");
    /* a huge claimed shape must not overflow into a plausible byte count */
    CASE(LLAMA2_TYPE_F32,
         (m.desc.n_vocab = 1 << 24, m.desc.n_embd = 1 << 24, m.desc.n_head = 1 << 20, m.desc.n_head_kv = 1 << 20,
          m.desc.n_rot = 16),
         LLAMA2_ERR_INVALID, "token_embd.weight");
#undef CASE
    char err[64];
    llama2_model *model;
    CHECK(l2_cpu_model_load(&f32_policy, NULL, &model, err, sizeof err) == LLAMA2_ERR_INVALID, "NULL desc");
    tiny_init(&m, LLAMA2_TYPE_F32, 0);
    CHECK(l2_cpu_model_load(&f32_policy, &m.desc, NULL, err, sizeof err) == LLAMA2_ERR_INVALID, "NULL out");
    CHECK(l2_cpu_model_load(&f32_policy, &m.desc, &model, NULL, 0) == LLAMA2_OK, "no error buffer is fine");
    l2_cpu_model_free(model);
    tiny_free(&m);
}

/* ---- contexts and eval ---- */

static double rel(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / den);
}

static void test_eval(int32_t type, int tied, const l2_cpu_policy *policy, int threads) {
    tiny_model m;
    tiny_init(&m, type, tied);
    char err[256] = "";
    llama2_model *model = NULL;
    llama2_context *a = NULL, *b = NULL;
    CHECK(l2_cpu_model_load(policy, &m.desc, &model, err, sizeof err) == LLAMA2_OK, "load: %s", err);
    if (!model) {
        tiny_free(&m);
        return;
    }
    CHECK(l2_cpu_context_new(model, 16, threads, &a, err, sizeof err) == LLAMA2_OK, "%s", err);
    CHECK(l2_cpu_context_new(model, 16, 1, &b, err, sizeof err) == LLAMA2_OK, "%s", err);
    const int32_t tokens[] = {1, 5, 69, 0, 33, 12, 7, 7};
    enum { N = 8, V = 70 };
    float all[N * V], one[V];
    CHECK(l2_cpu_eval(a, tokens, N, 0, 1, all, err, sizeof err) == LLAMA2_OK, "%s", err);
    for (int i = 0; i < N; i++) {
        CHECK(l2_cpu_eval(b, tokens + i, 1, i, 0, one, err, sizeof err) == LLAMA2_OK, "%s", err);
        CHECK(rel(one, all + i * V, V) < 1e-5, "token %d: batch and single differ by %g", i, rel(one, all + i * V, V));
    }
    /* truncate and evaluate again: the same logits */
    CHECK(l2_cpu_truncate(a, 3) == LLAMA2_OK, "truncate");
    CHECK(l2_cpu_set_threads(a, threads + 1) == LLAMA2_OK, "set_threads");
    CHECK(l2_cpu_eval(a, tokens + 3, N - 3, 3, 0, one, err, sizeof err) == LLAMA2_OK, "%s", err);
    CHECK(rel(one, all + (N - 1) * V, V) < 1e-5, "after truncate");
    /* pos rewinds too */
    CHECK(l2_cpu_eval(a, tokens + 5, 3, 5, 0, one, err, sizeof err) == LLAMA2_OK, "%s", err);
    CHECK(rel(one, all + (N - 1) * V, V) < 1e-5, "after rewinding with pos");
    /* errors leave the context usable */
    CHECK(l2_cpu_eval(a, tokens, 9, 8, 0, one, err, sizeof err) == LLAMA2_ERR_CONTEXT_FULL, "full");
    CHECK(strstr(err, "context full") != NULL, "message: %s", err);
    CHECK(l2_cpu_eval(a, tokens, 1, 9, 0, one, err, sizeof err) == LLAMA2_ERR_INVALID, "pos past the cache");
    CHECK(l2_cpu_eval(a, tokens, 1, -1, 0, one, err, sizeof err) == LLAMA2_ERR_INVALID, "negative pos");
    const int32_t bad[] = {3, 70};
    CHECK(l2_cpu_eval(a, bad, 2, 0, 0, one, err, sizeof err) == LLAMA2_ERR_INVALID, "token out of range");
    CHECK(l2_cpu_eval(a, tokens, 0, 0, 0, one, err, sizeof err) == LLAMA2_ERR_INVALID, "no tokens");
    CHECK(l2_cpu_eval(a, NULL, 1, 0, 0, one, err, sizeof err) == LLAMA2_ERR_INVALID, "NULL tokens");
    CHECK(l2_cpu_eval(a, tokens, 8, 8, 0, one, err, sizeof err) == LLAMA2_OK, "exactly full: %s", err);
    CHECK(l2_cpu_truncate(a, -1) == LLAMA2_ERR_INVALID, "negative truncate");
    CHECK(l2_cpu_set_threads(a, 0) == LLAMA2_ERR_INVALID, "zero threads");
    llama2_context *c = NULL;
    CHECK(l2_cpu_context_new(model, 0, 1, &c, err, sizeof err) == LLAMA2_ERR_INVALID, "n_ctx 0");
    CHECK(l2_cpu_context_new(model, 16, 0, &c, err, sizeof err) == LLAMA2_ERR_INVALID, "0 threads");
    CHECK(c == NULL, "no context on failure");
    l2_cpu_context_free(a);
    l2_cpu_context_free(b);
    l2_cpu_context_free(NULL);
    l2_cpu_model_free(model);
    tiny_free(&m);
}

/* cpu_q8-style weights against the same model in f32: activation quantization error only */
static void test_quantized_policy_close_to_f32(void) {
    tiny_model m;
    tiny_init(&m, LLAMA2_TYPE_F32, 0);
    char err[256];
    llama2_model *f = NULL, *q = NULL;
    llama2_context *cf = NULL, *cq = NULL;
    CHECK(l2_cpu_model_load(&f32_policy, &m.desc, &f, err, sizeof err) == LLAMA2_OK, "%s", err);
    CHECK(l2_cpu_model_load(&q8_policy, &m.desc, &q, err, sizeof err) == LLAMA2_OK, "%s", err);
    CHECK(l2_cpu_model_memory(f) < l2_cpu_model_memory(q), "q8 converted the matrices, f32 used them in place");
    CHECK(l2_cpu_context_new(f, 8, 2, &cf, err, sizeof err) == LLAMA2_OK, "%s", err);
    CHECK(l2_cpu_context_new(q, 8, 2, &cq, err, sizeof err) == LLAMA2_OK, "%s", err);
    const int32_t tokens[] = {4, 8, 15, 16, 23, 42};
    float lf[6 * 70], lq[6 * 70];
    if (cf && cq) {
        l2_cpu_eval(cf, tokens, 6, 0, 1, lf, err, sizeof err);
        l2_cpu_eval(cq, tokens, 6, 0, 1, lq, err, sizeof err);
        CHECK(rel(lq, lf, 6 * 70) < 2e-2, "q8 vs f32: %g", rel(lq, lf, 6 * 70));
    }
    l2_cpu_context_free(cf);
    l2_cpu_context_free(cq);
    l2_cpu_model_free(f);
    l2_cpu_model_free(q);
    tiny_free(&m);
}

int main(void) {
    const l2_kernels *k = l2_kernels_best();
    printf("kernels: %s\n", k->isa);
    test_fp16();
    test_quantizers_and_kernels(l2_kernels_scalar());
    if (k != l2_kernels_scalar())
        test_quantizers_and_kernels(k);
    test_validation();
    static const int32_t types[] = {LLAMA2_TYPE_F32, LLAMA2_TYPE_F16, LLAMA2_TYPE_Q8_0, LLAMA2_TYPE_Q4_0,
                                    LLAMA2_TYPE_Q4_1};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        test_eval(types[i], (int)(i % 2), &f32_policy, 2);
        if (types[i] != LLAMA2_TYPE_F16 && types[i] != LLAMA2_TYPE_F32)
            test_eval(types[i], (int)(i % 2), &q8_policy, 1);
    }
    test_quantized_policy_close_to_f32();
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
