/* CPU stand-in for nvcuda::wmma (tests only): lane 0 of the warp holds the whole
 * 16x16 tile and does the loads, products and stores; the other lanes' fragments
 * are never read, since every operation is collective. */
#ifndef L2EMU_MMA_H
#define L2EMU_MMA_H
#include "cuda_runtime.h"

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    float x[16 * 16]; /* element (row, col) at x[row * 16 + col] */
};

template <typename F> inline void fill_fragment(F &f, float v) {
    for (float &e : f.x)
        e = v;
}

/* A (row-major, element (i, k) at p[i * ldm + k]) */
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, __half, row_major> &f, const __half *p, unsigned ldm) {
    if ((threadIdx.x & 31) != 0)
        return;
    for (int i = 0; i < 16; i++)
        for (int k = 0; k < 16; k++)
            f.x[i * 16 + k] = __half2float(p[i * ldm + k]);
}

/* B (column-major, element (k, j) at p[j * ldm + k]) */
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, __half, col_major> &f, const __half *p, unsigned ldm) {
    if ((threadIdx.x & 31) != 0)
        return;
    for (int k = 0; k < 16; k++)
        for (int j = 0; j < 16; j++)
            f.x[k * 16 + j] = __half2float(p[j * ldm + k]);
}

inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, __half, row_major> &a,
                     const fragment<matrix_b, 16, 16, 16, __half, col_major> &b,
                     const fragment<accumulator, 16, 16, 16, float> &c) {
    if ((threadIdx.x & 31) != 0)
        return;
    float r[256];
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float s = c.x[i * 16 + j];
            for (int k = 0; k < 16; k++)
                s += a.x[i * 16 + k] * b.x[k * 16 + j];
            r[i * 16 + j] = s;
        }
    memcpy(d.x, r, sizeof r);
}

inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm, layout_t layout) {
    if ((threadIdx.x & 31) != 0)
        return;
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            if (layout == mem_col_major)
                p[j * ldm + i] = f.x[i * 16 + j];
            else
                p[i * ldm + j] = f.x[i * 16 + j];
        }
}
}  // namespace wmma
}  // namespace nvcuda
#endif
