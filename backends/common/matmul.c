/* Matrices times a batch of activations: the one place the weights are read. */
#include "convert.h"
#include "cpu_engine.h"

/* Rows of W handled together: a tile stays in cache while every token of the
 * batch passes over it, so each weight is read from memory once per batch. */
#define ROW_TILE 16
#define TILES_PER_CHUNK 4
_Static_assert(ROW_TILE % L2_RX == 0, "a tile of an interleaved matrix is whole groups");

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

static l2_gemm_x8_fn gemm_x8(const l2_kernels *k, int32_t type) {
    switch (type) {
    case LLAMA2_TYPE_Q8_0: return k->gemm_q8_0_x8;
    case LLAMA2_TYPE_Q4_0: return k->gemm_q4_0_x8;
    default: return k->gemm_q4_1_x8;
    }
}

/* Rows r0..r1 of one matrix, for every token of the batch. */
static void matmul_rows(const l2_kernels *k, const l2_matmul_out *out, int64_t r0, int64_t r1, const float *x,
                        int64_t x_stride, const l2_block_q8_act *xq, int32_t n_tokens) {
    const l2_matrix *w = out->w;
    int64_t blocks = w->cols / L2_QK;
    int quantized = w->type != LLAMA2_TYPE_F32;
    if (w->x8) {
        /* groups of eight interleaved rows (repack.h; ROW_TILE is a multiple of 8):
         * each group's weights are loaded once for the whole batch */
        l2_gemm_x8_fn gemm = gemm_x8(k, w->type);
        for (int64_t r = r0; r < r1; r += L2_RX)
            gemm(w->cols, (const char *)w->data + r * w->row_bytes, xq, blocks, n_tokens, out->y + r, out->y_stride);
        return;
    }
    for (int32_t t = 0; t < n_tokens; t++) {
        float *y = out->y + t * out->y_stride;
        for (int64_t r = r0; r < r1; r++)
            y[r] = dot_row(k, w, r, x + t * x_stride, quantized ? xq + t * blocks : NULL);
    }
}

void l2_matmul_many(const l2_kernels *k, const l2_matmul_out *outs, int n_outs, const float *x,
                    int64_t x_stride, int32_t n_tokens, l2_block_q8_act *xq, int32_t n_threads) {
    int64_t cols = outs[0].w->cols, blocks = cols / L2_QK;
    int64_t n_tiles = 0, work = 0;
    int quantized = 0;
    for (int j = 0; j < n_outs; j++) {
        n_tiles += (outs[j].w->rows + ROW_TILE - 1) / ROW_TILE;
        work += outs[j].w->rows * cols * n_tokens;
        quantized |= outs[j].w->type != LLAMA2_TYPE_F32;
    }
    if (quantized) {
        /* once per batch for every quantized matrix here, not once per row */
#pragma omp parallel for num_threads(n_threads) if (n_tokens > 1 && n_threads > 1 && n_tokens * cols >= L2_PARALLEL_MIN_WORK) \
    schedule(static)
        for (int32_t t = 0; t < n_tokens; t++)
            k->quantize_act(x + t * x_stride, xq + t * blocks, cols);
    }
    /* One loop over the tiles of all the matrices: the threads meet once, not
     * once per matrix. Tiles are handed out a few at a time, so a thread that
     * loses its core for a while (a busy machine) does not hold the others up. */
#pragma omp parallel for num_threads(n_threads) if (n_threads > 1 && work >= L2_PARALLEL_MIN_WORK) \
    schedule(dynamic, TILES_PER_CHUNK)
    for (int64_t tile = 0; tile < n_tiles; tile++) {
        int j = 0;
        int64_t r0 = tile * ROW_TILE;
        while (r0 >= outs[j].w->rows) { /* tiles never straddle two matrices */
            r0 -= (outs[j].w->rows + ROW_TILE - 1) / ROW_TILE * ROW_TILE;
            j++;
        }
        int64_t r1 = r0 + ROW_TILE < outs[j].w->rows ? r0 + ROW_TILE : outs[j].w->rows;
        matmul_rows(k, &outs[j], r0, r1, x, x_stride, xq, n_tokens);
    }
}

void l2_matmul(const l2_kernels *k, const l2_matrix *w, const float *x, int64_t x_stride, float *y,
               int64_t y_stride, int32_t n_tokens, l2_block_q8_act *xq, int32_t n_threads) {
    const l2_matmul_out out = {w, y, y_stride};
    l2_matmul_many(k, &out, 1, x, x_stride, n_tokens, xq, n_threads);
}
