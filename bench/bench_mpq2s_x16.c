// MPQ2S against MPQ2: the 16-row repacked kernels of one build side by side (ggml_mpq2sx16_mul,
// ggml_mpq2x16_mul), on the same 1536 x 1536 random matrix quantized both ways, for 1 and 8
// activation columns; best of 9 interleaved runs of 100 calls each. The matrices (864 / 737 KB)
// stay in L2: this is compute speed, not generation speed. Build per target (AVX-512 native,
// AVX2 only), against the built libggml-base (quantize_mpq2_ex, mpq2r_rotate):
//
//   L=build/llama.cpp-src/ggml; E=ggml_ext; B=$PWD/build/bin
//   cc -O2 -std=gnu11 -ffp-contract=off -march=native -Itests/simd -I$L/include -I$L/src -I$L/src/ggml-cpu \
//      -I$E/include -I$E/src bench/bench_mpq2s_x16.c $E/src/ggml-cpu-mpq2s.c $E/src/ggml-cpu-mpq2-repack.c \
//      $E/src/ggml-mpq2s.c -L$B -lggml-base -Wl,-rpath,$B -lm -o x16s && ./x16s
//   (the same with -mavx2 -mfma -mf16c [-mavxvnni -mgfni] in place of -march=native)
#include "mpq2_support.h"
#include "ggml-cpu-mpq2-repack.h"
#include "ggml-mpq2s.h"
#include <time.h>

#define ROWS 1536
#define N    1536
#define REPS 9
#define CALLS 100

static float F[ROWS * N];
static block_mpq2  X2[ROWS * (N / QK_MPQ2)];
static block_mpq2s XS[ROWS * (N / QK_MPQ2S)];

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

int main(void) {
    mpq2_support_init();
    for (int i = 0; i < ROWS * N; ++i) F[i] = mpq2_randn();
    quantize_mpq2_ex(F, X2, ROWS, N, NULL, 0.0f);          // no int8 words: the kernels' main loops
    quantize_mpq2s(F, XS, ROWS, N, NULL);
    block_mpq2x16  * p2 = aligned_alloc(64, sizeof(X2));
    block_mpq2sx16 * ps = aligned_alloc(64, sizeof(XS));
    ggml_mpq2_repack_x16(p2, X2, ROWS, N);
    ggml_mpq2s_repack_x16(ps, XS, ROWS, N);
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
    printf("kernels: mpq2 %s, mpq2s %s; %d x %d weights\n", ggml_mpq2x16_impl(), ggml_mpq2sx16_impl(), ROWS, N);
    printf("| columns | MPQ2 us/call (best) | MPQ2S us/call (best) | MPQ2S / MPQ2 time | per byte of weights |\n|---|---|---|---|---|\n");
    for (int nc = 1; nc <= 8; nc += 7) {
        double b2 = 1e9, bs = 1e9;
        for (int rep = 0; rep < REPS; ++rep) {
            double t0 = now();
            for (int it = 0; it < CALLS; ++it) ggml_mpq2x16_mul(N, out, ROWS, p2, ROWS / 16, act, nc);
            double t1 = now();
            for (int it = 0; it < CALLS; ++it) ggml_mpq2sx16_mul(N, out, ROWS, ps, ROWS / 16, act, nc);
            double t2 = now();
            if (t1 - t0 < b2) b2 = t1 - t0;
            if (t2 - t1 < bs) bs = t2 - t1;
        }
        const double bytes2 = sizeof(X2), bytess = sizeof(XS);
        printf("| %d | %.1f | %.1f | %.3f | %.3f |\n", nc, 1e6 * b2 / CALLS, 1e6 * bs / CALLS, bs / b2,
               (bs / bytess) / (b2 / bytes2));
    }
    return 0;
}
