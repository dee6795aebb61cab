// MPQ2 x Q8_0 dot product for x86: AVX-512 (F+BW+VL, optionally VBMI and VNNI) and AVX2
// (optionally AVX-VNNI).
//
// Included by ggml_ext/src/ggml-cpu-mpq2.c (not compiled on its own); defines
// MPQ2_VEC_DOT_SIMD and MPQ2_VEC_DOT_SIMD_NAME when a kernel applies to the target.
//
// Both kernels decode each 32-bit word to 16 int8 lanes in natural weight order (see
// docs/FORMAT.md "Decoding one weight"):
//   2-bit word: the word in every dword of its 128-bit lane, shifted right by 0, 2, 4, 6 in
//               dwords 0..3, masked with 3: byte k of dword j is the code of weight 4j + k;
//               a pshufb into the word's grid {-z, 16 - z, 32 - z, 48 - z} makes the value
//               (the grid is picked per lane from the word's zero code with one vpermd).
//   int8 word:  pshufb byte broadcast {0,0,0,0, 1,1,1,1, 2,2,2,2, 3,3,3,3} of the word.
// and picks one per 128-bit lane with the word's bitmap bit. With AVX-512 VBMI the decode is
// instead vpmultishiftqb + vpermb (see mpq2_vbmi_ctrl2 below), and the zero offsets are
// subtracted from the 2-bit lanes afterwards. The int8 x int8 dot with the
// activations uses the sign trick (|w| as u8, a * sign(w) as s8) with maddubs or dpbusd; each
// word's int32 partial sums are multiplied (exactly, in integers) by the word multiplier,
// converted to float (exact: |sum| <= 4*127*127*40 < 2^24) and accumulated with the scales
// d * d_q8 (d: the E6M2 block scale, two integer ops to float32). AVX-512 works on 4 blocks at a time: their (block, word) sums are reduced into one
// zmm, multiplied at once, summed per Q8_0 half and scaled in one ymm (exact same integers as
// the scalar sumi[h]). Only the float accumulation order differs from
// ggml_vec_dot_mpq2_q8_0_generic.
//
// Activations must be in [-127, 127], as ggml's Q8_0 quantizer writes them (the sign trick
// cannot negate -128). Weights may hold any bit pattern, -128 int8 codes included.

#if defined(__AVX2__) || (defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__))

#include <immintrin.h>
#include <string.h>

#if defined(__FMA__)
#define MPQ2_FMADD256(a, b, c) _mm256_fmadd_ps(a, b, c)
#else
#define MPQ2_FMADD256(a, b, c) _mm256_add_ps(_mm256_mul_ps(a, b), c)
#endif

// Scales of one block as [dx, dx*dy0, dx*dy1, 0]: one fp16 conversion for both dy.
static inline __m128 mpq2_x86_block_scales(const block_mpq2 * GGML_RESTRICT x, const block_q8_0 * GGML_RESTRICT y) {
#if defined(__F16C__)
    const uint64_t h = (uint64_t) 0x3C00 | (uint64_t) y[0].d << 16 | (uint64_t) y[1].d << 32;   // 0x3C00 = 1.0
    const __m128 f = _mm_cvtph_ps(_mm_cvtsi64_si128((long long) h));
#else
    const __m128 f = _mm_setr_ps(1.0f, GGML_CPU_FP16_TO_FP32(y[0].d), GGML_CPU_FP16_TO_FP32(y[1].d), 0.0f);
#endif
    return _mm_mul_ps(f, _mm_set1_ps(mpq2_d_from_code(x->d)));
}

// The 2-bit grid of each zero code as 4 bytes {-z, 16 - z, 32 - z, 48 - z} in dword z of a
// vpermd table.
#define MPQ2_GRID_DW(z) ((uint32_t) (uint8_t) (-(z)) | (uint32_t) (uint8_t) (16 - (z)) << 8 | \
                         (uint32_t) (uint8_t) (32 - (z)) << 16 | (uint32_t) (uint8_t) (48 - (z)) << 24)
static const uint32_t mpq2_x86_gridz[16] = { MPQ2_ZERO2_APPLY(MPQ2_GRID_DW) };
#undef MPQ2_GRID_DW

static inline float mpq2_x86_hsum256(const __m256 acc) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static inline uint32_t mpq2_x86_header(const block_mpq2 * GGML_RESTRICT x) {
    uint32_t h;  // meta in bits 0..15, zero codes in 16..23, d in 24..31
    memcpy(&h, x, sizeof(h));
    return h;
}

#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)

// ---------------------------------------------------------------------------------------
// AVX-512: one block (64 weights, 4 words) per zmm, 128-bit lane w = word w.

#define MPQ2_X4(a, b, c, d) a, b, c, d, a, b, c, d, a, b, c, d, a, b, c, d

static const uint8_t mpq2_avx512_ctrl_word[64] = {   // lane w: word w in all 4 dwords
     0, 1, 2, 3,  0, 1, 2, 3,  0, 1, 2, 3,  0, 1, 2, 3,
     4, 5, 6, 7,  4, 5, 6, 7,  4, 5, 6, 7,  4, 5, 6, 7,
     8, 9,10,11,  8, 9,10,11,  8, 9,10,11,  8, 9,10,11,
    12,13,14,15, 12,13,14,15, 12,13,14,15, 12,13,14,15,
};
static const uint8_t mpq2_avx512_ctrl_int8[64] = {   // lane w: byte k of word w in bytes 4k..4k+3
     0, 0, 0, 0,  1, 1, 1, 1,  2, 2, 2, 2,  3, 3, 3, 3,
     4, 4, 4, 4,  5, 5, 5, 5,  6, 6, 6, 6,  7, 7, 7, 7,
     8, 8, 8, 8,  9, 9, 9, 9, 10,10,10,10, 11,11,11,11,
    12,12,12,12, 13,13,13,13, 14,14,14,14, 15,15,15,15,
};
static const uint32_t mpq2_avx512_shift2[16]   = { MPQ2_X4(0, 2, 4, 6) };
static const uint32_t mpq2_avx512_bitmap[16]   = { 1u << 0, 1u << 0, 1u << 0, 1u << 0, 1u << 1, 1u << 1, 1u << 1, 1u << 1,
                                                   1u << 2, 1u << 2, 1u << 2, 1u << 2, 1u << 3, 1u << 3, 1u << 3, 1u << 3 };
static const uint32_t mpq2_avx512_zero_sh[16]  = { 16, 16, 16, 16, 18, 18, 18, 18, 20, 20, 20, 20, 22, 22, 22, 22 };
static const uint32_t mpq2_avx512_code_sh[16]  = { 4, 4, 4, 4, 7, 7, 7, 7, 10, 10, 10, 10, 13, 13, 13, 13 };
static const uint32_t mpq2_avx512_scale_ix[16] = { 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2 };
static const int32_t  mpq2_avx512_mult[16]     = { 8, 10, 13, 16, 20, 25, 32, 40, 8, 10, 13, 16, 20, 25, 32, 40 };
// 4-block groups: dword b of lane w holds the header of block b (dword 5b of the group) ...
static const uint32_t mpq2_avx512_hdr_ix[16]   = { 0, 5, 10, 15, 0, 5, 10, 15, 0, 5, 10, 15, 0, 5, 10, 15 };
// ... and is shifted by mpq2_avx512_code_sh to the scale code of word w.
// fp16 scale of Q8_0 block k = 2b + w/2 for lane (w, b) = word 4w + b: word 17k of the
// group's activation bytes 0..127 (k < 4) or 17k - 64 of bytes 128..255 (k >= 4, b >= 2)
static const uint16_t mpq2_avx512_dy_ix[32]   = { 0, 34, 4, 38, 0, 34, 4, 38, 17, 51, 21, 55, 17, 51, 21, 55 };
#undef MPQ2_X4

#if defined(__AVX512VBMI__)
// VBMI decode: vpmultishiftqb pulls every weight's bits out of its word in one step. The
// source holds words 0,1 in qwords 0..3 and words 2,3 in qwords 4..7, so qword q of a
// 128-bit lane w holds word w at bit (w & 1)*32.
//   int8 word:  byte i of lane w <- bits (w&1)*32 + 8*(i/4)                 (the mean byte)
//   2-bit word: byte i of lane w <- bits (w&1)*32 + 8*(i%4) + 2*(i/4) - 4   (mod 64): the code
//               lands in bits 4..5, and vpermb (which reads index bits 0..5) looks up a
//               64-entry grid whose entry j is GRID[j >> 4], so no masking is needed.
#define MPQ2_C2(w, i) (uint8_t) ((((w) & 1)*32 + 8*((i) % 4) + 2*((i) / 4) - 4) & 63)
#define MPQ2_C8(w, i) (uint8_t) (((w) & 1)*32 + 8*((i) / 4))
#define MPQ2_LANE(C, w) C(w, 0), C(w, 1), C(w, 2), C(w, 3), C(w, 4), C(w, 5), C(w, 6), C(w, 7), \
                        C(w, 8), C(w, 9), C(w,10), C(w,11), C(w,12), C(w,13), C(w,14), C(w,15)
static const uint8_t mpq2_vbmi_ctrl2[64] = { MPQ2_LANE(MPQ2_C2, 0), MPQ2_LANE(MPQ2_C2, 1), MPQ2_LANE(MPQ2_C2, 2), MPQ2_LANE(MPQ2_C2, 3) };
static const uint8_t mpq2_vbmi_ctrl8[64] = { MPQ2_LANE(MPQ2_C8, 0), MPQ2_LANE(MPQ2_C8, 1), MPQ2_LANE(MPQ2_C8, 2), MPQ2_LANE(MPQ2_C8, 3) };
// Fast path (4 words 2-bit): the code lands in bits 2..3 instead, next to the zero code
#define MPQ2_CF(w, i) (uint8_t) ((((w) & 1)*32 + 8*((i) % 4) + 2*((i) / 4) - 2) & 63)
static const uint8_t mpq2_vbmi_ctrlf[64] = { MPQ2_LANE(MPQ2_CF, 0), MPQ2_LANE(MPQ2_CF, 1), MPQ2_LANE(MPQ2_CF, 2), MPQ2_LANE(MPQ2_CF, 3) };
#undef MPQ2_CF
#undef MPQ2_LANE
#undef MPQ2_C8
#undef MPQ2_C2
#define MPQ2_G16(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v
static const int8_t mpq2_vbmi_grid[64] = { MPQ2_G16(0), MPQ2_G16(16), MPQ2_G16(32), MPQ2_G16(48) };
#undef MPQ2_G16
// zero offsets: vpmultishiftqb of the header (in both dwords of every qword) puts word w's
// zero code in bits 0..1 of every byte of lane w; vpermb maps it (bits 2..5 ignored) to z.
#define MPQ2_ZC(w) (uint8_t) (16 + 2*(w))
#define MPQ2_ZL(w) MPQ2_ZC(w), MPQ2_ZC(w), MPQ2_ZC(w), MPQ2_ZC(w), MPQ2_ZC(w), MPQ2_ZC(w), MPQ2_ZC(w), MPQ2_ZC(w), \
                   MPQ2_ZC(w), MPQ2_ZC(w), MPQ2_ZC(w), MPQ2_ZC(w), MPQ2_ZC(w), MPQ2_ZC(w), MPQ2_ZC(w), MPQ2_ZC(w)
static const uint8_t mpq2_vbmi_ctrlz[64] = { MPQ2_ZL(0), MPQ2_ZL(1), MPQ2_ZL(2), MPQ2_ZL(3) };
#undef MPQ2_ZL
#undef MPQ2_ZC
#define MPQ2_ID(z) z
#define MPQ2_Z4 MPQ2_ZERO2_APPLY(MPQ2_ID)
static const int8_t mpq2_vbmi_zero[64] = { MPQ2_Z4, MPQ2_Z4, MPQ2_Z4, MPQ2_Z4, MPQ2_Z4, MPQ2_Z4, MPQ2_Z4, MPQ2_Z4,
                                           MPQ2_Z4, MPQ2_Z4, MPQ2_Z4, MPQ2_Z4, MPQ2_Z4, MPQ2_Z4, MPQ2_Z4, MPQ2_Z4 };
#undef MPQ2_Z4
#undef MPQ2_ID
// Fast path lookup: index bits 0..1 zero code z, 2..3 code c (4..5 ignored) -> the unsigned
// value 16c - ZERO[z] + 32 (0..72); the bias 32 is taken off with one dpbusd of the activations.
#define MPQ2_FV0(z) (uint8_t) (32 - (z))
#define MPQ2_FV1(z) (uint8_t) (48 - (z))
#define MPQ2_FV2(z) (uint8_t) (64 - (z))
#define MPQ2_FV3(z) (uint8_t) (80 - (z))
#define MPQ2_FROW MPQ2_ZERO2_APPLY(MPQ2_FV0), MPQ2_ZERO2_APPLY(MPQ2_FV1), MPQ2_ZERO2_APPLY(MPQ2_FV2), MPQ2_ZERO2_APPLY(MPQ2_FV3)
static const uint8_t mpq2_vbmi_fgrid[64] = { MPQ2_FROW, MPQ2_FROW, MPQ2_FROW, MPQ2_FROW };
#undef MPQ2_FROW
#undef MPQ2_FV3
#undef MPQ2_FV2
#undef MPQ2_FV1
#undef MPQ2_FV0
#define MPQ2_FAST_BIAS 32
// bitmap nibble -> 64-bit byte mask (bit w -> bytes 16w..16w+15)
#define MPQ2_M(b) ((b & 1 ? 0xFFFFull : 0) | (b & 2 ? 0xFFFF0000ull : 0) | (b & 4 ? 0xFFFF00000000ull : 0) | (b & 8 ? 0xFFFF000000000000ull : 0))
static const uint64_t mpq2_vbmi_mask[2][16] = {
    { MPQ2_M(0), MPQ2_M(1), MPQ2_M(2), MPQ2_M(3), MPQ2_M(4), MPQ2_M(5), MPQ2_M(6), MPQ2_M(7),
      MPQ2_M(8), MPQ2_M(9), MPQ2_M(10), MPQ2_M(11), MPQ2_M(12), MPQ2_M(13), MPQ2_M(14), MPQ2_M(15) },
    { ~MPQ2_M(0), ~MPQ2_M(1), ~MPQ2_M(2), ~MPQ2_M(3), ~MPQ2_M(4), ~MPQ2_M(5), ~MPQ2_M(6), ~MPQ2_M(7),
      ~MPQ2_M(8), ~MPQ2_M(9), ~MPQ2_M(10), ~MPQ2_M(11), ~MPQ2_M(12), ~MPQ2_M(13), ~MPQ2_M(14), ~MPQ2_M(15) },
};
#undef MPQ2_M
#endif

// Decoded weights of one block (64 int8 in natural order) and their dot with the block's
// 64 activations, per dword: 4 partial sums per word, not yet multiplied.
static inline __m512i mpq2_avx512_block(const block_mpq2 * GGML_RESTRICT xb, const block_q8_0 * GGML_RESTRICT yb,
                                        const __m512i * GGML_RESTRICT c) {
    const __m512i zero = _mm512_setzero_si512();
#if defined(__AVX512VBMI__)
    uint64_t q01, q23;
    memcpy(&q01, xb->qs + 0, sizeof(q01));
    memcpy(&q23, xb->qs + 2, sizeof(q23));
    const __m512i   src = _mm512_mask_set1_epi64(_mm512_set1_epi64((long long) q01), 0xF0, (long long) q23);
    const __mmask64 k8  = _load_mask64((__mmask64 *) &mpq2_vbmi_mask[0][xb->meta & 15]);
    const __mmask64 k2  = _load_mask64((__mmask64 *) &mpq2_vbmi_mask[1][xb->meta & 15]);
    const __m512i   ms  = _mm512_multishift_epi64_epi8(_mm512_mask_blend_epi8(k8, c[0], c[1]), src);
    const __m512i   v16 = _mm512_mask_permutexvar_epi8(ms, k2, ms, c[2]);
    const __m512i   zb  = _mm512_permutexvar_epi8(_mm512_multishift_epi64_epi8(c[3], _mm512_set1_epi32((int) mpq2_x86_header(xb))), c[4]);
    const __m512i   v   = _mm512_mask_sub_epi8(v16, k2, v16, zb);
#else
    const __m512i hdr = _mm512_set1_epi32((int) mpq2_x86_header(xb));
    const __m512i bc  = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *) xb->qs));
    const __m512i wv  = _mm512_shuffle_epi8(bc, c[0]);
    const __m512i c2  = _mm512_and_si512(_mm512_srlv_epi32(wv, c[3]), _mm512_set1_epi8(3));
    const __m512i zc  = _mm512_and_si512(_mm512_srlv_epi32(hdr, c[5]), _mm512_set1_epi32(3));
    const __m512i v2  = _mm512_shuffle_epi8(_mm512_permutexvar_epi32(zc, c[2]), c2);
    const __m512i v8  = _mm512_shuffle_epi8(bc, c[1]);
    const __m512i v   = _mm512_mask_blend_epi32(_mm512_test_epi32_mask(hdr, c[4]), v2, v8);
#endif
    const __m512i a  = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *) yb[0].qs)),
                                          _mm256_loadu_si256((const __m256i *) yb[1].qs), 1);
    // sign trick: |v| (u8) times a * sign(v) (s8)
    const __m512i av = _mm512_abs_epi8(v);
    const __m512i sa = _mm512_mask_sub_epi8(a, _mm512_movepi8_mask(v), zero, a);
#if defined(__AVX512VNNI__)
    return _mm512_dpbusd_epi32(zero, av, sa);
#else
    return _mm512_madd_epi16(_mm512_maddubs_epi16(av, sa), _mm512_set1_epi16(1));
#endif
}

#if defined(__AVX512VNNI__)
#define MPQ2_DPBUSD(u, s) _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s)
#else
#define MPQ2_DPBUSD(u, s) _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1))
#endif

#if defined(__AVX512VBMI__)
// The same partial sums for a block whose four words are all 2-bit, in 4 decode operations:
// multishift the codes to bits 2..3 and the zero codes to bits 0..1 of every byte, merge
// them with one bit-select, look the value up unsigned (16c - z + 32) and take the bias off
// with a second dpbusd (no sign trick). f: ctrlf, ctrlz, fgrid, 0x0C bytes, bias bytes.
static inline __m512i mpq2_avx512_block_2bit(const block_mpq2 * GGML_RESTRICT xb, const block_q8_0 * GGML_RESTRICT yb,
                                             const __m512i * GGML_RESTRICT f) {
    uint64_t q01, q23;
    memcpy(&q01, xb->qs + 0, sizeof(q01));
    memcpy(&q23, xb->qs + 2, sizeof(q23));
    const __m512i src = _mm512_mask_set1_epi64(_mm512_set1_epi64((long long) q01), 0xF0, (long long) q23);
    const __m512i ms  = _mm512_multishift_epi64_epi8(f[0], src);
    const __m512i zv  = _mm512_multishift_epi64_epi8(f[1], _mm512_set1_epi32((int) mpq2_x86_header(xb)));
    const __m512i ix  = _mm512_ternarylogic_epi32(ms, zv, f[3], 0xE4);   // f[3] ? ms : zv, bitwise
    const __m512i v   = _mm512_permutexvar_epi8(ix, f[2]);
    const __m512i a   = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *) yb[0].qs)),
                                           _mm256_loadu_si256((const __m256i *) yb[1].qs), 1);
    return _mm512_sub_epi32(MPQ2_DPBUSD(v, a), MPQ2_DPBUSD(f[4], a));
}
#endif

static inline uint64_t mpq2_x86_fp16x4(uint16_t a, uint16_t b, uint16_t c, uint16_t d) {
    return (uint64_t) a | (uint64_t) b << 16 | (uint64_t) c << 32 | (uint64_t) d << 48;
}

static void mpq2_vec_dot_q8_0_avx512(int n, float * GGML_RESTRICT s, const block_mpq2 * GGML_RESTRICT x,
                                     const block_q8_0 * GGML_RESTRICT y) {
    const int nb = n / QK_MPQ2;

#if defined(__AVX512VBMI__)
    const __m512i c[6] = { _mm512_loadu_si512(mpq2_vbmi_ctrl2), _mm512_loadu_si512(mpq2_vbmi_ctrl8),
                           _mm512_loadu_si512(mpq2_vbmi_grid), _mm512_loadu_si512(mpq2_vbmi_ctrlz),
                           _mm512_loadu_si512(mpq2_vbmi_zero) };
#else
    const __m512i c[6] = { _mm512_loadu_si512(mpq2_avx512_ctrl_word), _mm512_loadu_si512(mpq2_avx512_ctrl_int8),
                           _mm512_loadu_si512(mpq2_x86_gridz), _mm512_loadu_si512(mpq2_avx512_shift2),
                           _mm512_loadu_si512(mpq2_avx512_bitmap), _mm512_loadu_si512(mpq2_avx512_zero_sh) };
#endif
    const __m512i code_sh = _mm512_loadu_si512(mpq2_avx512_code_sh);
    const __m512i hdr_ix  = _mm512_loadu_si512(mpq2_avx512_hdr_ix);
    const __m512i mult    = _mm512_loadu_si512(mpq2_avx512_mult);
    const __m512i m7      = _mm512_set1_epi32(7);
#if defined(__AVX512VBMI__)
    const __m512i f[5] = { _mm512_loadu_si512(mpq2_vbmi_ctrlf), _mm512_loadu_si512(mpq2_vbmi_ctrlz),
                           _mm512_loadu_si512(mpq2_vbmi_fgrid), _mm512_set1_epi8(0x0C), _mm512_set1_epi8(MPQ2_FAST_BIAS) };
#endif

    const __m512i dy_ix   = _mm512_loadu_si512(mpq2_avx512_dy_ix);
    __m512 acc = _mm512_setzero_ps();
    int ib = 0;
    // Four blocks at a time: reduce the four blocks' partial sums to one (word, block) sum per
    // dword, multiply all 16 by their word multipliers at once and scale them by d * d_q8.
    for (; ib + 4 <= nb; ib += 4) {
        const block_mpq2 * GGML_RESTRICT xb = x + ib;
        const block_q8_0 * GGML_RESTRICT yb = y + 2*ib;

        __m512i p0, p1, p2, p3;
#if defined(__AVX512VBMI__)
        if (((xb[0].meta | xb[1].meta | xb[2].meta | xb[3].meta) & 15) == 0) {   // no int8 word: nearly always
            p0 = mpq2_avx512_block_2bit(xb + 0, yb + 0, f);
            p1 = mpq2_avx512_block_2bit(xb + 1, yb + 2, f);
            p2 = mpq2_avx512_block_2bit(xb + 2, yb + 4, f);
            p3 = mpq2_avx512_block_2bit(xb + 3, yb + 6, f);
        } else
#endif
        {
            p0 = mpq2_avx512_block(xb + 0, yb + 0, c);
            p1 = mpq2_avx512_block(xb + 1, yb + 2, c);
            p2 = mpq2_avx512_block(xb + 2, yb + 4, c);
            p3 = mpq2_avx512_block(xb + 3, yb + 6, c);
        }

        // lane w, dword b: sum of word w of block b
        const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(p0, p1), _mm512_unpackhi_epi32(p0, p1));
        const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(p2, p3), _mm512_unpackhi_epi32(p2, p3));
        const __m512i sw  = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));

        // headers of the 4 blocks (bytes 0, 20, 40, 60 of the group) in every lane
        const __m512i hdr  = _mm512_permutexvar_epi32(hdr_ix, _mm512_loadu_si512(xb));
        // vpermd reads index bits 0..3: the scale code and one bit above it, which the
        // 16-entry table (the 8 multipliers twice) ignores
        const __m512i sm   = _mm512_mullo_epi32(sw, _mm512_permutexvar_epi32(_mm512_srlv_epi32(hdr, code_sh), mult));

        // scales per (word, block) lane: dx of b (E6M2 in the top byte of each header: bits
        // (code << 21) + (87 << 23) of a float) times dy of Q8_0 block 2b + w/2, whose fp16
        // scales two vpermt2w pick out of the group's first 256 activation bytes
        const __m512 dx = _mm512_castsi512_ps(_mm512_add_epi32(
            _mm512_and_si512(_mm512_srli_epi32(hdr, 3), _mm512_set1_epi32(0x1FE00000)), _mm512_set1_epi32(87 << 23)));
        const __m512i y01 = _mm512_permutex2var_epi16(_mm512_loadu_si512((const char *) yb + 0), dy_ix,
                                                      _mm512_loadu_si512((const char *) yb + 64));
        const __m512i y23 = _mm512_permutex2var_epi16(_mm512_loadu_si512((const char *) yb + 128), dy_ix,
                                                      _mm512_loadu_si512((const char *) yb + 192));
        const __m512  dy  = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_mask_blend_epi16(0xCCCC, y01, y23)));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sm), _mm512_mul_ps(dx, dy), acc);
    }
    __m512 acc1 = _mm512_setzero_ps();
    for (; ib < nb; ++ib) {
        const __m512i p    = mpq2_avx512_block(x + ib, y + 2*ib, c);
        const __m512i hdr  = _mm512_set1_epi32((int) mpq2_x86_header(x + ib));
        const __m512i code = _mm512_and_si512(_mm512_srlv_epi32(hdr, code_sh), m7);
        const __m512i pm   = _mm512_mullo_epi32(p, _mm512_permutexvar_epi32(code, mult));
        const __m512  sc   = _mm512_permutexvar_ps(_mm512_loadu_si512(mpq2_avx512_scale_ix),
                                                   _mm512_castps128_ps512(mpq2_x86_block_scales(x + ib, y + 2*ib)));
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pm), sc, acc1);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(acc, acc1));
}

#if defined(__AVX512VNNI__)
#define MPQ2_VEC_DOT_SIMD_NAME "avx512_vnni"
#else
#define MPQ2_VEC_DOT_SIMD_NAME "avx512"
#endif
#define MPQ2_VEC_DOT_SIMD mpq2_vec_dot_q8_0_avx512

#elif defined(__AVX2__)

// ---------------------------------------------------------------------------------------
// AVX2: one block per two ymm, ymm h = words 2h, 2h+1 = Q8_0 block 2*ib + h.

static const uint8_t mpq2_avx2_ctrl_word[2][32] = {
    { 0, 1, 2, 3,  0, 1, 2, 3,  0, 1, 2, 3,  0, 1, 2, 3,   4, 5, 6, 7,  4, 5, 6, 7,  4, 5, 6, 7,  4, 5, 6, 7 },
    { 8, 9,10,11,  8, 9,10,11,  8, 9,10,11,  8, 9,10,11,  12,13,14,15, 12,13,14,15, 12,13,14,15, 12,13,14,15 },
};
static const uint8_t mpq2_avx2_ctrl_int8[2][32] = {
    { 0, 0, 0, 0,  1, 1, 1, 1,  2, 2, 2, 2,  3, 3, 3, 3,   4, 4, 4, 4,  5, 5, 5, 5,  6, 6, 6, 6,  7, 7, 7, 7 },
    { 8, 8, 8, 8,  9, 9, 9, 9, 10,10,10,10, 11,11,11,11,  12,12,12,12, 13,13,13,13, 14,14,14,14, 15,15,15,15 },
};
static const uint32_t mpq2_avx2_shift2[8]     = { 0, 2, 4, 6, 0, 2, 4, 6 };
static const uint32_t mpq2_avx2_bitmap[2][8]  = { { 1u << 0, 1u << 0, 1u << 0, 1u << 0, 1u << 1, 1u << 1, 1u << 1, 1u << 1 },
                                                  { 1u << 2, 1u << 2, 1u << 2, 1u << 2, 1u << 3, 1u << 3, 1u << 3, 1u << 3 } };
static const uint32_t mpq2_avx2_code_sh[2][8] = { { 4, 4, 4, 4, 7, 7, 7, 7 }, { 10, 10, 10, 10, 13, 13, 13, 13 } };
static const uint32_t mpq2_avx2_zero_sh[2][8] = { { 16, 16, 16, 16, 18, 18, 18, 18 }, { 20, 20, 20, 20, 22, 22, 22, 22 } };
#if defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__))
#define MPQ2_AVX2_VNNI 1
static const int32_t  mpq2_avx2_mult[8]       = { 8, 10, 13, 16, 20, 25, 32, 40 };
#else
#define MPQ2_PAIR(m) ((m) | (m) << 16)
static const int32_t  mpq2_avx2_mult[8]       = { MPQ2_PAIR(8), MPQ2_PAIR(10), MPQ2_PAIR(13), MPQ2_PAIR(16),
                                                  MPQ2_PAIR(20), MPQ2_PAIR(25), MPQ2_PAIR(32), MPQ2_PAIR(40) };
#undef MPQ2_PAIR
#endif

static void mpq2_vec_dot_q8_0_avx2(int n, float * GGML_RESTRICT s, const block_mpq2 * GGML_RESTRICT x,
                                   const block_q8_0 * GGML_RESTRICT y) {
    const int nb = n / QK_MPQ2;

    const __m256i gridz  = _mm256_loadu_si256((const __m256i *) mpq2_x86_gridz);
    const __m256i m3d    = _mm256_set1_epi32(3);
    const __m256i shift2 = _mm256_loadu_si256((const __m256i *) mpq2_avx2_shift2);
    const __m256i mult   = _mm256_loadu_si256((const __m256i *) mpq2_avx2_mult);
    const __m256i m3     = _mm256_set1_epi8(3);
    const __m256i m7     = _mm256_set1_epi32(7);

    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();

    for (int ib = 0; ib < nb; ++ib) {
        const block_mpq2 * GGML_RESTRICT xb = x + ib;
        const block_q8_0 * GGML_RESTRICT yb = y + 2*ib;

        const __m256i hdr = _mm256_set1_epi32((int) mpq2_x86_header(xb));
        const __m256i bc  = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) xb->qs));
        const __m128  sc  = mpq2_x86_block_scales(xb, yb);
        const __m256  sc8 = _mm256_castps128_ps256(sc);

        __m256i p[2];
        for (int h = 0; h < 2; ++h) {
            const __m256i wv   = _mm256_shuffle_epi8(bc, _mm256_loadu_si256((const __m256i *) mpq2_avx2_ctrl_word[h]));
            const __m256i c2   = _mm256_and_si256(_mm256_srlv_epi32(wv, shift2), m3);
            const __m256i zc   = _mm256_and_si256(_mm256_srlv_epi32(hdr, _mm256_loadu_si256((const __m256i *) mpq2_avx2_zero_sh[h])), m3d);
            __m256i v = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(gridz, zc), c2);
            if (xb->meta & 15) {   // int8 words: in ~1 block of 2500 in converted models, so branch
                const __m256i v8   = _mm256_shuffle_epi8(bc, _mm256_loadu_si256((const __m256i *) mpq2_avx2_ctrl_int8[h]));
                const __m256i bits = _mm256_loadu_si256((const __m256i *) mpq2_avx2_bitmap[h]);
                v = _mm256_blendv_epi8(v, v8, _mm256_cmpeq_epi32(_mm256_and_si256(hdr, bits), bits));
            }

            const __m256i code = _mm256_and_si256(_mm256_srlv_epi32(hdr, _mm256_loadu_si256((const __m256i *) mpq2_avx2_code_sh[h])), m7);
            const __m256i mw   = _mm256_permutevar8x32_epi32(mult, code);

            const __m256i a  = _mm256_loadu_si256((const __m256i *) yb[h].qs);
            const __m256i av = _mm256_sign_epi8(v, v);
            const __m256i sa = _mm256_sign_epi8(a, v);
#if defined(MPQ2_AVX2_VNNI)
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
            p[h] = _mm256_mullo_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), av, sa), mw);
#else
            p[h] = _mm256_mullo_epi32(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), av, sa), mw);
#endif
#else
            p[h] = _mm256_madd_epi16(_mm256_maddubs_epi16(av, sa), mw);
#endif
        }
        const __m256 s0 = _mm256_permutevar8x32_ps(sc8, _mm256_set1_epi32(1));
        const __m256 s1 = _mm256_permutevar8x32_ps(sc8, _mm256_set1_epi32(2));
        acc0 = MPQ2_FMADD256(_mm256_cvtepi32_ps(p[0]), s0, acc0);
        acc1 = MPQ2_FMADD256(_mm256_cvtepi32_ps(p[1]), s1, acc1);
    }
    *s = mpq2_x86_hsum256(_mm256_add_ps(acc0, acc1));
}

#if defined(MPQ2_AVX2_VNNI)
#define MPQ2_VEC_DOT_SIMD_NAME "avx2_vnni"
#else
#define MPQ2_VEC_DOT_SIMD_NAME "avx2"
#endif
#define MPQ2_VEC_DOT_SIMD mpq2_vec_dot_q8_0_avx2

#endif
