/* cpu_q8: every weight matrix in Q8_0, computed with 8-bit integer dot products
 * against activations quantized to 8 bits once per matmul. Q8_0 files run in
 * place (the kernels may repack them once at load, see matmul.c); F32, F16, Q4_0
 * and Q4_1 matrices are requantized to Q8_0 at load, costing 34 bytes per 32
 * weights (about 7 GB for a 7B model). Norms stay F32; the embedding table
 * stays as it is in the file (a lookup dequantizes one row). */
#include "cpu_engine.h"

#define ANY_TYPE                                                                                           \
    (L2_TYPE_BIT(LLAMA2_TYPE_F32) | L2_TYPE_BIT(LLAMA2_TYPE_F16) | L2_TYPE_BIT(LLAMA2_TYPE_Q4_0) |        \
     L2_TYPE_BIT(LLAMA2_TYPE_Q4_1) | L2_TYPE_BIT(LLAMA2_TYPE_Q8_0))

static const l2_cpu_policy policy = {
    .role = {
        [L2_ROLE_EMBEDDING] = {ANY_TYPE, LLAMA2_TYPE_F32},
        [L2_ROLE_OUTPUT] = {L2_TYPE_BIT(LLAMA2_TYPE_Q8_0), LLAMA2_TYPE_Q8_0},
        [L2_ROLE_MATRIX] = {L2_TYPE_BIT(LLAMA2_TYPE_Q8_0), LLAMA2_TYPE_Q8_0},
    },
};

static const int32_t native_types[] = {LLAMA2_TYPE_Q8_0, -1};

static llama2_status load(const llama2_model_desc *desc, llama2_model **out, char *err, size_t err_len) {
    return l2_cpu_model_load(&policy, desc, out, err, err_len);
}

static const llama2_backend_api api = L2_CPU_BACKEND_API(
    "cpu_q8", "Q8_0 weights on the CPU, integer SIMD kernels (other types requantized at load), OpenMP",
    native_types, load);

L2_EXPORT const llama2_backend_api *llama2_backend_get(void) {
    return &api;
}
