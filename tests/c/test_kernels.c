#define _POSIX_C_SOURCE 200809L /* setenv */
/* Kernel tests: every kernel set this CPU runs, against the scalar set and
 * against float64 arithmetic on the dequantized values.
 *
 * Built and run by tests/test_kernels.py (also under ASan/UBSan). Inputs are
 * fresh random numbers each run; the seed is printed so a failure can be
 * replayed with `test_kernels SEED`. Exit status 0 = all passed.
 *
 * Error bounds, per type (u = 2^-24, float32 unit roundoff):
 *  - quantize_act: each q is roundf(x / d) with d = max|x| / 127, so
 *    |x - d q| <= d / 2 (+ rounding of d itself); SIMD bytes equal scalar bytes.
 *  - Q8_0, Q4_0, Q4_1 dots against float64 of the same dequantized weights and
 *    quantized activations: the per-block integer sums are exact, so the only
 *    error is float32 arithmetic on nb block terms and the scale products:
 *    |err| <= (nb + 8) * 2u * sum|w_i x_i|.
 *  - the same dots against float64 with the original (unquantized) activations:
 *    additionally the activation rounding, |err| <= sum_b (d_b / 2) sum_{i in b} |w_i|.
 *  - f32 dot: |err| <= (n/8 + 16) * 2u * sum|w_i x_i| (8-lane partial sums).
 *  - SIMD against scalar: both within the float64 bound, so within twice it.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "kernels.h"
#include "repack.h"

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_uniform(void) /* [0, 1) */
{
    return (double)(rng_next() >> 11) * 0x1.0p-53;
}

static float rng_normal(void)
{
    double u1 = rng_uniform(), u2 = rng_uniform();
    return (float)(sqrt(-2.0 * log(u1 + 1e-300)) * cos(6.283185307179586 * u2));
}

static int failures;

#define CHECK(cond, ...)                                                                                    \
    do {                                                                                                    \
        if (!(cond)) {                                                                                      \
            failures++;                                                                                     \
            if (failures <= 20) {                                                                           \
                printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                 \
                printf(__VA_ARGS__);                                                                        \
                printf("\n");                                                                               \
            }                                                                                               \
        }                                                                                                   \
    } while (0)

static const double U = 0x1.0p-24;

/* ---- float64 dequantization, written independently of convert.c ---- */

static double fp16_to_double(uint16_t h)
{
    int exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    double v = exp == 0 ? ldexp(man, -24) : ldexp(1024 + man, exp - 25);
    return (h & 0x8000) ? -v : v;
}

static void dequant_q8_0(const l2_block_q8_0 *b, int64_t nb, double *out)
{
    for (int64_t i = 0; i < nb; i++)
        for (int j = 0; j < L2_QK; j++)
            out[i * L2_QK + j] = fp16_to_double(b[i].d) * b[i].qs[j];
}

static void dequant_q4_0(const l2_block_q4_0 *b, int64_t nb, double *out)
{
    for (int64_t i = 0; i < nb; i++)
        for (int j = 0; j < L2_QK / 2; j++) {
            out[i * L2_QK + j] = fp16_to_double(b[i].d) * ((b[i].qs[j] & 15) - 8);
            out[i * L2_QK + j + 16] = fp16_to_double(b[i].d) * ((b[i].qs[j] >> 4) - 8);
        }
}

static void dequant_q4_1(const l2_block_q4_1 *b, int64_t nb, double *out)
{
    for (int64_t i = 0; i < nb; i++)
        for (int j = 0; j < L2_QK / 2; j++) {
            out[i * L2_QK + j] = fp16_to_double(b[i].d) * (b[i].qs[j] & 15) + fp16_to_double(b[i].m);
            out[i * L2_QK + j + 16] = fp16_to_double(b[i].d) * (b[i].qs[j] >> 4) + fp16_to_double(b[i].m);
        }
}

static void dequant_act(const l2_block_q8_act *b, int64_t nb, double *out)
{
    for (int64_t i = 0; i < nb; i++)
        for (int j = 0; j < L2_QK; j++)
            out[i * L2_QK + j] = (double)b[i].d * b[i].qs[j];
}

/* ---- random weights, as a quantizer would produce them ---- */

static uint16_t random_scale(void)
{
    /* spans three decades, like real per-block scales */
    return l2_f32_to_fp16((float)(1e-4 * pow(10.0, 3.0 * rng_uniform())));
}

static void random_q8_0(l2_block_q8_0 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        b[i].d = random_scale();
        for (int j = 0; j < L2_QK; j++)
            b[i].qs[j] = (int8_t)((int)(rng_next() % 255) - 127); /* -127..127, as quantizers emit */
    }
}

static void random_q4_0(l2_block_q4_0 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        b[i].d = random_scale();
        for (int j = 0; j < L2_QK / 2; j++)
            b[i].qs[j] = (uint8_t)rng_next();
    }
}

static void random_q4_1(l2_block_q4_1 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        b[i].d = random_scale();
        b[i].m = l2_f32_to_fp16(-(float)fp16_to_double(b[i].d) * (float)(8.0 + 4.0 * rng_normal()));
        for (int j = 0; j < L2_QK / 2; j++)
            b[i].qs[j] = (uint8_t)rng_next();
    }
}

static void random_activations(float *x, int64_t n)
{
    /* mostly O(1), with an occasional outlier and exact zero block, like real activations */
    for (int64_t i = 0; i < n; i++)
        x[i] = rng_normal() * (rng_next() % 64 == 0 ? 20.0f : 1.0f);
    if (n >= 2 * L2_QK && rng_next() % 4 == 0)
        memset(x + L2_QK, 0, L2_QK * sizeof *x);
}

/* ---- the checks ---- */

static void check_quantize_act(const l2_kernels *k, const l2_kernels *scalar, int64_t n)
{
    int64_t nb = n / L2_QK;
    float *x = malloc(n * sizeof *x);
    l2_block_q8_act *a = malloc(nb * sizeof *a), *s = malloc(nb * sizeof *s);
    random_activations(x, n);
    /* exact ties (x / d = k + 1/2) exercise roundf's away-from-zero rule */
    x[3] = 127.0f;
    x[4] = 0.5f;
    x[5] = -2.5f;
    k->quantize_act(x, a, n);
    scalar->quantize_act(x, s, n);
    for (int64_t b = 0; b < nb; b++) {
        CHECK(a[b].d == s[b].d && a[b].s == s[b].s && memcmp(a[b].qs, s[b].qs, L2_QK) == 0,
              "%s quantize_act n=%lld block %lld differs from scalar", k->isa, (long long)n, (long long)b);
        double sum = 0;
        for (int j = 0; j < L2_QK; j++) {
            double xv = x[b * L2_QK + j], dq = (double)a[b].d * a[b].qs[j];
            CHECK(fabs(xv - dq) <= a[b].d * (0.5 + 300 * U) + 1e-30, "%s quantize_act n=%lld: |%g - %g| > d/2",
                  k->isa, (long long)n, xv, dq);
            sum += a[b].qs[j];
        }
        CHECK(fabs(a[b].s - a[b].d * sum) <= 2 * U * fabs(a[b].d * sum), "%s quantize_act: s != d*sum(q)",
              k->isa);
    }
    free(x);
    free(a);
    free(s);
}

typedef enum { T_Q8_0, T_Q4_0, T_Q4_1 } qtype;

static const char *qtype_name(qtype t)
{
    return t == T_Q8_0 ? "q8_0" : t == T_Q4_0 ? "q4_0" : "q4_1";
}

static float run_dot(const l2_kernels *k, qtype t, int64_t n, const void *w, const l2_block_q8_act *xq)
{
    switch (t) {
    case T_Q8_0: return k->dot_q8_0(n, w, xq);
    case T_Q4_0: return k->dot_q4_0(n, w, xq);
    default: return k->dot_q4_1(n, w, xq);
    }
}

/* worst relative error seen per type, against sum|w x|, for the summary line */
static double worst_rel[3], worst_rel_fx[3];

static void check_dot(const l2_kernels *k, const l2_kernels *scalar, qtype t, int64_t n)
{
    int64_t nb = n / L2_QK;
    size_t block_bytes = t == T_Q8_0 ? sizeof(l2_block_q8_0) : t == T_Q4_0 ? sizeof(l2_block_q4_0)
                                                                            : sizeof(l2_block_q4_1);
    /* rows of a real matrix are only 2-byte aligned (34- and 18-byte blocks) */
    unsigned char *buf = malloc(nb * block_bytes + 2);
    void *w = buf + 2;
    float *x = malloc(n * sizeof *x);
    l2_block_q8_act *xq = malloc(nb * sizeof *xq);
    double *wd = malloc(n * sizeof *wd), *xd = malloc(n * sizeof *xd);
    if (t == T_Q8_0) {
        l2_block_q8_0 *tmp = malloc(nb * sizeof *tmp);
        random_q8_0(tmp, nb);
        dequant_q8_0(tmp, nb, wd);
        memcpy(w, tmp, nb * sizeof *tmp);
        free(tmp);
    } else if (t == T_Q4_0) {
        l2_block_q4_0 *tmp = malloc(nb * sizeof *tmp);
        random_q4_0(tmp, nb);
        dequant_q4_0(tmp, nb, wd);
        memcpy(w, tmp, nb * sizeof *tmp);
        free(tmp);
    } else {
        l2_block_q4_1 *tmp = malloc(nb * sizeof *tmp);
        random_q4_1(tmp, nb);
        dequant_q4_1(tmp, nb, wd);
        memcpy(w, tmp, nb * sizeof *tmp);
        free(tmp);
    }
    random_activations(x, n);
    scalar->quantize_act(x, xq, n);
    dequant_act(xq, nb, xd);

    double exact = 0, abs_sum = 0, exact_fx = 0, act_bound = 0;
    for (int64_t i = 0; i < n; i++) {
        exact += wd[i] * xd[i];
        abs_sum += fabs(wd[i] * xd[i]) + fabs(wd[i] * x[i]);
        exact_fx += wd[i] * (double)x[i];
        act_bound += fabs(wd[i]) * xq[i / L2_QK].d * 0.5;
    }
    double bound = (double)(nb + 8) * 2 * U * abs_sum + 1e-30;
    float got = run_dot(k, t, n, w, xq);
    float ref = run_dot(scalar, t, n, w, xq);
    CHECK(fabs(got - exact) <= bound, "%s dot_%s n=%lld: got %.9g, float64 %.9g, bound %.3g", k->isa,
          qtype_name(t), (long long)n, got, exact, bound);
    CHECK(fabs(got - ref) <= 2 * bound, "%s dot_%s n=%lld: got %.9g, scalar %.9g", k->isa, qtype_name(t),
          (long long)n, got, ref);
    CHECK(fabs(got - exact_fx) <= bound + act_bound * (1 + 1e-6), "%s dot_%s n=%lld vs unquantized x: %.9g %.9g",
          k->isa, qtype_name(t), (long long)n, got, exact_fx);
    if (abs_sum > 0) {
        double r = fabs(got - exact) / abs_sum, r_fx = fabs(got - exact_fx) / abs_sum;
        worst_rel[t] = r > worst_rel[t] ? r : worst_rel[t];
        worst_rel_fx[t] = r_fx > worst_rel_fx[t] ? r_fx : worst_rel_fx[t];
    }
    free(buf);
    free(x);
    free(xq);
    free(wd);
    free(xd);
}

static double worst_rel_f32;

static void check_dot_f32(const l2_kernels *k, const l2_kernels *scalar, int64_t n)
{
    /* offset by one float so the rows are unaligned, as rows of an odd-width matrix are */
    float *wbuf = malloc((n + 1) * sizeof *wbuf), *xbuf = malloc((n + 1) * sizeof *xbuf);
    float *w = wbuf + 1, *x = xbuf + 1;
    double exact = 0, abs_sum = 0;
    for (int64_t i = 0; i < n; i++) {
        w[i] = rng_normal();
        x[i] = rng_normal();
        exact += (double)w[i] * x[i];
        abs_sum += fabs((double)w[i] * x[i]);
    }
    double bound = ((double)n / 8 + 16) * 2 * U * abs_sum + 1e-30;
    float got = k->dot_f32(n, w, x), ref = scalar->dot_f32(n, w, x);
    CHECK(fabs(got - exact) <= bound, "%s dot_f32 n=%lld: got %.9g, float64 %.9g, bound %.3g", k->isa,
          (long long)n, got, exact, bound);
    CHECK(fabs(got - ref) <= 2 * bound, "%s dot_f32 n=%lld: got %.9g, scalar %.9g", k->isa, (long long)n, got,
          ref);
    if (abs_sum > 0 && fabs(got - exact) / abs_sum > worst_rel_f32)
        worst_rel_f32 = fabs(got - exact) / abs_sum;
    free(wbuf);
    free(xbuf);
}

/* The attention kernels over n_rows cached rows of length n, rows padded apart
 * (a KV cache row holds every kv head), against float64 and the scalar set. */
static void check_attention_f32(const l2_kernels *k, const l2_kernels *scalar, int64_t n, int64_t n_rows)
{
    const int64_t stride = n + 3;
    float *rows = malloc((size_t)(n_rows * stride + 1) * sizeof *rows), *x = malloc((size_t)(n + 1) * sizeof *x);
    float *got = malloc((size_t)(n_rows > n ? n_rows : n) * sizeof *got);
    float *ref = malloc((size_t)(n_rows > n ? n_rows : n) * sizeof *ref);
    float *a = malloc((size_t)n_rows * sizeof *a);
    for (int64_t i = 0; i < n_rows * stride + 1; i++)
        rows[i] = rng_normal();
    for (int64_t i = 0; i < n; i++)
        x[i] = rng_normal();
    for (int64_t r = 0; r < n_rows; r++)
        a[r] = (float)(rng_next() % 1000) / 1000.0f; /* weights of a softmax: 0..1 */
    const float scale = 0.125f;
    k->dot_f32_rows(n, x, rows + 1, stride, n_rows, scale, got);
    scalar->dot_f32_rows(n, x, rows + 1, stride, n_rows, scale, ref);
    for (int64_t r = 0; r < n_rows; r++) {
        double exact = 0, abs_sum = 0;
        for (int64_t i = 0; i < n; i++) {
            exact += (double)rows[1 + r * stride + i] * x[i];
            abs_sum += fabs((double)rows[1 + r * stride + i] * x[i]);
        }
        double bound = ((double)n / 8 + 16) * 2 * U * abs_sum * scale + 1e-30;
        CHECK(fabs(got[r] - scale * exact) <= bound, "%s dot_f32_rows n=%lld rows=%lld row %lld: got %.9g, float64 %.9g",
              k->isa, (long long)n, (long long)n_rows, (long long)r, got[r], scale * exact);
        CHECK(fabs(got[r] - ref[r]) <= 2 * bound, "%s dot_f32_rows n=%lld row %lld: got %.9g, scalar %.9g", k->isa,
              (long long)n, (long long)r, got[r], ref[r]);
    }
    k->weighted_sum_f32(n, a, rows + 1, stride, n_rows, got);
    scalar->weighted_sum_f32(n, a, rows + 1, stride, n_rows, ref);
    for (int64_t i = 0; i < n; i++) {
        double exact = 0, abs_sum = 0;
        for (int64_t r = 0; r < n_rows; r++) {
            exact += (double)a[r] * rows[1 + r * stride + i];
            abs_sum += fabs((double)a[r] * rows[1 + r * stride + i]);
        }
        double bound = ((double)n_rows + 16) * 2 * U * abs_sum + 1e-30;
        CHECK(fabs(got[i] - exact) <= bound, "%s weighted_sum_f32 n=%lld rows=%lld [%lld]: got %.9g, float64 %.9g",
              k->isa, (long long)n, (long long)n_rows, (long long)i, got[i], exact);
        CHECK(fabs(got[i] - ref[i]) <= 2 * bound, "%s weighted_sum_f32 n=%lld [%lld]: got %.9g, scalar %.9g",
              k->isa, (long long)n, (long long)i, got[i], ref[i]);
    }
    free(rows);
    free(x);
    free(got);
    free(ref);
    free(a);
}

/* The x8 GEMMs: rows repacked (repack.h), every token count from 1 to 9 (full
 * and partial token tiles), against the scalar set's row-by-row dot products
 * on the original layout, with the same bound as the dots. Output entries
 * outside the 8 x n_tokens written ones must stay untouched. */
static void check_gemm(const l2_kernels *k, const l2_kernels *scalar, qtype t, int64_t n)
{
    const int64_t nb = n / L2_QK, rows = 16;
    const int32_t max_tokens = 9;
    const int64_t x_stride = nb + 1, y_stride = 8 + 3;
    size_t block_bytes = t == T_Q8_0 ? sizeof(l2_block_q8_0) : t == T_Q4_0 ? sizeof(l2_block_q4_0)
                                                                            : sizeof(l2_block_q4_1);
    void *w = malloc(rows * nb * block_bytes), *packed = malloc(rows * nb * block_bytes);
    if (t == T_Q8_0)
        random_q8_0(w, rows * nb);
    else if (t == T_Q4_0)
        random_q4_0(w, rows * nb);
    else
        random_q4_1(w, rows * nb);
    int32_t type = t == T_Q8_0 ? LLAMA2_TYPE_Q8_0 : t == T_Q4_0 ? LLAMA2_TYPE_Q4_0 : LLAMA2_TYPE_Q4_1;
    CHECK(l2_repack_x8(type, w, packed, rows, n) == 0, "repack %s failed", qtype_name(t));
    l2_gemm_x8_fn gemm = t == T_Q8_0 ? k->gemm_q8_0_x8 : t == T_Q4_0 ? k->gemm_q4_0_x8 : k->gemm_q4_1_x8;

    float *x = malloc(n * sizeof *x);
    l2_block_q8_act *xq = malloc(max_tokens * x_stride * sizeof *xq);
    for (int32_t tok = 0; tok < max_tokens; tok++) {
        random_activations(x, n);
        scalar->quantize_act(x, xq + tok * x_stride, n);
    }
    float *y = malloc(max_tokens * y_stride * sizeof *y);
    for (int32_t nt = 1; nt <= max_tokens; nt++) {
        for (int64_t g = 0; g < rows / 8; g++) {
            for (int64_t i = 0; i < max_tokens * y_stride; i++)
                y[i] = 1e30f;
            gemm(n, (const char *)packed + g * 8 * nb * block_bytes, xq, x_stride, nt, y, y_stride);
            for (int32_t tok = 0; tok < max_tokens; tok++)
                for (int64_t r = 0; r < y_stride; r++) {
                    float got = y[tok * y_stride + r];
                    if (tok >= nt || r >= 8) {
                        CHECK(got == 1e30f, "%s gemm_%s_x8 wrote outside its output (token %d, row %lld)", k->isa,
                              qtype_name(t), tok, (long long)r);
                        continue;
                    }
                    const void *row = (const char *)w + (g * 8 + r) * nb * block_bytes;
                    const l2_block_q8_act *xt = xq + tok * x_stride;
                    float ref = run_dot(scalar, t, n, row, xt);
                    /* the bound of check_dot, from the absolute products */
                    double abs_sum = 0;
                    double *wd = malloc(n * sizeof *wd), *xd = malloc(n * sizeof *xd);
                    if (t == T_Q8_0)
                        dequant_q8_0(row, nb, wd);
                    else if (t == T_Q4_0)
                        dequant_q4_0(row, nb, wd);
                    else
                        dequant_q4_1(row, nb, wd);
                    dequant_act(xt, nb, xd);
                    for (int64_t i = 0; i < n; i++)
                        abs_sum += fabs(wd[i] * xd[i]);
                    free(wd);
                    free(xd);
                    double bound = (double)(nb + 8) * 4 * U * abs_sum + 1e-30;
                    CHECK(fabs(got - ref) <= bound, "%s gemm_%s_x8 n=%lld tokens=%d row %lld: %.9g vs %.9g", k->isa,
                          qtype_name(t), (long long)n, nt, (long long)(g * 8 + r), got, ref);
                }
        }
    }
    free(w);
    free(packed);
    free(x);
    free(xq);
    free(y);
}

static void check_set(const l2_kernels *k, const l2_kernels *scalar)
{
    static const int64_t fixed_blocks[] = {1, 2, 3, 4, 5, 7, 8, 9, 31, 64, 128, 137, 344};
    memset(worst_rel, 0, sizeof worst_rel);
    memset(worst_rel_fx, 0, sizeof worst_rel_fx);
    worst_rel_f32 = 0;
    for (int rep = 0; rep < 3; rep++) {
        for (size_t i = 0; i < sizeof fixed_blocks / sizeof fixed_blocks[0]; i++) {
            int64_t n = fixed_blocks[i] * L2_QK;
            check_quantize_act(k, scalar, n);
            for (qtype t = T_Q8_0; t <= T_Q4_1; t++)
                check_dot(k, scalar, t, n);
        }
        for (int i = 0; i < 20; i++) { /* fresh random lengths */
            int64_t n = (int64_t)(1 + rng_next() % 400) * L2_QK;
            check_quantize_act(k, scalar, n);
            for (qtype t = T_Q8_0; t <= T_Q4_1; t++)
                check_dot(k, scalar, t, n);
        }
        for (int i = 0; i < 4; i++) {
            int64_t n = (int64_t)(1 + rng_next() % 40) * L2_QK;
            for (qtype t = T_Q8_0; t <= T_Q4_1; t++)
                check_gemm(k, scalar, t, n);
        }
        for (int64_t n = 1; n <= 80; n++) /* every tail length around the vector widths */
            check_dot_f32(k, scalar, n);
        for (int i = 0; i < 20; i++)
            check_dot_f32(k, scalar, (int64_t)(1 + rng_next() % 12000));
        for (int64_t n = 1; n <= 72; n += 7) /* head sizes around the vector widths, 1-9 keys and many */
            for (int64_t n_rows = 1; n_rows <= 9; n_rows++)
                check_attention_f32(k, scalar, n, n_rows);
        for (int64_t n = 60; n <= 260; n += 68)
            check_attention_f32(k, scalar, n, (int64_t)(1 + rng_next() % 700));
    }
    printf("%-10s worst error / sum|w*x|: q8_0 %.2e (vs unquantized x %.2e), q4_0 %.2e (%.2e), "
           "q4_1 %.2e (%.2e), f32 %.2e\n",
           k->isa, worst_rel[T_Q8_0], worst_rel_fx[T_Q8_0], worst_rel[T_Q4_0], worst_rel_fx[T_Q4_0],
           worst_rel[T_Q4_1], worst_rel_fx[T_Q4_1], worst_rel_f32);
}

static int cpu_runs(const char *isa)
{
#if defined(__x86_64__)
    if (strcmp(isa, "avx2") == 0)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (strcmp(isa, "avx512vnni") == 0)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vnni");
#endif
    (void)isa;
    return 0;
}

int main(int argc, char **argv)
{
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 0;
    if (seed == 0) {
        FILE *f = fopen("/dev/urandom", "rb");
        if (f == NULL || fread(&seed, sizeof seed, 1, f) != 1)
            seed = 12345;
        if (f)
            fclose(f);
    }
    rng_state = seed;
    printf("seed %llu\n", (unsigned long long)seed);

    const l2_kernels *scalar = l2_kernels_scalar();
    check_set(scalar, scalar); /* the oracle against float64 */
    struct {
        const char *isa;
        const l2_kernels *(*get)(void);
    } sets[] = {{"avx2", l2_kernels_avx2}, {"avx512vnni", l2_kernels_avx512vnni}};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) {
        const l2_kernels *k = sets[i].get();
        if (k == NULL || !cpu_runs(sets[i].isa)) {
            printf("SKIP %s: %s\n", sets[i].isa, k == NULL ? "not compiled in (not x86-64)" : "this CPU lacks it");
            continue;
        }
        check_set(k, scalar);
    }

    /* selection: LLAMA2_ISA forces a set; without it the best the CPU runs is chosen */
    setenv("LLAMA2_ISA", "scalar", 1);
    CHECK(strcmp(l2_kernels_best()->isa, "scalar") == 0, "LLAMA2_ISA=scalar gave %s", l2_kernels_best()->isa);
    unsetenv("LLAMA2_ISA");
    const char *best = l2_kernels_best()->isa;
    const char *expect = cpu_runs("avx512vnni") ? "avx512vnni" : cpu_runs("avx2") ? "avx2" : "scalar";
    CHECK(strcmp(best, expect) == 0, "best set is %s, expected %s", best, expect);
    printf("best set here: %s\n", best);

    printf(failures ? "FAILED: %d checks\n" : "all passed\n", failures);
    return failures ? 1 : 0;
}
