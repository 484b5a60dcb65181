/* cuda_q4's kernels: embedding, RMSNorm, activation quantization, the fused
 * dequantize-matvec (decode), the dequantize-GEMM on tensor cores (prefill),
 * RoPE with the KV-cache store, and attention. The per-block arithmetic is
 * q4_math.h's, shared with the host test. */
#include "kernels.cuh"
#include "q4_math.h"

#include <mma.h>

/* ---- helpers ------------------------------------------------------------- */

__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int off = 16; off > 0; off >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

__device__ __forceinline__ int warp_sum_int(int v) {
    for (int off = 16; off > 0; off >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* A value for every thread of the block; red holds one float per warp. Ends
 * with a barrier so red can be reused at once. */
template <bool MAX>
__device__ float block_reduce(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
    v = MAX ? warp_max(v) : warp_sum(v);
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    float r = red[0];
    for (int i = 1; i < n_warps; i++)
        r = MAX ? fmaxf(r, red[i]) : r + red[i];
    __syncthreads();
    return r;
}

/* Lane i holds element i of a 32-block: store it quantized (l2_act_*), with (d, d * sum q). */
__device__ __forceinline__ void warp_quantize(float v, int8_t *q_block, float2 *ds) {
    const float d = l2_act_scale(warp_max(fabsf(v)));
    const int8_t q = l2_act_quant(v, d);
    const int sum = warp_sum_int(q);
    q_block[threadIdx.x & 31] = q;
    if ((threadIdx.x & 31) == 0)
        *ds = make_float2(d, d * (float)sum);
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

template <int T> struct l2_words { static constexpr int n = T == L2_T_F16 ? 16 : T == L2_T_Q8_0 ? 8 : 4; };

/* N 32-bit values (words or floats) from src into registers, as 16-byte loads. */
template <int N, typename E, typename V>
__device__ __forceinline__ void load16(const E *src, E *out) {
    const V *p = reinterpret_cast<const V *>(src);
#pragma unroll
    for (int i = 0; i < N / 4; i++) {
        const V v = __ldg(p + i);
        out[4 * i] = v.x;
        out[4 * i + 1] = v.y;
        out[4 * i + 2] = v.z;
        out[4 * i + 3] = v.w;
    }
}

/* The payload of block b of row r into registers. */
template <int T>
__device__ __forceinline__ void load_block(const l2_dmat &w, int r, int b, uint32_t *out) {
    constexpr int W = l2_words<T>::n;
    load16<W, uint32_t, uint4>(w.words + l2_word_index(r, b, w.nb, W), out);
}

/* The scale of block b of row r, widened to the 32 bits q4_math.h takes. */
template <int T>
__device__ __forceinline__ uint32_t load_scale(const l2_dmat &w, int r, int b) {
    const size_t i = l2_scale_index(r, b, w.nb);
    if constexpr (T == L2_T_Q4_1)
        return __ldg(static_cast<const uint32_t *>(w.scales) + i);
    else if constexpr (T == L2_T_Q4_0 || T == L2_T_Q8_0)
        return __ldg(static_cast<const unsigned short *>(w.scales) + i);
    else
        return 0u;
}

static cudaError_t launched(void) { return cudaGetLastError(); }

/* ---- embedding, norm, quantization --------------------------------------- */

template <int T>
__global__ void embed_kernel(l2_dmat w, const int32_t *__restrict__ tokens, float *__restrict__ x) {
    const int t = blockIdx.x, lane = threadIdx.x & 31;
    const int row = tokens[t];
    const int n = w.nb * L2_QK;
    for (int b = threadIdx.x >> 5; b < w.nb; b += blockDim.x >> 5) {
        uint32_t wa[l2_words<T>::n];
        load_block<T>(w, row, b, wa);
        const uint32_t sc = load_scale<T>(w, row, b);
        x[(size_t)t * n + b * L2_QK + lane] = l2_dequant(T, wa, sc, lane);
    }
}

cudaError_t l2_embed(cudaStream_t s, l2_dmat embd, const int32_t *d_tokens, int n_tokens, float *x) {
    switch (embd.type) {
    case L2_T_Q4_0: embed_kernel<L2_T_Q4_0><<<n_tokens, 256, 0, s>>>(embd, d_tokens, x); break;
    case L2_T_Q4_1: embed_kernel<L2_T_Q4_1><<<n_tokens, 256, 0, s>>>(embd, d_tokens, x); break;
    case L2_T_Q8_0: embed_kernel<L2_T_Q8_0><<<n_tokens, 256, 0, s>>>(embd, d_tokens, x); break;
    case L2_T_F16: embed_kernel<L2_T_F16><<<n_tokens, 256, 0, s>>>(embd, d_tokens, x); break;
    default: return cudaErrorInvalidValue;
    }
    return launched();
}

__global__ void rmsnorm_kernel(const float *__restrict__ x, const float *__restrict__ w, int n, float eps,
                               l2_acts out) {
    __shared__ float red[32];
    const int t = blockIdx.x, lane = threadIdx.x & 31;
    const float *xt = x + (size_t)t * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        ss += xt[i] * xt[i];
    const float rs = rsqrtf(block_reduce<false>(ss, red) / (float)n + eps);
    int8_t *q = reinterpret_cast<int8_t *>(out.q) + (size_t)t * n;
    for (int b = threadIdx.x >> 5; b < n / L2_QK; b += blockDim.x >> 5) {
        const int i = b * L2_QK + lane;
        const float v = xt[i] * rs * w[i];
        out.f[(size_t)t * n + i] = v;
        warp_quantize(v, q + b * L2_QK, out.ds + (size_t)t * (n / L2_QK) + b);
    }
}

cudaError_t l2_rmsnorm(cudaStream_t s, const float *x, const float *w, int n_tokens, int n, float eps, l2_acts out) {
    rmsnorm_kernel<<<n_tokens, 256, 0, s>>>(x, w, n, eps, out);
    return launched();
}

__global__ void quantize_kernel(l2_acts a, int n) {
    const int t = blockIdx.y, nb = n / L2_QK;
    const int b = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (b >= nb)
        return;
    const float v = a.f[(size_t)t * n + b * L2_QK + (threadIdx.x & 31)];
    warp_quantize(v, reinterpret_cast<int8_t *>(a.q) + (size_t)t * n + b * L2_QK, a.ds + (size_t)t * nb + b);
}

cudaError_t l2_quantize(cudaStream_t s, l2_acts a, int n_tokens, int n) {
    const int nb = n / L2_QK;
    quantize_kernel<<<dim3((unsigned)((nb + 7) / 8), (unsigned)n_tokens), 256, 0, s>>>(a, n);
    return launched();
}

/* ---- decode: fused dequantize-matvec -------------------------------------- */

#define L2_MV_WARPS 8

/* Warp w of block k computes rows (k * L2_MV_WARPS + w) * R .. + R. Lane l takes
 * blocks l, l + 32, ...: each weight load is 16 bytes per lane, 512 contiguous
 * bytes per warp, and one activation block serves R rows. */
template <int T, int EPI, int R, bool FX>
__global__ void __launch_bounds__(L2_MV_WARPS * 32)
    matvec_kernel(l2_dmat w, l2_acts in, float *__restrict__ y, l2_acts out) {
    constexpr int W = l2_words<T>::n;
    constexpr bool FLOAT_X = FX || T == L2_T_F16; /* float activations rather than int8 */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row0 = (blockIdx.x * L2_MV_WARPS + warp) * R;
    float acc[R];
    int rows[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        acc[r] = 0.0f;
        rows[r] = min(row0 + r, w.rows - 1); /* a tail warp repeats the last row and drops it at the end */
    }
#pragma unroll 2
    for (int b = lane; b < w.nb; b += 32) {
        uint32_t xq[8] = {0};
        float xf[FLOAT_X ? L2_QK : 1];
        float2 ds = make_float2(0.0f, 0.0f);
        if constexpr (FLOAT_X) {
            load16<L2_QK, float, float4>(in.f + (size_t)b * L2_QK, xf);
        } else {
            load16<8, uint32_t, uint4>(in.q + (size_t)b * 8, xq);
            ds = __ldg(in.ds + b);
        }
#pragma unroll
        for (int r = 0; r < R; r++) {
            uint32_t wa[W];
            load_block<T>(w, rows[r], b, wa);
            const uint32_t sc = load_scale<T>(w, rows[r], b);
            if constexpr (FLOAT_X)
                acc[r] += l2_dot_block_f32(T, wa, sc, xf);
            else
                acc[r] += l2_dot_block(T, wa, sc, xq, ds.x, ds.y, xf);
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
        acc[r] = warp_sum(acc[r]);

    if (EPI != L2_EPI_SWIGLU) {
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < R; r++)
                if (row0 + r < w.rows)
                    y[row0 + r] = EPI == L2_EPI_ADD ? y[row0 + r] + acc[r] : acc[r];
        }
        return;
    }
    /* SwiGLU: rows (2i, 2i + 1) are (gate_i, up_i). The result stays float: the down
     * projection reads float activations (q4_math.h says why). */
    if (lane == 0) {
#pragma unroll
        for (int p = 0; p < R / 2; p++)
            y[row0 / 2 + p] = silu(acc[2 * p]) * acc[2 * p + 1];
    }
}

template <int T, bool FX>
static void matvec_launch(cudaStream_t s, l2_dmat w, l2_acts in, int epi, float *y, l2_acts out, int n_sm) {
    if (epi == L2_EPI_SWIGLU) {
        matvec_kernel<T, L2_EPI_SWIGLU, 8, FX><<<w.rows / (L2_MV_WARPS * 8), L2_MV_WARPS * 32, 0, s>>>(w, in, y, out);
        return;
    }
    /* Four rows per warp reuse each activation load four times, but only when
     * that still leaves two blocks per multiprocessor to hide memory latency. */
    const int blocks4 = (w.rows + L2_MV_WARPS * 4 - 1) / (L2_MV_WARPS * 4);
    const int blocks1 = (w.rows + L2_MV_WARPS - 1) / L2_MV_WARPS;
    const bool wide = blocks4 >= 2 * n_sm;
    if (epi == L2_EPI_ADD) {
        if (wide)
            matvec_kernel<T, L2_EPI_ADD, 4, FX><<<blocks4, L2_MV_WARPS * 32, 0, s>>>(w, in, y, out);
        else
            matvec_kernel<T, L2_EPI_ADD, 1, FX><<<blocks1, L2_MV_WARPS * 32, 0, s>>>(w, in, y, out);
    } else {
        if (wide)
            matvec_kernel<T, L2_EPI_STORE, 4, FX><<<blocks4, L2_MV_WARPS * 32, 0, s>>>(w, in, y, out);
        else
            matvec_kernel<T, L2_EPI_STORE, 1, FX><<<blocks1, L2_MV_WARPS * 32, 0, s>>>(w, in, y, out);
    }
}

template <int T>
static void matvec_type(cudaStream_t s, l2_dmat w, l2_acts in, int epi, int float_act, float *y, l2_acts out,
                        int n_sm) {
    if constexpr (T == L2_T_F16) /* always float activations: one instantiation */
        matvec_launch<T, false>(s, w, in, epi, y, out, n_sm);
    else if (float_act)
        matvec_launch<T, true>(s, w, in, epi, y, out, n_sm);
    else
        matvec_launch<T, false>(s, w, in, epi, y, out, n_sm);
}

cudaError_t l2_matvec(cudaStream_t s, l2_dmat w, l2_acts in, int epi, int float_act, float *y, l2_acts out,
                      int n_sm) {
    if (epi == L2_EPI_SWIGLU && w.rows % (L2_MV_WARPS * 8) != 0)
        return cudaErrorInvalidValue;
    switch (w.type) {
    case L2_T_Q4_0: matvec_type<L2_T_Q4_0>(s, w, in, epi, float_act, y, out, n_sm); break;
    case L2_T_Q4_1: matvec_type<L2_T_Q4_1>(s, w, in, epi, float_act, y, out, n_sm); break;
    case L2_T_Q8_0: matvec_type<L2_T_Q8_0>(s, w, in, epi, float_act, y, out, n_sm); break;
    case L2_T_F16: matvec_type<L2_T_F16>(s, w, in, epi, float_act, y, out, n_sm); break;
    default: return cudaErrorInvalidValue;
    }
    return launched();
}

/* ---- prefill: dequantize-GEMM on fp16 tensor cores ------------------------ */

#define GB_M 64 /* weight rows per block */
#define GB_N 64 /* tokens per block */
#define GB_PAD 8

/* Four warps, each a 32x32 tile of C = W X^T as 2x2 16x16 fragments. Per 32-wide
 * K step the block dequantizes 64 weight blocks to fp16 and converts 64 token
 * slices to fp16 in shared memory; accumulation is fp32. */
template <int T, int EPI>
__global__ void __launch_bounds__(128) gemm_kernel(l2_dmat w, const float *__restrict__ x, int n_tokens,
                                                   float *__restrict__ y, int ldy) {
    using namespace nvcuda;
    __shared__ __align__(32) __half As[GB_M][L2_QK + GB_PAD];
    __shared__ __align__(32) __half Bs[GB_N][L2_QK + GB_PAD];
    __shared__ __align__(32) float Cs[GB_N][GB_M + 4]; /* [token][row]: the epilogue writes rows contiguously */
    const int tid = threadIdx.x, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    const int row_base = blockIdx.x * GB_M, tok_base = blockIdx.y * GB_N;
    const int K = w.nb * L2_QK;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::fill_fragment(c[i][j], 0.0f);

    const int lr = tid >> 1, hf = tid & 1; /* this thread loads half a block of row / token lr */
    const int a_row = min(row_base + lr, w.rows - 1);
    const int b_tok = tok_base + lr;
    for (int b = 0; b < w.nb; b++) {
        const uint32_t sc = load_scale<T>(w, a_row, b);
        if constexpr (T == L2_T_Q4_0 || T == L2_T_Q4_1) {
            uint32_t wa[4]; /* both halves share the 4 words: low and high nibbles */
            load_block<T>(w, a_row, b, wa);
#pragma unroll
            for (int i = 0; i < 16; i++)
                As[lr][hf * 16 + i] = __float2half(l2_dequant(T, wa, sc, hf * 16 + i));
        } else {
            /* Q8_0 and F16 store weights in order: load only this half's words, so
             * the register array is indexed by constants (no local memory) */
            constexpr int HW = l2_words<T>::n / 2;
            uint32_t wa[HW];
            load16<HW, uint32_t, uint4>(w.words + l2_word_index(a_row, b, w.nb, 2 * HW) + hf * HW, wa);
#pragma unroll
            for (int i = 0; i < 16; i++)
                As[lr][hf * 16 + i] = __float2half(l2_dequant(T, wa, sc, i));
        }
        if (b_tok < n_tokens) {
            const float4 *p = reinterpret_cast<const float4 *>(x + (size_t)b_tok * K + b * L2_QK + hf * 16);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float4 v = __ldg(p + i);
                *reinterpret_cast<__half2 *>(&Bs[lr][hf * 16 + 4 * i]) = __floats2half2_rn(v.x, v.y);
                *reinterpret_cast<__half2 *>(&Bs[lr][hf * 16 + 4 * i + 2]) = __floats2half2_rn(v.z, v.w);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 16; i++)
                Bs[lr][hf * 16 + i] = __float2half(0.0f);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < L2_QK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; i++)
                wmma::load_matrix_sync(fa[i], &As[wm * 32 + i * 16][kk], L2_QK + GB_PAD);
#pragma unroll
            for (int j = 0; j < 2; j++)
                wmma::load_matrix_sync(fb[j], &Bs[wn * 32 + j * 16][kk], L2_QK + GB_PAD);
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 2; j++)
                    wmma::mma_sync(c[i][j], fa[i], fb[j], c[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(&Cs[wn * 32 + j * 16][wm * 32 + i * 16], c[i][j], GB_M + 4, wmma::mem_col_major);
    __syncthreads();

    for (int idx = tid; idx < GB_M * GB_N; idx += blockDim.x) {
        const int r = idx % GB_M, tt = idx / GB_M;
        const int row = row_base + r, tok = tok_base + tt;
        if (row >= w.rows || tok >= n_tokens)
            continue;
        if (EPI == L2_EPI_SWIGLU) {
            if ((r & 1) == 0)
                y[(size_t)tok * ldy + row / 2] = silu(Cs[tt][r]) * Cs[tt][r + 1];
        } else if (EPI == L2_EPI_ADD) {
            y[(size_t)tok * ldy + row] += Cs[tt][r];
        } else {
            y[(size_t)tok * ldy + row] = Cs[tt][r];
        }
    }
}

template <int T>
static void gemm_launch(cudaStream_t s, l2_dmat w, const float *x, int n_tokens, int epi, float *y, int ldy) {
    const dim3 grid((unsigned)((w.rows + GB_M - 1) / GB_M), (unsigned)((n_tokens + GB_N - 1) / GB_N));
    if (epi == L2_EPI_SWIGLU)
        gemm_kernel<T, L2_EPI_SWIGLU><<<grid, 128, 0, s>>>(w, x, n_tokens, y, ldy);
    else if (epi == L2_EPI_ADD)
        gemm_kernel<T, L2_EPI_ADD><<<grid, 128, 0, s>>>(w, x, n_tokens, y, ldy);
    else
        gemm_kernel<T, L2_EPI_STORE><<<grid, 128, 0, s>>>(w, x, n_tokens, y, ldy);
}

cudaError_t l2_gemm(cudaStream_t s, l2_dmat w, const float *x, int n_tokens, int epi, float *y, int ldy) {
    if (epi == L2_EPI_SWIGLU && w.rows % 2 != 0)
        return cudaErrorInvalidValue;
    switch (w.type) {
    case L2_T_Q4_0: gemm_launch<L2_T_Q4_0>(s, w, x, n_tokens, epi, y, ldy); break;
    case L2_T_Q4_1: gemm_launch<L2_T_Q4_1>(s, w, x, n_tokens, epi, y, ldy); break;
    case L2_T_Q8_0: gemm_launch<L2_T_Q8_0>(s, w, x, n_tokens, epi, y, ldy); break;
    case L2_T_F16: gemm_launch<L2_T_F16>(s, w, x, n_tokens, epi, y, ldy); break;
    default: return cudaErrorInvalidValue;
    }
    return launched();
}

/* ---- RoPE and the KV cache ------------------------------------------------ */

__global__ void rope_store_kernel(float *__restrict__ qkv, const int32_t *__restrict__ d_pos, l2_attn_shape a) {
    const int t = blockIdx.x, pos = d_pos[0] + t;
    const int hd = a.head_dim, half_hd = hd / 2;
    const int q_dim = a.n_head * hd, kv_dim = a.n_head_kv * hd;
    float *row = qkv + (size_t)t * (q_dim + 2 * kv_dim);
    const int n_pairs = (a.n_head + a.n_head_kv) * half_hd;
    for (int p = threadIdx.x; p < n_pairs; p += blockDim.x) {
        const int head = p / half_hd, i = p % half_hd; /* heads n_head.. are k's */
        float *v = row + head * hd + 2 * i;            /* k follows q directly in a row */
        float x0 = v[0], x1 = v[1];
        if (2 * i < a.n_rot) {
            l2_rope_pair(&x0, &x1, (float)pos * a.inv_freq[i]);
            v[0] = x0;
            v[1] = x1;
        }
        if (head >= a.n_head) {
            const size_t c = ((size_t)(head - a.n_head) * a.n_ctx + pos) * hd + 2 * i;
            *reinterpret_cast<__half2 *>(a.k_cache + c) = __floats2half2_rn(x0, x1);
        }
    }
    const float *vrow = row + q_dim + kv_dim;
    for (int j = threadIdx.x; j < kv_dim; j += blockDim.x) {
        const int h = j / hd, d = j % hd;
        a.v_cache[((size_t)h * a.n_ctx + pos) * hd + d] = __float2half(vrow[j]);
    }
}

cudaError_t l2_rope_store(cudaStream_t s, float *qkv, int n_tokens, const int32_t *d_pos, l2_attn_shape a) {
    rope_store_kernel<<<n_tokens, 256, 0, s>>>(qkv, d_pos, a);
    return launched();
}

/* ---- attention ------------------------------------------------------------ */

#define ATT_THREADS 128
#define ATT_WARPS (ATT_THREADS / 32)
#define ATT_CHUNK ATT_THREADS /* keys scored per pass: one per thread for the softmax */
#define ATT_PAIRS 4           /* head_dim / 2 / 32 at most: head_dim <= 256 */

/* One block per (head, token, key range). Keys go in chunks of ATT_CHUNK with a
 * running (online) softmax. Warp w scores keys w, w + 4, ... of a chunk, lane l
 * holding dimension pairs l, l + 32, ... of q, so each key row is one
 * coalesced read; then the same warp accumulates p * v for those keys with the
 * same lane-to-dimension map. The warps' partial outputs are summed at the end.
 * With PARTIAL the unnormalised output and (max, sum) of the range are written
 * for attention_combine; otherwise the range is every key and the result final. */
template <bool PARTIAL>
__global__ void __launch_bounds__(ATT_THREADS)
    attention_kernel(const float *__restrict__ qkv, const int32_t *__restrict__ d_pos, l2_attn_shape a,
                     int keys_per_split, float *__restrict__ out, float *__restrict__ part_o,
                     float2 *__restrict__ part_ml) {
    __shared__ float sp[ATT_CHUNK];
    __shared__ float red[32];
    __shared__ float so[ATT_WARPS][2 * 32 * ATT_PAIRS];
    const int h = blockIdx.x, t = blockIdx.y, split = blockIdx.z, n_split = gridDim.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int hd = a.head_dim, n_pairs = hd / 2, kvh = h / (a.n_head / a.n_head_kv);
    const int n_keys = d_pos[0] + t + 1;
    const int k0 = split * keys_per_split, k1 = min(k0 + keys_per_split, n_keys);
    const size_t part = ((size_t)t * a.n_head + h) * n_split + split;
    if (k0 >= k1) { /* a range past the current position: empty */
        if (PARTIAL && tid == 0)
            part_ml[part] = make_float2(-INFINITY, 0.0f);
        return;
    }
    const float *q = qkv + (size_t)t * (a.n_head + 2 * a.n_head_kv) * hd + (size_t)h * hd;
    const float scale = rsqrtf((float)hd);
    float2 qr[ATT_PAIRS], acc[ATT_PAIRS];
#pragma unroll
    for (int u = 0; u < ATT_PAIRS; u++) {
        const int j = lane + 32 * u;
        qr[u] = j < n_pairs ? make_float2(q[2 * j] * scale, q[2 * j + 1] * scale) : make_float2(0.0f, 0.0f);
        acc[u] = make_float2(0.0f, 0.0f);
    }
    const __half2 *K = reinterpret_cast<const __half2 *>(a.k_cache + (size_t)kvh * a.n_ctx * hd);
    const __half2 *V = reinterpret_cast<const __half2 *>(a.v_cache + (size_t)kvh * a.n_ctx * hd);

    float m = -INFINITY, l = 0.0f;
    for (int c0 = k0; c0 < k1; c0 += ATT_CHUNK) {
#pragma unroll 4
        for (int i = warp; i < ATT_CHUNK; i += ATT_WARPS) {
            const int key = c0 + i;
            float s = 0.0f;
            if (key < k1) {
#pragma unroll
                for (int u = 0; u < ATT_PAIRS; u++) {
                    const int j = lane + 32 * u;
                    if (j < n_pairs) {
                        const float2 k = __half22float2(K[(size_t)key * n_pairs + j]);
                        s += qr[u].x * k.x + qr[u].y * k.y;
                    }
                }
            }
            s = warp_sum(s);
            if (lane == 0)
                sp[i] = key < k1 ? s : -INFINITY;
        }
        __syncthreads();
        const float sc = sp[tid];
        const float m_new = fmaxf(m, block_reduce<true>(sc, red)); /* finite: key c0 exists */
        const float p = sc == -INFINITY ? 0.0f : expf(sc - m_new);
        const float f = expf(m - m_new);
        __syncthreads(); /* every score was read before sp holds probabilities */
        sp[tid] = p;
        l = l * f + block_reduce<false>(p, red); /* its barriers also publish sp */
#pragma unroll
        for (int u = 0; u < ATT_PAIRS; u++)
            acc[u] = make_float2(acc[u].x * f, acc[u].y * f);
        const int n = min(ATT_CHUNK, k1 - c0);
#pragma unroll 4
        for (int i = warp; i < n; i += ATT_WARPS) {
            const float pi = sp[i];
            const int key = c0 + i;
#pragma unroll
            for (int u = 0; u < ATT_PAIRS; u++) {
                const int j = lane + 32 * u;
                if (j < n_pairs) {
                    const float2 v = __half22float2(V[(size_t)key * n_pairs + j]);
                    acc[u].x += pi * v.x;
                    acc[u].y += pi * v.y;
                }
            }
        }
        m = m_new;
        __syncthreads(); /* sp is rewritten by the next chunk */
    }
#pragma unroll
    for (int u = 0; u < ATT_PAIRS; u++) {
        so[warp][2 * (lane + 32 * u)] = acc[u].x;
        so[warp][2 * (lane + 32 * u) + 1] = acc[u].y;
    }
    __syncthreads();
    for (int d = tid; d < hd; d += ATT_THREADS) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++)
            o += so[w][d];
        if (PARTIAL)
            part_o[part * hd + d] = o;
        else
            out[(size_t)t * a.n_head * hd + (size_t)h * hd + d] = o / l;
    }
    if (PARTIAL && tid == 0)
        part_ml[part] = make_float2(m, l);
}

/* Merge the key ranges of each (head, token): range s counts exp(m_s - M) times. */
__global__ void attention_combine_kernel(const float *__restrict__ part_o, const float2 *__restrict__ part_ml,
                                         int n_split, int hd, float *__restrict__ out) {
    const int h = blockIdx.x, t = blockIdx.y, n_head = gridDim.x;
    const size_t base = ((size_t)t * n_head + h) * n_split;
    float M = -INFINITY;
    for (int s = 0; s < n_split; s++)
        if (part_ml[base + s].y > 0.0f)
            M = fmaxf(M, part_ml[base + s].x);
    float L = 0.0f;
    for (int s = 0; s < n_split; s++) {
        const float2 ml = part_ml[base + s];
        if (ml.y > 0.0f)
            L += expf(ml.x - M) * ml.y;
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
        for (int s = 0; s < n_split; s++) {
            const float2 ml = part_ml[base + s];
            if (ml.y > 0.0f) /* empty ranges hold no output, not even zeros */
                o += expf(ml.x - M) * part_o[(base + s) * hd + d];
        }
        out[(size_t)t * n_head * hd + (size_t)h * hd + d] = o / L;
    }
}

cudaError_t l2_attention(cudaStream_t s, const float *qkv, int n_tokens, const int32_t *d_pos, l2_attn_shape a,
                         l2_attn_split split, float *out) {
    if (a.head_dim > 2 * 32 * ATT_PAIRS || a.head_dim % 2 != 0)
        return cudaErrorInvalidValue;
    if (split.n_split <= 1) {
        attention_kernel<false><<<dim3((unsigned)a.n_head, (unsigned)n_tokens, 1), ATT_THREADS, 0, s>>>(
            qkv, d_pos, a, a.n_ctx, out, nullptr, nullptr);
        return launched();
    }
    attention_kernel<true><<<dim3((unsigned)a.n_head, (unsigned)n_tokens, (unsigned)split.n_split), ATT_THREADS, 0,
                             s>>>(qkv, d_pos, a, split.keys_per_split, nullptr, split.part_o, split.part_ml);
    const cudaError_t e = launched();
    if (e != cudaSuccess)
        return e;
    attention_combine_kernel<<<dim3((unsigned)a.n_head, (unsigned)n_tokens), 128, 0, s>>>(
        split.part_o, split.part_ml, split.n_split, a.head_dim, out);
    return launched();
}
