/* A CPU stand-in for the parts of CUDA that cuda_q4 uses, for testing only.
 *
 * tests/test_cuda_q4.py compiles the .cu files of backends/cuda_q4 with g++ against these
 * headers (after rewriting kernel<<<...>>>(...) into l2emu_launch(...)), so the
 * real kernels and the real host code run on a machine without a GPU: every
 * block's threads are fibers (ucontext) taking turns at barriers on the calling
 * thread, warp shuffles go through a per-warp exchange, __shared__ arrays are one per kernel (blocks run
 * one after another), stream capture records launches and graph launch replays
 * them. It checks index math, synchronisation structure and numerics, not
 * speed, and says nothing about what the hardware does differently.
 */
#ifndef L2EMU_CUDA_RUNTIME_H
#define L2EMU_CUDA_RUNTIME_H

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <ucontext.h>
#include <vector>

#include "q4_math.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __restrict__
#define CUDART_VERSION 13000

using std::max;
using std::min;

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint3 {
    unsigned x, y, z;
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};
struct uint4 {
    unsigned x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
template <typename T> inline T __ldg(const T *p) { return *p; }

/* ---- fp16, through q4_math.h's conversions ----------------------------------- */

struct __half {
    uint16_t bits;
};
struct __half2 {
    __half x, y;
};
typedef __half half;
inline __half __float2half(float f) { return {l2_f32_to_f16(f)}; }
inline float __half2float(__half h) { return l2_f16_to_f32(h.bits); }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half(a), __float2half(b)}; }
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }

/* ---- threads of a block: cooperative fibers on the calling thread ----------- */

/* A barrier among fibers: arriving fibers yield until the last one arrives;
 * a fiber that returns drops out, as a finished GPU thread does. */
struct l2emu_barrier {
    int expected = 0, arrived = 0, generation = 0;
};
struct l2emu_block {
    l2emu_barrier block;
    std::vector<l2emu_barrier> warps;
    std::vector<uint64_t> exchange; /* one slot per thread */
};
struct l2emu_thread {
    uint3 tid, bid;
    dim3 bdim, gdim;
    l2emu_block *blk;
};
struct l2emu_sched {
    ucontext_t main;
    std::vector<ucontext_t> fibers;
    std::vector<l2emu_thread> state;
    std::vector<char> done;
    int current = -1;
};
inline thread_local l2emu_sched *l2emu_cur = nullptr;
#define threadIdx (l2emu_cur->state[l2emu_cur->current].tid)
#define blockIdx (l2emu_cur->state[l2emu_cur->current].bid)
#define blockDim (l2emu_cur->state[l2emu_cur->current].bdim)
#define gridDim (l2emu_cur->state[l2emu_cur->current].gdim)

inline void l2emu_yield() { swapcontext(&l2emu_cur->fibers[l2emu_cur->current], &l2emu_cur->main); }

inline void l2emu_arrive_and_wait(l2emu_barrier &b) {
    const int g = b.generation;
    if (++b.arrived == b.expected) {
        b.arrived = 0;
        b.generation++;
        return;
    }
    while (b.generation == g)
        l2emu_yield();
}

inline void l2emu_arrive_and_drop(l2emu_barrier &b) {
    b.expected--;
    if (b.expected > 0 && b.arrived == b.expected) {
        b.arrived = 0;
        b.generation++;
    }
}

inline void __syncthreads() {
    l2emu_arrive_and_wait(l2emu_cur->state[l2emu_cur->current].blk->block);
}

template <typename T> inline T __shfl_xor_sync(unsigned, T v, int off) {
    static_assert(sizeof(T) <= 8, "exchange slots are 8 bytes");
    l2emu_block *b = l2emu_cur->state[l2emu_cur->current].blk;
    const unsigned t = threadIdx.x, lane = t & 31u, base = t - lane;
    l2emu_barrier &w = b->warps[t / 32];
    uint64_t slot = 0;
    memcpy(&slot, &v, sizeof v);
    b->exchange[t] = slot;
    l2emu_arrive_and_wait(w);
    T r;
    const uint64_t got = b->exchange[base + (lane ^ (unsigned)off)];
    memcpy(&r, &got, sizeof r);
    l2emu_arrive_and_wait(w);
    return r;
}

template <typename F> struct l2emu_entry {
    static void run(unsigned hi, unsigned lo) {
        F *body = reinterpret_cast<F *>(((uintptr_t)hi << 32) | (uintptr_t)lo);
        (*body)();
        l2emu_thread &self = l2emu_cur->state[l2emu_cur->current];
        l2emu_arrive_and_drop(self.blk->warps[self.tid.x / 32]);
        l2emu_arrive_and_drop(self.blk->block);
        l2emu_cur->done[l2emu_cur->current] = 1;
        /* returning resumes uc_link: the scheduler */
    }
};

/* Run every block of a grid, one after another, its threads as fibers. */
template <typename F> void l2emu_run_grid(dim3 grid, dim3 block, F body) {
    const unsigned n = block.x * block.y * block.z;
    const size_t stack = 256 * 1024;
    std::vector<char> stacks(stack * n);
    l2emu_sched sched;
    l2emu_sched *saved = l2emu_cur;
    l2emu_cur = &sched;
    sched.fibers.resize(n);
    sched.state.resize(n);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                l2emu_block b;
                b.block.expected = (int)n;
                for (unsigned w = 0; w < (n + 31) / 32; w++) {
                    l2emu_barrier wb;
                    wb.expected = (int)std::min(32u, n - 32 * w);
                    b.warps.push_back(wb);
                }
                b.exchange.resize(n);
                sched.done.assign(n, 0);
                const uintptr_t fp = (uintptr_t)&body;
                for (unsigned t = 0; t < n; t++) {
                    sched.state[t] = {{t, 0, 0}, {bx, by, bz}, block, grid, &b};
                    ucontext_t &uc = sched.fibers[t];
                    getcontext(&uc);
                    uc.uc_stack.ss_sp = &stacks[stack * t];
                    uc.uc_stack.ss_size = stack;
                    uc.uc_link = &sched.main;
                    makecontext(&uc, (void (*)())l2emu_entry<F>::run, 2, (unsigned)(fp >> 32),
                                (unsigned)(fp & 0xffffffffu));
                }
                for (unsigned left = n; left > 0;) {
                    left = 0;
                    for (unsigned t = 0; t < n; t++) {
                        if (sched.done[t])
                            continue;
                        sched.current = (int)t;
                        swapcontext(&sched.main, &sched.fibers[t]);
                        left += !sched.done[t];
                    }
                }
            }
    l2emu_cur = saved;
}

/* ---- runtime API ------------------------------------------------------------- */

typedef int cudaError_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorNoDevice = 100,
       cudaErrorInsufficientDriver = 35 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal, cudaStreamCaptureModeThreadLocal };
#define cudaStreamNonBlocking 1u
#define cudaHostAllocDefault 0u

struct l2emu_stream {
    bool capturing = false;
    std::vector<std::function<void()>> recorded;
};
struct l2emu_graph {
    std::vector<std::function<void()>> work;
};
typedef l2emu_stream *cudaStream_t;
typedef l2emu_graph *cudaGraph_t;
typedef l2emu_graph *cudaGraphExec_t;

struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
};

inline const char *cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaDriverGetVersion(int *v) { return *v = 13000, cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int *n) { return *n = 1, cudaSuccess; }
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
    /* 4 multiprocessors: small enough that both matvec shapes (1 and 4 rows per warp) run */
    snprintf(p->name, sizeof p->name, "CPU emulation");
    p->major = 9, p->minor = 0, p->multiProcessorCount = 4;
    return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
    const char *env = getenv("L2EMU_FREE_MIB"); /* lets a test run the memory plan out of room */
    *total_b = (size_t)8 << 30;
    *free_b = env ? (size_t)atoll(env) << 20 : *total_b;
    return cudaSuccess;
}
inline cudaError_t cudaMalloc(void **p, size_t n) {
    *p = aligned_alloc(256, (n + 255) / 256 * 256);
    if (*p)
        memset(*p, 0xa5, n); /* garbage, as device memory is: a kernel reading unwritten memory shows */
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFree(void *p) { return free(p), cudaSuccess; }
inline cudaError_t cudaHostAlloc(void **p, size_t n, unsigned) { return cudaMalloc(p, n); }
inline cudaError_t cudaFreeHost(void *p) { return cudaFree(p); }
inline cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind) { return memcpy(d, s, n), cudaSuccess; }

inline void l2emu_enqueue(cudaStream_t s, std::function<void()> f) {
    if (s && s->capturing)
        s->recorded.push_back(std::move(f));
    else
        f();
}
inline cudaError_t cudaMemcpyAsync(void *d, const void *src, size_t n, cudaMemcpyKind, cudaStream_t s) {
    l2emu_enqueue(s, [=] { memcpy(d, src, n); });
    return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) { return *s = new l2emu_stream, cudaSuccess; }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) { return delete s, cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
    s->capturing = true;
    s->recorded.clear();
    return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
    s->capturing = false;
    *g = new l2emu_graph{std::move(s->recorded)};
    s->recorded.clear();
    return cudaSuccess;
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long) {
    return *e = new l2emu_graph{g->work}, cudaSuccess;
}
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
    for (auto &f : e->work)
        l2emu_enqueue(s, f);
    return cudaSuccess;
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t g) { return delete g, cudaSuccess; }
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) { return delete e, cudaSuccess; }

/* kernel<<<grid, block, smem, stream>>>(args) is rewritten to this by the test */
template <typename K, typename... A>
void l2emu_launch(dim3 grid, dim3 block, size_t, cudaStream_t s, K kernel, A... args) {
    l2emu_enqueue(s, [=] { l2emu_run_grid(grid, block, [&] { kernel(args...); }); });
}

#endif
