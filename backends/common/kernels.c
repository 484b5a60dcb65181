/* Choosing the kernel set: the best one this CPU runs, unless LLAMA2_ISA names one. */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

typedef struct {
    const l2_kernels *(*get)(void); /* NULL when the set was not compiled in */
    int (*supported)(void);         /* this CPU runs it (CPUID) */
} kernel_choice;

static int always(void) {
    return 1;
}

#if defined(__x86_64__)
static int has_avx2(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

static int has_avx512vnni(void) {
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}
#endif

/* Fastest first. A SIMD set is one line here plus its kernels_<isa>.c file. */
static const kernel_choice choices[] = {
#if defined(__x86_64__)
    {l2_kernels_avx512vnni, has_avx512vnni},
    {l2_kernels_avx2, has_avx2},
#endif
    {l2_kernels_scalar, always},
};

const l2_kernels *l2_kernels_best(void) {
    const char *want = getenv("LLAMA2_ISA");
    size_t n = sizeof choices / sizeof choices[0];
    if (want && *want) {
        for (size_t i = 0; i < n; i++) {
            const l2_kernels *k = choices[i].get();
            if (strcmp(k->isa, want) == 0 && choices[i].supported())
                return k;
        }
        /* an unknown or unsupported request falls through to the best available set */
    }
    for (size_t i = 0; i < n; i++)
        if (choices[i].supported())
            return choices[i].get();
    return l2_kernels_scalar();
}
