// MPQ2 x Q8_0 dot product for x86: AVX-512 (F+BW+VL, optionally VBMI and VNNI) and AVX2
// (optionally AVX-VNNI), each with a single (one row, one column) and a 2x2 kernel (two rows x
// two activation columns, ggml's nrows = 2 path for prompts; bit-identical to four single calls).
//
// Included by ggml_ext/src/ggml-cpu-mpq2.c (not compiled on its own); defines
// MPQ2_VEC_DOT_SIMD, MPQ2_VEC_DOT_SIMD_2X2 and MPQ2_VEC_DOT_SIMD_NAME when a kernel applies.
//
// General decode: each 32-bit word to 16 int8 lanes in natural weight order (docs/FORMAT.md
// "Decoding one weight"):
//   2-bit word: the word in every dword of its 128-bit lane, shifted right by 0, 2, 4, 6 in
//               dwords 0..3, masked with 3: byte k of dword j is the code of weight 4j + k;
//               a pshufb into the word's grid {-z, 16 - z, 32 - z, 48 - z} makes the value
//               (the grid is picked per lane from the word's zero code with one vpermd).
//   int8 word:  pshufb byte broadcast {0,0,0,0, 1,1,1,1, 2,2,2,2, 3,3,3,3} of the word.
// picked per 128-bit lane with the word's bitmap bit; with AVX-512 VBMI the decode is
// vpmultishiftqb + vpermb instead (see mpq2_vbmi_ctrl2), the zero offsets subtracted after.
// The int8 x int8 dot uses the sign trick (|w| as u8, a * sign(w) as s8) with maddubs or dpbusd.
//
// Fast path (AVX-512 VBMI, groups of four blocks without int8 words, all but ~0.04% of blocks
// in converted models; AVX2/NEON skip the int8 decode per block): the code and the zero code
// are multishifted next to each other, merged with one vpternlogd and looked up unsigned
// (16c - z + 32) with one vpermb; a second dpbusd of the constant 32 with the activations takes
// the bias off, so no sign trick.
//
// Each word's int32 partial sums are multiplied (exactly, in integers) by the word multiplier,
// converted to float (exact: |sum| <= 4*127*127*40 < 2^24) and accumulated with the scales
// d * d_q8 (d: the E6M2 block scale, two integer ops to float32). AVX-512 reduces 4 blocks'
// sums to one (word, block) sum per dword first, so one vpmulld, one conversion and one fma
// serve 16 words. Only the float accumulation order differs from
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

// Loop constants of the AVX-512 kernels (kept in registers once inlined).
typedef struct {
    __m512i c[6];      // general decode (mpq2_avx512_block)
    __m512i f[5];      // fast decode (VBMI): ctrlf, ctrlz, fgrid, 0x0C bytes, bias bytes
    __m512i code_sh, hdr_ix, mult, dy_ix;
} mpq2_avx512_k;

static inline void mpq2_avx512_init(mpq2_avx512_k * k) {
#if defined(__AVX512VBMI__)
    k->c[0] = _mm512_loadu_si512(mpq2_vbmi_ctrl2); k->c[1] = _mm512_loadu_si512(mpq2_vbmi_ctrl8);
    k->c[2] = _mm512_loadu_si512(mpq2_vbmi_grid);  k->c[3] = _mm512_loadu_si512(mpq2_vbmi_ctrlz);
    k->c[4] = _mm512_loadu_si512(mpq2_vbmi_zero);  k->c[5] = _mm512_setzero_si512();
    k->f[0] = _mm512_loadu_si512(mpq2_vbmi_ctrlf); k->f[1] = _mm512_loadu_si512(mpq2_vbmi_ctrlz);
    k->f[2] = _mm512_loadu_si512(mpq2_vbmi_fgrid); k->f[3] = _mm512_set1_epi8(0x0C);
    k->f[4] = _mm512_set1_epi8(MPQ2_FAST_BIAS);
#else
    k->c[0] = _mm512_loadu_si512(mpq2_avx512_ctrl_word); k->c[1] = _mm512_loadu_si512(mpq2_avx512_ctrl_int8);
    k->c[2] = _mm512_loadu_si512(mpq2_x86_gridz);        k->c[3] = _mm512_loadu_si512(mpq2_avx512_shift2);
    k->c[4] = _mm512_loadu_si512(mpq2_avx512_bitmap);    k->c[5] = _mm512_loadu_si512(mpq2_avx512_zero_sh);
#endif
    k->code_sh = _mm512_loadu_si512(mpq2_avx512_code_sh);
    k->hdr_ix  = _mm512_loadu_si512(mpq2_avx512_hdr_ix);
    k->mult    = _mm512_loadu_si512(mpq2_avx512_mult);
    k->dy_ix   = _mm512_loadu_si512(mpq2_avx512_dy_ix);
}

// The 64 activations of one block (two Q8_0 blocks) in one zmm.
static inline __m512i mpq2_avx512_act(const block_q8_0 * GGML_RESTRICT yb) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *) yb[0].qs)),
                              _mm256_loadu_si256((const __m256i *) yb[1].qs), 1);
}

#if defined(__AVX512VBMI__)
// Fast decode of a block whose four words are all 2-bit, in 4 operations: multishift the codes
// to bits 2..3 and the zero codes to bits 0..1 of every byte, merge them with one bit-select
// and look the value up unsigned (16c - z + 32, 0..72). The caller takes the bias 32 off with a
// second dpbusd of the activations (no sign trick).
static inline __m512i mpq2_avx512_decode_2bit(const block_mpq2 * GGML_RESTRICT xb, const mpq2_avx512_k * k) {
    uint64_t q01, q23;
    memcpy(&q01, xb->qs + 0, sizeof(q01));
    memcpy(&q23, xb->qs + 2, sizeof(q23));
    const __m512i src = _mm512_mask_set1_epi64(_mm512_set1_epi64((long long) q01), 0xF0, (long long) q23);
    const __m512i ms  = _mm512_multishift_epi64_epi8(k->f[0], src);
    const __m512i zv  = _mm512_multishift_epi64_epi8(k->f[1], _mm512_set1_epi32((int) mpq2_x86_header(xb)));
    const __m512i ix  = _mm512_ternarylogic_epi32(ms, zv, k->f[3], 0xE4);   // f[3] ? ms : zv, bitwise
    return _mm512_permutexvar_epi8(ix, k->f[2]);
}

static inline bool mpq2_avx512_all_2bit(const block_mpq2 * GGML_RESTRICT xb) {   // 4 blocks: no int8 word
    return ((xb[0].meta | xb[1].meta | xb[2].meta | xb[3].meta) & 15) == 0;
}
#endif

// Word multipliers of 4 blocks in (word w, block b) lanes, and the block scales dx likewise.
static inline void mpq2_avx512_row_scales(const block_mpq2 * GGML_RESTRICT xb, const mpq2_avx512_k * k,
                                          __m512i * mw, __m512 * dx) {
    // headers of the 4 blocks (bytes 0, 20, 40, 60 of the group) in every lane
    const __m512i hdr = _mm512_permutexvar_epi32(k->hdr_ix, _mm512_loadu_si512(xb));
    // vpermd reads index bits 0..3: the scale code and one bit above it, which the 16-entry
    // table (the 8 multipliers twice) ignores
    *mw = _mm512_permutexvar_epi32(_mm512_srlv_epi32(hdr, k->code_sh), k->mult);
    // E6M2 in the top byte of each header: bits (code << 21) + (87 << 23) of a float
    *dx = _mm512_castsi512_ps(_mm512_add_epi32(
        _mm512_and_si512(_mm512_srli_epi32(hdr, 3), _mm512_set1_epi32(0x1FE00000)), _mm512_set1_epi32(87 << 23)));
}

// dy of Q8_0 block 2b + w/2 in lane (w, b): two vpermt2w pick the fp16 scales out of the
// group's first 256 activation bytes.
static inline __m512 mpq2_avx512_col_scales(const block_q8_0 * GGML_RESTRICT yb, const mpq2_avx512_k * k) {
    const __m512i y01 = _mm512_permutex2var_epi16(_mm512_loadu_si512((const char *) yb + 0), k->dy_ix,
                                                  _mm512_loadu_si512((const char *) yb + 64));
    const __m512i y23 = _mm512_permutex2var_epi16(_mm512_loadu_si512((const char *) yb + 128), k->dy_ix,
                                                  _mm512_loadu_si512((const char *) yb + 192));
    return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_mask_blend_epi16(0xCCCC, y01, y23)));
}

// Reduces 4 blocks' per-dword partial sums to one (word, block) sum per lane, multiplies them by
// the word multipliers (exact integers) and accumulates them times dx * dy.
static inline __m512 mpq2_avx512_reduce(const __m512i * p, __m512i mw, __m512 scale, __m512 acc) {
    const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[0], p[1]), _mm512_unpackhi_epi32(p[0], p[1]));
    const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2], p[3]), _mm512_unpackhi_epi32(p[2], p[3]));
    const __m512i sw  = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_mullo_epi32(sw, mw)), scale, acc);
}

// One block on its own (the last nb % 4 blocks of a row).
static inline __m512 mpq2_avx512_single(const block_mpq2 * GGML_RESTRICT xb, const block_q8_0 * GGML_RESTRICT yb,
                                        const mpq2_avx512_k * k, __m512 acc) {
    const __m512i p    = mpq2_avx512_block(xb, yb, k->c);
    const __m512i hdr  = _mm512_set1_epi32((int) mpq2_x86_header(xb));
    const __m512i code = _mm512_srlv_epi32(hdr, k->code_sh);   // bits 0..3 index the 16-entry table
    const __m512i pm   = _mm512_mullo_epi32(p, _mm512_permutexvar_epi32(code, k->mult));
    const __m512  sc   = _mm512_permutexvar_ps(_mm512_loadu_si512(mpq2_avx512_scale_ix),
                                               _mm512_castps128_ps512(mpq2_x86_block_scales(xb, yb)));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(pm), sc, acc);
}

// One row, one column. Four blocks at a time: each block's partial sums per dword, then one
// reduction, one vpmulld for the 16 word multipliers and one fma with d * d_q8.
static void mpq2_vec_dot_q8_0_avx512(int n, float * GGML_RESTRICT s, const block_mpq2 * GGML_RESTRICT x,
                                     const block_q8_0 * GGML_RESTRICT y) {
    const int nb = n / QK_MPQ2;
    mpq2_avx512_k k;
    mpq2_avx512_init(&k);

    __m512 acc = _mm512_setzero_ps();
    int ib = 0;
    for (; ib + 4 <= nb; ib += 4) {
        const block_mpq2 * GGML_RESTRICT xb = x + ib;
        const block_q8_0 * GGML_RESTRICT yb = y + 2*ib;
        __m512i p[4];
#if defined(__AVX512VBMI__)
        if (mpq2_avx512_all_2bit(xb)) {   // nearly always
            for (int b = 0; b < 4; ++b) {
                const __m512i a = mpq2_avx512_act(yb + 2*b);
                p[b] = _mm512_sub_epi32(MPQ2_DPBUSD(mpq2_avx512_decode_2bit(xb + b, &k), a), MPQ2_DPBUSD(k.f[4], a));
            }
        } else
#endif
        {
            for (int b = 0; b < 4; ++b) p[b] = mpq2_avx512_block(xb + b, yb + 2*b, k.c);
        }
        __m512i mw;
        __m512  dx;
        mpq2_avx512_row_scales(xb, &k, &mw, &dx);
        acc = mpq2_avx512_reduce(p, mw, _mm512_mul_ps(dx, mpq2_avx512_col_scales(yb, &k)), acc);
    }
    for (; ib < nb; ++ib) acc = mpq2_avx512_single(x + ib, y + 2*ib, &k, acc);
    *s = _mm512_reduce_add_ps(acc);
}

// Two rows x two columns (ggml's nrows = 2 path, used for prompt processing): each row's words
// are decoded once for both columns, each column's activations and bias sums once for both
// rows, the row and column scales once each. s[r + c*bs] = row r . column c.
static void mpq2_vec_dot_q8_0_avx512_2x2(int n, float * GGML_RESTRICT s, size_t bs,
                                         const block_mpq2 * GGML_RESTRICT x0, const block_mpq2 * GGML_RESTRICT x1,
                                         const block_q8_0 * GGML_RESTRICT y0, const block_q8_0 * GGML_RESTRICT y1) {
    const int nb = n / QK_MPQ2;
    mpq2_avx512_k k;
    mpq2_avx512_init(&k);
    const block_mpq2 * GGML_RESTRICT x[2] = { x0, x1 };
    const block_q8_0 * GGML_RESTRICT y[2] = { y0, y1 };

    __m512 acc[2][2] = { { _mm512_setzero_ps(), _mm512_setzero_ps() }, { _mm512_setzero_ps(), _mm512_setzero_ps() } };
    int ib = 0;
    for (; ib + 4 <= nb; ib += 4) {
        __m512i p[2][2][4];   // [row][column][block]
#if defined(__AVX512VBMI__)
        if (mpq2_avx512_all_2bit(x0 + ib) && mpq2_avx512_all_2bit(x1 + ib)) {
            for (int b = 0; b < 4; ++b) {
                const __m512i v0 = mpq2_avx512_decode_2bit(x0 + ib + b, &k);
                const __m512i v1 = mpq2_avx512_decode_2bit(x1 + ib + b, &k);
                for (int c = 0; c < 2; ++c) {
                    const __m512i a    = mpq2_avx512_act(y[c] + 2*(ib + b));
                    const __m512i bias = MPQ2_DPBUSD(k.f[4], a);
                    p[0][c][b] = _mm512_sub_epi32(MPQ2_DPBUSD(v0, a), bias);
                    p[1][c][b] = _mm512_sub_epi32(MPQ2_DPBUSD(v1, a), bias);
                }
            }
        } else
#endif
        {
            for (int r = 0; r < 2; ++r)
                for (int c = 0; c < 2; ++c)
                    for (int b = 0; b < 4; ++b) p[r][c][b] = mpq2_avx512_block(x[r] + ib + b, y[c] + 2*(ib + b), k.c);
        }
        const __m512 dy[2] = { mpq2_avx512_col_scales(y0 + 2*ib, &k), mpq2_avx512_col_scales(y1 + 2*ib, &k) };
        for (int r = 0; r < 2; ++r) {
            __m512i mw;
            __m512  dx;
            mpq2_avx512_row_scales(x[r] + ib, &k, &mw, &dx);
            for (int c = 0; c < 2; ++c) acc[r][c] = mpq2_avx512_reduce(p[r][c], mw, _mm512_mul_ps(dx, dy[c]), acc[r][c]);
        }
    }
    for (; ib < nb; ++ib)
        for (int r = 0; r < 2; ++r)
            for (int c = 0; c < 2; ++c) acc[r][c] = mpq2_avx512_single(x[r] + ib, y[c] + 2*ib, &k, acc[r][c]);
    for (int r = 0; r < 2; ++r)
        for (int c = 0; c < 2; ++c) s[r + c*bs] = _mm512_reduce_add_ps(acc[r][c]);
}
#define MPQ2_VEC_DOT_SIMD_2X2 mpq2_vec_dot_q8_0_avx512_2x2

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

typedef struct {   // loop constants of the AVX2 kernels
    __m256i gridz, m3d, shift2, mult, m3, m7;
} mpq2_avx2_k;

static inline void mpq2_avx2_init(mpq2_avx2_k * k) {
    k->gridz  = _mm256_loadu_si256((const __m256i *) mpq2_x86_gridz);
    k->m3d    = _mm256_set1_epi32(3);
    k->shift2 = _mm256_loadu_si256((const __m256i *) mpq2_avx2_shift2);
    k->mult   = _mm256_loadu_si256((const __m256i *) mpq2_avx2_mult);
    k->m3     = _mm256_set1_epi8(3);
    k->m7     = _mm256_set1_epi32(7);
}

// Decoded half h (words 2h, 2h+1) of a block: the signed values v, |v| and the word
// multipliers of each dword.
typedef struct { __m256i v, av, mw; } mpq2_avx2_half;

// hdr: the block header in every dword; bc: the 4 words in both 128-bit lanes (once per block).
static inline mpq2_avx2_half mpq2_avx2_decode(const block_mpq2 * GGML_RESTRICT xb, int h, __m256i hdr, __m256i bc,
                                              const mpq2_avx2_k * k) {
    const __m256i wv   = _mm256_shuffle_epi8(bc, _mm256_loadu_si256((const __m256i *) mpq2_avx2_ctrl_word[h]));
    const __m256i c2   = _mm256_and_si256(_mm256_srlv_epi32(wv, k->shift2), k->m3);
    const __m256i zc   = _mm256_and_si256(_mm256_srlv_epi32(hdr, _mm256_loadu_si256((const __m256i *) mpq2_avx2_zero_sh[h])), k->m3d);
    __m256i v = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(k->gridz, zc), c2);
    if (xb->meta & 15) {   // int8 words: in ~1 block of 2500 in converted models, so branch
        const __m256i v8   = _mm256_shuffle_epi8(bc, _mm256_loadu_si256((const __m256i *) mpq2_avx2_ctrl_int8[h]));
        const __m256i bits = _mm256_loadu_si256((const __m256i *) mpq2_avx2_bitmap[h]);
        v = _mm256_blendv_epi8(v, v8, _mm256_cmpeq_epi32(_mm256_and_si256(hdr, bits), bits));
    }
    const __m256i code = _mm256_and_si256(_mm256_srlv_epi32(hdr, _mm256_loadu_si256((const __m256i *) mpq2_avx2_code_sh[h])), k->m7);
    const mpq2_avx2_half r = { v, _mm256_sign_epi8(v, v), _mm256_permutevar8x32_epi32(k->mult, code) };
    return r;
}

// Dot of a decoded half with 32 activations (sign trick), times the word multipliers: 8 int32.
static inline __m256i mpq2_avx2_dot(const mpq2_avx2_half * d, const int8_t * GGML_RESTRICT qs) {
    const __m256i sa = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *) qs), d->v);
#if defined(MPQ2_AVX2_VNNI)
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_mullo_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), d->av, sa), d->mw);
#else
    return _mm256_mullo_epi32(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), d->av, sa), d->mw);
#endif
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(d->av, sa), d->mw);
#endif
}

static void mpq2_vec_dot_q8_0_avx2(int n, float * GGML_RESTRICT s, const block_mpq2 * GGML_RESTRICT x,
                                   const block_q8_0 * GGML_RESTRICT y) {
    const int nb = n / QK_MPQ2;
    mpq2_avx2_k k;
    mpq2_avx2_init(&k);

    __m256 acc[2] = { _mm256_setzero_ps(), _mm256_setzero_ps() };
    for (int ib = 0; ib < nb; ++ib) {
        const __m128  sc  = mpq2_x86_block_scales(x + ib, y + 2*ib);   // [dx, dx*dy0, dx*dy1, 0]
        const __m256i hdr = _mm256_set1_epi32((int) mpq2_x86_header(x + ib));
        const __m256i bc  = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) x[ib].qs));
        for (int h = 0; h < 2; ++h) {
            const mpq2_avx2_half d = mpq2_avx2_decode(x + ib, h, hdr, bc, &k);
            const __m256 sh = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(sc), _mm256_set1_epi32(1 + h));
            acc[h] = MPQ2_FMADD256(_mm256_cvtepi32_ps(mpq2_avx2_dot(&d, y[2*ib + h].qs)), sh, acc[h]);
        }
    }
    *s = mpq2_x86_hsum256(_mm256_add_ps(acc[0], acc[1]));
}

// Two rows x two columns (ggml's nrows = 2 path for prompts): each half block is decoded once
// per row and used for both columns. s[r + c*bs] = row r . column c.
static void mpq2_vec_dot_q8_0_avx2_2x2(int n, float * GGML_RESTRICT s, size_t bs,
                                       const block_mpq2 * GGML_RESTRICT x0, const block_mpq2 * GGML_RESTRICT x1,
                                       const block_q8_0 * GGML_RESTRICT y0, const block_q8_0 * GGML_RESTRICT y1) {
    const int nb = n / QK_MPQ2;
    mpq2_avx2_k k;
    mpq2_avx2_init(&k);
    const block_mpq2 * GGML_RESTRICT x[2] = { x0, x1 };
    const block_q8_0 * GGML_RESTRICT y[2] = { y0, y1 };

    __m256 acc[2][2][2];   // [row][column][half], summed as the single kernel does
    for (int i = 0; i < 8; ++i) (&acc[0][0][0])[i] = _mm256_setzero_ps();
    for (int ib = 0; ib < nb; ++ib) {
        const __m128 sc[2][2] = { { mpq2_x86_block_scales(x0 + ib, y0 + 2*ib), mpq2_x86_block_scales(x0 + ib, y1 + 2*ib) },
                                  { mpq2_x86_block_scales(x1 + ib, y0 + 2*ib), mpq2_x86_block_scales(x1 + ib, y1 + 2*ib) } };
        __m256i hdr[2], bc[2];
        for (int r = 0; r < 2; ++r) {
            hdr[r] = _mm256_set1_epi32((int) mpq2_x86_header(x[r] + ib));
            bc[r]  = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) x[r][ib].qs));
        }
        for (int h = 0; h < 2; ++h) {
            const __m256i ix = _mm256_set1_epi32(1 + h);
            const mpq2_avx2_half d[2] = { mpq2_avx2_decode(x0 + ib, h, hdr[0], bc[0], &k),
                                          mpq2_avx2_decode(x1 + ib, h, hdr[1], bc[1], &k) };
            for (int c = 0; c < 2; ++c) {
                for (int r = 0; r < 2; ++r) {
                    const __m256 sh = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(sc[r][c]), ix);
                    acc[r][c][h] = MPQ2_FMADD256(_mm256_cvtepi32_ps(mpq2_avx2_dot(&d[r], y[c][2*ib + h].qs)), sh, acc[r][c][h]);
                }
            }
        }
    }
    for (int r = 0; r < 2; ++r)
        for (int c = 0; c < 2; ++c) s[r + c*bs] = mpq2_x86_hsum256(_mm256_add_ps(acc[r][c][0], acc[r][c][1]));
}
#define MPQ2_VEC_DOT_SIMD_2X2 mpq2_vec_dot_q8_0_avx2_2x2

#if defined(MPQ2_AVX2_VNNI)
#define MPQ2_VEC_DOT_SIMD_NAME "avx2_vnni"
#else
#define MPQ2_VEC_DOT_SIMD_NAME "avx2"
#endif
#define MPQ2_VEC_DOT_SIMD mpq2_vec_dot_q8_0_avx2

#endif
