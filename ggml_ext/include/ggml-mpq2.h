// MPQ2: memory-aligned mixed-precision 2-bit weights (see docs/FORMAT.md).
//
// Every 16 consecutive weights of a row are one 4-byte-aligned 32-bit word that holds
// either 16 x 2-bit affine codes or 4 x int8 means of 4 consecutive weights; one bitmap bit
// per word says which. A block is 64 weights = 4 words plus one 32-bit header, 20 bytes.
#pragma once

#include "ggml.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// The type id sits far from upstream's sequence (43, 44, ... in this pin) so that
// files stay valid when upstream adds types; see docs/FORMAT.md "Type id".
#define GGML_MPQ2_TYPE_ID    96
#define QK_MPQ2              64   // weights per block: divides every real row width seen (576, 896, ...)
#define MPQ2_GROUP           16   // weights per 32-bit word
#define MPQ2_WORDS           (QK_MPQ2 / MPQ2_GROUP)
#define MPQ2_GRID_STEP       16   // 2-bit code c with zero code z decodes to 16c - mpq2_zero2[z]
#define MPQ2_DEFAULT_SALIENT_FRACTION 0.125f

// Header, as one little-endian uint32: bits 0..3 bitmap (bit w set: word w holds int8 means),
// 4+3w..6+3w scale code of word w, 16+2w..17+2w zero code of word w (2-bit words),
// 24..31 block scale d as an E6M2 float (mpq2_d_from_code).
#define MPQ2_SCALE_SHIFT(w)  (4 + 3*(w))
#define MPQ2_ZERO_SHIFT(w)   (2*(w))      // within block_mpq2.zero

typedef struct {
    uint16_t meta;              // bitmap and per-word scale codes
    uint8_t  zero;              // per-word zero codes of the 2-bit words
    uint8_t  d;                 // block scale: 2^(d/4 - 40) * (1 + (d%4)/4), never zero, NaN or Inf
    uint32_t qs[MPQ2_WORDS];    // one aligned word per 16 weights, little endian
} block_mpq2;

#ifdef __cplusplus
static_assert(sizeof(block_mpq2) == sizeof(uint32_t) + MPQ2_WORDS*sizeof(uint32_t), "wrong mpq2 block size/padding");
#else
_Static_assert(sizeof(block_mpq2) == sizeof(uint32_t) + MPQ2_WORDS*sizeof(uint32_t), "wrong mpq2 block size/padding");
#endif

// Word scale multipliers (about 2^(1/3) apart) and the zero offsets of the 2-bit grid, in
// int8 units of d: a 2-bit word decodes to d * mult * (16c - zero), an int8 word to d * mult * c8.
extern const int8_t mpq2_scale_mult[8];
extern const int8_t mpq2_zero2[4];
// The zero offsets (1, 1.5, 2 and 0.5 code steps), applied to a macro F: the one list the
// reference and every kernel's lookup tables are built from.
#define MPQ2_ZERO2_APPLY(F) F(16), F(24), F(32), F(8)

// The block scale: an E6M2 float, bits ((code >> 2) + 87) << 23 | (code & 3) << 21 of a
// float32, so decoding is two integer operations and always exact.
static inline float mpq2_d_from_code(uint8_t code) {
    union { uint32_t u; float f; } v;
    v.u = ((uint32_t) code << 21) + (87u << 23);
    return v.f;
}

// Reference code (ggml-base).
GGML_API void   quantize_row_mpq2_ref(const float * GGML_RESTRICT x, block_mpq2 * GGML_RESTRICT y, int64_t k);
GGML_API void   dequantize_row_mpq2(const block_mpq2 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API size_t quantize_mpq2(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst,
                              int64_t nrows, int64_t n_per_row, const float * imatrix);
// The same with an explicit salient fraction (0..1) of the words of each row.
GGML_API size_t quantize_mpq2_ex(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst,
                                 int64_t nrows, int64_t n_per_row, const float * imatrix,
                                 float salient_fraction);
// Returns false (and prints the first bad block) for an int8 code of -128 in a salient
// word, which the encoder never writes (every header bit pattern is a valid, finite scale).
GGML_API bool   mpq2_validate_row_data(const void * data, size_t nbytes);

// CPU backend (ggml-cpu).
// Rows and columns one ggml_vec_dot_mpq2_q8_0 call may take (type_traits_cpu.nrows): 2 where a
// 2x2 kernel shares the decode between two activation columns (AVX2, AVX-512, NEON), else 1.
#if defined(__AVX2__) || (defined(__ARM_NEON) && defined(__aarch64__))
#define GGML_MPQ2_VEC_DOT_NROWS 2
#else
#define GGML_MPQ2_VEC_DOT_NROWS 1
#endif
void quantize_row_mpq2(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void ggml_vec_dot_mpq2_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                            const void * GGML_RESTRICT vy, size_t by, int nrc);
// Name of the kernel ggml_vec_dot_mpq2_q8_0 runs on this build ("avx512_vnni", "neon", "generic", ...).
const char * ggml_vec_dot_mpq2_q8_0_impl(void);
void ggml_vec_dot_mpq2_q8_0_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                                    const void * GGML_RESTRICT vy, size_t by, int nrc);

#ifdef __cplusplus
}
#endif

#include "ggml-mpq2r.h"   // MPQ2 in a rotated basis: the same blocks and kernels
