// Standalone check of the MPQ2 x Q8_0 SIMD kernel against the scalar reference and an exact
// float64 sum, without building llama.cpp: compile with ggml_ext/src/ggml-cpu-mpq2.c and
// ggml-mpq2.c for any target (x86 native, -mavx2, aarch64 under qemu). Driven by
// tests/test_simd_harness.py; by hand:
//
//   L=build/llama.cpp-src/ggml
//   cc -O2 -march=native -I$L/include -I$L/src -I$L/src/ggml-cpu -Iggml_ext/include
//      tests/simd/mpq2_kernel_check.c ggml_ext/src/ggml-cpu-mpq2.c ggml_ext/src/ggml-mpq2.c -lm -o check
//   ./check            # prints the kernel name and "OK ..." (exit 0) or the failing cases (exit 1)
#include "mpq2_support.h"
#include "ggml-cpu-mpq2-repack.h"

void ggml_vec_dot_mpq2_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_mpq2_q8_0_generic(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);

#define MAX_N (64*256)
#define REL_TOL 1e-5

static block_mpq2 X[MAX_N / QK_MPQ2];
static block_q8_0 Y[MAX_N / QK8_0];
static float      F[MAX_N];

static int    n_cases, n_fail, n_exact;
static double worst_rel;

// Exact dot in float64 from the integers, and the sum of |terms| (the scale of rounding error).
static double reference(int n, double * abs_sum) {
    double sum = 0.0, asum = 0.0;
    for (int ib = 0; ib < n / QK_MPQ2; ++ib) {
        const double dx = mpq2_d_from_code(X[ib].d);
        for (int h = 0; h < 2; ++h) {
            const double dy = ggml_fp16_to_fp32(Y[2*ib + h].d);
            int64_t si = 0, sa = 0;
            for (int w = 2*h; w < 2*h + 2; ++w) {
                const uint32_t q = X[ib].qs[w];
                const int m = mpq2_scale_mult[(X[ib].meta >> MPQ2_SCALE_SHIFT(w)) & 7];
                const int z = mpq2_zero2[(X[ib].zero >> MPQ2_ZERO_SHIFT(w)) & 3];
                for (int i = 0; i < 16; ++i) {
                    const int v = (X[ib].meta >> w & 1) ? (int8_t) (q >> (8*(i >> 2)))
                                                        : 16 * (int) ((q >> (8*(i & 3) + 2*(i >> 2))) & 3) - z;
                    const int a = Y[2*ib + h].qs[(w & 1)*16 + i];
                    si += (int64_t) m * v * a;
                    sa += llabs((int64_t) m * v * a);
                }
            }
            sum  += dx * dy * (double) si;
            asum += fabs(dx * dy) * (double) sa;
        }
    }
    *abs_sum = asum;
    return sum;
}

// The nrc == 2 call (two rows x two columns, ggml's mul_mat for prompts) must give exactly
// the four nrc == 1 results: rows X and X rotated by one block, columns Y and Y rotated.
static block_mpq2 XX[2][MAX_N / QK_MPQ2];
static block_q8_0 YY[2][MAX_N / QK8_0];

static void check_2x2(const char * what, int n) {
    const int nbx = n / QK_MPQ2, nby = n / QK8_0;
    memcpy(XX[0], X, sizeof(block_mpq2) * nbx);
    memcpy(YY[0], Y, sizeof(block_q8_0) * nby);
    for (int i = 0; i < nbx; ++i) XX[1][i] = X[(i + 1) % nbx];
    for (int i = 0; i < nby; ++i) YY[1][i] = Y[(i + 2) % nby];
    float s4[2 * 3];
    const size_t bs = 3;   // any output stride
    ggml_vec_dot_mpq2_q8_0(n, s4, bs, XX[0], sizeof(XX[0]), YY[0], sizeof(YY[0]), 2);
    for (int c = 0; c < 2; ++c) {
        for (int r = 0; r < 2; ++r) {
            float one = NAN;
            ggml_vec_dot_mpq2_q8_0(n, &one, 0, XX[r], 0, YY[c], 0, 1);
            n_cases++;
            if (memcmp(&one, &s4[r + c*bs], sizeof(float)) != 0) {
                n_fail++;
                if (n_fail <= 20) {
                    fprintf(stderr, "FAIL %-28s n=%5d 2x2 call row %d col %d = %.9g, single call %.9g\n",
                            what, n, r, c, s4[r + c*bs], one);
                }
            }
        }
    }
}

static void check(const char * what, int n) {
    check_2x2(what, n);
    float got = NAN, gen = NAN;
    ggml_vec_dot_mpq2_q8_0(n, &got, 0, X, 0, Y, 0, 1);
    ggml_vec_dot_mpq2_q8_0_generic(n, &gen, 0, X, 0, Y, 0, 1);
    double asum;
    const double ref = reference(n, &asum);
    const double tol = REL_TOL * asum + 1e-30;
    const double err = fabs((double) got - ref), gerr = fabs((double) gen - ref);
    n_cases++;
    if (asum > 0 && err / asum > worst_rel) worst_rel = err / asum;
    // with unit scales every partial sum is an exact integer below 2^24: no rounding at all
    const int exact = mpq2_d_from_code(X[0].d) == 1.0f && asum < 16777216.0;
    if (exact) n_exact++;
    if (!(err <= tol) || !(gerr <= tol) || (exact && (got != gen || (double) got != ref))) {
        n_fail++;
        if (n_fail <= 20) {
            fprintf(stderr, "FAIL %-28s n=%5d simd=%.9g generic=%.9g ref=%.9g |simd-ref|/sum|terms|=%.3g%s\n",
                    what, n, got, gen, ref, asum > 0 ? err / asum : err, exact ? " (must be exact)" : "");
        }
    }
}

// The repacked 16-row kernel (CPU_REPACK buffers): 32 rows (two groups) built by fill(), 1 to
// 11 columns (so every column tile and remainder of every kernel runs), against the exact float64 dot;
// the scalar x16 reference must equal the scalar vec_dot bit for bit (same integers, same order).
#define X16_ROWS 32
#define X16_COLS 11
static block_mpq2    XR[X16_ROWS][MAX_N / QK_MPQ2];
static block_mpq2x16 XP[X16_ROWS / MPQ2_RP_ROWS * (MAX_N / QK_MPQ2)];
static block_q8_0    YC[X16_COLS][MAX_N / QK8_0];
static char          ACT[X16_COLS][MAX_N * 2];

static void check_x16(const char * what, int n, void (*fill)(int n, int arg), int arg) {
    const int nbx = n / QK_MPQ2, nby = n / QK8_0;
    for (int r = 0; r < X16_ROWS; ++r) {
        fill(n, arg);
        memcpy(XR[r], X, sizeof(block_mpq2) * nbx);
        if (r < X16_COLS) memcpy(YC[r], Y, sizeof(block_q8_0) * nby);
    }
    static block_mpq2 rows[X16_ROWS * (MAX_N / QK_MPQ2)];
    for (int r = 0; r < X16_ROWS; ++r) memcpy(rows + r*nbx, XR[r], sizeof(block_mpq2) * nbx);
    ggml_mpq2_repack_x16(XP, rows, X16_ROWS, n);
    mpq2_act act[X16_COLS];
    for (int c = 0; c < X16_COLS; ++c) {
        memcpy(ACT[c], YC[c], sizeof(block_q8_0) * nby);
        ggml_mpq2_act_finish(ACT[c], n, &act[c]);
    }
    // the exact dot, its scale and the scalar vec_dot of every (column, row), once
    static double ref[X16_COLS * X16_ROWS], asum[X16_COLS * X16_ROWS];
    static float  one[X16_COLS * X16_ROWS];
    for (int c = 0; c < X16_COLS; ++c) {
        memcpy(Y, YC[c], sizeof(block_q8_0) * nby);
        for (int r = 0; r < X16_ROWS; ++r) {
            memcpy(X, XR[r], sizeof(block_mpq2) * nbx);
            ggml_vec_dot_mpq2_q8_0_generic(n, &one[c*X16_ROWS + r], 0, X, 0, Y, 0, 1);
            ref[c*X16_ROWS + r] = reference(n, &asum[c*X16_ROWS + r]);
        }
    }
    static float got[X16_COLS * X16_ROWS], gen[X16_COLS * X16_ROWS];
    // the scalar x16 reference, which works column by column
    ggml_mpq2x16_mul_generic(n, gen, X16_ROWS, XP, X16_ROWS / MPQ2_RP_ROWS, act, X16_COLS);
    for (int ncols = 1; ncols <= X16_COLS; ++ncols) {   // every column count: each SIMD tile and remainder
        ggml_mpq2x16_mul(n, got, X16_ROWS, XP, X16_ROWS / MPQ2_RP_ROWS, act, ncols);
        for (int c = 0; c < ncols; ++c) {
            for (int r = 0; r < X16_ROWS; ++r) {
                const int i = c*X16_ROWS + r;
                const float g = got[i];
                const double err = fabs((double) g - ref[i]);
                n_cases++;
                if (asum[i] > 0 && err / asum[i] > worst_rel) worst_rel = err / asum[i];
                if (!(err <= REL_TOL * asum[i] + 1e-30) || memcmp(&one[i], &gen[i], sizeof(float)) != 0) {
                    n_fail++;
                    if (n_fail <= 20) {
                        fprintf(stderr, "FAIL x16 %-24s n=%5d ncols=%d row %2d col %d: simd=%.9g generic=%.9g vec_dot=%.9g ref=%.9g\n",
                                what, n, ncols, r, c, g, gen[i], one[i], ref[i]);
                    }
                }
            }
        }
    }
}

// bitmap -1: random; -2: sparse, as in real files (one block in ~7 has an int8 word), so
// kernels with a fast path for groups of all-2-bit blocks run both paths in one row
static uint16_t rand_meta(int bitmap) {
    uint64_t b = bitmap >= 0 ? (uint64_t) bitmap : mpq2_rand() & 15;
    if (bitmap == -2) b = mpq2_rand() % 7 == 0 ? 1u << (mpq2_rand() & 3) : 0;
    return (uint16_t) ((mpq2_rand() & 0xFFF0) | b);
}

#define MPQ2_D_ONE 160   // the block scale code of 1.0

static uint8_t rand_scale(void) {  // block scale from 2^-13 to ~2^2.8, never exactly 1 (see check())
    const uint8_t c = (uint8_t) (108 + mpq2_rand() % 64);
    return c == MPQ2_D_ONE ? c + 1 : c;
}

static void fill_random(int n, int bitmap, int amax) {
    for (int ib = 0; ib < n / QK_MPQ2; ++ib) {
        X[ib].d = rand_scale();
        X[ib].meta = rand_meta(bitmap);
        X[ib].zero = (uint8_t) mpq2_rand();
        for (int w = 0; w < 4; ++w) X[ib].qs[w] = (uint32_t) mpq2_rand();
    }
    for (int ib = 0; ib < n / QK8_0; ++ib) {
        Y[ib].d = ggml_fp32_to_fp16((mpq2_rand() & 1 ? -1.0f : 1.0f) * expf(-9.0f + 10.0f * mpq2_randf()));
        for (int i = 0; i < QK8_0; ++i) Y[ib].qs[i] = (int8_t) ((int) (mpq2_rand() % (2*amax + 1)) - amax);
    }
}

static void set_unit_scales(int n) {
    for (int ib = 0; ib < n / QK_MPQ2; ++ib) X[ib].d = MPQ2_D_ONE;
    for (int ib = 0; ib < n / QK8_0; ++ib) Y[ib].d = 0x3C00;
}

// Every weight and activation at the end of its range: int8 words +-127 (and -128, which the
// encoder never writes but the kernel must still take), 2-bit words -32 and +40, multiplier 40.
static void fill_extreme(int n, int variant) {
    for (int ib = 0; ib < n / QK_MPQ2; ++ib) {
        X[ib].d = variant & 4 ? 255 : MPQ2_D_ONE;  // 1.75 * 2^23 or 1
        X[ib].meta = (uint16_t) (0xFFF0 | (variant & 1 ? 0xF : (ib & 1 ? 0x5 : 0xA)));
        // zero codes: all 2 (z = 32: code 0 -> -32), all 3 (z = 8: code 3 -> +40), or mixed
        X[ib].zero = (variant & 3) == 0 ? 0xAA : (variant & 3) == 2 ? 0xFF : (uint8_t) (0x1B + ib);
        for (int w = 0; w < 4; ++w) {
            const int int8 = X[ib].meta >> w & 1;
            uint32_t q;
            switch (variant & 3) {
                case 0:  q = int8 ? 0x81818181u : 0x00000000u; break;          // -127 / all code 0 (-32)
                case 1:  q = (w & 1) ? 0x7F7F7F7Fu : 0x80808080u; break;      // +127 / -128
                case 2:  q = int8 ? 0x7F7F7F7Fu : 0xFFFFFFFFu; break;          // +127 / all code 3 (+40)
                default: q = int8 ? 0x817F817Fu : 0x33CC33CCu; break;          // alternating signs
            }
            X[ib].qs[w] = q;
        }
    }
    for (int ib = 0; ib < n / QK8_0; ++ib) {
        Y[ib].d = variant & 4 ? 0x7BFF : 0x3C00;
        for (int i = 0; i < QK8_0; ++i) Y[ib].qs[i] = (int8_t) (variant & 2 ? ((i ^ ib) & 1 ? 127 : -127) : ((ib & 1) ? -127 : 127));
    }
}

static void fill_quantized(int n, float salient) {
    for (int i = 0; i < n; ++i) F[i] = mpq2_randn() * (i % 97 == 0 ? 20.0f : 1.0f);
    quantize_mpq2_ex(F, X, 1, n, NULL, salient);
    for (int i = 0; i < n; ++i) F[i] = mpq2_randn();
    mpq2_quantize_q8_0(F, Y, n);
}

// One all-int8 block of zeros at the largest block scale among 2-bit blocks at the smallest
// (block `at` % the row's blocks): a kernel that reads the int8 words as 2-bit codes first and
// takes that reading back in float loses the rest of the row (the fuzzer's
// regress-raw-x16-int8-word-huge-scale); the error must stay relative to the true terms.
static void fill_huge_int8_block(int n, int at) {
    fill_random(n, 0, 127);
    const int nb = n / QK_MPQ2, big = at % nb;
    for (int ib = 0; ib < nb; ++ib) X[ib].d = 0;   // 2^-40
    X[big].d = 255;                                // 1.75 * 2^23
    X[big].meta = (uint16_t) ((X[big].meta & 0xFFF0) | 0xF);
    for (int w = 0; w < 4; ++w) X[big].qs[w] = 0;
}

static void fill_random_bitmap(int n, int bitmap) { fill_random(n, bitmap, 127); }
static void fill_extreme_variant(int n, int variant) { fill_extreme(n, variant); }
static void fill_quantized_pct(int n, int pct) { fill_quantized(n, (float) pct / 100.0f); }

int main(int argc, char ** argv) {
    mpq2_support_init();
    if (argc > 1) mpq2_rng_state ^= strtoull(argv[1], NULL, 0) * 0x9E3779B97F4A7C15ull;
    printf("kernel=%s\n", ggml_vec_dot_mpq2_q8_0_impl());
    printf("x16_kernel=%s\n", ggml_mpq2x16_impl());

    static const int lengths[] = { 64, 128, 192, 256, 320, 576, 896, 960, 1536, 4864, MAX_N };
    static const struct { const char * name; int bitmap; } patterns[] = {
        { "all 2-bit", 0x0 }, { "all int8", 0xF }, { "alternating 0101", 0x5 }, { "alternating 1010", 0xA },
        { "first word int8", 0x1 }, { "last word int8", 0x8 }, { "random bitmap", -1 },
        { "sparse int8 words", -2 },
    };
    char what[64];
    for (size_t il = 0; il < sizeof(lengths)/sizeof(lengths[0]); ++il) {
        const int n = lengths[il];
        for (size_t ip = 0; ip < sizeof(patterns)/sizeof(patterns[0]); ++ip) {
            for (int rep = 0; rep < 4; ++rep) {
                fill_random(n, patterns[ip].bitmap, 127);
                check(patterns[ip].name, n);
            }
            fill_random(n, patterns[ip].bitmap, 1);
            set_unit_scales(n);
            snprintf(what, sizeof what, "%s, unit scales", patterns[ip].name);
            check(what, n);
        }
        for (int variant = 0; variant < 8; ++variant) {
            fill_extreme(n, variant);
            snprintf(what, sizeof what, "extreme values #%d", variant);
            check(what, n);
        }
        static const float salient[] = { 0.0f, 0.125f, 0.5f, 1.0f };
        for (int is = 0; is < 4; ++is) {
            fill_quantized(n, salient[is]);
            snprintf(what, sizeof what, "quantized, salient %.3f", salient[is]);
            check(what, n);
        }
        // the ends of the block scale range
        fill_random(n, -1, 127);
        for (int ib = 0; ib < n / QK_MPQ2; ++ib) X[ib].d = (uint8_t) (ib % 3 == 0 ? 0 : ib % 3 == 1 ? 1 : 255);
        check("smallest/largest d", n);
    }
    // the repacked 16-row kernel: every bitmap pattern, extreme values, quantized rows
    static const int x16_lengths[] = { 64, 192, 576, 896, 4864 };
    for (size_t il = 0; il < sizeof(x16_lengths)/sizeof(x16_lengths[0]); ++il) {
        const int n = x16_lengths[il];
        for (size_t ip = 0; ip < sizeof(patterns)/sizeof(patterns[0]); ++ip) check_x16(patterns[ip].name, n, fill_random_bitmap, patterns[ip].bitmap);
        for (int variant = 0; variant < 8; ++variant) check_x16("extreme values", n, fill_extreme_variant, variant);
        for (int at = 0; at < 3; ++at) check_x16("huge int8 block", n, fill_huge_int8_block, at);
        check_x16("quantized, salient 0", n, fill_quantized_pct, 0);
        check_x16("quantized, salient 0.125", n, fill_quantized_pct, 12);
    }
    // every multiple of 64 up to 64*64, random and sparse bitmaps
    for (int n = 64; n <= 64*64; n += 64) {
        fill_random(n, -1, 127);
        check("random, all lengths", n);
        fill_random(n, -2, 127);
        check("sparse int8, all lengths", n);
    }
    // misaligned rows: blocks at any 4-byte offset (rows of a GGUF matrix start every 20*k bytes)
    {
        const int n = 576;
        static block_mpq2 save[MAX_N / QK_MPQ2];
        fill_random(n, -1, 127);
        memcpy(save, X, sizeof(block_mpq2) * (n / QK_MPQ2));
        float a = NAN, b = NAN;
        ggml_vec_dot_mpq2_q8_0(n, &a, 0, X, 0, Y, 0, 1);
        for (int off = 4; off < 64; off += 4) {
            static uint32_t buf[MAX_N];
            memcpy((char *) buf + off, save, sizeof(block_mpq2) * (n / QK_MPQ2));
            ggml_vec_dot_mpq2_q8_0(n, &b, 0, (char *) buf + off, 0, Y, 0, 1);
            n_cases++;
            if (a != b) {
                n_fail++;
                fprintf(stderr, "FAIL offset %d changes the result: %.9g vs %.9g\n", off, b, a);
            }
        }
    }
    // Robustness (meaningful in the sanitizer builds): every bit pattern dequantizes and
    // validates without out-of-bounds access or undefined behaviour, and the quantizer takes
    // NaN, Inf, huge and denormal inputs.
    {
        static float out[MAX_N];
        static const float specials[] = { NAN, INFINITY, -INFINITY, 3e38f, -3e38f, 1e-45f, 0.0f, -0.0f };
        int n_invalid = 0;
        for (int rep = 0; rep < 300; ++rep) {
            const int n = 64 * (1 + (int) (mpq2_rand() % 64));
            uint32_t * raw = (uint32_t *) X;
            for (size_t i = 0; i < sizeof(block_mpq2) * (size_t) (n / QK_MPQ2) / 4; ++i) raw[i] = (uint32_t) mpq2_rand();
            dequantize_row_mpq2(X, out, n);
            n_invalid += !mpq2_validate_row_data(X, sizeof(block_mpq2) * (size_t) (n / QK_MPQ2));
            for (int i = 0; i < n; ++i) {
                F[i] = (mpq2_rand() & 1) ? specials[mpq2_rand() % 8] : (float) ((int) (mpq2_rand() % 2001) - 1000);
            }
            quantize_mpq2_ex(F, X, 1, n, NULL, 0.5f);
            dequantize_row_mpq2(X, out, n);
            n_cases++;
        }
        if (n_invalid == 0) {  // random salient words must hit the validator (int8 code -128)
            fprintf(stderr, "FAIL validation accepted 300 random rows\n");
            n_fail++;
        }
    }
    if (n_exact < 50) {
        fprintf(stderr, "FAIL only %d cases checked for exactness\n", n_exact);
        n_fail++;
    }
    printf("%s: %d cases (%d exact), %d failed, worst |simd-ref|/sum|terms| = %.3g (tolerance %.0e)\n",
           n_fail ? "FAILED" : "OK", n_cases, n_exact, n_fail, worst_rel, REL_TOL);
    return n_fail ? 1 : 0;
}
