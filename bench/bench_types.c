// Side by side: the CPU backend's vec_dot of MPQ2 and of llama.cpp's own types (Q2_K, IQ2_XS,
// Q4_0, ...), as the patched libraries run them (ggml_get_type_traits_cpu), over the same
// number of weights, one thread, one call per row as mul_mat does for one token. Prints GB/s of
// weight bytes and G weights/s, min and median over repeats, and a streaming read of the same
// bytes. Built and run by bench/bench_vec_dot.py --types; by hand:
//
//   cc -O2 -Ibuild/llama.cpp-src/ggml/include bench/bench_types.c -Lbuild/bin -lggml-cpu -lggml-base \
//      -Wl,-rpath,build/bin -lm -o bench_types
//   ./bench_types [MiB of MPQ2-equivalent weights = 64] [row length = 4096] [repeats = 9] type...
#include "ggml.h"
#include "ggml-cpu.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_timing.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float randn(void) {   // Box-Muller on xorshift64*
    float u[2];
    for (int i = 0; i < 2; ++i) {
        rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
        u[i] = (float) (((rng * 0x2545F4914F6CDD1Dull) >> 11) + 1) * 0x1.0p-53f;
    }
    return sqrtf(-2.0f * logf(u[0])) * cosf(6.2831853f * u[1]);
}


static void report(const char * name, double * t, int reps, size_t bytes, int64_t weights) {
    sort_times(t, reps);
    printf("%-10s %9.2f MiB  GB/s min-time %7.2f  median %7.2f  Gweights/s median %7.2f\n",
           name, bytes / 1048576.0, bytes / t[0] / 1e9, bytes / t[reps / 2] / 1e9, weights / t[reps / 2] / 1e9);
}

int main(int argc, char ** argv) {
    const double mib  = argc > 1 ? atof(argv[1]) : 64.0;
    const int    n    = argc > 2 ? atoi(argv[2]) : 4096;
    const int    reps = argc > 3 ? (atoi(argv[3]) > 64 ? 64 : atoi(argv[3])) : 9;
    if (n <= 0 || n % 256 || mib <= 0 || reps <= 0 || argc < 5) {
        fprintf(stderr, "usage: %s MiB row-length(multiple of 256) repeats type...\n", argv[0]);
        return 2;
    }
    ggml_cpu_init();
    // the same weight count for every type: what `mib` MiB of MPQ2 (2.5 bits per weight) holds
    const int64_t rows = (int64_t) (mib * 1048576.0 * 8.0 / 2.5 / n) > 0 ? (int64_t) (mib * 1048576.0 * 8.0 / 2.5 / n) : 1;
    const int64_t src_rows = rows < 256 ? rows : 256;   // quantize 256 rows, repeat them
    float * w = malloc(sizeof(float) * (size_t) (src_rows * n));
    float * a = malloc(sizeof(float) * (size_t) n);
    float * imat = malloc(sizeof(float) * (size_t) n);
    float * out = malloc(sizeof(float) * (size_t) rows);
    for (int64_t i = 0; i < src_rows * n; ++i) w[i] = randn();
    for (int i = 0; i < n; ++i) { a[i] = randn(); imat[i] = 1.0f + a[i] * a[i]; }
    printf("rows=%lld n=%d weights=%lld repeats=%d threads=1\n", (long long) rows, n, (long long) (rows * n), reps);

    for (int it = 4; it < argc; ++it) {
        enum ggml_type type = GGML_TYPE_COUNT;
        for (int t = 0; t < 128; ++t) {
            const char * name = ggml_type_name((enum ggml_type) t);
            if (name && strcmp(name, argv[it]) == 0 && ggml_get_type_traits((enum ggml_type) t)->blck_size > 0) {
                type = (enum ggml_type) t;
                break;
            }
        }
        const struct ggml_type_traits_cpu * tc = type == GGML_TYPE_COUNT ? NULL : ggml_get_type_traits_cpu(type);
        if (!tc || !tc->vec_dot) {
            fprintf(stderr, "unknown type or no CPU vec_dot: %s\n", argv[it]);
            return 1;
        }
        const size_t row_bytes = ggml_row_size(type, n);
        const size_t bytes = row_bytes * (size_t) rows;
        char * q = aligned_alloc(64, (bytes + 63) / 64 * 64);
        ggml_quantize_init(type);
        ggml_quantize_chunk(type, w, q, 0, src_rows, n, ggml_quantize_requires_imatrix(type) ? imat : NULL);
        for (int64_t r = src_rows; r < rows; r += src_rows) {
            memcpy(q + r * row_bytes, q, row_bytes * (size_t) (rows - r < src_rows ? rows - r : src_rows));
        }
        const struct ggml_type_traits_cpu * ta = ggml_get_type_traits_cpu(tc->vec_dot_type);
        char * qa = malloc(ggml_row_size(tc->vec_dot_type, n));
        if (ta->from_float) ta->from_float(a, qa, n); else memcpy(qa, a, sizeof(float) * (size_t) n);

        double t[64], ts[64];
        for (int r = 0; r < reps; ++r) {
            double t0 = now();
            for (int64_t i = 0; i < rows; ++i) tc->vec_dot(n, out + i, 0, q + i * row_bytes, 0, qa, 0, 1);
            sink_f = out[rows - 1];
            t[r] = now() - t0;
            t0 = now();
            uint64_t s0 = 0, s1 = 0;
            const uint64_t * p = (const uint64_t *) q;
            for (size_t k = 0; k + 2 <= bytes / 8; k += 2) { s0 += p[k]; s1 += p[k + 1]; }
            sink_u = s0 + s1;
            ts[r] = now() - t0;
        }
        report(argv[it], t, reps, bytes, rows * n);
        char sname[64];
        snprintf(sname, sizeof sname, "read %s", argv[it]);
        report(sname, ts, reps, bytes, rows * n);
        free(q);
        free(qa);
    }
    return 0;
}
