// MPQ2 reference code: quantize, dequantize, validate (compiled into ggml-base).
//
// converter/mpq2/codec.py mirrors this file operation by operation, so both produce the same
// bytes: keep every float expression in float (no double), sums sequential, and no FMA
// contraction. Rounding is to nearest, ties to even (mpq2_rint), as numpy's rint.
// No contraction: the build passes -ffp-contract=off for this file (ggml_ext/cmake/ggml-mpq2.cmake,
// tests/fuzz/build_fuzzer.py, tests/test_simd_harness.py); the pragmas cover a build that
// forgets it, GCC's and clang's each (clang ignores the first, GCC warns on the second).
#pragma GCC optimize("fp-contract=off")
#pragma GCC optimize("no-trapping-math")   // for speed only: lets GCC vectorize the searches (values unchanged)
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#include "ggml-mpq2.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const int8_t mpq2_scale_mult[8] = { 8, 10, 13, 16, 20, 25, 32, 40 };
#define MPQ2_ID(z) z
const int8_t mpq2_zero2[4]      = { MPQ2_ZERO2_APPLY(MPQ2_ID) };
#undef MPQ2_ID

#define MPQ2_MAX_MULT    40
#define MPQ2_N_FIT_STEPS 16
#define MPQ2_N_D_CODES   256

// fmaxf, fminf and nearbyintf are library calls where ggml-base is built for baseline x86-64
// (no -march), and they sat in the quantizer's innermost loops. These give the same values:
// mpq2_clamp(t, lo, hi) is fminf(fmaxf(t, lo), hi) for hi > lo (NaN -> lo, as fmaxf drops NaN;
// a -0 may come out +0, and no caller can tell); mpq2_rint is nearbyintf in the default
// rounding mode (ties to even) for |v| < 2^22, which every caller's clamp guarantees.
static inline float mpq2_clamp(float t, float lo, float hi) {
    t = t > lo ? t : lo;
    return t < hi ? t : hi;
}

static inline float mpq2_rint(float v) {
    const float magic = 12582912.0f;   // 1.5 * 2^23: the sum's last place is the unit
    return (v + magic) - magic;
}

static inline float mpq2_max(float a, float b) {   // fmaxf(a, b) for a non-NaN a
    return b > a ? b : a;
}

// 2-bit code of x for the grid s * (c - z): nearest level, NaN-safe (NaN -> 0).
static inline int mpq2_code2(float x, float s, float z) {
    const float t = x / s + z;
    return (int) mpq2_rint(mpq2_clamp(t, 0.0f, 3.0f));
}

static inline float mpq2_zero_steps(int zc) {
    return (float) mpq2_zero2[zc] / (float) MPQ2_GRID_STEP;   // exact: a multiple of 1/16
}

static inline int mpq2_code8(float mean, float unit) {
    return (int) mpq2_rint(mpq2_clamp(mean / unit, -127.0f, 127.0f));
}

// Mean of each run of 4, weighted by w (plain mean when the run's weights are all zero).
static void mpq2_means4(const float * x, const float * w, float * mean) {
    for (int k = 0; k < 4; ++k) {
        const float * xk = x + 4*k;
        const float * wk = w + 4*k;
        float sw = 0.0f, swx = 0.0f;
        for (int t = 0; t < 4; ++t) {
            sw  += wk[t];
            swx += wk[t]*xk[t];
        }
        mean[k] = sw > 0.0f ? swx / sw : (xk[0] + xk[1] + xk[2] + xk[3]) * 0.25f;
    }
}

// The two searches below are built for several x86 levels where the compiler can (GCC's and
// clang's target_clones, picked once at load time): ggml-base is compiled for baseline x86-64,
// whose 4-wide vectors leave most of an AVX2 or AVX-512 core idle. Every clone computes the
// same values (IEEE division and rounding, no contraction: -ffp-contract=off).
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && !defined(MPQ2_NO_TARGET_CLONES)
#define MPQ2_SEARCH_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define MPQ2_SEARCH_CLONES
#endif

// The nearest 2-bit level of x / s on a grid with zero offset z, as a float: the value
// mpq2_code2(x, s, z) gives, from the quotient (which does not depend on z: one division
// serves all four zero offsets).
static inline float mpq2_level2q(float q, float z) {
    return mpq2_rint(mpq2_clamp(q + z, 0.0f, 3.0f));
}

// Best unscaled 2-bit fit of a word over every zero offset: a least-squares step for each
// candidate step and zero; returns the unit u (one code step = 16u) and its weighted error.
// All 4 x 16 (zero, step) candidates are worked side by side (arrays, which the compiler turns
// into vectors), each with its sums in the order of the one-at-a-time loop, and the best is
// then taken in (zero, step) order: the same result, bit for bit, as one candidate at a time
// (codec.py's fit2 is that loop).
MPQ2_SEARCH_CLONES
static float mpq2_fit2(const float * x, const float * w, float * err_out) {
    enum { NT = MPQ2_N_FIT_STEPS };
    float amax = 0.0f;
    for (int i = 0; i < MPQ2_GROUP; ++i) {
        amax = mpq2_max(amax, fabsf(x[i]));
    }
    float best_s = amax * 0.5f;
    float best_err = INFINITY;
    if (amax > 0.0f) {
        float s[NT], z[4], sxl[4][NT], sll[4][NT], s2[4][NT], err[4][NT];
        for (int t = 0; t < NT; ++t) {
            s[t] = amax * (0.3f + 0.025f * (float) t);
        }
        for (int zc = 0; zc < 4; ++zc) {
            z[zc] = mpq2_zero_steps(zc);
            for (int t = 0; t < NT; ++t) {
                sxl[zc][t] = sll[zc][t] = err[zc][t] = 0.0f;
            }
        }
        for (int i = 0; i < MPQ2_GROUP; ++i) {
            const float wx = w[i]*x[i];
            float q[NT];
            for (int t = 0; t < NT; ++t) {
                q[t] = x[i] / s[t];
            }
            for (int zc = 0; zc < 4; ++zc) {
                for (int t = 0; t < NT; ++t) {
                    const float l = mpq2_level2q(q[t], z[zc]) - z[zc];
                    sxl[zc][t] += wx*l;
                    sll[zc][t] += w[i]*l*l;
                }
            }
        }
        for (int zc = 0; zc < 4; ++zc) {
            for (int t = 0; t < NT; ++t) {
                s2[zc][t] = sxl[zc][t] / sll[zc][t];     // used only where both sums are > 0
            }
        }
        for (int i = 0; i < MPQ2_GROUP; ++i) {
            for (int zc = 0; zc < 4; ++zc) {
                for (int t = 0; t < NT; ++t) {
                    const float diff = x[i] - s2[zc][t] * (mpq2_level2q(x[i] / s2[zc][t], z[zc]) - z[zc]);
                    err[zc][t] += w[i]*diff*diff;
                }
            }
        }
        for (int zc = 0; zc < 4; ++zc) {
            for (int t = 0; t < NT; ++t) {
                if (sll[zc][t] > 0.0f && sxl[zc][t] > 0.0f && err[zc][t] < best_err) {
                    best_err = err[zc][t];
                    best_s = s2[zc][t];
                }
            }
        }
    }
    if (best_err == INFINITY) {
        best_err = 0.0f;
        for (int i = 0; i < MPQ2_GROUP; ++i) {
            best_err += w[i]*x[i]*x[i];
        }
    }
    *err_out = best_err;
    return best_s / (float) MPQ2_GRID_STEP;
}

// Unscaled fit of a word as 4 means: returns the unit (max |mean| = 127 units) and its error.
static float mpq2_fit8(const float * x, const float * w, float * err_out) {
    float mean[4];
    mpq2_means4(x, w, mean);
    float amax = 0.0f, err = 0.0f;
    for (int i = 0; i < MPQ2_GROUP; ++i) {
        const float diff = x[i] - mean[i/4];
        err += w[i]*diff*diff;
    }
    for (int k = 0; k < 4; ++k) {
        amax = mpq2_max(amax, fabsf(mean[k]));
    }
    *err_out = err;
    return amax / 127.0f;
}

// Encodes one word at the block scale dd with scale code j and zero code zc (2-bit words);
// returns the weighted error.
static float mpq2_encode_word(const float * x, const float * w, bool salient, float dd, int j, int zc, uint32_t * word) {
    const int m = mpq2_scale_mult[j];
    float err = 0.0f;
    uint32_t q = 0;
    if (salient) {
        float mean[4];
        mpq2_means4(x, w, mean);
        const float unit = dd * (float) m;
        int8_t c[4];
        for (int k = 0; k < 4; ++k) {
            c[k] = (int8_t) mpq2_code8(mean[k], unit);
            q |= (uint32_t) (uint8_t) c[k] << (8*k);
        }
        for (int i = 0; i < MPQ2_GROUP; ++i) {
            const float diff = x[i] - dd * (float) (m * c[i/4]);
            err += w[i]*diff*diff;
        }
    } else {
        const float s = dd * (float) (m * MPQ2_GRID_STEP);
        const float z = mpq2_zero_steps(zc);
        for (int i = 0; i < MPQ2_GROUP; ++i) {
            const int c = mpq2_code2(x[i], s, z);
            q |= (uint32_t) c << (8*(i & 3) + 2*(i >> 2));
            const float diff = x[i] - dd * (float) (m * (MPQ2_GRID_STEP*c - mpq2_zero2[zc]));
            err += w[i]*diff*diff;
        }
    }
    *word = q;
    return err;
}

// The (scale code j, zero code zc) of a 2-bit word with the least weighted error at block
// scale dd, as 4*j + zc: mpq2_encode_word's error for all 32 at once (arrays, which the compiler
// turns into vectors; one division per scale serves the four zero offsets; each sum in
// mpq2_encode_word's order, every level product an exact small integer as there), the first
// least in (j, zc) order, a NaN error never taken, as the one-at-a-time loop.
MPQ2_SEARCH_CLONES
static int mpq2_best_grid2(const float * x, const float * w, float dd) {
    float s[8], m[8], z[4], zi[4], err[8][4];
    for (int j = 0; j < 8; ++j) {
        s[j] = dd * (float) (mpq2_scale_mult[j] * MPQ2_GRID_STEP);
        m[j] = (float) mpq2_scale_mult[j];
        for (int zc = 0; zc < 4; ++zc) {
            err[j][zc] = 0.0f;
        }
    }
    for (int zc = 0; zc < 4; ++zc) {
        z[zc]  = mpq2_zero_steps(zc);
        zi[zc] = (float) mpq2_zero2[zc];
    }
    for (int i = 0; i < MPQ2_GROUP; ++i) {
        for (int j = 0; j < 8; ++j) {
            const float q = x[i] / s[j];
            for (int zc = 0; zc < 4; ++zc) {
                const float level = mpq2_level2q(q, z[zc]);
                const float diff = x[i] - dd * (m[j] * ((float) MPQ2_GRID_STEP * level - zi[zc]));
                err[j][zc] += w[i]*diff*diff;
            }
        }
    }
    int best = 0;
    float best_err = INFINITY;
    for (int j = 0; j < 8; ++j) {
        for (int zc = 0; zc < 4; ++zc) {
            if (err[j][zc] < best_err) {
                best_err = err[j][zc];
                best = 4*j + zc;
            }
        }
    }
    return best;
}

// Smallest block scale code whose largest multiplier reaches umax (255 when none does).
static int mpq2_d_code(float umax) {
    for (int c = 0; c < MPQ2_N_D_CODES; ++c) {
        if (mpq2_d_from_code((uint8_t) c) * (float) MPQ2_MAX_MULT >= umax) {
            return c;
        }
    }
    return MPQ2_N_D_CODES - 1;
}

static void mpq2_quantize_block(const float * x, const float * w, const bool * salient, const float * unit, block_mpq2 * y) {
    float umax = 0.0f;
    for (int k = 0; k < MPQ2_WORDS; ++k) {
        umax = mpq2_max(umax, unit[k]);
    }
    const int dcode = mpq2_d_code(umax);
    const float dd = mpq2_d_from_code((uint8_t) dcode);
    uint16_t meta = 0;
    uint8_t zero = 0;
    for (int k = 0; k < MPQ2_WORDS; ++k) {
        const float * xk = x + k*MPQ2_GROUP;
        const float * wk = w + k*MPQ2_GROUP;
        int best_j = 0, best_z = 0;
        if (salient[k]) {
            float best_err = INFINITY;
            for (int j = 0; j < 8; ++j) {
                uint32_t q;
                const float err = mpq2_encode_word(xk, wk, true, dd, j, 0, &q);
                if (err < best_err) {
                    best_err = err;
                    best_j = j;
                }
            }
        } else {
            const int best = mpq2_best_grid2(xk, wk, dd);
            best_j = best / 4;
            best_z = best % 4;
        }
        mpq2_encode_word(xk, wk, salient[k], dd, best_j, best_z, &y->qs[k]);
        meta |= (uint16_t) ((salient[k] ? 1u : 0u) << k);
        meta |= (uint16_t) (best_j << MPQ2_SCALE_SHIFT(k));
        zero |= (uint8_t) (best_z << MPQ2_ZERO_SHIFT(k));
    }
    y->meta = meta;
    y->zero = zero;
    y->d = (uint8_t) dcode;
}

// Salient candidates are ranked by (salience desc, index asc): a total order that numpy's
// lexsort mirrors. The key travels with the index so the sort is thread-safe.
typedef struct { float sal; int64_t idx; } mpq2_rank;

static int mpq2_cmp_rank(const void * a, const void * b) {
    const mpq2_rank * ra = (const mpq2_rank *) a, * rb = (const mpq2_rank *) b;
    if (ra->sal != rb->sal) {
        return ra->sal > rb->sal ? -1 : 1;
    }
    return ra->idx < rb->idx ? -1 : (ra->idx > rb->idx);
}

// One row: the top salient_fraction of words by sum (w_i x_i)^2 are candidates for int8
// means; a candidate keeps them only where that lowers its weighted error.
static void mpq2_quantize_row(const float * x, block_mpq2 * y, int64_t n, const float * imatrix, float salient_fraction) {
    const int64_t nw = n / MPQ2_GROUP;
    float   * w     = malloc(sizeof(float) * n);
    float     * unit  = malloc(sizeof(float) * nw);
    mpq2_rank * order = malloc(sizeof(mpq2_rank) * nw);
    bool      * cand  = calloc(nw, sizeof(bool));
    GGML_ASSERT(w && unit && order && cand);

    for (int64_t i = 0; i < n; ++i) {
        w[i] = imatrix ? imatrix[i] : 1.0f;
    }
    for (int64_t k = 0; k < nw; ++k) {
        float s = 0.0f;
        for (int i = 0; i < MPQ2_GROUP; ++i) {
            const float v = w[k*MPQ2_GROUP + i] * x[k*MPQ2_GROUP + i];
            s += v*v;
        }
        order[k].sal = s == s ? s : -INFINITY;  // NaN input ranks last, keeping the order total
        order[k].idx = k;
    }
    const float f = fminf(fmaxf(salient_fraction, 0.0f), 1.0f);
    const int64_t n_sal = (int64_t) (f * (float) nw + 0.5f);
    qsort(order, nw, sizeof(mpq2_rank), mpq2_cmp_rank);
    for (int64_t r = 0; r < n_sal && r < nw; ++r) {
        cand[order[r].idx] = true;
    }
    for (int64_t k = 0; k < nw; ++k) {
        const float * xk = x + k*MPQ2_GROUP;
        const float * wk = w + k*MPQ2_GROUP;
        float err2, err8;
        const float u2 = mpq2_fit2(xk, wk, &err2);
        if (cand[k]) {
            const float u8 = mpq2_fit8(xk, wk, &err8);
            cand[k] = err8 < err2;
            unit[k] = cand[k] ? u8 : u2;
        } else {
            unit[k] = u2;
        }
    }
    for (int64_t ib = 0; ib < n / QK_MPQ2; ++ib) {
        mpq2_quantize_block(x + ib*QK_MPQ2, w + ib*QK_MPQ2, cand + ib*MPQ2_WORDS, unit + ib*MPQ2_WORDS, y + ib);
    }
    free(w); free(unit); free(order); free(cand);
}

void quantize_row_mpq2_ref(const float * GGML_RESTRICT x, block_mpq2 * GGML_RESTRICT y, int64_t k) {
    GGML_ASSERT(k % QK_MPQ2 == 0);
    mpq2_quantize_row(x, y, k, NULL, MPQ2_DEFAULT_SALIENT_FRACTION);
}

size_t quantize_mpq2_ex(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row,
                        const float * imatrix, float salient_fraction) {
    GGML_ASSERT(n_per_row % QK_MPQ2 == 0);
    const size_t row_size = (size_t) (n_per_row / QK_MPQ2) * sizeof(block_mpq2);
    for (int64_t r = 0; r < nrows; ++r) {
        mpq2_quantize_row(src + r*n_per_row, (block_mpq2 *) ((char *) dst + r*row_size), n_per_row, imatrix, salient_fraction);
    }
    return nrows * row_size;
}

size_t quantize_mpq2(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    return quantize_mpq2_ex(src, dst, nrows, n_per_row, imatrix, MPQ2_DEFAULT_SALIENT_FRACTION);
}

void dequantize_row_mpq2(const block_mpq2 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    GGML_ASSERT(k % QK_MPQ2 == 0);
    for (int64_t ib = 0; ib < k / QK_MPQ2; ++ib) {
        const float dd = mpq2_d_from_code(x[ib].d);
        const uint16_t meta = x[ib].meta;
        for (int w = 0; w < MPQ2_WORDS; ++w) {
            const int m = mpq2_scale_mult[(meta >> MPQ2_SCALE_SHIFT(w)) & 7];
            const int z = mpq2_zero2[(x[ib].zero >> MPQ2_ZERO_SHIFT(w)) & 3];
            const uint32_t q = x[ib].qs[w];
            float * out = y + ib*QK_MPQ2 + w*MPQ2_GROUP;
            if (meta >> w & 1) {
                for (int i = 0; i < MPQ2_GROUP; ++i) {
                    out[i] = dd * (float) (m * (int8_t) (q >> (8*(i >> 2))));
                }
            } else {
                for (int i = 0; i < MPQ2_GROUP; ++i) {
                    const int c = (q >> (8*(i & 3) + 2*(i >> 2))) & 3;
                    out[i] = dd * (float) (m * (MPQ2_GRID_STEP*c - z));
                }
            }
        }
    }
}

bool mpq2_validate_row_data(const void * data, size_t nbytes) {
    if (nbytes % sizeof(block_mpq2) != 0) {
        fprintf(stderr, "%s: invalid size %zu for type mpq2 (not a multiple of %zu)\n", __func__, nbytes, sizeof(block_mpq2));
        return false;
    }
    const block_mpq2 * x = (const block_mpq2 *) data;
    const size_t nb = nbytes / sizeof(block_mpq2);
    for (size_t i = 0; i < nb; ++i) {
        for (int w = 0; w < MPQ2_WORDS; ++w) {
            if (!(x[i].meta >> w & 1)) {
                continue;
            }
            for (int k = 0; k < 4; ++k) {
                if ((uint8_t) (x[i].qs[w] >> (8*k)) == 0x80) {
                    fprintf(stderr, "%s: found int8 code -128 in salient word %d at block %zu\n", __func__, w, i);
                    return false;
                }
            }
        }
    }
    return true;
}
