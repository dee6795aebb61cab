// The MPQ2 reference quantizer alone (ggml_ext/src/ggml-mpq2.c, compiled in as ggml-base
// compiles it: no -march, -ffp-contract=off), timed on random rows with a random imatrix.
// Prints M weights/s per repeat and an FNV-1a hash of the bytes, so two builds of the file
// (bench/quantize_speed.py: this tree against a git revision) can be checked for the same
// output and raced in one run.
//
//   cc -O3 -ffp-contract=off -I. -DMPQ2_SRC='"ggml_ext/src/ggml-mpq2.c"' -Iggml_ext/include \
//      -Ibuild/llama.cpp-src/ggml/include bench/bench_quantize_ref.c -lm -o bq
//   ./bq [rows = 256] [row length = 4096] [repeats = 3]
#include MPQ2_SRC

#include <time.h>

void ggml_abort(const char * file, int line, const char * fmt, ...) {
    fprintf(stderr, "abort %s:%d %s\n", file, line, fmt);
    abort();
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float uniform(void) {
    rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
    return (float) ((rng * 0x2545F4914F6CDD1Dull) >> 40) * 0x1.0p-24f;
}

int main(int argc, char ** argv) {
    const int64_t rows = argc > 1 ? atoll(argv[1]) : 256;
    const int64_t cols = argc > 2 ? atoll(argv[2]) : 4096;
    const int reps = argc > 3 ? atoi(argv[3]) : 3;
    float * x = malloc(sizeof(float) * rows * cols);
    float * imat = malloc(sizeof(float) * cols);
    const size_t row_bytes = (size_t) (cols / QK_MPQ2) * sizeof(block_mpq2);
    uint8_t * out = malloc(row_bytes * rows);
    for (int64_t i = 0; i < rows * cols; ++i) {
        const float u = uniform() - 0.5f;
        x[i] = u * u * u * 8.0f + (uniform() < 0.002f ? 40.0f * u : 0.0f);   // heavy tails, rare outliers
    }
    for (int64_t i = 0; i < cols; ++i) {
        imat[i] = 0.05f + uniform() * uniform() * 4.0f;
    }
    for (int r = 0; r < reps; ++r) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        quantize_mpq2(x, out, rows, cols, imat);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        const double s = (double) (t1.tv_sec - t0.tv_sec) + 1e-9 * (double) (t1.tv_nsec - t0.tv_nsec);
        uint64_t h = 0xcbf29ce484222325ull;
        for (size_t i = 0; i < row_bytes * rows; ++i) {
            h = (h ^ out[i]) * 0x100000001b3ull;
        }
        printf("%.3f Mweights/s hash %016llx\n", (double) (rows * cols) / s / 1e6, (unsigned long long) h);
    }
    return 0;
}
