// MPQ2S: the 2.25-bit tier of MPQ2 (see docs/FORMAT.md, "MPQ2S").
//
// MPQ2R's turned basis, E6M2 block scale and 2-bit words (16 weights in one aligned 32-bit
// word, MPQ2's bit order), with the header's bits spent on what measured best per bit: one
// 32-bit header per 128 weights holding the block scale and, per word, a 3-bit index into a
// fixed table of 8 (multiplier, zero) grids. No bitmap. 36 bytes per 128 weights = 2.25 bits
// per weight; rows must be a multiple of 128.
//
// GGML_TYPE_MPQ2S = 99 (registered by ggml_ext/patches/llama.cpp-mpq2.patch). tests/test_mpq2s.py
// holds this file and the numpy specification (converter/mpq2/codec_s.py) byte-equal.
#pragma once

#include "ggml.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QK_MPQ2S          128   // weights per block: two of MPQ2R's 64-weight rotation blocks
#define MPQ2S_WORDS       (QK_MPQ2S / 16)
#define MPQ2S_GRID_BITS   3     // header bits 3w .. 3w+2: grid index of word w; bits 24..31: E6M2 scale
#define MPQ2S_N_SCALES    5     // block scale codes the encoder tries

typedef struct {
    uint32_t hdr;                  // grid indices | block scale code << 24
    uint32_t qs[MPQ2S_WORDS];      // one aligned word per 16 (turned) weights, MPQ2's 2-bit bit order
} block_mpq2s;

#ifdef __cplusplus
static_assert(sizeof(block_mpq2s) == (1 + MPQ2S_WORDS)*sizeof(uint32_t), "wrong mpq2s block size/padding");
#else
_Static_assert(sizeof(block_mpq2s) == (1 + MPQ2S_WORDS)*sizeof(uint32_t), "wrong mpq2s block size/padding");
#endif

// The grids: word value v = mult * (16 c - zero) for its 2-bit code c, weight d * v.
extern const int8_t mpq2s_grid_mult[8];
extern const int8_t mpq2s_grid_zero[8];

// Reference code. Rows are turned by mpq2r_rotate first (and back after decoding), as MPQ2R.
GGML_API void   quantize_row_mpq2s_ref(const float * GGML_RESTRICT x, block_mpq2s * GGML_RESTRICT y, int64_t k);
GGML_API void   dequantize_row_mpq2s(const block_mpq2s * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
// imatrix per input column, as MPQ2R: every weight gets its 64-block's mean importance.
GGML_API size_t quantize_mpq2s(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst,
                               int64_t nrows, int64_t n_per_row, const float * imatrix);
// Every bit pattern decodes to finite weights: only the size is checked.
GGML_API bool   mpq2s_validate_row_data(const void * data, size_t nbytes);

// CPU backend (ggml-cpu). Activations are MPQ2R's Q8_0R: block_q8_0 of the turned activations,
// four per MPQ2S block. The row-wise dot product (AVX2, NEON, else scalar) gives the scalar one's
// bits; the CPU backend's repack buffer runs the 16-row kernels instead for every 2-D weight with
// a multiple of 16 rows (ggml-cpu-mpq2-repack-traits.h).
void quantize_row_mpq2s(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void ggml_vec_dot_mpq2s_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                             const void * GGML_RESTRICT vy, size_t by, int nrc);
const char * ggml_vec_dot_mpq2s_impl(void);   // "avx2", "neon_dotprod", "neon" or "generic"
void ggml_vec_dot_mpq2s_q8_0_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                                     const void * GGML_RESTRICT vy, size_t by, int nrc);

#ifdef __cplusplus
}
#endif
