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

/* Fastest first. A SIMD set is one line here plus its kernels_<isa>.c file. */
static const kernel_choice choices[] = {
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
