/* cpu_f32: every weight matrix in f32. F32 files run in place; other types are
 * dequantized at load, costing 4 bytes per weight (a Q4_0 7B model becomes
 * about 27 GB). The embedding table stays as it is in the file: a lookup
 * dequantizes one row, which gives the same numbers as converting it whole. */
#include "cpu_engine.h"

#define ANY_TYPE                                                                                           \
    (L2_TYPE_BIT(LLAMA2_TYPE_F32) | L2_TYPE_BIT(LLAMA2_TYPE_F16) | L2_TYPE_BIT(LLAMA2_TYPE_Q4_0) |        \
     L2_TYPE_BIT(LLAMA2_TYPE_Q4_1) | L2_TYPE_BIT(LLAMA2_TYPE_Q8_0))

static const l2_cpu_policy policy = {
    .role = {
        [L2_ROLE_EMBEDDING] = {ANY_TYPE, LLAMA2_TYPE_F32},
        [L2_ROLE_OUTPUT] = {L2_TYPE_BIT(LLAMA2_TYPE_F32), LLAMA2_TYPE_F32},
        [L2_ROLE_MATRIX] = {L2_TYPE_BIT(LLAMA2_TYPE_F32), LLAMA2_TYPE_F32},
    },
};

static const int32_t native_types[] = {LLAMA2_TYPE_F32, -1};

static llama2_status load(const llama2_model_desc *desc, llama2_model **out, char *err, size_t err_len) {
    return l2_cpu_model_load(&policy, desc, out, err, err_len);
}

static const llama2_backend_api api = L2_CPU_BACKEND_API(
    "cpu_f32", "f32 weights on the CPU (other types dequantized at load), OpenMP", native_types, load);

L2_EXPORT const llama2_backend_api *llama2_backend_get(void) {
    return &api;
}
