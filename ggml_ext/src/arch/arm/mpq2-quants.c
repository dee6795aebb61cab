// MPQ2 x Q8_0 dot product for AArch64 NEON (sdot with __ARM_FEATURE_DOTPROD, else smull/smlal).
//
// Included by ggml_ext/src/ggml-cpu-mpq2.c (not compiled on its own); defines
// MPQ2_VEC_DOT_SIMD and MPQ2_VEC_DOT_SIMD_NAME when the kernel applies to the target.
//
// Each 32-bit word decodes to one int8x16 in natural weight order (docs/FORMAT.md):
//   2-bit word: ld1r of the word, ushl by 0, -2, -4, -6 per lane, and 3, tbl into the word's
//               grid {-z, 16 - z, 32 - z, 48 - z} (one 16-byte table per zero code);
//   int8 word:  tbl byte broadcast {0,0,0,0, 1,1,1,1, 2,2,2,2, 3,3,3,3} of the word;
// picked by the bitmap bit with bsl (blocks without int8 words skip that). Signed int8 x int8 dot with the activations (no sign
// trick needed), int32 partial sums times the word multiplier (exact), converted to float
// (exact: |lane| <= 2*4*127*127*40 < 2^24) and scaled by d * d_q8 per Q8_0 block.

#if defined(__ARM_NEON) && defined(__aarch64__)

#include <arm_neon.h>

static inline int32x4_t mpq2_neon_dot16(int8x16_t v, int8x16_t a) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(vdupq_n_s32(0), v, a);
#else
    // |v_i a_i + v_{i+8} a_{i+8}| <= 2*128*127 fits int16 (Q8_0 activations are never -128)
    const int16x8_t p = vmlal_high_s8(vmull_s8(vget_low_s8(v), vget_low_s8(a)), v, a);
    return vpaddlq_s16(p);
#endif
}

static const uint8_t mpq2_neon_ctrl_tab[16] = { 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3 };   // int8 word: byte i/4
static const int32_t mpq2_neon_shift_tab[4] = { 0, -2, -4, -6 };

// The 2-bit grid of each zero code, {-z, 16 - z, 32 - z, 48 - z}, as a tbl table.
static const int8_t mpq2_neon_grid[4][16] = {
#define MPQ2_GRID_ROW(z) { -(z), 16 - (z), 32 - (z), 48 - (z), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }
    MPQ2_ZERO2_APPLY(MPQ2_GRID_ROW)
#undef MPQ2_GRID_ROW
};

// Decoded word w of block xb: 16 int8 values in natural order.
static inline int8x16_t mpq2_neon_decode(const block_mpq2 * GGML_RESTRICT xb, int w, uint8x16_t ctrl_int8, int32x4_t shift2,
                                         bool mixed) {
    const uint32x4_t wb  = vld1q_dup_u32(&xb->qs[w]);
    const uint8x16_t c2  = vandq_u8(vreinterpretq_u8_u32(vshlq_u32(wb, shift2)), vdupq_n_u8(3));
    int8x16_t        v   = vqtbl1q_s8(vld1q_s8(mpq2_neon_grid[(xb->zero >> MPQ2_ZERO_SHIFT(w)) & 3]), c2);
    if (mixed) {   // a constant at every call: the all-2-bit blocks skip the int8 decode
        const int8x16_t  v8  = vreinterpretq_s8_u8(vqtbl1q_u8(vreinterpretq_u8_u32(wb), ctrl_int8));
        const uint8x16_t sel = vdupq_n_u8((uint8_t) -(int) ((xb->meta >> w) & 1));
        v = vbslq_s8(sel, v8, v);
    }
    return v;
}

// The 4 decoded words of a block and their multipliers.
typedef struct { int8x16_t v[MPQ2_WORDS]; int32_t m[MPQ2_WORDS]; } mpq2_neon_block;

static inline mpq2_neon_block mpq2_neon_decode_block(const block_mpq2 * GGML_RESTRICT xb, uint8x16_t ctrl_int8, int32x4_t shift2) {
    mpq2_neon_block b;
    const bool mixed = xb->meta & 15;   // int8 words: ~1 block in 2500 in converted models
    for (int w = 0; w < MPQ2_WORDS; ++w) {
        b.v[w] = mixed ? mpq2_neon_decode(xb, w, ctrl_int8, shift2, true) : mpq2_neon_decode(xb, w, ctrl_int8, shift2, false);
        b.m[w] = mpq2_scale_mult[(xb->meta >> MPQ2_SCALE_SHIFT(w)) & 7];
    }
    return b;
}

// Accumulates one decoded block times the activations of Q8_0 blocks y0, y0 + 1 into acc[0..1]:
// per half, int32 sums times the word multipliers (exact), then float times dx * dy.
static inline void mpq2_neon_block_dot(const mpq2_neon_block * b, float dx, const block_q8_0 * GGML_RESTRICT y0,
                                       float32x4_t * acc) {
    for (int h = 0; h < 2; ++h) {
        int32x4_t sh = vdupq_n_s32(0);
        sh = vmlaq_n_s32(sh, mpq2_neon_dot16(b->v[2*h],     vld1q_s8(y0[h].qs)),      b->m[2*h]);
        sh = vmlaq_n_s32(sh, mpq2_neon_dot16(b->v[2*h + 1], vld1q_s8(y0[h].qs + 16)), b->m[2*h + 1]);
        acc[h] = vfmaq_n_f32(acc[h], vcvtq_f32_s32(sh), dx * GGML_CPU_FP16_TO_FP32(y0[h].d));
    }
}

static void mpq2_vec_dot_q8_0_neon(int n, float * GGML_RESTRICT s, const block_mpq2 * GGML_RESTRICT x,
                                   const block_q8_0 * GGML_RESTRICT y) {
    const int nb = n / QK_MPQ2;
    const uint8x16_t ctrl_int8 = vld1q_u8(mpq2_neon_ctrl_tab);
    const int32x4_t  shift2    = vld1q_s32(mpq2_neon_shift_tab);

    float32x4_t acc[2] = { vdupq_n_f32(0.0f), vdupq_n_f32(0.0f) };
    for (int ib = 0; ib < nb; ++ib) {
        const mpq2_neon_block b = mpq2_neon_decode_block(x + ib, ctrl_int8, shift2);
        mpq2_neon_block_dot(&b, mpq2_d_from_code(x[ib].d), y + 2*ib, acc);
    }
    *s = vaddvq_f32(vaddq_f32(acc[0], acc[1]));
}

// Two rows x two columns (ggml's nrows = 2 path for prompts): each block decoded once per row
// for both columns; bit-identical to four single calls. s[r + c*bs] = row r . column c.
static void mpq2_vec_dot_q8_0_neon_2x2(int n, float * GGML_RESTRICT s, size_t bs,
                                       const block_mpq2 * GGML_RESTRICT x0, const block_mpq2 * GGML_RESTRICT x1,
                                       const block_q8_0 * GGML_RESTRICT y0, const block_q8_0 * GGML_RESTRICT y1) {
    const int nb = n / QK_MPQ2;
    const uint8x16_t ctrl_int8 = vld1q_u8(mpq2_neon_ctrl_tab);
    const int32x4_t  shift2    = vld1q_s32(mpq2_neon_shift_tab);
    const block_mpq2 * GGML_RESTRICT x[2] = { x0, x1 };
    const block_q8_0 * GGML_RESTRICT y[2] = { y0, y1 };

    float32x4_t acc[2][2][2];   // [row][column][half]
    for (int i = 0; i < 8; ++i) (&acc[0][0][0])[i] = vdupq_n_f32(0.0f);
    for (int ib = 0; ib < nb; ++ib) {
        for (int r = 0; r < 2; ++r) {
            const mpq2_neon_block b = mpq2_neon_decode_block(x[r] + ib, ctrl_int8, shift2);
            const float dx = mpq2_d_from_code(x[r][ib].d);
            for (int c = 0; c < 2; ++c) mpq2_neon_block_dot(&b, dx, y[c] + 2*ib, acc[r][c]);
        }
    }
    for (int r = 0; r < 2; ++r)
        for (int c = 0; c < 2; ++c) s[r + c*bs] = vaddvq_f32(vaddq_f32(acc[r][c][0], acc[r][c][1]));
}
#define MPQ2_VEC_DOT_SIMD_2X2 mpq2_vec_dot_q8_0_neon_2x2

#if defined(__ARM_FEATURE_DOTPROD)
#define MPQ2_VEC_DOT_SIMD_NAME "neon_dotprod"
#else
#define MPQ2_VEC_DOT_SIMD_NAME "neon"
#endif
#define MPQ2_VEC_DOT_SIMD mpq2_vec_dot_q8_0_neon

#endif
