// Standalone check of MPQ2S's CPU kernels (ggml_ext/src/ggml-cpu-mpq2s.c) without building
// llama.cpp: the scalar row dot product and the 16-row repacked kernel (the target's: AVX-512,
// AVX2 or NEON, else its scalar reference) against an exact float64 sum, and the scalar x16
// reference and the row-wise SIMD dot product (AVX2, NEON) against the scalar row dot bit for bit. Driven by tests/test_mpq2s.py, which has the build lines:
// x86 links the built libggml-base (MPQ2R's rotation, for ggml-mpq2s.c's encoder); AArch64, with
// no such library, drops the encoder with -ffunction-sections -Wl,--gc-sections and runs under
// qemu-aarch64.
#include "mpq2_support.h"
#include "ggml-cpu-mpq2-repack.h"
#include "ggml-mpq2s.h"

#define MAX_N   (128*40)
#define ROWS    32
#define COLS    11
#define REL_TOL 1e-5

static block_mpq2s    X[ROWS][MAX_N / QK_MPQ2S];
static block_mpq2sx16 XP[ROWS / 16 * (MAX_N / QK_MPQ2S)];
static block_q8_0     Y[COLS][MAX_N / QK8_0];
static char           ACT[COLS][MAX_N * 2];

static int n_cases, n_fail, n_exact;
static double worst_rel;

// Exact dot in float64, and the sum of |terms| (the scale of rounding error).
static double reference(const block_mpq2s * x, const block_q8_0 * y, int n, double * abs_sum) {
    double sum = 0.0, asum = 0.0;
    for (int ib = 0; ib < n / QK_MPQ2S; ++ib) {
        const double dx = mpq2_d_from_code((uint8_t) (x[ib].hdr >> 24));
        for (int w = 0; w < MPQ2S_WORDS; ++w) {
            const int g = (int) (x[ib].hdr >> (3*w)) & 7;
            const block_q8_0 * yb = y + 4*ib + w/2;
            const double dy = ggml_fp16_to_fp32(yb->d);
            for (int i = 0; i < 16; ++i) {
                const int c = (int) (x[ib].qs[w] >> (8*(i & 3) + 2*(i >> 2))) & 3;
                const int64_t t = (int64_t) mpq2s_grid_mult[g] * (16*c - mpq2s_grid_zero[g]) * yb->qs[(w & 1)*16 + i];
                sum  += dx * dy * (double) t;
                asum += fabs(dx * dy) * (double) llabs(t);
            }
        }
    }
    *abs_sum = asum;
    return sum;
}

// Rows and columns for one case: kind 0 random, 1 unit scales (below 2^24 every sum is an exact
// integer), 2 extreme codes (all 3s, activations +-127, unit scales), 3 scales spread over 2^-30 .. 2^20.
static void fill(int n, int kind) {
    for (int r = 0; r < ROWS; ++r) {
        for (int ib = 0; ib < n / QK_MPQ2S; ++ib) {
            block_mpq2s * b = &X[r][ib];
            const uint32_t code = kind == 1 || kind == 2 ? 160 : kind == 3 ? 40 + (uint32_t) (mpq2_rand() % 200) : 120 + (uint32_t) (mpq2_rand() % 16);
            b->hdr = (uint32_t) (mpq2_rand() & 0xFFFFFF) | code << 24;
            for (int w = 0; w < MPQ2S_WORDS; ++w) b->qs[w] = kind == 2 ? 0xFFFFFFFFu : (uint32_t) mpq2_rand();
        }
    }
    float a[MAX_N];
    for (int c = 0; c < COLS; ++c) {
        for (int i = 0; i < n; ++i) a[i] = kind == 2 ? (mpq2_rand() & 1 ? 127.0f : -127.0f) : mpq2_randn();
        mpq2_quantize_q8_0(a, Y[c], n);
        if (kind == 1 || kind == 2) {
            for (int j = 0; j < n / QK8_0; ++j) Y[c][j].d = ggml_fp32_to_fp16(1.0f);
        }
    }
}

static void check(const char * what, int n, int kind) {
    fill(n, kind);
    static block_mpq2s rows[ROWS * (MAX_N / QK_MPQ2S)];
    const int nb = n / QK_MPQ2S;
    for (int r = 0; r < ROWS; ++r) memcpy(rows + r*nb, X[r], sizeof(block_mpq2s) * nb);
    ggml_mpq2s_repack_x16(XP, rows, ROWS, n);
    mpq2_act act[COLS];
    for (int c = 0; c < COLS; ++c) {
        memcpy(ACT[c], Y[c], sizeof(block_q8_0) * (n / QK8_0));
        ggml_mpq2_act_finish(ACT[c], n, &act[c]);
    }
    for (int ncols = 1; ncols <= COLS; ++ncols) {
        static float simd[COLS * ROWS], gen[COLS * ROWS];
        ggml_mpq2sx16_mul(n, simd, ROWS, XP, ROWS / 16, act, ncols);
        ggml_mpq2sx16_mul_generic(n, gen, ROWS, XP, ROWS / 16, act, ncols);
        for (int c = 0; c < ncols; ++c) {
            for (int r = 0; r < ROWS; ++r) {
                float one = NAN, row = NAN;
                ggml_vec_dot_mpq2s_q8_0_generic(n, &one, 0, X[r], 0, Y[c], 0, 1);
                ggml_vec_dot_mpq2s_q8_0(n, &row, 0, X[r], 0, Y[c], 0, 1);
                double asum;
                const double ref = reference(X[r], Y[c], n, &asum);
                const double err = fabs((double) simd[c*ROWS + r] - ref);
                const int exact = (kind == 1 || kind == 2) && asum < 16777216.0;   // every partial sum an exact integer
                n_cases++;
                n_exact += exact;
                if (asum > 0 && err / asum > worst_rel) worst_rel = err / asum;
                const int bad = memcmp(&one, &gen[c*ROWS + r], sizeof(float)) != 0          // x16 reference = row dot, bit for bit
                             || memcmp(&one, &row, sizeof(float)) != 0                      // row-wise SIMD = row dot, bit for bit
                             || !(err <= REL_TOL * asum + 1e-30)
                             || (exact && ((double) simd[c*ROWS + r] != ref || (double) one != ref));
                if (bad && ++n_fail <= 20) {
                    fprintf(stderr, "FAIL %-14s n=%5d cols=%2d row %2d col %2d: simd %.9g generic x16 %.9g row dot %.9g "
                            "row-wise simd %.9g exact %.9g\n", what, n, ncols, r, c, simd[c*ROWS + r], gen[c*ROWS + r], one, row, ref);
                }
            }
        }
    }
}

int main(void) {
    mpq2_support_init();
    const char * kinds[] = { "random", "unit scales", "extreme codes", "spread scales" };
    const int ns[] = { 128, 256, 896, 4096, MAX_N };
    for (int k = 0; k < 4; ++k) {
        for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); ++i) check(kinds[k], ns[i], k);
    }
    printf("mpq2s x16 kernel %s, row-wise %s: %d cases, %d exact, worst |err|/sum|terms| %.3g\n",
           ggml_mpq2sx16_impl(), ggml_vec_dot_mpq2s_impl(), n_cases, n_exact, worst_rel);
    if (n_fail) {
        printf("FAILED %d\n", n_fail);
        return 1;
    }
    printf("OK\n");
    return 0;
}
