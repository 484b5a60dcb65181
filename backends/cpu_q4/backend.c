/* cpu_q4: 4-bit weights (Q4_0, Q4_1) computed with integer SIMD dot products
 * against activations quantized to 8 bits once per matmul.
 *
 * Run in place: Q4_0 and Q4_1 matrices, and the Q8_0 (or F32) tensors that
 * 4-bit files keep for the output and embedding. Converted at load: F32 and
 * F16 attention and FFN matrices become Q4_0 (18 bytes per 32 weights, about
 * 3.6 GB for a 7B model), as llama.cpp's q4_0 quantizer would make them; an
 * F16 output matrix becomes Q8_0, which keeps the logits close to the file's.
 * Norms stay F32; the embedding table stays as it is in the file. */
#include "cpu_engine.h"

#define ANY_TYPE                                                                                           \
    (L2_TYPE_BIT(LLAMA2_TYPE_F32) | L2_TYPE_BIT(LLAMA2_TYPE_F16) | L2_TYPE_BIT(LLAMA2_TYPE_Q4_0) |        \
     L2_TYPE_BIT(LLAMA2_TYPE_Q4_1) | L2_TYPE_BIT(LLAMA2_TYPE_Q8_0))
#define Q4_TYPES (L2_TYPE_BIT(LLAMA2_TYPE_Q4_0) | L2_TYPE_BIT(LLAMA2_TYPE_Q4_1))

static const l2_cpu_policy policy = {
    .role = {
        [L2_ROLE_EMBEDDING] = {ANY_TYPE, LLAMA2_TYPE_F32},
        [L2_ROLE_OUTPUT] = {Q4_TYPES | L2_TYPE_BIT(LLAMA2_TYPE_Q8_0) | L2_TYPE_BIT(LLAMA2_TYPE_F32),
                            LLAMA2_TYPE_Q8_0},
        /* a Q8_0 matrix in a 4-bit file is kept: requantizing it to 4 bits would only lose precision */
        [L2_ROLE_MATRIX] = {Q4_TYPES | L2_TYPE_BIT(LLAMA2_TYPE_Q8_0), LLAMA2_TYPE_Q4_0},
    },
};

static const int32_t native_types[] = {LLAMA2_TYPE_Q4_0, LLAMA2_TYPE_Q4_1, LLAMA2_TYPE_Q8_0, -1};

static llama2_status load(const llama2_model_desc *desc, llama2_model **out, char *err, size_t err_len) {
    return l2_cpu_model_load(&policy, desc, out, err, err_len);
}

static const llama2_backend_api api = L2_CPU_BACKEND_API(
    "cpu_q4", "Q4_0/Q4_1 weights on the CPU, integer SIMD kernels (F32/F16 matrices quantized at load), OpenMP",
    native_types, load);

L2_EXPORT const llama2_backend_api *llama2_backend_get(void) {
    return &api;
}
