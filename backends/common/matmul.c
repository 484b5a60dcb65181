/* Matrix times a batch of activations: the one place the weights are read. */
#include "convert.h"
#include "cpu_engine.h"

/* Rows of W handled together: a tile stays in cache while every token of the
 * batch passes over it, so each weight is read from memory once per batch. */
#define ROW_TILE 16

static float dot_row(const l2_kernels *k, const l2_matrix *w, int64_t r, const float *x,
                     const l2_block_q8_act *xq) {
    const void *row = (const char *)w->data + r * w->row_bytes;
    switch (w->type) {
    case LLAMA2_TYPE_Q8_0: return k->dot_q8_0(w->cols, row, xq);
    case LLAMA2_TYPE_Q4_0: return k->dot_q4_0(w->cols, row, xq);
    case LLAMA2_TYPE_Q4_1: return k->dot_q4_1(w->cols, row, xq);
    default: return k->dot_f32(w->cols, row, x);
    }
}

/* Groups of eight interleaved rows (repack.h) per scheduling chunk: small
 * enough that both threads stay busy to the end even when another process
 * takes a core for a while, large enough that the hand-out costs nothing. */
#define X8_GROUPS_PER_CHUNK 8

static l2_gemm_x8_fn gemm_x8(const l2_kernels *k, int32_t type) {
    switch (type) {
    case LLAMA2_TYPE_Q8_0: return k->gemm_q8_0_x8;
    case LLAMA2_TYPE_Q4_0: return k->gemm_q4_0_x8;
    default: return k->gemm_q4_1_x8;
    }
}

void l2_matmul(const l2_kernels *k, const l2_matrix *w, const float *x, int64_t x_stride, float *y,
               int64_t y_stride, int32_t n_tokens, l2_block_q8_act *xq, int32_t n_threads) {
    int quantized = w->type != LLAMA2_TYPE_F32;
    int64_t blocks = w->cols / L2_QK;
    if (quantized) {
        /* once per matmul, not once per row */
#pragma omp parallel for num_threads(n_threads) if (n_tokens > 1 && n_threads > 1 && n_tokens * w->cols >= L2_PARALLEL_MIN_WORK) \
    schedule(static)
        for (int32_t t = 0; t < n_tokens; t++)
            k->quantize_act(x + t * x_stride, xq + t * blocks, w->cols);
    }
    if (w->x8) {
        /* each group's weights are read from memory once for the whole batch */
        l2_gemm_x8_fn gemm = gemm_x8(k, w->type);
        int64_t group_bytes = L2_RX * w->row_bytes;
        int parallel = n_threads > 1 && w->rows * w->cols * n_tokens >= L2_PARALLEL_MIN_WORK;
#pragma omp parallel for num_threads(n_threads) if (parallel) schedule(dynamic, X8_GROUPS_PER_CHUNK)
        for (int64_t g = 0; g < w->rows / L2_RX; g++)
            gemm(w->cols, (const char *)w->data + g * group_bytes, xq, blocks, n_tokens, y + g * L2_RX, y_stride);
        return;
    }
    int64_t n_tiles = (w->rows + ROW_TILE - 1) / ROW_TILE;
    int parallel = n_threads > 1 && w->rows * w->cols * n_tokens >= L2_PARALLEL_MIN_WORK;
#pragma omp parallel for num_threads(n_threads) if (parallel) schedule(static)
    for (int64_t tile = 0; tile < n_tiles; tile++) {
        int64_t r0 = tile * ROW_TILE;
        int64_t r1 = r0 + ROW_TILE < w->rows ? r0 + ROW_TILE : w->rows;
        for (int32_t t = 0; t < n_tokens; t++)
            for (int64_t r = r0; r < r1; r++)
                y[t * y_stride + r] = dot_row(k, w, r, x + t * x_stride, quantized ? xq + t * blocks : NULL);
    }
}
