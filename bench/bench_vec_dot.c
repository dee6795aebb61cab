// Throughput of the MPQ2 x Q8_0 dot product (ggml_vec_dot_mpq2_q8_0, the kernel of this
// build, and ggml_vec_dot_mpq2_q8_0_generic, the scalar reference) over a weight matrix, in
// GB/s of MPQ2 weight bytes, against a plain streaming read of the same bytes. One thread,
// one call per row, as ggml's mul_mat does with one activation column.
// Built and run by bench/bench_vec_dot.py; by hand:
//
//   L=build/llama.cpp-src/ggml
//   cc -O3 -march=native -I$L/include -I$L/src -I$L/src/ggml-cpu -Iggml_ext/include -Itests/simd
//      bench/bench_vec_dot.c ggml_ext/src/ggml-cpu-mpq2.c ggml_ext/src/ggml-mpq2.c -lm -o bench_vec_dot
//   ./bench_vec_dot [MiB of weights = 64] [row length = 4096] [repeats = 9] [fraction of blocks with an int8 word = 0.0004]
#include "mpq2_support.h"
#include "ggml-cpu-mpq2-repack.h"

void ggml_vec_dot_mpq2_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_mpq2_q8_0_generic(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);

typedef void (*vec_dot_t)(int, float *, size_t, const void *, size_t, const void *, size_t, int);

#include "bench_timing.h"

// Sum of all 64-bit words: the same bytes, read once, with (auto-vectorized) minimal work.
static uint64_t stream_read(const uint64_t * p, size_t n_words) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= n_words; i += 4) {
        s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3];
    }
    return s0 + s1 + s2 + s3;
}

// Times `reps` passes over all rows; returns min and median seconds per pass.
// nrc 2: two rows x two activation columns per call (ggml's prompt path); the GB/s then
// count every weight byte once per column, comparable with two passes of nrc 1.
static void run(const char * name, vec_dot_t f, const block_mpq2 * W, const block_q8_0 * A, float * out,
                int64_t rows, int n, int reps, size_t bytes, int nrc) {
    double t[64];
    const size_t row_bytes = (size_t) (n / QK_MPQ2) * sizeof(block_mpq2);
    for (int r = 0; r < reps; ++r) {
        const double t0 = now();
        if (f && nrc == 2) {
            for (int64_t i = 0; i + 2 <= rows; i += 2) {
                f(n, out + i, 1, (const char *) W + i * row_bytes, row_bytes, A, 0, 2);
            }
            sink_f = out[0];
        } else if (f) {
            for (int64_t i = 0; i < rows; ++i) {
                f(n, out + i, 0, (const char *) W + i * row_bytes, 0, A, 0, 1);
            }
            sink_f = out[rows - 1];
        } else {
            sink_u = stream_read((const uint64_t *) W, bytes / 8);
        }
        t[r] = now() - t0;
    }
    sort_times(t, reps);
    const double tmin = t[0] / (nrc == 2 ? 2 : 1), tmed = t[reps / 2] / (nrc == 2 ? 2 : 1);
    printf("%-22s %8.2f MiB  min %8.3f ms  median %8.3f ms  ->  %6.2f GB/s (min)  %6.2f GB/s (median)\n",
           name, bytes / 1048576.0, 1e3 * tmin, 1e3 * tmed, bytes / tmin / 1e9, bytes / tmed / 1e9);
}

// The repacked 16-row kernel (CPU_REPACK buffers) over the same weights: ncols activation
// columns per pass, GB/s counted once per column as for the 2x2 path.
static void run_x16(const char * name, const block_mpq2x16 * WP, const mpq2_act * acts, float * out,
                    int64_t rows, int n, int reps, size_t bytes, int ncols) {
    double t[64];
    for (int r = 0; r < reps; ++r) {
        const double t0 = now();
        ggml_mpq2x16_mul(n, out, (size_t) rows, WP, rows / MPQ2_RP_ROWS, acts, ncols);
        sink_f = out[rows - 1];
        t[r] = now() - t0;
    }
    sort_times(t, reps);
    const double tmin = t[0] / ncols, tmed = t[reps / 2] / ncols;
    printf("%-22s %8.2f MiB  min %8.3f ms  median %8.3f ms  ->  %6.2f GB/s (min)  %6.2f GB/s (median)\n",
           name, bytes / 1048576.0, 1e3 * tmin, 1e3 * tmed, bytes / tmin / 1e9, bytes / tmed / 1e9);
}

int main(int argc, char ** argv) {
    mpq2_support_init();
    const double mib  = argc > 1 ? atof(argv[1]) : 64.0;
    const int    n    = argc > 2 ? atoi(argv[2]) : 4096;
    int          reps = argc > 3 ? atoi(argv[3]) : 9;
    const double int8_blocks = argc > 4 ? atof(argv[4]) : 0.0004;
    if (n <= 0 || n % QK_MPQ2 || mib <= 0 || reps <= 0) {
        fprintf(stderr, "usage: %s [MiB of weights] [row length, a multiple of 64] [repeats]\n", argv[0]);
        return 2;
    }
    if (reps > 64) reps = 64;
    const size_t  row_bytes = (size_t) (n / QK_MPQ2) * sizeof(block_mpq2);
    const int64_t rows      = (int64_t) (mib * 1048576.0 / (double) row_bytes + 0.5) > 0 ? (int64_t) (mib * 1048576.0 / (double) row_bytes + 0.5) : 1;
    const size_t  bytes     = (size_t) rows * row_bytes;

    block_mpq2 * W   = aligned_alloc(64, (bytes + 63) / 64 * 64);
    block_q8_0 * A   = malloc(sizeof(block_q8_0) * (size_t) (n / QK8_0));
    float      * act = malloc(sizeof(float) * (size_t) n);
    float      * out = malloc(sizeof(float) * (size_t) (rows + 2));   // + 2: the 2x2 calls write s[r + c] past row i
    if (!W || !A || !act || !out) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    // random words, scale and zero codes; int8 words as rare as in converted models (SmolLM2:
    // one block in ~2500 has one), since the x86 kernels take a fast path for groups of
    // all-2-bit blocks. The last argument sets the fraction of blocks with an int8 word.
    const int64_t nblocks = (int64_t) (bytes / sizeof(block_mpq2));
    for (int64_t ib = 0; ib < nblocks; ++ib) {
        W[ib].d = (uint8_t) (120 + mpq2_rand() % 16);
        W[ib].zero = (uint8_t) mpq2_rand();
        W[ib].meta = (uint16_t) (mpq2_rand() & 0xFFF0);
        if (mpq2_randf() < int8_blocks) W[ib].meta |= (uint16_t) (1u << (mpq2_rand() & 3));
        for (int w = 0; w < MPQ2_WORDS; ++w) W[ib].qs[w] = (uint32_t) mpq2_rand();
    }
    for (int i = 0; i < n; ++i) act[i] = mpq2_randn();
    mpq2_quantize_q8_0(act, A, n);

    printf("kernel=%s rows=%lld n=%d weights=%.2f MiB repeats=%d\n",
           ggml_vec_dot_mpq2_q8_0_impl(), (long long) rows, n, bytes / 1048576.0, reps);
    run("stream read", NULL, W, A, out, rows, n, reps, bytes, 1);
    char name[64];
    snprintf(name, sizeof name, "vec_dot %s", ggml_vec_dot_mpq2_q8_0_impl());
    run(name, ggml_vec_dot_mpq2_q8_0, W, A, out, rows, n, reps, bytes, 1);
    snprintf(name, sizeof name, "vec_dot %s 2x2", ggml_vec_dot_mpq2_q8_0_impl());
    run(name, ggml_vec_dot_mpq2_q8_0, W, A, out, rows, n, reps, bytes, 2);
    run("vec_dot generic", ggml_vec_dot_mpq2_q8_0_generic, W, A, out, rows, n, reps, bytes, 1);

    // the same rows (a multiple of 16 of them) repacked, 1 and 8 activation columns
    const int64_t rows16 = rows / MPQ2_RP_ROWS * MPQ2_RP_ROWS;
    if (rows16 > 0) {
        const size_t bytes16 = (size_t) rows16 * row_bytes;
        block_mpq2x16 * WP  = aligned_alloc(64, (bytes16 + 63) / 64 * 64);
        char          * buf = aligned_alloc(64, 8 * ggml_mpq2_act_size(n));
        float         * o4  = malloc(sizeof(float) * (size_t) rows16 * 8);
        if (!WP || !buf || !o4) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
        ggml_mpq2_repack_x16(WP, W, rows16, n);
        mpq2_act acts[8];
        for (int c = 0; c < 8; ++c) {
            memcpy(buf + c * ggml_mpq2_act_size(n), A, sizeof(block_q8_0) * (size_t) (n / QK8_0));
            ggml_mpq2_act_finish(buf + c * ggml_mpq2_act_size(n), n, &acts[c]);
        }
        snprintf(name, sizeof name, "x16 %s", ggml_mpq2x16_impl());
        run_x16(name, WP, acts, o4, rows16, n, reps, bytes16, 1);
        snprintf(name, sizeof name, "x16 %s 8col", ggml_mpq2x16_impl());
        run_x16(name, WP, acts, o4, rows16, n, reps, bytes16, 8);
    }
    return 0;
}
