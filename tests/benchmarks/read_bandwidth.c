/* Memory read bandwidth: threads stream a buffer much larger than the caches
 * and sum it (so the loads cannot be dropped); the best of 40 passes is
 * printed in GB/s. Many short passes rather than a few long ones: on a shared
 * machine the best pass is the one that ran while the neighbours were idle. This is the ceiling a memory-bound decode can reach:
 * tokens/s <= bandwidth / bytes of weights read per token.
 * usage: read_bandwidth [MiB] [threads] */
#define _DEFAULT_SOURCE /* madvise */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 256; /* well past any L3 */
    int threads = argc > 2 ? atoi(argv[2]) : omp_get_max_threads();
    size_t n = mib * (1u << 20) / sizeof(uint64_t);
    uint64_t *buf = aligned_alloc(1 << 21, n * sizeof *buf);
    if (!buf)
        return 1;
    /* huge pages, as the backends' repacked weights use: in a VM a 4 kB-page
     * stream is limited by nested page walks, not by the memory */
    if (getenv("BW_SMALL_PAGES") == NULL)
        madvise(buf, n * sizeof *buf, MADV_HUGEPAGE);
    memset(buf, 1, n * sizeof *buf); /* touch every page before timing */
    double best = 0;
    uint64_t sink = 0;
    for (int pass = 0; pass < 40; pass++) {
        double t0 = omp_get_wtime();
        uint64_t total = 0;
#pragma omp parallel for num_threads(threads) reduction(+ : total) schedule(static)
        for (size_t i = 0; i < n; i++) /* a plain reduction: the compiler vectorises it */
            total += buf[i];
        double dt = omp_get_wtime() - t0;
        sink += total;
        double gbs = (double)(n * sizeof *buf) / dt / 1e9;
        best = gbs > best ? gbs : best;
    }
    printf("%.2f\n", best);
    fprintf(stderr, "read bandwidth, %zu MiB, %d threads: best %.2f GB/s (checksum %llu)\n", mib, threads, best,
            (unsigned long long)(sink & 0xff));
    free(buf);
    return 0;
}
