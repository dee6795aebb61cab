// MPQ2R reference code (ggml-base): the fixed 64-point rotation, and MPQ2 / Q8_0 on rotated
// blocks. converter/mpq2/rotation.py mirrors the rotation operation by operation.
// No contraction (as ggml-mpq2.c: -ffp-contract=off from the build, and these pragmas).
#pragma GCC optimize("fp-contract=off")
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include "ggml-quants.h"
#include "ggml-mpq2.h"

#include <stdlib.h>
#include <string.h>

// The Walsh-Hadamard butterflies of one 64-block, in place, in a fixed order.
static void mpq2r_fwht64(float * x) {
    for (int h = 1; h < QK_MPQ2R; h *= 2) {
        for (int i = 0; i < QK_MPQ2R; i += 2*h) {
            for (int j = i; j < i + h; ++j) {
                const float a = x[j], b = x[j + h];
                x[j]     = a + b;
                x[j + h] = a - b;
            }
        }
    }
}

void mpq2r_rotate(const float * x, float * y, int64_t n) {
    GGML_ASSERT(n % QK_MPQ2R == 0);
    for (int64_t ib = 0; ib < n / QK_MPQ2R; ++ib) {
        float t[QK_MPQ2R];
        for (int i = 0; i < QK_MPQ2R; ++i) {
            const float v = x[ib*QK_MPQ2R + i];
            t[i] = (MPQ2R_SIGNS >> i & 1) ? -v : v;
        }
        mpq2r_fwht64(t);
        for (int i = 0; i < QK_MPQ2R; ++i) {
            y[ib*QK_MPQ2R + i] = t[i] * 0.125f;
        }
    }
}

void mpq2r_unrotate(const float * y, float * x, int64_t n) {
    GGML_ASSERT(n % QK_MPQ2R == 0);
    for (int64_t ib = 0; ib < n / QK_MPQ2R; ++ib) {
        float t[QK_MPQ2R];
        memcpy(t, y + ib*QK_MPQ2R, sizeof(t));
        mpq2r_fwht64(t);
        for (int i = 0; i < QK_MPQ2R; ++i) {
            const float v = t[i] * 0.125f;
            x[ib*QK_MPQ2R + i] = (MPQ2R_SIGNS >> i & 1) ? -v : v;
        }
    }
}

void quantize_row_mpq2r_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_mpq2r_ex(x, y, 1, k, NULL, MPQ2_DEFAULT_SALIENT_FRACTION);
}

void dequantize_row_mpq2r(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    dequantize_row_mpq2((const block_mpq2 *) x, y, k);
    mpq2r_unrotate(y, y, k);
}

size_t quantize_mpq2r_ex(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row,
                         const float * imatrix, float salient_fraction) {
    GGML_ASSERT(n_per_row % QK_MPQ2R == 0);
    const size_t row_size = (size_t) (n_per_row / QK_MPQ2) * sizeof(block_mpq2);
    float * rot = (float *) malloc((size_t) n_per_row * sizeof(float));
    float * imat = imatrix ? (float *) malloc((size_t) n_per_row * sizeof(float)) : NULL;
    GGML_ASSERT(rot && (!imatrix || imat));
    if (imatrix) {
        for (int64_t ib = 0; ib < n_per_row / QK_MPQ2R; ++ib) {
            float sum = 0.0f;
            for (int i = 0; i < QK_MPQ2R; ++i) sum += imatrix[ib*QK_MPQ2R + i];
            for (int i = 0; i < QK_MPQ2R; ++i) imat[ib*QK_MPQ2R + i] = sum / (float) QK_MPQ2R;
        }
    }
    for (int64_t r = 0; r < nrows; ++r) {
        mpq2r_rotate(src + r*n_per_row, rot, n_per_row);
        quantize_mpq2_ex(rot, (char *) dst + r*row_size, 1, n_per_row, imat, salient_fraction);
    }
    free(rot);
    free(imat);
    return nrows * row_size;
}

size_t quantize_mpq2r(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row,
                      const float * imatrix) {
    return quantize_mpq2r_ex(src, dst, nrows, n_per_row, imatrix, MPQ2_DEFAULT_SALIENT_FRACTION);
}

void mpq2r_quantize_row_q8_0_with(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k,
                                  void (*q8_0)(const float * GGML_RESTRICT, void * GGML_RESTRICT, int64_t)) {
    GGML_ASSERT(k % QK_MPQ2R == 0);
    float t[QK_MPQ2R];
    for (int64_t ib = 0; ib < k / QK_MPQ2R; ++ib) {
        mpq2r_rotate(x + ib*QK_MPQ2R, t, QK_MPQ2R);
        q8_0(t, (block_q8_0 *) y + ib*(QK_MPQ2R/QK8_0), QK_MPQ2R);
    }
}

static void mpq2r_q8_0_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_q8_0_ref(x, (block_q8_0 *) y, k);
}

void quantize_row_q8_0r_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    mpq2r_quantize_row_q8_0_with(x, y, k, mpq2r_q8_0_ref);
}

size_t quantize_q8_0r(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row,
                      const float * imatrix) {
    GGML_UNUSED(imatrix);
    GGML_ASSERT(n_per_row % QK_MPQ2R == 0);
    const size_t row_size = (size_t) (n_per_row / QK_MPQ2R) * 2 * sizeof(block_q8_0);
    for (int64_t r = 0; r < nrows; ++r) {
        quantize_row_q8_0r_ref(src + r*n_per_row, (char *) dst + r*row_size, n_per_row);
    }
    return nrows * row_size;
}

void dequantize_row_q8_0r(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    dequantize_row_q8_0((const block_q8_0 *) x, y, k);
    mpq2r_unrotate(y, y, k);
}
