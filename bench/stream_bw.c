// Streaming read bandwidth with T threads: the ceiling token generation works against (every
// weight is read once per token). Each thread sums its own slice of a buffer far larger than
// the caches; min/median over repeats.
//
//   cc -O3 -march=native -pthread bench/stream_bw.c -o stream_bw && ./stream_bw THREADS [MiB] [REPEATS]
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct { const uint64_t * p; size_t n; uint64_t sum; } slice;

static void * read_slice(void * arg) {
    slice * s = arg;
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (size_t i = 0; i + 4 <= s->n; i += 4) {
        a0 += s->p[i]; a1 += s->p[i + 1]; a2 += s->p[i + 2]; a3 += s->p[i + 3];
    }
    s->sum = a0 + a1 + a2 + a3;
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int cmp(const void * a, const void * b) {
    const double x = *(const double *) a, y = *(const double *) b;
    return (x > y) - (x < y);
}

int main(int argc, char ** argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 1;
    const size_t mib = argc > 2 ? (size_t) atoi(argv[2]) : 512;
    const int reps = argc > 3 ? atoi(argv[3]) : 9;
    if (threads < 1 || threads > 256 || mib < 1 || reps < 1) {
        fprintf(stderr, "usage: %s THREADS [MiB] [REPEATS]\n", argv[0]);
        return 2;
    }
    const size_t n = mib << 17;   // uint64 words
    uint64_t * buf = malloc(n * sizeof(uint64_t));
    if (!buf) { fprintf(stderr, "out of memory\n"); return 1; }
    for (size_t i = 0; i < n; ++i) buf[i] = i;   // touch every page
    pthread_t tid[256];
    slice sl[256];
    double * sec = malloc(sizeof(double) * reps);
    uint64_t sink = 0;
    for (int r = 0; r < reps; ++r) {
        const double t0 = now();
        for (int t = 0; t < threads; ++t) {
            sl[t].p = buf + n / threads * t;
            sl[t].n = n / threads;
            pthread_create(&tid[t], NULL, read_slice, &sl[t]);
        }
        for (int t = 0; t < threads; ++t) { pthread_join(tid[t], NULL); sink += sl[t].sum; }
        sec[r] = now() - t0;
    }
    qsort(sec, reps, sizeof(double), cmp);
    const double gb = (double) (n / threads * threads) * 8 / 1e9;
    printf("threads %d  %zu MiB  max %.2f GB/s  median %.2f GB/s  (sink %llu)\n", threads, mib,
           gb / sec[0], gb / sec[reps / 2], (unsigned long long) (sink & 1));
    free(sec);
    free(buf);
    return 0;
}
