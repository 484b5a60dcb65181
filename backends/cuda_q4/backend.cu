/* cuda_q4: the llama2 backend ABI on an NVIDIA GPU.
 *
 * Sections, in the order data flows: errors and the device, validating the
 * model description, uploading weights, contexts (KV cache, scratch, stream,
 * decode graph), the forward pass, eval, and the ABI table.
 *
 * The model holds every weight in one device allocation, repacked at upload
 * (q4_math.h); Q, K, V are concatenated into one matrix and gate/up are
 * interleaved row by row, so a layer is four matrix products. A context owns
 * its stream, its FP16 KV cache and its scratch; a decode step (one token) is
 * one CUDA graph launch, a prefill is a sequence of GEMM launches. The host
 * waits once per eval, for the logits.
 */
#include "kernels.cuh"
#include "llama2_backend.h"
#include "q4_math.h"

#include <cuda_runtime.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define L2_MIN_CC 75                        /* dp4a and fp16 tensor cores: Turing and newer */
#define L2_UBATCH 256                       /* tokens per prefill chunk: sizes the scratch */
#define L2_MEM_RESERVE (64ull << 20)        /* left free for the CUDA context's own needs */
#define L2_ALIGN 256ull

/* ---- errors and the device ------------------------------------------------ */

static llama2_status fail(char *err, size_t err_len, llama2_status st, const char *fmt, ...) {
    if (err && err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return st;
}

static llama2_status cuda_fail(cudaError_t e, const char *what, int line, char *err, size_t err_len) {
    const llama2_status st = e == cudaErrorMemoryAllocation ? LLAMA2_ERR_NOMEM : LLAMA2_ERR_DEVICE;
    return fail(err, err_len, st, "cuda_q4: %s failed (backend.cu:%d): %s", what, line, cudaGetErrorString(e));
}

/* Every CUDA call and every launcher goes through CK: errors return, never abort. */
#define CK(call)                                                                                                   \
    do {                                                                                                           \
        const cudaError_t e_ = (call);                                                                             \
        if (e_ != cudaSuccess)                                                                                     \
            return cuda_fail(e_, #call, __LINE__, err, err_len);                                                   \
    } while (0)

static double mib(uint64_t bytes) { return (double)bytes / (1024.0 * 1024.0); }

/* The device to use (LLAMA2_CUDA_DEVICE, default 0), or 0 with the reason. */
static int find_device(int *device, cudaDeviceProp *prop, char *reason, size_t reason_len) {
    int driver = 0, n = 0;
    if (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0) {
        (void)cudaGetLastError();
        snprintf(reason, reason_len, "no CUDA driver (libcuda not found)");
        return 0;
    }
    if (driver < CUDART_VERSION) {
        snprintf(reason, reason_len, "CUDA driver %d.%d is older than the CUDA %d.%d runtime cuda_q4 was built with",
                 driver / 1000, driver % 1000 / 10, CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
        return 0;
    }
    const cudaError_t e = cudaGetDeviceCount(&n);
    (void)cudaGetLastError();
    if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0)) {
        snprintf(reason, reason_len, "no CUDA device");
        return 0;
    }
    if (e != cudaSuccess) {
        snprintf(reason, reason_len, "CUDA initialisation failed: %s", cudaGetErrorString(e));
        return 0;
    }
    const char *env = getenv("LLAMA2_CUDA_DEVICE");
    const int dev = env && *env ? atoi(env) : 0;
    if (dev < 0 || dev >= n) {
        snprintf(reason, reason_len, "LLAMA2_CUDA_DEVICE=%s but there are %d CUDA devices", env, n);
        return 0;
    }
    if (cudaGetDeviceProperties(prop, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(reason, reason_len, "cannot read the properties of CUDA device %d", dev);
        return 0;
    }
    if (prop->major * 10 + prop->minor < L2_MIN_CC) {
        snprintf(reason, reason_len, "%.160s has compute capability %d.%d; cuda_q4 needs 7.5 or newer", prop->name,
                 prop->major, prop->minor);
        return 0;
    }
    *device = dev;
    return 1;
}

static int probe(char *reason, size_t reason_len) {
    int dev = 0;
    cudaDeviceProp prop;
    char tmp[256];
    const int ok = find_device(&dev, &prop, tmp, sizeof tmp);
    if (reason && reason_len)
        snprintf(reason, reason_len, "%s", ok ? "" : tmp);
    return ok;
}

/* ---- the model description ------------------------------------------------ */

typedef struct {
    const llama2_tensor *q, *k, *v, *o, *gate, *up, *down, *attn_norm, *ffn_norm;
} layer_tensors;

static const llama2_tensor *find_tensor(const llama2_model_desc *d, const char *name) {
    for (int32_t i = 0; i < d->n_tensors; i++)
        if (d->tensors[i].name && strcmp(d->tensors[i].name, name) == 0)
            return &d->tensors[i];
    return NULL;
}

static uint64_t tensor_bytes(int type, int64_t rows, int64_t cols) {
    return (uint64_t)rows * (uint64_t)(cols / L2_QK) * (uint64_t)l2_file_block_bytes(type);
}

/* A present tensor of shape [cols] (rows == 0) or [rows, cols] (ggml ne order: cols first). */
static llama2_status check_tensor(const llama2_model_desc *d, const char *name, int64_t rows, int64_t cols,
                                  int vector, const llama2_tensor **out, char *err, size_t err_len) {
    const llama2_tensor *t = find_tensor(d, name);
    if (!t)
        return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: tensor %s is missing", name);
    const int64_t want[4] = {cols, vector ? 1 : rows, 1, 1};
    if (t->n_dims < 1 || t->n_dims > 4)
        return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: %s has %d dimensions", name, (int)t->n_dims);
    for (int i = 0; i < 4; i++)
        if ((i < t->n_dims ? t->ne[i] : 1) != want[i])
            return fail(err, err_len, LLAMA2_ERR_INVALID,
                        "cuda_q4: %s has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]", name,
                        (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
                        (long long)want[0], (long long)want[1]);
    if (vector && t->type != L2_T_F32)
        return fail(err, err_len, LLAMA2_ERR_UNSUPPORTED, "cuda_q4: %s has type %d; norms must be F32", name,
                    (int)t->type);
    if (!vector && l2_block_words(l2_device_type(t->type)) == 0)
        return fail(err, err_len, LLAMA2_ERR_UNSUPPORTED,
                    "cuda_q4: %s has type %d; supported are F32, F16, Q4_0, Q4_1, Q8_0", name, (int)t->type);
    const uint64_t bytes = vector ? (uint64_t)cols * 4u : tensor_bytes(t->type, rows, cols);
    if (t->n_bytes != bytes)
        return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: %s holds %llu bytes, its type and shape need %llu",
                    name, (unsigned long long)t->n_bytes, (unsigned long long)bytes);
    if (!t->data)
        return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: %s has no data", name);
    *out = t;
    return LLAMA2_OK;
}

#define CHECK(call)                                                                                                \
    do {                                                                                                           \
        const llama2_status s_ = (call);                                                                           \
        if (s_ != LLAMA2_OK)                                                                                       \
            return s_;                                                                                             \
    } while (0)

/* Everything about desc that a kernel relies on, checked before any device work. */
static llama2_status validate(const llama2_model_desc *d, layer_tensors *layers, const llama2_tensor **embd,
                              const llama2_tensor **out_norm, const llama2_tensor **output, char *err,
                              size_t err_len) {
    const int32_t lim = 1 << 20;
    if (d->n_vocab <= 0 || d->n_embd <= 0 || d->n_layer <= 0 || d->n_head <= 0 || d->n_head_kv <= 0 ||
        d->n_ff <= 0 || d->n_vocab > 16 * lim || d->n_embd > lim || d->n_layer > 4096 || d->n_ff > lim)
        return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: hyper-parameters out of range (n_vocab %d, n_embd %d, "
                    "n_layer %d, n_head %d, n_head_kv %d, n_ff %d)", d->n_vocab, d->n_embd, d->n_layer, d->n_head,
                    d->n_head_kv, d->n_ff);
    if (d->n_embd % d->n_head != 0 || d->n_head % d->n_head_kv != 0)
        return fail(err, err_len, LLAMA2_ERR_INVALID,
                    "cuda_q4: n_embd %d must divide into n_head %d heads, and n_head into n_head_kv %d groups",
                    d->n_embd, d->n_head, d->n_head_kv);
    const int hd = d->n_embd / d->n_head;
    if (hd % 2 != 0 || d->n_rot <= 0 || d->n_rot % 2 != 0 || d->n_rot > hd)
        return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: head size %d and n_rot %d must be even, 0 < n_rot <= "
                    "head size", hd, d->n_rot);
    if (hd > 256)
        return fail(err, err_len, LLAMA2_ERR_UNSUPPORTED, "cuda_q4: head size %d > 256", hd);
    if (d->n_embd % L2_QK != 0 || d->n_ff % L2_QK != 0)
        return fail(err, err_len, LLAMA2_ERR_UNSUPPORTED, "cuda_q4: n_embd %d and n_ff %d must be multiples of 32",
                    d->n_embd, d->n_ff);
    if (!(d->rms_eps >= 0.0f) || !isfinite(d->rms_eps) || !(d->rope_freq_base > 0.0f) || !isfinite(d->rope_freq_base))
        return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: rms_eps %g or rope_freq_base %g out of range",
                    (double)d->rms_eps, (double)d->rope_freq_base);
    if (d->n_tensors < 0 || (d->n_tensors > 0 && !d->tensors))
        return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: bad tensor table");
    for (int32_t i = 0; i < d->n_tensors; i++) {
        if (!d->tensors[i].name)
            return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: tensor %d has no name", (int)i);
        for (int32_t j = 0; j < i; j++)
            if (strcmp(d->tensors[i].name, d->tensors[j].name) == 0)
                return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: tensor %s appears twice", d->tensors[i].name);
    }
    const int64_t E = d->n_embd, F = d->n_ff, KV = (int64_t)d->n_head_kv * hd, V = d->n_vocab;
    CHECK(check_tensor(d, "token_embd.weight", V, E, 0, embd, err, err_len));
    CHECK(check_tensor(d, "output_norm.weight", 0, E, 1, out_norm, err, err_len));
    *output = *embd; /* tied embeddings unless output.weight exists */
    if (find_tensor(d, "output.weight"))
        CHECK(check_tensor(d, "output.weight", V, E, 0, output, err, err_len));
    for (int32_t l = 0; l < d->n_layer; l++) {
        layer_tensors *L = &layers[l];
        char name[96];
#define LAYER_TENSOR(field, suffix, rows, cols, vec)                                                               \
    snprintf(name, sizeof name, "blk.%d." suffix, (int)l);                                                         \
    CHECK(check_tensor(d, name, rows, cols, vec, &L->field, err, err_len))
        LAYER_TENSOR(attn_norm, "attn_norm.weight", 0, E, 1);
        LAYER_TENSOR(q, "attn_q.weight", E, E, 0);
        LAYER_TENSOR(k, "attn_k.weight", KV, E, 0);
        LAYER_TENSOR(v, "attn_v.weight", KV, E, 0);
        LAYER_TENSOR(o, "attn_output.weight", E, E, 0);
        LAYER_TENSOR(ffn_norm, "ffn_norm.weight", 0, E, 1);
        LAYER_TENSOR(gate, "ffn_gate.weight", F, E, 0);
        LAYER_TENSOR(up, "ffn_up.weight", F, E, 0);
        LAYER_TENSOR(down, "ffn_down.weight", E, F, 0);
#undef LAYER_TENSOR
        if (L->q->type != L->k->type || L->q->type != L->v->type || L->gate->type != L->up->type)
            return fail(err, err_len, LLAMA2_ERR_UNSUPPORTED,
                        "cuda_q4: layer %d mixes types within Q/K/V or gate/up, which are fused on the GPU", (int)l);
    }
    return LLAMA2_OK;
}

/* ---- uploading weights ------------------------------------------------------ */

typedef struct {
    const float *attn_norm, *ffn_norm;
    l2_dmat qkv, o, gate_up, down;
} l2_layer;

struct llama2_model {
    int device, n_sm;
    int n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff, n_rot, head_dim;
    float rms_eps;
    char *arena; /* every weight, in one allocation */
    uint64_t arena_bytes;
    l2_layer *layers;
    l2_dmat embd, output;
    const float *out_norm, *inv_freq;
};

/* Bump allocation inside the arena. With base == NULL it only counts, so the
 * same code sizes the arena and then fills it. */
typedef struct {
    char *base;
    uint64_t used;
    uint8_t *staging; /* host buffer for one repacked matrix */
    uint64_t staging_bytes;
} placer;

static uint64_t align_up(uint64_t n) { return (n + L2_ALIGN - 1) / L2_ALIGN * L2_ALIGN; }

static void *place(placer *p, uint64_t bytes) {
    void *at = p->base ? p->base + p->used : NULL;
    p->used += align_up(bytes);
    return at;
}

/* Upload the row-concatenation of srcs (interleave: row r from srcs[r % n] row r / n). */
static llama2_status place_matrix(placer *p, const llama2_tensor *const *srcs, int n, int interleave, l2_dmat *m,
                                  char *err, size_t err_len) {
    const int ftype = srcs[0]->type, dtype = l2_device_type(ftype), W = l2_block_words(dtype);
    const int64_t cols = srcs[0]->ne[0], nb = cols / L2_QK;
    int64_t rows = 0;
    for (int i = 0; i < n; i++)
        rows += srcs[i]->ne[1];
    const uint64_t wbytes = (uint64_t)rows * (uint64_t)nb * (uint64_t)W * 4u;
    const int scale_bytes = l2_scale_bytes(dtype);
    const uint64_t sbytes = (uint64_t)rows * (uint64_t)nb * (uint64_t)scale_bytes;
    m->type = dtype;
    m->rows = (int)rows;
    m->nb = (int)nb;
    m->words = (const uint32_t *)place(p, wbytes);
    m->scales = sbytes ? place(p, sbytes) : NULL;
    if (!p->base) {
        if (wbytes + sbytes > p->staging_bytes)
            p->staging_bytes = wbytes + sbytes;
        return LLAMA2_OK;
    }
    uint32_t *words = (uint32_t *)p->staging;
    uint8_t *scales = p->staging + wbytes;
    const int fbytes = l2_file_block_bytes(ftype);
    for (int64_t r = 0; r < rows; r++) {
        const llama2_tensor *t;
        int64_t sr = r;
        if (interleave) {
            t = srcs[r % n];
            sr = r / n;
        } else {
            int i = 0;
            while (sr >= srcs[i]->ne[1])
                sr -= srcs[i++]->ne[1];
            t = srcs[i];
        }
        const uint8_t *row = (const uint8_t *)t->data + (uint64_t)sr * (uint64_t)nb * (uint64_t)fbytes;
        for (int64_t b = 0; b < nb; b++) {
            uint32_t scale;
            l2_repack_block(ftype, row + b * fbytes, words + l2_word_index(r, b, nb, W), &scale);
            if (scale_bytes == 4) {
                memcpy(scales + l2_scale_index(r, b, nb) * 4u, &scale, 4);
            } else if (scale_bytes == 2) {
                const uint16_t d16 = (uint16_t)scale;
                memcpy(scales + l2_scale_index(r, b, nb) * 2u, &d16, 2);
            }
        }
    }
    CK(cudaMemcpy((void *)m->words, words, wbytes, cudaMemcpyHostToDevice));
    if (sbytes)
        CK(cudaMemcpy((void *)m->scales, scales, sbytes, cudaMemcpyHostToDevice));
    return LLAMA2_OK;
}

static llama2_status place_vector(placer *p, const void *src, uint64_t bytes, const float **out, char *err,
                                  size_t err_len) {
    void *dst = place(p, bytes);
    *out = (const float *)dst;
    if (p->base)
        CK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    return LLAMA2_OK;
}

static llama2_status place_weights(llama2_model *m, placer *p, const layer_tensors *lt, const llama2_tensor *embd,
                                   const llama2_tensor *out_norm, const llama2_tensor *output, const float *inv_freq,
                                   char *err, size_t err_len) {
    CHECK(place_matrix(p, &embd, 1, 0, &m->embd, err, err_len));
    if (output == embd)
        m->output = m->embd;
    else
        CHECK(place_matrix(p, &output, 1, 0, &m->output, err, err_len));
    CHECK(place_vector(p, out_norm->data, (uint64_t)m->n_embd * 4u, &m->out_norm, err, err_len));
    CHECK(place_vector(p, inv_freq, (uint64_t)(m->n_rot / 2) * 4u, &m->inv_freq, err, err_len));
    for (int l = 0; l < m->n_layer; l++) {
        const layer_tensors *t = &lt[l];
        l2_layer *L = &m->layers[l];
        const llama2_tensor *qkv[3] = {t->q, t->k, t->v}, *gu[2] = {t->gate, t->up};
        CHECK(place_vector(p, t->attn_norm->data, (uint64_t)m->n_embd * 4u, &L->attn_norm, err, err_len));
        CHECK(place_vector(p, t->ffn_norm->data, (uint64_t)m->n_embd * 4u, &L->ffn_norm, err, err_len));
        CHECK(place_matrix(p, qkv, 3, 0, &L->qkv, err, err_len));
        CHECK(place_matrix(p, &t->o, 1, 0, &L->o, err, err_len));
        CHECK(place_matrix(p, gu, 2, 1, &L->gate_up, err, err_len));
        CHECK(place_matrix(p, &t->down, 1, 0, &L->down, err, err_len));
    }
    return LLAMA2_OK;
}

static void model_free(llama2_model *m) {
    if (!m)
        return;
    if (m->arena) {
        (void)cudaSetDevice(m->device);
        (void)cudaFree(m->arena);
    }
    free(m->layers);
    free(m);
}

static llama2_status model_load_into(llama2_model *m, const llama2_model_desc *d, char *err, size_t err_len) {
    layer_tensors *lt = (layer_tensors *)calloc((size_t)d->n_layer, sizeof *lt);
    const llama2_tensor *embd = NULL, *out_norm = NULL, *output = NULL;
    if (!lt)
        return fail(err, err_len, LLAMA2_ERR_NOMEM, "cuda_q4: out of host memory");
    llama2_status st = validate(d, lt, &embd, &out_norm, &output, err, err_len);
    float *inv_freq = NULL;
    placer p = {NULL, 0, NULL, 0};
    cudaDeviceProp prop;
    char reason[256];
    size_t free_b = 0, total_b = 0;
    if (st != LLAMA2_OK)
        goto done;
    if (!find_device(&m->device, &prop, reason, sizeof reason)) {
        st = fail(err, err_len, LLAMA2_ERR_DEVICE, "cuda_q4: %s", reason);
        goto done;
    }
    m->n_sm = prop.multiProcessorCount;
    m->n_vocab = d->n_vocab, m->n_embd = d->n_embd, m->n_layer = d->n_layer, m->n_head = d->n_head;
    m->n_head_kv = d->n_head_kv, m->n_ff = d->n_ff, m->n_rot = d->n_rot, m->head_dim = d->n_embd / d->n_head;
    m->rms_eps = d->rms_eps;
    m->layers = (l2_layer *)calloc((size_t)d->n_layer, sizeof *m->layers);
    inv_freq = (float *)malloc((size_t)(d->n_rot / 2) * sizeof *inv_freq);
    if (!m->layers || !inv_freq) {
        st = fail(err, err_len, LLAMA2_ERR_NOMEM, "cuda_q4: out of host memory");
        goto done;
    }
    for (int i = 0; i < d->n_rot / 2; i++) /* in double, as the reference does */
        inv_freq[i] = (float)pow((double)d->rope_freq_base, -2.0 * i / (double)d->n_rot);

    /* first pass: sizes only; then the memory plan; then the real upload */
    if ((st = place_weights(m, &p, lt, embd, out_norm, output, inv_freq, err, err_len)) != LLAMA2_OK)
        goto done;
    if (cudaSetDevice(m->device) != cudaSuccess || cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        st = fail(err, err_len, LLAMA2_ERR_DEVICE, "cuda_q4: cannot query memory of %.160s: %s", prop.name,
                  cudaGetErrorString(cudaGetLastError()));
        goto done;
    }
    if ((uint64_t)p.used + L2_MEM_RESERVE > (uint64_t)free_b) {
        st = fail(err, err_len, LLAMA2_ERR_NOMEM,
                  "cuda_q4: the weights need %.0f MiB of GPU memory but %.160s has %.0f MiB free (of %.0f MiB)",
                  mib(p.used + L2_MEM_RESERVE), prop.name, mib(free_b), mib(total_b));
        goto done;
    }
    m->arena_bytes = p.used;
    {
        const cudaError_t e = cudaMalloc((void **)&m->arena, p.used);
        if (e != cudaSuccess) {
            m->arena = NULL;
            st = cuda_fail(e, "cudaMalloc(weights)", __LINE__, err, err_len);
            goto done;
        }
    }
    p.staging = (uint8_t *)malloc(p.staging_bytes ? p.staging_bytes : 1);
    if (!p.staging) {
        st = fail(err, err_len, LLAMA2_ERR_NOMEM, "cuda_q4: out of host memory (%.0f MiB staging)",
                  mib(p.staging_bytes));
        goto done;
    }
    p.base = m->arena;
    p.used = 0;
    st = place_weights(m, &p, lt, embd, out_norm, output, inv_freq, err, err_len);
done:
    free(p.staging);
    free(inv_freq);
    free(lt);
    return st;
}

static llama2_status model_load(const llama2_model_desc *desc, llama2_model **out, char *err, size_t err_len) {
    if (!desc || !out)
        return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: NULL argument");
    *out = NULL;
    llama2_model *m = (llama2_model *)calloc(1, sizeof *m);
    if (!m)
        return fail(err, err_len, LLAMA2_ERR_NOMEM, "cuda_q4: out of host memory");
    const llama2_status st = model_load_into(m, desc, err, err_len);
    if (st != LLAMA2_OK) {
        model_free(m);
        return st;
    }
    *out = m;
    return LLAMA2_OK;
}

static uint64_t model_memory(const llama2_model *m) { return m ? m->arena_bytes : 0; }

/* ---- contexts ---------------------------------------------------------------- */

struct llama2_context {
    llama2_model *model;
    int n_ctx, n_past;
    cudaStream_t stream;
    cudaGraphExec_t decode; /* the captured one-token step, NULL until the first decode */
    int use_graphs;
    int int8_act; /* LLAMA2_CUDA_INT8=1: dp4a on int8 activations where they are near-Gaussian */
    char *arena;
    uint64_t arena_bytes;
    __half *k_cache, *v_cache; /* [layer][kv head][n_ctx][head_dim] */
    float *x, *qkv, *logits;   /* residual [ub][E], q|k|v [ub][E + 2 KV], logits [ub][V] */
    l2_acts xn, att, h;        /* normed input [ub][E], attention output [ub][E], SwiGLU [ub][F] */
    l2_attn_split split;       /* how a decode step's attention divides the cache */
    int32_t *d_params;         /* [0] position of the first token, [1..] the tokens */
    int32_t *h_params;         /* pinned mirror of d_params */
    float *h_logits;           /* pinned [ub][V] */
};

static void context_free(llama2_context *c) {
    if (!c)
        return;
    (void)cudaSetDevice(c->model->device);
    if (c->decode)
        (void)cudaGraphExecDestroy(c->decode);
    if (c->stream)
        (void)cudaStreamDestroy(c->stream);
    if (c->arena)
        (void)cudaFree(c->arena);
    if (c->h_params)
        (void)cudaFreeHost(c->h_params);
    if (c->h_logits)
        (void)cudaFreeHost(c->h_logits);
    free(c);
}

static l2_acts place_acts(placer *p, int64_t tokens, int64_t n) {
    l2_acts a;
    a.f = (float *)place(p, (uint64_t)(tokens * n) * 4u);
    a.q = (uint32_t *)place(p, (uint64_t)(tokens * n));
    a.ds = (float2 *)place(p, (uint64_t)(tokens * n / L2_QK) * sizeof(float2));
    return a;
}

static void place_context(llama2_context *c, placer *p) {
    const llama2_model *m = c->model;
    const int64_t ub = L2_UBATCH, E = m->n_embd, KV = (int64_t)m->n_head_kv * m->head_dim;
    const uint64_t cache = (uint64_t)m->n_layer * (uint64_t)KV * (uint64_t)c->n_ctx * sizeof(__half);
    c->k_cache = (__half *)place(p, cache);
    c->v_cache = (__half *)place(p, cache);
    c->x = (float *)place(p, (uint64_t)(ub * E) * 4u);
    c->qkv = (float *)place(p, (uint64_t)(ub * (E + 2 * KV)) * 4u);
    c->logits = (float *)place(p, (uint64_t)(ub * m->n_vocab) * 4u);
    c->xn = place_acts(p, ub, E);
    c->att = place_acts(p, ub, E);
    c->h = place_acts(p, ub, m->n_ff);
    /* ranges of at least 128 keys (one pass of the kernel), at most 64 of them;
     * LLAMA2_CUDA_SPLIT_KEYS sets the range length (tuning, and tests on tiny contexts) */
    const int per = (c->n_ctx + 63) / 64;
    const char *env = getenv("LLAMA2_CUDA_SPLIT_KEYS");
    const int forced = env && *env ? atoi(env) : 0;
    c->split.keys_per_split = forced > 0 ? forced : per <= 128 ? 128 : (per + 127) / 128 * 128;
    c->split.n_split = (c->n_ctx + c->split.keys_per_split - 1) / c->split.keys_per_split;
    c->split.part_o = (float *)place(p, (uint64_t)m->n_head * (uint64_t)c->split.n_split * (uint64_t)m->head_dim * 4u);
    c->split.part_ml = (float2 *)place(p, (uint64_t)m->n_head * (uint64_t)c->split.n_split * sizeof(float2));
    c->d_params = (int32_t *)place(p, (uint64_t)(ub + 1) * 4u);
}

static llama2_status context_init(llama2_context *c, char *err, size_t err_len) {
    const llama2_model *m = c->model;
    placer p = {NULL, 0, NULL, 0};
    size_t free_b = 0, total_b = 0;
    CK(cudaSetDevice(m->device));
    place_context(c, &p);
    CK(cudaMemGetInfo(&free_b, &total_b));
    if (p.used + L2_MEM_RESERVE > (uint64_t)free_b)
        return fail(err, err_len, LLAMA2_ERR_NOMEM,
                    "cuda_q4: a context of %d tokens needs %.0f MiB of GPU memory (KV cache %.0f MiB) but %.0f MiB are "
                    "free (of %.0f MiB); use a smaller n_ctx",
                    c->n_ctx, mib(p.used + L2_MEM_RESERVE),
                    mib(2ull * m->n_layer * m->n_head_kv * m->head_dim * (uint64_t)c->n_ctx * 2u), mib(free_b),
                    mib(total_b));
    c->arena_bytes = p.used;
    CK(cudaMalloc((void **)&c->arena, p.used));
    p.base = c->arena;
    p.used = 0;
    place_context(c, &p);
    CK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CK(cudaHostAlloc((void **)&c->h_params, (L2_UBATCH + 1) * sizeof(int32_t), cudaHostAllocDefault));
    CK(cudaHostAlloc((void **)&c->h_logits, (size_t)L2_UBATCH * (size_t)m->n_vocab * sizeof(float),
                     cudaHostAllocDefault));
    const char *env = getenv("LLAMA2_CUDA_GRAPHS");
    c->use_graphs = !(env && strcmp(env, "0") == 0);
    const char *int8 = getenv("LLAMA2_CUDA_INT8");
    c->int8_act = int8 && strcmp(int8, "1") == 0;
    return LLAMA2_OK;
}

static llama2_status context_new(llama2_model *model, int32_t n_ctx, int32_t n_threads, llama2_context **out,
                                 char *err, size_t err_len) {
    (void)n_threads; /* the GPU does the work */
    if (!model || !out)
        return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: NULL argument");
    *out = NULL;
    if (n_ctx <= 0 || n_ctx > (1 << 24))
        return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: n_ctx %d out of range", (int)n_ctx);
    llama2_context *c = (llama2_context *)calloc(1, sizeof *c);
    if (!c)
        return fail(err, err_len, LLAMA2_ERR_NOMEM, "cuda_q4: out of host memory");
    c->model = model;
    c->n_ctx = n_ctx;
    const llama2_status st = context_init(c, err, err_len);
    if (st != LLAMA2_OK) {
        context_free(c);
        return st;
    }
    *out = c;
    return LLAMA2_OK;
}

/* ---- the forward pass -------------------------------------------------------- */

static l2_acts token_row(l2_acts a, int t, int n) {
    l2_acts r = {a.f + (size_t)t * n, a.q + (size_t)t * n / 4, a.ds + (size_t)t * n / L2_QK};
    return r;
}

/* Enqueue n tokens whose positions and ids are in d_params; logits of the last
 * token (or all, when all_logits) land in h_logits. Nothing here waits. */
static llama2_status enqueue_forward(llama2_context *c, int n, int all_logits, char *err, size_t err_len) {
    const llama2_model *m = c->model;
    const cudaStream_t s = c->stream;
    const int E = m->n_embd, F = m->n_ff, hd = m->head_dim, KV = m->n_head_kv * hd, V = m->n_vocab;
    const int32_t *d_pos = c->d_params, *d_tokens = c->d_params + 1;
    const l2_acts none = {NULL, NULL, NULL};
    const uint64_t cache_layer = (uint64_t)KV * (uint64_t)c->n_ctx;
    /* Float activations by default: int8 blocks cost ~0.5% per product on normalised
     * inputs, ~1% in all on the logits, against the 1e-2 budget (q4_math.h). */
    const int fx = !c->int8_act;

    CK(cudaMemcpyAsync(c->d_params, c->h_params, (size_t)(n + 1) * sizeof(int32_t), cudaMemcpyHostToDevice, s));
    CK(l2_embed(s, m->embd, d_tokens, n, c->x));
    for (int l = 0; l < m->n_layer; l++) {
        const l2_layer *L = &m->layers[l];
        const l2_attn_shape a = {m->n_head, m->n_head_kv, hd, m->n_rot, c->n_ctx, m->inv_freq,
                                 c->k_cache + l * cache_layer, c->v_cache + l * cache_layer};
        CK(l2_rmsnorm(s, c->x, L->attn_norm, n, E, m->rms_eps, c->xn));
        if (n == 1)
            CK(l2_matvec(s, L->qkv, c->xn, L2_EPI_STORE, fx, c->qkv, none, m->n_sm));
        else
            CK(l2_gemm(s, L->qkv, c->xn.f, n, L2_EPI_STORE, c->qkv, E + 2 * KV));
        CK(l2_rope_store(s, c->qkv, n, d_pos, a));
        /* one token: split the cache across blocks; a batch has blocks enough per token */
        const l2_attn_split one_range = {1, c->n_ctx, NULL, NULL};
        CK(l2_attention(s, c->qkv, n, d_pos, a, n == 1 ? c->split : one_range, c->att.f));
        if (n == 1) {
            if (!fx)
                CK(l2_quantize(s, c->att, 1, E));
            CK(l2_matvec(s, L->o, c->att, L2_EPI_ADD, fx, c->x, none, m->n_sm));
        } else {
            CK(l2_gemm(s, L->o, c->att.f, n, L2_EPI_ADD, c->x, E));
        }
        CK(l2_rmsnorm(s, c->x, L->ffn_norm, n, E, m->rms_eps, c->xn));
        if (n == 1) {
            CK(l2_matvec(s, L->gate_up, c->xn, L2_EPI_SWIGLU, fx, c->h.f, none, m->n_sm));
            /* float activations: int8 blocks of the heavy-tailed SwiGLU output cost ~1% */
            CK(l2_matvec(s, L->down, c->h, L2_EPI_ADD, 1, c->x, none, m->n_sm));
        } else {
            CK(l2_gemm(s, L->gate_up, c->xn.f, n, L2_EPI_SWIGLU, c->h.f, F));
            CK(l2_gemm(s, L->down, c->h.f, n, L2_EPI_ADD, c->x, E));
        }
    }
    CK(l2_rmsnorm(s, c->x, m->out_norm, n, E, m->rms_eps, c->xn));
    const int n_out = all_logits ? n : 1;
    if (n_out > 1)
        CK(l2_gemm(s, m->output, c->xn.f, n, L2_EPI_STORE, c->logits, V));
    else
        CK(l2_matvec(s, m->output, token_row(c->xn, n - 1, E), L2_EPI_STORE, fx, c->logits, none, m->n_sm));
    CK(cudaMemcpyAsync(c->h_logits, c->logits, (size_t)n_out * (size_t)V * sizeof(float), cudaMemcpyDeviceToHost, s));
    return LLAMA2_OK;
}

/* Capture the one-token step once per context; it reads its token and position
 * from d_params, so every later decode step is one graph launch. */
static llama2_status decode_graph(llama2_context *c, char *err, size_t err_len) {
    if (c->decode)
        return LLAMA2_OK;
    cudaGraph_t g = NULL;
    CK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    llama2_status st = enqueue_forward(c, 1, 0, err, err_len);
    const cudaError_t e = cudaStreamEndCapture(c->stream, &g);
    if (st == LLAMA2_OK && e != cudaSuccess)
        st = cuda_fail(e, "cudaStreamEndCapture", __LINE__, err, err_len);
    if (st == LLAMA2_OK) {
        const cudaError_t ei = cudaGraphInstantiate(&c->decode, g, 0);
        if (ei != cudaSuccess) {
            c->decode = NULL;
            st = cuda_fail(ei, "cudaGraphInstantiate", __LINE__, err, err_len);
        }
    }
    if (g)
        (void)cudaGraphDestroy(g);
    (void)cudaGetLastError();
    return st;
}

static llama2_status eval_chunk(llama2_context *c, const int32_t *tokens, int n, int pos, int all_logits,
                                float *logits, char *err, size_t err_len) {
    const llama2_model *m = c->model;
    c->h_params[0] = pos;
    memcpy(c->h_params + 1, tokens, (size_t)n * sizeof(int32_t));
    if (n == 1 && c->use_graphs) {
        CHECK(decode_graph(c, err, err_len));
        CK(cudaGraphLaunch(c->decode, c->stream));
    } else {
        CHECK(enqueue_forward(c, n, all_logits, err, err_len));
    }
    CK(cudaStreamSynchronize(c->stream));
    if (logits)
        memcpy(logits, c->h_logits, (size_t)(all_logits ? n : 1) * (size_t)m->n_vocab * sizeof(float));
    return LLAMA2_OK;
}

static llama2_status eval(llama2_context *c, const int32_t *tokens, int32_t n_tokens, int32_t pos, int32_t all_logits,
                          float *logits, char *err, size_t err_len) {
    if (!c || !tokens || !logits || n_tokens <= 0)
        return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: eval needs a context, tokens and a logits buffer");
    const llama2_model *m = c->model;
    if (pos < 0 || pos > c->n_past)
        return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: position %d is past the %d cached tokens", (int)pos,
                    c->n_past);
    if ((int64_t)pos + n_tokens > c->n_ctx)
        return fail(err, err_len, LLAMA2_ERR_CONTEXT_FULL, "cuda_q4: %d + %d tokens exceed the context of %d",
                    (int)pos, (int)n_tokens, c->n_ctx);
    for (int32_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= m->n_vocab)
            return fail(err, err_len, LLAMA2_ERR_INVALID, "cuda_q4: token %d at index %d is outside the vocabulary "
                        "of %d", (int)tokens[i], (int)i, m->n_vocab);
    CK(cudaSetDevice(m->device));
    c->n_past = pos;
    for (int32_t off = 0; off < n_tokens; off += L2_UBATCH) {
        const int n = n_tokens - off < L2_UBATCH ? n_tokens - off : L2_UBATCH;
        const int last = off + n == n_tokens;
        float *dst = all_logits ? logits + (size_t)off * (size_t)m->n_vocab : last ? logits : NULL;
        CHECK(eval_chunk(c, tokens + off, n, pos + off, all_logits, dst, err, err_len));
        c->n_past = pos + off + n;
    }
    return LLAMA2_OK;
}

static llama2_status truncate_ctx(llama2_context *c, int32_t n_pos) {
    if (!c || n_pos < 0)
        return LLAMA2_ERR_INVALID;
    if (n_pos < c->n_past)
        c->n_past = n_pos;
    return LLAMA2_OK;
}

static llama2_status set_threads(llama2_context *c, int32_t n_threads) {
    return c && n_threads >= 0 ? LLAMA2_OK : LLAMA2_ERR_INVALID;
}

/* ---- the ABI table -------------------------------------------------------------- */

static const int32_t native_types[] = {LLAMA2_TYPE_Q4_0, LLAMA2_TYPE_Q4_1, LLAMA2_TYPE_Q8_0, LLAMA2_TYPE_F16, -1};

static const llama2_backend_api api = {
    LLAMA2_ABI_MAJOR,
    LLAMA2_ABI_MINOR,
    (uint32_t)sizeof(llama2_backend_api),
    "cuda_q4",
    "NVIDIA GPU (CUDA, sm_75+): Q4_0/Q4_1 dp4a decode in a CUDA graph, fp16 tensor-core prefill, fp16 KV cache",
    native_types,
    probe,
    model_load,
    model_memory,
    model_free,
    context_new,
    context_free,
    eval,
    truncate_ctx,
    set_threads,
};

extern "C" __attribute__((visibility("default"))) const llama2_backend_api *llama2_backend_get(void) { return &api; }
