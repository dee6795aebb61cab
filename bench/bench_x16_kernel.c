// Times this build's repacked kernel ggml_mpq2x16_mul on a 1536 x 576 MPQ2 matrix of quantized
// random rows (argv[1]: the salient fraction, default 0.00125) for 1 and 8 activation columns;
// prints the best of 7 runs of 200 calls. The matrix (221 KB) stays in L2: this is the kernel's
// compute speed, not generation speed. Two builds side by side (e.g. two ggml_ext trees):
//
//   L=build/llama.cpp-src/ggml; E=ggml_ext
//   cc -O2 -std=gnu11 -ffp-contract=off -march=native -Itests/simd -I$L/include -I$L/src \
//      -I$L/src/ggml-cpu -I$E/include -I$E/src bench/bench_x16_kernel.c $E/src/ggml-cpu-mpq2.c \
//      $E/src/ggml-mpq2.c $E/src/ggml-cpu-mpq2-repack.c -lm -o x16_time && ./x16_time 0
#include "mpq2_support.h"
#include "ggml-cpu-mpq2-repack.h"
#include <time.h>
#define ROWS 1536
#define N 576
static block_mpq2 X[ROWS * (N / QK_MPQ2)];
static float F[ROWS * N];
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(int argc, char ** argv) {
    mpq2_support_init();
    const float salient = argc > 1 ? atof(argv[1]) : 0.00125f;
    for (int i = 0; i < ROWS * N; ++i) F[i] = mpq2_randn();
    quantize_mpq2_ex(F, X, ROWS, N, NULL, salient);
    block_mpq2x16 * xp = aligned_alloc(64, sizeof(block_mpq2x16) * (ROWS / 16) * (N / QK_MPQ2));
    ggml_mpq2_repack_x16(xp, X, ROWS, N);
    static block_q8_0 Y[8][N / QK8_0];
    static char ACT[8][N * 4] __attribute__((aligned(64)));
    mpq2_act act[8];
    float yf[N];
    for (int c = 0; c < 8; ++c) {
        for (int i = 0; i < N; ++i) yf[i] = mpq2_randn();
        mpq2_quantize_q8_0(yf, Y[c], N);
        memcpy(ACT[c], Y[c], sizeof(Y[c]));
        ggml_mpq2_act_finish(ACT[c], N, &act[c]);
    }
    static float out[8 * ROWS];
    for (int nc = 1; nc <= 8; nc += 7) {
        double best = 1e9;
        for (int rep = 0; rep < 7; ++rep) {
            const double t0 = now();
            for (int it = 0; it < 200; ++it) ggml_mpq2x16_mul(N, out, ROWS, xp, ROWS / 16, act, nc);
            const double t = (now() - t0) / 200;
            if (t < best) best = t;
        }
        printf("%s ncols=%d: %.2f us per call, %.2f Gweights*cols/s\n", ggml_mpq2x16_impl(), nc, best * 1e6, (double) ROWS * N * nc / best / 1e9);
    }
    return 0;
}
