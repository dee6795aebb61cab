// MPQ2S reference code: quantize and dequantize (docs/FORMAT.md, "MPQ2S").
//
// converter/mpq2/codec_s.py is the specification this file follows operation by operation, so
// both give the same bytes: float expressions stay float, sums are sequential, no contraction.
#pragma GCC optimize("fp-contract=off")
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#include "ggml-mpq2.h"    // the E6M2 block scale, the 2-bit word layout, mpq2r_rotate
#include "ggml-mpq2s.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Chosen by bench/tier_sim.py (greedy over MPQ2's 32 pairs, then swaps; turned Gaussian and
// Student-t weights); tests/test_mpq2s.py holds them equal to codec_s.GRID_MULT / GRID_ZERO.
const int8_t mpq2s_grid_mult[8] = { 20, 25, 25, 25, 32, 32, 32, 40 };
const int8_t mpq2s_grid_zero[8] = { 24, 16, 24, 32, 16, 24, 32, 24 };
#define MPQ2S_TOP_LEVEL 1024.0f    // the largest |mult * (16 c - zero)| of the table

static inline float mpq2s_rint(float v) {   // nearest, ties to even, for |v| < 2^22 (the codes' range)
    const float magic = 12582912.0f;
    return (v + magic) - magic;
}

// The word's 2-bit codes at grid g and block scale dd, and their weighted squared error.
static float mpq2s_word(const float * x, const float * w, float dd, int g, uint8_t * c) {
    const float step = dd * (float) (mpq2s_grid_mult[g] * MPQ2_GRID_STEP);
    const float z = (float) mpq2s_grid_zero[g] / (float) MPQ2_GRID_STEP;
    float err = 0.0f;
    for (int i = 0; i < 16; ++i) {
        const float t = fminf(fmaxf(x[i] / step + z, 0.0f), 3.0f);   // NaN -> 0, as numpy's fmax/fmin
        c[i] = (uint8_t) mpq2s_rint(t);
        const float q = dd * (float) (mpq2s_grid_mult[g] * (MPQ2_GRID_STEP * c[i] - mpq2s_grid_zero[g]));
        const float e = x[i] - q;
        err += w[i] * e * e;
    }
    return err;
}

// The smallest block scale code whose largest level reaches amax (255 if none).
static int mpq2s_top_code(float amax) {
    for (int code = 0; code < 256; ++code) {
        if (mpq2_d_from_code((uint8_t) code) * MPQ2S_TOP_LEVEL >= amax) {
            return code;
        }
    }
    return 255;
}

// One block of turned weights x with importance w: MPQ2S_N_SCALES scale codes from the top one
// down, per word the grid of least error (ties: the lower index), the scale of least total
// (ties: the larger). A block whose errors are never finite (NaN, Inf) stays all zero codes.
static void mpq2s_quantize_block(const float * x, const float * w, block_mpq2s * y) {
    float amax = 0.0f;
    for (int i = 0; i < QK_MPQ2S; ++i) amax = fmaxf(amax, fabsf(x[i]));
    const int top = mpq2s_top_code(amax);
    float best_total = INFINITY;
    int best_code = 0;
    int best_grid[MPQ2S_WORDS] = {0};
    uint8_t best_c[QK_MPQ2S] = {0};
    for (int k = 0; k < MPQ2S_N_SCALES; ++k) {
        const int code = top - k < 0 ? 0 : top - k;
        const float dd = mpq2_d_from_code((uint8_t) code);
        int grid[MPQ2S_WORDS];
        uint8_t c[QK_MPQ2S] = {0};
        float total = 0.0f;
        for (int j = 0; j < MPQ2S_WORDS; ++j) {
            float werr = INFINITY;
            grid[j] = 0;
            for (int g = 0; g < 8; ++g) {
                uint8_t cg[16];
                const float err = mpq2s_word(x + 16*j, w + 16*j, dd, g, cg);
                if (err < werr) {
                    werr = err;
                    grid[j] = g;
                    memcpy(c + 16*j, cg, 16);
                }
            }
            total += werr;
        }
        if (total < best_total) {
            best_total = total;
            best_code = code;
            memcpy(best_grid, grid, sizeof(grid));
            memcpy(best_c, c, sizeof(c));
        }
    }
    uint32_t hdr = (uint32_t) best_code << 24;
    for (int j = 0; j < MPQ2S_WORDS; ++j) {
        hdr |= (uint32_t) best_grid[j] << (MPQ2S_GRID_BITS*j);
        uint32_t q = 0;
        for (int i = 0; i < 16; ++i) {
            q |= (uint32_t) best_c[16*j + i] << (8*(i % 4) + 2*(i / 4));
        }
        y->qs[j] = q;
    }
    y->hdr = hdr;
}

static void mpq2s_quantize_row(const float * x, block_mpq2s * y, int64_t k, const float * w) {
    float t[QK_MPQ2S];
    for (int64_t ib = 0; ib < k / QK_MPQ2S; ++ib) {
        mpq2r_rotate(x + ib*QK_MPQ2S, t, QK_MPQ2S);
        mpq2s_quantize_block(t, w + ib*QK_MPQ2S, y + ib);
    }
}

void quantize_row_mpq2s_ref(const float * GGML_RESTRICT x, block_mpq2s * GGML_RESTRICT y, int64_t k) {
    GGML_ASSERT(k % QK_MPQ2S == 0);
    float * ones = malloc((size_t) k * sizeof(float));
    GGML_ASSERT(ones != NULL);
    for (int64_t i = 0; i < k; ++i) ones[i] = 1.0f;
    mpq2s_quantize_row(x, y, k, ones);
    free(ones);
}

size_t quantize_mpq2s(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst,
                      int64_t nrows, int64_t n_per_row, const float * imatrix) {
    GGML_ASSERT(n_per_row % QK_MPQ2S == 0);
    // every weight's importance: its 64-block's mean (the diagonal of R diag(imatrix) R^T)
    float * w = malloc((size_t) n_per_row * sizeof(float));
    GGML_ASSERT(w != NULL);
    for (int64_t b = 0; b < n_per_row / 64; ++b) {
        float mean = 1.0f;
        if (imatrix) {
            float sum = 0.0f;
            for (int i = 0; i < 64; ++i) sum += imatrix[64*b + i];
            mean = sum / 64.0f;
        }
        for (int i = 0; i < 64; ++i) w[64*b + i] = mean;
    }
    const size_t row_size = (size_t) (n_per_row / QK_MPQ2S) * sizeof(block_mpq2s);
    for (int64_t r = 0; r < nrows; ++r) {
        mpq2s_quantize_row(src + r*n_per_row, (block_mpq2s *) ((char *) dst + r*row_size), n_per_row, w);
    }
    free(w);
    return (size_t) nrows * row_size;
}

void dequantize_row_mpq2s(const block_mpq2s * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    GGML_ASSERT(k % QK_MPQ2S == 0);
    for (int64_t ib = 0; ib < k / QK_MPQ2S; ++ib) {
        const uint32_t hdr = x[ib].hdr;
        const float dd = mpq2_d_from_code((uint8_t) (hdr >> 24));
        float * out = y + ib*QK_MPQ2S;
        for (int j = 0; j < MPQ2S_WORDS; ++j) {
            const int g = (int) (hdr >> (MPQ2S_GRID_BITS*j)) & 7;
            const uint32_t q = x[ib].qs[j];
            for (int i = 0; i < 16; ++i) {
                const int c = (int) (q >> (8*(i % 4) + 2*(i / 4))) & 3;
                out[16*j + i] = dd * (float) (mpq2s_grid_mult[g] * (MPQ2_GRID_STEP * c - mpq2s_grid_zero[g]));
            }
        }
        mpq2r_unrotate(out, out, QK_MPQ2S);
    }
}

bool mpq2s_validate_row_data(const void * data, size_t nbytes) {
    (void) data;
    if (nbytes % sizeof(block_mpq2s) != 0) {
        fprintf(stderr, "%s: invalid size %zu for type mpq2s (not a multiple of %zu)\n", __func__, nbytes, sizeof(block_mpq2s));
        return false;
    }
    return true;
}
