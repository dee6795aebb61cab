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

// Integer dot of word w of block xb with 16 activations, times the word multiplier.
static const int8_t mpq2_neon_grid[4][16] = {
#define MPQ2_GRID_ROW(z) { -(z), 16 - (z), 32 - (z), 48 - (z), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }
    MPQ2_ZERO2_APPLY(MPQ2_GRID_ROW)
#undef MPQ2_GRID_ROW
};

static inline int32x4_t mpq2_neon_word(const block_mpq2 * GGML_RESTRICT xb, int w, uint16_t meta, const int8_t * GGML_RESTRICT a,
                                       uint8x16_t ctrl_int8, int32x4_t shift2, int32x4_t acc, bool mixed) {
    const uint32x4_t wb  = vld1q_dup_u32(&xb->qs[w]);
    const uint8x16_t c2  = vandq_u8(vreinterpretq_u8_u32(vshlq_u32(wb, shift2)), vdupq_n_u8(3));
    int8x16_t        v   = vqtbl1q_s8(vld1q_s8(mpq2_neon_grid[(xb->zero >> MPQ2_ZERO_SHIFT(w)) & 3]), c2);
    if (mixed) {   // a constant at every call: the all-2-bit blocks skip the int8 decode
        const int8x16_t  v8  = vreinterpretq_s8_u8(vqtbl1q_u8(vreinterpretq_u8_u32(wb), ctrl_int8));
        const uint8x16_t sel = vdupq_n_u8((uint8_t) -(int) ((meta >> w) & 1));
        v = vbslq_s8(sel, v8, v);
    }
    const int32_t    m   = mpq2_scale_mult[(meta >> MPQ2_SCALE_SHIFT(w)) & 7];
    return vmlaq_n_s32(acc, mpq2_neon_dot16(v, vld1q_s8(a)), m);
}

static void mpq2_vec_dot_q8_0_neon(int n, float * GGML_RESTRICT s, const block_mpq2 * GGML_RESTRICT x,
                                   const block_q8_0 * GGML_RESTRICT y) {
    const int nb = n / QK_MPQ2;

    static const uint8_t ctrl_tab[16]  = { 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3 };
    static const int32_t shift_tab[4]  = { 0, -2, -4, -6 };
    const uint8x16_t ctrl_int8 = vld1q_u8(ctrl_tab);
    const int32x4_t  shift2    = vld1q_s32(shift_tab);

    float32x4_t acc0 = vdupq_n_f32(0.0f);
    float32x4_t acc1 = vdupq_n_f32(0.0f);

    for (int ib = 0; ib < nb; ++ib) {
        const block_mpq2 * GGML_RESTRICT xb = x + ib;
        const block_q8_0 * GGML_RESTRICT y0 = y + 2*ib;
        const block_q8_0 * GGML_RESTRICT y1 = y0 + 1;
        const uint16_t meta = xb->meta;

        int32x4_t s0 = vdupq_n_s32(0);
        int32x4_t s1 = vdupq_n_s32(0);
        if (meta & 15) {   // int8 words: ~1 block in 2500 in converted models
            s0 = mpq2_neon_word(xb, 0, meta, y0->qs,      ctrl_int8, shift2, s0, true);
            s0 = mpq2_neon_word(xb, 1, meta, y0->qs + 16, ctrl_int8, shift2, s0, true);
            s1 = mpq2_neon_word(xb, 2, meta, y1->qs,      ctrl_int8, shift2, s1, true);
            s1 = mpq2_neon_word(xb, 3, meta, y1->qs + 16, ctrl_int8, shift2, s1, true);
        } else {
            s0 = mpq2_neon_word(xb, 0, meta, y0->qs,      ctrl_int8, shift2, s0, false);
            s0 = mpq2_neon_word(xb, 1, meta, y0->qs + 16, ctrl_int8, shift2, s0, false);
            s1 = mpq2_neon_word(xb, 2, meta, y1->qs,      ctrl_int8, shift2, s1, false);
            s1 = mpq2_neon_word(xb, 3, meta, y1->qs + 16, ctrl_int8, shift2, s1, false);
        }

        const float dx = mpq2_d_from_code(xb->d);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(s0), dx * GGML_CPU_FP16_TO_FP32(y0->d));
        acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(s1), dx * GGML_CPU_FP16_TO_FP32(y1->d));
    }
    *s = vaddvq_f32(vaddq_f32(acc0, acc1));
}

#if defined(__ARM_FEATURE_DOTPROD)
#define MPQ2_VEC_DOT_SIMD_NAME "neon_dotprod"
#else
#define MPQ2_VEC_DOT_SIMD_NAME "neon"
#endif
#define MPQ2_VEC_DOT_SIMD mpq2_vec_dot_q8_0_neon

#endif
