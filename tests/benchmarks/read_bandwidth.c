/* Memory read bandwidth: threads stream a buffer much larger than the caches
 * and sum it (so the loads cannot be dropped); the best of several passes is
 * printed in GB/s. This is the ceiling a memory-bound decode can reach:
 * tokens/s <= bandwidth / bytes of weights read per token.
 * usage: read_bandwidth [MiB] [threads] */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 1024;
    int threads = argc > 2 ? atoi(argv[2]) : omp_get_max_threads();
    size_t n = mib * (1u << 20) / sizeof(uint64_t);
    uint64_t *buf = aligned_alloc(1 << 21, n * sizeof *buf);
    if (!buf)
        return 1;
    memset(buf, 1, n * sizeof *buf); /* touch every page before timing */
    double best = 0;
    uint64_t sink = 0;
    for (int pass = 0; pass < 8; pass++) {
        double t0 = omp_get_wtime();
        uint64_t total = 0;
#pragma omp parallel for num_threads(threads) reduction(+ : total) schedule(static)
        for (size_t i = 0; i < n; i += 8) {
            /* eight independent sums: the adds keep up with the loads */
            total += buf[i] + buf[i + 1] + buf[i + 2] + buf[i + 3] + buf[i + 4] + buf[i + 5] + buf[i + 6] +
                     buf[i + 7];
        }
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
