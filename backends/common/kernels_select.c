/* Run-time choice of the kernel set: CPUID decides, LLAMA2_ISA overrides. */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

static int cpu_has(const char *isa)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (strcmp(isa, "avx2") == 0)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (strcmp(isa, "avx512vnni") == 0)
        return cpu_has("avx2") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
    return strcmp(isa, "scalar") == 0;
}

const l2_kernels *l2_kernels_named(const char *isa)
{
    if (!cpu_has(isa))
        return NULL;
    if (strcmp(isa, "avx512vnni") == 0)
        return l2_kernels_avx512vnni();
    if (strcmp(isa, "avx2") == 0)
        return l2_kernels_avx2();
    return l2_kernels_scalar();
}

const l2_kernels *l2_kernels_best(void)
{
    const char *forced = getenv("LLAMA2_ISA");
    if (forced != NULL && forced[0] != '\0')
        return l2_kernels_named(forced);
    static const char *const by_preference[] = {"avx512vnni", "avx2"};
    for (size_t i = 0; i < sizeof by_preference / sizeof by_preference[0]; i++)
        if (cpu_has(by_preference[i]))
            return l2_kernels_named(by_preference[i]);
    return l2_kernels_scalar();
}
