// MPQ2R: MPQ2 in a rotated basis (see docs/FORMAT.md, "MPQ2R").
//
// Every 64-weight block of a row is turned by one fixed orthogonal matrix R = H64 * D / 8
// (the Sylvester Walsh-Hadamard matrix of order 64 times fixed signs D) before it is encoded as
// an MPQ2 block, byte for byte the MPQ2 layout: 16 weights per aligned 32-bit word, bitmap,
// 2.5 bits per weight. Since w.x = (Rw).(Rx), a dot product needs the activations turned by
// the same R, once per column, before they are quantized to int8: that is the activation type
// Q8_0R (Q8_0 blocks of the rotated activations), and then MPQ2's own kernels do the rest.
// The rotation spreads every weight over its block's 64 coordinates: outliers vanish and every
// word looks Gaussian, which a 2-bit grid fits better (incoherence processing; measured in
// docs/BENCHMARKS.md, "MPQ2R").
#pragma once

#include "ggml.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GGML_MPQ2R_TYPE_ID  97
#define GGML_Q8_0R_TYPE_ID  98    // MPQ2R's activations; written by no tool of ours, but a file may hold it
#define QK_MPQ2R            64    // = QK_MPQ2: one rotation per MPQ2 block
// Bit i set: coordinate i of every block is negated before the Walsh-Hadamard transform
// (the fractional part of the golden ratio: any fixed, irregular pattern does).
#define MPQ2R_SIGNS         0x9E3779B97F4A7C15ull

// y = R x for each 64-block of x (n a multiple of 64); x and y may be the same array.
// Signs, then 6 butterfly stages (h = 1, 2, ..., 32; a+b, a-b), then * 1/8: float adds in a
// fixed order, exact scaling, so converter/mpq2/rotation.py reproduces it bit for bit.
GGML_API void mpq2r_rotate(const float * x, float * y, int64_t n);
// x = R^T y (the inverse): the butterflies, * 1/8, then the signs.
GGML_API void mpq2r_unrotate(const float * y, float * x, int64_t n);

// Reference code (ggml-base). The blocks are block_mpq2 (ggml-mpq2.h).
GGML_API void   quantize_row_mpq2r_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
GGML_API void   dequantize_row_mpq2r(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
// The imatrix (per input column) is turned too: the diagonal of R diag(imatrix) R^T is the
// mean of each 64-block, so every weight of a block gets its block's mean importance.
GGML_API size_t quantize_mpq2r(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst,
                               int64_t nrows, int64_t n_per_row, const float * imatrix);
GGML_API size_t quantize_mpq2r_ex(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst,
                                  int64_t nrows, int64_t n_per_row, const float * imatrix,
                                  float salient_fraction);
// Q8_0R: block_q8_0 of the rotated activations (n a multiple of 64).
GGML_API void   quantize_row_q8_0r_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
// ggml_quantize_chunk's entry (a tensor of type Q8_0R, as in a file): rows of the reference
// above; the imatrix is not used (Q8_0 ignores it too).
GGML_API size_t quantize_q8_0r(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst,
                               int64_t nrows, int64_t n_per_row, const float * imatrix);
// Each 64-block of x rotated, then quantized by q8_0 (a Q8_0 row quantizer: the reference, or
// ggml-cpu's SIMD one) into two block_q8_0 of y.
GGML_API void   mpq2r_quantize_row_q8_0_with(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k,
                                             void (*q8_0)(const float * GGML_RESTRICT, void * GGML_RESTRICT, int64_t));
GGML_API void   dequantize_row_q8_0r(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);

// CPU backend (ggml-cpu): the activation quantizer (rotation, then ggml-cpu's Q8_0 quantizer).
void quantize_row_mpq2r(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void quantize_row_q8_0r(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);

#ifdef __cplusplus
}
#endif
