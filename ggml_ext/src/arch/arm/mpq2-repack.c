// MPQ2 x Q8_0 over 16 interleaved rows (block_mpq2x16, the layout of the x86 kernels) for
// AArch64 NEON: sdot by element with __ARM_FEATURE_DOTPROD, else smull/smlal. Included by
// ggml_ext/src/ggml-cpu-mpq2-repack.c; defines MPQ2_X16_SIMD and MPQ2_X16_SIMD_NAME.
//
// A 128-bit vector holds 4 of the group's 16 rows ("a quad"), lane r = row r, as on x86 with
// 4 lanes instead of 16. For word w of a block (16 weights per row):
//   codes:  4 byte vectors whose lane holds the 2-bit codes of weights 4s..4s+3 (byte k of the
//           file's word holds weights k, k+4, k+8, k+12 in bit pairs 0..3): and, ushr+and,
//           ushr+and, ushr (6 operations for 64 weights-rows);
//   dot:    4 sdot by element (vdotq_laneq_s32) with the 4 activations of weights 4s..4s+3 of
//           lane s of the word's 16 activations: S = sum c*a per row;
//   scale:  the word's exact integer dot product is m (16 S - z A) = 8 (2m S - z' m A) with
//           A = the sum of the word's 16 activations (per column) and z' = z / 8 in 1..4; 2m
//           (<= 80) and z' m (<= 160) are looked up per lane with one tbl each from the
//           repacked header's 5-bit (scale code | zero code << 3), and applied with one mla and
//           one mls by element. The 8 goes into the block scale (exact: a power of two).
// The two words of one Q8_0 block are summed (|sum| < 2^24: exact in float) and accumulated
// times d * d_q8 per lane. One column runs one quad of rows at a time (the activations
// are reread from L1 per quad); more columns run 4 at a time on one quad, so each decoded word
// meets 4 columns. The main loop reads every word as 2-bit and masks to 0 the block scale of
// the lanes whose block has int8 words (about 0.01% of converted words); a second pass adds those lanes'
// blocks whole, exact in integers before they go to float.
#include <arm_neon.h>

#define MPQ2_RP_INLINE static inline __attribute__((always_inline))

// 2m and z' m by 5-bit index code | zero code << 3 (z' = zero / 8: 2, 3, 4, 1).
typedef struct { uint8x16x2_t m2, zm; } mpq2_rp_neon_tabs;

static mpq2_rp_neon_tabs mpq2_rp_neon_tables(void) {
    uint8_t m2[32], zm[32];
    for (int i = 0; i < 32; ++i) {
        const int m = mpq2_scale_mult[i & 7], z = mpq2_zero2[i >> 3];
        m2[i] = (uint8_t) (2*m);
        zm[i] = (uint8_t) (z / 8 * m);
    }
    mpq2_rp_neon_tabs t;
    t.m2 = vld1q_u8_x2(m2);
    t.zm = vld1q_u8_x2(zm);
    return t;
}

// sum_s sdot_lane(acc, c[s], a, s): lane r += sum_k c[s][4r + k] * a[4s + k]. The codes are
// 0..3, so without dotprod the products of all four s add up in int16 (|sum| <= 4*3*128).
MPQ2_RP_INLINE int32x4_t mpq2_rp_dot4(int32x4_t acc, const int8x16_t * c, int8x16_t a) {
#if defined(__ARM_FEATURE_DOTPROD)
    acc = vdotq_laneq_s32(acc, c[0], a, 0);
    acc = vdotq_laneq_s32(acc, c[1], a, 1);
    acc = vdotq_laneq_s32(acc, c[2], a, 2);
    acc = vdotq_laneq_s32(acc, c[3], a, 3);
    return acc;
#else
    const int32x4_t a32 = vreinterpretq_s32_s8(a);
    int8x16_t b = vreinterpretq_s8_s32(vdupq_laneq_s32(a32, 0));
    int16x8_t lo = vmull_s8(vget_low_s8(c[0]), vget_low_s8(b));
    int16x8_t hi = vmull_high_s8(c[0], b);
    b = vreinterpretq_s8_s32(vdupq_laneq_s32(a32, 1));
    lo = vmlal_s8(lo, vget_low_s8(c[1]), vget_low_s8(b));
    hi = vmlal_high_s8(hi, c[1], b);
    b = vreinterpretq_s8_s32(vdupq_laneq_s32(a32, 2));
    lo = vmlal_s8(lo, vget_low_s8(c[2]), vget_low_s8(b));
    hi = vmlal_high_s8(hi, c[2], b);
    b = vreinterpretq_s8_s32(vdupq_laneq_s32(a32, 3));
    lo = vmlal_s8(lo, vget_low_s8(c[3]), vget_low_s8(b));
    hi = vmlal_high_s8(hi, c[3], b);
    return vpadalq_s16(acc, vpaddq_s16(lo, hi));
#endif
}

// Lane r += sum_k v[4r + k] * a[4s + k] for any int8 v (the int8 words: no int16 shortcut).
MPQ2_RP_INLINE int32x4_t mpq2_rp_dot1_exact(int32x4_t acc, int8x16_t v, int8x16_t a, const int s) {
#if defined(__ARM_FEATURE_DOTPROD)
    switch (s) {
        case 0:  return vdotq_laneq_s32(acc, v, a, 0);
        case 1:  return vdotq_laneq_s32(acc, v, a, 1);
        case 2:  return vdotq_laneq_s32(acc, v, a, 2);
        default: return vdotq_laneq_s32(acc, v, a, 3);
    }
#else
    int8x16_t bs;
    switch (s) {
        case 0:  bs = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(a), 0)); break;
        case 1:  bs = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(a), 1)); break;
        case 2:  bs = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(a), 2)); break;
        default: bs = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(a), 3)); break;
    }
    const int32x4_t lo = vpaddlq_s16(vmull_s8(vget_low_s8(v), vget_low_s8(bs)));
    const int32x4_t hi = vpaddlq_s16(vmull_high_s8(v, bs));
    return vaddq_s32(acc, vpaddq_s32(lo, hi));
#endif
}

// The 2-bit codes of weights 4s..4s+3 of each lane's word, s = 0..3.
MPQ2_RP_INLINE void mpq2_rp_neon_codes(uint32x4_t q, int8x16_t * c) {
    const uint8x16_t q8 = vreinterpretq_u8_u32(q), three = vdupq_n_u8(3);
    c[0] = vreinterpretq_s8_u8(vandq_u8(q8, three));
    c[1] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(q8, 2), three));
    c[2] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(q8, 4), three));
    c[3] = vreinterpretq_s8_u8(vshrq_n_u8(q8, 6));
}

// Word w's 5-bit header field of each lane as a tbl index (the other bytes out of range).
MPQ2_RP_INLINE uint8x16_t mpq2_rp_neon_index(uint32x4_t hdr, const int w) {
    uint32x4_t f;
    switch (w) {
        case 0:  f = vshrq_n_u32(hdr, MPQ2_RP_WORD_SHIFT(0)); break;
        case 1:  f = vshrq_n_u32(hdr, MPQ2_RP_WORD_SHIFT(1)); break;
        case 2:  f = vshrq_n_u32(hdr, MPQ2_RP_WORD_SHIFT(2)); break;
        default: f = vshrq_n_u32(hdr, MPQ2_RP_WORD_SHIFT(3)); break;
    }
    return vreinterpretq_u8_u32(vorrq_u32(vandq_u32(f, vdupq_n_u32(31)), vdupq_n_u32(0xFFFFFF00u)));
}

// d * 8 of every lane (E6M2 in the top byte: bits (code << 21) + ((87 + 3) << 23) of a float).
MPQ2_RP_INLINE float32x4_t mpq2_rp_neon_dx8(uint32x4_t hdr) {
    return vreinterpretq_f32_u32(vaddq_u32(vandq_u32(vshrq_n_u32(hdr, 3), vdupq_n_u32(0x1FE00000u)),
                                           vdupq_n_u32((87u + 3u) << 23)));
}

// Rows 4*qd..4*qd+3 of block ib, words read as 2-bit codes: per column, each half block's sum
// of m (16 S - z A) / 8 (the 8 goes into the block scale).
MPQ2_RP_INLINE void mpq2_x16_neon_2bit(const block_mpq2x16 * xb, uint32x4_t hdr, int qd, const mpq2_act * y, int ib,
                                       const int NC, const int32x4_t * av, const mpq2_rp_neon_tabs * tabs, int32x4_t u[4][2]) {
    for (int c = 0; c < NC; ++c) u[c][0] = u[c][1] = vdupq_n_s32(0);
    for (int w = 0; w < MPQ2_WORDS; ++w) {
        const uint32x4_t q   = vld1q_u32(xb->qs[w] + 4*qd);
        const uint8x16_t idx = mpq2_rp_neon_index(hdr, w);
        const int32x4_t  m2  = vreinterpretq_s32_u8(vqtbl2q_u8(tabs->m2, idx));
        const int32x4_t  zm  = vreinterpretq_s32_u8(vqtbl2q_u8(tabs->zm, idx));
        int8x16_t cs[4];
        mpq2_rp_neon_codes(q, cs);
        for (int c = 0; c < NC; ++c) {
            const int8x16_t a = vld1q_s8(y[c].q[2*ib + w/2].qs + (w & 1)*MPQ2_GROUP);
            const int32x4_t S = mpq2_rp_dot4(vdupq_n_s32(0), cs, a);
            int32x4_t t = vmlaq_s32(u[c][w/2], S, m2);
            switch (w) {
                case 0:  t = vmlsq_laneq_s32(t, zm, av[c], 0); break;
                case 1:  t = vmlsq_laneq_s32(t, zm, av[c], 1); break;
                case 2:  t = vmlsq_laneq_s32(t, zm, av[c], 2); break;
                default: t = vmlsq_laneq_s32(t, zm, av[c], 3); break;
            }
            u[c][w/2] = t;
        }
    }
}

// acc[c] += (u[c][0] d_q8[0] + u[c][1] d_q8[1]) * dxs (dxs: the lanes' block scales, times 8
// for the 2-bit sums).
MPQ2_RP_INLINE void mpq2_x16_neon_acc(float32x4_t dxs, const float32x2_t * dy, const int NC, int32x4_t u[4][2],
                                      float32x4_t * acc) {
    for (int c = 0; c < NC; ++c) {
        float32x4_t t = vmulq_lane_f32(vcvtq_f32_s32(u[c][0]), dy[c], 0);
        t = vfmaq_lane_f32(t, vcvtq_f32_s32(u[c][1]), dy[c], 1);
        acc[c] = vfmaq_f32(acc[c], t, dxs);
    }
}

// Second pass for rows 4*qd..4*qd+3 of a group, over the blocks with int8 words (about 0.01% of
// converted words): the main loop left out every lane whose block has one (block scale masked to +0),
// and this pass adds those lanes' blocks whole: the 2-bit reading in true integer units (times
// 8) or, where the bitmap says int8, the int8 reading, summed in integers before they go to float.
// So no phantom 2-bit term of an int8 word ever enters the float sum, and the error stays
// relative to the row's true terms (see the x86 kernel). The main loop keeps no branch for it.
static __attribute__((noinline)) void mpq2_x16_neon_int8_pass(int nb, const block_mpq2x16 * xg, int qd, const mpq2_act * y,
                                                               int nc, float32x4_t * acc, const mpq2_rp_neon_tabs * tabs) {
    for (int ib = 0; ib < nb; ++ib) {
        const block_mpq2x16 * xb = xg + ib;
        const uint32x4_t hdr = vld1q_u32(xb->hdr + 4*qd);
        const uint32x4_t has = vtstq_u32(hdr, vdupq_n_u32(15));   // lanes the main loop left out
        if (vmaxvq_u32(has) == 0) {
            continue;
        }
        float32x2_t dy[4];
        int32x4_t   u[4][2];
        for (int c = 0; c < nc; ++c) {
            dy[c] = vld1_f32(y[c].dy + 2*ib);
            u[c][0] = u[c][1] = vdupq_n_s32(0);
        }
        for (int w = 0; w < MPQ2_WORDS; ++w) {
            const uint32x4_t kw  = vtstq_u32(hdr, vdupq_n_u32(1u << w));
            const uint32x4_t q   = vld1q_u32(xb->qs[w] + 4*qd);
            const uint8x16_t idx = mpq2_rp_neon_index(hdr, w);
            const int32x4_t  m2  = vreinterpretq_s32_u8(vqtbl2q_u8(tabs->m2, idx));
            const int32x4_t  zm  = vreinterpretq_s32_u8(vqtbl2q_u8(tabs->zm, idx));
            int8x16_t cs[4], bk[4];
            mpq2_rp_neon_codes(q, cs);
            static const uint8_t bcast[16] = { 0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12 };
            for (int k = 0; k < 4; ++k) {   // byte k of each lane's word (the mean of weights 4k..4k+3) in all 4 bytes
                bk[k] = vreinterpretq_s8_u8(vqtbl1q_u8(vreinterpretq_u8_u32(q), vaddq_u8(vld1q_u8(bcast), vdupq_n_u8((uint8_t) k))));
            }
            for (int c = 0; c < nc; ++c) {   // the word's exact dot per lane: int8 reading where kw, else 2-bit, times 8
                const int8x16_t a  = vld1q_s8(y[c].q[2*ib + w/2].qs + (w & 1)*MPQ2_GROUP);
                const int32x4_t S  = mpq2_rp_dot4(vdupq_n_s32(0), cs, a);
                const int32x4_t t2 = vmlsq_n_s32(vmulq_s32(S, m2), zm, y[c].ahi[4*ib + w] >> 16);   // m (16 S - z A) / 8
                int32x4_t p = vdupq_n_s32(0);
                p = mpq2_rp_dot1_exact(p, bk[0], a, 0);
                p = mpq2_rp_dot1_exact(p, bk[1], a, 1);
                p = mpq2_rp_dot1_exact(p, bk[2], a, 2);
                p = mpq2_rp_dot1_exact(p, bk[3], a, 3);
                u[c][w/2] = vaddq_s32(u[c][w/2], vbslq_s32(kw, vmulq_s32(p, vshrq_n_s32(m2, 1)), vshlq_n_s32(t2, 3)));
            }
        }
        for (int c = 0; c < nc; ++c) {
            u[c][0] = vandq_s32(u[c][0], vreinterpretq_s32_u32(has));
            u[c][1] = vandq_s32(u[c][1], vreinterpretq_s32_u32(has));
        }
        mpq2_x16_neon_acc(vmulq_n_f32(mpq2_rp_neon_dx8(hdr), 0.125f), dy, nc, u, acc);
    }
}

// Rows 4*q0 .. 4*(q0 + NQ) - 1 of a group times NC columns (NQ, NC <= 4; each decoded word is
// shared by the NC columns).
MPQ2_RP_INLINE void mpq2_x16_neon_tile(int nb, float * s, size_t bs, const block_mpq2x16 * xg, const int q0, const int NQ,
                                       const mpq2_act * y, const int NC, const mpq2_rp_neon_tabs * tabs) {
    float32x4_t acc[4][4];
    for (int qd = 0; qd < NQ; ++qd)
        for (int c = 0; c < NC; ++c) acc[qd][c] = vdupq_n_f32(0.0f);
    uint32x4_t any = vdupq_n_u32(0);
    for (int ib = 0; ib < nb; ++ib) {
        const block_mpq2x16 * xb = xg + ib;
        int32x4_t   av[4];   // the 4 words' activation sums A of each column
        float32x2_t dy[4];
        for (int c = 0; c < NC; ++c) {
            av[c] = vshrq_n_s32(vld1q_s32(y[c].ahi + 4*ib), 16);   // ahi = A << 16 | 0x8000
            dy[c] = vld1_f32(y[c].dy + 2*ib);
        }
        for (int qd = 0; qd < NQ; ++qd) {
            const uint32x4_t hdr = vld1q_u32(xb->hdr + 4*(q0 + qd));
            any = vorrq_u32(any, hdr);
            // lanes whose block has an int8 word are left to the second pass: their block scale
            // is masked to +0, so the 2-bit reading of their int8 words adds exactly 0
            const uint32x4_t keep = vceqq_u32(vandq_u32(hdr, vdupq_n_u32(15)), vdupq_n_u32(0));
            int32x4_t u[4][2];
            mpq2_x16_neon_2bit(xb, hdr, q0 + qd, y, ib, NC, av, tabs, u);
            const float32x4_t dx8 = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(mpq2_rp_neon_dx8(hdr)), keep));
            mpq2_x16_neon_acc(dx8, dy, NC, u, acc[qd]);
        }
    }
    if (__builtin_expect(vmaxvq_u32(vandq_u32(any, vdupq_n_u32(15))) != 0, 0)) {
        for (int qd = 0; qd < NQ; ++qd) mpq2_x16_neon_int8_pass(nb, xg, q0 + qd, y, NC, acc[qd], tabs);
    }
    for (int qd = 0; qd < NQ; ++qd)
        for (int c = 0; c < NC; ++c) vst1q_f32(s + c*bs + 4*(q0 + qd), acc[qd][c]);
}

// One column (gemv, token generation): one quad of rows at a time over the whole row; under
// llvm-mca this beats all 16 rows per block, which spills (bench/mca_kernels.py).
static void mpq2_x16_neon_gemv(int nb, float * s, size_t bs, const block_mpq2x16 * xg, const mpq2_act * y,
                               const mpq2_rp_neon_tabs * tabs) {
    for (int qd = 0; qd < 4; ++qd) mpq2_x16_neon_tile(nb, s, bs, xg, qd, 1, y, 1, tabs);
}

// nc (2..4) columns, one quad of rows at a time (gemm, prompts).
static void mpq2_x16_neon_gemm(int nb, float * s, size_t bs, const block_mpq2x16 * xg, const mpq2_act * y, int nc,
                               const mpq2_rp_neon_tabs * tabs) {
    for (int qd = 0; qd < 4; ++qd) {
        switch (nc) {
            case 4:  mpq2_x16_neon_tile(nb, s, bs, xg, qd, 1, y, 4, tabs); break;
            case 3:  mpq2_x16_neon_tile(nb, s, bs, xg, qd, 1, y, 3, tabs); break;
            default: mpq2_x16_neon_tile(nb, s, bs, xg, qd, 1, y, 2, tabs); break;
        }
    }
}

static void mpq2_x16_mul_neon(int n, float * s, size_t bs, const block_mpq2x16 * x, int64_t ngroups,
                              const mpq2_act * y, int ncols) {
    assert(n % QK_MPQ2 == 0);
    const int nb = n / QK_MPQ2;
    const mpq2_rp_neon_tabs tabs = mpq2_rp_neon_tables();
    for (int64_t g = 0; g < ngroups; ++g) {
        const block_mpq2x16 * xg = x + g*nb;
        float * sg = s + g*MPQ2_RP_ROWS;
        int c = 0;
        for (; c + 4 <= ncols; c += 4) mpq2_x16_neon_gemm(nb, sg + c*bs, bs, xg, y + c, 4, &tabs);
        if (c + 2 <= ncols) { mpq2_x16_neon_gemm(nb, sg + c*bs, bs, xg, y + c, ncols - c, &tabs); c = ncols; }
        if (c < ncols) mpq2_x16_neon_gemv(nb, sg + c*bs, bs, xg, y + c, &tabs);
    }
}

#define MPQ2_X16_SIMD mpq2_x16_mul_neon
#if defined(__ARM_FEATURE_DOTPROD)
#define MPQ2_X16_SIMD_NAME "neon_dotprod"
#else
#define MPQ2_X16_SIMD_NAME "neon"
#endif
