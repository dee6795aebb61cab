// MPQ2 x Q8_0 over 16 interleaved rows: AVX-512 (F+BW+VL) and AVX2, each using VNNI and GFNI
// when present. Included by ggml_ext/src/ggml-cpu-mpq2-repack.c; defines MPQ2_X16_SIMD and its name.
//
// Lane r of every vector is row r of the group. For word w of a block (16 weights per row):
//   codes:  4 vectors whose lane holds the 2-bit codes of weights 4s..4s+3 as bytes (one
//           GF2P8AFFINEQB bit-select each, or a shift and a mask without GFNI);
//   dot:    4 vpdpbusd (codes unsigned, activations signed, no sign trick) against the 4
//           activations broadcast to all lanes, starting from A << 16 | 0x8000 (A = sum of the
//           16 activations): S = sum c*a lies in [-6096, 6096], so S + 0x8000 never borrows
//           from or carries into the high half, and one xor with 0x8000 leaves the int16 pair
//           (S, A) in each lane;
//   scale:  one vpmaddwd (vpdpwssd with VNNI, accumulating) with the int16 pair (16*mult,
//           -zero*mult) of the lane's word, looked up from the repacked header's 5-bit
//           (scale code | zero code << 3) with one vpermt2d: mult * (16 S - zero A), the word's
//           exact integer dot product.
// The two words of one Q8_0 block are summed, converted (exact below 2^24) and accumulated
// times d * d_q8 per lane. Up to 8 activation columns share each decoded word (prompts). The
// main loop takes every word as 2-bit; in a block with salient (int8) words, about 0.01% of
// converted words, an out-of-line integer correction (int8 dot by the sign trick - 2-bit dot)
// is added for the lanes that have them before the block's sum goes to float.
#include <immintrin.h>

#define MPQ2_RP_INLINE static inline __attribute__((always_inline))

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)

#if defined(__AVX512VNNI__)
#define MPQ2_RP_DOT(acc, u, a)      _mm512_dpbusd_epi32((acc), (u), (a))
#define MPQ2_RP_MADD_ACC(acc, p, q) _mm512_dpwssd_epi32((acc), (p), (q))
#else
#define MPQ2_RP_DOT(acc, u, a)      _mm512_add_epi32((acc), _mm512_madd_epi16(_mm512_maddubs_epi16((u), (a)), _mm512_set1_epi16(1)))
#define MPQ2_RP_MADD_ACC(acc, p, q) _mm512_add_epi32((acc), _mm512_madd_epi16((p), (q)))
#endif

// Codes of weights 4s..4s+3 of each lane's word as bytes 0..3 of the lane (file bit order:
// weight 4s + k at bits 8k + 2s).
MPQ2_RP_INLINE __m512i mpq2_rp_codes(__m512i q, int s) {
#if defined(__GFNI__)
    // GF(2) affine byte transform: output bit i is the parity of (byte 7-i of the matrix) & input,
    // so bytes 7 and 6 select input bits 2s and 2s+1 into output bits 0 and 1
    const uint64_t sel = (uint64_t) (1u << (2*s)) << 56 | (uint64_t) (2u << (2*s)) << 48;
    return _mm512_gf2p8affine_epi64_epi8(q, _mm512_set1_epi64((long long) sel), 0);
#else
    return _mm512_and_si512(_mm512_srli_epi32(q, (unsigned) (2*s)), _mm512_set1_epi8(3));
#endif
}

// 4 activations (weights 4s..4s+3 of word w of block ib) in every lane.
MPQ2_RP_INLINE __m512i mpq2_rp_act4(const mpq2_act * y, int ib, int w, int s) {
    int32_t v;
    memcpy(&v, y->q[2*ib + w/2].qs + (w & 1)*MPQ2_GROUP + 4*s, sizeof(v));
    return _mm512_set1_epi32(v);
}

// Word w's dot products of lanes holding int8 means (sign trick), times the word multipliers m.
MPQ2_RP_INLINE __m512i mpq2_rp_int8_word(__m512i q, __m512i m, const mpq2_act * y, int ib, int w) {
    __m512i p = _mm512_setzero_si512();
    for (int s = 0; s < 4; ++s) {
        // byte s of each lane's word (the mean of weights 4s..4s+3) into all 4 bytes of the lane
        const __m512i ctrl = _mm512_add_epi8(_mm512_set4_epi32(0x0C0C0C0C, 0x08080808, 0x04040404, 0x00000000),
                                             _mm512_set1_epi8((char) s));
        const __m512i v  = _mm512_shuffle_epi8(q, ctrl);
        const __m512i a  = mpq2_rp_act4(y, ib, w, s);
        const __m512i sa = _mm512_mask_sub_epi8(a, _mm512_movepi8_mask(v), _mm512_setzero_si512(), a);
        p = MPQ2_RP_DOT(p, _mm512_abs_epi8(v), sa);
    }
    return _mm512_mullo_epi32(p, m);
}

// Word w's (S, A) pair of each lane for one column: 4 vpdpbusd from A << 16 | 0x8000, one xor.
MPQ2_RP_INLINE __m512i mpq2_rp_pair_sums(const __m512i * cs, const mpq2_act * y, int ib, int w) {
    __m512i t = _mm512_set1_epi32(y->ahi[4*ib + w]);
    for (int k = 0; k < 4; ++k) t = MPQ2_RP_DOT(t, cs[k], mpq2_rp_act4(y, ib, w, k));
    return _mm512_xor_si512(t, _mm512_set1_epi32(0x8000));
}

// Decoded scale d of every lane (E6M2 in the top byte: bits (code << 21) + (87 << 23) of a float).
MPQ2_RP_INLINE __m512 mpq2_rp_dx(__m512i hdr) {
    return _mm512_castsi512_ps(_mm512_add_epi32(
        _mm512_and_si512(_mm512_srli_epi32(hdr, 3), _mm512_set1_epi32(0x1FE00000)), _mm512_set1_epi32(87 << 23)));
}

// Half h of block ib: the words' exact integer dot products of each lane for nc columns, int8
// words read as 2-bit codes (the main loop's reading, correct for 2-bit words).
MPQ2_RP_INLINE void mpq2_x16_half_2bit(const block_mpq2x16 * xb, __m512i hdr, const mpq2_act * y, int ib, int h,
                                       const int nc, __m512i pt0, __m512i pt1, __m512i * u) {
    for (int c = 0; c < nc; ++c) u[c] = _mm512_setzero_si512();
    for (int w = 2*h; w < 2*h + 2; ++w) {
        const __m512i q    = _mm512_loadu_si512(xb->qs[w]);
        const __m512i ix   = _mm512_srli_epi32(hdr, (unsigned) MPQ2_RP_WORD_SHIFT(w));
        const __m512i pair = _mm512_permutex2var_epi32(pt0, ix, pt1);   // reads index bits 0..4
        __m512i cs[4];
        for (int k = 0; k < 4; ++k) cs[k] = mpq2_rp_codes(q, k);
        for (int c = 0; c < nc; ++c) u[c] = MPQ2_RP_MADD_ACC(u[c], mpq2_rp_pair_sums(cs, &y[c], ib, w), pair);
    }
}

// acc[c] += half h's integer sums u[c] times d * d_q8.
MPQ2_RP_INLINE void mpq2_x16_half_acc(__m512 dx, const mpq2_act * y, int ib, int h, const int nc, const __m512i * u,
                                      __m512 * acc) {
    for (int c = 0; c < nc; ++c)
        acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(u[c]), _mm512_mul_ps(dx, _mm512_set1_ps(y[c].dy[2*ib + h])), acc[c]);
}

// Block ib when it has int8 words (about 0.01% of converted words): each word's exact integer
// dot product per lane, the int8 reading (sign trick) where the bitmap says int8 and the 2-bit
// one elsewhere, summed in integers before the block's sum goes to float, so the error stays
// relative to the row's true terms. Out of line, and a whole block, so that the main loop stays
// as it is without int8 words (a branch per half block in it cost 20% at one column).
static __attribute__((noinline)) void mpq2_x16_block_int8(const block_mpq2x16 * xb, __m512i hdr, const mpq2_act * y, int ib,
                                                          int nc, __m512i pt0, __m512i pt1, __m512i mt, __m512 * acc) {
    const __m512 dx = mpq2_rp_dx(hdr);
    for (int h = 0; h < 2; ++h) {
        __m512i u[8];
        for (int c = 0; c < nc; ++c) u[c] = _mm512_setzero_si512();
        for (int w = 2*h; w < 2*h + 2; ++w) {
            const __mmask16 kw = _mm512_test_epi32_mask(hdr, _mm512_set1_epi32(1 << w));
            const __m512i q    = _mm512_loadu_si512(xb->qs[w]);
            const __m512i ix   = _mm512_srli_epi32(hdr, (unsigned) MPQ2_RP_WORD_SHIFT(w));
            const __m512i pair = _mm512_permutex2var_epi32(pt0, ix, pt1);
            const __m512i m    = _mm512_permutexvar_epi32(ix, mt);   // index bits 0..3: code and one ignored bit
            __m512i cs[4];
            for (int k = 0; k < 4; ++k) cs[k] = mpq2_rp_codes(q, k);
            for (int c = 0; c < nc; ++c) {
                __m512i t = _mm512_madd_epi16(mpq2_rp_pair_sums(cs, &y[c], ib, w), pair);
                if (kw) t = _mm512_mask_mov_epi32(t, kw, mpq2_rp_int8_word(q, m, &y[c], ib, w));
                u[c] = _mm512_add_epi32(u[c], t);
            }
        }
        mpq2_x16_half_acc(dx, y, ib, h, nc, u, acc);
    }
}

// One group of 16 rows times nc (1..8) columns.
MPQ2_RP_INLINE void mpq2_x16_group(int nb, float * s, size_t bs, const block_mpq2x16 * xg, const mpq2_act * y,
                                   const int nc, __m512i pt0, __m512i pt1, __m512i mt) {
    __m512 acc[8];
    for (int c = 0; c < nc; ++c) acc[c] = _mm512_setzero_ps();
    for (int ib = 0; ib < nb; ++ib) {
        const block_mpq2x16 * xb = xg + ib;
        const __m512i hdr = _mm512_loadu_si512(xb->hdr);
        if (__builtin_expect(_mm512_test_epi32_mask(hdr, _mm512_set1_epi32(15)) != 0, 0)) {
            __m512 io[8];   // acc through memory on this path only
            for (int c = 0; c < nc; ++c) io[c] = acc[c];
            mpq2_x16_block_int8(xb, hdr, y, ib, nc, pt0, pt1, mt, io);
            for (int c = 0; c < nc; ++c) acc[c] = io[c];
            continue;
        }
        const __m512 dx = mpq2_rp_dx(hdr);
        for (int h = 0; h < 2; ++h) {
            __m512i u[8];
            mpq2_x16_half_2bit(xb, hdr, y, ib, h, nc, pt0, pt1, u);
            mpq2_x16_half_acc(dx, y, ib, h, nc, u, acc);
        }
    }
    for (int c = 0; c < nc; ++c) _mm512_storeu_ps(s + c*bs, acc[c]);
}

static void mpq2_x16_mul_avx512(int n, float * s, size_t bs, const block_mpq2x16 * x, int64_t ngroups,
                                const mpq2_act * y, int ncols) {
    assert(n % QK_MPQ2 == 0);
    const int nb = n / QK_MPQ2;
    // (16 mult, -zero mult) as int16 pairs for index code | zero << 3, and mult for code | x << 3
    int32_t pairs[32], mults[16];
    for (int i = 0; i < 32; ++i) {
        const int m = mpq2_scale_mult[i & 7], z = mpq2_zero2[i >> 3];
        pairs[i] = (int32_t) ((uint32_t) (uint16_t) (MPQ2_GRID_STEP*m) | (uint32_t) (uint16_t) (-z*m) << 16);
        if (i < 16) mults[i] = m;
    }
    const __m512i pt0 = _mm512_loadu_si512(pairs), pt1 = _mm512_loadu_si512(pairs + 16), mt = _mm512_loadu_si512(mults);
    for (int64_t g = 0; g < ngroups; ++g) {
        const block_mpq2x16 * xg = x + g*nb;
        float * sg = s + g*MPQ2_RP_ROWS;
        int c = 0;
        for (; c + 8 <= ncols; c += 8) mpq2_x16_group(nb, sg + c*bs, bs, xg, y + c, 8, pt0, pt1, mt);
        if (c + 4 <= ncols) { mpq2_x16_group(nb, sg + c*bs, bs, xg, y + c, 4, pt0, pt1, mt); c += 4; }
        if (c + 2 <= ncols) { mpq2_x16_group(nb, sg + c*bs, bs, xg, y + c, 2, pt0, pt1, mt); c += 2; }
        if (c < ncols) mpq2_x16_group(nb, sg + c*bs, bs, xg, y + c, 1, pt0, pt1, mt);
    }
}

#define MPQ2_X16_SIMD mpq2_x16_mul_avx512
#define MPQ2_X16_ISA "avx512"

#elif defined(__AVX2__)

// ---------------------------------------------------------------------------------------
// AVX2: the same scheme on 8 lanes, the 16 rows of a group in two passes of 8. Without a
// 32-entry lookup, the zero term is folded first and the multiplier after: vpmaddwd of (S, A)
// with (16, -zero) gives 16 S - zero A, one vpmulld applies mult.

#if defined(__AVXVNNI__)
#define MPQ2_RP_DOT8(acc, u, a) _mm256_dpbusd_avx_epi32((acc), (u), (a))
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define MPQ2_RP_DOT8(acc, u, a) _mm256_dpbusd_epi32((acc), (u), (a))
#else
#define MPQ2_RP_DOT8(acc, u, a) _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (a)), _mm256_set1_epi16(1)))
#endif

MPQ2_RP_INLINE __m256i mpq2_rp_codes8(__m256i q, int s) {
#if defined(__GFNI__)
    const uint64_t sel = (uint64_t) (1u << (2*s)) << 56 | (uint64_t) (2u << (2*s)) << 48;
    return _mm256_gf2p8affine_epi64_epi8(q, _mm256_set1_epi64x((long long) sel), 0);
#else
    return _mm256_and_si256(_mm256_srli_epi32(q, 2*s), _mm256_set1_epi8(3));
#endif
}

MPQ2_RP_INLINE __m256i mpq2_rp_act4_8(const mpq2_act * y, int ib, int w, int s) {
    int32_t v;
    memcpy(&v, y->q[2*ib + w/2].qs + (w & 1)*MPQ2_GROUP + 4*s, sizeof(v));
    return _mm256_set1_epi32(v);
}

// Word w's dot products of lanes holding int8 means (sign trick), not yet times mult.
MPQ2_RP_INLINE __m256i mpq2_rp_int8_word8(__m256i q, const mpq2_act * y, int ib, int w) {
    __m256i p = _mm256_setzero_si256();
    for (int s = 0; s < 4; ++s) {
        const __m256i ctrl = _mm256_add_epi8(_mm256_setr_epi32(0, 0x04040404, 0x08080808, 0x0C0C0C0C, 0, 0x04040404, 0x08080808, 0x0C0C0C0C),
                                             _mm256_set1_epi8((char) s));
        const __m256i v = _mm256_shuffle_epi8(q, ctrl);
        p = MPQ2_RP_DOT8(p, _mm256_sign_epi8(v, v), _mm256_sign_epi8(mpq2_rp_act4_8(y, ib, w, s), v));
    }
    return p;
}

// 8 rows (half `half` of a group) times nc (1 or 2) columns.
MPQ2_RP_INLINE void mpq2_x16_half(int nb, float * s, size_t bs, const block_mpq2x16 * xg, int half, const mpq2_act * y,
                                  const int nc, __m256i zt, __m256i mt) {
    __m256 acc[2];
    for (int c = 0; c < nc; ++c) acc[c] = _mm256_setzero_ps();
    for (int ib = 0; ib < nb; ++ib) {
        const block_mpq2x16 * xb = xg + ib;
        const __m256i hdr = _mm256_loadu_si256((const __m256i *) (xb->hdr + 8*half));
        const __m256 dx = _mm256_castsi256_ps(_mm256_add_epi32(
            _mm256_and_si256(_mm256_srli_epi32(hdr, 3), _mm256_set1_epi32(0x1FE00000)), _mm256_set1_epi32(87 << 23)));
        const int salient = !_mm256_testz_si256(hdr, _mm256_set1_epi32(15));
        for (int h = 0; h < 2; ++h) {
            __m256i u[2] = { _mm256_setzero_si256(), _mm256_setzero_si256() };
            for (int w = 2*h; w < 2*h + 2; ++w) {
                const __m256i q  = _mm256_loadu_si256((const __m256i *) (xb->qs[w] + 8*half));
                const __m256i ix = _mm256_srli_epi32(hdr, MPQ2_RP_WORD_SHIFT(w));
                const __m256i zp = _mm256_permutevar8x32_epi32(zt, _mm256_srli_epi32(ix, 3));   // (16, -zero), index bits 0..2
                const __m256i m  = _mm256_permutevar8x32_epi32(mt, ix);                         // mult, index bits 0..2
                __m256i cs[4];
                for (int k = 0; k < 4; ++k) cs[k] = mpq2_rp_codes8(q, k);
                __m256i uw[2];
                for (int c = 0; c < nc; ++c) {
                    __m256i t = _mm256_set1_epi32(y[c].ahi[4*ib + w]);
                    for (int k = 0; k < 4; ++k) t = MPQ2_RP_DOT8(t, cs[k], mpq2_rp_act4_8(&y[c], ib, w, k));
                    uw[c] = _mm256_madd_epi16(_mm256_xor_si256(t, _mm256_set1_epi32(0x8000)), zp);
                }
                if (__builtin_expect(salient, 0)) {
                    const __m256i bit = _mm256_set1_epi32(1 << w);
                    const __m256i kw  = _mm256_cmpeq_epi32(_mm256_and_si256(hdr, bit), bit);
                    if (!_mm256_testz_si256(kw, kw)) {
                        for (int c = 0; c < nc; ++c) uw[c] = _mm256_blendv_epi8(uw[c], mpq2_rp_int8_word8(q, &y[c], ib, w), kw);
                    }
                }
                for (int c = 0; c < nc; ++c) u[c] = _mm256_add_epi32(u[c], _mm256_mullo_epi32(uw[c], m));
            }
            for (int c = 0; c < nc; ++c) {
                const __m256 sc = _mm256_mul_ps(dx, _mm256_set1_ps(y[c].dy[2*ib + h]));
#if defined(__FMA__)
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(u[c]), sc, acc[c]);
#else
                acc[c] = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(u[c]), sc), acc[c]);
#endif
            }
        }
    }
    for (int c = 0; c < nc; ++c) _mm256_storeu_ps(s + c*bs + 8*half, acc[c]);
}

static void mpq2_x16_mul_avx2(int n, float * s, size_t bs, const block_mpq2x16 * x, int64_t ngroups,
                              const mpq2_act * y, int ncols) {
    assert(n % QK_MPQ2 == 0);
    const int nb = n / QK_MPQ2;
    // (16, -zero) as int16 pairs by zero code, and mult by scale code (index bit 3 ignored)
    int32_t zpairs[8], mults[8];
    for (int i = 0; i < 8; ++i) {
        zpairs[i] = (int32_t) ((uint32_t) MPQ2_GRID_STEP | (uint32_t) (uint16_t) (-mpq2_zero2[i & 3]) << 16);
        mults[i]  = mpq2_scale_mult[i];
    }
    const __m256i zt = _mm256_loadu_si256((const __m256i *) zpairs), mt = _mm256_loadu_si256((const __m256i *) mults);
    for (int64_t g = 0; g < ngroups; ++g) {
        const block_mpq2x16 * xg = x + g*nb;
        float * sg = s + g*MPQ2_RP_ROWS;
        for (int half = 0; half < 2; ++half) {
            int c = 0;
            for (; c + 2 <= ncols; c += 2) mpq2_x16_half(nb, sg + c*bs, bs, xg, half, y + c, 2, zt, mt);
            if (c < ncols) mpq2_x16_half(nb, sg + c*bs, bs, xg, half, y + c, 1, zt, mt);
        }
    }
}

#define MPQ2_X16_SIMD mpq2_x16_mul_avx2
#define MPQ2_X16_ISA "avx2"

#endif

#if defined(__AVX512VNNI__) || defined(__AVXVNNI__)
#define MPQ2_X16_VNNI "_vnni"
#else
#define MPQ2_X16_VNNI ""
#endif
#if defined(__GFNI__)
#define MPQ2_X16_SIMD_NAME MPQ2_X16_ISA MPQ2_X16_VNNI "_gfni"
#else
#define MPQ2_X16_SIMD_NAME MPQ2_X16_ISA MPQ2_X16_VNNI
#endif
