// MPQ2 rows repacked 16 at a time, for the CPU backend's repack ("CPU_REPACK") buffer.
//
// The file format keeps each row's blocks together (docs/FORMAT.md); a dot product then has to
// sum every word's 16 products across SIMD lanes. Interleaving 16 rows turns that around: the
// same word of 16 rows is one 64-byte vector, lane r = row r, and the 4 activations that meet
// 4 weights of a word are broadcast to every lane, so each lane accumulates its own row and
// nothing is summed across lanes. The layout is private to a loaded model (never written to a
// file) and has exactly the size of the original, as ggml's repack buffer requires.
#pragma once

#include "ggml-mpq2.h"   // and, before this header, ggml-common.h (block_q8_0)
#include "ggml-mpq2s.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MPQ2_RP_ROWS 16   // rows per repacked group (one 512-bit vector of 32-bit lanes)

// Header of one row's block in the repacked layout, one uint32: bits 0..3 bitmap (as in the
// file), word w's scale code | zero code << 3 at bits MPQ2_RP_WORD_SHIFT(w) (5 bits, so one
// 32-entry table lookup gives both of a word's constants), bits 24..31 the E6M2 block scale.
#define MPQ2_RP_WORD_SHIFT(w) (4 + 5*(w))

typedef struct {
    uint32_t hdr[MPQ2_RP_ROWS];               // headers of rows 0..15 of the group
    uint32_t qs[MPQ2_WORDS][MPQ2_RP_ROWS];    // word w of rows 0..15, bits as in the file
} block_mpq2x16;

#ifdef __cplusplus
static_assert(sizeof(block_mpq2x16) == MPQ2_RP_ROWS*sizeof(block_mpq2), "wrong mpq2x16 block size/padding");
#else
_Static_assert(sizeof(block_mpq2x16) == MPQ2_RP_ROWS*sizeof(block_mpq2), "wrong mpq2x16 block size/padding");
#endif

// One activation column for the repacked kernels: the Q8_0 row exactly as ggml quantizes it
// (so results match the vec_dot path), plus per 16 activations their sum A as (A << 16 | 0x8000)
// (the zero codes' term in the high half of a dword; the 0x8000 keeps a negative dot product in
// the low half from borrowing from it, see arch/x86/mpq2-repack.c) and per 32 the float scale.
typedef struct {
    const block_q8_0 * q;
    const int32_t    * ahi;
    const float      * dy;
} mpq2_act;

// Bytes of the Q8_0 row of n activations, rounded up to 64.
static inline size_t ggml_mpq2_act_q_size(int64_t n) {
    return ((size_t) (n / 32) * sizeof(block_q8_0) + 63) & ~(size_t) 63;
}

// Bytes one column of n activations takes in a work buffer (64-byte aligned parts).
static inline size_t ggml_mpq2_act_size(int64_t n) {
    return ggml_mpq2_act_q_size(n) + (size_t) (n / 16) * sizeof(int32_t) + (((size_t) (n / 32) * sizeof(float) + 63) & ~(size_t) 63);
}

// The three parts of one column's buffer (ggml_mpq2_act_size(n) bytes, 64-byte aligned).
static inline void ggml_mpq2_act_view(const void * buf, int64_t n, mpq2_act * act) {
    act->q   = (const block_q8_0 *) buf;
    act->ahi = (const int32_t *) ((const char *) buf + ggml_mpq2_act_q_size(n));
    act->dy  = (const float *) (act->ahi + n / 16);
}

// buf must already hold the Q8_0 row at its start; fills the sums and scales after it and
// points *act at the three parts.
void ggml_mpq2_act_finish(void * buf, int64_t n, mpq2_act * act);

// Rows 16g..16g+15 of src (nrows x n weights, nrows a multiple of 16) into group g of dst.
void ggml_mpq2_repack_x16(block_mpq2x16 * dst, const block_mpq2 * src, int64_t nrows, int64_t n);

// s[c*bs + 16*g + r] = row 16g + r . column c, for groups g < ngroups of x (n weights per row,
// groups stored one after the other) and columns c < ncols of y.
void ggml_mpq2x16_mul(int n, float * s, size_t bs, const block_mpq2x16 * x, int64_t ngroups,
                      const mpq2_act * y, int ncols);
void ggml_mpq2x16_mul_generic(int n, float * s, size_t bs, const block_mpq2x16 * x, int64_t ngroups,
                              const mpq2_act * y, int ncols);
// The kernel ggml_mpq2x16_mul runs ("avx512_vnni_gfni", ... or "generic": then the CPU
// backend does not repack, since the row-wise vec_dot is faster than a scalar loop).
const char * ggml_mpq2x16_impl(void);

// ---- MPQ2S (ggml_ext/src/ggml-cpu-mpq2s.c): the same scheme, 36-byte blocks of 128 weights

// 16 rows interleaved (as block_mpq2x16): word w of rows 0..15 is one 64-byte vector.
typedef struct {
    uint32_t hdr[16];                  // headers of rows 0..15, as in the file
    uint32_t qs[MPQ2S_WORDS][16];      // word w of rows 0..15
} block_mpq2sx16;

#ifdef __cplusplus
static_assert(sizeof(block_mpq2sx16) == 16*sizeof(block_mpq2s), "wrong mpq2sx16 block size/padding");
#else
_Static_assert(sizeof(block_mpq2sx16) == 16*sizeof(block_mpq2s), "wrong mpq2sx16 block size/padding");
#endif

// Rows 16g..16g+15 of src into group g of dst; the 16-row kernel (AVX-512, AVX2, NEON, else the
// scalar reference) and the scalar reference: s[c*bs + 16g + r] = row 16g + r . column c, on the
// same mpq2_act columns as MPQ2's kernels (activations Q8_0R).
void ggml_mpq2s_repack_x16(block_mpq2sx16 * dst, const block_mpq2s * src, int64_t nrows, int64_t n);
void ggml_mpq2sx16_mul(int n, float * s, size_t bs, const block_mpq2sx16 * x, int64_t ngroups, const mpq2_act * y, int ncols);
void ggml_mpq2sx16_mul_generic(int n, float * s, size_t bs, const block_mpq2sx16 * x, int64_t ngroups, const mpq2_act * y, int ncols);
const char * ggml_mpq2sx16_impl(void);

#ifdef __cplusplus
}
#endif
