/* Loading a model: find every tensor by its GGUF name, check it against the
 * hyper-parameters, and place it as the backend's policy says (in place, or
 * converted into a buffer the model owns). Nothing past this file trusts the
 * description. */
#define _DEFAULT_SOURCE /* madvise */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "convert.h"
#include "cpu_engine.h"
#include "repack.h"

#define MAX_DIM (1 << 24)  /* n_vocab, n_embd, n_ff */
#define MAX_LAYERS 4096

typedef struct {
    const l2_cpu_policy *policy;
    const llama2_model_desc *desc;
    llama2_model *model;
    char *err;
    size_t err_len;
} loader;

static const llama2_tensor *find_tensor(const llama2_model_desc *desc, const char *name) {
    for (int32_t i = 0; i < desc->n_tensors; i++)
        if (strcmp(desc->tensors[i].name, name) == 0)
            return &desc->tensors[i];
    return NULL;
}

static llama2_status check_hparams(const llama2_model_desc *d, char *err, size_t err_len) {
    const struct {
        const char *name;
        int32_t value, max;
    } dims[] = {
        {"n_vocab", d->n_vocab, MAX_DIM}, {"n_embd", d->n_embd, MAX_DIM}, {"n_ff", d->n_ff, MAX_DIM},
        {"n_layer", d->n_layer, MAX_LAYERS}, {"n_head", d->n_head, d->n_embd},
        {"n_head_kv", d->n_head_kv, d->n_head},
    };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i].value <= 0 || dims[i].value > dims[i].max)
            return l2_error(err, err_len, LLAMA2_ERR_INVALID, "%s = %d is out of range (1..%d)", dims[i].name,
                            dims[i].value, dims[i].max);
    if (d->n_embd % d->n_head != 0)
        return l2_error(err, err_len, LLAMA2_ERR_INVALID, "n_embd = %d is not a multiple of n_head = %d",
                        d->n_embd, d->n_head);
    if (d->n_head % d->n_head_kv != 0)
        return l2_error(err, err_len, LLAMA2_ERR_INVALID, "n_head = %d is not a multiple of n_head_kv = %d",
                        d->n_head, d->n_head_kv);
    int32_t head_dim = d->n_embd / d->n_head;
    if (d->n_rot <= 0 || d->n_rot % 2 != 0 || d->n_rot > head_dim)
        return l2_error(err, err_len, LLAMA2_ERR_INVALID, "n_rot = %d must be even and in 2..head_dim = %d",
                        d->n_rot, head_dim);
    if (!isfinite(d->rms_eps) || d->rms_eps < 0.0f)
        return l2_error(err, err_len, LLAMA2_ERR_INVALID, "rms_eps = %g is not a finite non-negative number",
                        (double)d->rms_eps);
    if (!isfinite(d->rope_freq_base) || d->rope_freq_base <= 0.0f)
        return l2_error(err, err_len, LLAMA2_ERR_INVALID, "rope_freq_base = %g is not a finite positive number",
                        (double)d->rope_freq_base);
    return LLAMA2_OK;
}

/* The tensor called name, checked to be [rows, cols] (ggml ne = {cols, rows})
 * with exactly the bytes its type and shape need. */
static llama2_status get_tensor(loader *ld, const char *name, int64_t rows, int64_t cols, l2_matrix *m) {
    const llama2_tensor *t = find_tensor(ld->desc, name);
    if (!t)
        return l2_error(ld->err, ld->err_len, LLAMA2_ERR_INVALID, "tensor %s is missing", name);
    const char *type_name = l2_type_name(t->type);
    if (!type_name)
        return l2_error(ld->err, ld->err_len, LLAMA2_ERR_UNSUPPORTED, "tensor %s has unsupported type %d", name,
                        t->type);
    if (t->n_dims < 1 || t->n_dims > 4 || t->ne[0] != cols || t->ne[1] != rows || t->ne[2] != 1 || t->ne[3] != 1)
        return l2_error(ld->err, ld->err_len, LLAMA2_ERR_INVALID,
                        "tensor %s has shape ne = [%lld, %lld, %lld, %lld] (n_dims %d), expected [%lld, %lld]",
                        name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                        (long long)t->ne[3], t->n_dims, (long long)cols, (long long)rows);
    int64_t row_bytes = l2_row_bytes(t->type, cols);
    if (row_bytes < 0)
        return l2_error(ld->err, ld->err_len, LLAMA2_ERR_INVALID,
                        "tensor %s: rows of %lld weights are not whole %s blocks of %d", name, (long long)cols,
                        type_name, L2_QK);
    if (row_bytes > 0 && rows > INT64_MAX / row_bytes)
        return l2_error(ld->err, ld->err_len, LLAMA2_ERR_INVALID, "tensor %s: size overflows", name);
    if (t->n_bytes != (uint64_t)(rows * row_bytes))
        return l2_error(ld->err, ld->err_len, LLAMA2_ERR_INVALID,
                        "tensor %s has %llu bytes, but %lld x %lld %s needs %lld", name,
                        (unsigned long long)t->n_bytes, (long long)rows, (long long)cols, type_name,
                        (long long)(rows * row_bytes));
    if (!t->data)
        return l2_error(ld->err, ld->err_len, LLAMA2_ERR_INVALID, "tensor %s has no data", name);
    /* every type's elements are 2 or 4 bytes wide: a misaligned pointer would be undefined behaviour */
    size_t align = t->type == LLAMA2_TYPE_F32 ? 4 : 2;
    if ((uintptr_t)t->data % align != 0)
        return l2_error(ld->err, ld->err_len, LLAMA2_ERR_INVALID, "tensor %s data is not %zu-byte aligned", name,
                        align);
    *m = (l2_matrix){.type = t->type, .rows = rows, .cols = cols, .row_bytes = row_bytes, .data = t->data};
    return LLAMA2_OK;
}

/* Keep m in place if its type is native for the role, else convert it to the role's type. */
static llama2_status place(loader *ld, const char *name, l2_matrix *m, const l2_role_policy *role) {
    if (role->native & L2_TYPE_BIT(m->type))
        return LLAMA2_OK;
    void *buf;
    uint64_t bytes;
    llama2_status st = l2_convert_tensor(m->type, m->data, m->rows, m->cols, role->convert_to, &buf, &bytes);
    if (st != LLAMA2_OK)
        return l2_error(ld->err, ld->err_len, st, "cannot convert tensor %s from %s to %s%s", name,
                        l2_type_name(m->type), l2_type_name(role->convert_to) ? l2_type_name(role->convert_to) : "?",
                        st == LLAMA2_ERR_NOMEM ? ": out of memory" : "");
    llama2_model *model = ld->model;
    model->owned[model->n_owned++] = buf;
    model->owned_bytes += bytes;
    m->type = role->convert_to;
    m->row_bytes = l2_row_bytes(m->type, m->cols);
    m->data = buf;
    return LLAMA2_OK;
}

static llama2_status load_matrix(loader *ld, const char *name, int64_t rows, int64_t cols, l2_role role,
                                 l2_matrix *m) {
    llama2_status st = get_tensor(ld, name, rows, cols, m);
    if (st == LLAMA2_OK)
        st = place(ld, name, m, &ld->policy->role[role]);
    if (st == LLAMA2_OK && role != L2_ROLE_EMBEDDING && m->type == LLAMA2_TYPE_F16)
        return l2_error(ld->err, ld->err_len, LLAMA2_ERR_INTERNAL,
                        "the backend's policy leaves %s as F16, which its matmul cannot compute", name);
    return st;
}

/* Norm weights are always used as f32. */
static llama2_status load_vector(loader *ld, const char *name, int64_t n, const float **out) {
    static const l2_role_policy as_f32 = {L2_TYPE_BIT(LLAMA2_TYPE_F32), LLAMA2_TYPE_F32};
    l2_matrix m;
    llama2_status st = get_tensor(ld, name, 1, n, &m);
    if (st == LLAMA2_OK)
        st = place(ld, name, &m, &as_f32);
    *out = m.data;
    return st;
}

static llama2_status load_weights(loader *ld) {
    llama2_model *m = ld->model;
    llama2_status st = load_matrix(ld, "token_embd.weight", m->n_vocab, m->n_embd, L2_ROLE_EMBEDDING, &m->token_embd);
    if (st != LLAMA2_OK)
        return st;
    /* without output.weight the output is tied to the embedding (placed under the output role) */
    if (find_tensor(ld->desc, "output.weight"))
        st = load_matrix(ld, "output.weight", m->n_vocab, m->n_embd, L2_ROLE_OUTPUT, &m->output);
    else
        st = load_matrix(ld, "token_embd.weight", m->n_vocab, m->n_embd, L2_ROLE_OUTPUT, &m->output);
    if (st == LLAMA2_OK)
        st = load_vector(ld, "output_norm.weight", m->n_embd, &m->output_norm);
    for (int32_t i = 0; i < m->n_layer && st == LLAMA2_OK; i++) {
        l2_layer *l = &m->layers[i];
        char name[64];
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%d." suffix ".weight", (int)i), name)
        if ((st = load_vector(ld, NAME("attn_norm"), m->n_embd, &l->attn_norm)) ||
            (st = load_matrix(ld, NAME("attn_q"), m->n_embd, m->n_embd, L2_ROLE_MATRIX, &l->wq)) ||
            (st = load_matrix(ld, NAME("attn_k"), m->kv_dim, m->n_embd, L2_ROLE_MATRIX, &l->wk)) ||
            (st = load_matrix(ld, NAME("attn_v"), m->kv_dim, m->n_embd, L2_ROLE_MATRIX, &l->wv)) ||
            (st = load_matrix(ld, NAME("attn_output"), m->n_embd, m->n_embd, L2_ROLE_MATRIX, &l->wo)) ||
            (st = load_vector(ld, NAME("ffn_norm"), m->n_embd, &l->ffn_norm)) ||
            (st = load_matrix(ld, NAME("ffn_gate"), m->n_ff, m->n_embd, L2_ROLE_MATRIX, &l->w_gate)) ||
            (st = load_matrix(ld, NAME("ffn_up"), m->n_ff, m->n_embd, L2_ROLE_MATRIX, &l->w_up)) ||
            (st = load_matrix(ld, NAME("ffn_down"), m->n_embd, m->n_ff, L2_ROLE_MATRIX, &l->w_down)))
            return st;
#undef NAME
    }
    return st;
}

/* Repack a quantized matrix into groups of eight interleaved rows (repack.h):
 * the same bytes in a layout the SIMD GEMMs read without horizontal sums. The
 * copy sits in 2 MB-aligned memory marked for transparent huge pages, so
 * streaming it through the TLB costs less than the file's 4 kB pages. A matrix
 * the model already owns (converted at load) is replaced, not duplicated. */
#define HUGE_PAGE ((size_t)2 << 20)

static llama2_status repack_matrix(loader *ld, const char *name, l2_matrix *m) {
    if ((m->type != LLAMA2_TYPE_Q8_0 && m->type != LLAMA2_TYPE_Q4_0 && m->type != LLAMA2_TYPE_Q4_1) ||
        m->rows % L2_RX != 0)
        return LLAMA2_OK;
    llama2_model *model = ld->model;
    size_t bytes = (size_t)(m->rows * m->row_bytes);
    size_t alloc = (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    void *buf = aligned_alloc(HUGE_PAGE, alloc);
    if (!buf)
        return l2_error(ld->err, ld->err_len, LLAMA2_ERR_NOMEM, "out of memory repacking tensor %s", name);
    madvise(buf, alloc, MADV_HUGEPAGE); /* advice only: without huge pages it still works */
    int64_t groups = m->rows / L2_RX, group_bytes = L2_RX * m->row_bytes;
#pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < groups; g++)
        l2_repack_x8(m->type, (const char *)m->data + g * group_bytes, (char *)buf + g * group_bytes, L2_RX,
                     m->cols);
    int32_t slot = model->n_owned;
    for (int32_t i = 0; i < model->n_owned; i++)
        if (model->owned[i] == m->data)
            slot = i;
    if (slot < model->n_owned)
        free(model->owned[slot]); /* its bytes were counted when it was converted */
    else {
        model->n_owned++;
        model->owned_bytes += bytes;
    }
    model->owned[slot] = buf;
    m->data = buf;
    m->x8 = 1;
    return LLAMA2_OK;
}

/* Every matrix the matmul reads (not the embedding table: a lookup wants plain rows).
 * LLAMA2_REPACK=0 keeps the file's layout, to measure what repacking buys. */
static llama2_status repack_matrices(loader *ld) {
    const char *env = getenv("LLAMA2_REPACK");
    if (env && strcmp(env, "0") == 0)
        return LLAMA2_OK;
    llama2_model *m = ld->model;
    llama2_status st = repack_matrix(ld, "output.weight", &m->output);
    for (int32_t i = 0; i < m->n_layer && st == LLAMA2_OK; i++) {
        l2_layer *l = &m->layers[i];
        l2_matrix *mats[] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
        char name[48];
        snprintf(name, sizeof name, "of layer %d", (int)i);
        for (size_t j = 0; j < sizeof mats / sizeof mats[0] && st == LLAMA2_OK; j++)
            st = repack_matrix(ld, name, mats[j]);
    }
    return st;
}

/* Names must be present and unique, or "the tensor called X" would be ambiguous. */
static llama2_status check_names(const llama2_model_desc *d, char *err, size_t err_len) {
    if (d->n_tensors < 0 || (d->n_tensors > 0 && !d->tensors))
        return l2_error(err, err_len, LLAMA2_ERR_INVALID, "bad tensor table (n_tensors = %d)", d->n_tensors);
    for (int32_t i = 0; i < d->n_tensors; i++)
        if (!d->tensors[i].name)
            return l2_error(err, err_len, LLAMA2_ERR_INVALID, "tensor %d has no name", i);
    for (int32_t i = 0; i < d->n_tensors; i++)
        if (find_tensor(d, d->tensors[i].name) != &d->tensors[i])
            return l2_error(err, err_len, LLAMA2_ERR_INVALID, "tensor %s appears twice", d->tensors[i].name);
    return LLAMA2_OK;
}

llama2_status l2_cpu_model_load(const l2_cpu_policy *policy, const llama2_model_desc *desc,
                                llama2_model **out, char *err, size_t err_len) {
    if (!out)
        return l2_error(err, err_len, LLAMA2_ERR_INVALID, "model_load: out is NULL");
    *out = NULL;
    if (!desc)
        return l2_error(err, err_len, LLAMA2_ERR_INVALID, "model_load: desc is NULL");
    llama2_status st = check_hparams(desc, err, err_len);
    if (st == LLAMA2_OK)
        st = check_names(desc, err, err_len);
    if (st != LLAMA2_OK)
        return st;

    llama2_model *m = calloc(1, sizeof *m);
    if (!m)
        return l2_error(err, err_len, LLAMA2_ERR_NOMEM, "out of memory");
    m->n_vocab = desc->n_vocab;
    m->n_embd = desc->n_embd;
    m->n_layer = desc->n_layer;
    m->n_head = desc->n_head;
    m->n_head_kv = desc->n_head_kv;
    m->n_ff = desc->n_ff;
    m->n_rot = desc->n_rot;
    m->head_dim = desc->n_embd / desc->n_head;
    m->kv_dim = m->head_dim * desc->n_head_kv;
    m->rms_eps = desc->rms_eps;
    m->rope_freq_base = desc->rope_freq_base;
    m->kernels = l2_kernels_best();
    m->layers = calloc((size_t)m->n_layer, sizeof *m->layers);
    /* at most every matrix and vector converted: 3 global tensors and 9 per layer */
    m->owned = calloc(3 + 9 * (size_t)m->n_layer, sizeof *m->owned);
    if (!m->layers || !m->owned) {
        l2_cpu_model_free(m);
        return l2_error(err, err_len, LLAMA2_ERR_NOMEM, "out of memory");
    }
    loader ld = {.policy = policy, .desc = desc, .model = m, .err = err, .err_len = err_len};
    st = load_weights(&ld);
    if (st == LLAMA2_OK)
        st = repack_matrices(&ld);
    if (st != LLAMA2_OK) {
        l2_cpu_model_free(m);
        return st;
    }
    *out = m;
    return LLAMA2_OK;
}

uint64_t l2_cpu_model_memory(const llama2_model *model) {
    if (!model)
        return 0;
    return model->owned_bytes + sizeof *model + (uint64_t)model->n_layer * sizeof *model->layers;
}

void l2_cpu_model_free(llama2_model *model) {
    if (!model)
        return;
    for (int32_t i = 0; i < model->n_owned; i++)
        free(model->owned[i]);
    free(model->owned);
    free(model->layers);
    free(model);
}
